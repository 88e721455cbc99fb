"""The Watcher against other users and other sites: access, forged resets, bounded memory."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import pytest
from raindrops_core import AccessList, ConfigError, TailStreamsFullError
from raindrops_core.adapter import Peer, Reply, TailPlan, WatcherCore, cross_origin_refusal
from raindrops_core.watcher import ABSENT_ROUNDS, MAX_LISTENERS, MAX_TAIL_STREAMS, WatcherEngine

L = "127.0.0.1:8080"
LOCAL = "127.0.0.1"


@dataclass(frozen=True)
class Stats:
    active: int
    queued: int


def feed(values: Mapping[str, tuple[int, int]]):  # type: ignore[no-untyped-def]
    def fetch(names: Sequence[str] | None) -> Mapping[str, Stats]:
        return {k: Stats(*v) for k, v in values.items()}

    return fetch


def core_of(**kw: object) -> WatcherCore:
    core = WatcherCore([L], fetch=feed({L: (1, 2)}), delay=3600, **kw)  # type: ignore[arg-type]
    core.engine.sample()
    return core


# -- who may read ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "status"),
    [
        ("127.0.0.1", 200),
        (Peer("", unix=True), 200),
        ("192.0.2.1", 403),
        (None, 403),
        (Peer("", unix=True, forwarded=("x-forwarded-for",)), 403),
        (Peer("127.0.0.1", forwarded=("x-real-ip",)), 403),
    ],
)
def test_watcher_answers_loopback_and_unix_peers_only(peer: Peer | str | None, status: int) -> None:
    """Every route, the index first, is refused to anyone the endpoint refuses."""
    core = core_of()
    for path in ("/", "/index.json", f"/queued/{L}.txt", f"/tail/{L}.txt"):
        answer = core.handle("GET", path, "", peer=peer)
        got = 200 if isinstance(answer, TailPlan) else answer.status
        assert (path, got) == (path, status)
    reset = core.handle("POST", f"/reset/{L}", "", peer=peer)
    assert isinstance(reset, Reply)
    assert reset.status == (302 if status == 200 else 403)


def test_refusal_names_the_reason_and_starts_nothing() -> None:
    """A refused client gets the access rule's reason in nosniff text; no sampler is started."""
    core = WatcherCore([L], fetch=feed({}), delay=3600)
    reply = core.serve("GET", "/", "", peer="192.0.2.1")
    assert isinstance(reply, Reply)
    assert (reply.status, reply.body) == (
        403,
        b"403 Forbidden: client 192.0.2.1 is not in the allow-list (loopback only by default); "
        b"to allow more, pass allow=['10.0.0.0/8', ...] or allow=ALLOW_ALL\n",
    )
    assert dict(reply.headers)["X-Content-Type-Options"] == "nosniff"
    assert (core.engine.thread_running, core.engine.rounds) == (False, 0)


def test_allow_widens_the_watcher_like_the_endpoint() -> None:
    """``allow=`` takes networks or a ready AccessList, as the middleware's."""
    assert core_of(allow=["10.0.0.0/8"]).handle("GET", "/", "", peer="10.9.8.7").status == 200  # type: ignore[union-attr]
    relayed = Peer("10.9.8.7", forwarded=("x-forwarded-for",))
    acl = AccessList.parse(["10.0.0.0/8"], proxied=True)
    assert core_of(allow=acl).handle("GET", "/", "", peer=relayed).status == 200  # type: ignore[union-attr]
    with pytest.raises(ConfigError):
        WatcherCore([L], allow="10.0.0.0/8")


# -- forged resets ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "fetch_site", "host", "reason"),
    [
        (None, None, "h:1", None),
        ("http://h:1", None, "h:1", None),
        ("https://H:1", None, "h:1", None),
        (None, "same-origin", "h:1", None),
        ("http://evil.example", "none", "h:1", None),
        (
            "http://evil.example",
            None,
            "h:1",
            "cross-origin request refused: Origin 'http://evil.example' is not this site "
            "(Host 'h:1')",
        ),
        (
            "null",
            None,
            "h:1",
            "cross-origin request refused: Origin 'null' is not this site (Host 'h:1')",
        ),
        (
            "http://h:1",
            "cross-site",
            "h:1",
            "cross-origin request refused: Sec-Fetch-Site is 'cross-site'",
        ),
        (
            None,
            "same-site",
            "h:1",
            "cross-origin request refused: Sec-Fetch-Site is 'same-site'",
        ),
        (
            "http://h:1",
            None,
            None,
            "cross-origin request refused: Origin 'http://h:1' is not this site",
        ),
    ],
)
def test_cross_origin_rule(
    origin: str | None, fetch_site: str | None, host: str | None, reason: str | None
) -> None:
    """Sec-Fetch-Site first, else Origin against Host; neither: not a browser, allowed."""
    assert cross_origin_refusal(origin, fetch_site, host) == reason


