"""The Watcher's pages: text histograms, JSON, HTML with inline SVG, and HTTP headers.

Pure functions from :class:`~raindrops_core.watcher.ListenerReport` (and
friends) to bytes: no I/O, no framework.
"""

from __future__ import annotations

import decimal
import html
import json
import math
import socket
import time
from collections.abc import Mapping, Sequence
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

from linux_inet_diag import escape_name

from ._watch_stats import AggregateStats, ListenerReport, Sample

__all__ = [
    "PAGE_SCRIPT",
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
    "ruby_round",
    "stats_headers",
    "tail_line",
]

_BOTH = ("active", "queued")
#: The aggregate gem's histogram is 80 columns wide.
_COLUMNS = 80
#: The aggregate gem's log2 histogram has 128 buckets: bucket k holds [2**k, 2**(k+1)).
_GEM_BUCKETS = 128


def http_date(at: float) -> str:
    """``at`` (seconds since the epoch) as an HTTP date: ``Thu, 01 Jan 1970 00:00:00 GMT``."""
    return formatdate(at, usegmt=True)


def iso8601(at: float) -> str:
    """``at`` as ISO 8601 UTC to the second (Ruby's ``Time#iso8601``): ``1970-01-01T00:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def format_number(value: float | None) -> str:
    """A number as Ruby's ``to_s`` writes it (the Ruby Watcher's header values).

    Ints as they are; floats as Ruby's ``Float#to_s``: the shortest digits
    that round-trip, in decimal with at least one fraction digit (``4.0``)
    from 1e-4 up to below 1e15 (1e16 with a fraction), else with an
    exponent (``1.0e+16``, ``1.5e-05``); ``None`` (no such value, e.g. the mean of nothing) as
    ``NaN``, which is what Ruby computes there.

    Example::

        >>> format_number(3), format_number(4.0), format_number(2 / 3), format_number(None)
        ('3', '4.0', '0.6666666666666666', 'NaN')
        >>> format_number(1e16), format_number(1e-05), format_number(123456789012345.6)
        ('1.0e+16', '1.0e-05', '123456789012345.6')
    """
    if value is None:
        return "NaN"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return f"{sign}0.0"
    exact = decimal.Decimal(repr(abs(value))).normalize()  # repr: the shortest round trip
    _, digit_tuple, exponent = exact.as_tuple()
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + int(exponent)  # value == 0.DIGITS * 10**point
    if -4 < point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if 0 < point < len(digits) and point <= 16:
        return f"{sign}{digits[:point]}.{digits[point:]}"
    if len(digits) <= point <= 15:
        return f"{sign}{digits}{'0' * (point - len(digits))}.0"
    return f"{sign}{digits[0]}.{digits[1:] or '0'}e{point - 1:+03d}"


def ruby_round(value: float) -> int:
    """Ruby's ``Float#round``: to the nearest integer, halves away from zero.

    Example::

        >>> ruby_round(2.5), ruby_round(3.5), ruby_round(-2.5), ruby_round(0.49999999999999994)
        (3, 4, -3, 0)
    """
    floor = math.floor(value)
    diff = value - floor  # exact: both are within one unit of each other
    if diff > 0.5 or (diff == 0.5 and value > 0):
        return floor + 1
    return floor


def _name_bytes(name: str) -> bytes:
    """The name's bytes: UTF-8, undecodable bytes (``surrogateescape``) as they were."""
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        return name.encode("utf-8", "surrogatepass")


def listener_url(name: str) -> str:
    """The listener's name as one URL path segment: ``0.0.0.0%3A80``, ``%2Ftmp%2Fs.sock``.

    The name's bytes are percent-encoded, so a path that is not UTF-8
    (``/tmp/caf\\xe9.sock``) is ``%2Ftmp%2Fcaf%E9.sock`` and routes back to it.
    """
    return quote(_name_bytes(name), safe="")


