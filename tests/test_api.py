"""Issue 5 over the real sshd fleet, where test_conformance leaves gaps: a generator input far
larger than master memory should hold, warm connections across calls, runners back in service
after a call abandoned mid-flight, as_completed / wait, map's timeout, the fields of
cluster.hosts, a runner's channel closing right after its HELLO, and the one-shot antnest.run.

Every test checks afterwards (fleet_leftovers) that no runner stayed under the fleet's daemons
and that no file appeared on the hosts.
"""
from __future__ import annotations

import io
import logging
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest

import antnest
from antnest import errors
from antnest.testing import SshdFleet
from antnest.transport.ssh import SshConnection
from plugins.cli import HELLO_WORLD, REPO
from plugins.processes import bounded

GATE_SECONDS = 30.0

pytestmark = pytest.mark.usefixtures("fleet_leftovers")


@pytest.fixture
def cluster_kwargs(fleet: SshdFleet, fleet_inventory: Path) -> dict:
    return {"inventory": fleet_inventory, "known_hosts": [fleet.known_hosts]}


def low_bits(pair: tuple) -> int:
    return pair[0] & 7


def square(n: int) -> int:
    return n * n


def gated(item: tuple) -> int:
    """Waits (at most GATE_SECONDS) until the file `release` exists, then returns `value`."""
    release, value = item
    deadline = time.time() + GATE_SECONDS
    while not os.path.exists(release) and time.time() < deadline:
        time.sleep(0.01)
    return value


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class PeakRss:
    """Samples this process's resident size on a thread: the peak, not just the end, counts."""

    def __init__(self) -> None:
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_bytes())


# --- bounded memory ----------------------------------------------------------------------------

ITEMS = 2_000_000
# Each item is a fresh (n, n + 1) pair: holding the 2M items as a list costs ~270 MB of master
# memory (measured), holding map's argument tuples or futures more still. Streaming them needs
# ~20-60 MB (measured: read-ahead, batches, pickling buffers).
RSS_GROWTH_LIMIT = 150 * 1024 * 1024


def pairs(counter: List[int]) -> Iterator[tuple]:
    """(n, n + 1) for n below ITEMS, counting what it yielded in counter[0]; stores nothing."""
    for n in range(ITEMS):
        counter[0] += 1
        yield n, n + 1


def test_map_over_a_huge_generator_streams_it(cluster_kwargs: dict) -> None:
    yielded = [0]
    with antnest.Cluster(**cluster_kwargs, procs=2) as cluster:
        cluster.wait_for_hosts(timeout=60)
        before = rss_bytes()
        count = total = 0
        with PeakRss() as peak:
            for value in cluster.map(low_bits, pairs(yielded)):
                count += 1
                total += value
    assert yielded[0] == ITEMS
    assert count == ITEMS
    assert total == sum(n & 7 for n in range(ITEMS))
    growth = peak.peak - before
    assert growth < RSS_GROWTH_LIMIT, f"master RSS grew by {growth / 2**20:.0f} MB"


def test_imap_unordered_over_a_huge_generator_streams_it(cluster_kwargs: dict) -> None:
    yielded = [0]
    with antnest.Cluster(**cluster_kwargs, procs=2) as cluster:
        cluster.wait_for_hosts(timeout=60)
        before = rss_bytes()
        with PeakRss() as peak:
            count = sum(1 for _ in cluster.imap_unordered(low_bits, pairs(yielded)))
    assert (yielded[0], count) == (ITEMS, ITEMS)
    growth = peak.peak - before
    assert growth < RSS_GROWTH_LIMIT, f"master RSS grew by {growth / 2**20:.0f} MB"


# --- warm for the cluster's life ---------------------------------------------------------------


