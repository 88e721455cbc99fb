"""The Watcher's I/O described once: reads via the Kernel, waits woken by rounds, final replies."""

from __future__ import annotations

import asyncio
import os
import threading
import warnings
from collections.abc import Coroutine, Sequence
from typing import Any

import pytest
from linux_inet_diag import ListenStats
from raindrops_core.adapter import Kernel, LastDataRecvCore, Reply, TailPlan, WatcherCore
from raindrops_core.watcher import WatcherEngine

L = "127.0.0.1:8080"
UNIX = "/run/app.sock"
LOCAL = "127.0.0.1"


class FakeDiag:
    """A blocking DiagSocket stand-in: answers every name 1/2 and records the queries."""

    def __init__(self, asked: list[tuple[str, Any]]) -> None:
        self.asked = asked

    def tcp_listener_stats(self, names: Sequence[str] | None) -> dict[str, ListenStats]:
        self.asked.append(("tcp", names))
        return {n: ListenStats(1, 2, 8) for n in names or ["0.0.0.0:1"]}

    def unix_listener_stats(self, names: Sequence[str] | None) -> dict[str, ListenStats]:
        self.asked.append(("unix", names))
        return {n: ListenStats(3, 4, 8) for n in names or ["@any"]}

    def close(self) -> None:
        self.asked.append(("close", None))


class FakeAsyncDiag(FakeDiag):
    """The same for an event loop."""

    async def tcp_listener_stats(self, names: Sequence[str] | None) -> dict[str, ListenStats]:  # type: ignore[override]
        return FakeDiag.tcp_listener_stats(self, names)

    async def unix_listener_stats(self, names: Sequence[str] | None) -> dict[str, ListenStats]:  # type: ignore[override]
        return FakeDiag.unix_listener_stats(self, names)


def test_sample_reads_tcp_then_unix_through_the_kernel_seam() -> None:
    """sample() and asample() ask the Kernel's sockets the same queries: TCP names, then Unix."""
    asked: list[tuple[str, Any]] = []
    kernel = Kernel(diag=lambda: FakeDiag(asked), adiag=lambda: FakeAsyncDiag(asked))  # type: ignore[arg-type,return-value]
    engine = WatcherEngine([UNIX, L], kernel=kernel)
    engine.sample()
    blocking = list(asked)
    asked.clear()
    asyncio.run(engine.asample())
    assert blocking == [("tcp", [L]), ("unix", [UNIX])]
    assert asked == [("tcp", [L]), ("unix", [UNIX]), ("close", None)]
    assert engine.current() == {UNIX: (3, 4), L: (1, 2)}
    assert engine.rounds == 2


def test_a_failed_read_closes_the_blocking_socket_and_is_kept() -> None:
    """A read that fails is last_error; its socket is closed and a new one made next round."""
    made: list[int] = []

    class Broken(FakeDiag):
        def tcp_listener_stats(self, names: Sequence[str] | None) -> dict[str, ListenStats]:
            if len(made) == 1:
                raise OSError("netlink down")
            return super().tcp_listener_stats(names)

    asked: list[tuple[str, Any]] = []

    def diag() -> FakeDiag:
        made.append(1)
        return Broken(asked)

    engine = WatcherEngine([L], kernel=Kernel(diag=diag))  # type: ignore[arg-type]
    engine.sample()
    assert (engine.last_error, asked) == ("OSError: netlink down", [("close", None)])
    engine.sample()
    assert (engine.last_error, len(made), engine.current()) == (None, 2, {L: (1, 2)})


def test_fetch_and_afetch_still_replace_the_read() -> None:
    """fetch= and afetch= replace the kernel read; asample runs a lone fetch in a thread."""
    threads: list[str] = []

    def fetch(names: Sequence[str] | None) -> dict[str, ListenStats]:
        threads.append(threading.current_thread().name)
        return {L: ListenStats(5, 6, None)}

    engine = WatcherEngine([L], fetch=fetch)
    asyncio.run(engine.asample())
    assert threads[0] != threading.current_thread().name
    assert engine.current() == {L: (5, 6)}


class FrozenLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock never moves: no timer ever fires, only wake-ups do."""

    def time(self) -> float:
        return 0.0


def on_frozen_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on a FrozenLoop; cancel it if nothing woke it in 30 s (a hang, not a pass)."""
    loop = FrozenLoop()
    try:
        task = loop.create_task(coro)
        guard = threading.Timer(30, loop.call_soon_threadsafe, (task.cancel,))
        guard.start()
        try:
            return loop.run_until_complete(task)
        finally:
            guard.cancel()
    finally:
        loop.close()


def test_await_round_wakes_on_the_round_not_on_a_timer() -> None:
    """A coroutine awaiting a round is woken by record() from another thread, with time frozen."""
    engine = WatcherEngine([L], fetch=lambda names: {})

    async def main() -> tuple[bool, int]:
        threading.Timer(0.05, engine.record, ({L: ListenStats(1, 1, None)},)).start()
        woke = await engine.await_round(0, timeout=3600)
        return woke, engine.rounds

    assert on_frozen_loop(main()) == (True, 1)


