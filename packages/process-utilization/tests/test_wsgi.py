"""What the WSGI middleware hands back to the server, for each kind of body."""

from __future__ import annotations

import io
import wsgiref.util
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from process_utilization import ProcessUtilization


def call(
    mw: ProcessUtilization, env: dict[str, Any] | None = None
) -> tuple[Iterable[bytes], dict[str, Any]]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "wsgi.errors": io.StringIO(),
        "wsgi.file_wrapper": wsgiref.util.FileWrapper,
        "wsgi.multithread": False,
        **(env or {}),
    }
    return mw(environ, lambda *a: None), environ


def test_list_body_is_proxied_not_a_list_and_recorded_on_close(clock: Any) -> None:
    """A list body comes back behind a proxy that is not a list; close() records it once.

    Not a list on purpose: WSGI consumers special-case lists and take their
    items without calling close() (WebOb's Response.body returns a one-item
    list's item), which would leave the request in flight for good.
    """
    body = [b"a", b"b"]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        return body

    mw = ProcessUtilization(app, clock=clock)
    clock.t = 1000.0
    got, _ = call(mw)
    assert not isinstance(got, list)
    assert list(got) == [b"a", b"b"]
    assert mw.in_flight == 1
    clock.t = 1000.5
    got.close()  # type: ignore[attr-defined]
    got.close()  # type: ignore[attr-defined]
    assert (mw.in_flight, mw.requests, mw.active_time) == (0, 1, 0.5)
    assert body == [b"a", b"b"]


def test_file_wrapper_body_keeps_its_type_and_records_after_its_close(clock: Any) -> None:
    """A wsgi.file_wrapper body is the same object back; its close runs first, then recording."""
    seen_in_flight: list[int] = []

    class File(io.BytesIO):
        def close(self) -> None:
            seen_in_flight.append(mw.in_flight)
            super().close()

    data = File(b"0123456789")
    made: list[Any] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [])
        wrapper = environ["wsgi.file_wrapper"](data, 4)
        made.append(wrapper)
        return wrapper  # type: ignore[no-any-return]

    mw = ProcessUtilization(app, clock=clock)
    clock.t = 1000.0
    got, environ = call(mw)
    assert got is made[0]
    assert type(got) is wsgiref.util.FileWrapper
    assert isinstance(got, environ["wsgi.file_wrapper"])
    assert b"".join(got) == b"0123456789"
    clock.t = 1000.25
    got.close()  # type: ignore[attr-defined]
    got.close()  # type: ignore[attr-defined]
    assert seen_in_flight == [1]
    assert data.closed
    assert (mw.in_flight, mw.requests, mw.active_time) == (0, 1, 0.25)


def test_slotted_file_wrapper_falls_back_to_the_proxy(clock: Any) -> None:
    """A file wrapper whose close cannot be replaced is proxied, still closed and recorded."""
    closed: list[bool] = []

    class Slotted:
        __slots__ = ("filelike",)

        def __init__(self, filelike: Any) -> None:
            self.filelike = filelike

        def __iter__(self) -> Iterator[bytes]:
            return iter([self.filelike.read()])

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return environ["wsgi.file_wrapper"](io.BytesIO(b"xyz"))  # type: ignore[no-any-return]

    mw = ProcessUtilization(app, clock=clock)
    got, _ = call(mw, {"wsgi.file_wrapper": Slotted})
    assert not isinstance(got, Slotted)
    assert list(got) == [b"xyz"]
    got.close()  # type: ignore[attr-defined]
    assert closed == [True]
    assert (mw.in_flight, mw.requests) == (0, 1)


def test_generator_body_is_proxied_and_closed(clock: Any) -> None:
    """Any other iterable is proxied: iterated, its close() called, the request recorded."""
    events: list[str] = []

    def stream() -> Iterator[bytes]:
        try:
            yield b"first"
            yield b"second"
        finally:
            events.append(f"closed in_flight={mw.in_flight}")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return stream()

    mw = ProcessUtilization(app, clock=clock)
    got, _ = call(mw)
    assert next(iter(got)) == b"first"
    got.close()  # type: ignore[attr-defined]
    assert events == ["closed in_flight=1"]
    assert (mw.in_flight, mw.requests) == (0, 1)
    assert repr(got).startswith("<process_utilization body of <generator object")
