"""Provides the shutdown inhibitor held while a backup runs, where the system offers one.

On a systemd appliance `systemd-inhibit` asks logind for a blocking
shutdown and sleep lock and holds it while its child runs. The child here
prints one line once the lock is granted (systemd-inhibit starts it only
then), so "held" is known for certain rather than guessed from timing, and
then waits for end of file on its stdin, a pipe from this process: if this
process dies in any way, even SIGKILL, the pipe closes, the child ends,
systemd-inhibit ends and logind drops the lock. A crashed backup never
leaves the appliance unable to shut down.

Where there is no systemd-inhibit or logind (containers, some appliances)
the context manager yields `held=False` with the reason, and the run carries
on: the status records "no shutdown inhibitor available: <reason>".
"""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

SYSTEMD_INHIBIT = "systemd-inhibit"
READY_LINE = "held"
# The child: say the lock is held, then wait until the parent's pipe closes.
_SENTINEL = ["/bin/sh", "-c", f"echo {READY_LINE}; exec cat >/dev/null"]


@dataclass(frozen=True)
class Inhibitor:
    """What `shutdown_inhibitor` could hold."""

    held: bool
    reason: str
    """Why not, when not held; what holds it, when held."""
    pid: int | None = None
    """The inhibitor process, while held."""

    @property
    def status_line(self) -> str:
        """A line for the status and the log."""
        if self.held:
            return f"shutdown inhibitor held ({self.reason})"
        return f"no shutdown inhibitor available: {self.reason}"


def inhibit_argv(why: str) -> list[str]:
    """The systemd-inhibit command line that blocks shutdown and sleep for `why`."""
    return [SYSTEMD_INHIBIT, "--what=shutdown:sleep", "--who=appliance-backup", f"--why={why}", "--mode=block",
            *_SENTINEL]


@contextmanager
def shutdown_inhibitor(reason: str, *, argv: Sequence[str] | None = None, timeout: float = 5.0,
                       grace: float = 2.0) -> Iterator[Inhibitor]:
    """Hold a shutdown and sleep inhibitor for the body of the `with`, where the system offers one.

    Args:
        reason: shown by `systemd-inhibit --list` and the shutdown prompt, e.g. "Backup in progress".
        argv: the command to run instead of systemd-inhibit (tests); it must print READY_LINE once
            it holds the lock and then wait for end of file on stdin.
        timeout: seconds to wait for the lock to be granted.
        grace: seconds the process has to end after its pipe closes and SIGTERM, before SIGKILL.

    Yields:
        An `Inhibitor`; never raises because none is available. The process is always ended on exit.
    """
    if argv is None:
        if shutil.which(SYSTEMD_INHIBIT) is None:
            yield Inhibitor(False, f"{SYSTEMD_INHIBIT} is not installed")
            return
        argv = inhibit_argv(reason)
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                close_fds=True)
    except OSError as exc:
        yield Inhibitor(False, f"{argv[0]} could not be started ({exc.strerror or exc})")
        return
    try:
        inhibitor = _wait_until_held(proc, argv[0], timeout)
        yield inhibitor
    finally:
        _end(proc, grace)


def _wait_until_held(proc: subprocess.Popen[bytes], program: str, timeout: float) -> Inhibitor:
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                return Inhibitor(False, f"{program} did not get the lock within {timeout:g} s")
            chunk = os.read(proc.stdout.fileno(), 64)
            if not chunk:
                break
            line += chunk
    if line.strip() == READY_LINE.encode():
        return Inhibitor(True, f"{program}, process {proc.pid}", pid=proc.pid)
    try:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    message = _first_line(_read_available(proc.stderr) if proc.poll() is not None else b"")
    code = proc.poll()
    detail = message or (f"it exited with status {code}" if code is not None else f"unexpected output {line[:40]!r}")
    return Inhibitor(False, f"{program} could not take the lock ({detail}); logind is probably not running")


def _read_available(stream) -> bytes:
    """What the stream holds now, without waiting for end of file (a descendant may keep it open)."""
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while len(data) < 4096 and selector.select(0.2):
            chunk = stream.read1(4096)
            if not chunk:
                break
            data += chunk
    return data


def _first_line(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text.splitlines()[0].strip() if text else ""


def _end(proc: subprocess.Popen[bytes], grace: float) -> None:
    """End the inhibitor process for certain: close its pipe, then terminate, then kill."""
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
