"""Listener name parsing: pure, every platform."""

from __future__ import annotations

import socket

import pytest
from linux_inet_diag import AddressError, LinuxInetDiagError, parse_address


@pytest.mark.parametrize(
    ("name", "family", "canonical"),
    [
        ("127.0.0.1:8080", socket.AF_INET, "127.0.0.1:8080"),
        ("0.0.0.0:80", socket.AF_INET, "0.0.0.0:80"),
        ("[::1]:8080", socket.AF_INET6, "[::1]:8080"),
        ("[::]:8080", socket.AF_INET6, "[::]:8080"),
        ("[0:0::1]:8080", socket.AF_INET6, "[::1]:8080"),
        ("[fe80::1%eth0]:443", socket.AF_INET6, "[fe80::1]:443"),
        ("/run/app.sock", socket.AF_UNIX, "/run/app.sock"),
        ("@abstract", socket.AF_UNIX, "@abstract"),
    ],
)
def test_accepted_forms(name: str, family: int, canonical: str) -> None:
    """Every accepted spelling parses to its family and canonical name."""
    a = parse_address(name)
    assert (a.family, a.name) == (family, canonical)


def test_wildcard_and_packed() -> None:
    """Wildcards are recognised and IPv4 is packed into the kernel's 16 bytes."""
    assert parse_address("0.0.0.0:1").is_wildcard
    assert parse_address("[::]:1").is_wildcard
    assert not parse_address("127.0.0.1:1").is_wildcard
    assert parse_address("127.0.0.1:1").packed == b"\x7f\0\0\x01" + bytes(12)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("foo", "not of the form 'IPV4:PORT'"),
        ("1.2.3.4", "not of the form 'IPV4:PORT'"),
        ("1.2.3.4:99999", "port 99999 out of range 1-65535"),
        ("1.2.3.4:0", "port 0 out of range 1-65535"),
        ("[::1:80", "not of the form '[IPV6]:PORT'"),
        ("::1:80", "an IPv6 address needs brackets"),
        ("", "empty name"),
        ("300.1.1.1:80", "'300.1.1.1' is not an IPv4 address"),
        ("[::g]:80", "not of the form '[IPV6]:PORT'"),
        (8080, "not a string but int"),
        (None, "not a string but NoneType"),
    ],
)
def test_malformed_names(bad: object, why: str) -> None:
    """Malformed names raise AddressError naming the value, reason and forms."""
    with pytest.raises(AddressError) as info:
        parse_address(bad)
    msg = str(info.value)
    assert msg.startswith(f"invalid listener name {bad!r}: {why}; expected ")
    assert "'[::1]:8080'" in msg
    assert "/path/to/unix.sock" in msg
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, LinuxInetDiagError)
