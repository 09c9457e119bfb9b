"""Provides the run journal: every backup, verify and restore, written crash-safely.

The journal is a file of JSON lines, one appended (and fsynced) when a run
starts and one when it ends. A run with a start and no end was interrupted;
`recover()` finds those whose process is gone and closes them. A torn last
line (a crash mid-append) is skipped when reading; so is a line damaged by
hand, which `damage()` reports with its line number.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from backup.errors import StateDirError
from backup.fsutil import ensure_private_dir

JOURNAL_FILE = "journal.jsonl"
PROGRESS_FILE = "progress.json"


@dataclass(frozen=True)
class RunRecord:
    id: str
    kind: str
    """"backup", "verify" or "restore"."""
    started_at: datetime
    pid: int
    name: str | None = None
    """The backup file the run wrote or read."""
    ended_at: datetime | None = None
    result: str | None = None
    """None while running, else "ok", "failed" or "interrupted"."""
    size: int | None = None
    error: str | None = None
    """The sentence shown to the operator when the run did not succeed."""
    detail: str | None = None
    warning: str | None = None
    """What a run that succeeded could not do in full (a restore: attributes the filesystem refused)."""

    @property
    def duration(self) -> float | None:
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


def interrupted_error(kind: str) -> str:
    """The sentence a run whose process died is closed with."""
    return f"The {kind} was interrupted (its process ended before it finished)."


class RunJournal:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / JOURNAL_FILE
        self.progress_path = self.state_dir / PROGRESS_FILE

    def start(self, kind: str, *, now: datetime, name: str | None = None, detail: str | None = None) -> str:
        run_id = f"{now.strftime('%Y%m%dT%H%M%S.%f')}-{secrets.token_hex(3)}"
        self._append({"type": "start", "id": run_id, "kind": kind, "at": now.isoformat(), "pid": os.getpid(),
                      "name": name, "detail": detail})
        return run_id

    def end(self, run_id: str, result: str, *, now: datetime, name: str | None = None, size: int | None = None,
            error: str | None = None, warning: str | None = None) -> None:
        record = {"type": "end", "id": run_id, "at": now.isoformat(), "result": result, "name": name,
                  "size": size, "error": error}
        if warning is not None:
            record["warning"] = warning
        self._append(record)
        self.progress_path.unlink(missing_ok=True)

    def event(self, kind: str, *, now: datetime, **facts: Any) -> None:
        """Journal one event that is not a run (a hook's command, an alert's delivery): its facts as given.

        `runs()` skips these records; `events()` reads them back.
        """
        self._append({"type": "event", "kind": kind, "at": now.isoformat(), **facts})

    def events(self, kind: str) -> list[dict[str, Any]]:
        """Every event of `kind`, oldest first, as journalled (with "at", an ISO 8601 time)."""
        return [rec for rec in self._records() if rec.get("type") == "event" and rec.get("kind") == kind]

    def size(self) -> int:
        """Bytes in the journal now: `runs(since=...)` reads only what is appended after them."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise self._state_error(exc, "read") from None

    def runs(self, *, since: int = 0) -> list[RunRecord]:
        """Every run, oldest first; with `since` (a `size()` taken earlier), only the runs started after it."""
        runs: dict[str, RunRecord] = {}
        for rec in self._records(since):
            try:
                if rec["type"] == "start":
                    runs[rec["id"]] = RunRecord(
                        id=rec["id"], kind=rec["kind"], started_at=datetime.fromisoformat(rec["at"]),
                        pid=int(rec.get("pid") or 0), name=rec.get("name"), detail=rec.get("detail"),
                    )
                elif rec["type"] == "end" and rec["id"] in runs:
                    run = runs[rec["id"]]
                    runs[rec["id"]] = replace(
                        run, ended_at=datetime.fromisoformat(rec["at"]), result=rec["result"],
                        name=rec.get("name") or run.name, size=rec.get("size"), error=rec.get("error"),
                        warning=rec.get("warning"),
                    )
            except (KeyError, TypeError, ValueError):
                continue
        return list(runs.values())

    def recover(self, *, now: datetime, alive: Callable[[int], bool]) -> list[RunRecord]:
        """Close runs whose process died before it could; return them."""
        closed = []
        for run in self.runs():
            if run.result is None and not (run.pid == os.getpid() or alive(run.pid)):
                error = interrupted_error(run.kind)
                self.end(run.id, "interrupted", now=now, name=run.name, error=error)
                closed.append(replace(run, ended_at=now, result="interrupted", error=error))
        return closed

    def write_progress(self, data: dict[str, Any]) -> None:
        """Publish the running run's progress for other processes (`status`); not fsynced, it is transient."""
        tmp = self.progress_path.with_name(f".{PROGRESS_FILE}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)  # private, whatever the umask
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data))
        os.replace(tmp, self.progress_path)

    def read_progress(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.progress_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def damage(self) -> str | None:
        """A sentence naming the journal's damaged lines (skipped when reading), or None if there are none.

        A record cut short by a crash mid-append is expected, skipped, and not reported.
        """
        lines = self._damaged_lines()
        if not lines:
            return None
        shown = ", ".join(str(n) for n in lines[:10]) + (", ..." if len(lines) > 10 else "")
        return (f"The run journal {self.path} has {len(lines)} damaged line{'s' if len(lines) > 1 else ''} "
                f"(line {shown}) that {'were' if len(lines) > 1 else 'was'} skipped; the other runs are intact. "
                "Remove or repair those lines to clear this warning.")

    def _append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            ensure_private_dir(self.state_dir)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                # A torn previous line would swallow this one: start on a fresh line.
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._state_error(exc, "written") from None

    def _read(self, since: int = 0) -> bytes:
        try:
            with self.path.open("rb") as f:
                if since and f.seek(0, os.SEEK_END) >= since:  # appended to since (it is never rewritten)
                    f.seek(since)
                else:
                    f.seek(0)
                return f.read()
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise self._state_error(exc, "read") from None

    def _state_error(self, exc: OSError, done: str) -> StateDirError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = f"free space on the file system of {self.state_dir}"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = (f"make the state directory {self.state_dir} and its files writable by the user that runs "
                   "backups (owned by it, mode 0700)")
        else:
            fix = f"check the state directory {self.state_dir}"
        return StateDirError(f"The run journal {self.path} cannot be {done} ({exc.strerror or exc}), "
                             f"so no run can be recorded: {fix}, then try again.")

    def _records(self, since: int = 0) -> list[dict[str, Any]]:
        records = []
        for raw in self._read(since).splitlines():
            try:
                rec = json.loads(raw)
            except ValueError:
                continue  # a torn or hand-damaged line: skip it, keep the rest (damage() names it)
            if isinstance(rec, dict):
                records.append(rec)
        return records

    def _damaged_lines(self) -> list[int]:
        data = self._read()
        lines = data.splitlines()
        damaged = []
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                ok = isinstance(json.loads(raw), dict)
            except ValueError:
                ok = False
            # A record cut short by a crash mid-append (the next append starts a fresh line after it).
            torn = raw.startswith(b'{"type":"') and (number < len(lines) or not data.endswith(b"\n"))
            if not ok and not torn:
                damaged.append(number)
        return damaged
