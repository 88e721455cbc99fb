"""Names from outside (listener names, paths), made safe for each output.

Listener names are the kernel's: a Unix path may hold control characters
and bytes that are not UTF-8 (kept as surrogate escapes, as
``os.fsdecode`` does). JSON quotes them itself and HTML pages insert them
as text nodes; Prometheus label values, plain text and the terminal get
:func:`printable`.
"""

from __future__ import annotations

import re

__all__ = ["printable"]

# C0 controls, DEL and C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def printable(name: str) -> str:
    """``name`` with control characters and non-UTF-8 bytes backslash-escaped.

    Example::

        >>> printable("/run/a\\x1b[2J.sock"), printable("/tmp/\\udcff.sock")
        ('/run/a\\\\x1b[2J.sock', '/tmp/\\\\xff.sock')
    """
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no byte decoded to
        raw = name.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    return _CONTROL.sub(_escape, text)