def test_second_map_opens_no_connection_and_boots_no_runner(
        fleet: SshdFleet, cluster_kwargs: dict, mocker) -> None:
    connect = mocker.spy(SshConnection, "connect")
    open_runner = mocker.spy(SshConnection, "open_runner")
    names = [h.name for h in fleet.hosts]
    with antnest.Cluster(**cluster_kwargs, procs=2) as cluster:
        hosts = cluster.wait_for_hosts(timeout=60)
        assert [(h.state, h.procs, h.alive) for h in hosts] == [("connected", 2, 2)] * 3
        assert list(cluster.map(square, range(200))) == [n * n for n in range(200)]
        connects, runners = connect.call_count, open_runner.call_count
        assert connects >= 3 and runners >= 6
        sessions = {name: set(fleet.session_pids(name)) for name in names}

        assert list(cluster.map(square, range(200, 400))) == [n * n for n in range(200, 400)]
        assert sorted(cluster.imap_unordered(square, range(10))) == [n * n for n in range(10)]

        assert (connect.call_count, open_runner.call_count) == (connects, runners), \
            "the second call dialled a host or started a runner"
        for name in names:
            new = set(fleet.session_pids(name)) - sessions[name]
            assert not new, f"{name}: new sshd session processes {sorted(new)}"
        assert all(h.lost == 0 for h in cluster.hosts)


# --- futures: as_completed, wait ---------------------------------------------------------------


def test_as_completed_and_wait_on_submitted_futures(cluster_kwargs: dict,
                                                    tmp_path: Path) -> None:
    release = str(tmp_path / "release")
    with antnest.Cluster(**cluster_kwargs, procs=2) as cluster:
        cluster.wait_for_hosts(timeout=60)
        try:
            # The held task goes last: a runner works through its window in order, so a quick
            # task queued behind the held one would wait for it too.
            quick = [cluster.submit(square, n) for n in range(5)]
            held = cluster.submit(gated, (release, "held"))
            futures = quick + [held]

            done, not_done = antnest.wait(futures, timeout=GATE_SECONDS / 2,
                                          return_when=antnest.FIRST_COMPLETED)
            assert done and held in not_done and not held.done()

            arrived = []
            for future in antnest.as_completed(quick, timeout=GATE_SECONDS / 2):
                arrived.append(future.result())
            assert sorted(arrived) == [n * n for n in range(5)]
            assert not held.done()

            done, not_done = antnest.wait(futures, timeout=0.2)   # ALL_COMPLETED by default
            assert not_done == {held}
        finally:
            Path(release).touch()
        done, not_done = antnest.wait(futures, timeout=GATE_SECONDS,
                                      return_when=antnest.ALL_COMPLETED)
        assert (done, not_done) == (set(futures), set())
        assert held.result() == "held"
        order = [f for f in antnest.as_completed(futures, timeout=1)]
        assert set(order) == set(futures)


def test_wait_first_exception_on_submitted_futures(cluster_kwargs: dict,
                                                   tmp_path: Path) -> None:
    release = str(tmp_path / "release")
    with antnest.Cluster(**cluster_kwargs, procs=2) as cluster:
        cluster.wait_for_hosts(timeout=60)
        try:
            failing = cluster.submit(divmod, 1, 0)
            held = cluster.submit(gated, (release, 1))
            done, not_done = antnest.wait([held, failing], timeout=GATE_SECONDS / 2,
                                          return_when=antnest.FIRST_EXCEPTION)
            assert (done, not_done) == ({failing}, {held})
            assert isinstance(failing.exception(), ZeroDivisionError)
        finally:
            Path(release).touch()
        assert held.result(timeout=GATE_SECONDS) == 1


# --- a call abandoned mid-flight ---------------------------------------------------------------
# A map whose reader stops early (or fails fast on a task error) ends while batches are still
# running on the runners. Their results are of no use any more, but the runners must come back
# into service for the next call.


def spread(item: tuple) -> str:
    """Marks this host (by its HOME) in `gate`, waits (at most 5 s) until `expected` hosts
    have, and returns the HOME: a call of these is done quickly only if every host takes part."""
    gate, expected = item
    home = os.environ.get("HOME", "")
    Path(gate, home.strip("/").replace("/", "_") or "nohome").touch()
    deadline = time.time() + 5
    while len(os.listdir(gate)) < expected and time.time() < deadline:
        time.sleep(0.01)
    return home


