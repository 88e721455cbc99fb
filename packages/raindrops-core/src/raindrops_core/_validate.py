"""Checks of what users configure, once for the endpoint and the Watcher.

Each raises :class:`ConfigError` naming the value and what is allowed, at
construction, never while serving.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from linux_inet_diag import AddressError, parse_address

from ._errors import ConfigError

__all__ = ["ANONYMOUS", "check_listeners", "check_path", "check_segment", "split_names"]

#: ``segment=ANONYMOUS``: counters in anonymous memory, shared only across fork().
ANONYMOUS = "anonymous"


def check_segment(segment: str | os.PathLike[str] | None, env: str) -> str | None:
    """The segment chosen: an absolute path, :data:`ANONYMOUS`, or ``None`` (the default).

    ``None`` falls back to the environment variable ``env`` (unset or empty:
    ``None``).

    Example::

        >>> check_segment("anonymous", "RAINDROPS_SEGMENT")
        'anonymous'
    """
    if segment is None:
        segment = os.environ.get(env) or None
        where = f"${env}"
    else:
        where = "segment"
    if segment is None:
        return None
    if not isinstance(segment, (str, os.PathLike)):
        raise ConfigError(f"{where} must be a path or {ANONYMOUS!r}, not {segment!r}")
    text = os.fspath(segment)
    if text == ANONYMOUS:
        return ANONYMOUS
    if not os.path.isabs(text):
        raise ConfigError(
            f"{where} {text!r} is not an absolute path; give one like "
            f"'/dev/shm/myapp.raindrops', or {ANONYMOUS!r}"
        )
    return text


def check_listeners(listeners: Iterable[str] | None) -> tuple[str, ...] | None:
    """Listener names as given, each once, checked; ``None`` (discover or watch all) kept.

    Example::

        >>> check_listeners(["127.0.0.1:80", "/run/a.sock", "127.0.0.1:80"])
        ('127.0.0.1:80', '/run/a.sock')
    """
    if listeners is None:
        return None
    if isinstance(listeners, (str, bytes)):
        raise ConfigError(f"listeners must be a list of names, not the single string {listeners!r}")
    names: list[str] = []
    for name in listeners:
        if not isinstance(name, str):
            raise ConfigError(f"listener {name!r} is not a string like '127.0.0.1:8080'")
        try:
            parse_address(name)
        except AddressError as exc:
            # The AddressError already lists every accepted form.
            raise ConfigError(f"malformed listener {name!r}: {exc}") from exc
        if name not in names:
            names.append(name)
    return tuple(names)


def check_path(path: object) -> str:
    """A mount path: a string starting with ``/``.

    Example::

        >>> check_path("/_raindrops")
        '/_raindrops'
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(f"path must be a string starting with '/', not {path!r}")
    return path


def split_names(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(tcp, unix)``: listener names by the query that answers them, order kept.

    Unix names are paths (``/run/app.sock``) and abstract names (``@name``).

    Example::

        >>> split_names(["/run/a.sock", "127.0.0.1:80", "@x"])
        (['127.0.0.1:80'], ['/run/a.sock', '@x'])
    """
    tcp: list[str] = []
    unix: list[str] = []
    for name in names:
        (unix if name.startswith(("/", "@")) else tcp).append(name)
    return tcp, unix
