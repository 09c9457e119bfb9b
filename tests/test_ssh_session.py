"""The console through a real SSH session (issue 20).

OpenSSH's sshd (Debian's openssh-server, installed by `make test`) is started
on a loopback port with a throwaway host key and an authorized key made for
the test; a real `ssh -tt` client runs in tmux at 80x24 with TERM=linux, as
an operator's terminal would. Nothing here is mocked: the pty, TERM and the
window size reach the console the way sshd delivers them.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backup.journal import RunJournal
from backup.lock import is_locked
from backup.service import BackupService
from tests.common import BIN
from tests.test_e2e_tmux import Tmux
from tests.test_hangup import STOPPED, big_state, wait_for_partial

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SSHD = "/usr/sbin/sshd"


@dataclass
class SshServer:
    port: int
    key: Path
    log: Path

    def client(self, command: str) -> list[str]:
        """The argv of an operator's `ssh -tt` running `command` on the appliance."""
        return ["ssh", "-tt", "-i", str(self.key), "-p", str(self.port),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "root@127.0.0.1", command]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    """A real sshd on 127.0.0.1 that lets in the test's key, and only it."""
    assert os.geteuid() == 0, "the SSH tests start sshd and log in as root (as `make test` runs here)"
    assert Path(SSHD).exists(), f"{SSHD} is missing: `make test` installs openssh-server and openssh-client"
    home = tmp_path / "ssh"
    home.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / "operator_key")], check=True)
    (home / "authorized_keys").write_text((home / "operator_key.pub").read_text())
    port = _free_port()
    config = home / "sshd_config"
    config.write_text(f"""\
ListenAddress 127.0.0.1:{port}
HostKey {home / 'host_key'}
PidFile {home / 'sshd.pid'}
AuthorizedKeysFile {home / 'authorized_keys'}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The test's files live under /tmp (world-writable), which StrictModes refuses.
StrictModes no
PrintMotd no
PrintLastLog no
LogLevel VERBOSE
""")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    log = home / "sshd.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, f"sshd did not start:\n{log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"sshd is not listening:\n{log.read_text()}"
                time.sleep(0.05)
        yield SshServer(port, home / "operator_key", log)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def console_pids(config: Path) -> list[int]:
    """The console processes started on `config` (looked up, not signalled: their config path is unique)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(BIN).encode() in argv[:2] and str(config).encode() in argv and b"python" in argv[0] + argv[1]:
            pids.append(int(entry.name))
    return pids


def terminal_of(pid: int) -> tuple[str, tuple[int, int]]:
    """TERM in the process's environment, and the size (columns, lines) of the terminal on its stdin."""
    environ = dict(item.split(b"=", 1) for item in (Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
                   if b"=" in item)
    fd = os.open(f"/proc/{pid}/fd/0", os.O_RDONLY | os.O_NOCTTY)
    try:
        size = os.get_terminal_size(fd)
    finally:
        os.close(fd)
    return environ[b"TERM"].decode(), (size.columns, size.lines)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def normalised(screen: str) -> list[str]:
    """The screen's lines without trailing blanks; relative times as one token (they may tick between two captures)."""
    return [re.sub(r"just now|\d+ min ago", "<ago>", line).rstrip() for line in screen.splitlines()]


def test_operator_backs_up_over_ssh_resizes_and_quits(sshd: SshServer, service: BackupService,
                                                      tmp_path: Path) -> None:
    config = service.config.path
    exit_file = tmp_path / "ssh-exit-code"
    client = shlex.join(sshd.client(f"{BIN} --config {config}"))
    tmux = Tmux()
    try:
        tmux("new-session", "-d", "-s", "console", "-x", "80", "-y", "24",
             "env", "TERM=linux", "sh", "-c", f"{client}; echo $? > {exit_file}")
        tmux.wait_for(lambda s: "Not Running" in s and "None yet" in s, 30, "the Status screen over SSH")

        # The pty sshd made carries what the client asked for.
        pids = console_pids(config)
        assert len(pids) == 1, pids
        assert terminal_of(pids[0]) == ("linux", (80, 24))

        tmux("send-keys", "-t", "console", "b")
        screen = tmux.wait_for(lambda s: "Backup created" in s and "Not Running" in s, 60, "the backup to finish")
        assert re.search(r"MiB +ok\b", screen), screen
        assert screen.isascii(), "TERM=linux: only ASCII is drawn"
        backups = [p.name for p in service.config.storage.path.glob("*.abk")]
        assert len(backups) == 1
        assert service.verify(backups[0]).name == backups[0]
        tmux.wait_for(lambda s: "Backup created" not in s, 30, "the notification to go")

        tmux("resize-window", "-t", "console", "-x", "100", "-y", "30")
        wait_until(lambda: terminal_of(pids[0])[1] == (100, 30), 15, "the window change to reach the console's pty")
        resized = tmux.wait_for(lambda s: len(s.splitlines()) == 30 and "q Quit" in s.splitlines()[-1], 15,
                                "the console redrawn at 100x30 (footer on the last line)")

        # Redrawn correctly: what a console started at 100x30 shows, line for line.
        fresh = Tmux()
        try:
            # Without COLUMNS/LINES, which Textual would take over the tty's size (pytest's readline
            # puts them in this process's environment; sshd gives the SSH session a clean one).
            fresh("new-session", "-d", "-s", "console", "-x", "100", "-y", "30",
                  "env", "-u", "COLUMNS", "-u", "LINES", "TERM=linux", str(BIN), "--config", str(config))
            expected = fresh.wait_for(lambda s: "Not Running" in s and re.search(r"MiB +ok\b", s), 30,
                                      "a console started at 100x30")
            resized = tmux.capture()
            assert normalised(resized) == normalised(expected), f"resized:\n{resized}\nfresh:\n{expected}"
        finally:
            fresh.kill()

        tmux("send-keys", "-t", "console", "q")
        wait_until(exit_file.exists, 15, "the SSH session to end")
        assert exit_file.read_text().strip() == "0"
        assert console_pids(config) == []
    finally:
        tmux.kill()


def test_dropped_ssh_connection_mid_backup_stops_it_cleanly_and_the_next_session_says_so(
        sshd: SshServer, service: BackupService) -> None:
    big_state(service.config)
    config = service.config.path
    tmux = Tmux()
    try:
        # The client is the pane's own process, so its pid is the pane's.
        tmux("new-session", "-d", "-s", "console", "-x", "80", "-y", "24",
             "env", "TERM=linux", *sshd.client(f"{BIN} --config {config}"))
        tmux.wait_for(lambda s: "Not Running" in s, 30, "the Status screen over SSH")
        client_pid = int(tmux("display-message", "-p", "-t", "console", "#{pane_pid}").strip())
        assert (pids := console_pids(config)), "no console process"
        tmux("send-keys", "-t", "console", "b")
        wait_for_partial(service.config, lambda: bool(console_pids(config)))

        os.kill(client_pid, signal.SIGKILL)  # the connection drops: sshd hangs up the console's pty

        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 60,
                   "the console to stop its backup and exit")
    finally:
        tmux.kill()

    assert list(service.config.storage.path.iterdir()) == [], "a final or partial file was left"
    last = RunJournal(service.state_dir).runs()[-1]
    assert (last.kind, last.result, last.error) == ("backup", "interrupted", STOPPED)
    assert not is_locked(service.state_dir)

    again = Tmux()
    try:
        again("new-session", "-d", "-s", "console", "-x", "80", "-y", "24",
              "env", "TERM=linux", *sshd.client(f"{BIN} --config {config}"))
        screen = again.wait_for(lambda s: "Not Running" in s and "The backup was stopped before it" in s, 30,
                                "the next session's Status screen saying the backup was stopped")
        assert "Last Backup Could Not Be Created" in screen and "interrupted" in screen
        again("send-keys", "-t", "console", "q")
    finally:
        again.kill()

