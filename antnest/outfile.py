"""`-o FILE`: combine()'s output goes to a temporary file next to FILE and replaces FILE only
once combine() has finished, so a run that fails, times out or is interrupted leaves
yesterday's output whole instead of truncated.

A target that exists and is not a regular file (/dev/stdout, a FIFO, a terminal) is written
in place: there is nothing to replace atomically.
"""
from __future__ import annotations

import logging
import os
import stat
import tempfile
from typing import IO, Optional

from antnest.errors import UsageError

log = logging.getLogger(__name__)


class OutputFile:
    """Open with OutputFile(path); write to `.handle`; commit() on success, discard() else."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._temp: Optional[str] = None
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            mode = None
        except OSError as exc:
            raise UsageError(f"output {path}: {exc.strerror or exc}") from None
        try:
            if mode is not None and not stat.S_ISREG(mode):
                self.handle: IO[str] = open(path, "w", encoding="utf-8",
                                           errors="surrogateescape")
                return
            directory = os.path.dirname(os.path.abspath(path))
            fd, self._temp = tempfile.mkstemp(dir=directory,
                                              prefix=f".{os.path.basename(path)}.", suffix=".part")
        except OSError as exc:
            raise UsageError(f"output {path}: {exc.strerror or exc}") from None
        # mkstemp makes 0600; the output gets the old file's mode, or what open() would give.
        if mode is not None:
            os.chmod(self._temp, stat.S_IMODE(mode))
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self._temp, 0o666 & ~umask)
        # surrogateescape: bytes an --input line could not decode are written back as they were
        self.handle = os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape")

    def commit(self) -> None:
        """combine() finished: put the new output in place of the old."""
        self.handle.close()
        if self._temp is not None:
            os.replace(self._temp, self.path)
            self._temp = None

    def discard(self) -> None:
        """The run failed before combine() finished: the old file stays as it was."""
        if self.handle.closed and self._temp is None:
            return
        self.handle.close()
        if self._temp is not None:
            try:
                os.unlink(self._temp)
            except FileNotFoundError:
                pass
            self._temp = None
            log.warning("output %s left as it was: the run did not finish combine()", self.path)
