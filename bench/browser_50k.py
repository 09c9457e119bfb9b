"""Storage browser on a 50,000-entry directory: time to the first entries on screen and the longest
event-loop stall while the browser pages through the whole directory.

Runs the real console headless (App.run_test) on a demo appliance; a coroutine on the App's event
loop sleeps 5 ms at a time and records how late it wakes up (its lateness is the stall).

    .venv/bin/python bench/browser_50k.py [--entries 50000] [--no-local] [--no-nfs]

The NFS run serves the same kind of directory from nfs-ganesha on loopback (started as
tests/nfs_server.py starts it) and browses it through the console's own NFS client. The entries are
made in the export directory before the server starts: the export is never changed behind a running
server's back.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backup.config import load_config  # noqa: E402
from backup.demo import create_demo_appliance  # noqa: E402
from backup.service import BackupService  # noqa: E402
from screens.storage_browser import BrowseLocation, StorageBrowser, local_location, nfs_location  # noqa: E402
from tui.app import BackupConsole  # noqa: E402
from widgets.storage_tree import StorageTree  # noqa: E402

TICK = 0.005


class StallMeter:
    """Wakes every TICK seconds on the event loop; the worst lateness is the longest stall."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + TICK
            await asyncio.sleep(TICK)
            self.worst = max(self.worst, loop.time() - expected)

    def start(self) -> None:
        self.worst = 0.0
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> float:
        assert self._task is not None
        self._task.cancel()
        return self.worst


def make_directory(where: Path, entries: int) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    for i in range(entries):
        with open(where / f"entry-{i:06d}.dat", "wb"):
            pass
    return where


async def measure(app: BackupConsole, location: BrowseLocation, entries: int) -> dict[str, float]:
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        meter = StallMeter()
        meter.start()
        started = time.perf_counter()
        app.push_screen(StorageBrowser(location))
        tree: StorageTree | None = None
        while True:
            await asyncio.sleep(0.001)
            screen = app.screen
            if isinstance(screen, StorageBrowser):
                tree = screen.query_one(StorageTree)
                if tree.loaded:
                    break
            if time.perf_counter() - started > 30:
                raise SystemExit("no entries after 30 s")
        loaded = time.perf_counter() - started
        await pilot.pause()  # the frame that shows them
        shown = time.perf_counter() - started
        first_stall = meter.worst
        assert tree is not None
        # Page through everything the way an operator would: End, End, End...
        paging_started = time.perf_counter()
        while not tree.complete:
            await pilot.press("end")
            await asyncio.sleep(0.002)
            if time.perf_counter() - paging_started > 120:
                raise SystemExit("paging did not finish in 120 s")
        paged = time.perf_counter() - paging_started
        worst = meter.stop()
        assert tree.loaded == entries, (tree.loaded, entries)
        return {"first_page_loaded_ms": loaded * 1000, "first_entries_on_screen_ms": shown * 1000,
                "stall_while_opening_ms": first_stall * 1000, "page_through_all_s": paged,
                "longest_stall_ms": worst * 1000}


def report(label: str, numbers: dict[str, float]) -> None:
    print(f"{label}:")
    print(f"  first page listed          {numbers['first_page_loaded_ms']:8.1f} ms")
    print(f"  first entries on screen    {numbers['first_entries_on_screen_ms']:8.1f} ms   (target < 300 ms)")
    print(f"  longest stall, opening     {numbers['stall_while_opening_ms']:8.1f} ms")
    print(f"  paging through every entry {numbers['page_through_all_s']:8.2f} s")
    print(f"  longest stall, paging      {numbers['longest_stall_ms']:8.1f} ms   (target < 50 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--no-local", action="store_true", help="skip the local directory run")
    parser.add_argument("--no-nfs", action="store_true", help="skip the NFS run")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="browser-bench-"))
    try:
        config = load_config(create_demo_appliance(tmp / "appliance"))
        if not args.no_local:
            started = time.perf_counter()
            directory = make_directory(tmp / "big", args.entries)
            print(f"created {args.entries} entries in {time.perf_counter() - started:.1f} s ({directory})")
            report(f"local directory, {args.entries} entries",
                   asyncio.run(measure(console(config), local_location(directory), args.entries)))
        if not args.no_nfs:
            report(f"NFS share (ganesha on loopback, NFSv4.1), {args.entries} entries",
                   run_nfs(config, tmp / "nfs", args.entries))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def console(config) -> BackupConsole:
    return BackupConsole(config, service=BackupService(config), refresh_interval=None)


def run_nfs(config, root: Path, entries: int) -> dict[str, float]:
    """Serve `entries` files from ganesha on loopback and browse them over NFS."""
    from tests.nfs_server import NfsServer

    root.mkdir(parents=True)
    server = NfsServer(root)
    started = time.perf_counter()
    make_directory(server.export_dir / "big", entries)  # before the server starts
    print(f"created {entries} entries in {time.perf_counter() - started:.1f} s (export {server.export_dir})")
    server.start()
    try:
        return asyncio.run(measure(console(config), nfs_location(server.url("big"), "4.1"), entries))
    finally:
        server.stop()


if __name__ == "__main__":
    os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
    main()
