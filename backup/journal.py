"""Provides the run journal: every backup, verify and restore, written crash-safely.

The journal is a file of JSON lines, one appended (and fsynced) when a run
starts and one when it ends. A run with a start and no end was interrupted;
`recover()` finds those whose process is gone and closes them. A torn last
line (a crash mid-append) is skipped when reading.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

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

    @property
    def duration(self) -> float | None:
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


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
            error: str | None = None) -> None:
        self._append({"type": "end", "id": run_id, "at": now.isoformat(), "result": result, "name": name,
                      "size": size, "error": error})
        self.progress_path.unlink(missing_ok=True)

    def runs(self) -> list[RunRecord]:
        """Every run, oldest first."""
        runs: dict[str, RunRecord] = {}
        for rec in self._records():
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
                    )
            except (KeyError, TypeError, ValueError):
                continue
        return list(runs.values())

    def recover(self, *, now: datetime, alive: Callable[[int], bool]) -> list[RunRecord]:
        """Close runs whose process died before it could; return them."""
        closed = []
        for run in self.runs():
            if run.result is None and not (run.pid == os.getpid() or alive(run.pid)):
                error = f"The {run.kind} was interrupted (its process ended before it finished)."
                self.end(run.id, "interrupted", now=now, name=run.name, error=error)
                closed.append(replace(run, ended_at=now, result="interrupted", error=error))
        return closed

    def write_progress(self, data: dict[str, Any]) -> None:
        """Publish the running run's progress for other processes (`status`); not fsynced, it is transient."""
        tmp = self.progress_path.with_name(f".{PROGRESS_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.progress_path)

    def read_progress(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.progress_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _append(self, record: dict[str, Any]) -> None:
        ensure_private_dir(self.state_dir)
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
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

    def _records(self) -> list[dict[str, Any]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        records = []
        for raw in data.splitlines():
            try:
                rec = json.loads(raw)
            except ValueError:
                continue  # a torn or hand-damaged line: skip it, keep the rest
            if isinstance(rec, dict):
                records.append(rec)
        return records
