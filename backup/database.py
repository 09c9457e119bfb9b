"""Provides consistent copies of the internal SQLite database, taken and put back live.

Both directions use SQLite's online backup API, so the appliance may keep its
own connections open: a snapshot sees one committed state, and a restore
replaces the whole database in one transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from backup.errors import BackupError, ConfigError

BUSY_TIMEOUT_MS = 30_000


def snapshot(source: Path, dest: Path, *, durable: bool = False) -> int:
    """Copy a consistent snapshot of the database at `source` into the new file `dest`; return its size.

    `durable` makes the copy survive a crash (a rollback copy); a temporary copy for a backup need not.
    """
    if not source.exists():
        raise ConfigError(f"The internal database {source} does not exist: check [appliance] database in the configuration.")
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise BackupError(f"The internal database {source} cannot be opened ({exc}).") from None
    try:
        dst = sqlite3.connect(dest)
        try:
            if not durable:  # no journal, no fsync: a crash just leaves a file recovery removes
                dst.execute("PRAGMA journal_mode=OFF")
                dst.execute("PRAGMA synchronous=OFF")
            # One step: the whole copy is read inside a single read transaction, so it is consistent
            # even while the appliance writes (WAL lets it keep writing meanwhile).
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"The internal database {source} could not be copied ({exc}): is it locked by a long write?") from None
    finally:
        src.close()
    return dest.stat().st_size


def logical_size(source: Path) -> int:
    """The database's size as a snapshot of it would be now (its WAL included), without copying it."""
    try:
        con = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            pages, = con.execute("PRAGMA page_count").fetchone()
            size, = con.execute("PRAGMA page_size").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return source.stat().st_size if source.exists() else 0
    return pages * size


class BackgroundSnapshot:
    """snapshot() on a thread of its own, so the copy overlaps with archiving the other components.

    SQLite's backup step releases the GIL; `result()` waits and returns the size or raises.
    """

    def __init__(self, source: Path, dest: Path, *, durable: bool = False) -> None:
        self._size = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(source, dest, durable), name="backup-db-snapshot",
                                        daemon=True)
        self._thread.start()

    def _run(self, source: Path, dest: Path, durable: bool) -> None:
        try:
            self._size = snapshot(source, dest, durable=durable)
        except BaseException as exc:  # raised in the caller by result()
            self._error = exc

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> int:
        self.wait()
        if self._error is not None:
            raise self._error
        return self._size


def opens(path: Path) -> str | None:
    """None if `path` opens as an SQLite database whose schema reads, else what SQLite said.

    A cheap check for a restore: the bytes were already authenticated, so a
    full integrity_check (seconds per GiB) would only re-prove the snapshot.
    """
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        return str(exc)
    return None


def check(path: Path) -> str | None:
    """None if the database file at `path` passes integrity_check, else what SQLite reported."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = con.execute("PRAGMA integrity_check").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        return str(exc)
    result = "; ".join(r[0] for r in rows)
    return None if result == "ok" else result


def restore_into(staged: Path, live: Path) -> None:
    """Replace the contents of the live database with the staged copy, in one transaction."""
    src = sqlite3.connect(f"file:{staged}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(live, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            wal = dst.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            if wal:
                # The copy goes through the WAL; NORMAL skips the commit's fsync of the WAL because
                # the checkpoint below writes the pages into the database and fsyncs it.
                dst.execute("PRAGMA synchronous=NORMAL")
            src.backup(dst, pages=-1)
            if wal:
                dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            dst.close()
    finally:
        src.close()
