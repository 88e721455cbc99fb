"""The Watcher's pages: text histograms, JSON, HTML with inline SVG, and HTTP headers.

Pure functions from :class:`~raindrops_core.watcher.ListenerReport` (and
friends) to bytes: no I/O, no framework.
"""

from __future__ import annotations

import html
import json
import socket
import time
from collections.abc import Sequence
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

from ._watch_agg import AggregateStats, ListenerReport, Sample

__all__ = [
    "format_number",
    "histogram_text",
    "http_date",
    "iso8601",
    "listener_url",
    "render_index_html",
    "render_index_json",
    "render_listener_html",
    "render_listener_json",
    "render_listener_text",
    "stats_headers",
    "tail_line",
]

_BAR = 50
_BOTH = ("active", "queued")


def http_date(at: float) -> str:
    """``at`` (seconds since the epoch) as an HTTP date: ``Thu, 01 Jan 1970 00:00:00 GMT``."""
    return formatdate(at, usegmt=True)


def iso8601(at: float) -> str:
    """``at`` as ISO 8601 UTC to the second: ``1970-01-01T00:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def format_number(value: float) -> str:
    """A number for a header or a page: ints as is, floats to at most 6 decimals.

    Example::

        >>> format_number(1.5), format_number(2.0), format_number(2 / 3)
        ('1.5', '2', '0.666667')
    """
    if isinstance(value, int):
        return str(value)
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def listener_url(name: str) -> str:
    """The listener's name as one URL path segment: ``0.0.0.0%3A80``, ``%2Ftmp%2Fs.sock``."""
    return quote(name, safe="")


def stats_headers(stats: AggregateStats, *, expires: float) -> list[tuple[str, str]]:
    """The ``X-*`` headers of one aggregate, and ``Expires`` (the next sample).

    ``X-Count``, ``X-Last-Reset``, ``X-Outliers-Low``, ``X-Outliers-High`` are
    always there; ``X-Min``, ``X-Max``, ``X-Mean``, ``X-Current``,
    ``X-First-Peak-At`` and ``X-Last-Peak-At`` once a sample exists;
    ``X-Std-Dev`` from two samples on.
    """
    out = [("X-Count", str(stats.count)), ("X-Last-Reset", http_date(stats.last_reset))]
    if stats.min is not None and stats.max is not None and stats.mean is not None:
        out += [
            ("X-Min", str(stats.min)),
            ("X-Max", str(stats.max)),
            ("X-Mean", format_number(stats.mean)),
        ]
    if stats.std_dev is not None:
        out.append(("X-Std-Dev", format_number(stats.std_dev)))
    out += [
        ("X-Outliers-Low", str(stats.outliers_low)),
        ("X-Outliers-High", str(stats.outliers_high)),
    ]
    if stats.current is not None:
        out.append(("X-Current", str(stats.current)))
    if stats.first_peak_at is not None and stats.last_peak_at is not None:
        out += [
            ("X-First-Peak-At", http_date(stats.first_peak_at)),
            ("X-Last-Peak-At", http_date(stats.last_peak_at)),
        ]
    out.append(("Expires", http_date(expires)))
    return out


