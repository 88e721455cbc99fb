"""Live demo: gunicorn workers under a bounded load, their /_raindrops numbers live.

Starts gunicorn (4 sync workers, the raindrops middleware in front) with
``gunicorn -b 127.0.0.1:PORT`` on a free loopback port, drives a mix of
fast, slow and streamed requests at it from 40 client threads for a few
seconds, and redraws what ``/_raindrops`` answers twice a second: requests
inside the app on every worker (``calling``), responses being written
(``writing``), and the listener's accepted (``active``) and waiting
(``queued``) connections.  Then it stops the load, shows the gauges back at
idle, stops everything it started, and removes the shared-memory file the
workers counted in (the demo gives them a directory of their own under the
temp directory, ``$RAINDROPS_SHM_DIR``, instead of ``/dev/shm``, so
nothing outlives it).

    python integration/demo.py [--seconds 8] [--clients 40] [--workers 4]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import Server, launch, tcp


def _client(server: Server, stop: threading.Event, seed: int, counts: list[int]) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        path = rng.choices(["/", "/slow", "/stream"], weights=[5, 3, 2])[0]
        try:
            status, _, _ = server.get(path, timeout=10.0)
        except (OSError, http.client.HTTPException):
            counts[1] += 1
            continue
        counts[0 if status == 200 else 1] += 1


def _show(server: Server, title: str, served: int, failed: int) -> None:
    status, _, body = server.get("/_raindrops", timeout=5.0)
    lines = body.decode().rstrip("\n").split("\n") if status == 200 else [f"HTTP {status}"]
    clear = "\x1b[H\x1b[J" if sys.stdout.isatty() else "\n"
    out = [f"{clear}{title}", f"served {served}, failed {failed}", ""]
    out += [f"  {line}" for line in lines]
    print("\n".join(out), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns 0 when every request succeeded and gauges went idle."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="load duration")
    parser.add_argument("--clients", type=int, default=40, help="concurrent clients")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 600:
        parser.error(f"--seconds {args.seconds} must be in (0, 600]")
    if not 0 < args.clients <= 500:
        parser.error(f"--clients {args.clients} must be in 1..500")

    with contextlib.ExitStack() as cleanup:
        shm = tempfile.mkdtemp(prefix="raindrops-demo-")
        # Removed once gunicorn has stopped (callbacks run last-in first).
        cleanup.callback(shutil.rmtree, shm, True)
        server = cleanup.enter_context(
            launch(
                "gunicorn-sync",
                "demo_app:app",
                tcp("127.0.0.1"),
                workers=args.workers,
                extra=["--backlog", "64"],
                env={"RAINDROPS_SHM_DIR": shm},
            )
        )
        stop = threading.Event()
        counts = [0, 0]
        threads = [
            threading.Thread(target=_client, args=(server, stop, i, counts), daemon=True)
            for i in range(args.clients)
        ]
        for t in threads:
            t.start()
        title = (
            f"raindrops demo: gunicorn, {args.workers} sync workers on {server.name}, "
            f"{args.clients} clients"
        )
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            _show(server, f"{title} (under load)", *counts)
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=15)
        time.sleep(0.3)
        _show(server, f"{title} (load stopped)", *counts)
        _, _, body = server.get("/_raindrops")
    idle = b"calling: 0\nwriting: 0\n" in body
    print(
        f"\ngauges back at idle: {'yes' if idle else 'NO'}; gunicorn stopped, its counters removed."
    )
    return 0 if idle and counts[1] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
