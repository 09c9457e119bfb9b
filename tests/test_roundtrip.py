"""Back up and restore whole appliances: the restored state is the backed-up state, byte for byte."""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from backup import database
from backup.config import load_config
from backup.demo import create_demo_appliance
from backup.errors import DmsNotSetError
from backup.service import BackupService
from tests.common import FAST_KDF, PASSPHRASE
from tests.helpers import appliance_state, db_rows, mutate_appliance


def test_demo_round_trip(service: BackupService) -> None:
    before = appliance_state(service.config)
    result = service.run_backup()
    assert result.name.startswith("demo-appliance-") and result.name.endswith(".abk")
    assert [b.name for b in service.list_backups()] == [result.name]

    mutate_appliance(service.config)
    assert appliance_state(service.config) != before

    restored = service.restore(result.name)
    assert appliance_state(service.config) == before
    assert database.check(service.config.appliance.database) is None
    # The replaced state is kept, and holds what was there before the restore.
    assert (restored.rollback_dir / "firmware" / "added-after-backup.conf").exists()
    assert (restored.rollback_dir / "internal.db").exists()
    # No staging or pre-restore leftovers beside the targets.
    parent = service.config.appliance.firmware.parent
    assert not [p.name for p in parent.iterdir() if ".restore-" in p.name or ".pre-restore-" in p.name]


