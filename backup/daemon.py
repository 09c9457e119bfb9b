"""Provides the scheduler daemon: `appliance-backup daemon` runs scheduled backups until stopped.

The daemon wakes at the next scheduled slot, and at least every
`POLL_SECONDS`, to notice a changed configuration file and a stop request.
Each slot runs at most once: the service journals the slot of every
scheduled run (`detail="slot=<iso>"`, see backup.schedule.slot_detail) and
the daemon asks for the most recent slot that has not been journalled. After
downtime that is one catch-up run for all the slots missed, never one per
slot.

Every event is one log line with a syslog priority prefix (`<6>` info,
`<4>` warning, `<3>` error), which journald reads as the line's priority:

    <6>appliance-backup: backup started (slot 2026-11-26T02:00+01:00)

Stopping: the caller sets `stop` on SIGTERM, SIGINT or SIGHUP. A running backup
sees the same event as its cancel event, stops, removes its partial file and
is journalled as interrupted; then the daemon returns.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from backup import verifyjob
from backup.errors import BackupError, ConfigError, ExitCode, InterruptedRunError, LockHeldError, SlotAlreadyDoneError
from backup.inhibit import Inhibitor, shutdown_inhibitor
from backup.schedule import (
    Schedule,
    describe,
    due_slot,
    last_slot_done,
    missed_slots,
    next_runs,
    parse_schedule,
    utc,
)

TAG = "appliance-backup"
POLL_SECONDS = 30.0
"""The longest the daemon sleeps before looking at the config file and the stop event again."""
CATCH_UP_GRACE = timedelta(minutes=2)
"""A slot run later than this after its time (or one that passed before the daemon started) is a catch-up."""
INFO, WARNING, ERROR = 6, 4, 3


class ScheduledService(Protocol):
    """What the daemon needs of backup.service.BackupService."""

    config: Any
    """Has `.path` (the config file) and `.raw` (the parsed document)."""
    journal: Any
    """Has `.runs()` -> list of RunRecord."""

    def run_backup(self, *, progress: Any = None, cancel: threading.Event | None = None,
                   slot: datetime | None = None, catch_up: bool = False) -> Any: ...

    def run_verify_job(self, *, slot: datetime, catch_up: bool = False,
                       cancel: threading.Event | None = None) -> Any: ...


def log_line(priority: int, message: str) -> str:
    """A journald-friendly line: `<priority>appliance-backup: message`."""
    return f"<{priority}>{TAG}: {message}"


def fmt(moment: datetime) -> str:
    return moment.isoformat(timespec="minutes")


def _config_signature(path: Path) -> tuple[int, int, int] | None:
    """Changes when the file is edited in place or replaced by a rename (atomic write)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def run_daemon(
    load_service: Callable[[], ScheduledService],
    *,
    stop: threading.Event,
    clock: Callable[[], datetime],
    sleep: Callable[[float], object] | None = None,
    log: Callable[[str], None],
    poll_seconds: float = POLL_SECONDS,
    inhibit: Callable[[str], AbstractContextManager[Inhibitor]] | None = shutdown_inhibitor,
    config_signature: Callable[[Path], object] = _config_signature,
) -> int:
    """Run scheduled backups until `stop` is set; return the exit code.

    Args:
        load_service: builds the service from the configuration file; called at start and again
            whenever the file changes. Raises ConfigError for a bad file.
        stop: set by the caller's SIGTERM/SIGINT/SIGHUP handler; also the running backup's cancel event.
        clock: now, timezone-aware in the appliance's zone with its DST rules
            (backup.schedule.local_now).
        sleep: waits the given seconds; default `stop.wait`, so a stop request wakes it at once.
        log: takes one line (print to stdout under systemd).
        poll_seconds: the longest single sleep (at most 30 s).
        inhibit: holds a shutdown inhibitor around each run; None when run_backup holds one itself.
        config_signature: what identifies a version of the config file (tests may replace it).

    Returns:
        ExitCode.OK after a stop request; ExitCode.USAGE when the configuration cannot be loaded at start.
    """
    wait = sleep if sleep is not None else stop.wait
    poll_seconds = min(poll_seconds, POLL_SECONDS)

    def say(priority: int, message: str) -> None:
        log(log_line(priority, message))

    try:
        service = load_service()
        schedule = parse_schedule(service.config.raw, service.config.path)
    except ConfigError as exc:
        say(ERROR, f"not started: {exc}")
        return int(ExitCode.USAGE)
    config_path = Path(service.config.path)
    signature = config_signature(config_path)
    started = clock()
    # A slot not journalled but older than this counts as done; raised when the schedule changes,
    # so that editing the schedule never runs a slot of the new schedule that is already past.
    baseline: datetime | None = _first_baseline(service)
    attempted: datetime | None = None
    say(INFO, f"daemon started; {_schedule_text(schedule, started)}")

    while not stop.is_set():
        now = clock()
        current = config_signature(config_path)
        if current != signature:
            signature = current
            try:
                new_service = load_service()
                new_schedule = parse_schedule(new_service.config.raw, new_service.config.path)
            except ConfigError as exc:
                say(ERROR, f"configuration not reloaded, the previous one stays in effect: {exc}")
            else:
                service = new_service
                if new_schedule != schedule:
                    schedule = new_schedule
                    baseline = now
                    attempted = None
                    say(INFO, f"configuration reloaded; {_schedule_text(schedule, now)}")
                else:
                    say(INFO, "configuration reloaded; the schedule is unchanged")

        alert_tick = getattr(service, "alert_tick", None)
        if alert_tick is not None:  # standing conditions and due alert retries, on a background thread
            try:
                alert_tick()
            except Exception as exc:  # alerts never stop the scheduler
                say(WARNING, f"alert delivery could not start: {type(exc).__name__}: {exc}")
        runs = service.journal.runs()
        done = _latest(last_slot_done(runs), attempted, baseline)
        due = due_now(schedule, runs, now, started=started, baseline=_latest(attempted, baseline))
        if due is not None:
            slot, catch_up = due
            if _run_slot(service, slot, catch_up, done, now, schedule, stop, inhibit, say):
                attempted = slot
                if not stop.is_set():
                    say(INFO, _next_text(schedule, clock()))
            else:
                wait(poll_seconds)
            continue

        job = getattr(service.config, "verify", None)
        job_due = verifyjob.due(job, runs, now, started=started)
        if job_due is not None:
            if not _run_verify_job(service, *job_due, stop, say):
                wait(poll_seconds)
            continue

        upcoming = next_runs(schedule, now, 1) + ([t] if (t := verifyjob.next_job(job, now)) else [])
        seconds = poll_seconds
        if upcoming:
            seconds = min(poll_seconds, max(0.0, min((utc(u) - utc(now)).total_seconds() for u in upcoming)))
        wait(seconds)

    say(INFO, "daemon stopped")
    return int(ExitCode.OK)


