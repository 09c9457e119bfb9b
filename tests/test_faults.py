"""Faults during a backup: nothing lost, a clear sentence, and the next run fine (issue #7).

Every test drives the real program (the `appliance-backup` command in a
subprocess, real files, real SQLite, real mounts) into one fault, then checks
the exit code, that the operator reads one sentence naming what failed, why and
what to do (never a traceback, never the DMS), that nothing partial is left in
the storage, that the run journal says the run failed, and that the next run
succeeds once the fault is fixed.

1. Storage full: a 2 MiB tmpfs is the storage. The sentence says the storage is
   full, how much was written, about how much this backup needs (an estimate,
   checked against the real size once the tmpfs is enlarged) and how much was
   free; after `mount -o remount,size=...` the next backup succeeds and verifies.
   The same sentence comes from an NFS share on a full tmpfs (real nfs-ganesha),
   since the service, not the backend, works out what was needed.
2. Permission denied, (a) on the storage directory (mode 0555; and a read-only
   mount, which even full root cannot write), (b) on a file and on a directory
   of a component, (c) on the state directory (the run journal, and its tmp
   folder where the database snapshot goes; also that folder too small for
   the snapshot, refused before anything is written).
3. A component missing (the system or firmware configuration directory
   deleted): the backup fails naming the path, rather than silently making a
   backup a restore would miss it from.
4. The internal database locked by a writer in another process for longer than
   the backup waits: in WAL mode (the appliance's) readers are not blocked, so
   the backup succeeds and holds what was committed before, not the writer's
   uncommitted rows; in rollback-journal mode an EXCLUSIVE lock makes the backup
   fail after `[backup] database_wait_seconds` with a sentence, and the next
   run after the lock is released succeeds.
5. A corrupted or hand-edited config.toml (TOML syntax error, a wrong type, an
   unknown storage type): the sentence names the file and the line. A run
   journal with garbage in the middle and a torn last record: runs go on, the
   torn record is skipped, and `RunJournal.damage()` names the file and line.
   (tests/test_journal.py already covers the torn record and hand-damaged
   lines at the unit level; tests/test_cli.py covers config errors naming the
   file and key.)

How permission faults are made while the tests run as root: `setpriv` drops
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the command it starts, so uid 0
obeys file modes like any other user. (Dropping to another uid is not possible
for a new process here: the venv's interpreter lives under /root, mode 0700.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from backup.config import Config, load_config, update_config
from backup.demo import create_demo_appliance
from backup.errors import ExitCode, StorageFullError
from backup.journal import RunJournal
from backup.service import BackupService
from backup.storage.nfs import NfsStorage
from tests.common import BIN, FAST_KDF, PASSPHRASE, run_cli
from tests.nfs_server import NfsServer

NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
          "--bounding-set=-dac_override,-dac_read_search", "--"]
"""Prefix for a command that must obey file modes although it runs as root."""


def run_as_plain_user(*args: str | os.PathLike[str], config: Config) -> subprocess.CompletedProcess[str]:
    """The real command, as uid 0 without the capabilities that let root ignore file modes."""
    argv = [*NO_DAC, str(BIN), "--config", str(config.path), *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "APPLIANCE_BACKUP_DEBUG": ""})


def assert_sentence(r: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The command failed with `code` and said one sentence holding `words`; return the sentence."""
    assert r.returncode == code, (r.returncode, r.stderr)
    text = r.stderr.strip()
    assert text.startswith("appliance-backup: ") and "\n" not in text, text
    assert "Traceback" not in text and PASSPHRASE not in text
    for word in words:
        assert word in text, (word, text)
    return text.removeprefix("appliance-backup: ")


def assert_failed_and_nothing_kept(config: Config, sentence: str | None = None) -> None:
    """Nothing (partial or whole) is in the storage, and the journal's last backup run failed."""
    assert sorted(os.listdir(config.storage.path)) == []
    last = [r for r in RunJournal(config.state_dir).runs() if r.kind == "backup"][-1]
    assert last.result == "failed"
    if sentence is not None:
        assert last.error == sentence


def assert_next_run_fine(config: Config, *, plain_user: bool = False) -> str:
    r = run_as_plain_user("run", config=config) if plain_user else run_cli("run", config=config)
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip()
    assert [p.name for p in config.storage.path.iterdir()] == [name]
    return name


@contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)],
                   check=True, capture_output=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def remount(mount_point: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount_point)], check=True, capture_output=True)


MIB = 1 << 20


# ---------------------------------------------------------------- 1. storage full


