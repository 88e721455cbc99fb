"""The exporter's HTTP server: its address, who may read, and what each path answers."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from raindrops_core import DEFAULT_ALLOW, AccessList
from raindrops_exporter import ConfigError, Exporter, ExporterServer, parse_bind, refusal

ALLOWED = "HOST:PORT, [IPV6]:PORT, unix:PATH or /absolute/path"


def test_bind_forms_parse_to_families_and_addresses() -> None:
    """HOST:PORT, [V6]:PORT, unix:PATH and a bare absolute path are accepted."""
    assert parse_bind("127.0.0.1:9873").address == ("127.0.0.1", 9873)
    assert parse_bind("[::1]:0").family == socket.AF_INET6
    assert parse_bind("unix:/run/x.sock").path == "/run/x.sock"
    assert parse_bind("/run/y.sock").family == socket.AF_UNIX


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "9873",
            f"bind '9873' must be {ALLOWED} (port 0-65535)",
        ),
        (
            "localhost:99999",
            f"bind 'localhost:99999' must be {ALLOWED} (port 0-65535)",
        ),
        (
            "::1:80",
            f"bind '::1:80' must be {ALLOWED}; write IPv6 hosts in brackets",
        ),
        ("unix:run/x.sock", "bind 'unix:run/x.sock': a Unix socket path must be absolute"),
    ],
)
def test_a_bad_bind_names_the_value_and_what_is_allowed(text: str, message: str) -> None:
    """Malformed --bind values raise ConfigError with the exact reason."""
    with pytest.raises(ConfigError) as caught:
        parse_bind(text)
    assert str(caught.value) == message


def test_access_rule_is_the_middlewares() -> None:
    """Loopback and Unix peers by default; proxied requests and other networks are refused."""
    acl = AccessList.parse(DEFAULT_ALLOW)
    assert refusal(acl, "127.0.0.1", {}) is None
    assert refusal(acl, "::1", {}) is None
    assert refusal(acl, None, {}) is None
    assert refusal(AccessList.parse(["192.0.2.0/24"]), "192.0.2.7", {}) is None
    assert refusal(acl, "192.0.2.7", {}) == (
        "client 192.0.2.7 is not in the allow-list (loopback only by default); to allow "
        "more, pass allow=['10.0.0.0/8', ...] or allow=ALLOW_ALL"
    )
    relayed = (
        "the request came over a Unix socket with X-Forwarded-For: a proxy relayed it, "
        "and its client is unknown"
    )
    assert refusal(acl, None, {"X-Forwarded-For": "192.0.2.7"}) == relayed
    assert refusal(acl, None, {"Forwarded": "for=192.0.2.7"}) is not None
    # A proxy on this machine relaying over TCP is refused too, as by the middleware.
    assert refusal(acl, "127.0.0.1", {"X-Real-IP": "192.0.2.7"}) is not None


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ExporterServer]:
    """An exporter over an empty segment directory, on a loopback port the kernel picks."""
    server = ExporterServer(Exporter(directory=str(tmp_path)), "127.0.0.1:0")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _get(
    server: ExporterServer, path: str, method: str = "GET", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    host, port = server.httpd.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=10)
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_each_path_answers_with_its_type(served: ExporterServer) -> None:
    """/ is the page, /metrics Prometheus text (or OpenMetrics), /json and /history JSON."""
    status, headers, body = _get(served, "/")
    assert (status, headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert "connect-src 'self'" in headers["content-security-policy"]
    assert b"<script>" in body
    assert b"src=" not in body  # inline only: nothing is fetched from elsewhere
    status, headers, body = _get(served, "/metrics")
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b"\nraindrops_exporter_servers 0.0\n" in body
    assert b"raindrops_exporter_process_resident_memory_bytes" in body
    _, headers, body = _get(
        served, "/metrics", Accept="application/openmetrics-text; version=1.0.0"
    )
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    status, _, body = _get(served, "/json")
    doc = json.loads(body)
    assert (status, doc["servers"], doc["unavailable"]) == (200, [], {})
    status, _, body = _get(served, "/history?after=0")
    doc = json.loads(body)
    assert (doc["interval"], doc["history_seconds"]) == (1.0, 600.0)
    assert doc["samples"][0]["servers"] == {}


def test_bad_requests_get_4xx_with_the_reason(served: ExporterServer) -> None:
    """Unknown paths are 404, other methods 405 with Allow, a bad sample number 400."""
    assert _get(served, "/nope")[0] == 404
    status, headers, _ = _get(served, "/metrics", method="POST")
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    status, _, body = _get(served, "/history?after=%3Cb%3E")
    assert (status, body) == (400, b"bad request: after must be a sample number (digits)\n")
    status, headers, body = _get(served, "/metrics", method="HEAD")
    assert (status, body) == (200, b"")


def test_a_client_outside_the_allow_list_is_refused(tmp_path: Path) -> None:
    """With --allow naming another network, a loopback client gets 403 and no figures."""
    server = ExporterServer(Exporter(directory=str(tmp_path)), "127.0.0.1:0", allow=["10.0.0.0/8"])
    server.start()
    try:
        status, _, body = _get(server, "/metrics")
        assert status == 403
        assert b"raindrops" not in body.split(b":")[1]
    finally:
        server.stop()


def _unix_get(path: str, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(path)
        conn.sendall(request)
        chunks = []
        while data := conn.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_unix_socket_peers_are_served_unless_proxied(tmp_path: Path) -> None:
    """Over a Unix socket, a plain request is served and one with X-Forwarded-For is refused."""
    path = str(tmp_path / "exporter.sock")
    server = ExporterServer(Exporter(directory=str(tmp_path)), f"unix:{path}")
    server.start()
    try:
        plain = _unix_get(path, b"GET /json HTTP/1.0\r\n\r\n")
        assert plain.startswith(b"HTTP/1.1 200 ")
        proxied = _unix_get(path, b"GET /json HTTP/1.0\r\nX-Forwarded-For: 192.0.2.7\r\n\r\n")
        assert proxied.startswith(b"HTTP/1.1 403 ")
        assert server.url == f"unix:{path}"
    finally:
        server.stop()
    assert not Path(path).exists()
