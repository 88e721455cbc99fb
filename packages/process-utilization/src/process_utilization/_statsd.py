"""statsd, as rack-statsd names it: a request's timings and its status counter.

Optional (``statsd=``, the ``statsd`` extra): each request sends
``response_time``, ``response_time.<method>`` for GET, HEAD, POST, PUT and
DELETE only, and ``status_code.<name>`` for the statuses in rack-statsd's
table only, in one packet when the client can pipeline. Nothing here is on
the path of a request when statsd is off.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Protocol

from ._errors import ConfigError
from ._extras import require

__all__ = ["StatsdClient", "check_statsd", "make_client", "parse_statsd_address", "send_request"]

#: rack-statsd's per-method timings: only these methods, spelled exactly so.
_METHOD_TIMINGS: dict[object, str] = {
    m: f"response_time.{m.lower()}" for m in ("GET", "HEAD", "POST", "PUT", "DELETE")
}

#: rack-statsd's status counter names; other codes send no status counter.
_STATUS_COUNTERS: dict[object, str] = {
    code: f"status_code.{name}"
    for code, name in (
        (200, "ok"),
        (201, "created"),
        (202, "accepted"),
        (301, "moved_permanently"),
        (302, "found"),
        (303, "see_other"),
        (304, "not_modified"),
        (305, "use_proxy"),
        (307, "temporary_redirect"),
        (400, "bad_request"),
        (401, "unauthorized"),
        (402, "payment_required"),
        (403, "forbidden"),
        (404, "missing"),
        (410, "gone"),
        (422, "invalid"),
        (500, "error"),
        (502, "bad_gateway"),
        (503, "node_down"),
        (504, "gateway_timeout"),
    )
}

_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")


class StatsdClient(Protocol):
    """What the middleware needs of a statsd client (``statsd.StatsClient``)."""

    def timing(self, stat: str, delta: float, rate: float = 1) -> None: ...
    def incr(self, stat: str, count: int = 1, rate: float = 1) -> None: ...


def parse_statsd_address(value: str) -> tuple[str, int, bool]:
    """Split ``"host:port"`` or ``"[v6]:port"`` into ``(host, port, is_ipv6)``.

    Raises :class:`ConfigError` naming the value and the accepted forms.

    Example::

        parse_statsd_address("[::1]:8125")  # ("::1", 8125, True)
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()):
        raise ConfigError(f"statsd must be a client or 'host:port', got {value!r}")
    number = int(port)
    if not 1 <= number <= 65535:
        raise ConfigError(f"statsd port must be 1..65535, got {value!r}")
    if host.startswith("[") or host.endswith("]"):
        inner = host[1:-1] if host.startswith("[") and host.endswith("]") else ""
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ConfigError(
                f"statsd brackets must hold an IPv6 address like '[::1]:8125', got {value!r}"
            ) from None
        return inner, number, True
    if ":" in host:
        raise ConfigError(
            f"statsd IPv6 address must be in brackets like '[::1]:8125', got {value!r}"
        )
    if not _HOST_NAME.match(host):
        raise ConfigError(f"statsd host must be a host name or an IP address, got {value!r}")
    return host, number, False


def check_statsd(statsd: object) -> tuple[str, int, bool] | None:
    """Validate ``statsd=``: the parsed address of a ``"host:port"``, else ``None``.

    Raises :class:`ConfigError` for anything but ``None``, such a string or
    a client with ``timing()`` and ``incr()``.
    """
    if isinstance(statsd, str):
        return parse_statsd_address(statsd)
    if statsd is not None and not (
        callable(getattr(statsd, "timing", None)) and callable(getattr(statsd, "incr", None))
    ):
        raise ConfigError(
            f"statsd must be None, 'host:port' or a client with timing() and incr(), got {statsd!r}"
        )
    return None


def make_client(address: tuple[str, int, bool], prefix: str | None) -> Any:
    """A ``statsd.StatsClient`` for a checked address (the extra must be installed)."""
    mod = require("statsd", feature="statsd=", extra="statsd")
    host, port, ipv6 = address
    return mod.StatsClient(host, port, prefix=prefix, ipv6=ipv6)


def send_request(client: Any, duration_ns: int, method: object, status: int) -> None:
    """Send one request's timings and status counter; one packet when ``client`` pipelines.

    May raise what the client raises (the caller logs it once).

    Example::

        send_request(client, 125_000_000, "POST", 201)
        # response_time:125.000000|ms, response_time.post:..., status_code.created:1|c
    """
    ms = duration_ns / 1e6
    pipeline = getattr(client, "pipeline", None)
    target = client if pipeline is None else pipeline()
    target.timing("response_time", ms)
    per_method = _METHOD_TIMINGS.get(method)
    if per_method is not None:
        target.timing(per_method, ms)
    counter = _STATUS_COUNTERS.get(status)
    if counter is not None:
        target.incr(counter)
    if pipeline is not None:
        target.send()
