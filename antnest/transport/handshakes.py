"""How many SSH handshakes may be under way at once: adaptive, like TCP's congestion window.

sshd starts dropping unauthenticated connections at random once ``MaxStartups`` (10:30:100 by
default) are pending, and many inventory names often point at one daemon (a bastion, a load
balancer, a NAT). A fixed number is either too many for such a daemon or too few for a large
fleet of separate machines. So the window starts below sshd's default, grows by one with every
handshake that succeeds, halves when a handshake is dropped (reset or EOF before the greeting),
and never exceeds ``cap`` (``--forks``).

Time spent waiting here is not the host's: callers measure their connect deadline from
``acquire()``'s return, so a host queued behind 200 others still gets its whole timeout.
"""
from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Optional, Type

__all__ = ["HandshakeWindow", "handshakes"]

START = 8       # below MaxStartups' 10, at which a default sshd begins dropping
CEILING = 64    # without --forks: beyond this the master's one core is the limit anyway


class HandshakeWindow:
    """A counting gate whose size follows the handshakes' outcomes (additive increase,
    multiplicative decrease)."""

    def __init__(self, start: int = START, cap: int = CEILING) -> None:
        self._cond = threading.Condition()
        self._cap = max(1, cap)
        self._size = float(min(start, self._cap))
        self._busy = 0

    @property
    def size(self) -> int:
        return int(self._size)

    @property
    def cap(self) -> int:
        return self._cap

    def set_cap(self, cap: Optional[int]) -> None:
        """``--forks N``: at most N at once (None: the built-in ceiling)."""
        with self._cond:
            self._cap = max(1, cap if cap is not None else CEILING)
            self._size = min(self._size, float(self._cap))
            if cap is not None and cap < START:
                self._size = float(self._cap)
            self._cond.notify_all()

    def acquire(self, timeout: Optional[float] = None) -> float:
        """Wait for a slot; returns the seconds spent waiting. ``timeout`` bounds the wait
        (TimeoutError past it): a slot always frees, since every holder's handshake is bounded."""
        began = time.monotonic()
        deadline = None if timeout is None else began + timeout
        with self._cond:
            while self._busy >= int(self._size):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("no handshake slot became free")
                self._cond.wait(left)
            self._busy += 1
        return time.monotonic() - began

    def release(self, outcome: str) -> None:
        """``outcome``: "ok" (grow), "dropped" (halve), anything else (no change)."""
        with self._cond:
            self._busy -= 1
            if outcome == "ok":
                self._size = min(float(self._cap), self._size + 1.0)
            elif outcome == "dropped":
                self._size = max(1.0, self._size / 2.0)
            self._cond.notify_all()

    def slot(self) -> "_Slot":
        return _Slot(self)


class _Slot:
    """``with handshakes.slot() as s: ...; s.outcome = "ok"`` (default "dropped" on an error
    the caller marks, else neutral)."""

    def __init__(self, window: HandshakeWindow) -> None:
        self._window = window
        self.outcome = "neutral"
        self.waited = 0.0

    def __enter__(self) -> "_Slot":
        self.waited = self._window.acquire()
        return self

    def __exit__(self, kind: Optional[Type[BaseException]], value: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self._window.release(self.outcome)


handshakes = HandshakeWindow()
"""The process's one window: every host of every cluster shares the machine's sshd targets."""