def _run_slot(service: ScheduledService, slot: datetime, catch_up: bool, done: datetime | None, now: datetime,
              schedule: Schedule, stop: threading.Event,
              inhibit: Callable[[str], AbstractContextManager[Inhibitor]] | None, say: Callable[[int, str], None]) -> bool:
    """Run one slot; False when it could not start because another run holds the lock (try again later)."""
    label = f"slot {fmt(slot)}" + (", catch-up" if catch_up else "")
    if catch_up and done is not None:
        missed = missed_slots(schedule, done, now)
        if missed > 1:
            label += f" for {missed} slots missed since {fmt(done)}, run once"
    say(INFO, f"backup started ({label})")

    holder = inhibit("Scheduled backup in progress") if inhibit is not None else nullcontext(None)
    with holder as inhibitor:
        if inhibitor is not None and not inhibitor.held:
            say(WARNING, inhibitor.status_line)
        def finished(result: Any) -> str:
            size = getattr(result, "size", None)
            return f"{getattr(result, 'name', '?')}" + (f", {size} bytes" if size is not None else "")

        return _run_logged("backup", label, lambda: service.run_backup(progress=None, cancel=stop, slot=slot,
                                                                        catch_up=catch_up), finished, say)


def _run_verify_job(service: ScheduledService, slot: datetime, catch_up: bool, stop: threading.Event,
                    say: Callable[[int, str], None]) -> bool:
    """Run the [verify] job's slot; False when a backup or restore holds the lock (try again later)."""
    label = f"slot {fmt(slot)}" + (", catch-up" if catch_up else "")
    say(INFO, f"verify job started ({label})")
    return _run_logged("verify job", label, lambda: service.run_verify_job(slot=slot, catch_up=catch_up, cancel=stop),
                       lambda result: f"{len(result.verified)} backup(s) verified", say)


