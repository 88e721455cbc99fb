"""escape_name: control characters and undecodable bytes in listener names, escaped losslessly."""

from __future__ import annotations

import os
import re

import pytest
from linux_inet_diag import escape_name


def unescape(text: str) -> str:
    """The reading :func:`escape_name` promises: ``\\xHH`` are bytes, the rest is UTF-8."""
    out = bytearray()
    for m in re.finditer(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|[\\nrt])|([^\\]+)", text, re.DOTALL):
        esc, plain = m.group(1), m.group(2)
        if plain is not None:
            out += plain.encode("utf-8", "surrogateescape")
        elif esc[0] == "x":
            out.append(int(esc[1:], 16))
        elif esc[0] == "u":
            out += chr(int(esc[1:], 16)).encode("utf-8", "surrogatepass")
        else:
            out += {"\\": b"\\", "n": b"\n", "r": b"\r", "t": b"\t"}[esc]
    return out.decode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    ("name", "printed"),
    [
        ("0.0.0.0:8080", "0.0.0.0:8080"),
        ("/run/café.sock", "/run/café.sock"),
        ("@evil\n0.0.0.0:80 999 999 -", "@evil\\n0.0.0.0:80 999 999 -"),
        ("@x\x1b[2J\x1b]0;pwned\x07", "@x\\x1b[2J\\x1b]0;pwned\\x07"),
        ("@a\rb\tc\x00d\x7f", "@a\\rb\\tc\\x00d\\x7f"),
        ("@c1\x85\x9b", "@c1\\xc2\\x85\\xc2\\x9b"),
        ("@rtl\u202etxt.exe\u2028", "@rtl\\xe2\\x80\\xaetxt.exe\\xe2\\x80\\xa8"),
        (os.fsdecode(b"/tmp/caf\xe9.sock"), "/tmp/caf\\xe9.sock"),
        ("C:\\x41", "C:\\\\x41"),
        ("@lone\ud800", "@lone\\ud800"),
    ],
)
def test_escape_name_spells_each_character_class(name: str, printed: str) -> None:
    """Printable text is kept; controls, format characters and raw bytes become escapes."""
    assert escape_name(name) == printed
    assert escape_name(name).isprintable()


def test_escape_is_lossless_over_every_byte() -> None:
    """Every byte value, alone and amid UTF-8, reads back to the exact name."""
    names = [os.fsdecode(b"@" + bytes([b]) + "é".encode() + bytes([b])) for b in range(256)]
    names += [os.fsdecode(bytes(range(1, 256))), "\\x41", "\\\\n", "\\"]
    assert [unescape(escape_name(n)) for n in names] == names
    assert len({escape_name(n) for n in names}) == len(names)


def test_printable_names_are_returned_as_they_are() -> None:
    """A name with nothing to escape is the very same string (no copy)."""
    name = "/run/app.sock"
    assert escape_name(name) is name