def test_storage_full_says_what_is_needed_keeps_nothing_and_the_next_run_fits(service: BackupService) -> None:
    config = service.config
    (config.appliance.firmware / "firmware-image.bin").write_bytes(os.urandom(3 * MIB))  # incompressible
    with tmpfs(config.storage.path, "2m") as storage:
        free = shutil.disk_usage(storage).free
        sentence = assert_sentence(run_cli("run", config=config), ExitCode.STORAGE,
                                   f"The storage (local directory {storage}) is full",
                                   "(an estimate from compressing a sample of its data)",
                                   "Free space there or choose another location.")
        match = re.search(r"stopped after ([\d.]+) MiB had been sent to it; this backup needs about ([\d.]+) MiB .* "
                          r"and only ([\d.]+) MiB was free when it started", sentence)
        assert match, sentence
        written, needed, said_free = (float(g) * MIB for g in match.groups())
        assert abs(said_free - free) < 0.1 * MIB and written <= free + 0.05 * MIB  # to the 0.1 MiB shown
        assert_failed_and_nothing_kept(config, sentence)
        assert json.loads(run_cli("status", "--json", config=config).stdout)["last_error"]["message"] == sentence

        remount(storage, "size=64m")
        name = assert_next_run_fine(config)
        actual = (storage / name).stat().st_size
        assert needed > written and 0.8 * actual <= needed <= 1.25 * actual, (needed, actual)
        assert run_cli("verify", name, config=config).returncode == 0


@pytest.mark.nfs
def test_nfs_share_full_gives_the_same_sentence(nfs_server_factory: Callable[..., NfsServer],
                                                tmp_path: Path) -> None:
    """The amount needed is worked out by the service, so an NFS share (NFS4ERR_NOSPC) says it too."""
    export = tmp_path / "export"
    export.mkdir()
    with tmpfs(export, "4m"):
        server = nfs_server_factory(export_dir=export)
        try:
            with server.client() as client:
                client.mkdir("backups", mode=0o755)
            url = server.url("backups")
            config = load_config(create_demo_appliance(tmp_path / "appliance"))
            (config.appliance.firmware / "firmware-image.bin").write_bytes(os.urandom(6 * MIB))
            with NfsStorage(url, "4.1", timeout=10) as storage:
                service = BackupService(config, kdf_params=FAST_KDF, storage=storage)
                service.set_secret(PASSPHRASE)
                with pytest.raises(StorageFullError) as info:
                    service.run_backup()
                sentence = str(info.value)
                assert sentence.startswith(f"The storage ({storage.description}) is full: the backup stopped "
                                           "after "), sentence
                assert re.search(r"this backup needs about [\d.]+ MiB \(an estimate from compressing a sample "
                                 r"of its data\) and only [\d.]+ MiB was free when it started\. Free space there",
                                 sentence), sentence
                assert [e.name for e in storage.list("")] == []
                assert service.journal.runs()[-1].error == sentence

                remount(export, "size=64m")
                name = service.run_backup().name
                assert [e.name for e in storage.list("")] == [name]
        finally:
            server.stop()


# ---------------------------------------------------------------- 2. permission denied


def test_storage_directory_not_writable(service: BackupService) -> None:
    config = service.config
    config.storage.path.chmod(0o555)
    sentence = assert_sentence(run_as_plain_user("run", config=config), ExitCode.STORAGE,
                               f"Permission denied: Creating {config.storage.path}/",
                               "Give the appliance write access or choose another location.")
    assert_failed_and_nothing_kept(config, sentence)
    config.storage.path.chmod(0o755)
    assert_next_run_fine(config, plain_user=True)


def test_storage_mounted_read_only(service: BackupService) -> None:
    config = service.config
    with tmpfs(config.storage.path, "16m") as storage:
        remount(storage, "ro")
        sentence = assert_sentence(run_cli("run", config=config), ExitCode.STORAGE,
                                   f"The storage is read-only: Creating {storage}/",
                                   "Mount it read-write or choose another location.")
        assert_failed_and_nothing_kept(config, sentence)
        remount(storage, "rw")
        assert_next_run_fine(config)


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_component_not_readable(service: BackupService, kind: str) -> None:
    config = service.config
    if kind == "file":
        target = sorted(p for p in config.appliance.system.rglob("*") if p.is_file())[0]
        words = [f"The system configuration file {target} cannot be read (permission denied)"]
    else:
        target = sorted(p for p in config.appliance.firmware.rglob("*") if p.is_dir())[0]
        words = [f"The firmware configuration cannot be read ({target}: permission denied)"]
    mode = target.stat().st_mode & 0o777
    target.chmod(0)
    sentence = assert_sentence(run_as_plain_user("run", config=config), ExitCode.FAILED, *words,
                               "run the backup as root, or give its user read access")
    assert_failed_and_nothing_kept(config, sentence)
    target.chmod(mode)
    assert_next_run_fine(config, plain_user=True)


