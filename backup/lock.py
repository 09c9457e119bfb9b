"""Provides the appliance-wide run lock: one backup or restore at a time, across processes.

The lock is an flock(2) on a file in the state directory. The kernel drops it
when its holder dies, however it dies, so a crashed run never leaves the
appliance locked; the holder's pid and task are written into the file so the
operator is told who holds it.

That record is written just after the flock and emptied just before the
release, so a refused taker can read it empty (or left by a process that died),
and once read a record whose pid a later process reuses. A refused taker
therefore checks the record against the kernel's own list of lock holders
(/proc/locks), tries again for a moment while the record does not name the
holder or names a brief start-up recovery, and if it still cannot say more,
names the holder's process from the kernel's list.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from backup.errors import LockHeldError, StateDirError
from backup.fsutil import ensure_private_dir

LOCK_FILE = "run.lock"
RECOVERY_TASK = "recovery"
"""The task of a start-up recovery: brief (it waits for no storage), so a run meeting it waits for it."""
PATIENCE = 3.0
"""Seconds a refused taker keeps trying while the lock's record does not name its holder, or names a recovery."""
RETRY_EVERY = 0.02
LOCKS_TABLE = Path("/proc/locks")


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
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder, pid = self._holder(fd)
                if (holder is not None and holder.task != RECOVERY_TASK) or time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockHeldError(_refusal(holder, pid)) from None
                time.sleep(RETRY_EVERY)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "task": self.task, "since": self.now.isoformat()}).encode(), 0)
        self._fd = fd

    def _holder(self, fd: int) -> tuple[LockHolder | None, int | None]:
        """(the record, if it is the holder's; the holder's pid as the kernel lists it, if it does)."""
        holder = read_holder(self.path)
        owners = flock_owners(fd)
        if not owners:  # no kernel list (not Linux), or one that does not show this holder: trust a live record
            return (holder if holder is not None and pid_alive(holder.pid) else None), None
        if holder is not None and holder.pid in owners:
            return holder, holder.pid
        return None, min(owners)

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


def _refusal(holder: LockHolder | None, pid: int | None) -> str:
    if holder is not None:
        who = f"a {holder.task} by process {holder.pid}, since {holder.since}"
    elif pid is not None:
        who = f"process {pid}, which has not yet said what it runs"
    else:
        who = "a process this system does not name"
    return f"Another backup or restore is running ({who}): wait for it to finish, then try again."


def flock_owners(fd: int) -> set[int] | None:
    """The pids holding an flock on the file open as `fd`, from the kernel's list; None when there is no list."""
    try:
        st = os.fstat(fd)
        table = LOCKS_TABLE.read_text()
    except OSError:
        return None
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    owners = set()
    for line in table.splitlines():
        # "7: FLOCK  ADVISORY  WRITE 27374 fe:00:2147402 0 EOF"; a waiter's line has "->" after the number.
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where:
            try:
                pid = int(fields[4])
            except ValueError:
                continue
            if pid > 0:  # a holder in a pid namespace this process cannot see is listed as 0 or -1
                owners.add(pid)
    return owners


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