def _shown_buckets(buckets: Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    used = [i for i, (_, _, c) in enumerate(buckets) if c]
    if not used:
        return []
    return list(buckets[used[0] : used[-1] + 1])


def histogram_text(
    buckets: Sequence[tuple[int, int, int]], outliers_low: int = 0, outliers_high: int = 0
) -> str:
    """A log2 (or any) histogram as text, one row per bucket from the first used to the last.

    Each row: the bucket's low bound, a bar of ``@`` scaled to the fullest
    bucket (50 wide), the count.  Outliers get a line each when present.

    Example::

        >>> print(histogram_text([(0, 2, 2), (2, 4, 1), (4, 8, 0)]), end="")
        value |-------------------------------------------------- count
            0 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ 2
            2 |@@@@@@@@@@@@@@@@@@@@@@@@@                          1
    """
    rows = _shown_buckets(buckets)
    width = max([5, *(len(str(lo)) for lo, _, _ in rows)])
    lines = [f"{'value':>{width}} |{'-' * _BAR} count"]
    top = max([c for _, _, c in rows] or [0])
    for lo, _, c in rows:
        bar = "@" * (max(1, round(_BAR * c / top)) if c else 0)
        lines.append(f"{lo:>{width}} |{bar:<{_BAR}} {c}")
    if not rows:
        lines.append(f"{'':>{width}} |{'(no samples)':<{_BAR}} 0")
    if outliers_low:
        lines.append(f"outliers low: {outliers_low}")
    if outliers_high:
        lines.append(f"outliers high: {outliers_high}")
    return "\n".join(lines) + "\n"


def _summary_rows(stats: AggregateStats) -> list[tuple[str, str]]:
    def opt(v: float | None) -> str:
        return "-" if v is None else format_number(v)

    def when(v: float | None) -> str:
        return "-" if v is None else iso8601(v)

    return [
        ("count", str(stats.count)),
        ("current", opt(stats.current)),
        ("min", opt(stats.min)),
        ("max", opt(stats.max)),
        ("mean", opt(stats.mean)),
        ("std dev", opt(stats.std_dev)),
        ("outliers low", str(stats.outliers_low)),
        ("outliers high", str(stats.outliers_high)),
        ("first peak at", when(stats.first_peak_at)),
        ("last peak at", when(stats.last_peak_at)),
        ("last reset", iso8601(stats.last_reset)),
    ]


def render_listener_text(report: ListenerReport, kind: str) -> bytes:
    """The ``/active/<L>.txt`` (or ``queued``) body: the text histogram.

    Example::

        GET /queued/0.0.0.0%3A80.txt  ->  "value |---...--- count\\n    0 |@@@ 3\\n"
    """
    stats: AggregateStats = getattr(report, kind)
    return histogram_text(stats.buckets, stats.outliers_low, stats.outliers_high).encode()


def _stats_json(stats: AggregateStats) -> dict[str, Any]:
    def when(v: float | None) -> str | None:
        return None if v is None else iso8601(v)

    return {
        "count": stats.count,
        "sum": stats.sum,
        "min": stats.min,
        "max": stats.max,
        "mean": stats.mean,
        "std_dev": stats.std_dev,
        "outliers_low": stats.outliers_low,
        "outliers_high": stats.outliers_high,
        "current": stats.current,
        "first_peak_at": when(stats.first_peak_at),
        "last_peak_at": when(stats.last_peak_at),
        "last_reset": iso8601(stats.last_reset),
        "buckets": [{"low": lo, "high": hi, "count": c} for lo, hi, c in stats.buckets if c],
    }


def render_listener_json(report: ListenerReport, kind: str) -> bytes:
    """The ``/active/<L>.json`` (or ``queued``) body: one JSON object and a newline.

    Keys: ``listener``, ``kind``, the statistics (``count``, ``sum``, ``min``,
    ``max``, ``mean``, ``std_dev``, ``outliers_low``, ``outliers_high``,
    ``current``, ``first_peak_at``, ``last_peak_at``, ``last_reset`` as ISO
    8601), ``buckets`` (non-empty ones, ``{"low", "high", "count"}``) and
    ``history`` (``[[time, value], ...]``, oldest first).
    """
    stats: AggregateStats = getattr(report, kind)
    doc = {"listener": report.name, "kind": kind, **_stats_json(stats)}
    doc["history"] = [[iso8601(s.at), getattr(s, kind)] for s in report.history]
    return (json.dumps(doc) + "\n").encode()


def render_index_json(
    reports: Sequence[ListenerReport],
    *,
    updated_at: float | None,
    delay: float,
    error: str | None,
    tail_streams: int = 0,
) -> bytes:
    """The ``/index.json`` body: every watched listener's current ``active``/``queued``.

    Also ``updated_at`` (last sample, ISO 8601), ``delay``, ``error`` (the
    last sampling failure or null) and ``tail_streams`` (open in this process).
    """
    doc = {
        "updated_at": None if updated_at is None else iso8601(updated_at),
        "delay": delay,
        "error": error,
        "tail_streams": tail_streams,
        "listeners": {
            r.name: {"active": r.active.current, "queued": r.queued.current} for r in reports
        },
    }
    return (json.dumps(doc) + "\n").encode()


def tail_line(at: float, name: str, active: int, queued: int, *, as_json: bool = False) -> bytes:
    """One line of a tail stream: ``ISO8601_TIME LISTENER ACTIVE QUEUED``.

    Example::

        >>> tail_line(0.0, "0.0.0.0:80", 3, 1)
        b'1970-01-01T00:00:00Z 0.0.0.0:80 3 1\\n'
    """
    if as_json:
        doc = {"time": iso8601(at), "listener": name, "active": active, "queued": queued}
        return (json.dumps(doc) + "\n").encode()
    return f"{iso8601(at)} {name} {active} {queued}\n".encode()


# -- HTML --------------------------------------------------------------------

_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;"
    "text-align:right}th{background:#eee}td.name{text-align:left}"
    "svg{background:#fafafa;border:1px solid #ddd;margin:.5em 0}"
    ".active{stroke:#1f77b4}.queued{stroke:#d62728}"
    "form{display:inline}pre{background:#f4f4f4;padding:.5em}"
)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _page(title: str, body: str) -> bytes:
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )
    return doc.encode()


