"""Recovery of an interrupted restore is itself crash-safe (issue 14, item 2; DESIGN.md "Rules from the appliance").

The real `appliance-backup` command is killed (SIGKILL) before a chosen
file-system step (tests/kill_at.py): a restore, then the recovery the next
start runs, at random points or at named ones, then the command is started
again. Every time, the appliance ends exactly as it was before the restore or
exactly as the backup holds it (firmware, system configuration, database
rows), with no staged, partial or pre-restore copy beside it, no unfinished
rollback directory, no open run in the journal, and no status warning; until
then `status` warns. A restore that fails on a full disk (a real tmpfs, mounted
here: the tests run as root) leaves nothing behind either.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from backup.config import Config, load_config
from backup.demo import create_demo_appliance, write_appliance_config
from backup.errors import BackupError
from backup.journal import RunJournal
from backup.service import KEEP_ROLLBACKS, BackupService
from tests.common import FAST_KDF, PASSPHRASE, ROOT, run_cli
from tests.helpers import appliance_state, mutate_appliance, tree_digest

KILL_AT = ROOT / "tests" / "kill_at.py"
ITERATIONS = 40
"""Restores killed at random points, each followed by one or two recoveries killed at random points."""


def run_killed(config: Config, kill: str, *args: str) -> tuple[int, list[str]]:
    """Run the command, killed as `kill` says (see tests/kill_at.py): its exit status and its steps.

    The steps are those of a run that was not killed (empty when it was)."""
    root = Path(os.path.commonpath([config.path.parent, config.state_dir]))  # the appliance and its state
    steps_file = root.parent / f"{root.name}-steps.txt"
    steps_file.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, str(KILL_AT), str(root), str(steps_file), kill, "--",
                           "--config", str(config.path), *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "APPLIANCE_BACKUP_DEBUG": ""})
    assert "Traceback" not in proc.stderr, proc.stderr
    steps = steps_file.read_text().splitlines() if steps_file.exists() else []
    return proc.returncode, steps


def status_json(config: Config) -> dict:
    r = run_cli("status", "--json", config=config)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def phases(config: Config) -> dict[str, str | None]:
    root = config.state_dir / "rollback"
    out = {}
    for d in sorted(root.iterdir()) if root.exists() else []:
        try:
            out[d.name] = (d / "PHASE").read_text().strip()
        except FileNotFoundError:
            out[d.name] = None
    return out


def leftovers(config: Config) -> list[str]:
    """Whatever an interrupted restore or recovery may leave behind, beside the targets or in the state dir."""
    found = []
    for parent in {config.appliance.firmware.parent, config.appliance.system.parent, config.appliance.database.parent}:
        found += [p.name for p in parent.iterdir()
                  if ".restore-" in p.name or ".pre-restore-" in p.name or p.name.endswith(".partial")]
    state = config.state_dir
    found += [f"tmp/{p.name}" for p in (state / "tmp").glob("*")]
    found += [p.name for p in state.glob(".*") if p.name.startswith((".progress", ".PHASE", ".journal"))]
    found += [f"rollback/{name} ({phase})" for name, phase in phases(config).items() if phase != "done"]
    found += [str(p.relative_to(state)) for p in (state / "rollback").glob("*/.*")]
    found += [str(p.relative_to(state)) for p in (state / "rollback").glob("*/*.partial")]
    if (state / "progress.json").exists():
        found.append("progress.json")
    return sorted(found)


def open_runs(config: Config) -> list:
    return [r for r in RunJournal(config.state_dir).runs() if r.result is None]


def assert_settled(config: Config, old: tuple, new: tuple) -> str:
    """The appliance is exactly old or exactly new, nothing is left over and nothing warns; which of the two."""
    status = status_json(config)  # a start: it recovers first
    assert status["status"] == "Not Running"
    assert status.get("interrupted_restore") is None, status["interrupted_restore"]
    state = appliance_state(config)
    assert state in (old, new), "the appliance holds a mix of its old state and the backup's"
    assert not leftovers(config), leftovers(config)
    assert not open_runs(config), open_runs(config)
    assert len(phases(config)) <= KEEP_ROLLBACKS
    return "old" if state == old else "new"


@pytest.fixture
def backed_up(service: BackupService) -> tuple[BackupService, str, tuple, tuple]:
    """A backup of the demo appliance, then the appliance changed: (service, name, old state, new state)."""
    config = service.config
    name = service.run_backup().name
    new = appliance_state(config)
    mutate_appliance(config)
    old = appliance_state(config)
    assert old != new
    return service, name, old, new


def back_to_old(config: Config, old: tuple, ended: str) -> None:
    if ended == "new":
        mutate_appliance(config)  # the same change as before the restore: exactly the old state again
        assert appliance_state(config) == old


# ------------------------------------------------------------------ random points

@pytest.mark.slow
def test_restore_then_its_recovery_killed_at_random_points_end_exactly_old_or_new(backed_up) -> None:
    """The double fault, 40 times: a restore killed at a random step, then its recovery killed at a random step
    (once or twice), then a start that is not killed. The seed is printed; RECOVERY_KILL_SEED repeats a run."""
    service, name, old, new = backed_up
    config = service.config
    seed = int(os.environ.get("RECOVERY_KILL_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\nRECOVERY_KILL_SEED={seed}")
    rng = random.Random(seed)

    code, restore_steps = run_killed(config, "0", "restore", name, "--yes")  # one whole restore, counted
    assert code == 0 and appliance_state(config) == new
    back_to_old(config, old, "new")
    firmware = str(config.appliance.firmware.resolve())
    swap = next(i for i, s in enumerate(restore_steps) if s.startswith("os.rename") and f"\t{firmware} -> " in s)
    keep = next(i for i, s in enumerate(restore_steps)
                if s.startswith("os.rename") and ".firmware.pre-restore-" in s and "/rollback/" in s)
    code, _ = run_killed(config, str(swap + 3), "restore", name, "--yes")  # killed mid-swap: what to recover
    assert code == -9
    code, recovery_steps = run_killed(config, "0", "status", "--json")  # one whole recovery, counted
    assert code == 0 and appliance_state(config) == old
    # How many steps a whole recovery takes depends on what it finds; the recovery kills are drawn
    # from what whole recoveries took in the same situation (the restore's unfinished phases).
    bounds = {("swapping",): len(recovery_steps)}

    tally: Counter[str] = Counter()
    for _ in range(ITERATIONS):
        # A fifth of the restores are killed anywhere (mostly while extracting); the others where
        # recovery has the most to do: while swapping (from the notes written before it), or from
        # just before the commit to the end (keeping the old state, pruning, journalling).
        start, end = rng.choices([(1, len(restore_steps)), (swap - 8, keep - 6), (keep - 6, len(restore_steps))],
                                 weights=[1, 2, 2])[0]
        code, _ = run_killed(config, str(rng.randint(start, end)), "restore", name, "--yes")
        left = phases(config)
        tally[f"restore killed, then phase {sorted(set(left.values()) - {'done'}) or 'none unfinished'}"
              if code == -9 else "restore not killed"] += 1
        for _ in range(rng.choice((1, 1, 2))):
            situation = tuple(sorted({str(p) for p in phases(config).values() if p != "done"}))
            code, steps = run_killed(config, str(rng.randint(1, bounds.get(situation, max(bounds.values())))),
                                     "status", "--json")
            if code == -9:
                tally["recovery killed"] += 1
                undo_or_finish = bool({"swapping", "committed"} & set(situation))
                tally["recovery killed with a restore to undo or finish"] += undo_or_finish
            else:
                assert code == 0
                tally["recovery not killed (ended before its step)"] += 1
                bounds[situation] = max(bounds.get(situation, 0), len(steps))
        ended = assert_settled(config, old, new)
        tally[f"ended {ended}"] += 1
        back_to_old(config, old, ended)

    print(f"restore: {len(restore_steps)} steps (swap from step {swap + 1}, old state kept from step {keep + 1}); "
          f"whole recoveries by situation: {bounds} steps")
    print(dict(sorted(tally.items())))
    assert tally["recovery killed"] >= ITERATIONS // 2, tally
    assert tally["ended old"] and tally["ended new"], tally
    r = run_cli("restore", name, "--yes", config=config)  # and a restore after all that still works
    assert r.returncode == 0, r.stderr
    assert appliance_state(config) == new


# ------------------------------------------------------------------ named points

EXTRACTING = "open:.system.restore-:3"
MID_SWAP = "os.rename:.system.restore-"
"""Firmware replaced, system moved aside, its restored copy not yet in place."""
KEEPING = "os.rename:.firmware.pre-restore-:2"
"""Committed: the replaced firmware is being moved into the rollback copy."""
JOURNAL_END = "open:journal.jsonl"
NAMED_KILLS = {  # the restore's kill, the recovery's kill, where the appliance must end
    "extracting, then recovery mid-removal of a staged copy": (EXTRACTING, "os.rmdir:boot", "old"),
    "extracting, then recovery just after journalling": (EXTRACTING, JOURNAL_END + "+1", "old"),
    "mid-swap, then recovery before journalling": (MID_SWAP, JOURNAL_END, "old"),
    "mid-swap, then recovery just after journalling": (MID_SWAP, JOURNAL_END + "+1", "old"),
    "mid-swap, then recovery putting a directory back": (MID_SWAP, "os.rename:.firmware.pre-restore-", "old"),
    "keeping, then recovery moving the old state": (KEEPING, "os.rename:.system.pre-restore-", "new"),
    "keeping, then recovery just after journalling": (KEEPING, JOURNAL_END + "+1", "new"),
}


@pytest.mark.parametrize("restore_kill,recovery_kill,expected", NAMED_KILLS.values(), ids=NAMED_KILLS.keys())
def test_a_recovery_killed_at_a_named_step_is_completed_by_the_next_start(
        backed_up, restore_kill: str, recovery_kill: str, expected: str) -> None:
    """An earlier recovery journalled the restore closed first, then undid it: killed in between, the
    appliance stayed mixed for good, and killed while removing staged copies, those stayed for good."""
    service, name, old, new = backed_up
    config = service.config
    code, _ = run_killed(config, restore_kill, "restore", name, "--yes")
    assert code == -9
    restore_run = open_runs(config)[0]
    code, _ = run_killed(config, recovery_kill, "status", "--json")
    assert code == -9
    assert assert_settled(config, old, new) == expected
    run = {r.id: r for r in RunJournal(config.state_dir).runs()}[restore_run.id]
    assert run.result == "interrupted"
    said = {EXTRACTING: "before it changed anything", MID_SWAP: "previous state was put back", KEEPING: "finished it"}
    assert said[restore_kill] in run.error


# ------------------------------------------------------------------ full disk, warnings

@contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A real small file system: the tests run as root (mount(8) fails the test otherwise)."""
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)],
                   check=True, capture_output=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def appliance_on(disk: Path, tmp_path: Path) -> BackupService:
    """A demo appliance on `disk`; its state directory and storage elsewhere (another file system)."""
    root = disk / "appliance"
    create_demo_appliance(root)
    (tmp_path / "backups").mkdir()
    write_appliance_config(root / "config.toml", name="demo-appliance", firmware=root / "firmware",
                           system=root / "system", database=root / "internal.db", state_dir=tmp_path / "state",
                           storage_dir=tmp_path / "backups")
    service = BackupService(load_config(root / "config.toml"), kdf_params=FAST_KDF)
    service.set_secret(PASSPHRASE)
    return service


