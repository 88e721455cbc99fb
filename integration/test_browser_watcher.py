"""The Watcher's HTML pages in a real browser: Chromium driven through chromedriver (WebDriver).

Debian's ``chromium`` and ``chromium-driver`` packages; the ``browser`` nox
session runs this, CI installs both.  The test asks the browser what it
rendered (``innerText``, element boxes) and decodes its screenshot with the
standard library.  The pages' only script is their self-refresh, checked
here too: the index updates itself without a reload.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from servers import launch, listener_name, tcp, wait_until
from test_watcher import HELD, held_queue

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.linux,
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="chromium or chromedriver is not installed "
        "(Debian: apt-get install chromium chromium-driver)",
    ),
]

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1000,800",
)


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium session through /usr/bin/chromedriver, with a fresh profile."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="rd-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            driver.set_page_load_timeout(30)
            yield driver
        finally:
            driver.quit()


def png_pixels(png: bytes) -> tuple[int, int, set[bytes]]:
    """Width, height and the set of distinct pixels of an 8-bit RGB(A) non-interlaced PNG."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = data
        elif kind == b"IDAT":
            idat += data
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, color in (2, 6), interlace) == (8, True, 0)
    bpp = 4 if color == 6 else 3
    raw = zlib.decompress(idat)
    stride = width * bpp
    previous = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(height):
        start = y * (stride + 1)
        kind = raw[start]
        row = bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                row[i] = (row[i] + row[i - bpp]) & 0xFF
        elif kind == 2:
            row = bytearray((a + b) & 0xFF for a, b in zip(row, previous, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = row[i - bpp] if i >= bpp else 0
                row[i] = (row[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = row[i - bpp] if i >= bpp else 0
                b = previous[i]
                c = previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                row[i] = (row[i] + pred) & 0xFF
        for x in range(0, stride, bpp):
            colours.add(bytes(row[x : x + bpp]))
        previous = row
    return width, height, colours


def table_rows(driver: Any, selector: str) -> list[list[str]]:
    """The rendered text of every cell of the table at ``selector``, row by row."""
    rows: list[list[str]] = driver.execute_script(
        "return Array.from(document.querySelector(arguments[0]).rows,"
        " r => Array.from(r.cells, c => c.innerText.trim()))",
        selector,
    )
    return rows


def http_now() -> str:
    """The current second as an HTTP date, as the Watcher writes ``Last-Reset``."""
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())


def summary_of(driver: Any) -> dict[str, str]:
    """The listener page's summary table, or ``{}`` while a page is loading."""
    try:
        return dict(table_rows(driver, "table.summary"))  # type: ignore[arg-type]
    except Exception:  # no such table (yet): the next poll sees it
        return {}


def test_pages_render_in_chromium(browser: Any) -> None:
    """Index and queued pages render the held queue's exact numbers, real SVG boxes, pixels."""
    with held_queue(HELD) as held:
        name = listener_name(held)
        env = {"WATCH_LISTENERS": name, "WATCH_DELAY": "0.1"}
        with launch(
            "gunicorn-gthread", "watcher_apps:wsgi_watcher", tcp("127.0.0.1"), workers=1, env=env
        ) as srv:
            url = quote(name, safe="")

            def sampled() -> bool:
                headers = srv.get(f"/queued/{url}.txt")[1]
                return headers.get("x-current") == str(HELD) and int(headers["x-count"]) >= 2

            wait_until(sampled, timeout=10)
            base = f"http://{srv.name}"

            browser.get(f"{base}/")
            index_title = browser.title
            index_text = browser.execute_script("return document.body.innerText")
            index_rows = table_rows(browser, "table")
            index_svgs = [e.rect for e in browser.find_elements("css selector", "svg")]

            # The page updates itself (every sampling delay, at least 1 s):
            # "Updated at" moves on while a mark set on the window survives,
            # so the body was swapped in place, the page never reloaded.
            browser.execute_script("window.rdMark = 42")
            first_update = index_text.splitlines()[0]

            def refreshed() -> bool:
                text = browser.execute_script("return document.body.innerText")
                return bool(text.splitlines()[0] != first_update)

            wait_until(refreshed, timeout=10, interval=0.2)
            mark_after_refresh = browser.execute_script("return window.rdMark")
            rows_after_refresh = table_rows(browser, "table")

            browser.get(f"{base}/queued/{url}.html")
            title = browser.title
            summary = dict(table_rows(browser, "table.summary"))
            pre = browser.find_element("css selector", "pre").text
            boxes = [e.rect for e in browser.find_elements("css selector", "svg")]
            bars = [e.rect for e in browser.find_elements("css selector", "svg rect")]
            heading = browser.find_element("css selector", "h1").text
            width, height, colours = png_pixels(browser.get_screenshot_as_png())

            # The page's own reset button: Chromium posts it with Origin and
            # Sec-Fetch-Site: same-origin, which the Watcher's CSRF check lets
            # through; the 302 brings the browser back to this page, reset.
            # A reset within the same second as the start would read alike.
            started = summary["Last-Reset"]
            wait_until(lambda: http_now() != started, timeout=5)
            browser.find_element("css selector", "form button").click()
            wait_until(lambda: summary_of(browser).get("Last-Reset") not in (None, started))
            after_reset = summary_of(browser)
            landed = browser.current_url

    assert mark_after_refresh == 42
    assert [row[:3] for row in rows_after_refresh[1:]] == [[name, "0", str(HELD)]]
    assert index_title.endswith(" - all interfaces")
    assert index_text.startswith("Updated at ")
    assert index_rows[0][:4] == ["address", "active", "queued", "reset"]
    assert [row[:3] for row in index_rows[1:]] == [[name, "0", str(HELD)]]
    assert len(index_svgs) == 1
    assert index_svgs[0]["width"] > 0
    assert index_svgs[0]["height"] > 0

    assert title.endswith(f" - {name}")
    assert heading == f"{name} queued"
    count = int(summary["Count"])
    assert count >= 2
    assert (summary["Min"], summary["Max"], summary["Mean"], summary["Std-Dev"]) == (
        "3", "3", "3.0", "0.0",
    )  # fmt: skip
    assert (summary["Current"], summary["Outliers-Low"], summary["Outliers-High"]) == (
        "3", "0", "0",
    )  # fmt: skip
    assert pre.splitlines()[1].startswith("    2 |@")
    assert pre.splitlines()[1].endswith(f"| {count:>5}")
    assert len(boxes) == 2
    assert all(box["width"] > 0 and box["height"] > 0 for box in boxes)
    assert len(bars) == 1  # one histogram bar: bucket 2 holds every sample
    assert bars[0]["width"] > 0
    assert bars[0]["height"] > 0
    assert width > 0
    assert height > 0
    assert len(colours) > 16  # a blank page is 1 colour

    assert landed == f"{base}/queued/{url}.html"
    assert after_reset["Last-Reset"] != started
    assert after_reset["Current"] == str(HELD)