def _run_logged(what: str, label: str, run: Callable[[], Any], finished: Callable[[Any], str],
                say: Callable[[int, str], None]) -> bool:
    """Run a scheduled slot's work and log how it ended; False when another run holds the lock (try later)."""
    try:
        result = run()
    except SlotAlreadyDoneError:
        say(INFO, f"{what} skipped ({label}): that slot was already run")
    except LockHeldError as exc:
        say(WARNING, f"{what} postponed ({label}): {exc}")
        return False
    except InterruptedRunError as exc:
        say(WARNING, f"{what} interrupted ({label}): {exc}")
    except BackupError as exc:
        say(ERROR, f"{what} failed ({label}): {exc}")
    except Exception as exc:  # a daemon outlives one bad run; the journal has the run's error
        say(ERROR, f"{what} failed ({label}): unexpected {type(exc).__name__}: {exc}")
    else:
        say(INFO, f"{what} finished ({label}): {finished(result)}")
    return True


def due_now(schedule: Schedule, runs: list[Any], now: datetime, *, started: datetime,
            baseline: datetime | None = None) -> tuple[datetime, bool] | None:
    """The scheduled slot to run now, and whether it is a catch-up; None when nothing is due.

    Shared by the daemon and the console, so either runs a slot the same way (the journal,
    under the run lock, keeps it from running twice). `started` is when the caller began
    scheduling (slots before it are catch-ups); `baseline` counts as a slot already done.
    """
    if not schedule.enabled:
        return None
    done = _latest(last_slot_done(runs), baseline)
    slot = due_slot(schedule, done, now)
    if slot is None:
        return None
    return slot, utc(slot) < utc(started) or utc(now) - utc(slot) > CATCH_UP_GRACE


def first_baseline(runs: list[Any]) -> datetime | None:
    """When no slot was ever journalled: the newest backup run counts as the last slot done."""
    runs = [r for r in runs if getattr(r, "kind", None) == "backup"]
    if last_slot_done(runs) is not None or not runs:
        return None
    return max((r.started_at for r in runs), key=utc)


def _first_baseline(service: ScheduledService) -> datetime | None:
    return first_baseline(service.journal.runs())


def _latest(*moments: datetime | None) -> datetime | None:
    present = [m for m in moments if m is not None]
    return max(present, key=utc) if present else None


def _schedule_text(schedule: Schedule, now: datetime) -> str:
    if not schedule.enabled:
        return "schedule disabled (set [schedule] enabled = true in the configuration to run backups on a schedule)"
    return f"schedule {schedule.cron!r} ({describe(schedule.cron).rstrip('.')}); " + _next_text(schedule, now)


def _next_text(schedule: Schedule, now: datetime) -> str:
    upcoming = next_runs(schedule, now, 1)
    if not upcoming:
        return "no further scheduled backup" if schedule.enabled else "schedule disabled"
    return f"next backup at {fmt(upcoming[0])}"