@pytest.mark.parametrize("what", ["directory", "journal"])
def test_state_directory_not_writable(service: BackupService, what: str) -> None:
    config = service.config
    journal = config.state_dir / "journal.jsonl"
    if what == "directory":
        assert not journal.exists()  # the first run would create it, in a directory it may not write to
        target, mode, fixed = config.state_dir, 0o500, 0o700
    else:
        name = assert_next_run_fine(config)
        (config.storage.path / name).unlink()
        target, mode, fixed = journal, 0o400, 0o600
    target.chmod(mode)
    if what == "directory":  # the first thing a run writes there is its lock
        expected = (f"The run lock {config.state_dir / 'run.lock'} cannot be opened (Permission denied)",
                    f"make the state directory {config.state_dir} and everything in it writable")
    else:
        expected = (f"The run journal {journal} cannot be written (Permission denied), so no run can be recorded",
                    f"make the state directory {config.state_dir} and its files writable")
    assert_sentence(run_as_plain_user("run", config=config), ExitCode.FAILED, *expected)
    assert sorted(os.listdir(config.storage.path)) == []  # the run never began: there is nowhere to record it
    target.chmod(fixed)
    assert_next_run_fine(config, plain_user=True)


@contextmanager
def log_pinned(db: Path) -> Iterator[None]:
    """Another reader holds the WAL, so the database file alone is not a snapshot (see database.frozen):
    the backup copies one into the state's tmp/ folder instead of reading the file straight."""
    writer = sqlite3.connect(db)
    with writer:
        writer.execute("CREATE TABLE IF NOT EXISTS fault_pin (at TEXT)")
        writer.execute("INSERT INTO fault_pin VALUES (datetime('now'))")
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM fault_pin").fetchone()
    try:
        yield
    finally:
        reader.close()
        writer.close()


def test_state_tmp_folder_not_writable(service: BackupService) -> None:
    config = service.config
    tmp = config.state_dir / "tmp"
    tmp.mkdir(mode=0o500)
    with log_pinned(config.appliance.database):
        sentence = assert_sentence(run_as_plain_user("run", config=config), ExitCode.FAILED,
                                   f"The state directory's temporary folder {tmp} cannot be written "
                                   "(Permission denied)", "writable by the user that runs backups")
    assert_failed_and_nothing_kept(config, sentence)
    assert_next_run_fine(config, plain_user=True)  # no copy needed once the log is free: tmp/ is not used
    tmp.chmod(0o700)


def test_state_tmp_folder_too_small_for_the_database_snapshot(service: BackupService) -> None:
    config = service.config
    tmp = config.state_dir / "tmp"
    tmp.mkdir(mode=0o700)
    with tmpfs(tmp, "1m"), log_pinned(config.appliance.database):  # the demo database is about 5 MiB
        sentence = assert_sentence(run_cli("run", config=config), ExitCode.FAILED,
                                   f"The state directory {config.state_dir} has 1.0 MiB free, but the snapshot of "
                                   "the internal database needs", "free space on its file system")
        assert_failed_and_nothing_kept(config, sentence)
        assert os.listdir(tmp) == []
    assert_next_run_fine(config)


# ---------------------------------------------------------------- 3. a component missing


@pytest.mark.parametrize("component", ["system", "firmware"])
def test_missing_component_fails_naming_it(service: BackupService, tmp_path: Path, component: str) -> None:
    config = service.config
    directory = getattr(config.appliance, component)
    kept = shutil.copytree(directory, tmp_path / "kept-copy", symlinks=True)
    shutil.rmtree(directory)
    sentence = assert_sentence(run_cli("run", config=config), ExitCode.USAGE,
                               f"The {component} configuration directory {directory} does not exist, "
                               "so a backup would miss it",
                               f"[appliance] {component} in {config.path}")
    assert_failed_and_nothing_kept(config, sentence)
    shutil.copytree(kept, directory, symlinks=True)
    assert_next_run_fine(config)


# ---------------------------------------------------------------- 4. the database locked by a writer

