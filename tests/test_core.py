"""The scheduling core on scripted in-memory runners (antnest.transport.memory): no sshd, no
processes, no sleeps. The real Cluster, Scheduler and Worker drive runners whose every taskunit
does what the test says: run, raise, die mid-batch, go silent, time out, hold until released.
"""
from __future__ import annotations

import collections
import dataclasses
import re
import threading
import uuid
from concurrent.futures import CancelledError, wait
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import antnest
from antnest.errors import TaskError, TaskLost, TaskTimeout
from antnest.host import Host, State
from antnest.transport import memory
from antnest.transport.memory import DIE, DROP_LINK, HANG, HOLD, RAISE, RUN, TIMEOUT, Script
from plugins import processes

BOUND = 60  # seconds any one wait in these tests may take at most (they take milliseconds)


def square(x: int) -> int:
    return x * x


def key(item: Any) -> Any:
    """The test's own item inside what the runner received: map sends (x,), submit
    ((x,), {}), imap x."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], dict):
        item = item[0]
    if isinstance(item, tuple) and len(item) == 1:
        item = item[0]
    return item


class Fleet:
    """In-memory hosts m0..m{n-1}, each with its own Script; unregistered at the end."""

    def __init__(self, count: int, procs: int = 2, act: Optional[Callable] = None,
                 flush_every: int = 1) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.scripts: List[Script] = []
        self.hosts: List[Host] = []
        for i in range(count):
            address = f"{self.tag}-m{i}"
            host_act = (lambda a, name: (lambda item, proc: a(name, key(item), proc)))(
                act, f"m{i}") if act else None
            self.scripts.append(memory.register(address, Script(act=host_act, cpus=procs,
                                                                flush_every=flush_every)))
            self.hosts.append(Host(name=f"m{i}", address=address, transport="memory",
                                   procs=procs))

    def cluster(self, **kwargs: Any) -> antnest.Cluster:
        return antnest.Cluster(hosts=self.hosts, **kwargs)

    def runs(self) -> "collections.Counter[Any]":
        """How many times each item was run, over every runner of every host."""
        return collections.Counter(key(item) for s in self.scripts for _, item in s.seen)

    def where(self, item: Any) -> List[str]:
        return [label for s in self.scripts for label, seen in s.seen if key(seen) == item]

    def close(self) -> None:
        for host in self.hosts:
            memory.unregister(host.address)


@pytest.fixture
def fleets() -> Iterator[Callable[..., Fleet]]:
    made: List[Fleet] = []

    def make(*args: Any, **kwargs: Any) -> Fleet:
        made.append(Fleet(*args, **kwargs))
        return made[-1]
    yield make
    for fleet in made:
        fleet.close()


def once_per(condition: Callable[[str, Any, Any], bool]) -> Callable[[str, Any, Any], str]:
    """An act that answers the scripted action the first time `condition` says so per item."""
    done = set()
    lock = threading.Lock()

    def act(host: str, item: Any, proc: Any) -> str:
        action = condition(host, item, proc)
        if action == RUN:
            return RUN
        with lock:
            if item in done:
                return RUN
            done.add(item)
        return action
    return act


def bounded(fn: Callable[[], Any], what: str = "the call") -> Any:
    """Run fn on a thread; fail (not hang) when it takes longer than BOUND."""
    return processes.bounded(fn, BOUND, what)


# -- exactly once ---------------------------------------------------------------------------

def test_32_hosts_x_2_procs_every_result_once_and_the_thread_count(
        fleets: Callable[..., Fleet], record_property: Callable[[str, Any], None]) -> None:
    fleet = fleets(32, procs=2)
    before = threading.active_count()
    # no speculation: a slow tail run twice on purpose would count as a second run
    with fleet.cluster(speculate=False) as cluster:
        hosts = cluster.wait_for_hosts(BOUND)
        assert all(h.state == State.CONNECTED and h.procs == 2 for h in hosts), hosts
        during: List[int] = []

        def consume() -> List[int]:
            out = []
            for value in cluster.map(square, range(20000)):
                if len(out) == 10000:
                    during.append(threading.active_count())
                out.append(value)
            return out
        got = bounded(consume)
    assert got == [x * x for x in range(20000)]
    assert all(count == 1 for count in fleet.runs().values()) and len(fleet.runs()) == 20000
    threads = during[0] - before
    record_property("master_threads_32x2", threads)
    print(f"master threads for 32 hosts x 2 procs: {threads}")
    # Today one reader thread per runner slot (64) plus a few; the bound catches leaks
    # (a thread per abort, per ping) while the one-owner dispatcher is not in yet.
    assert threads <= 64 + 8, threads


def test_a_runner_dying_mid_batch_requeues_only_the_unfinished_suffix(
        fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(3, procs=2, act=once_per(
        lambda host, item, proc: DIE if item % 97 == 13 and host == "m0" else RUN))
    with fleet.cluster(speculate=False) as cluster:
        got = bounded(lambda: list(cluster.map(square, range(3000))))
        lost = {h.name: h.lost for h in cluster.hosts}
    assert got == [x * x for x in range(3000)]
    runs = fleet.runs()
    # Partial results reached the master before each death: nothing that finished ran twice.
    assert set(runs) == set(range(3000)) and set(runs.values()) == {1}, \
        [i for i, n in runs.items() if n != 1]
    assert lost["m0"] >= 1, lost
    # the taskunit that was running is a suspect: it goes to another host
    killer = next(i for i in range(3000) if i % 97 == 13 and not fleet.where(i)[0].startswith("m0"))
    assert not any(label.startswith("m0") for label in fleet.where(killer))


def test_poison_is_isolated_and_stops_after_max_lost(fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(3, procs=2, act=lambda host, item, proc: DIE if item == 7 else RUN)
    with fleet.cluster(max_lost=2, speculate=False) as cluster:
        futures = [cluster.submit(square, i) for i in range(200)]
        done, pending = bounded(lambda: wait(futures, timeout=BOUND))
        assert not pending
        lost = sum(h.lost for h in cluster.hosts)
    error = futures[7].exception()
    assert isinstance(error, TaskLost) and error.taskunit_id is not None, error
    assert "max-lost 2" in str(error)
    assert [f.result() for i, f in enumerate(futures) if i != 7] == \
        [i * i for i in range(200) if i != 7]
    assert lost == 3  # the poison killed max_lost + 1 runners, then was given up
    runs = fleet.runs()
    assert 7 not in runs and all(n == 1 for n in runs.values())


def test_poison_fails_a_map_fast_with_task_lost(fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(2, procs=2, act=lambda host, item, proc: DIE if item == 5 else RUN)
    with fleet.cluster(max_lost=1, speculate=False) as cluster:
        with pytest.raises(TaskLost, match="taskunit 5 "):
            bounded(lambda: list(cluster.map(square, range(100))))
        assert bounded(lambda: list(cluster.map(square, range(5)))) == [x * x for x in range(5)]


def test_a_failed_taskunit_is_retried_on_another_host(fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(2, procs=1, act=lambda host, item, proc: RAISE if item == 3 and host == "m0"
                   else RUN)
    with fleet.cluster(retries=1, speculate=False) as cluster:
        got = bounded(lambda: list(cluster.map(square, range(40))))
    assert got == [x * x for x in range(40)]
    where = fleet.where(3)
    if where[0].startswith("m0"):  # it failed there, then ran once more, elsewhere
        assert len(where) == 2 and where[1].startswith("m1"), where
    else:
        assert len(where) == 1, where


def test_retries_exhausted_is_the_remote_error(fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(2, procs=1, act=lambda host, item, proc: RAISE if item == 3 else RUN)
    with fleet.cluster(retries=2, speculate=False) as cluster:
        future = cluster.submit(square, 3)
        error = bounded(lambda: future.exception(timeout=BOUND))
    assert isinstance(error, RuntimeError) and "scripted failure" in str(error)
    assert len(fleet.where(3)) == 3


def test_a_task_timeout_fails_that_taskunit_only(fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(2, procs=2, act=lambda host, item, proc: TIMEOUT if item == 11 else RUN)
    with fleet.cluster(task_timeout=5, speculate=False) as cluster:
        futures = [cluster.submit(square, i) for i in range(50)]
        bounded(lambda: wait(futures, timeout=BOUND))
    error = futures[11].exception()
    assert isinstance(error, TaskTimeout) and "task timeout" in str(error), error
    assert all(f.result() == i * i for i, f in enumerate(futures) if i != 11)
    runs = fleet.runs()
    assert 11 not in runs and all(n == 1 for n in runs.values())


def test_a_silent_runner_is_lost_and_nothing_is_blamed(fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(2, procs=2, act=once_per(lambda host, item, proc: HANG if item == 20 else RUN))
    with fleet.cluster(max_lost=0, speculate=False) as cluster:
        got = bounded(lambda: list(cluster.map(square, range(100))))
        lost = sum(h.lost for h in cluster.hosts)
    assert got == [x * x for x in range(100)]  # max_lost=0, yet 20 is not a poison: no blame
    assert lost == 1


def test_a_dropped_link_reconnects_and_nothing_is_blamed(fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(2, procs=2, act=once_per(
        lambda host, item, proc: DROP_LINK if item == 30 and host == "m1" else RUN))
    with fleet.cluster(max_lost=0, speculate=False) as cluster:
        got = bounded(lambda: list(cluster.map(square, range(200))))
    assert got == [x * x for x in range(200)]
    if any(label.startswith("m1") for label in fleet.where(30)) or fleet.scripts[1].connects > 1:
        assert fleet.scripts[1].connects >= 2  # the host was reconnected after the drop


# -- speculation ----------------------------------------------------------------------------

def test_a_held_straggler_is_copied_and_its_late_result_is_dropped(
        fleets: Callable[..., Fleet]) -> None:
    held = threading.Event()

    def act(host: str, item: Any, proc: Any) -> str:
        if item == 199 and not held.is_set():  # wherever it lands first
            held.set()
            return HOLD
        return RUN
    fleet = fleets(2, procs=2, act=act)
    cluster = fleet.cluster()
    try:
        sched = cluster.scheduler
        sched.policy = dataclasses.replace(sched.policy, straggler_min_seconds=0.0)
        got = bounded(lambda: sorted(cluster.imap_unordered(square, range(200))))
        assert held.is_set()  # 199 was held where it landed first, and copied
        assert sched.stats["speculated"] >= 1
        for script in fleet.scripts:  # the original finishes late: its result must be dropped
            script.release()
        assert bounded(lambda: list(cluster.map(square, range(5)))) == [0, 1, 4, 9, 16]
    finally:
        bounded(cluster.shutdown, "shutdown")
    assert got == sorted(x * x for x in range(200))


# -- cancelling, dropping -------------------------------------------------------------------

def test_shutdown_cancel_futures_cancels_what_has_not_started(fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(1, procs=1, act=lambda host, item, proc: HOLD if item == 0 else RUN)
    cluster = fleet.cluster(speculate=False)
    first = cluster.submit(square, 0)
    rest = [cluster.submit(square, i) for i in range(1, 50)]
    assert bounded(lambda: fleet.scripts[0].held() or _wait_held(fleet.scripts[0]))
    bounded(lambda: cluster.shutdown(wait=False, cancel_futures=True), "shutdown")
    fleet.scripts[0].release()
    cancelled = [f for f in rest if f.cancelled()]
    assert cancelled, "no future was cancelled"
    # As with ThreadPoolExecutor, wait() does not count a future cancelled by shutdown as done;
    # every other one ends (the cluster is gone, so with an error).
    others = [first] + [f for f in rest if not f.cancelled()]
    done, pending = bounded(lambda: wait(others, timeout=BOUND))
    assert not pending
    with pytest.raises(CancelledError):
        cancelled[0].result()


def _wait_held(script: Script) -> bool:
    """The first batch reaches the runner during submit(): held() is already true then."""
    return script.held() > 0


def test_a_dropped_iterator_ends_its_call_and_frees_the_runners(
        fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(2, procs=2)
    pulled = [0]

    def endless() -> Iterator[int]:
        while True:
            pulled[0] += 1
            yield pulled[0]
    with fleet.cluster() as cluster:
        it = cluster.imap(square, endless())
        assert bounded(lambda: [next(it) for _ in range(100)])[:3] == [1, 4, 9]
        it.close()
        # the cluster is free for the next call, and the endless input stopped being read
        assert bounded(lambda: list(cluster.map(square, range(50)))) == [x * x for x in range(50)]
        stopped_at = pulled[0]
        assert bounded(lambda: list(cluster.map(square, range(50)))) == [x * x for x in range(50)]
        assert pulled[0] == stopped_at


# -- any interleaving -----------------------------------------------------------------------

FAULTS = st.sampled_from([DIE, HANG, DROP_LINK, RAISE])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hosts=st.integers(1, 4), procs=st.integers(1, 3), count=st.integers(0, 300),
       faults=st.dictionaries(st.integers(0, 299), st.tuples(FAULTS, st.integers(0, 3)),
                              max_size=12),
       speculate=st.booleans(), unordered=st.booleans())
def test_every_result_exactly_once_under_any_losses(
        hosts: int, procs: int, count: int, faults: Dict[int, Tuple[str, int]],
        speculate: bool, unordered: bool) -> None:
    """A fault strikes the first time an item reaches the chosen host (a retry covers RAISE);
    whatever the mix, each result arrives once, and nothing whose result came home is run again
    unless speculation copied it."""
    def condition(host: str, item: Any, proc: Any) -> str:
        fault = faults.get(item)
        if fault is None or host != f"m{fault[1] % hosts}":
            return RUN
        return fault[0]
    fleet = Fleet(hosts, procs=procs, act=once_per(condition))
    try:
        with fleet.cluster(retries=1, max_lost=2, speculate=speculate) as cluster:
            if unordered:
                got = bounded(lambda: sorted(cluster.imap_unordered(square, range(count))))
            else:
                got = bounded(lambda: list(cluster.map(square, range(count))))
    finally:
        fleet.close()
    assert got == [x * x for x in range(count)]
    # A dropped link may cut a result already computed on the way home: that one runs again.
    if not speculate and not any(fault == DROP_LINK for fault, _ in faults.values()):
        runs = fleet.runs()
        again = {i for i, n in runs.items() if n > 1}
        assert again <= {i for i, (fault, _) in faults.items() if fault == RAISE}, again


# -- one reading thread, whatever the number of runner slots -----------------------------------

def _antnest_threads() -> List[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("antnest-"))


def _threads_while_serving(fleets: Callable[..., Fleet], hosts: int) -> List[str]:
    fleet = fleets(hosts, procs=2, act=lambda host, item, proc: HOLD if item == "hold" else RUN)
    with fleet.cluster() as cluster:
        cluster.wait_for_hosts(timeout=BOUND)
        assert sum(h.alive for h in cluster.hosts) == 2 * hosts
        assert list(cluster.map(square, range(200))) == [n * n for n in range(200)]
        held = cluster.submit(key, "hold")   # a runner busy mid-taskunit while we count
        for script in fleet.scripts:
            if script.held():
                break
        names = _antnest_threads()
        for script in fleet.scripts:
            script.release()
        assert held.result(timeout=BOUND) == "hold"
    return names


def test_master_threads_do_not_grow_with_runner_slots(fleets: Callable[..., Fleet]) -> None:
    """64 runner slots are read by the same threads as 8: the dispatcher, the monitor, the
    settlers; no reader (nor booting) thread stays per slot once its runner serves."""
    few = _threads_while_serving(fleets, 4)
    many = _threads_while_serving(fleets, 32)
    assert "antnest-dispatch" in many
    assert not [n for n in many if re.match(r"antnest-m\d", n)], many  # no per-slot thread
    assert len(many) <= len(few) + 1, (few, many)  # a settler more at most, never 56 more
