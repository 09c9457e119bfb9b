"""Ten backups and ten verifies in a row, with the console open and another process writing the database.

The backups are started the way an operator starts them: the console's `b`
key (its own worker, its own service). Each is then verified through the
same service (deep: every file against its SHA-256) on a thread, while the
console keeps running, and its database snapshot is taken out of the backup
and checked by SQLite. Meanwhile a separate process inserts rows in a loop
in WAL mode, as the appliance's own service does.

Leaks are looked for where they would show after ten rounds: open file
descriptors (`/proc/self/fd`), live Python memory blocks
(`sys.getallocatedblocks`), the C allocator's bytes in use (glibc
`mallinfo2`) and resident memory (`VmRSS`, see RSS_GROWTH_MIB for why it is
not the leak detector). The figures are printed (`-s`);
`bench/load.py` runs the same on a bigger state.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from backup import database
from backup.archive import ArchiveReader
from backup.config import Config
from backup.payload import PayloadConsumer, walk_payload
from backup.progress import Tracker
from tests.test_hostile_backup import tiny_appliance
from tests.tui_fixtures import FAST_KDF, PASSPHRASE, make_app
from widgets.messages import BackupFailed, BackupFinished

ROUNDS = 10
MIB_BYTES = 1 << 20
FD_ALLOWANCE = 2
"""Descriptors a later round may hold beyond the first round's count without it being a leak: the
first round already opened everything a round opens (journal, lock, storage, SQLite), so a steady
state needs none; two leave room for a worker thread's descriptor (the console's status worker or
the snapshot thread) that happens to be open at the instant of counting. A leak of one descriptor
per backup or per verify would be nine more by round ten."""
MALLOC_GROWTH_MIB = 2
"""Bytes the C allocator has handed out and not had back (glibc mallinfo2, all arenas) allowed to grow
from round 2 to round 10. Each round allocates two 1 MiB chunk buffers per reader and writer, zstd
contexts and a 1 MiB tar buffer, and frees them at its end; measured, the in-use total moves by about
0.1 MiB over eight rounds. Keeping one chunk buffer per round would be 8 MiB by round ten."""
BLOCK_GROWTH = 20_000
"""Live Python memory blocks (after a full collection) allowed to grow from round 2 to round 10: the
journal records, console notifications and log lines of sixteen more runs (measured: about 5,000).
Keeping a round's tar members, progress messages or reader would be far more."""
RSS_GROWTH_MIB = 48
"""Resident memory allowed to grow from round 2 to round 10. RSS is not a leak detector here: glibc
gives each worker thread an arena of its own (up to 8 per core), the 1 MiB buffers come from those
arenas once the first one is freed (glibc then raises its mmap threshold), and an arena keeps what
was freed for reuse. So RSS climbs in steps of a few MiB while new threads get arenas, then levels
off: measured, +12 to +24 MiB from round 2 to 10 and about +6 MiB more from 10 to 30, while the
malloc in-use figure above stays flat; with MALLOC_ARENA_MAX=1 the same run grows 6.6 MiB. The bound
is twice the worst growth measured; what catches a leak is the two figures above."""

WRITER = r"""
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
con.execute("PRAGMA journal_mode=WAL")
con.execute("CREATE TABLE IF NOT EXISTS load (id INTEGER PRIMARY KEY, at REAL, payload TEXT)")
print("ready", flush=True)
while True:
    con.execute("BEGIN IMMEDIATE")
    con.executemany("INSERT INTO load (at, payload) VALUES (?, ?)", [(time.time(), "x" * 200)] * 20)
    con.execute("COMMIT")
    time.sleep(0.002)
"""


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1))


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _MallInfo2


def malloc_in_use() -> int:
    """Bytes the C allocator has handed out and not had back, over all its arenas (glibc mallinfo2):
    unlike RSS, this does not count freed memory an arena keeps for reuse."""
    info = _libc.mallinfo2()
    return info.uordblks + info.hblkhd


def start_writer(database: Path) -> subprocess.Popen:
    """A process inserting 20 rows per transaction in a loop into `database`; ready when this returns."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(database)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    return writer


class DatabaseCopy(PayloadConsumer):
    """Writes the backup's database member to `dest` (and nothing else) while the payload is walked."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.found = False

    def file(self, component, inner, member):
        if component != "database":
            return None
        self.found = True
        return open(self.dest, "wb")

    def file_done(self, component, inner, member, handle) -> None:
        handle.close()


def database_in_backup(service, name: str, scratch: Path) -> tuple[str, int]:
    """SQLite's integrity check of the backup's database snapshot, and its count of writer rows."""
    copy = DatabaseCopy(scratch / f"{name}.db")
    with service.storage.open(name) as source:
        walk_payload(ArchiveReader(source, kek=service.secret.kek()), Tracker("check", None, None), copy)
    assert copy.found
    con = sqlite3.connect(database.read_only(copy.dest), uri=True)
    try:
        check = con.execute("PRAGMA integrity_check").fetchone()[0]
        rows = con.execute("SELECT count(*) FROM load").fetchone()[0]
    finally:
        con.close()
    copy.dest.unlink()
    return check, rows


