"""Square each input line, leaving traces the cron tests can count (see tests/test_cron.py).

The local transport runs the processor on this machine, with the run's environment:
    ANTNEST_TEST_COUNTER=FILE  append the line to FILE per call (to count processor calls)
    ANTNEST_TEST_SLEEP=SECONDS sleep this long per call (a slow job to lock, kill or time out)
    ANTNEST_TEST_FAIL=LINE     raise ValueError for that line (a taskunit failure)
    ANTNEST_TEST_NOTE=1        print a note to stderr per call (remote output in the log file)
"""
import os
import sys
import time


def processor(line):
    counter = os.environ.get("ANTNEST_TEST_COUNTER")
    if counter:
        fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{line}\n".encode())  # one small O_APPEND write: never interleaved
        finally:
            os.close(fd)
    if os.environ.get("ANTNEST_TEST_NOTE"):
        print(f"note {line}", file=sys.stderr)
    time.sleep(float(os.environ.get("ANTNEST_TEST_SLEEP") or 0))
    if line == os.environ.get("ANTNEST_TEST_FAIL"):
        raise ValueError(f"bad line {line}")
    return str(int(line) ** 2)


input_data = "\n".join(str(i) for i in range(10))
