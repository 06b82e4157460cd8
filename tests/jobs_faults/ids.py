"""Fault-test job: taskunit i returns i, and the test picks a fault for a few ids.

The master reads the settings from its environment when it loads this file; the values travel
to the hosts inside the pickled processor (the hosts' sshd passes no environment). Markers go
to FAULT_MARKERS, a directory the test made: the fleet hosts are this machine, so the test can
read what each attempt left there. Every attempt of a marked id appends one line
"<pid> <start> <HOME> <time>" to <kind>-<id>.log: pid and start time (from /proc, so a reused
pid is not mistaken for the runner) say which runner ran it, HOME tells the fleet hosts apart.

    FAULT_N          taskunits 0..N-1 (default 2000)
    FAULT_SLEEP      seconds each taskunit takes (default 0.002)
    FAULT_POISON     ids whose processor kills its runner (os._exit)
    FAULT_HANG       ids whose processor never returns
    FAULT_FAIL       ids whose processor always raises ValueError
    FAULT_FAIL_ONCE  ids whose processor raises on the first attempt only
    FAULT_SLOW_ONCE  ids that sleep FAULT_SLOW_SECONDS on their first attempt only
    FAULT_TOUCH      ids that only leave a marker when they start (the test waits for them)
"""
import os
import time


def _ids(name):
    return frozenset(int(x) for x in os.environ.get(name, "").split(",") if x.strip())


N = int(os.environ.get("FAULT_N", "2000"))
SLEEP = float(os.environ.get("FAULT_SLEEP", "0.002"))
MARKERS = os.environ.get("FAULT_MARKERS", "")
POISON = _ids("FAULT_POISON")
HANG = _ids("FAULT_HANG")
FAIL = _ids("FAULT_FAIL")
FAIL_ONCE = _ids("FAULT_FAIL_ONCE")
SLOW_ONCE = _ids("FAULT_SLOW_ONCE")
SLOW_SECONDS = float(os.environ.get("FAULT_SLOW_SECONDS", "4"))
TOUCH = _ids("FAULT_TOUCH")

input_data = range(N)


def _start_time():
    with open("/proc/self/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[19]


def _note(kind, i, extra=""):
    """Append this attempt to <kind>-<i>.log; True when it is the first attempt."""
    first = False
    try:
        os.close(os.open(os.path.join(MARKERS, "%s-%d.first" % (kind, i)),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        first = True
    except FileExistsError:
        pass
    line = "%d %s %s %.6f %s\n" % (os.getpid(), _start_time(), os.environ.get("HOME", "?"),
                                    time.time(), extra)
    with open(os.path.join(MARKERS, "%s-%d.log" % (kind, i)), "a") as log:
        log.write(line)
    return first


def processor(i):
    if i in TOUCH:
        _note("touch", i)
    if i in POISON:
        _note("poison", i)
        os._exit(13)
    if i in HANG:
        _note("hang", i)
        while True:
            time.sleep(1)
    if i in FAIL:
        raise ValueError("taskunit %d fails on purpose" % i)
    if i in FAIL_ONCE and _note("fail_once", i):
        raise RuntimeError("taskunit %d fails on its first attempt" % i)
    if i in SLOW_ONCE and _note("slow", i):
        time.sleep(SLOW_SECONDS)
        _note("slow", i, "done")
    time.sleep(SLEEP)
    return i


def combine(results):
    for value in results:
        print(value)