def stats_headers(stats: AggregateStats, *, expires: float) -> list[tuple[str, str]]:
    """The Ruby Watcher's ``X-*`` headers of one aggregate, in its order, then ``Expires``.

    All eleven are always there, valued as Ruby writes them: ``X-Min`` and
    ``X-Max`` empty before a first sample, ``X-Mean`` and ``X-Std-Dev``
    Ruby floats (``4.0``) or ``NaN`` (the standard deviation below two
    samples), peaks at the last reset until a maximum above 0 was reached
    again, ``X-Current`` 0 before a first sample; ``Expires`` is when the
    next sample is due.
    """

    def int_or_empty(v: int | None) -> str:
        return "" if v is None else str(v)

    return [
        ("X-Count", str(stats.count)),
        ("X-Min", int_or_empty(stats.min)),
        ("X-Max", int_or_empty(stats.max)),
        ("X-Mean", format_number(stats.mean)),
        ("X-Std-Dev", format_number(stats.std_dev)),
        ("X-Outliers-Low", str(stats.outliers_low)),
        ("X-Outliers-High", str(stats.outliers_high)),
        ("X-Last-Reset", http_date(stats.last_reset)),
        ("X-Current", str(stats.current or 0)),
        ("X-First-Peak-At", http_date(stats.first_peak_at)),
        ("X-Last-Peak-At", http_date(stats.last_peak_at)),
        ("Expires", http_date(expires)),
    ]


