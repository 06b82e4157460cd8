"""TaskUnit: the original antnest job form's unit of work, kept so old job files run unchanged.

Old jobs do `import taskunit` inside split() and yield `taskunit.TaskUnit(data=..., processor=...)`;
job.py makes that import resolve to this module. combine(self) then reads `self.taskunits`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

STATES = ("DEFINED", "PENDING", "RUNNING", "FAILED", "BAILED", "REFUSED", "COMPLETED")


class TaskUnit:
    """One piece of work: `data` in, `result` out; `id` is its position in split order."""

    STATES = STATES

    def __init__(
        self,
        data: Any = None,
        processor: Optional[Callable] = None,
        retries: int = 0,
        state: str = "DEFINED",
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        if state not in STATES:
            raise ValueError(f"unknown TaskUnit state {state!r}; one of {', '.join(STATES)}")
        self.id: Optional[int] = None
        self.data = data
        self.processor = processor
        self.retries = retries
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.state = state
        self.attempts = 0
        self.host: Optional[str] = None

    def setstate(self, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"unknown TaskUnit state {state!r}; one of {', '.join(STATES)}")
        self.state = state

    def __repr__(self) -> str:
        return f"TaskUnit(id={self.id!r}, state={self.state!r}, data={self.data!r})"