def test_a_cross_site_form_cannot_reset() -> None:
    """A POST from another site's page is 403 and resets nothing; the Watcher's own form works."""
    core = core_of()
    forged = core.handle(
        "POST", f"/reset/{L}", "", peer=LOCAL, host="127.0.0.1:9000",
        origin="http://evil.example", fetch_site="cross-site",
    )  # fmt: skip
    assert isinstance(forged, Reply)
    assert (forged.status, forged.body) == (
        403,
        b"403 Forbidden: cross-origin request refused: Sec-Fetch-Site is 'cross-site'\n",
    )
    assert dict(forged.headers)["X-Content-Type-Options"] == "nosniff"
    assert core.engine.report(L).queued.count == 1  # type: ignore[union-attr]
    own = core.handle(
        "POST", f"/reset/{L}", "", peer=LOCAL, host="127.0.0.1:9000",
        origin="http://127.0.0.1:9000", fetch_site="same-origin",
        referer="http://127.0.0.1:9000/queued/x.html",
    )  # fmt: skip
    assert isinstance(own, Reply)
    assert (own.status, dict(own.headers)["Location"]) == (
        302,
        "http://127.0.0.1:9000/queued/x.html",
    )
    assert core.engine.report(L).queued.count == 0  # type: ignore[union-attr]


# -- bounded memory -----------------------------------------------------------------


def round_of(names: Sequence[str]) -> dict[str, Stats]:
    return {name: Stats(0, 1) for name in names}


def test_defaults_are_documented_values() -> None:
    """The absent-round limit, the listener cap and the tail-stream cap, as documented."""
    engine = WatcherEngine(None, fetch=feed({}))
    assert (engine.absent_rounds, engine.max_listeners, engine.max_tail_streams) == (
        ABSENT_ROUNDS,
        MAX_LISTENERS,
        MAX_TAIL_STREAMS,
    )
    assert (ABSENT_ROUNDS, MAX_LISTENERS, MAX_TAIL_STREAMS) == (60, 1024, 64)


def test_an_absent_listener_is_forgotten_after_absent_rounds() -> None:
    """Watching every listener, one absent from ``absent_rounds`` rounds in a row is dropped."""
    engine = WatcherEngine(None, fetch=feed({}), absent_rounds=3)
    engine.record(round_of(["a", "gone"]))
    for _ in range(2):
        engine.record(round_of(["a"]))
    assert engine.names() == ("a", "gone")  # absent 2 rounds: kept
    engine.record(round_of(["a"]))
    assert engine.names() == ("a",)  # absent 3 rounds: forgotten
    engine.record(round_of(["a", "gone"]))
    assert engine.names() == ("a", "gone")
    assert engine.report("gone").queued.count == 1  # type: ignore[union-attr]


def test_the_cap_pushes_out_the_longest_absent_first() -> None:
    """Beyond ``max_listeners`` a new name replaces the one absent longest; present ones stay."""
    engine = WatcherEngine(None, fetch=feed({}), max_listeners=3, absent_rounds=100)
    engine.record(round_of(["old", "mid", "live"]))
    engine.record(round_of(["mid", "live"]))  # old absent since round 1
    engine.record(round_of(["live"]))  # mid absent since round 2
    engine.record(round_of(["live", "new1"]))
    assert engine.names() == ("mid", "live", "new1")
    engine.record(round_of(["live", "new1", "new2"]))
    assert engine.names() == ("live", "new1", "new2")
    engine.record(round_of(["live", "new1", "new2", "new3", "new4"]))
    assert (engine.names(), engine.unwatched) == (("live", "new1", "new2"), 2)
    assert set(engine.current()) == {"live", "new1", "new2"}