def test_a_restore_failing_on_a_full_disk_leaves_no_partial_copy_and_no_rollback_directory(tmp_path: Path) -> None:
    """The database is open (the appliance's service), so replacing it copies it first; the disk has room
    for the staged state but not for that copy. Before, the `.partial` copy and a rollback directory stuck
    in "swapping" stayed for good."""
    with tmpfs(tmp_path / "disk", "64m") as disk:
        service = appliance_on(disk, tmp_path)
        config = service.config
        name = service.run_backup().name
        new = appliance_state(config)
        mutate_appliance(config)
        old = appliance_state(config)
        db_size = config.appliance.database.stat().st_size
        staged = sum(-(-p.stat().st_size // 4096) * 4096 + 4096
                     for c in (config.appliance.firmware, config.appliance.system) for p in c.rglob("*")) + db_size
        vfs = os.statvfs(disk)
        (disk / "filler").write_bytes(b"\0" * (vfs.f_bavail * vfs.f_frsize - staged - db_size // 2))
        held = sqlite3.connect(config.appliance.database)
        try:
            held.execute("SELECT count(*) FROM sqlite_master").fetchone()
            with pytest.raises(BackupError, match="No space left on device.*the previous state was put back"):
                service.restore(name)
            assert appliance_state(config) == old
            assert not leftovers(config), leftovers(config)
            assert not phases(config)
            assert service.status().interrupted_restore is None
            assert [r.result for r in RunJournal(config.state_dir).runs() if r.kind == "restore"] == ["failed"]
            held.execute("SELECT count(*) FROM sqlite_master").fetchone()  # its connection still works
        finally:
            held.close()
        (disk / "filler").unlink()
        result = service.restore(name)  # with room again it goes through; the old state is kept on the other disk
        assert appliance_state(config) == new
        assert (result.rollback_dir / "firmware" / "added-after-backup.conf").exists()
        assert not leftovers(config), leftovers(config)


async def test_status_warns_until_an_interrupted_restore_is_undone(tmp_path: Path) -> None:
    """A restore killed mid-swap, and its recovery impossible for now (the appliance's disk read-only):
    status (the command, its JSON, the console) warns and says why, no backup or restore starts, the run
    stays open; once the disk is writable again the next start undoes it and the warning goes."""
    from tests.test_tui_console import SIZE, settle, text_of
    from tests.tui_fixtures import make_app

    with tmpfs(tmp_path / "disk", "64m") as disk:
        service = appliance_on(disk, tmp_path)
        config = service.config
        name = service.run_backup().name
        mutate_appliance(config)
        old = appliance_state(config)
        code, _ = run_killed(config, "os.rename:.system.restore-", "restore", name, "--yes")
        assert code == -9
        assert "may be a mix" in service.status().interrupted_restore  # as read, before any recovery

        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, capture_output=True)
        try:
            r = run_cli("status", config=config)
            assert r.returncode == 0, r.stderr
            text = " ".join(r.stdout.split())
            assert "Warning: A restore (run" in text and "may be a mix" in text, text
            assert "the last attempt failed" in text and "Read-only file system" in text, text
            assert "may be a mix" in status_json(config)["interrupted_restore"]
            assert [r.kind for r in open_runs(config)] == ["restore"]
            for args in (("restore", name, "--yes"), ("run",)):
                r = run_cli(*args, config=config)
                assert r.returncode == 1 and "no backup or restore starts" in r.stderr, r.stderr
            app = make_app(config)
            async with app.run_test(size=SIZE) as pilot:
                await settle(pilot)
                assert app.screen.query_one("#interrupted-restore").display
                assert "may be a mix" in text_of(app, "#interrupted-restore")
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True, capture_output=True)

        assert assert_settled(config, old, None) == "old"
        assert "previous state was put back" in RunJournal(config.state_dir).runs()[-1].error


def test_a_restore_killed_before_its_commit_where_there_was_no_database_leaves_none(backed_up) -> None:
    """Undoing removes what the swap put where nothing was (before, the restored database stayed)."""
    service, name, old, _ = backed_up
    config = service.config
    config.appliance.database.unlink()
    before = tree_digest(config.appliance.firmware), tree_digest(config.appliance.system)
    code, _ = run_killed(config, "os.rename:/PHASE:3", "restore", name, "--yes")  # staging, swapping, committed
    assert code == -9
    assert config.appliance.database.exists()  # renamed in, not yet committed
    r = run_cli("status", "--json", config=config)
    assert r.returncode == 0 and json.loads(r.stdout).get("interrupted_restore") is None, r.stdout
    assert not config.appliance.database.exists()
    assert (tree_digest(config.appliance.firmware), tree_digest(config.appliance.system)) == before
    assert not leftovers(config), leftovers(config)
    assert not open_runs(config)


def test_keeping_the_old_state_on_another_file_system_survives_a_kill_mid_copy(tmp_path: Path) -> None:
    """The state directory is on another file system than the appliance: the replaced firmware is copied
    into the rollback copy, not renamed. Killed mid-copy, the next start completes the copy, whole."""
    with tmpfs(tmp_path / "disk", "64m") as disk:
        service = appliance_on(disk, tmp_path)
        config = service.config
        name = service.run_backup().name
        new = appliance_state(config)
        mutate_appliance(config)
        old = appliance_state(config)
        code, _ = run_killed(config, "os.rename:.firmware.pre-restore-:2", "restore", name, "--yes")
        assert code == -9
        code, _ = run_killed(config, "open:firmware.partial+5", "status", "--json")
        assert code == -9
        assert list((config.state_dir / "rollback").glob("*/firmware.partial"))  # a copy cut short
        assert assert_settled(config, old, new) == "new"
        rollback = next((config.state_dir / "rollback").iterdir())
        assert sorted(p.name for p in rollback.iterdir()) == [
            "DATABASE_WAL", "PHASE", "TARGETS", "firmware", "internal.db", "system"]
        assert tree_digest(rollback / "firmware") == old[0]
        assert tree_digest(rollback / "system") == old[1]