HOLDER = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
con.execute("BEGIN " + sys.argv[2])
con.execute("INSERT INTO fault_probe (what) VALUES ('uncommitted when the backup ran')")
print("locked", flush=True)
con.execute(sys.stdin.readline().strip())
print("released", flush=True)
"""


@contextmanager
def writer_holding_the_database(db: Path, begin: str) -> Iterator[subprocess.Popen]:
    """Another process inside a write transaction (`BEGIN <begin>`) until told COMMIT or ROLLBACK."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), begin], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def release(proc: subprocess.Popen, how: str) -> None:
    proc.stdin.write(how + "\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "released"
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


def probe_rows(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT what FROM fault_probe ORDER BY id")]
    finally:
        con.close()


def prepare_database(config: Config, journal_mode: str) -> Config:
    """The probe table with one committed row, the journal mode set, and a short patience for locks."""
    con = sqlite3.connect(config.appliance.database, isolation_level=None)
    try:
        assert con.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0] == journal_mode.lower()
        con.execute("CREATE TABLE fault_probe (id INTEGER PRIMARY KEY, what TEXT)")
        con.execute("INSERT INTO fault_probe (what) VALUES ('committed before the backup')")
    finally:
        con.close()
    return update_config(config, {"backup": {"database_wait_seconds": 1}})


def test_wal_database_held_by_a_writer_is_backed_up_as_committed(service: BackupService) -> None:
    config = prepare_database(service.config, "WAL")
    db = config.appliance.database
    # In WAL mode EXCLUSIVE locks out other writers only (IMMEDIATE behaves the same for readers).
    with writer_holding_the_database(db, "EXCLUSIVE") as writer:
        r = run_cli("run", config=config)
        assert r.returncode == 0, r.stderr
        assert writer.poll() is None  # the write transaction was open the whole time
        release(writer, "COMMIT")
    name = r.stdout.strip()
    assert probe_rows(db) == ["committed before the backup", "uncommitted when the backup ran"]
    r = run_cli("restore", name, "--yes", config=config)
    assert r.returncode == 0, r.stderr
    assert probe_rows(db) == ["committed before the backup"]


def test_rollback_journal_database_locked_fails_in_bounded_time_then_succeeds(service: BackupService) -> None:
    config = prepare_database(service.config, "DELETE")
    db = config.appliance.database
    with writer_holding_the_database(db, "EXCLUSIVE") as writer:
        # run_cli's timeout bounds the wait: the backup must give up on its own long before.
        sentence = assert_sentence(run_cli("run", config=config, timeout=60), ExitCode.FAILED,
                                   f"The appliance database {db} is locked by another program",
                                   "more than 1 s", "Try again when that write has finished")
        assert writer.poll() is None  # the lock was held the whole time
        assert_failed_and_nothing_kept(config, sentence)
        release(writer, "ROLLBACK")
    name = assert_next_run_fine(config)
    assert run_cli("verify", name, config=config).returncode == 0


# ---------------------------------------------------------------- 5. hand-edited config and journal


def _line_number(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


@pytest.mark.parametrize("edit, expected", [
    (("[storage]\n", "[storage\n"), "is not valid TOML at line {line}, column 9"),
    (('name = "demo-appliance"', "name = 42"), "line {line}, [appliance] name must be a string in quotes"),
    (('type = "local"', 'type = "ftp"'), "line {line}, [storage] type is 'ftp'; it must be one of"),
    (("keep_last = 3", 'keep_last = "3"'), "line {line}, [retention] keep_last must be a whole number"),
])
def test_hand_edited_config_names_the_file_and_the_line(appliance: Config, edit: tuple[str, str],
                                                        expected: str) -> None:
    good = appliance.path.read_text()
    old, new = edit
    bad = good.replace(old, new, 1)
    appliance.path.write_text(bad)
    line = _line_number(bad, new)
    assert_sentence(run_cli("status", config=appliance), ExitCode.USAGE,
                    f"{appliance.path}", expected.format(line=line))


def test_damaged_journal_is_skipped_named_and_runs_go_on(service: BackupService) -> None:
    config = service.config
    for _ in range(2):
        assert run_cli("run", config=config).returncode == 0
    journal = RunJournal(config.state_dir)
    good_runs = [(r.name, r.result) for r in journal.runs()]
    lines = journal.path.read_bytes().splitlines(keepends=True)
    lines.insert(2, b"edited by hand: not a record\n")
    journal.path.write_bytes(b"".join(lines) + b'{"type":"start","id":"torn-by-a-cra')  # a crash mid-append
    assert [(r.name, r.result) for r in journal.runs()] == good_runs
    assert journal.damage() == (f"The run journal {journal.path} has 1 damaged line (line 3) that was skipped; "
                                "the other runs are intact. Remove or repair those lines to clear this warning.")

    r = run_cli("run", config=config)
    assert r.returncode == 0, r.stderr
    status = json.loads(run_cli("status", "--json", config=config).stdout)
    assert status["last_successful_backup"]["name"] == r.stdout.strip()
    assert [(x["name"], x["result"]) for x in reversed(status["recent_runs"])] == good_runs + [(r.stdout.strip(), "ok")]
    assert journal.damage().startswith(f"The run journal {journal.path} has 1 damaged line (line 3)")
    assert journal.damage() in status["warnings"]  # status (and the console's Status screen) says so too
