"""Names from outside are made printable for text, Prometheus labels and the terminal."""

from __future__ import annotations

from raindrops_exporter import printable


def test_control_characters_are_backslash_escaped() -> None:
    """ESC, newline, DEL and C1 controls become ``\\xNN``; the rest is kept."""
    assert printable("/run/a\x1b[2J\nb\x7f\x9b.sock") == "/run/a\\x1b[2J\\x0ab\\x7f\\x9b.sock"


def test_bytes_that_are_not_utf8_are_shown_as_escapes() -> None:
    """A path byte kept as a surrogate escape (os.fsdecode) shows as ``\\xff``."""
    assert printable("/tmp/\udcff.sock") == "/tmp/\\xff.sock"


def test_a_lone_surrogate_no_byte_decoded_to_is_escaped_too() -> None:
    """A surrogate outside U+DC80-U+DCFF cannot be encoded back: it is escaped as text."""
    assert printable("a\ud800b") == "a\\ud800b"


def test_printable_names_are_left_alone() -> None:
    """Addresses, paths and non-ASCII letters are unchanged."""
    assert printable("[::1]:8000") == "[::1]:8000"
    assert printable("/run/été.sock") == "/run/été.sock"
