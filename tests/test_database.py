"""Database snapshots: a file copy under a frozen read where SQLite allows it, the backup API otherwise.

Real SQLite files and real concurrent connections; what is checked is the
bytes and rows of each copy, never how long it took.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

import pytest

from backup import database
from tests.helpers import db_rows


def _make(path: Path, *, wal: bool = True, rows: int = 2000) -> Path:
    con = sqlite3.connect(path)
    if wal:
        con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, pair INTEGER, side TEXT, pad BLOB)")
    with con:
        con.executemany("INSERT INTO t (pair, side, pad) VALUES (?, ?, randomblob(500))",
                        [(i // 2, ("debit", "credit")[i % 2]) for i in range(rows)])
    con.close()
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_wal_database_is_frozen_and_copied_as_a_file(tmp_path: Path) -> None:
    db = _make(tmp_path / "live.db")
    with database.frozen(db) as size:
        assert size == db.stat().st_size
    copy = tmp_path / "copy.db"
    assert database.snapshot(db, copy) == size
    assert db_rows(copy) == db_rows(db)
    assert database.check(copy) is None
    assert copy.read_bytes()[18:20] == b"\x01\x01"  # a plain database: opens without a log beside it
    con = sqlite3.connect(database.read_only(copy), uri=True)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()


def test_while_frozen_the_appliance_writes_and_the_file_does_not_change(tmp_path: Path) -> None:
    db = _make(tmp_path / "live.db")
    writer = sqlite3.connect(db, timeout=5)
    with database.frozen(db) as size:
        assert size is not None
        before = _digest(db)
        for n in range(300):  # enough pages for SQLite's automatic checkpoint to try, and be held off
            with writer:
                writer.execute("INSERT INTO t (pair, side, pad) VALUES (?, 'x', randomblob(4000))", (10_000 + n,))
        assert writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[2] == 0  # nothing backfilled
        assert _digest(db) == before
    writer.close()
    assert len(db_rows(db)["t"]) == 2300  # the writes were never lost, only kept in the log


def test_a_reader_holding_the_log_means_a_page_copy(tmp_path: Path) -> None:
    db = _make(tmp_path / "live.db")
    writer = sqlite3.connect(db)
    with writer:
        writer.execute("INSERT INTO t (pair, side) VALUES (-1, 'in the log')")
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()  # pins the log: it cannot be truncated
    try:
        with database.frozen(db) as size:
            assert size is None
        copy = tmp_path / "copy.db"
        database.snapshot(db, copy)  # the backup API instead, still consistent
        assert db_rows(copy) == db_rows(db)
    finally:
        reader.close()
        writer.close()


def test_a_rollback_journal_database_is_copied_page_by_page(tmp_path: Path) -> None:
    db = _make(tmp_path / "live.db", wal=False)
    with database.frozen(db) as size:
        assert size is None
    copy = tmp_path / "copy.db"
    database.snapshot(db, copy)
    assert db_rows(copy) == db_rows(db)


@pytest.mark.parametrize("durable", [False, True])
def test_copies_under_a_busy_writer_never_split_a_transaction(tmp_path: Path, durable: bool, monkeypatch) -> None:
    db = _make(tmp_path / "live.db", rows=0)
    stop = threading.Event()
    committed = [0]
    file_copies = []
    real_copy = database._copy_file

    def counted(*args, **kwargs) -> None:  # observes which way each copy went; the copy is real
        file_copies.append(args[1])
        real_copy(*args, **kwargs)

    monkeypatch.setattr(database, "_copy_file", counted)

    def write() -> None:
        con = sqlite3.connect(db, timeout=30)
        con.execute("PRAGMA synchronous=NORMAL")  # as appliances run WAL; keeps the disk for the copies
        n = 0
        while not stop.is_set():
            with con:
                con.execute("INSERT INTO t (pair, side, pad) VALUES (?, 'debit', randomblob(3000))", (n,))
                con.execute("INSERT INTO t (pair, side, pad) VALUES (?, 'credit', randomblob(3000))", (n,))
            n += 1
            committed[0] = n
            stop.wait(0.001)  # a busy appliance, not a disk benchmark: the database stays small
        con.close()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        for k in range(6):
            seen = committed[0]
            while committed[0] < seen + 20:  # the writer is busy around every copy
                stop.wait(0.005)
            copy = tmp_path / f"copy{k}.db"
            database.snapshot(db, copy, durable=durable)
            assert database.check(copy) is None
            pairs: dict[int, set] = {}
            for _, pair, side, _pad in db_rows(copy)["t"]:
                pairs.setdefault(pair, set()).add(side)
            assert all(sides == {"debit", "credit"} for sides in pairs.values())
    finally:
        stop.set()
        thread.join()
    assert committed[0] > 120
    assert file_copies, "no copy was frozen: the writer never let the log be emptied"


# ------------------------------------------------------------ replace (a restore's last step)


def _staged(tmp_path: Path, live: Path, rows: int) -> Path:
    """A database as a restore stages it: beside the live one, a plain (non-WAL) copy from a backup."""
    source = _make(tmp_path / "from-backup.db", rows=rows)
    staged = live.with_name(".live.db.restore-1")
    database.snapshot(source, staged, durable=True)
    assert staged.read_bytes()[18:20] == b"\x01\x01"
    return staged


def _journal_mode(path: Path) -> str:
    con = sqlite3.connect(path)
    try:
        return con.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        con.close()


def _siblings(live: Path) -> set[str]:
    return {p.name for p in live.parent.iterdir() if p.name.startswith(live.name)}


def test_replace_renames_the_staged_file_in_when_nobody_has_the_database_open(tmp_path: Path) -> None:
    live = _make(tmp_path / "live.db", rows=10)
    old_rows = db_rows(live)
    staged = _staged(tmp_path, live, rows=30)
    new_rows = db_rows(staged)
    new_inode = staged.stat().st_ino
    keep = tmp_path / ".live.db.pre-restore-1"

    assert database.replace(staged, live, keep=keep) is database.Replaced.RENAMED
    assert live.stat().st_ino == new_inode and not staged.exists()
    assert _siblings(live) == {"live.db"}  # no log, index or journal of the old file beside the new one
    assert live.read_bytes()[18:20] == b"\x02\x02"  # WAL mode, as the replaced database was
    assert db_rows(live) == new_rows and database.check(live) is None
    assert _journal_mode(live) == "wal"
    assert db_rows(keep) == old_rows and database.check(keep) is None


def test_replace_copies_into_a_database_another_connection_holds_and_that_connection_stays_valid(
        tmp_path: Path) -> None:
    live = _make(tmp_path / "live.db", rows=10)
    old_rows = db_rows(live)
    staged = _staged(tmp_path, live, rows=30)
    new_rows = db_rows(staged)
    inode = live.stat().st_ino
    service = sqlite3.connect(live)  # the appliance's own connection, idle between its transactions
    service.execute("SELECT count(*) FROM t").fetchone()
    keep = tmp_path / ".live.db.pre-restore-1"
    try:
        assert database.replace(staged, live, keep=keep) is database.Replaced.COPIED
        assert live.stat().st_ino == inode and not staged.exists()
        assert sorted(service.execute("SELECT * FROM t").fetchall(), key=repr) == new_rows["t"]
        with service:
            service.execute("INSERT INTO t (pair, side) VALUES (-1, 'written after the restore')")
    finally:
        service.close()
    assert len(db_rows(live)["t"]) == len(new_rows["t"]) + 1
    assert _journal_mode(live) == "wal" and database.check(live) is None
    assert db_rows(keep) == old_rows and database.check(keep) is None
    assert not keep.with_name(keep.name + ".partial").exists()


def test_replace_copies_into_a_rollback_journal_database(tmp_path: Path) -> None:
    """Idle connections hold no lock in rollback-journal mode, so nothing proves the file is unused."""
    live = _make(tmp_path / "live.db", wal=False, rows=10)
    staged = _staged(tmp_path, live, rows=30)
    new_rows = db_rows(staged)
    inode = live.stat().st_ino
    assert database.replace(staged, live, keep=None) is database.Replaced.COPIED
    assert live.stat().st_ino == inode and db_rows(live) == new_rows
    assert _journal_mode(live) == "delete"


def test_replace_puts_a_database_where_there_was_none(tmp_path: Path) -> None:
    live = tmp_path / "live.db"
    staged = _staged(tmp_path, live, rows=5)
    new_rows = db_rows(staged)
    keep = tmp_path / ".live.db.pre-restore-1"
    assert database.replace(staged, live, keep=keep) is database.Replaced.RENAMED
    assert db_rows(live) == new_rows and not keep.exists() and not staged.exists()


def test_replace_falls_back_to_a_copy_when_the_file_cannot_be_linked(tmp_path: Path, monkeypatch) -> None:
    """Fault injection: a filesystem that refuses hard links (the old file must be kept before the swap)."""
    live = _make(tmp_path / "live.db", rows=10)
    old_rows = db_rows(live)
    staged = _staged(tmp_path, live, rows=30)
    new_rows = db_rows(staged)

    def refuse(*_args, **_kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(database.os, "link", refuse)
    keep = tmp_path / ".live.db.pre-restore-1"
    assert database.replace(staged, live, keep=keep) is database.Replaced.COPIED
    monkeypatch.undo()
    assert db_rows(live) == new_rows and db_rows(keep) == old_rows
    assert _journal_mode(live) == "wal"  # the probe's switch out of WAL was undone


def test_while_replacing_nobody_else_can_open_the_old_file(tmp_path: Path, monkeypatch) -> None:
    """Between the probe and the rename another connection gets 'locked', never the old file's content."""
    live = _make(tmp_path / "live.db", rows=10)
    staged = _staged(tmp_path, live, rows=30)
    seen = []
    real_rename = database.os.rename

    def observed(src, dst):
        if Path(dst) == live:
            other = sqlite3.connect(live, timeout=0.05)
            try:
                other.execute("SELECT count(*) FROM t").fetchone()
                seen.append("read")
            except sqlite3.OperationalError as exc:
                seen.append(str(exc))
            finally:
                other.close()
        real_rename(src, dst)

    monkeypatch.setattr(database.os, "rename", observed)
    assert database.replace(staged, live, keep=None) is database.Replaced.RENAMED
    assert seen == ["database is locked"]
