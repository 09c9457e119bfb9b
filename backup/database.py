"""Provides consistent copies of the internal SQLite database, taken and put back live.

The appliance may keep its own connections open throughout. A snapshot sees
one committed state: the database file itself while frozen() holds (WAL mode,
the log emptied), else a copy by SQLite's online backup API. A restore puts
a database back with replace(): by renaming the staged file over the live
one when SQLite proves no connection has it open, else through the backup
API in one transaction, which keeps the appliance's connections valid.
Files are opened by URI (read_only, existing): nothing here creates a
database where one was missing.
"""

from __future__ import annotations

import enum
import os
import sqlite3
import stat
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from backup.errors import BackupError, ConfigError
from backup.fsutil import fsync_dir

BUSY_TIMEOUT_MS = 30_000
FREEZE_WAIT_S = 1.0
"""How long freezing waits for the appliance's own readers and writers before copying page by page instead."""
COPY_STEP = 8 << 20
ALONE_WAIT_S = 0.2
"""How long replace() waits for the live database's lock before writing into it through SQLite instead."""


def read_only(path: Path) -> str:
    """The SQLite URI that opens `path` read-only, percent-encoded: a '#', '?' or '%' is part of a file's name."""
    return Path(path).absolute().as_uri() + "?mode=ro"


def existing(path: Path) -> str:
    """The SQLite URI that opens `path` for reading and writing, never creating it (see read_only)."""
    return Path(path).absolute().as_uri() + "?mode=rw"


@contextmanager
def frozen(source: Path) -> Iterator[int | None]:
    """Hold a read transaction under which the database file itself is a consistent snapshot.

    In WAL mode, once the log is checkpointed and truncated, a reader that
    starts with an empty log reads the database file alone, and while it
    reads no checkpoint may write into that file (SQLite's WAL_READ_LOCK(0)):
    the file stays byte for byte the snapshot however much the appliance
    writes meanwhile (its commits go to the log). Copying the file then
    costs a few large reads instead of a page-by-page copy.

    Yields the file's size while that holds, or None when it cannot be had
    (not WAL mode, a checkpoint the appliance's own transactions kept from
    finishing, a log written to before the read began): then use snapshot().
    """
    try:
        con = sqlite3.connect(existing(source), uri=True, timeout=FREEZE_WAIT_S, isolation_level=None)
    except sqlite3.Error:
        yield None
        return
    try:
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                yield None
                return
            busy, _, _ = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                yield None
                return
            con.execute("BEGIN")
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the read transaction starts here
            pages, = con.execute("PRAGMA page_count").fetchone()
            page_size, = con.execute("PRAGMA page_size").fetchone()
        except sqlite3.Error:
            yield None
            return
        # The read began after the log was emptied; if it is still empty now, no frame is part of
        # this snapshot, so the snapshot is the file. (A log that is not empty may hold frames from
        # before the read began: then the file alone is not the snapshot.)
        log = source.with_name(source.name + "-wal")
        size = source.stat().st_size
        if (log.exists() and log.stat().st_size) or size != pages * page_size:
            yield None
            return
        yield size
    finally:
        con.close()  # ends the read transaction


PLAIN = b"\x01\x01"
WAL = b"\x02\x02"
"""Header bytes 18 and 19 of a database in rollback-journal mode and in WAL mode."""


def plain_header(head: bytes) -> bytes:
    """The start of a database file as a copy of it must be stored: no longer in WAL mode.

    Header bytes 18 and 19 are 2 in WAL mode; 1 makes the copy a plain database that opens
    anywhere without a log beside it, as journal_mode=DELETE would (SQLite file format, 1.3).
    """
    return _with_mode(head, PLAIN)


def _with_mode(head: bytes, mode: bytes) -> bytes:
    if len(head) < 20 or head[18:20] not in (PLAIN, WAL):
        return head
    return head[:18] + mode + head[20:]


def journal_mode(path: Path) -> str:
    """"wal" or "rollback": the mode the database file's header records (read without a connection or a lock)."""
    with open(path, "rb") as f:
        return "wal" if f.read(20)[18:20] == WAL else "rollback"


