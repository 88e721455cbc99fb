"""Listener names made safe to print: control characters escaped, losslessly.

A Unix socket's name is whatever bytes its owner chose (any user can bind an
abstract socket, ``@`` + up to 107 arbitrary bytes, or a path in a directory
they own), and the kernel hands them to every reader.  Printed raw, a newline
forges a row, ESC drives the terminal, and bytes that are not UTF-8 (decoded
here with ``surrogateescape``, as ``os.fsdecode`` does) cannot be encoded at
all.  :func:`escape_name` is the one spelling every text output uses.
"""

from __future__ import annotations

import unicodedata

__all__ = ["escape_name"]

_SHORT = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Control characters (C0, DEL, C1), format characters (bidirectional
# overrides, zero-width ones), line and paragraph separators, surrogates.
_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# os.fsdecode()'s surrogateescape maps an undecodable byte 0xXY to U+DCXY.
_ESCAPED_BYTES = range(0xDC80, 0xDD00)


def _escape_char(ch: str) -> str:
    short = _SHORT.get(ch)
    if short is not None:
        return short
    if unicodedata.category(ch) not in _UNSAFE:
        return ch
    code = ord(ch)
    if 0xD800 <= code <= 0xDFFF and code not in _ESCAPED_BYTES:
        return f"\\u{code:04x}"  # a lone surrogate that stands for no byte
    return "".join(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogateescape"))


def escape_name(name: str) -> str:
    """``name`` with every unprintable character escaped, losslessly, for text output.

    A backslash becomes ``\\\\``; newline, carriage return and tab become
    ``\\n``, ``\\r``, ``\\t``; any other control or format character, line or
    paragraph separator (Unicode categories Cc, Cf, Zl, Zp) is written as
    the ``\\xHH`` escapes of its UTF-8 bytes (ESC is ``\\x1b``, U+202E is
    ``\\xe2\\x80\\xae``), and a byte that was not valid UTF-8 (decoded with
    ``surrogateescape``, as ``os.fsdecode`` and this package do) as that
    byte, ``\\xHH``.  Reading every ``\\xHH`` back as a byte gives the name's
    exact bytes, so two names never print alike.  Printable names without a
    backslash (every TCP name, almost every path) come back unchanged, the
    same object.

    Example::

        >>> print(escape_name("@evil\\n0.0.0.0:80 999 999 -\\x1b[2J"))
        @evil\\n0.0.0.0:80 999 999 -\\x1b[2J
        >>> escape_name("/tmp/caf\\udce9.sock"), escape_name("/tmp/café.sock")
        ('/tmp/caf\\\\xe9.sock', '/tmp/café.sock')
    """
    if name.isprintable() and "\\" not in name:
        return name
    return "".join([_escape_char(ch) for ch in name])
