"""Comparisons the core tests share: whole trees and whole databases; authentic hand-made backups; hang guards."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import sqlite3
import stat
import tarfile
from pathlib import Path
from typing import Iterator

import zstandard

from backup import database
from backup.archive import ArchiveWriter
from backup.config import Config


def tree_digest(root: Path) -> dict[str, tuple]:
    """Every entry below `root`: kind, permission bits and content (or link target)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def db_rows(path: Path) -> dict[str, list]:
    con = sqlite3.connect(database.read_only(path), uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {t: sorted(con.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
    finally:
        con.close()


def appliance_state(config: Config) -> tuple:
    """Everything a backup covers, in a comparable form."""
    a = config.appliance
    return tree_digest(a.firmware), tree_digest(a.system), db_rows(a.database)


def mutate_appliance(config: Config) -> None:
    """Change every component, as an operator's work would between backup and restore."""
    a = config.appliance
    (a.firmware / "added-after-backup.conf").write_text("new = 1\n")
    first = sorted(p for p in a.system.rglob("*") if p.is_file())[0]
    first.write_text("changed after the backup\n")
    con = sqlite3.connect(a.database)
    table = con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name").fetchone()[0]
    con.execute(f'DELETE FROM "{table}"')
    con.commit()
    con.close()


def sealed_backup(service, members: list[tuple[tarfile.TarInfo, bytes]]) -> str:
    """A backup sealed with the appliance's own key whose payload is exactly `members`, in order.

    What only a writer holding the DMS could make: for tests of what a reader checks beyond the seal.
    """
    name = service.new_backup_name(service.clock())
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    out = service.storage.create(name)
    writer = ArchiveWriter(out, service.secret.kek())
    writer.write(zstandard.ZstdCompressor(write_checksum=True).compress(raw.getvalue()))
    writer.close()
    out.commit()
    return name


@contextlib.contextmanager
def fails_after(seconds: int, what: str) -> Iterator[None]:
    """Turn a hang into a test failure: SIGALRM interrupts a pure-Python loop after `seconds`."""
    def give_up(signum, frame):
        raise AssertionError(f"{what} took more than {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
