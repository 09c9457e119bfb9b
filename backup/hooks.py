"""Provides the [hooks]: commands the appliance runs before and after its backups and restores.

Each hook is one command line, run without a shell (a string is split the
way a shell splits words, but nothing is expanded; a list is the argument
vector as it is). The facts of the event are in its environment:

    APPLIANCE_BACKUP_EVENT   before_backup, after_backup, on_failure, before_restore, after_restore
    APPLIANCE_BACKUP_NAME    the backup file written or restored
    APPLIANCE_BACKUP_RESULT  ok, failed or interrupted (empty for before_*)
    APPLIANCE_BACKUP_ERROR   the sentence of the failure (empty otherwise)

A hook that does not end within its timeout is killed with its process
group. Every hook's command, exit status and the end of its output are
journalled. A failing before_* hook stops the operation before anything is
changed; after_*/on_failure hooks that fail are journalled and change
nothing about the operation's result.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

from backup.errors import BackupError, ConfigError, InterruptedRunError

HOOK_NAMES = ("before_backup", "after_backup", "on_failure", "before_restore", "after_restore")
HOOK_KEYS = HOOK_NAMES + ("timeout_seconds",)
DEFAULT_TIMEOUT = 300.0
"""Seconds a hook may take before it is killed."""
MAX_TIMEOUT = 86_400
OUTPUT_KEPT = 4096
"""Bytes of a hook's output (the last ones) kept in the journal."""
ENV_PREFIX = "APPLIANCE_BACKUP_"


class HookFailedError(BackupError):
    """A before_* hook failed, so the operation did not start."""


@dataclass(frozen=True)
class HooksConfig:
    commands: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Hook name -> argument vector; hooks not set are absent."""
    timeout: float = DEFAULT_TIMEOUT
    """[hooks] timeout_seconds: the longest any one hook may run."""


@dataclass(frozen=True)
class HookOutcome:
    hook: str
    argv: tuple[str, ...]
    exit_status: int | None
    """None when the hook could not be started or was killed at its timeout."""
    output: str
    problem: str | None
    """None when the hook succeeded, else what went wrong (a phrase)."""


def parse_hooks(raw: dict[str, Any], path: Path) -> HooksConfig:
    """Read [hooks]; each error names the key and the fix."""
    table = raw.get("hooks", {})
    if not isinstance(table, dict):
        raise ConfigError(f"In {path}, hooks must be a table: write it as [hooks] followed by its keys.")
    commands: dict[str, tuple[str, ...]] = {}
    for name in HOOK_NAMES:
        if name not in table:
            continue
        value = table[name]
        if isinstance(value, str):
            try:
                argv = tuple(shlex.split(value))
            except ValueError as exc:
                raise ConfigError(f"In {path}, [hooks] {name} cannot be split into words ({exc}): "
                                  "close the quote, or write the command as a list of strings.") from None
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            argv = tuple(value)
        else:
            raise ConfigError(f"In {path}, [hooks] {name} must be a command line in quotes or a list of strings, "
                              f"not {value!r}.")
        if not argv or not argv[0]:
            raise ConfigError(f"In {path}, [hooks] {name} is empty: give a command, or remove the line.")
        if not os.path.isabs(argv[0]):
            raise ConfigError(f"In {path}, [hooks] {name} starts with {argv[0]!r}, which is not an absolute path: "
                              "hooks run without a shell and without a search path, so write the program's full "
                              f"path (e.g. /usr/bin/{os.path.basename(argv[0])}).")
        commands[name] = argv
    timeout = table.get("timeout_seconds", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise ConfigError(f"In {path}, [hooks] timeout_seconds must be a number of seconds above 0 and at most "
                          f"{MAX_TIMEOUT} (without quotes), not {timeout!r}.")
    return HooksConfig(commands=commands, timeout=float(timeout))


class HookRunner:
    """Runs the configured hooks and journals each run."""

    def __init__(self, config: HooksConfig, journal: Any, clock: Callable[[], datetime]) -> None:
        self.config = config
        self.journal = journal
        self.clock = clock

    def run(self, hook: str, *, name: str | None, result: str = "", error: str = "") -> HookOutcome | None:
        """Run one hook (None when it is not set); journal what it did."""
        argv = self.config.commands.get(hook)
        if argv is None:
            return None
        env = dict(os.environ)
        env.update({f"{ENV_PREFIX}EVENT": hook, f"{ENV_PREFIX}NAME": name or "",
                    f"{ENV_PREFIX}RESULT": result, f"{ENV_PREFIX}ERROR": error})
        outcome = _execute(hook, argv, env, self.config.timeout)
        try:
            self.journal.event("hook", now=self.clock(), hook=hook, argv=list(argv), name=name,
                               exit_status=outcome.exit_status, problem=outcome.problem,
                               output=outcome.output)
        except BackupError:
            pass  # the journal's own failure is reported by the run that journals next
        return outcome

    def before(self, operation: str, name: str | None) -> None:
        """Run before_<operation>; raise HookFailedError when it fails (nothing was changed yet)."""
        outcome = self.run(f"before_{operation}", name=name)
        if outcome is not None and outcome.problem is not None:
            tail = _last_line(outcome.output)
            raise HookFailedError(
                f"The before_{operation} hook ({outcome.argv[0]}) {outcome.problem}"
                + (f" (it said: {tail})" if tail else "")
                + f", so the {operation} did not start and nothing was changed: fix the hook or remove it from "
                f"[hooks], then try again.")

    @contextmanager
    def around(self, operation: str, name: str | None) -> Iterator[None]:
        """before_<operation>, the body, then after_<operation> (after a restore: whatever the result;
        after a backup: only when it succeeded) and on_failure when it failed."""
        try:
            self.before(operation, name)
            yield
        except BaseException as exc:
            result = "interrupted" if isinstance(exc, (InterruptedRunError, KeyboardInterrupt)) else "failed"
            error = exc.message if isinstance(exc, BackupError) else f"{type(exc).__name__}: {exc}"
            if operation == "restore" and not isinstance(exc, HookFailedError):
                self.run("after_restore", name=name, result=result, error=error)
            self.run("on_failure", name=name, result=result, error=error)
            raise
        self.run(f"after_{operation}", name=name, result="ok")


def _execute(hook: str, argv: tuple[str, ...], env: dict[str, str], timeout: float) -> HookOutcome:
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, close_fds=True)
    except OSError as exc:
        return HookOutcome(hook, argv, None, "", f"could not be started ({exc.strerror or exc})")
    try:
        out, _ = proc.communicate(timeout=timeout)
        problem = None if proc.returncode == 0 else _status_phrase(proc.returncode)
        status: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out = _drain(proc)
        problem, status = f"did not finish within {timeout:g} s and was stopped", None
    text = out[-OUTPUT_KEPT:].decode("utf-8", "replace")
    return HookOutcome(hook, argv, status, text, problem)


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=2)
            return
        except subprocess.TimeoutExpired:
            continue


def _drain(proc: subprocess.Popen) -> bytes:
    """What the killed hook wrote; a grandchild that left the group may hold the pipe, so not forever."""
    try:
        out, _ = proc.communicate(timeout=2)
        return out or b""
    except subprocess.TimeoutExpired:
        proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()
        proc.wait()
        return b""


def _status_phrase(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"failed (exit status {code})"


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""

