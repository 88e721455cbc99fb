"""The live dashboard: one self-contained page (inline CSS, JS and SVG, no external asset).

The page polls ``/json`` (the figures now) and ``/history?after=N`` (the
samples the exporter keeps in memory) every sampler interval and redraws
itself; every name from outside is inserted as a text node (``textContent``),
never as markup, so a listener called ``<script>`` shows as those letters.
Per server: calling/writing, busy/total workers, each listener's queue
against its backlog, a chart over the samples kept with a time axis, and
the per-worker table (busy %, req/s, average ms, in flight).
"""

from __future__ import annotations

__all__ = ["DASHBOARD"]

_PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>raindrops-exporter</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; background: #fafafa; }
h1 { font-size: 1.3em; margin: 0 0 .2em; }
h2 { font-size: 1.1em; margin: 0 0 .5em; font-family: ui-monospace, monospace; word-break: break-all; }
.server { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 1em; margin: 1em 0; }
.figures { display: flex; gap: 2em; flex-wrap: wrap; margin-bottom: .6em; }
.figure b { font-size: 1.6em; display: block; font-variant-numeric: tabular-nums; }
.figure span { color: #666; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
td, th { padding: 2px 10px; text-align: right; border-bottom: 1px solid #eee; }
th { color: #555; font-weight: 600; }
td.name { text-align: left; font-family: ui-monospace, monospace; }
.bar { width: 220px; height: 12px; background: #eee; border-radius: 3px; overflow: hidden; display: inline-block; vertical-align: middle; }
.bar i { display: block; height: 100%; background: #3a7; }
.bar i.full { background: #d33; }
svg text { font: 11px system-ui, sans-serif; fill: #555; }
#status { color: #666; }
.legend span { margin-right: 1.2em; }
.legend i { display: inline-block; width: 14px; height: 3px; vertical-align: middle; margin-right: 4px; }
</style>
</head>
<body>
<h1>raindrops-exporter</h1>
<div id="status">loading...</div>
<div id="servers"></div>
<script>
"use strict";
const COLORS = {calling: "#1f77b4", writing: "#ff7f0e", busy: "#2ca02c", queued: "#d62728"};
let samples = [];
let lastSeq = 0;
let interval = 1;
let keep = 600;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
function svgEl(tag, attrs, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = String(text);
  return node;
}
function figure(name, value, label) {
  const box = el("div", {"class": "figure"});
  box.appendChild(el("b", {"data-field": name}, value));
  box.appendChild(el("span", {}, label));
  return box;
}
function clock(t) {
  const d = new Date(t * 1000);
  return d.toTimeString().slice(0, 8);
}
function chart(label) {
  const W = 720, H = 160, L = 36, B = 22, T = 8;
  const svg = svgEl("svg", {width: W, height: H, "data-chart": "1", role: "img"});
  const points = samples.filter(s => s.servers[label] !== undefined);
  const series = {calling: [], writing: [], busy: [], queued: []};
  for (const s of points) {
    const v = s.servers[label];
    const queued = Object.values(v.listeners).reduce((a, l) => a + l[1], 0);
    series.calling.push([s.time, v.calling || 0]);
    series.writing.push([s.time, v.writing || 0]);
    series.busy.push([s.time, v.busy]);
    series.queued.push([s.time, queued]);
  }
  const now = points.length ? points[points.length - 1].time : Date.now() / 1000;
  const t0 = now - Math.min(keep, Math.max(60, points.length ? now - points[0].time : 60));
  let ymax = 1;
  for (const k in series) for (const p of series[k]) ymax = Math.max(ymax, p[1]);
  const x = t => L + (W - L - 8) * (t - t0) / Math.max(1, now - t0);
  const y = v => T + (H - T - B) * (1 - v / ymax);
  svg.appendChild(svgEl("line", {x1: L, y1: H - B, x2: W - 8, y2: H - B, stroke: "#999"}));
  svg.appendChild(svgEl("line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#999"}));
  svg.appendChild(svgEl("text", {x: L - 4, y: T + 8, "text-anchor": "end"}, ymax));
  svg.appendChild(svgEl("text", {x: L - 4, y: H - B, "text-anchor": "end"}, 0));
  const ticks = 6;
  for (let i = 0; i <= ticks; i++) {
    const t = t0 + (now - t0) * i / ticks;
    svg.appendChild(svgEl("line", {x1: x(t), y1: H - B, x2: x(t), y2: H - B + 4, stroke: "#999"}));
    svg.appendChild(svgEl("text", {x: x(t), y: H - 6, "text-anchor": "middle", "class": "tick"}, clock(t)));
  }
  for (const k in series) {
    if (!series[k].length) continue;
    const d = series[k].map(p => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ");
    svg.appendChild(svgEl("polyline", {points: d, fill: "none", stroke: COLORS[k], "stroke-width": 2, "data-series": k}));
  }
  return svg;
}
function legend() {
  const box = el("div", {"class": "legend"});
  for (const [k, c] of Object.entries(COLORS)) {
    const s = el("span", {}, null);
    const i = el("i", {style: "background:" + c});
    s.appendChild(i);
    s.appendChild(document.createTextNode(k === "busy" ? "busy workers" : k === "queued" ? "queued (all listeners)" : k));
    box.appendChild(s);
  }
  return box;
}
function listenerTable(server) {
  const table = el("table", {"data-table": "listeners"});
  const head = el("tr");
  for (const h of ["listener", "active", "queued", "backlog", "queue"]) head.appendChild(el("th", {}, h));
  table.appendChild(head);
  for (const [name, l] of Object.entries(server.listeners)) {
    const row = el("tr", {"data-listener": name});
    row.appendChild(el("td", {"class": "name"}, name));
    row.appendChild(el("td", {"data-field": "active"}, l.active));
    row.appendChild(el("td", {"data-field": "queued"}, l.queued));
    row.appendChild(el("td", {"data-field": "backlog"}, l.backlog === null ? "-" : l.backlog));
    const cell = el("td");
    const bar = el("span", {"class": "bar", title: l.queued + " of " + l.backlog});
    const fill = l.backlog ? Math.min(1, l.queued / l.backlog) : 0;
    bar.appendChild(el("i", {style: "width:" + (100 * fill).toFixed(1) + "%", "class": fill >= 1 ? "full" : ""}));
    cell.appendChild(bar);
    row.appendChild(cell);
    table.appendChild(row);
  }
  return table;
}
function workerTable(server) {
  const table = el("table", {"data-table": "workers"});
  const head = el("tr");
  for (const h of ["worker", "pid", "busy %", "req/s", "avg ms", "in flight", "requests"]) head.appendChild(el("th", {}, h));
  table.appendChild(head);
  const rows = server.worker_table.slice().sort((a, b) => b.percentage_active - a.percentage_active);
  for (const w of rows) {
    const row = el("tr", {"data-pid": w.pid});
    row.appendChild(el("td", {}, w.index));
    row.appendChild(el("td", {}, w.pid));
    row.appendChild(el("td", {"data-field": "busy"}, w.percentage_active.toFixed(1)));
    row.appendChild(el("td", {"data-field": "rps"}, w.requests_per_second.toFixed(1)));
    row.appendChild(el("td", {"data-field": "avg_ms"}, w.average_response_time.toFixed(1)));
    row.appendChild(el("td", {"data-field": "in_flight"}, w.in_flight));
    row.appendChild(el("td", {"data-field": "requests"}, w.requests_total));
    table.appendChild(row);
  }
  return table;
}
function draw(doc) {
  const root = document.getElementById("servers");
  const boxes = [];
  for (const s of doc.servers) {
    const box = el("section", {"class": "server", "data-server": s.server});
    box.appendChild(el("h2", {}, s.server));
    const figs = el("div", {"class": "figures"});
    figs.appendChild(figure("calling", s.calling === null ? "-" : s.calling, "calling (in the app)"));
    figs.appendChild(figure("writing", s.writing === null ? "-" : s.writing, "writing (responses)"));
    figs.appendChild(figure("workers", s.workers_busy + "/" + s.workers, "busy / live workers"));
    figs.appendChild(figure("reclaimed", s.workers_reclaimed === null ? "-" : s.workers_reclaimed, "workers reclaimed"));
    box.appendChild(figs);
    box.appendChild(listenerTable(s));
    box.appendChild(chart(s.server));
    box.appendChild(legend());
    box.appendChild(workerTable(s));
    boxes.push(box);
  }
  if (!boxes.length) boxes.push(el("p", {}, "No server of this user found yet."));
  root.replaceChildren(...boxes);
  const status = document.getElementById("status");
  status.textContent = "updated " + clock(doc.time) + " - " + doc.servers.length + " server(s), " + samples.length + " samples kept (" + keep + " s at most)";
  status.setAttribute("data-time", String(doc.time));
  document.body.setAttribute("data-updates", String(Number(document.body.getAttribute("data-updates") || 0) + 1));
}
async function tick() {
  try {
    const hist = await (await fetch("history?after=" + lastSeq, {cache: "no-store"})).json();
    interval = hist.interval; keep = hist.history_seconds;
    for (const s of hist.samples) { samples.push(s); lastSeq = s.seq; }
    const cutoff = (samples.length ? samples[samples.length - 1].time : 0) - keep;
    while (samples.length && samples[0].time < cutoff) samples.shift();
    const doc = await (await fetch("json", {cache: "no-store"})).json();
    draw(doc);
  } catch (err) {
    document.getElementById("status").textContent = "cannot reach the exporter: " + err;
  }
  setTimeout(tick, Math.max(250, interval * 1000));
}
tick();
</script>
</body>
</html>
"""

#: The page, as served.
DASHBOARD: bytes = _PAGE.encode("utf-8")