def keep_wal_mode(staged: Path) -> None:
    """Make a staged copy (stored in rollback-journal mode) open in WAL mode where replace() renames it in.

    Where no live database exists, replace() renames the staged file in as
    it is: without this the database the appliance ran in WAL mode would
    come back in rollback-journal mode, and every later backup would copy
    it under a read lock that holds the appliance's writers back.
    """
    _set_mode(staged, WAL)


def _set_mode(path: Path, mode: bytes) -> None:
    """Put a closed database file into WAL or rollback-journal mode (its header alone says which), durably."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        head = os.pread(fd, 20, 0)
        changed = _with_mode(head, mode)
        if changed != head:
            os.pwrite(fd, changed, 0)
            os.fsync(fd)
    finally:
        os.close(fd)


def _copy_file(source: Path, dest: Path, size: int, *, durable: bool) -> None:
    with source.open("rb") as src, dest.open("wb") as dst:
        done = 0
        while done < size:
            copied = os.copy_file_range(src.fileno(), dst.fileno(), min(COPY_STEP, size - done))
            if not copied:
                raise BackupError(f"The internal database {source} ended while it was copied; try again.")
            done += copied
        os.pwrite(dst.fileno(), plain_header(os.pread(src.fileno(), 100, 0)), 0)
        if durable:
            os.fsync(dst.fileno())


def snapshot(source: Path, dest: Path, *, durable: bool = False) -> int:
    """Copy a consistent snapshot of the database at `source` into the new file `dest`; return its size.

    A file copy under frozen() where it can be had, else SQLite's backup API.
    `durable` makes the copy survive a crash (a rollback copy); a temporary copy for a backup need not.
    """
    if not source.exists():
        raise ConfigError(f"The internal database {source} does not exist: check [appliance] database in the configuration.")
    with frozen(source) as size:
        if size is not None:
            try:
                _copy_file(source, dest, size, durable=durable)
            except OSError as exc:
                raise BackupError(f"The internal database {source} could not be copied to {dest} "
                                  f"({exc.strerror or exc}).") from None
            return size
    return _backup_api_copy(source, dest, durable=durable)


def _backup_api_copy(source: Path, dest: Path, *, durable: bool) -> int:
    try:
        src = sqlite3.connect(read_only(source), uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
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
        con = sqlite3.connect(read_only(source), uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
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
        con = sqlite3.connect(read_only(path), uri=True)
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
        con = sqlite3.connect(read_only(path), uri=True)
        try:
            rows = con.execute("PRAGMA integrity_check").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        return str(exc)
    result = "; ".join(r[0] for r in rows)
    return None if result == "ok" else result


class Replaced(enum.Enum):
    """How replace() put the staged database in place."""

    RENAMED = "renamed"
    """The staged file took the live file's name: nothing had the live database open."""
    COPIED = "copied"
    """Written into the live file through SQLite, in one transaction: open connections stay valid."""


def replace(staged: Path, live: Path, *, keep: Path | None) -> Replaced:
    """Make the database file `staged` (in live's directory) the live database; `staged` is used up.

    `keep`, a path in live's directory, receives the replaced database whole
    before anything changes (None: it is not kept). In WAL mode (the
    appliance's) SQLite proves whether any connection has the database open:
    leaving WAL mode needs the only connection. When this process gets it,
    it holds the file locked and the staged file is renamed over it, and
    the old file is kept by a hard link: no byte is copied. Otherwise (the
    appliance's services still connected, a rollback-journal database, a
    filesystem without hard links) the content is written through SQLite's
    backup API in one transaction, the way every connection sees it at once.
    Either way a crash leaves the old or the new database, never a mix.
    """
    if not live.exists():  # in the journal mode its header says (see keep_wal_mode)
        os.rename(staged, live)
        fsync_dir(live.parent)
        return Replaced.RENAMED
    with _alone(live) as con:
        if con is not None:
            try:
                if keep is not None:
                    os.link(live, keep)
                    fsync_dir(live.parent)
                _take_owner_and_mode(staged, live)
                _set_mode(staged, WAL)
                os.rename(staged, live)
            except BaseException as exc:  # nothing was replaced: undo, then copy instead (or stop)
                if keep is not None:
                    keep.unlink(missing_ok=True)
                _set_mode(staged, PLAIN)
                con.execute("PRAGMA journal_mode=WAL")  # as the live database was
                if not isinstance(exc, OSError):
                    raise
            else:
                fsync_dir(live.parent)
                return Replaced.RENAMED
    if keep is not None:
        partial = keep.with_name(keep.name + ".partial")
        snapshot(live, partial, durable=True)
        os.rename(partial, keep)
        fsync_dir(live.parent)
    _set_mode(staged, PLAIN)  # read without a log: in WAL mode the reader would leave one beside it
    restore_into(staged, live)
    staged.unlink()
    return Replaced.COPIED


