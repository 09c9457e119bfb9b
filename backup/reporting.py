"""Provides what happens at the edges of every run: hooks, alerts and metrics.

`reported` wraps a BackupService operation (backup, verify, restore,
prune). When it returns or fails, the runs it journalled become alerts in
the delivery queue (backup_failed, restore_done, ...), the metrics file is
written, and a background thread starts delivering; the operation's result
and its time are not changed by any of it. `tick` is the periodic look of
the daemon, the console and each command: standing conditions (no recent
successful backup, no DMS while a schedule is enabled) alert once when they
begin, and due retries are delivered.
"""

from __future__ import annotations

import functools
import json
import threading
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from backup.errors import BackupError
from backup.fsutil import atomic_write_text
from backup.lock import is_locked
from backup.metrics import Facts, timestamp, write_textfile
from backup.notify import Alert
from backup.schedule import next_runs

if TYPE_CHECKING:
    from backup.service import BackupService

F = TypeVar("F", bound=Callable[..., Any])
_nesting = threading.local()

RUN_EVENTS: dict[tuple[str, str | None], str] = {
    ("backup", "ok"): "backup_succeeded",
    ("backup", "failed"): "backup_failed",
    ("backup", "interrupted"): "backup_failed",
    ("verify", "failed"): "verify_failed",
    ("restore", "ok"): "restore_done",
    ("restore", "failed"): "restore_failed",
    ("restore", "interrupted"): "restore_failed",
}
"""(run kind, result) -> alert event."""


def reported(method: F) -> F:
    """Alerts and metrics after the operation, however it ends; an operation called inside another
    (prune after a backup) is reported with it, once."""

    @functools.wraps(method)
    def call(service: "BackupService", *args: Any, **kwargs: Any) -> Any:
        if getattr(_nesting, "depth", 0):
            return method(service, *args, **kwargs)
        _nesting.depth = 1
        try:
            before = service.journal.size()  # not every run id: an appliance's journal grows for years
        except BackupError:
            before = None
        try:
            return method(service, *args, **kwargs)
        finally:
            _nesting.depth = 0
            if before is not None:
                after_runs(service, before)

    return call  # type: ignore[return-value]


def after_runs(service: "BackupService", before: int) -> None:
    """Queue the alerts of the runs journalled since the journal had `before` bytes, write the metrics,
    start delivering."""
    try:
        runs = [r for r in service.journal.runs(since=before) if r.result is not None]
        verify_failed = any(r.kind == "verify" and r.result == "failed" for r in runs)
        for run in runs:
            event = RUN_EVENTS.get((run.kind, run.result))
            if run.kind == "verify_job" and run.result == "failed" and not verify_failed:
                event = "verify_failed"  # the job failed before any backup did (e.g. the storage is gone)
            if event is not None:
                service.alerts.enqueue(Alert(appliance=service.config.appliance.name, event=event,
                                             at=run.ended_at or service.clock(), name=run.name, error=run.error))
    except BackupError:
        pass  # the journal is unreadable: the next status says so
    write_metrics(service)
    tick(service)


@contextmanager
def edges(service: "BackupService", operation: str, name: str | None) -> Iterator[None]:
    """Inside a journalled run: the metrics (a run in progress), then the hooks around the body."""
    write_metrics(service)
    hooks = service.hooks.around(operation, name) if operation in ("backup", "restore") else nullcontext()
    with hooks:
        yield


def tick(service: "BackupService") -> threading.Thread | None:
    """Alert standing conditions once when they begin; deliver what is due, on a background thread."""
    queue = service.alerts
    if not service.config.notify.targets:
        return None
    try:
        now = service.clock()
        runs = [r for r in service.journal.runs() if r.kind == "backup"]
        last_success = next((r for r in reversed(runs) if r.result == "ok"), None)
        stale = service._staleness(last_success, now)
        if queue.condition("stale", (last_success.id if last_success else "none") if stale else None):
            queue.enqueue(Alert(appliance=service.config.appliance.name, event="stale", at=now,
                                name=last_success.name if last_success else None, error=stale))
        unset = service.config.schedule.enabled and not service.secret.is_set()
        if queue.condition("dms_not_set", "unset" if unset else None):
            queue.enqueue(Alert(appliance=service.config.appliance.name, event="dms_not_set", at=now,
                                error="A backup schedule is enabled, but no Domain Master Secret is set, so no "
                                      "scheduled backup can run."))
    except BackupError:
        pass
    return queue.kick()


def metrics_facts(service: "BackupService", now: datetime) -> Facts:
    runs = service.journal.runs()
    backups = [r for r in runs if r.kind == "backup" and r.result is not None]
    success = next((r for r in reversed(backups) if r.result == "ok"), None)
    failure = next((r for r in reversed(backups) if r.result != "ok"), None)
    verifies = [r for r in runs if r.kind == "verify" and r.result is not None]
    schedule = service.config.schedule
    upcoming = next_runs(schedule, now, 1) if schedule.enabled else []
    count = total = free = oldest = None
    try:
        present = [b for b in service.list_backups() if service.is_own_backup(b.name)]
        count, total = len(present), sum(b.size for b in present)
        verified = {r.name for r in verifies if r.result == "ok"}
        unverified = [b for b in present if b.name not in verified]
        first = min(unverified, key=lambda b: b.created_at) if unverified else None
        oldest = max(0.0, (now - first.created_at).total_seconds()) if first else 0.0
        _remember_unverified(service, first.name if first else None, first.created_at if first else None)
        free = service.storage.usage("").free
    except (BackupError, OSError):
        pass
    return Facts(
        appliance=service.config.appliance.name,
        last_success=timestamp(success.ended_at) if success else None,
        last_failure=timestamp(failure.ended_at) if failure else None,
        last_size=success.size if success else None,
        last_duration=success.duration if success else None,
        backups=count, backups_bytes=total, storage_free=free, oldest_unverified_age=oldest,
        schedule_enabled=schedule.enabled, next_run=timestamp(upcoming[0]) if upcoming else None,
        in_progress=is_locked(service.state_dir),
        last_verify_job=timestamp(verifies[-1].ended_at) if verifies else None,
    )


UNVERIFIED_FILE = "unverified.json"
"""In the state directory: the oldest backup no verify has passed, as last seen in the storage."""


def _remember_unverified(service: "BackupService", name: str | None, created: datetime | None) -> None:
    data = {"name": name, "created_at": created.isoformat() if created else None}
    try:
        atomic_write_text(service.state_dir / UNVERIFIED_FILE, json.dumps(data), mode=0o600)
    except OSError:
        pass


def oldest_unverified(state_dir: Path) -> tuple[str, datetime] | None:
    """(name, created at) of the oldest backup in the storage that no verify has passed, as last seen."""
    try:
        data = json.loads((state_dir / UNVERIFIED_FILE).read_text())
        return (data["name"], datetime.fromisoformat(data["created_at"])) if data.get("name") else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_metrics(service: "BackupService") -> str | None:
    """Write [metrics] textfile when it is set; return a sentence when that failed (journalled), else None."""
    path = service.config.metrics_textfile
    if path is None:
        if service.config.verify is not None:
            metrics_facts(service, service.clock())  # what Status shows of the oldest unverified backup
        return None
    try:
        write_textfile(path, metrics_facts(service, service.clock()))
        return None
    except (OSError, BackupError) as exc:
        problem = (f"The metrics file {path} could not be written ({getattr(exc, 'strerror', None) or exc}): "
                   "check that its folder exists and that the user that runs backups may write there.")
        try:
            service.journal.event("metrics", now=service.clock(), error=problem)
        except BackupError:
            pass
        return problem
