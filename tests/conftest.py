"""Shared fixtures: real demo appliances in tmp_path, real files, real SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from textual.widgets import Input

from backup.archive import ScryptParams
from backup.config import Config, load_config
from backup.demo import create_demo_appliance
from backup.service import BackupService

pytest_plugins = ["tests.nfs_server", "tests.mariadb_server"]

# Small scrypt parameters keep tests fast; the format and code path are the same.
FAST_KDF = ScryptParams(log2_n=10, r=8, p=1)
PASSPHRASE = "correct horse battery staple"
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "appliance-backup"


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


def run_cli(*args: str | os.PathLike[str], config: Config | Path | None = None, input: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real `appliance-backup` command."""
    argv = [str(BIN)]
    if config is not None:
        argv += ["--config", str(config.path if isinstance(config, Config) else config)]
    argv += [str(a) for a in args]
    return subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout,
                          env={**os.environ, "APPLIANCE_BACKUP_DEBUG": ""})