def _history_svg(
    history: Sequence[Sample],
    kinds: Sequence[str],
    *,
    width: int,
    height: int,
    compact: bool = False,
) -> str:
    """A line chart of recent samples, one polyline per kind (axes labelled unless compact)."""
    pad = 3 if compact else 28
    values = [getattr(s, k) for s in history for k in kinds]
    top = max([1, *values])
    n = len(history)
    inner_w, inner_h = width - 2 * pad, height - 2 * pad
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="history">',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        'stroke="#999"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>',
    ]
    if not compact:
        parts += [
            f'<text x="2" y="{pad + 4}" font-size="10">{top}</text>',
            f'<text x="2" y="{height - pad}" font-size="10">0</text>',
            f'<text x="{pad}" y="{height - 6}" font-size="10">last {n} samples</text>',
        ]
    for kind in kinds:
        points = []
        for i, s in enumerate(history):
            x = pad + (inner_w * i / (n - 1) if n > 1 else inner_w / 2)
            y = pad + inner_h - inner_h * getattr(s, kind) / top
            points.append(f"{x:.1f},{y:.1f}")
        if points:
            parts.append(
                f'<polyline class="{kind}" fill="none" stroke-width="1.5" '
                f'points="{" ".join(points)}"><title>{kind}</title></polyline>'
            )
    legend_x = width - pad - 120
    for i, kind in enumerate(() if compact else kinds):
        y = pad - 14 + 12 * i
        parts.append(
            f'<line class="{kind}" x1="{legend_x}" y1="{y}" x2="{legend_x + 16}" y2="{y}" '
            'stroke-width="2"/>'
            f'<text x="{legend_x + 20}" y="{y + 4}" font-size="10">{kind}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _histogram_svg(stats: AggregateStats, *, width: int = 600, height: int = 220) -> str:
    """The log2 histogram as bars, each labelled with its low bound and count."""
    rows = _shown_buckets(stats.buckets)
    pad, label_h = 24, 18
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="histogram">'
    ]
    if not rows:
        parts.append(f'<text x="{pad}" y="{height // 2}" font-size="12">no samples</text>')
    top = max([c for _, _, c in rows] or [1])
    slot = (width - 2 * pad) / max(len(rows), 1)
    base = height - pad - label_h
    for i, (lo, hi, c) in enumerate(rows):
        h = (base - pad) * c / top
        x = pad + i * slot
        cx = x + slot / 2
        parts.append(
            f'<rect x="{x + 2:.1f}" y="{base - h:.1f}" width="{max(slot - 4, 1):.1f}" '
            f'height="{h:.1f}" fill="#1f77b4"><title>[{lo}, {hi}): {c}</title></rect>'
            f'<text x="{cx:.1f}" y="{base - h - 3:.1f}" font-size="10" '
            f'text-anchor="middle">{c}</text>'
            f'<text x="{cx:.1f}" y="{base + 13}" font-size="10" text-anchor="middle">{lo}</text>'
        )
    parts.append(
        f'<line x1="{pad}" y1="{base}" x2="{width - pad}" y2="{base}" stroke="#999"/></svg>'
    )
    return "".join(parts)


