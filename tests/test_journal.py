"""Journal: records survive a kill, a torn last line is tolerated, changed jobs are refused."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, List

import pytest

from antnest.errors import LockedError, UsageError
from antnest.journal import Journal, JournalFeed, data_digest, input_id


def open_journal(path: Path, resume: bool = True, job: str = "job1", inp: str = "in1") -> Journal:
    return Journal.open(path, job, inp, resume)


def test_record_and_resume_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with open_journal(path, resume=False) as journal:
        assert journal.done == {}
        journal.record(0, "a", {"len": 1})
        journal.record_many(1, ["bb", "ccc"], [2, (3, None)])
        journal.record_items([(7, b"x", [7])])
    lines = path.read_text().splitlines()
    assert lines[0].startswith("{") and '"job": "job1"' in lines[0]
    assert lines[1].split("\t")[:2] == ["0", data_digest("a")]
    assert len(lines) == 5
    with open_journal(path) as again:
        assert again.done == {0: (data_digest("a"), {"len": 1}), 1: (data_digest("bb"), 2),
                              2: (data_digest("ccc"), (3, None)), 7: (data_digest(b"x"), [7])}
        again.record(3, "d", 4)
    with open_journal(path) as third:
        assert sorted(third.done) == [0, 1, 2, 3, 7]


def test_digest_is_short_and_stable() -> None:
    assert data_digest(("x", 1)) == data_digest(("x", 1))
    assert data_digest("x") != data_digest("y")
    assert len(data_digest("x")) == 16 and int(data_digest("x"), 16) >= 0


def test_torn_last_line_is_ignored_and_truncated(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with open_journal(path, resume=False) as journal:
        journal.record_many(0, ["a", "b"], ["A", "B"])
    whole = path.read_bytes()
    with open(path, "ab") as handle:          # killed mid-write: no newline
        handle.write(b"2\tdeadbeefdeadbeef\tgASVBQAAAAAAAACMA")
    with open_journal(path) as journal:
        assert sorted(journal.done) == [0, 1]
        assert path.read_bytes() == whole     # the torn tail is gone before appending
        journal.record(2, "c", "C")
    with open_journal(path) as journal:
        assert {k: v[1] for k, v in journal.done.items()} == {0: "A", 1: "B", 2: "C"}


def test_torn_header_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "j"
    path.write_bytes(b'{"antnest_jour')
    with open_journal(path) as journal:
        assert journal.done == {}
        journal.record(0, "a", "A")
    with open_journal(path) as journal:
        assert list(journal.done) == [0]


def test_missing_or_empty_journal_with_resume_starts_one(tmp_path: Path) -> None:
    with open_journal(tmp_path / "new") as journal:
        assert journal.done == {}
    assert (tmp_path / "new").read_text().startswith('{"antnest_journal": 2')


@pytest.mark.parametrize("job, inp", [("job2", "in1"), ("job1", "in2")])
def test_changed_job_or_input_is_refused(tmp_path: Path, job: str, inp: str) -> None:
    path = tmp_path / "j"
    with open_journal(path, resume=False) as journal:
        journal.record(0, "a", "A")
    before = path.read_bytes()
    with pytest.raises(UsageError) as info:
        open_journal(path, job=job, inp=inp)
    message = str(info.value)
    assert str(path) in message
    assert "the job file or input changed since the journal was written" in message
    assert "delete it or run without --resume" in message
    assert path.read_bytes() == before        # refusing leaves the journal alone


def test_without_resume_an_old_journal_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with open_journal(path, resume=False) as journal:
        journal.record(0, "a", "A")
    with open_journal(path, resume=False, job="other") as journal:
        assert journal.done == {}
    with open_journal(path, job="other") as journal:
        assert journal.done == {}


def test_check_refuses_changed_data(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with open_journal(path, resume=False) as journal:
        journal.record(0, "a", "A")
    with open_journal(path) as journal:
        journal.check(0, "a")
        journal.check(5, "anything")          # not journaled: nothing to compare
        with pytest.raises(UsageError, match="taskunit 0 is not the one journaled"):
            journal.check(0, "b")


def test_damaged_middle_line_and_foreign_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with open_journal(path, resume=False) as journal:
        journal.record(0, "a", "A")
    with open(path, "ab") as handle:
        handle.write(b"garbage\n")
    with pytest.raises(UsageError, match="line 3 is damaged"):
        open_journal(path)
    other = tmp_path / "notes.txt"
    other.write_text("hello\nworld\n")
    with pytest.raises(UsageError, match="not an antnest journal"):
        open_journal(other)


def test_unpicklable_result_is_skipped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with open_journal(path, resume=False) as journal:
        journal.record_many(0, ["a", "b"], [lambda: 1, "B"])
        assert journal.unpicklable == 1 and journal.recorded == 1
    with open_journal(path) as journal:
        assert list(journal.done) == [1]


def test_record_is_thread_safe(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = open_journal(path, resume=False)

    def writer(base: int) -> None:
        for i in range(200):
            journal.record(base + i, i, "x" * 300)

    threads = [threading.Thread(target=writer, args=(n * 1000,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    journal.close()
    with open_journal(path) as again:
        assert len(again.done) == 1600


def test_second_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with open_journal(path, resume=False):
        with pytest.raises(LockedError):
            open_journal(path)


def test_remove(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = open_journal(path, resume=False)
    journal.remove()
    assert not path.exists()


def test_input_id(tmp_path: Path) -> None:
    data = tmp_path / "in.txt"
    data.write_text("a\nb\n")
    first = input_id(str(data))
    assert first.startswith("sha256:") and input_id(data) == first
    data.write_text("a\nc\n")
    assert input_id(str(data)) != first
    assert input_id(None) == "input_data" and input_id("-") == "stdin"
    with pytest.raises(UsageError):
        input_id(str(tmp_path / "missing"))


# -- JournalFeed: what Cluster.run does with it, without a cluster ------------------------------

def run_feed(journal: Journal, items: List[Any], accept_order: List[int]) -> List[Any]:
    """Play a call: take every pending item, accept results in `accept_order` (call seqs)."""
    feed = JournalFeed(journal, items)
    pending = list(feed.pending())
    for call_seq in accept_order:
        feed.accepted(call_seq, [pending[call_seq].upper()])
    return list(feed.results(p.upper() for p in pending))


def test_feed_runs_only_the_rest_and_merges_in_order(tmp_path: Path) -> None:
    path = tmp_path / "j"
    items = list("abcdefgh")
    with open_journal(path, resume=False) as journal:
        journal.record_items([(0, "a", "A"), (2, "c", "C"), (3, "d", "D"), (7, "h", "H")])
    with open_journal(path) as journal:
        feed = JournalFeed(journal, items)
        pending = list(feed.pending())
        assert pending == ["b", "e", "f", "g"] and feed.total == 8 and feed.skipped == 4
        feed.accepted(2, ["F"])               # out of order, like a real call
        feed.accepted(0, ["B"])
        assert feed.failed(1) == 4            # "e" failed: its taskunit id is 4
        feed.accepted(3, ["G"])
        merged = list(feed.results(["B", "<failure>", "F", "G"]))
        assert merged == ["A", "B", "C", "D", "<failure>", "F", "G", "H"]
    with open_journal(path) as journal:
        assert {k: v[1] for k, v in journal.done.items()} == {
            0: "A", 1: "B", 2: "C", 3: "D", 5: "F", 6: "G", 7: "H"}


def test_feed_everything_journaled_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with open_journal(path, resume=False) as journal:
        assert run_feed(journal, list("abc"), [2, 0, 1]) == ["A", "B", "C"]
    with open_journal(path) as journal:
        feed = JournalFeed(journal, list("abc"))
        assert list(feed.pending()) == []
        assert list(feed.results([])) == ["A", "B", "C"]


def test_feed_refuses_changed_or_shorter_input(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with open_journal(path, resume=False) as journal:
        run_feed(journal, list("abcd"), [0, 1, 2, 3])
    with open_journal(path) as journal:
        with pytest.raises(UsageError, match="taskunit 1 is not the one journaled"):
            list(JournalFeed(journal, list("aXcd")).pending())
    with open_journal(path) as journal:
        with pytest.raises(UsageError, match="holds taskunit 3 but the input now has only 3"):
            list(JournalFeed(journal, list("abc")).pending())


def test_write_error_stops_journaling_without_failing_the_run(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = open_journal(path, resume=False)
    journal.record(0, "a", "A")

    class Full:
        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    real = journal._handle
    journal._handle = Full()  # type: ignore[assignment]
    journal.record(1, "b", "B")                    # logged, not raised
    assert journal.error is not None and journal.recorded == 1
    journal._handle = real
    journal.record(2, "c", "C")                    # stays stopped: no record after a gap
    journal.close()
    with open_journal(path) as again:
        assert list(again.done) == [0]
