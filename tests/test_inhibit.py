"""Tests of backup.inhibit: the shutdown inhibitor and the lifetime of its process.

logind cannot run in this container (there is no system D-Bus), so the real
systemd-inhibit here always fails fast: the tests assert that honest
not-available path, and test the process lifetime with stand-in commands
passed through `argv` that behave like systemd-inhibit does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backup.inhibit import READY_LINE, SYSTEMD_INHIBIT, inhibit_argv, shutdown_inhibitor

PY = sys.executable
# Behaves like systemd-inhibit that got the lock: prints the ready line, holds until stdin closes.
HOLDS = [PY, "-c", f"import sys; print({READY_LINE!r}, flush=True); sys.stdin.read()"]


def gone(pid: int) -> bool:
    """The process has ended (reaped, or a zombie waiting for a reaper that is not us)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_until_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.02)
    return gone(pid)


def test_real_systemd_inhibit_is_not_available_here():
    # No logind in this container: systemd-inhibit exits at once ("Failed to connect to bus").
    started = time.monotonic()
    with shutdown_inhibitor("Backup in progress") as inhibitor:
        assert not inhibitor.held
        assert inhibitor.pid is None
        assert inhibitor.reason.startswith(f"{SYSTEMD_INHIBIT} could not take the lock (")
        assert inhibitor.reason.endswith("); logind is probably not running")
        assert inhibitor.status_line.startswith("no shutdown inhibitor available: systemd-inhibit could not take the lock")
    assert time.monotonic() - started < 3


def test_not_installed(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with shutdown_inhibitor("Backup in progress") as inhibitor:
        assert (inhibitor.held, inhibitor.reason) == (False, "systemd-inhibit is not installed")
        assert inhibitor.status_line == "no shutdown inhibitor available: systemd-inhibit is not installed"


def test_command_line():
    argv = inhibit_argv("Backup in progress")
    assert argv[:5] == ["systemd-inhibit", "--what=shutdown:sleep", "--who=appliance-backup",
                        "--why=Backup in progress", "--mode=block"]
    # The child only runs once logind granted the lock, says so, and lives as long as our pipe.
    assert argv[5:] == ["/bin/sh", "-c", f"echo {READY_LINE}; exec cat >/dev/null"]


def test_held_for_the_body_and_ended_after():
    with shutdown_inhibitor("Backup in progress", argv=HOLDS) as inhibitor:
        assert inhibitor.held and inhibitor.pid is not None
        assert inhibitor.status_line == f"shutdown inhibitor held ({PY}, process {inhibitor.pid})"
        assert not gone(inhibitor.pid)
        pid = inhibitor.pid
    assert gone(pid)


def test_ended_when_the_body_raises():
    with pytest.raises(RuntimeError):
        with shutdown_inhibitor("Backup in progress", argv=HOLDS) as inhibitor:
            pid = inhibitor.pid
            raise RuntimeError("the backup failed")
    assert gone(pid)


def test_a_process_that_ignores_its_pipe_and_sigterm_is_killed():
    stubborn = [PY, "-c", textwrap.dedent(f"""
        import signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.stdin.close()
        print({READY_LINE!r}, flush=True)
        time.sleep(60)
    """)]
    started = time.monotonic()
    with shutdown_inhibitor("Backup in progress", argv=stubborn, grace=0.2) as inhibitor:
        assert inhibitor.held
        pid = inhibitor.pid
    assert gone(pid)
    assert time.monotonic() - started < 5


def test_refused_lock_reports_the_reason():
    refused = [PY, "-c", "import sys; sys.stderr.write('Failed to inhibit: Access denied\\n'); sys.exit(1)"]
    with shutdown_inhibitor("Backup in progress", argv=refused) as inhibitor:
        assert not inhibitor.held
        assert inhibitor.reason == f"{PY} could not take the lock (Failed to inhibit: Access denied); logind is probably not running"


def test_no_answer_times_out_and_is_ended():
    silent = [PY, "-c", "import time; time.sleep(60)"]
    started = time.monotonic()
    with shutdown_inhibitor("Backup in progress", argv=silent, timeout=0.3, grace=0.2) as inhibitor:
        assert not inhibitor.held
        assert inhibitor.reason == f"{PY} did not get the lock within 0.3 s"
    assert time.monotonic() - started < 5


def test_command_that_cannot_start():
    with shutdown_inhibitor("Backup in progress", argv=["/nonexistent/systemd-inhibit"]) as inhibitor:
        assert not inhibitor.held
        assert inhibitor.reason.startswith("/nonexistent/systemd-inhibit could not be started (")


def test_killed_parent_releases_the_inhibitor(tmp_path):
    """SIGKILL of the backup process closes the pipe, so the inhibitor process ends by itself."""
    pid_file = tmp_path / "pid"
    parent = subprocess.Popen([PY, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from backup.inhibit import shutdown_inhibitor
        with shutdown_inhibitor("Backup in progress", argv={HOLDS!r}) as inhibitor:
            assert inhibitor.held
            Path({str(pid_file)!r}).write_text(str(inhibitor.pid))
            time.sleep(60)
    """)], cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + 10
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        inhibitor_pid = int(pid_file.read_text())
        assert not gone(inhibitor_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert wait_until_gone(inhibitor_pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
