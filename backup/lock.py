"""Provides the appliance-wide run lock: one backup or restore at a time, across processes.

The lock is an flock(2) on a file in the state directory. The kernel drops it
when its holder dies, however it dies, so a crashed run never leaves the
appliance locked; the holder's pid and task are written into the file so the
operator is told who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from backup.errors import LockHeldError, StateDirError
from backup.fsutil import ensure_private_dir

LOCK_FILE = "run.lock"


@dataclass(frozen=True)
class LockHolder:
    pid: int
    task: str
    since: str


class RunLock:
    """Exclusive, non-blocking lock. Use as a context manager."""

    def __init__(self, state_dir: Path, task: str, *, now: datetime) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self.task = task
        self.now = now
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            ensure_private_dir(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateDirError(
                f"The run lock {self.path} cannot be opened ({exc.strerror or exc}): make the state directory "
                f"{self.path.parent} and everything in it writable by the user that runs backups (mode 0700), "
                "then try again."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(self.path)
            who = f" (a {holder.task} by process {holder.pid}, since {holder.since})" if holder else ""
            raise LockHeldError(
                f"Another backup or restore is running{who}: wait for it to finish, then try again."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "task": self.task, "since": self.now.isoformat()}).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(state_dir: Path) -> bool:
    """Whether a live process holds the run lock right now.

    Read from the holder record rather than by trying the lock, so that asking
    never makes a starting run fail. A record left by a dead process does not count.
    """
    holder = read_holder(Path(state_dir) / LOCK_FILE)
    return holder is not None and pid_alive(holder.pid)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; or no process number at all (a hand-edited record)
        return False
    except PermissionError:
        return True
    return True


def read_holder(path: Path) -> LockHolder | None:
    try:
        data = json.loads(Path(path).read_text())
        return LockHolder(pid=int(data["pid"]), task=str(data["task"]), since=str(data["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
