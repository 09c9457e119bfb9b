"""Shared fixtures and helpers of the console tests: apps on real demo appliances, fixed clocks, screen text."""

from __future__ import annotations

import io
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from rich.console import Console

from backup.config import Config, load_config
from backup.demo import create_demo_appliance, write_appliance_config
from backup.journal import RunJournal
from backup.service import BackupService
from backup.storage.local import LocalStorage
from tests.common import FAST_KDF, PASSPHRASE  # noqa: F401 - the console tests' names for them
from tui.app import BackupConsole

FIXED_NOW = datetime(2024, 6, 3, 9, 30, 0, tzinfo=timezone.utc)
"""The clock of every snapshot: timestamps and "ago" texts never change."""
FIXED_STORAGE = "local directory /srv/appliance-backups"
"""What snapshots show as the storage, instead of a tmp_path that differs per run."""


def fixed_clock() -> datetime:
    return FIXED_NOW


def make_app(config: Config, *, clock=None, fixed_storage: bool = False, serial: bool = False,
             theme: str | None = None, run_schedule: bool = False) -> BackupConsole:
    """A console on `config` with small KDF parameters, no refresh timer and no cursor blink.

    It runs scheduled backups only when `run_schedule` (a test of that says so)."""
    storage = None
    if fixed_storage:
        storage = LocalStorage(config.storage.path)
        storage.description = FIXED_STORAGE
    service = BackupService(config, kdf_params=FAST_KDF, storage=storage,
                            **({"clock": clock} if clock is not None else {}))
    return BackupConsole(config, service=service, clock=clock, serial=serial, theme=theme,
                         refresh_interval=None, run_schedule=run_schedule)


def write_history(config: Config, now: datetime = FIXED_NOW) -> None:
    """A week of daily backups with fixed times and sizes, and a failed last attempt."""
    journal = RunJournal(config.state_dir)
    sizes = [3_801_000, 3_812_500, 3_830_100, 3_829_000, 3_861_750, 3_902_300, 3_940_800]
    for day, size in enumerate(sizes):
        start = now - timedelta(days=7 - day, hours=7, minutes=30)
        run = journal.start("backup", now=start, name=f"demo-appliance-{start:%Y%m%dT%H%M%SZ}-00000{day}.abk")
        journal.end(run, "ok", now=start + timedelta(seconds=41 + day), size=size)
    start = now - timedelta(hours=3)
    run = journal.start("backup", now=start)
    journal.end(run, "failed", now=start + timedelta(seconds=2), error=(
        "The storage local directory /srv/appliance-backups is full (0 bytes free): "
        "free space there or choose another storage."))


def screen_text(app: BackupConsole) -> str:
    """The screen as plain text, line by line, as the operator sees it."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory) -> Path:
    """One demo appliance per session; each test gets a copy (making one takes ~0.3 s)."""
    root = tmp_path_factory.mktemp("demo-template") / "appliance"
    create_demo_appliance(root)
    return root


@pytest.fixture
def config(demo_template: Path, tmp_path: Path) -> Config:
    """A fresh demo appliance in tmp_path (real files, real SQLite), no DMS set."""
    root = tmp_path / "appliance"
    shutil.copytree(demo_template, root, symlinks=True)
    write_appliance_config(root / "config.toml", name="demo-appliance", firmware=root / "firmware",
                           system=root / "system", database=root / "internal.db", state_dir=root / "state",
                           storage_dir=root / "backups")
    return load_config(root / "config.toml")


@pytest.fixture
def config_with_dms(config: Config) -> Config:
    """The demo appliance with its DMS set (at FIXED_NOW)."""
    BackupService(config, kdf_params=FAST_KDF, clock=fixed_clock).set_secret(PASSPHRASE)
    return config


async def settle(pilot) -> None:
    """Let every worker finish and every message they posted be handled (thrice: a result may start a refresh)."""
    for _ in range(3):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


def shown(app: BackupConsole) -> str:
    """The screen's words, with line breaks and runs of spaces folded (wrapped sentences stay whole)."""
    return " ".join(screen_text(app).split())


def text_of(app: BackupConsole, selector: str) -> str:
    """The words one widget of the current screen renders."""
    return " ".join(str(app.screen.query_one(selector).render()).split())