def test_await_sampled_wakes_on_the_first_round() -> None:
    """await_sampled() returns when the first round is recorded, not after polling."""
    engine = WatcherEngine([L], fetch=lambda names: {})

    async def main() -> bool:
        threading.Timer(0.05, engine.record, ({L: ListenStats(1, 1, None)},)).start()
        return await engine.await_sampled(timeout=3600)

    assert on_frozen_loop(main()) is True


def test_one_round_wakes_waiters_on_several_loops_and_threads() -> None:
    """Waiters on two event loops (two threads) and a blocked thread all wake on one round."""
    engine = WatcherEngine([L], fetch=lambda names: {})
    woke: list[object] = []
    waiting = threading.Barrier(4)

    async def on_loop() -> None:
        waiting.wait()
        woke.append(await engine.await_round(0, timeout=3600))

    def blocked() -> None:
        waiting.wait()
        woke.append(engine.wait_round(0, timeout=3600))

    threads = [
        threading.Thread(target=on_frozen_loop, args=(on_loop(),)),
        threading.Thread(target=on_frozen_loop, args=(on_loop(),)),
        threading.Thread(target=blocked),
    ]
    for thread in threads:
        thread.start()
    waiting.wait()
    threading.Event().wait(0.05)  # let them reach their waits
    engine.record({L: ListenStats(1, 1, None)})
    for thread in threads:
        thread.join(30)
    assert woke == [True, True, True]


def test_a_round_already_recorded_needs_no_wait() -> None:
    """Waiting past a round that is already in returns at once, blocking or not; none: False."""
    engine = WatcherEngine([L], fetch=lambda names: {})
    engine.record({L: ListenStats(1, 1, None)})
    assert (engine.wait_round(0, 0), engine.wait_round(1, 0)) == (True, False)
    assert asyncio.run(engine.await_round(0, 0)) is True
    assert asyncio.run(engine.await_round(1, 0.01)) is False


def test_aserve_redirects_after_the_round_that_follows_a_reset() -> None:
    """aserve() awaits the round after a reset (fed from a thread) before its 302."""

    async def afetch(names: Sequence[str] | None) -> dict[str, ListenStats]:
        return {L: ListenStats(2, 3, None)}

    core = WatcherCore([L], fetch=lambda names: {}, afetch=afetch, delay=3600)

    async def main() -> tuple[int, int]:
        first = await core.aserve("GET", "/", "", peer=LOCAL)
        assert isinstance(first, Reply)
        threading.Timer(0.05, core.engine.record, ({L: ListenStats(4, 5, None)},)).start()
        reset = await core.aserve("POST", f"/reset/{L}", "", peer=LOCAL)
        await core.engine.stop_task()
        assert isinstance(reset, Reply)
        return first.status, reset.status

    assert asyncio.run(main()) == (200, 302)
    report = core.engine.report(L)
    assert report is not None
    assert (report.queued.count, report.queued.current) == (1, 5)


# -- final replies ------------------------------------------------------------------


def test_head_answers_are_final() -> None:
    """HEAD gets GET's status and headers with no body, a tail's included, refusals too."""
    core = WatcherCore([L], fetch=lambda names: {L: ListenStats(1, 2, None)})
    core.engine.sample()
    for path in ("/", f"/queued/{L}.txt", f"/active/{L}.html", "/nope"):
        get, head = (
            core.handle("GET", path, "", peer=LOCAL),
            core.handle("HEAD", path, "", peer=LOCAL),
        )
        assert isinstance(get, Reply)
        assert isinstance(head, Reply)
        assert (head.status, head.headers, head.body) == (get.status, get.headers, b"")
    plan = core.handle("GET", f"/tail/{L}.txt", "", peer=LOCAL)
    tail = core.handle("HEAD", f"/tail/{L}.txt", "", peer=LOCAL)
    assert isinstance(plan, TailPlan)
    assert tail == Reply(200, plan.headers, b"")
    refused = core.serve("HEAD", "/", "", peer="192.0.2.1")
    assert isinstance(refused, Reply)
    assert (refused.status, refused.body) == (403, b"")
    assert core.engine.thread_running is False


def test_last_data_recv_head_is_final() -> None:
    """LastDataRecv's report and its 404 are final for HEAD: headers kept, no body."""
    ldr = LastDataRecvCore(segment="anonymous")
    ldr.record(3)
    get = ldr.answer(ldr.path, "", None)
    head = ldr.answer(ldr.path, "", None, method="HEAD")
    assert get is not None
    assert head is not None
    assert (head.headers, head.body) == (get.headers, b"")
    assert (ldr.not_found("HEAD").status, ldr.not_found("HEAD").body) == (404, b"")
    assert ldr.not_found("HEAD").headers == ldr.not_found().headers


# -- fork ---------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_starts_its_own_sampler() -> None:
    """In a child forked while the sampler ran: none runs there, start_thread() starts one."""
    engine = WatcherEngine([L], delay=0.01, fetch=lambda names: {L: ListenStats(1, 1, None)})
    engine.start_thread()
    assert engine.wait_sampled(5)
    with warnings.catch_warnings():  # 3.12+: "multi-threaded, fork() may deadlock": the point
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report by exit status only
        code = 1
        try:
            before = engine.thread_running
            started = engine.start_thread()
            sampled = engine.wait_sampled(5) and engine.rounds > 0
            engine.stop_thread()
            code = 0 if (before, started, sampled) == (False, True, True) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    engine.stop_thread()
    assert os.waitstatus_to_exitcode(status) == 0