def _take_owner_and_mode(staged: Path, live: Path) -> None:
    """Give `staged` the live file's owner and mode, as writing into the live file (the copy) keeps them.

    The appliance's services may run as their own user: a database renamed
    in with the backup's owner and mode could be closed to them.
    """
    st = os.stat(live)
    if os.geteuid() == 0:
        os.chown(staged, st.st_uid, st.st_gid)
    os.chmod(staged, stat.S_IMODE(st.st_mode))


@contextmanager
def _alone(live: Path) -> Iterator[sqlite3.Connection | None]:
    """Yield a connection that alone holds the WAL database `live`, locked, with no file beside it; else None.

    The connection leaves WAL mode under the exclusive locking mode: SQLite
    allows that only to the one connection the database has, then empties
    the log and removes it, and the lock stays until close. The old file
    alone then holds the whole database; its committed journal, if one is
    left, is removed, so nothing of it can be applied to the file renamed in.
    A connection that tries to read meanwhile waits ("database is locked").
    One that had opened the file before the rename then reads the old file,
    and SQLite refuses its writes (the file was moved): docs/SECURITY.md 3.6.
    Nothing here opens `live` other than through SQLite: closing another
    descriptor of it would drop this process's locks on it (POSIX locks).
    """
    con = None
    try:
        con = sqlite3.connect(existing(live), uri=True, timeout=ALONE_WAIT_S, isolation_level=None)
        con.execute("PRAGMA locking_mode=EXCLUSIVE")  # before the first read: the lock, once had, stays
        alone = (con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
                 and con.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete")
    except sqlite3.Error:  # another connection has it open (locked), or it does not open: copy instead
        alone = False
    if not alone or con is None:
        if con is not None:
            con.close()
        yield None
        return
    try:
        for suffix in ("-journal", "-wal", "-shm"):
            live.with_name(live.name + suffix).unlink(missing_ok=True)
        yield con
    finally:
        con.close()


def in_wal_mode(path: Path) -> bool:
    """Whether the database file `path` is in WAL mode (False when it does not exist or open)."""
    return _journal_mode(path) == "wal"


def put_back_in_wal_mode(live: Path) -> None:
    """After an undone replace(): return `live` to WAL mode, which _alone() may have taken it out of.

    A crash between that step and the rename leaves the old content in
    rollback-journal mode. The content is right either way; if SQLite
    cannot switch it now (another connection's lock beyond the busy
    timeout), it stays as it is.
    """
    _journal_mode(live, "WAL")


def _journal_mode(path: Path, new: str | None = None) -> str | None:
    """The database's journal mode after setting it to `new` (if given); None when it does not open."""
    try:
        con = sqlite3.connect(existing(path), uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            return con.execute("PRAGMA journal_mode" + (f"={new}" if new else "")).fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return None


def restore_into(staged: Path, live: Path) -> None:
    """Replace the contents of the live database with the staged copy, in one transaction."""
    src = sqlite3.connect(read_only(staged), uri=True)
    try:
        dst = sqlite3.connect(existing(live), uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
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