def test_named_listeners_are_never_dropped() -> None:
    """An explicit ``listeners`` list is kept whatever the rounds hold."""
    engine = WatcherEngine([L], fetch=feed({}), absent_rounds=1, max_listeners=1)
    for _ in range(3):
        engine.record(round_of(["@other"]))
    assert engine.names() == (L,)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("absent_rounds", 0, "absent_rounds must be a positive int, not 0"),
        ("max_listeners", 1.5, "max_listeners must be a positive int, not 1.5"),
        ("max_tail_streams", True, "max_tail_streams must be a positive int, not True"),
    ],
)
def test_bad_bounds_are_config_errors(option: str, value: object, message: str) -> None:
    """A bound that is not a positive int raises ConfigError naming it and the value."""
    with pytest.raises(ConfigError) as info:
        WatcherEngine(None, fetch=feed({}), **{option: value})  # type: ignore[arg-type]
    assert str(info.value) == message


def test_tail_streams_are_capped() -> None:
    """Past ``max_tail_streams`` open tails a new one is 503 (Retry-After); subscribe refuses."""
    core = WatcherCore(
        [L], fetch=feed({L: (1, 2)}), delay=3600,
        engine=WatcherEngine([L], fetch=feed({L: (1, 2)}), delay=3600, max_tail_streams=2),
    )  # fmt: skip
    core.engine.sample()
    subs = [core.engine.subscribe(lambda: None) for _ in range(2)]
    try:
        reply = core.handle("GET", f"/tail/{L}.txt", "", peer=LOCAL)
        assert isinstance(reply, Reply)
        assert (reply.status, reply.body) == (
            503,
            b"503 Service Unavailable: 2 tail streams are open, the most allowed "
            b"(max_tail_streams=2)\n",
        )
        assert dict(reply.headers)["Retry-After"] == "3600"
        with pytest.raises(TailStreamsFullError) as info:
            core.engine.subscribe(lambda: None)
        assert str(info.value) == ("2 tail streams are open, the most allowed (max_tail_streams=2)")
        plan = TailPlan(L, 0, 0, False, 1.0, ())
        assert list(core.tail(plan)) == []  # full by the time it streams: ends, empty
    finally:
        for sub in subs:
            sub.close()
    assert core.engine.subscribers == 0
    assert isinstance(core.handle("GET", f"/tail/{L}.txt", "", peer=LOCAL), TailPlan)


@contextlib.contextmanager
def abstract_listeners(prefix: str, n: int) -> Iterator[list[str]]:
    """``n`` listening abstract Unix sockets named ``@<prefix><i>``, closed on exit."""
    with contextlib.ExitStack() as stack:
        names = []
        for i in range(n):
            sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            sock.bind(f"\0{prefix}{i}")
            sock.listen(1)
            names.append(f"@{prefix}{i}")
        yield names


@pytest.mark.linux
def test_thousands_of_short_lived_listeners_leave_the_engine_at_its_baseline() -> None:
    """5,000 abstract listeners made and closed in batches: the engine's size returns to baseline.

    Any user can make these.  The engine samples the real kernel (netlink),
    restricted to this test's own names so that other processes on the
    machine cannot move the baseline; it never holds more than
    ``max_listeners`` records, and ``absent_rounds`` after the last batch
    closed it holds exactly the two listeners that stayed.
    """
    from linux_inet_diag import unix_listener_stats

    prefix = f"rd-bound-{os.getpid()}-"

    def ours(names: Sequence[str] | None) -> Mapping[str, Stats]:
        every = unix_listener_stats()
        return {n: s for n, s in every.items() if n.startswith(f"@{prefix}")}

    engine = WatcherEngine(None, fetch=ours, absent_rounds=3, max_listeners=1024)
    sizes = []
    with abstract_listeners(prefix + "stay-", 2) as stay:
        engine.sample()
        baseline = len(engine)
        for batch in range(10):
            with abstract_listeners(f"{prefix}b{batch}-", 500):
                engine.sample()
                sizes.append(len(engine))
        for _ in range(3):
            engine.sample()
        assert (baseline, engine.last_error, len(engine)) == (2, None, 2)
        assert sorted(engine.names()) == sorted(stay)
    assert sizes[0] == 502
    assert max(sizes) == 1024
