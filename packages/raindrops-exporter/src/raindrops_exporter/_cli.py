"""``raindrops-exporter``: serve every server's figures on an address of its own."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from types import FrameType

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from raindrops_core import DEFAULT_ALLOW
from raindrops_core import ConfigError as CoreConfigError
from shm_counters import ShmCountersError

from ._errors import ConfigError
from ._exporter import DEFAULT_HISTORY, DEFAULT_INTERVAL, Exporter, Reading
from ._http import DEFAULT_BIND, ExporterServer
from ._metrics import reading_families, reading_json, render_json

__all__ = ["exporter_from_args", "main", "parser"]


def parser() -> argparse.ArgumentParser:
    """The ``raindrops-exporter`` command line."""
    p = argparse.ArgumentParser(
        prog="raindrops-exporter",
        description=(
            "Serve /metrics (Prometheus, OpenMetrics), /json and a live dashboard for every "
            "gunicorn/uvicorn/hypercorn server of this user on this machine, read from their "
            "shared segments and the kernel: it answers while every worker is busy."
        ),
    )
    p.add_argument(
        "--bind",
        default=DEFAULT_BIND,
        help=f"HOST:PORT, [IPV6]:PORT or unix:PATH to serve on (default {DEFAULT_BIND})",
    )
    p.add_argument(
        "--allow",
        action="append",
        metavar="NETWORK",
        help="client network allowed to read, repeatable (default loopback: "
        + ", ".join(DEFAULT_ALLOW)
        + "; Unix-socket clients always)",
    )
    p.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="NAME",
        help="show only this server (its label or one of its listener names), repeatable",
    )
    p.add_argument(
        "--segment",
        action="append",
        default=[],
        metavar="PATH",
        help="attach to this named segment too (a server started with segment=PATH), repeatable",
    )
    p.add_argument(
        "--per-worker",
        action="store_true",
        help="label the per-worker counters by worker and pid instead of summing them per server",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL,
        help=f"seconds between samples (default {DEFAULT_INTERVAL:g})",
    )
    p.add_argument(
        "--history",
        type=float,
        default=DEFAULT_HISTORY,
        help=f"seconds of samples kept in memory for the dashboard (default {DEFAULT_HISTORY:g})",
    )
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument(
        "--json", action="store_true", help="with --once: JSON instead of Prometheus text"
    )
    p.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    return p


def exporter_from_args(args: argparse.Namespace) -> Exporter:
    """The :class:`Exporter` the parsed arguments ask for."""
    return Exporter(
        servers=args.server,
        segments=args.segment,
        interval=args.interval,
        history=args.history,
    )


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the exporter (``--once``: print one snapshot).

    Example::

        raindrops-exporter --bind 127.0.0.1:9873
        raindrops-exporter --once --json
    """
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        exporter = exporter_from_args(args)
        if args.once:
            reading = exporter.sample()
            if args.json:
                out = render_json(reading_json(reading))
            else:
                registry = CollectorRegistry(auto_describe=False)
                registry.register(_Fixed(reading, args.per_worker))
                out = generate_latest(registry)
            with contextlib.suppress(BrokenPipeError):
                sys.stdout.buffer.write(out)
                sys.stdout.flush()
            exporter.stop()
            return 0
        server = ExporterServer(
            exporter,
            args.bind,
            allow=args.allow or DEFAULT_ALLOW,
            per_worker=args.per_worker,
        )
    except (ConfigError, CoreConfigError, ShmCountersError, OSError) as exc:
        print(f"raindrops-exporter: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop)
    print(f"raindrops-exporter: serving on {server.url}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


class _Fixed:
    """A collector of one reading (``--once``): the families, and how long the read took."""

    def __init__(self, reading: Reading, per_worker: bool) -> None:
        self.reading = reading
        self.per_worker = per_worker

    def collect(self) -> Iterator[Metric]:
        yield from reading_families(self.reading, per_worker=self.per_worker)
        yield GaugeMetricFamily(
            "raindrops_exporter_scrape_duration_seconds",
            "Seconds this scrape took to read every server and build its families.",
            value=self.reading.duration,
            unit="seconds",
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
