"""One backup or restore at a time, across processes; a dead holder never blocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from backup.errors import ExitCode, LockHeldError
from backup.lock import RunLock, is_locked
from backup.service import BackupService
from tests.common import BIN, run_cli

HOLD = """
import sys, time
from datetime import datetime, timezone
from pathlib import Path
from backup.lock import RunLock
with RunLock(Path(sys.argv[1]), "backup", now=datetime.now(timezone.utc)):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(state_dir, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(state_dir), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_process_is_refused_while_the_first_holds_the_lock(service: BackupService) -> None:
    holder = _holder(service.state_dir, 30)
    try:
        assert is_locked(service.state_dir)
        for args in (("run",), ("restore", "x.abk", "--yes")):
            r = run_cli(*args, config=service.config)
            assert r.returncode == ExitCode.LOCKED, r.stderr
            assert f"process {holder.pid}" in r.stderr and "wait for it to finish" in r.stderr
        status = json.loads(run_cli("status", "--json", config=service.config).stdout)
        assert status["status"] == "In Progress" and status["task"] == "backup"
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the lock of the killed holder: the next run goes ahead.
    assert not is_locked(service.state_dir)
    assert run_cli("run", config=service.config).returncode == 0


def test_two_backups_started_together_one_wins(service: BackupService) -> None:
    with open(service.config.appliance.firmware / "large.bin", "wb") as f:
        f.write(os.urandom(64 << 20))
    argv = [str(BIN), "--config", str(service.config.path), "run"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = sorted(p.wait(timeout=120) for p in procs)
    assert codes == [0, ExitCode.LOCKED]
    assert len([p for p in service.config.storage.path.iterdir() if p.name.endswith(".abk")]) == 1


def test_lock_in_the_same_process_is_exclusive_too(service: BackupService) -> None:
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    with RunLock(service.state_dir, "backup", now=now):
        with pytest.raises(LockHeldError):
            RunLock(service.state_dir, "restore", now=now).acquire()
    RunLock(service.state_dir, "restore", now=now).acquire()


def test_a_stale_holder_record_does_not_count(service: BackupService) -> None:
    (service.state_dir / "run.lock").write_text(json.dumps({"pid": 999999999, "task": "backup", "since": "x"}))
    assert not is_locked(service.state_dir)
    assert service.status().state == "Not Running"
    service.run_backup()
