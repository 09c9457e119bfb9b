"""The terminal hangs up during a backup (issue 20): SIGHUP is handled like SIGTERM.

An operator on SSH or a serial line loses the connection in the middle of a
backup. The kernel hangs the terminal up: SIGHUP to the session's leader (with
SIGCONT), end-of-file on reads, EIO on writes. The backup must then stop
cleanly, as on SIGTERM: no final file, no partial file, journalled as
interrupted, and the next console says so. A command started with SIGHUP
ignored (nohup) keeps ignoring it.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from backup.config import Config
from backup.errors import ExitCode
from backup.journal import RunJournal
from backup.lock import is_locked
from backup.service import BackupService
from tests.common import BIN
from tests.test_e2e_tmux import Tmux

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STOPPED = "The backup was stopped before it finished; nothing partial was kept."


def big_state(config: Config) -> None:
    """Enough incompressible data that a backup lasts seconds, so it can be cut in the middle."""
    with open(config.appliance.firmware / "large.bin", "wb") as f:
        for _ in range(48):
            f.write(os.urandom(4 << 20))


def wait_for_partial(config: Config, alive, timeout: float = 60) -> None:
    """Until the backup has written more than 1 MiB of its partial file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        partials = list(config.storage.path.glob("*.partial"))
        if partials and partials[0].stat().st_size > 1 << 20:
            return
        assert alive(), "the backup ended before it could be cut"
        time.sleep(0.005)
    raise AssertionError("no partial file appeared")


def assert_stopped_cleanly(service: BackupService) -> None:
    assert list(service.config.storage.path.iterdir()) == [], "a final or partial file was left"
    last = RunJournal(service.state_dir).runs()[-1]
    assert (last.kind, last.result, last.error) == ("backup", "interrupted", STOPPED)
    assert not is_locked(service.state_dir)


class PtyConsole:
    """The real console on a pseudo-terminal whose master side this test holds, as sshd holds an SSH session's.

    The console is the session leader with the pty as its controlling terminal, so closing the
    master is a hang-up: the kernel sends it SIGHUP and SIGCONT.
    """

    def __init__(self, config: Config) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TMUX")}
        env.update(TERM="linux", APPLIANCE_BACKUP_DEBUG="")
        argv = [str(BIN), "--config", str(config.path)]
        self.pid, self.master = pty.fork()
        if self.pid == 0:
            os.execve(argv[0], argv, env)
        self.output = bytearray()
        self.status: int | None = None
        self._stop = threading.Event()
        # The console blocks once the pty's buffer is full: read everything it writes.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            if select.select([self.master], [], [], 0.05)[0]:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    return
                if not data:
                    return
                self.output += data

    def wait_for(self, text: bytes, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert time.monotonic() < deadline, f"{text!r} never appeared"
            assert self.alive(), "the console ended"
            time.sleep(0.02)

    def alive(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status is None

    def hang_up(self) -> None:
        """Close the master side, as sshd does when the client's connection drops."""
        self._stop.set()
        self._reader.join()  # a read in progress would keep the master open
        os.close(self.master)

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise AssertionError("the console did not end after its terminal hung up")
            time.sleep(0.05)
        assert self.status is not None
        return self.status


def test_console_whose_terminal_hangs_up_mid_backup_stops_it_cleanly_and_the_next_console_says_so(
        service: BackupService, tmp_path: Path) -> None:
    big_state(service.config)
    console = PtyConsole(service.config)
    console.wait_for(b"Not Running")
    os.write(console.master, b"b")
    wait_for_partial(service.config, console.alive)

    console.hang_up()
    status = console.wait()

    # Not killed by the signal: it stopped the backup, cleaned up and exited.
    assert os.WIFEXITED(status), f"the console was killed by signal {os.WTERMSIG(status)}"
    assert os.WEXITSTATUS(status) == 0
    assert_stopped_cleanly(service)

    tmux = Tmux()
    try:
        tmux("new-session", "-d", "-s", "console", "-x", "80", "-y", "24",
             "env", "TERM=linux", str(BIN), "--config", str(service.config.path))
        # The Recent Runs table sizes its columns when it is next idle, so a frame may show its first row cut
        # to the header widths ("interr"): wait for every part, not just the first.
        screen = tmux.wait_for(lambda s: "Not Running" in s and "The backup was stopped before it" in s
                               and "interrupted" in s, 30,  # the Recent Runs row
                               "the Status screen saying the last backup was stopped")
        assert "Last Backup Could Not Be Created" in screen
    finally:
        tmux.kill()


def test_run_stops_cleanly_on_sighup(service: BackupService) -> None:
    big_state(service.config)
    proc = subprocess.Popen([str(BIN), "--config", str(service.config.path), "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_partial(service.config, lambda: proc.poll() is None)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert "Traceback" not in err
    assert_stopped_cleanly(service)


def test_run_started_with_sighup_ignored_runs_on(service: BackupService) -> None:
    """`nohup appliance-backup run`: the caller asked it to outlive the terminal."""
    big_state(service.config)
    proc = subprocess.Popen(["nohup", str(BIN), "--config", str(service.config.path), "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_partial(service.config, lambda: proc.poll() is None)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.OK, err
    name = out.strip()
    assert RunJournal(service.state_dir).runs()[-1].result == "ok"
    assert service.verify(name).name == name