def assert_every_host_takes_work(cluster: antnest.Cluster, fleet: SshdFleet,
                                 gate: Path) -> None:
    gate.mkdir()
    homes = bounded(lambda: set(cluster.map(spread, [(str(gate), 3)] * 12)), 10, "the map")
    assert homes == {str(h.home) for h in fleet.hosts}, "some runners never took new work"


def test_runners_serve_the_next_call_after_a_map_abandoned_mid_flight(
        fleet: SshdFleet, cluster_kwargs: dict, tmp_path: Path) -> None:
    release = tmp_path / "release"
    first = tmp_path / "release-first"
    first.touch()
    try:
        with antnest.Cluster(**cluster_kwargs, procs=1) as cluster:
            cluster.wait_for_hosts(timeout=60)
            # Item 0 runs at once; items 1.. wait for `release`: enough to fill every runner's
            # window (3 runners x 2 batches) with held batches.
            items = [(str(first if n == 0 else release), n) for n in range(12)]
            results = cluster.map(gated, items)
            assert next(results) == 0
            results.close()          # the reader walks away while the held batches run
            release.touch()
            assert_every_host_takes_work(cluster, fleet, tmp_path / "spread")
            assert bounded(lambda: cluster.submit(square, 7).result(), 20, "the next call") == 49
    finally:
        release.touch()


def test_runners_serve_the_next_call_after_a_map_failed_fast(
        fleet: SshdFleet, cluster_kwargs: dict, tmp_path: Path) -> None:
    release = tmp_path / "release"
    try:
        with antnest.Cluster(**cluster_kwargs, procs=1) as cluster:
            cluster.wait_for_hosts(timeout=60)
            # divmod(n, 0) fails at once; the other items are held: the map fails fast while
            # the runners still hold its batches.
            with pytest.raises(ZeroDivisionError):
                list(cluster.map(held_or_failing, [(str(release), n) for n in range(12)]))
            release.touch()
            assert_every_host_takes_work(cluster, fleet, tmp_path / "spread")
    finally:
        release.touch()


def held_or_failing(item: tuple) -> int:
    release, n = item
    if n == 0:
        return divmod(n, 0)[0]
    return gated((release, n))


# --- map(timeout=) -------------------------------------------------------------------------------

MAP_TIMEOUT = 0.5
RELEASE_AFTER = 8.0    # the gate opens on its own then, so a broken timeout cannot hang the test
DID_NOT_HANG = 5.0     # ten times the timeout


def test_map_timeout_raises_timeout_error_while_tasks_are_still_running(
        cluster_kwargs: dict, tmp_path: Path) -> None:
    release = tmp_path / "release"
    opener = threading.Timer(RELEASE_AFTER, release.touch)
    opener.start()
    try:
        with antnest.Cluster(**cluster_kwargs, procs=1) as cluster:
            cluster.wait_for_hosts(timeout=60)
            results = cluster.map(gated, [(str(release), n) for n in range(6)],
                                  timeout=MAP_TIMEOUT)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                next(results)
            elapsed = time.monotonic() - started
            assert elapsed < DID_NOT_HANG, (
                f"map(timeout={MAP_TIMEOUT}) raised after {elapsed:.1f} s, when the first "
                f"result arrived, not when the timeout expired")
            release.touch()
            # The cluster is still usable afterwards.
            got = bounded(lambda: list(cluster.map(square, range(10), timeout=60)), 20, "the map")
            assert got == [n * n for n in range(10)]
    finally:
        opener.cancel()
        release.touch()


def test_map_timeout_not_reached(cluster_kwargs: dict) -> None:
    with antnest.Cluster(**cluster_kwargs, procs=1) as cluster:
        assert list(cluster.map(square, range(100), timeout=60)) == [n * n for n in range(100)]


# --- cluster.hosts -------------------------------------------------------------------------------


