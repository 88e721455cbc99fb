"""prometheus_client's multiprocess documentation, run unchanged but for the setup line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers import families, samples

DRIVER = str(Path(__file__).resolve().parent / "docs_examples.py")


def _run(mode: str, directory: Path) -> dict[str, Any]:
    directory.mkdir()
    env = {k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"}
    env["RAINDROPS_SHM_DIR"] = str(directory)  # the per-user segment directory goes here
    proc = subprocess.run(
        [sys.executable, DRIVER, mode, str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer


def test_documentation_examples_give_the_same_exposition(tmp_path: Path) -> None:
    """The documented app, gauge and child_exit hook serve the same body both ways."""
    mpc = _run("mpc", tmp_path / "mpc")
    shm = _run("shm", tmp_path / "shm")
    assert mpc["status"] == shm["status"] == ["200 OK"]
    assert families(mpc["exposition"]) == families(shm["exposition"])
    # the segment was found from the listening socket: a file in the per-user directory
    made = [p.name for p in (tmp_path / "shm").glob(f"raindrops-{os.geteuid()}/*")]
    assert len(made) == 1
    assert made[0].startswith("prometheus-")
    assert samples(shm["exposition"]) == {
        ("my_counter", "counter", "Description of my counter", "my_counter_total", (), 15.0),
        # the held worker's request is in flight; the killed one's is gone (child_exit)
        ("inprogress_requests", "gauge", "help", "inprogress_requests", (), 1.0),
    }