def _shown_buckets(buckets: Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    used = [i for i, (_, _, c) in enumerate(buckets) if c]
    if not used:
        return []
    return list(buckets[used[0] : used[-1] + 1])


def _bucket_index(low: int) -> int:
    return low.bit_length() - 1


def histogram_text(buckets: Sequence[tuple[int, int, int]]) -> str:
    """A log2 histogram as the Ruby ``aggregate`` gem's ``Aggregate#to_s`` writes it.

    ``buckets`` are ``(low, high, count)`` with ``low`` a power of two (the
    gem's bucket ``k`` holds ``[2**k, 2**(k+1))``; samples below 1 and from
    ``2**127`` on are outliers and not drawn).  80 columns: the bucket's low
    bound, ``|``, a bar of ``@`` (one per sample, or scaled down to fit),
    ``|`` and the count; a ``~`` row for each run of empty buckets (and
    after the last used bucket unless it is the gem's last), then ``Total``.
    ``Empty histogram`` when no bucket holds a sample.

    Example::

        >>> print(histogram_text([(1, 2, 2), (2, 4, 0), (4, 8, 1)]), end="")
        value |------------------------------------------------------------------| count
            1 |@@                                                                |     2
              ~
            4 |@                                                                 |     1
              ~
        Total |------------------------------------------------------------------|     3
    """
    rows = [(_bucket_index(lo), lo, c) for lo, _, c in buckets if c]
    if not rows:
        return "Empty histogram"
    total = sum(c for _, _, c in rows)
    top = max(c for _, _, c in rows)
    value_width = max(len(str(rows[-1][1])), len("value"), len("Total"))
    count_width = max(len(str(total)), len("count"))
    bar_width = _COLUMNS - (value_width + len(" |") + len("| ") + count_width)
    weight = max(top / bar_width, 1.0)
    skip = f"{'':>{value_width}} ~\n"
    out = [f"{'value':>{value_width}} |{'-' * bar_width}| {'count':>{count_width}}\n"]
    previous = rows[0][0] - 1
    for index, low, count in rows:
        if index != previous + 1:
            out.append(skip)
        previous = index
        bar = int(count / weight)
        drawn = "@" * bar + " " * (bar_width - bar)
        out.append(f"{low:>{value_width}d} |{drawn}| {count:>{count_width}d}\n")
    if rows[-1][0] != _GEM_BUCKETS - 1:
        out.append(skip)
    out.append(f"{'Total':>{value_width}} |{'-' * bar_width}| {total:>{count_width}d}\n")
    return "".join(out)


def _summary_rows(stats: AggregateStats, expires: float) -> list[tuple[str, str]]:
    """The Ruby Watcher's page table: each ``X-*`` header without ``X-``, and its value."""
    return [(k[2:], v) for k, v in stats_headers(stats, expires=expires) if k.startswith("X-")]


def render_listener_text(report: ListenerReport, kind: str) -> bytes:
    """The ``/active/<L>.txt`` (or ``queued``) body: the gem's text histogram.

    Example::

        GET /queued/0.0.0.0%3A80.txt  ->  "value |---...---| count\\n    1 |@@@ ..."
    """
    stats: AggregateStats = getattr(report, kind)
    return histogram_text(stats.buckets).encode()


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
    ``max``, ``mean``, ``std_dev`` (the sample standard deviation, as
    ``X-Std-Dev``; null where that says ``NaN``), ``outliers_low``,
    ``outliers_high``, ``current``, ``first_peak_at``, ``last_peak_at``,
    ``last_reset`` as ISO 8601), ``buckets`` (non-empty ones, ``{"low",
    "high", "count"}``) and ``history`` (``[[time, value], ...]``, oldest
    first).
    """
    stats: AggregateStats = getattr(report, kind)
    doc = {"listener": report.name, "kind": kind, **_stats_json(stats)}
    doc["history"] = [[iso8601(s.at), getattr(s, kind)] for s in report.history]
    return (json.dumps(doc) + "\n").encode()


def render_index_json(
    current: Mapping[str, tuple[int, int]],
    *,
    updated_at: float | None,
    delay: float,
    error: str | None,
    tail_streams: int = 0,
) -> bytes:
    """The ``/index.json`` body: every listener of the last sample and its ``active``/``queued``.

    Also ``updated_at`` (last sample, ISO 8601), ``delay``, ``error`` (the
    last sampling failure or null) and ``tail_streams`` (open in this process).
    """
    doc = {
        "updated_at": None if updated_at is None else iso8601(updated_at),
        "delay": delay,
        "error": error,
        "tail_streams": tail_streams,
        "listeners": {
            name: {"active": active, "queued": queued}
            for name, (active, queued) in sorted(current.items())
        },
    }
    return (json.dumps(doc) + "\n").encode()


def tail_line(at: float, name: str, active: int, queued: int, *, as_json: bool = False) -> bytes:
    """One line of a tail stream: ``ISO8601_TIME LISTENER ACTIVE QUEUED``.

    Spelled as the Ruby Watcher's ``sprintf("%20s % 35s % 10u % 10u\\n")``
    (the name's width capped at its own length, so never padded): the time,
    the name, and each count right-aligned in 10 columns after one space.
    The name is written through :func:`linux_inet_diag.escape_name` (a
    newline in it would forge a line, ESC drive the terminal of whoever
    runs ``curl -N``); the JSON line quotes it.

    Example::

        >>> tail_line(0.0, "0.0.0.0:80", 3, 1)
        b'1970-01-01T00:00:00Z 0.0.0.0:80          3          1\\n'
    """
    if as_json:
        doc = {"time": iso8601(at), "listener": name, "active": active, "queued": queued}
        return (json.dumps(doc) + "\n").encode()
    return f"{iso8601(at):>20} {escape_name(name)} {active: 10d} {queued: 10d}\n".encode()


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


def _n(name: str) -> str:
    """A name (or other outside text) on a page: control characters escaped, then HTML."""
    return _e(escape_name(name))


# The pages update themselves, as the exporter's dashboard does: every
# ``data-refresh`` seconds the page fetches itself again and swaps its body
# in place (no reload, no history entry, the scroll position kept); a
# failed fetch keeps the page as it is. Inline, so the page needs nothing
# from anywhere; without JavaScript, <noscript>'s meta refresh reloads it.
_REFRESH_JS = (
    "(function(){var s=+document.body.dataset.refresh;if(!(s>0))return;"
    "setInterval(function(){fetch(location.href,{cache:'no-store'})"
    ".then(function(r){if(!r.ok)throw r.status;return r.text();})"
    ".then(function(t){var d=new DOMParser().parseFromString(t,'text/html');"
    "document.body.innerHTML=d.body.innerHTML;}).catch(function(){});},s*1000);})();"
)
#: The one script element the Watcher's pages carry (their self-refresh):
#: nothing else on a page is script, whatever the names it shows. A site
#: with a Content-Security-Policy allows it by its hash.
PAGE_SCRIPT = f"<script>{_REFRESH_JS}</script>"


def _page(title: str, body: str, *, refresh: float | None = None) -> bytes:
    """A whole page; with ``refresh`` (seconds) it updates itself that often."""
    head = f'<meta charset="utf-8"><title>{_e(title)}</title><style>{_STYLE}</style>'
    tail = ""
    attrs = ""
    if refresh is not None and refresh > 0:
        every = max(1, math.ceil(refresh))
        head += f'<noscript><meta http-equiv="refresh" content="{every}"></noscript>'
        attrs = f' data-refresh="{every}"'
        tail = PAGE_SCRIPT
    doc = (
        f'<!DOCTYPE html>\n<html lang="en"><head>{head}</head>'
        f"<body{attrs}>{body}{tail}</body></html>\n"
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
    """The log2 histogram as bars, each labelled with its low bound and count.

    Samples of 0 (an idle listener, most of the time: the gem counts them
    as low outliers, not in a bucket) are drawn as a bar of their own,
    labelled 0, so a histogram of an idle queue is not "no samples".
    """
    rows = _shown_buckets(stats.buckets)
    if stats.outliers_low:
        rows = [(0, 1, stats.outliers_low), *rows]
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


def render_listener_html(
    report: ListenerReport,
    kind: str,
    *,
    base: str,
    host: str,
    expires: float,
    refresh: float | None = None,
) -> bytes:
    """The ``/active/<L>.html`` (or ``queued``) page, as the Ruby Watcher's and more.

    As in Ruby: titled ``HOST - LISTENER``, a table of the ``X-*`` headers
    (names without ``X-``, values as sent), the text histogram in ``<pre>``,
    a reset form.  Added: links, SVG charts of the history and histogram
    (samples of 0 drawn too), and, with ``refresh`` (the sampling delay),
    the page updating itself.
    """
    stats: AggregateStats = getattr(report, kind)
    other = "queued" if kind == "active" else "active"
    url = _e(listener_url(report.name))
    b = _e(base)
    rows = "".join(
        f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in _summary_rows(stats, expires)
    )
    body = (
        f"<h1>{_n(report.name)} {kind}</h1>"
        f'<p>{_e(host)} &middot; <a href="{b}/">all listeners</a> &middot; '
        f'<a href="{b}/{other}/{url}.html">{other}</a> &middot; '
        f'<a href="{b}/{kind}/{url}.txt">text</a> &middot; '
        f'<a href="{b}/{kind}/{url}.json">JSON</a> &middot; '
        f'<a href="{b}/tail/{url}.txt">tail</a> &middot; '
        f"{_reset_form(base, report.name)}</p>"
        f'<table class="summary">{rows}</table>'
        f"<h2>history</h2>{_history_svg(report.history, (kind,), width=600, height=200)}"
        f"<h2>histogram</h2>{_histogram_svg(stats)}"
        f"<pre>{_e(histogram_text(stats.buckets))}</pre>"
    )
    return _page(f"{host} - {escape_name(report.name)}", body, refresh=refresh)


def render_index_html(
    current: Mapping[str, tuple[int, int]],
    reports: Mapping[str, ListenerReport],
    *,
    base: str,
    host: str,
    updated_at: float | None,
    error: str | None,
    refresh: float | None = None,
) -> bytes:
    """The ``/`` page, as the Ruby Watcher's and more.

    As in Ruby: titled ``HOST - all interfaces``, ``Updated at`` the last
    sample, one row per listener of that sample sorted by name (its tail
    link, current ``active`` and ``queued`` linking to their pages, a reset
    form).  Added: a history chart per listener, a link to the JSON, and,
    with ``refresh`` (the sampling delay), the page updating itself.
    """
    b = _e(base)
    when = "never" if updated_at is None else iso8601(updated_at)
    rows = []
    for name, (active, queued) in sorted(current.items()):
        url = _e(listener_url(name))
        report = reports.get(name)
        chart = (
            ""
            if report is None
            else _history_svg(report.history, _BOTH, width=240, height=40, compact=True)
        )
        rows.append(
            f'<tr><td class="name"><a href="{b}/tail/{url}.txt">{_n(name)}</a></td>'
            f'<td><a href="{b}/active/{url}.html">{active}</a></td>'
            f'<td><a href="{b}/queued/{url}.html">{queued}</a></td>'
            f"<td>{_reset_form(base, name)}</td>"
            f"<td>{chart}</td></tr>"
        )
    legend = '<span style="color:#1f77b4">active</span>, <span style="color:#d62728">queued</span>'
    problem = f'<p class="error">sampling failed: {_n(error)}</p>' if error else ""
    body = (
        f"<h3>Updated at {_e(when)}</h3>"
        f'<p>{_e(host)} &middot; <a href="{b}/index.json">JSON</a></p>{problem}'
        "<table><tr><th>address</th><th>active</th><th>queued</th><th>reset</th>"
        f"<th>history ({legend})</th></tr>{''.join(rows)}</table>"
    )
    return _page(f"{host} - all interfaces", body, refresh=refresh)


def hostname() -> str:
    """This machine's host name, for page titles."""
    return socket.gethostname()