def test_cluster_hosts_fields(fleet: SshdFleet, cluster_kwargs: dict) -> None:
    version = re.compile(r"%d\.%d\.\d+$" % sys.version_info[:2])
    with antnest.Cluster(**cluster_kwargs, procs=2) as cluster:
        hosts = cluster.wait_for_hosts(timeout=60)
        assert [h.name for h in hosts] == [h.name for h in fleet.hosts]
        for state, host in zip(hosts, fleet.hosts):
            assert state.address == f"{host.address}:{host.port}"
            assert state.state == "connected"
            assert state.procs == 2
            assert isinstance(state.python, str) and version.match(state.python), state.python
            assert state.cpus == os.cpu_count()
            assert state.hostname == socket.gethostname()
            assert state.cloudpickle in ("found", "shipped")
            assert (state.error, state.lost, state.done) == (None, 0, 0)
        assert list(cluster.map(square, range(60))) == [n * n for n in range(60)]
        assert sum(h.done for h in cluster.hosts) == 60
        snapshot = cluster.hosts
        snapshot[0].state = "tampered"   # a copy: the cluster's own state is untouched
        assert cluster.hosts[0].state == "connected"
    assert [(h.state, h.alive, h.procs) for h in cluster.hosts] == [("closed", 0, 2)] * 3


def test_cluster_hosts_reports_a_host_that_failed(fleet: SshdFleet, tmp_path: Path) -> None:
    fleet1 = fleet.host("fleet1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    hosts = [antnest.Host(name="fleet1", address=fleet1.address, port=fleet1.port,
                          user=fleet.user, identity_files=(str(fleet.client_key),), procs=1),
             antnest.Host(name="dead", address="127.0.0.1", port=dead_port, user=fleet.user,
                          identity_files=(str(fleet.client_key),), procs=1)]
    with antnest.Cluster(hosts=hosts, known_hosts=[fleet.known_hosts]) as cluster:
        states = {h.name: h for h in cluster.wait_for_hosts(timeout=60)}
        assert (states["fleet1"].state, states["fleet1"].procs) == ("connected", 1)
        assert (states["dead"].state, states["dead"].alive) == ("failed", 0)
        assert "refused" in states["dead"].error
        assert list(cluster.map(square, range(5))) == [0, 1, 4, 9, 16]


# --- a runner's channel closing right after its HELLO ------------------------------------------
# One narrow seam: the HELLO of fleet1's second runner slot (#1) is held until the channel under
# it has been closed, by shutdown() or by a "network" kill. The slot must deal with it like any
# other lost runner: no thread dying of an OSError, no runner slot or start count leaked.


