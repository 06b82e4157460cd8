"""Typed errors, each carrying the data a person needs to act on it.

    AntnestError
    ├── UsageError                 bad input: exit 2
    │   ├── JobFileError           a job file that cannot be loaded (path, problem)
    │   └── InventoryError         an inventory or host list that cannot be used (path, key)
    ├── HostError                  a host could not be used at all (host)
    │   ├── ConnectError           DNS failure, refused, timeout, unreachable
    │   ├── AuthError              no offered key was accepted (user, keys)
    │   ├── HostKeyError           host key unknown or changed (fingerprint, known_hosts)
    │   └── BootstrapError         no interpreter, interpreter too old, runner failed to start
    ├── NoHostsError               no host could be used: exit 3
    ├── RunnerLost                 a runner vanished mid-task (host, how)
    ├── TaskError                  a taskunit failed for good: exit 1
    │   ├── RemoteError            ... raising an exception that could not be rebuilt here
    │   ├── TaskTimeout            ... running longer than the task timeout
    │   ├── TaskLost               ... killing the runners that ran it
    │   ├── UnpicklableData        ... its data not pickling here (also a pickle.PicklingError)
    │   └── UndecodableData        ... its data (on the host) or result (here) not unpickling
    │                                  (also a pickle.UnpicklingError)
    ├── JobFailed                  a job ended with failed taskunits (--keep-going summary)
    ├── JobCodeError               the job's split() or combine() raised, here on the master
    ├── JobTimeout                 the whole job ran out of time: exit 4
    ├── ForkedCluster              a Cluster used in a child of os.fork() (also BrokenExecutor)
    └── LockedError                another run holds the lock: exit 75

"Could not connect or boot" (HostError) is kept apart from "lost mid-task" (RunnerLost) and
"the task itself raised" (TaskError): the first two are the cluster's problem and are retried on
other workers, the last one is the job's and is reported with the remote traceback.
"""
from __future__ import annotations

import pickle
from concurrent.futures import BrokenExecutor
from typing import Any, Optional, Sequence

from antnest.host import HostStatus


class AntnestError(Exception):
    """Base of every error antnest raises on purpose."""


class UsageError(AntnestError):
    """Bad input from the user: arguments, job file, inventory."""


class JobFileError(UsageError):
    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"job file {path}: {problem}")


class InventoryError(UsageError):
    def __init__(self, path: str, problem: str, key: Optional[str] = None) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = f"{path}: {key}" if key else path
        super().__init__(f"inventory {where}: {problem}")


class HostError(AntnestError):
    """A host could not be used; `status` (a `HostStatus`) is a short word for tables."""

    status = HostStatus.ERROR

    def __init__(self, host: str, problem: str, status: Optional[str] = None) -> None:
        self.host = host
        self.problem = problem
        if status:
            self.status = status
        super().__init__(f"{host}: {problem}")


class ConnectError(HostError):
    status = HostStatus.UNREACHABLE


class AuthError(HostError):
    status = HostStatus.AUTH_FAILED


class HostKeyError(HostError):
    status = HostStatus.HOST_KEY_UNKNOWN


class BootstrapError(HostError):
    status = HostStatus.BOOTSTRAP_FAILED


class NoHostsError(AntnestError):
    """Every host failed; `errors` holds one HostError (or RunnerLost) per host."""

    def __init__(self, errors: Sequence[Exception], detail: str = "") -> None:
        self.errors = list(errors)
        lines = [f"no host could be used{': ' + detail if detail else ''}"]
        lines += [f"  {e}" for e in self.errors]
        super().__init__("\n".join(lines))


class RunnerLost(AntnestError):
    def __init__(self, host: str, how: str) -> None:
        self.host = host
        self.how = how
        super().__init__(f"{host}: runner lost ({how})")


def format_seconds(seconds: float) -> str:
    """Every duration antnest prints, one way: "2 s", "2.04 s", "12.3 s", "1500 s".

    At most two decimals below 10 s, one below 100 s, none above; trailing zeros dropped, so a
    limit given as 2 prints as "2 s" and a measured 2.0001 s as "2 s" too.
    """
    digits = 2 if seconds < 10 else 1 if seconds < 100 else 0
    text = f"{seconds:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} s"


