"""The Watcher's HTML pages in a real browser: headless Chromium renders them, no JavaScript."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest
from servers import bind_tcp, launch, listener_name, wait_until
from test_watcher import HELD, held_queue

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.linux,
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed (Debian: apt-get install chromium chromium-driver)",
    ),
]


def chromium(url: str, profile: Path, *args: str) -> str:
    """Run headless Chromium once on ``url`` with ``args``; return what it printed."""
    assert CHROMIUM is not None
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1200,900",
        *args,
        url,
    ]
    done = subprocess.run(
        argv, capture_output=True, timeout=60, check=False, start_new_session=True
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode(errors="replace")


def visible_text(dom: str) -> str:
    """The DOM's text content with tags removed and entities decoded."""
    dom = re.sub(r"(?is)<style.*?</style>", " ", dom)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def test_pages_render_in_chromium() -> None:
    """Index and queued pages render with the listener, the held queue and two SVG charts."""
    with held_queue(HELD) as held, bind_tcp("127.0.0.1") as sock:
        name = listener_name(held)
        env = {"WATCH_LISTENERS": name, "WATCH_DELAY": "0.1"}
        with launch(
            "gunicorn-gthread", "watcher_apps:wsgi_watcher", sock, workers=1, env=env
        ) as srv:
            url = quote(name, safe="")
            wait_until(
                lambda: srv.get(f"/queued/{url}.txt")[1].get("x-current") == str(HELD),
                timeout=10,
            )
            base = f"http://{listener_name(sock)}"
            with tempfile.TemporaryDirectory(prefix="rd-chromium-") as tmp:
                shot = Path(tmp) / "queued.png"
                dom = chromium(f"{base}/queued/{url}.html", Path(tmp) / "p1", "--dump-dom")
                chromium(f"{base}/queued/{url}.html", Path(tmp) / "p2", f"--screenshot={shot}")
                index = chromium(f"{base}/", Path(tmp) / "p3", "--dump-dom")
                assert shot.stat().st_size > 1000
                assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = visible_text(dom)
    assert f"{name} queued" in text
    assert f"max {HELD}" in text
    assert f"current {HELD}" in text
    assert dom.count("<svg") == 2
    assert "<script" not in dom
    index_text = visible_text(index)
    assert f"{name} {0} {HELD}" in index_text
