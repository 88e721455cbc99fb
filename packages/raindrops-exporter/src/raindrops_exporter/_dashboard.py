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

from importlib.resources import files

__all__ = ["DASHBOARD"]

#: The page, as served (``dashboard.html`` beside this module).
DASHBOARD: bytes = files(__package__).joinpath("dashboard.html").read_bytes()
