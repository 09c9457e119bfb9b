"""SIGKILL at many points of a real backup and a real restore (DESIGN.md section 6).

Each run is the real `appliance-backup` command in a subprocess, killed after a
delay: two kills during its start-up, the others spread evenly over the time
from its journal entry to its end, measured on one full run first.
After each kill:

- backup: every file under a final `.abk` name verifies (no incomplete backup is
  ever visible), `list` shows only those, the next command start (`status`)
  removes the `.partial` and journals the run as interrupted, and the next
  backup succeeds;
- restore: the next start (`status`) recovers, and the appliance is either fully
  its old state or fully the backup's (firmware, system and database rows),
  never a mix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from backup.config import Config
from backup.journal import RunJournal
from backup.service import BackupService
from tests.common import BIN, run_cli
from tests.helpers import appliance_state, mutate_appliance

pytestmark = pytest.mark.slow

BIG_FILE_MIB = 96
"""Incompressible data added to the demo appliance so a run lasts long enough to be cut anywhere."""
BACKUP_KILLS = 20
RESTORE_KILLS = 20


def _grow(config: Config) -> None:
    with open(config.appliance.firmware / "large.bin", "wb") as f:
        for _ in range(BIG_FILE_MIB // 8):
            f.write(os.urandom(8 << 20))


def _start(config: Config, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN), "--config", str(config.path), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "APPLIANCE_BACKUP_DEBUG": ""})


def _journal_size(config: Config) -> int:
    try:
        return (config.state_dir / "journal.jsonl").stat().st_size
    except FileNotFoundError:
        return 0


def _wait_for_journal(config: Config, proc: subprocess.Popen, size: int, timeout: float = 30) -> float:
    """Wait until the command journalled its run (the journal grew); the time that took."""
    started = time.monotonic()
    while _journal_size(config) == size and proc.poll() is None:
        assert time.monotonic() - started < timeout, "the run never started"
        time.sleep(0.002)
    return time.monotonic() - started


def _timed_full_run(config: Config, *args: str) -> tuple[float, float, str]:
    """Run the command to its end: (seconds until its run was journalled, seconds after that, stdout)."""
    size = _journal_size(config)
    proc = _start(config, *args)
    startup = _wait_for_journal(config, proc, size)
    started = time.monotonic()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    return startup, time.monotonic() - started, out.decode()


def _kill_after(config: Config, delay: float, *args: str, from_journal: bool) -> int | None:
    """Start the command, SIGKILL it `delay` s after its start (or after its run was journalled).

    Returns its exit status, None when the kill ended it.
    """
    size = _journal_size(config)
    proc = _start(config, *args)
    if from_journal:
        _wait_for_journal(config, proc, size)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    return None if proc.returncode == -signal.SIGKILL else proc.returncode


def _spread(startup: float, duration: float, count: int) -> list[tuple[float, bool]]:
    """Kill points: two during start-up (before the run is journalled), the rest evenly over the run."""
    during = count - 2
    return ([(startup * f, False) for f in (0.4, 0.8)]
            + [(duration * (i + 0.5) / during, True) for i in range(during)])


def _phase(rollback_dir: Path) -> str | None:
    try:
        return (rollback_dir / "PHASE").read_text().strip()
    except OSError:
        return None


def _status(config: Config) -> dict:
    r = run_cli("status", "--json", config=config)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_backup_killed_anywhere_leaves_only_whole_backups(service: BackupService) -> None:
    config = service.config
    storage = config.storage.path
    journal = RunJournal(service.state_dir)
    _grow(config)
    startup, duration, out = _timed_full_run(config, "run")
    first = out.strip()
    service.verify(first)
    landed = {"before the run was journalled": 0, "while the partial was written": 0,
              "journalled, no partial yet": 0, "after it finished": 0}

    for delay, from_journal in _spread(startup, duration, BACKUP_KILLS):
        known = {r.id for r in journal.runs()}
        code = _kill_after(config, delay, "run", from_journal=from_journal)
        partials = list(storage.glob("*.partial"))
        new_runs = [r for r in journal.runs() if r.id not in known and r.kind == "backup"]
        open_runs = [r for r in new_runs if r.result is None]
        assert len(new_runs) <= 1
        if code is not None or (new_runs and new_runs[0].result == "ok"):
            landed["after it finished"] += 1
        elif partials:
            landed["while the partial was written"] += 1
        elif open_runs:
            landed["journalled, no partial yet"] += 1
        else:
            landed["before the run was journalled"] += 1
        assert not partials or open_runs, f"a partial file without an open run: {partials}"

        # Nothing incomplete under a final name: every .abk is a whole, authentic backup.
        finals = sorted(p.name for p in storage.glob("*.abk"))
        for name in finals:
            service.verify(name)

        status = _status(config)  # the next command start recovers
        assert status["status"] == "Not Running"
        assert not list(storage.glob("*.partial")), "the next start left the partial file"
        if open_runs:
            closed = {r.id: r for r in journal.runs()}[open_runs[0].id]
            assert closed.result == "interrupted", closed
            assert status["last_error"]["result"] == "interrupted"
            assert "interrupted" in status["last_error"]["message"]
        assert not [r for r in journal.runs() if r.result is None], "a run is still open after recovery"

        listed = json.loads(run_cli("list", "--json", config=config).stdout)
        assert sorted(b["name"] for b in listed) == finals

        r = run_cli("run", config=config)
        assert r.returncode == 0, r.stderr
        service.verify(r.stdout.strip())
        for path in storage.glob("*.abk"):  # keep the storage small: each check verifies what is there
            path.unlink()

    print(f"\nbackup ({startup:.2f} s start-up + {duration:.2f} s run) killed {BACKUP_KILLS} times: {landed}")
    assert landed["while the partial was written"] >= 3, landed


def test_restore_killed_anywhere_leaves_old_or_new_state(service: BackupService) -> None:
    config = service.config
    journal = RunJournal(service.state_dir)
    _grow(config)
    name = service.run_backup().name
    backed_up = appliance_state(config)
    mutate_appliance(config)
    old = appliance_state(config)
    assert old != backed_up

    startup, duration, _ = _timed_full_run(config, "restore", name, "--yes")
    assert appliance_state(config) == backed_up
    mutate_appliance(config)
    assert appliance_state(config) == old
    outcomes = {"old": 0, "restored": 0}
    orphaned: dict[str, str | None] = {}

    for delay, from_journal in _spread(startup, duration, RESTORE_KILLS):
        known = {r.id for r in journal.runs()}
        _kill_after(config, delay, "restore", name, "--yes", from_journal=from_journal)
        status = _status(config)  # the next start recovers: undoes or finishes the swap
        assert status["status"] == "Not Running"
        assert not [r for r in journal.runs() if r.result is None], "a run is still open after recovery"
        for run in journal.runs():
            if run.id not in known:
                assert run.kind == "restore" and run.result in ("ok", "interrupted"), run
        rollback = service.state_dir / "rollback"
        phases = {d.name: _phase(d) for d in rollback.iterdir()} if rollback.exists() else {}
        # Checked at the end, so that every kill point is still checked for a mixed state first.
        orphaned.update({k: v for k, v in phases.items() if v not in ("done", "undone")})
        state = appliance_state(config)
        if state == old:
            outcomes["old"] += 1
        else:
            assert state == backed_up, "the appliance holds a mix of its old state and the backup's"
            outcomes["restored"] += 1
        parent = config.appliance.firmware.parent
        leftovers = [p.name for p in parent.iterdir() if ".restore-" in p.name or ".pre-restore-" in p.name]
        assert not leftovers, leftovers
        if state == backed_up:
            mutate_appliance(config)
            assert appliance_state(config) == old

    print(f"\nrestore ({startup:.2f} s start-up + {duration:.2f} s run) killed {RESTORE_KILLS} times: {outcomes}")
    assert outcomes["old"] >= 2, outcomes
    r = run_cli("restore", name, "--yes", config=config)  # and a restore after all that still works
    assert r.returncode == 0, r.stderr
    assert appliance_state(config) == backed_up
    # A restore killed before its swap leaves nothing replaced: its copy of the database must not
    # stay behind (recovery neither removes it nor counts it among the kept rollback copies).
    assert not orphaned, f"rollback copies recovery left unfinished or orphaned (phase): {orphaned}"