@dataclass
class LoadFigures:
    """What one load run measured, round by round (index 0 is round 1)."""

    fds: list[int] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    malloc: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    writer_rows: int = 0

    def table(self) -> str:
        lines = ["round  fds  VmRSS KiB  malloc KiB  py blocks  db rows in backup  backup bytes"]
        for i in range(len(self.fds)):
            lines.append(f"{i + 1:5}  {self.fds[i]:3}  {self.rss_kib[i]:9}  {self.malloc[i] >> 10:10}  "
                         f"{self.blocks[i]:9}  {self.rows[i]:17}  {self.sizes[i]:12}")
        lines.append(f"the writer inserted {self.writer_rows} rows during the run")
        return "\n".join(lines)


async def run_load(config: Config, rounds: int = ROUNDS, *, report=None) -> LoadFigures:
    """Back up with the console's `b` key and verify, `rounds` times, while a writer process runs."""
    figures = LoadFigures()
    outcomes: list = []

    def hook(message) -> None:
        if isinstance(message, (BackupFinished, BackupFailed)):
            outcomes.append(message)

    writer = start_writer(config.appliance.database)
    app = make_app(config)
    try:
        with tempfile.TemporaryDirectory(prefix="load-") as scratch:
            async with app.run_test(size=(80, 24), message_hook=hook) as pilot:
                await pilot.pause()
                for i in range(rounds):
                    await pilot.press("b")
                    for worker in [w for w in app.workers if w.group == "backup"]:
                        await worker.wait()
                    while len(outcomes) <= i or app.backup_running:
                        await pilot.pause()
                    outcome = outcomes[i]
                    assert isinstance(outcome, BackupFinished), getattr(outcome, "sentence", outcome)
                    name = outcome.result.name
                    verified = await asyncio.to_thread(app.service.verify, name, deep=True)
                    assert verified.files > 0
                    check, rows = await asyncio.to_thread(database_in_backup, app.service, name, Path(scratch))
                    assert check == "ok", (name, check)
                    gc.collect()
                    figures.names.append(name)
                    figures.sizes.append(outcome.result.size)
                    figures.rows.append(rows)
                    figures.fds.append(open_fds())
                    figures.rss_kib.append(rss_kib())
                    figures.blocks.append(sys.getallocatedblocks())
                    figures.malloc.append(malloc_in_use())
                    if report is not None:
                        report(f"round {i + 1}: {name} {outcome.result.size} bytes, {rows} writer rows, "
                               f"fds {figures.fds[-1]}, VmRSS {figures.rss_kib[-1]} KiB")
                await app.workers.wait_for_complete()
    finally:
        writer.terminate()
        writer.wait()
        if writer.stdout is not None:
            writer.stdout.close()
    con = sqlite3.connect(config.appliance.database)
    try:
        figures.writer_rows = con.execute("SELECT count(*) FROM load").fetchone()[0]
    finally:
        con.close()
    return figures


async def test_ten_backups_and_verifies_under_a_busy_database_leak_nothing(tmp_path: Path) -> None:
    from backup.service import BackupService

    config = tiny_appliance(tmp_path / "appliance")
    BackupService(config, kdf_params=FAST_KDF).set_secret(PASSPHRASE)
    figures = await run_load(config)
    print("\n" + figures.table())

    assert len(set(figures.names)) == ROUNDS
    # Every snapshot is a consistent database taken while the writer ran: each later one holds more rows.
    assert all(a < b for a, b in zip(figures.rows, figures.rows[1:])), figures.rows
    assert figures.writer_rows > figures.rows[-1] > 0
    assert figures.fds[-1] <= figures.fds[0] + FD_ALLOWANCE, figures.fds
    assert figures.malloc[-1] - figures.malloc[1] <= MALLOC_GROWTH_MIB << 20, figures.malloc
    assert figures.blocks[-1] - figures.blocks[1] <= BLOCK_GROWTH, figures.blocks
    assert figures.rss_kib[-1] - figures.rss_kib[1] <= RSS_GROWTH_MIB * 1024, figures.rss_kib


def test_the_malloc_figure_sees_a_kept_buffer() -> None:
    """Control for MALLOC_GROWTH_MIB: 4 MiB kept in Python objects show up in the allocator's in-use bytes
    (less a little that threads left by other tests may free meanwhile)."""
    before = malloc_in_use()
    kept = [bytearray(MIB_BYTES) for _ in range(4)]
    assert malloc_in_use() - before >= 3.5 * MIB_BYTES
    del kept
