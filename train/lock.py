"""One writer per directory: an OS file lock on ``DIR/.lock`` that the kernel releases when its process dies.

    with DirLock(run_dir):            # raises LockedError naming the PID that holds it
        ...                           # train, write files
    holder(run_dir)                   # the PID holding the lock, or None if it is free (does not take it)

``fcntl.flock`` on an open file: held until the file is closed or the process exits, however it
exits (kill -9 included), so a stale lock never needs cleaning up by hand. The holder writes its
PID into the file, so a second process can say who holds it. ``shared=True`` takes a shared lock
(several holders at once, none exclusive: the array tasks of one sweep beside each other).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from train.config import RunDirError

LOCK_FILE = ".lock"


class LockedError(RunDirError):
    """The directory is held by another live process (the message names its PID)."""

    def __init__(self, msg: str, pid: int | None):
        super().__init__(msg)
        self.pid = pid


def _read_pid(path: Path, wait: float = 1.0) -> int | None:
    """The PID in a held lock file. The holder writes it just after taking the lock, so a file still empty
    is read again for up to ``wait`` seconds (two processes started together meet in that moment)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            text = path.read_text().split()
            if text:
                return int(text[0])
        except (OSError, ValueError):
            return None
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


class DirLock:
    """An exclusive (or shared) flock on ``directory/.lock``, taken at construction; the directory is created."""

    def __init__(self, directory: str | os.PathLike, *, shared: bool = False, what: str = "run directory"):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # O_CLOEXEC: children don't hold it
        try:
            fcntl.flock(self._fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            pid = _read_pid(self.path)
            who = f"process {pid}" if pid is not None else "another process"
            raise LockedError(
                f"{what} {self.directory} is in use by {who} (it holds {self.path}): wait for it to finish or "
                f"stop it (kill {pid if pid is not None else 'PID'}); a killed process releases it by itself",
                pid,
            ) from None
        if not shared:  # the holder's PID, for the message above (a shared lock leaves the file as it is)
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> DirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder(directory: str | os.PathLike) -> int | None:
    """The PID that holds ``directory/.lock`` (None if it is free or absent); the lock is not kept."""
    path = Path(directory) / LOCK_FILE
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(path) or -1
    finally:
        os.close(fd)
    return None
