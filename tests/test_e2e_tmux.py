"""End-to-end: the real `appliance-backup` console in tmux at 80x24 with TERM=linux."""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.common import BIN, PASSPHRASE

pytestmark = pytest.mark.e2e  # tmux is installed by `make test`; without it the test fails, it does not skip


class Tmux:
    """One tmux server on its own socket, so tests never touch another server."""

    def __init__(self) -> None:
        self.socket = f"abk-e2e-{uuid.uuid4().hex[:10]}"

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              timeout=10).stdout

    def capture(self) -> str:
        return self("capture-pane", "-p", "-t", "console")

    def wait_for(self, predicate, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.capture()
            if predicate(screen):
                return screen
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; the screen was:\n{screen}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def tmux():
    server = Tmux()
    yield server
    server.kill()


@pytest.fixture
def appliance(tmp_path: Path) -> Path:
    """A demo appliance whose DMS was set with the real CLI; returns its config path."""
    env = {**os.environ, "APPLIANCE_BACKUP_DEBUG": ""}
    subprocess.run([str(BIN), "demo", str(tmp_path / "appliance")], check=True, capture_output=True, env=env,
                   timeout=60)
    config = tmp_path / "appliance" / "config.toml"
    secret = tmp_path / "dms.txt"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)
    subprocess.run([str(BIN), "--config", str(config), "secret", "set", "--passphrase-file", str(secret)],
                   check=True, capture_output=True, env=env, timeout=60)
    return config


def test_back_up_now_in_a_linux_console_then_quit(tmux: Tmux, appliance: Path, tmp_path: Path) -> None:
    exit_file = tmp_path / "exit-code"
    command = (f"TERM=linux {BIN} --config {appliance}; echo $? > {exit_file}")
    started = time.monotonic()
    tmux("new-session", "-d", "-s", "console", "-x", "80", "-y", "24", "sh", "-c", command)
    screen = tmux.wait_for(lambda s: "Not Running" in s and "Schedule Disabled" in s, 15, "the Status screen")
    first_screen = time.monotonic() - started
    assert "Last Successful Backup" in screen and "None yet" in screen
    assert "b Back up now" in screen

    tmux("send-keys", "-t", "console", "b")
    screen = tmux.wait_for(lambda s: "just now" in s and "Not Running" in s and "Backup created" in s, 60,
                           "a Last Successful Backup and its notification")
    assert re.search(r"MiB +ok\b", screen), screen
    # On the Linux console only ASCII is drawn: the notification's edge too (Textual's is a half block).
    assert screen.isascii(), sorted({c for c in screen if not c.isascii()})
    backups = list((appliance.parent / "backups").glob("*.abk"))
    assert len(backups) == 1

    tmux("send-keys", "-t", "console", "q")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not exit_file.exists():
        time.sleep(0.05)
    assert exit_file.read_text().strip() == "0"
    print(f"\nstart to first Status screen (tmux, TERM=linux, 80x24): {first_screen * 1000:.0f} ms")
