"""Provides the progress reports the core sends while it works, and cancellation."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from backup.errors import InterruptedRunError


@dataclass(frozen=True)
class Progress:
    """One progress report of a running backup, verify or restore."""

    task: str
    """"backup", "verify" or "restore"."""
    stage: str
    """What is happening now, e.g. "Snapshotting the internal database"."""
    done: int
    """Bytes of appliance data processed so far."""
    total: int | None
    """Bytes expected in all, when known."""
    written: int = 0
    """Bytes written to (backup) or read from (verify, restore) the storage."""
    elapsed: float = 0.0
    """Seconds since the run started."""

    def to_json(self) -> dict[str, Any]:
        """What another process reads back with from_json (published while a run goes on)."""
        return {"task": self.task, "stage": self.stage, "done": self.done, "total": self.total,
                "written": self.written, "elapsed": round(self.elapsed, 3)}

    @staticmethod
    def from_json(data: dict[str, Any] | None) -> Progress | None:
        """The Progress another process published, or None when there is none or it cannot be read."""
        if not data:
            return None
        try:
            return Progress(task=str(data.get("task", "backup")), stage=str(data.get("stage", "")),
                            done=int(data.get("done", 0)), total=int(data["total"]) if data.get("total") else None,
                            written=int(data.get("written", 0)), elapsed=float(data.get("elapsed", 0.0)))
        except (TypeError, ValueError, KeyError):
            return None

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)

    @property
    def throughput(self) -> float | None:
        """Bytes of appliance data per second."""
        if self.elapsed <= 0:
            return None
        return self.done / self.elapsed

    @property
    def eta(self) -> float | None:
        """Seconds left, from the throughput so far."""
        rate = self.throughput
        if not rate or not self.total:
            return None
        return max(0.0, (self.total - self.done) / rate)


ProgressCallback = Callable[[Progress], None]


class Tracker:
    """Counts bytes for one run and reports at most every `interval` seconds (and on stage changes)."""

    def __init__(self, task: str, callback: ProgressCallback | None, cancel: threading.Event | None,
                 *, total: int | None = None, interval: float = 0.1, monotonic: Callable[[], float] = time.monotonic,
                 written: Callable[[], int] | None = None):
        self.task = task
        self.callback = callback
        self.cancel = cancel
        self.total = total
        self.interval = interval
        self.monotonic = monotonic
        self.started = monotonic()
        self.done = 0
        self.written = 0
        self.written_source = written
        self.stage = ""
        self._last = 0.0

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise InterruptedRunError(f"The {self.task} was stopped before it finished; nothing partial was kept.")

    def set_stage(self, stage: str) -> None:
        self.stage = stage
        self.report(force=True)

    def add(self, done: int = 0, written: int = 0) -> None:
        self.done += done
        self.written += written
        self.check_cancel()
        self.report()

    def snapshot(self) -> Progress:
        if self.written_source is not None:
            self.written = self.written_source()
        return Progress(task=self.task, stage=self.stage, done=self.done, total=self.total, written=self.written,
                        elapsed=self.monotonic() - self.started)

    def report(self, force: bool = False) -> None:
        if self.callback is None:
            return
        now = self.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            self.callback(self.snapshot())