def _reset_form(base: str, name: str) -> str:
    return (
        f'<form action="{_e(base)}/reset/{_e(listener_url(name))}" method="post">'
        '<button type="submit">reset</button></form>'
    )


def render_listener_html(report: ListenerReport, kind: str, *, base: str, host: str) -> bytes:
    """The ``/active/<L>.html`` (or ``queued``) page: summary, SVG charts, text histogram."""
    stats: AggregateStats = getattr(report, kind)
    other = "queued" if kind == "active" else "active"
    url = _e(listener_url(report.name))
    b = _e(base)
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in _summary_rows(stats))
    body = (
        f"<h1>{_e(report.name)} {kind}</h1>"
        f'<p>{_e(host)} &middot; <a href="{b}/">all listeners</a> &middot; '
        f'<a href="{b}/{other}/{url}.html">{other}</a> &middot; '
        f'<a href="{b}/{kind}/{url}.txt">text</a> &middot; '
        f'<a href="{b}/{kind}/{url}.json">JSON</a> &middot; '
        f'<a href="{b}/tail/{url}.txt">tail</a> &middot; '
        f"{_reset_form(base, report.name)}</p>"
        f'<table class="summary">{rows}</table>'
        f"<h2>history</h2>{_history_svg(report.history, (kind,), width=600, height=200)}"
        f"<h2>histogram</h2>{_histogram_svg(stats)}"
        f"<pre>{_e(histogram_text(stats.buckets, stats.outliers_low, stats.outliers_high))}"
        "</pre>"
    )
    return _page(f"{host} - {report.name} {kind}", body)


def render_index_html(
    reports: Sequence[ListenerReport],
    *,
    base: str,
    host: str,
    updated_at: float | None,
    error: str | None,
) -> bytes:
    """The ``/`` page: every watched listener, its current counts, links and a reset button."""
    b = _e(base)
    when = "never" if updated_at is None else iso8601(updated_at)
    rows = []
    for r in reports:
        url = _e(listener_url(r.name))
        active = "-" if r.active.current is None else r.active.current
        queued = "-" if r.queued.current is None else r.queued.current
        rows.append(
            f'<tr><td class="name"><a href="{b}/tail/{url}.txt">{_e(r.name)}</a></td>'
            f'<td><a href="{b}/active/{url}.html">{active}</a></td>'
            f'<td><a href="{b}/queued/{url}.html">{queued}</a></td>'
            f"<td>{_history_svg(r.history, _BOTH, width=240, height=40, compact=True)}</td>"
            f"<td>{_reset_form(base, r.name)}</td></tr>"
        )
    legend = '<span style="color:#1f77b4">active</span>, <span style="color:#d62728">queued</span>'
    problem = f'<p class="error">sampling failed: {_e(error)}</p>' if error else ""
    body = (
        f"<h1>{_e(host)}: all listeners</h1><p>Updated at {_e(when)} &middot; "
        f'<a href="{b}/index.json">JSON</a></p>{problem}'
        "<table><tr><th>listener</th><th>active</th><th>queued</th>"
        f"<th>history ({legend})</th>"
        f"<th>reset</th></tr>{''.join(rows)}</table>"
    )
    return _page(f"{host} - all listeners", body)


def hostname() -> str:
    """This machine's host name, for page titles."""
    return socket.gethostname()