def test_generated_appliance_with_thousands_of_files(service: BackupService) -> None:
    rng = random.Random(7)
    system = service.config.appliance.system
    for i in range(3000):
        d = system / f"generated/d{i % 37}/e{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        size = rng.choice([0, 1, 511, 512, 513, 4096, rng.randrange(20000)])
        (d / f"f{i}.conf").write_bytes(rng.randbytes(size))
    (system / "generated" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    os.symlink("d1/e1/f1.conf", system / "generated" / "link-inside")
    (system / "generated" / "d2" / "e2" / "f2.conf").chmod(0o640)
    (system / "ünïcode näme.conf").write_text("utf-8 names survive\n")
    before = appliance_state(service.config)

    name = service.run_backup().name
    mutate_appliance(service.config)
    service.restore(name)

    assert appliance_state(service.config) == before


def test_an_appliance_whose_paths_hold_uri_characters(tmp_path: Path) -> None:
    """SQLite opens files by URI here: '#', '?' and '%' in a directory's name are part of the name, not syntax."""
    config = load_config(create_demo_appliance(tmp_path / "site #1 ?a=b %41"))
    con = sqlite3.connect(config.appliance.database)
    con.execute("PRAGMA journal_mode=DELETE")  # the database is then copied through SQLite, which opens it by URI
    con.close()
    service = BackupService(config, kdf_params=FAST_KDF)
    service.set_secret(PASSPHRASE)
    before = appliance_state(config)
    assert before[2], "the demo database's rows"  # db_rows opens it by URI too
    name = service.run_backup().name
    assert service.verify(name, deep=True).files > 0
    mutate_appliance(config)
    service.restore(name)
    assert appliance_state(config) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site #1 ?a=b %41"]  # nothing opened at a cut name


def test_a_restore_where_the_database_is_missing_places_it_and_keeps_nothing_for_it(service: BackupService) -> None:
    before = appliance_state(service.config)
    name = service.run_backup().name
    service.config.appliance.database.unlink()
    result = service.restore(name)
    assert appliance_state(service.config) == before
    assert not (result.rollback_dir / "internal.db").exists()
    assert (result.rollback_dir / "firmware").is_dir()


def _owner_and_mode(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


@pytest.mark.parametrize("read_while_backing_up", [False, True])
def test_the_database_keeps_its_owner_and_mode(service: BackupService, read_while_backing_up: bool) -> None:
    """The appliance's services may run as their own user: a restored database must stay theirs."""
    live = service.config.appliance.database
    os.chown(live, 1234, 2345)
    live.chmod(0o640)
    reader = None
    if read_while_backing_up:  # a read transaction keeps the file from being frozen: a snapshot copy is backed up
        reader = sqlite3.connect(live, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM sqlite_master").fetchone()
    try:
        name = service.run_backup().name
    finally:
        if reader is not None:
            reader.close()
    service.restore(name)  # nothing holds the database: the restored file is renamed in
    assert _owner_and_mode(live) == (1234, 2345, 0o640)
    live.unlink()  # no live file to take them from: the backup's own record of them
    service.restore(name)
    assert _owner_and_mode(live) == (1234, 2345, 0o640)


def test_directory_and_link_times_come_back(service: BackupService) -> None:
    system = service.config.appliance.system
    (system / "old" / "inner").mkdir(parents=True)
    (system / "old" / "inner" / "f.conf").write_text("x\n")
    os.symlink("inner/f.conf", system / "old" / "link")
    os.utime(system / "old" / "inner", (915_148_800, 915_148_800))  # 1999-01-01
    os.utime(system / "old" / "link", (978_307_200, 978_307_200), follow_symlinks=False)  # 2001-01-01
    os.utime(system / "old", (946_684_800, 946_684_800))  # 2000-01-01, after its entries were made
    os.utime(system, (1_000_000_000, 1_000_000_000))
    times = {p: p.lstat().st_mtime for p in (system, system / "old", system / "old" / "inner", system / "old" / "link")}
    name = service.run_backup().name
    mutate_appliance(service.config)
    service.restore(name)
    assert {p: p.lstat().st_mtime for p in times} == times


def test_backup_needs_the_dms(appliance) -> None:
    svc = BackupService(appliance, kdf_params=FAST_KDF)
    with pytest.raises(DmsNotSetError, match="secret set"):
        svc.run_backup()
    assert list((appliance.storage.path).iterdir()) == []


def test_database_snapshot_is_consistent_while_the_appliance_writes(service: BackupService) -> None:
    """A writer commits pairs of rows that must always appear together; the snapshot never splits a pair."""
    db = service.config.appliance.database
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, pair INTEGER, side TEXT, pad BLOB)")
    con.commit()
    con.close()
    stop = threading.Event()
    committed = [0]

    def writer() -> None:
        w = sqlite3.connect(db, timeout=30)
        n = 0
        while not stop.is_set():
            with w:
                w.execute("INSERT INTO ledger (pair, side, pad) VALUES (?, 'debit', randomblob(2000))", (n,))
                w.execute("INSERT INTO ledger (pair, side, pad) VALUES (?, 'credit', randomblob(2000))", (n,))
            n += 1
            committed[0] = n
        w.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while committed[0] < 50:
            time.sleep(0.01)
        names = [service.run_backup().name for _ in range(3)]
    finally:
        stop.set()
        thread.join()
    assert committed[0] > 50
    for name in names:
        service.restore(name)
        rows = db_rows(service.config.appliance.database)["ledger"]
        assert len(rows) % 2 == 0 and len(rows) > 0
        pairs = {}
        for _, pair, side, _pad in rows:
            pairs.setdefault(pair, set()).add(side)
        assert all(sides == {"debit", "credit"} for sides in pairs.values())
        assert database.check(service.config.appliance.database) is None


def test_restore_on_another_appliance_needs_the_original_dms(service: BackupService, tmp_path: Path) -> None:
    from backup.demo import create_demo_appliance
    from backup.errors import WrongDmsError

    name = service.run_backup().name
    before = appliance_state(service.config)
    other = load_config(create_demo_appliance(tmp_path / "other", seed=2))
    other_svc = BackupService(other, kdf_params=FAST_KDF)
    other_svc.set_secret("another appliance's secret")
    # The other appliance reads from the first one's storage.
    other_svc._storage = service.storage
    with pytest.raises(WrongDmsError, match="--passphrase-file"):
        other_svc.verify(name)
    other_svc.restore(name, passphrase=PASSPHRASE)
    assert appliance_state(other) == before


def test_only_the_newest_rollback_copies_are_kept(service: BackupService) -> None:
    from backup.service import KEEP_ROLLBACKS

    name = service.run_backup().name
    kept = [service.restore(name).rollback_dir for _ in range(KEEP_ROLLBACKS + 2)]
    remaining = sorted((service.state_dir / "rollback").iterdir())
    assert remaining == sorted(kept[-KEEP_ROLLBACKS:])


def test_delete_a_backup(service: BackupService) -> None:
    from backup.errors import BackupNotFoundError

    name = service.run_backup().name
    service.delete_backup(name)
    assert service.list_backups() == []
    assert service.journal.runs()[-1].kind == "delete" and service.journal.runs()[-1].result == "ok"
    with pytest.raises(BackupNotFoundError):
        service.delete_backup(name)
    with pytest.raises(BackupNotFoundError):
        service.delete_backup("../config.toml")
