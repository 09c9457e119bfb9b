"""Start-up recovery holds the run lock only briefly; a refusal always names the holder (issue 14, item 6)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pytest

from backup.errors import LockHeldError
from backup.lock import LOCK_FILE, RunLock
from backup.service import BackupService
from backup.storage.local import LocalStorage

NOW = datetime.now(timezone.utc)

# Holds the run lock by flock alone, with whatever record the file has: the moment between a
# holder's flock and its record write, stretched. Releases it (by exiting) on a line on stdin.
FLOCK_ONLY = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""

# Holds the run lock as `recover()` does (a "recovery" record) until a line on stdin.
RECOVERY = """
import sys
from datetime import datetime, timezone
from pathlib import Path
from backup.lock import RunLock
with RunLock(Path(sys.argv[1]).parent, "recovery", now=datetime.now(timezone.utc)):
    print("held", flush=True)
    sys.stdin.readline()
"""


def _hold(script: str, lock_path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script, str(lock_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _let_go(proc: subprocess.Popen) -> None:
    proc.stdin.write("go\n")
    proc.stdin.flush()
    proc.wait(timeout=30)


@pytest.mark.parametrize("record", ["", json.dumps({"pid": 1, "task": "backup", "since": "2020-01-01"})],
                         ids=["no-record-yet", "record-of-another-process"])
def test_a_refusal_names_the_process_that_holds_the_lock(service: BackupService, record: str):
    # "" is the lock file as a holder leaves it between its flock and its record write (or as its release
    # leaves it); the other is a record that does not belong to the holder (pid 1 is alive: a reused pid).
    path = service.state_dir / LOCK_FILE
    path.write_text(record)
    holder = _hold(FLOCK_ONLY, path)
    try:
        with pytest.raises(LockHeldError) as refused:
            RunLock(service.state_dir, "backup", now=NOW).acquire()
        assert f"process {holder.pid}" in refused.value.message, refused.value.message
        assert "process 1 " not in refused.value.message and "process 1," not in refused.value.message
    finally:
        _let_go(holder)


@pytest.mark.parametrize("script", [FLOCK_ONLY, RECOVERY], ids=["released-before-its-record", "brief-recovery"])
def test_a_run_started_while_the_lock_is_being_released_or_briefly_recovered_gets_it(service: BackupService,
                                                                                     script: str):
    holder = _hold(script, service.state_dir / LOCK_FILE)
    outcome: list[object] = []

    def take() -> None:
        try:
            RunLock(service.state_dir, "backup", now=NOW).acquire()
            outcome.append("acquired")
        except LockHeldError as exc:
            outcome.append(exc.message)

    taker = threading.Thread(target=take)
    taker.start()
    time.sleep(0.1)  # the taker meets the held lock first (an ordering, not a timed assertion)
    _let_go(holder)
    taker.join(timeout=30)
    assert outcome == ["acquired"]


class _WatchedStorage(LocalStorage):
    """A real local storage that notes, each time it is listed or written, whether the run lock is free.

    Stands in for an NFS share that stops answering: what matters is what is held while it is called."""

    def __init__(self, root, lock_path) -> None:
        super().__init__(root)
        self.lock_path = lock_path
        self.lock_free: list[bool] = []

    def _note(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            self.lock_free.append(True)
        except BlockingIOError:
            self.lock_free.append(False)
        finally:
            os.close(fd)

    def list(self, *args, **kwargs):
        self._note()
        return super().list(*args, **kwargs)

    def delete(self, name):
        self._note()
        return super().delete(name)


def test_start_up_recovery_does_not_hold_the_lock_while_it_waits_for_the_storage(service: BackupService):
    # A backup that failed (the share was gone) left its partial file: recovery removes it once the
    # storage answers, and must not hold the run lock meanwhile (a stalled share held it 10.7 s).
    run = service.journal.start("backup", now=NOW, name="demo-appliance-20260101T000000Z-abcdef.abk")
    service.journal.end(run, "failed", now=NOW, name="demo-appliance-20260101T000000Z-abcdef.abk", error="x")
    partial = service.config.storage.path / "demo-appliance-20260101T000000Z-abcdef.abk.partial"
    partial.write_bytes(b"half a backup")
    storage = _WatchedStorage(service.config.storage.path, service.state_dir / LOCK_FILE)
    console = BackupService(service.config, storage=storage)
    console.recover()
    assert not partial.exists()
    assert storage.lock_free and all(storage.lock_free), storage.lock_free
