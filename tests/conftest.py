"""Shared fixtures: real demo appliances in tmp_path, real files, real SQLite (constants and helpers: tests/common.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input

from backup.config import Config, load_config
from backup.demo import create_demo_appliance
from backup.service import BackupService
from tests.common import FAST_KDF, PASSPHRASE

pytest_plugins = ["tests.nfs_server", "tests.mariadb_server", "tests.tui_fixtures"]



@pytest.fixture(autouse=True)
def no_cursor_blink(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fields in the console's tests do not blink: a blinking cursor makes two frames of one state differ.

    The default of Textual's Input.cursor_blink reactive is read when a field first uses it, so every Input
    made in the test (SecretInput too) starts without blinking; the product keeps Textual's default.
    """
    monkeypatch.setattr(Input.__dict__["cursor_blink"], "_default", False)


@pytest.fixture
def appliance(tmp_path: Path) -> Config:
    """A fresh demo appliance with no DMS set."""
    return load_config(create_demo_appliance(tmp_path / "appliance"))


@pytest.fixture
def service(appliance: Config) -> BackupService:
    """A service on a demo appliance whose DMS is set."""
    svc = BackupService(appliance, kdf_params=FAST_KDF)
    svc.set_secret(PASSPHRASE)
    return svc


@pytest.fixture
def passphrase_file(tmp_path: Path) -> Path:
    path = tmp_path / "dms.txt"
    path.write_text(PASSPHRASE + "\n")
    path.chmod(0o600)
    return path