@pytest.fixture
def problems(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """problems(): threads that died of an exception, and errors antnest logged. A runner lost
    is a warning, a clean shutdown nothing: neither is an internal-error traceback."""
    crashes: List[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(
        f"{args.thread.name if args.thread else '?'}: {args.exc_type.__name__}: {args.exc_value}"))
    caplog.set_level(logging.WARNING, logger="antnest")

    def found() -> List[str]:
        return crashes + [f"logged {r.levelname}: {r.name}: {r.getMessage()}"
                          for r in caplog.records
                          if r.levelno >= logging.ERROR and r.name.startswith("antnest")]

    return found


def hold_hello_of_second_slot(monkeypatch: pytest.MonkeyPatch, then) -> threading.Event:
    """Patch await_hello: slot #1's first HELLO returns only after then(proc) ran."""
    from antnest import worker as worker_module

    real = worker_module.await_hello
    held = threading.Event()

    def await_hello(host, proc, reader):
        hello = real(host, proc, reader)
        if getattr(proc, "label", "").endswith("#1") and not held.is_set():
            held.set()
            then(proc)
        return hello

    monkeypatch.setattr(worker_module, "await_hello", await_hello)
    return held


def one_host(fleet: SshdFleet, procs: int) -> List[antnest.Host]:
    fleet1 = fleet.host("fleet1")
    return [antnest.Host(name="fleet1", address=fleet1.address, port=fleet1.port,
                         user=fleet.user, identity_files=(str(fleet.client_key),), procs=procs)]


def test_channel_lost_right_after_hello_is_an_ordinary_lost_runner(
        fleet: SshdFleet, monkeypatch: pytest.MonkeyPatch, problems) -> None:
    held = hold_hello_of_second_slot(monkeypatch, lambda proc: proc.kill())
    with antnest.Cluster(hosts=one_host(fleet, 2), known_hosts=[fleet.known_hosts]) as cluster:
        assert held.wait(30)
        deadline = time.monotonic() + 10   # the slot restarts its runner meanwhile
        while True:
            (state,) = cluster.wait_for_hosts(timeout=max(0.1, deadline - time.monotonic()))
            if state.alive == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert problems() == []
        assert cluster.scheduler.starting == 0, "a runner start was never accounted for"
        assert (state.state, state.alive) == ("connected", 2), "the lost slot was not restarted"
        assert list(cluster.map(square, range(20))) == [n * n for n in range(20)]
    assert problems() == []


def test_shutdown_right_after_a_hello_is_no_error(
        fleet: SshdFleet, monkeypatch: pytest.MonkeyPatch, problems) -> None:
    stopping = threading.Event()

    def wait_for_shutdown(proc) -> None:
        assert stopping.wait(30)
        deadline = time.monotonic() + 10
        while not proc._channel.closed and time.monotonic() < deadline:
            time.sleep(0.01)

    held = hold_hello_of_second_slot(monkeypatch, wait_for_shutdown)
    cluster = antnest.Cluster(hosts=one_host(fleet, 2), known_hosts=[fleet.known_hosts])
    try:
        assert held.wait(30)
    finally:
        stopping.set()
        bounded(cluster.shutdown, 20, "shutdown")
    assert problems() == []


# --- antnest.run -------------------------------------------------------------------------------


def test_one_shot_run_with_known_hosts(fleet: SshdFleet, fleet_inventory: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(REPO)
    out = io.StringIO()
    assert antnest.run("jobs/reverse.py", inventory=fleet_inventory,
                       known_hosts=[fleet.known_hosts], output=out) is None
    assert out.getvalue() == HELLO_WORLD

    capsys.readouterr()
    assert antnest.run("jobs/reverse.py", inventory=str(fleet_inventory),
                       known_hosts=[str(fleet.known_hosts)], procs=1) is None
    assert capsys.readouterr().out == HELLO_WORLD

    job = antnest.Job(processor=len, combine=sum, input_data=["ab", "cde", "f"])
    assert antnest.run(job, inventory=fleet_inventory, known_hosts=[fleet.known_hosts]) == 6


def test_one_shot_run_without_known_hosts_refuses_the_hosts(fleet_inventory: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            ) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(errors.NoHostsError) as raised:
        antnest.run("jobs/reverse.py", inventory=fleet_inventory)
    assert "not known" in str(raised.value)


def test_runners_busy_with_a_failed_map_are_freed_for_the_next_call(tmp_path: Path) -> None:
    """A map that fails fast stops the runners still running its other taskunits: their slow
    work never completes, and the next map runs on fresh runners."""
    marker_dir = tmp_path / "done"
    marker_dir.mkdir()

    def slow_or_failing(item: int) -> int:
        import pathlib
        import time as _time

        if item == 0:
            _time.sleep(0.5)
            raise ValueError("first one fails")
        _time.sleep(30)
        pathlib.Path(str(marker_dir), str(item)).write_text("finished")
        return item

    with antnest.Cluster(procs=3) as cluster:
        cluster.wait_for_hosts(30)
        with pytest.raises(ValueError, match="first one fails"):
            list(cluster.map(slow_or_failing, range(3)))
        assert sorted(cluster.map(abs, [-1, -2, -3])) == [1, 2, 3]
        lost = cluster.hosts[0].lost
    assert list(marker_dir.iterdir()) == []  # the 30 s taskunits were stopped, not waited for
    assert lost == 0  # stopped on purpose: not counted as lost runners
