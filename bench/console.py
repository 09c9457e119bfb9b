"""Console figures: start to first full screen, and the longest event-loop stall while a backup runs.

    .venv/bin/python bench/console.py [--config CFG] [--starts 5]

Without --config it uses the 1 GiB state `bench/make_state.py` generates (made
if missing, as `make bench` does). Start-up is timed from launching the real
`appliance-backup` in tmux (80x24, TERM=linux) until the Status table shows
its values, with the project's bytecode compiled first, as an installed
package has it (this machine sets PYTHONDONTWRITEBYTECODE: without the
.pyc files every start compiled our modules again, about 35 ms of 0.45 s).
The stall is measured in a headless console (Textual's test
driver) by a 10 ms timer: how late each tick fires while `b` runs a backup.
The targets (issue "Speed") are under 0.5 s and under 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import statistics
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PACKAGES = sorted({name.split(".")[0] for name in
                   tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]})
BIN = Path(sys.executable).parent / "appliance-backup"
PASSPHRASE = "bench passphrase, not secret"


def default_config() -> Path:
    out = ROOT / "bench" / "out"
    config = out / "state-1024m-seed1" / "config.toml"
    if not (out / "state-1024m-seed1" / "make_state.json").exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "make_state.py"), str(config.parent)], check=True)
    return config


def start_times(config: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        socket = f"abk-bench-{uuid.uuid4().hex[:8]}"

        def tmux(*args: str) -> str:
            return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True).stdout

        started = time.monotonic()
        tmux("new-session", "-d", "-s", "s", "-x", "80", "-y", "24", "env", "TERM=linux", str(BIN), "--config", str(config))
        try:
            while "Current Backup Status" not in (screen := tmux("capture-pane", "-p", "-t", "s")) or \
                    "Storage" not in screen:
                if time.monotonic() - started > 10:
                    raise SystemExit("the console did not show the Status screen within 10 s:\n" + screen)
                time.sleep(0.005)
            times.append(time.monotonic() - started)
        finally:
            tmux("kill-server")
    return times


async def stall_during_backup(config_path: Path) -> tuple[float, float, float, float]:
    from backup.config import load_config
    from backup.service import BackupService
    from tui.app import BackupConsole

    config = load_config(config_path)
    service = BackupService(config)
    if not service.secret_info().is_set:
        service.set_secret(PASSPHRASE)

    class Measured(BackupConsole):
        lateness: list[float] = []

        def on_mount(self) -> None:
            super().on_mount()
            self._due = time.perf_counter() + 0.01
            self.set_interval(0.01, self._tick)

        def _tick(self) -> None:
            now = time.perf_counter()
            self.lateness.append(now - self._due)
            self._due = now + 0.01

    app = Measured(config, service=service)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.5)
        app.lateness.clear()
        started = time.perf_counter()
        await pilot.press("b")
        await pilot.pause(0.2)
        while app.backup_running:
            await asyncio.sleep(0.05)
        took = time.perf_counter() - started
    ticks = sorted(app.lateness)
    return took, ticks[-1], ticks[int(len(ticks) * 0.99)], statistics.median(ticks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="an appliance's config.toml (default: the bench state)")
    parser.add_argument("--starts", type=int, default=5, help="how many starts to time (default 5)")
    args = parser.parse_args()
    config = args.config or default_config()
    for package in PACKAGES:  # the Makefile does this too; here for a run without make
        if not compileall.compile_dir(ROOT / package, quiet=1):
            raise SystemExit(f"compiling {package} failed")
    times = start_times(config, args.starts)
    print(f"start to first Status screen: median {statistics.median(times) * 1000:.0f} ms "
          f"(runs: {', '.join(f'{t * 1000:.0f}' for t in times)} ms; target < 500 ms)")
    took, worst, p99, median = asyncio.run(stall_during_backup(config))
    print(f"event-loop stall during a {took:.1f} s backup: longest {worst * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
          f"median {median * 1000:.1f} ms (target < 50 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