def _shorten(value: Any, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # a user object whose __repr__ raises
        text = f"<unprintable {type(value).__name__}: {exc!r}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TaskError(AntnestError):
    """A taskunit failed for good. `remote_traceback` is the text from the host;
    `exception` the remote exception rebuilt here, when it could be."""

    exception: Optional[BaseException] = None

    def __init__(
        self,
        taskunit_id: int,
        host: str,
        problem: str,
        data: Any = None,
        remote_traceback: str = "",
        attempts: int = 1,
    ) -> None:
        self.taskunit_id = taskunit_id
        self.host = host
        self.problem = problem
        self.data = data
        self.remote_traceback = remote_traceback
        self.attempts = attempts
        super().__init__(taskunit_id, host, problem)

    def __str__(self) -> str:
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        text = (
            f"taskunit {self.taskunit_id} (data {_shorten(self.data)}) failed on "
            f"{self.host}{tries}: {self.problem}"
        )
        if self.remote_traceback:
            text += "\n" + self.remote_traceback.rstrip()
        return text


class RemoteError(TaskError):
    """The remote exception could not be rebuilt here; its type name and text are kept."""

    def __init__(self, *args: Any, type_name: str = "Exception", **kwargs: Any) -> None:
        self.type_name = type_name
        super().__init__(*args, **kwargs)


class TaskTimeout(TaskError):
    pass


class TaskLost(TaskError):
    pass


class UnpicklableData(TaskError, pickle.PicklingError):
    """A taskunit's arguments cannot be pickled on the master: the PicklingError
    concurrent.futures gives, naming the taskunit; the pickler's own error is __cause__."""


class UndecodableData(TaskError, pickle.UnpicklingError):
    """A taskunit's data did not unpickle on its host, or its result did not unpickle here
    (even by raising SystemExit): that taskunit fails, the cluster goes on."""


class JobFailed(AntnestError):
    """Raised at the end of a --keep-going run: `failures` holds every TaskError."""

    def __init__(self, failures: Sequence[TaskError], total: Optional[int] = None) -> None:
        self.failures = list(failures)
        of = f" of {total}" if total is not None else ""
        lines = [f"{len(self.failures)}{of} taskunits failed:"]
        lines += [f"  {str(f).splitlines()[0]}" for f in self.failures]
        super().__init__("\n".join(lines))


class JobCodeError(AntnestError):
    """split() or combine() raised: the job's own bug, shown with its traceback."""

    def __init__(self, job: str, where: str, error: BaseException) -> None:
        import traceback

        self.job = job
        self.where = where
        self.error = error
        frames = traceback.extract_tb(error.__traceback__)
        # keep the job's own frames: antnest's are noise to the person fixing the job
        own = [f for f in frames if "/antnest/" not in f.filename.replace("\\", "/")] or frames
        self.traceback = "".join(traceback.format_list(own)) + "".join(
            traceback.format_exception_only(type(error), error))
        super().__init__(f"{job}: {where} raised {type(error).__name__}: {error}\n"
                         f"{self.traceback.rstrip()}")


class JobTimeout(AntnestError):
    """--timeout: `detail` is the scheduler's one count of done / failed / running / not
    started (the report and the log say the same numbers)."""

    def __init__(self, seconds: float, done: int, pending: int, detail: Optional[str] = None) -> None:
        self.seconds = seconds
        self.done = done
        self.pending = pending
        super().__init__(
            f"job timed out after {format_seconds(seconds)}: "
            + (detail or f"{done} taskunits done, {pending} not done")
        )


class ForkedCluster(AntnestError, BrokenExecutor):
    """The runners, threads and pipes of a Cluster belong to the process that made it."""

    def __init__(self, parent: int, child: int) -> None:
        self.parent = parent
        self.child = child
        super().__init__(f"this Cluster belongs to process {parent}; process {child}, forked "
                         "from it, cannot use it: create a new Cluster in the child")


class LockedError(AntnestError):
    def __init__(self, path: str, holder: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"lock {path} is held by {holder}; not starting a second run")
