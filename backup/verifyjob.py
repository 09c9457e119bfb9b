"""Provides [verify] jobs: scheduled verification of the backups in the storage.

A verify job runs on its own cron schedule, the way scheduled backups do:
once per slot (the slot is journalled with the job, `kind="verify_job"`),
one catch-up run for every slot missed while the appliance was down, and
under the appliance's run lock, so never at the same time as a backup or a
restore. It verifies the backups [verify] selects, each as an ordinary
journalled verify run (a failure is a verify_failed alert), then ends "ok"
or "failed" with a sentence naming what failed.

    [verify]
    cron = "0 4 * * 0"          # Sundays at 04:00, local time
    newest = 1                  # the newest N backups (the default: 1)
    # not_verified_days = 30    # or: every backup no verify passed within D days
    deep = false                # true: also decompress and check every file
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backup.errors import BackupError, ConfigError, InterruptedRunError, SlotAlreadyDoneError
from backup.lock import RunLock
from backup.schedule import Schedule, due_slot, next_runs, normalize_cron, parse_slot_detail, slot_detail, utc, \
    validate_cron

if TYPE_CHECKING:
    from backup.service import BackupService

KIND = "verify_job"
VERIFY_KEYS = ("cron", "newest", "not_verified_days", "deep")
MAX_NEWEST = 1000


@dataclass(frozen=True)
class VerifyJobConfig:
    cron: str
    newest: int | None = 1
    """Verify the newest N backups; None when not_verified_days chooses instead."""
    not_verified_days: float | None = None
    """Verify every backup that no verify passed within this many days."""
    deep: bool = False

    @property
    def schedule(self) -> Schedule:
        return Schedule(enabled=True, cron=self.cron)

    @property
    def selection(self) -> str:
        if self.not_verified_days is not None:
            return f"every backup not verified within {self.not_verified_days:g} days"
        return "the newest backup" if self.newest == 1 else f"the newest {self.newest} backups"


@dataclass(frozen=True)
class VerifyJobResult:
    verified: list[str]
    failed: list[tuple[str, str]]
    """(backup, why) for each backup that failed verification."""


def parse_verify(raw: dict[str, Any], path: Path) -> VerifyJobConfig | None:
    """Read [verify]; None when it is absent (no verify jobs)."""
    table = raw.get("verify")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"In {path}, verify must be a table: write it as [verify] followed by cron = \"0 4 * * 0\".")
    if "cron" not in table:
        raise ConfigError(f"In {path}, [verify] cron is missing: add it, for example cron = \"0 4 * * 0\" "
                          "(Sundays at 04:00), or remove [verify].")
    cron = table["cron"]
    if not isinstance(cron, str):
        raise ConfigError(f"In {path}, [verify] cron must be a string in quotes, such as \"0 4 * * 0\", not {cron!r}.")
    problem = validate_cron(cron)
    if problem:
        raise ConfigError(f"In {path}, [verify] cron: {problem}")
    if "newest" in table and "not_verified_days" in table:
        raise ConfigError(f"In {path}, [verify] sets both newest and not_verified_days: keep the one that says which "
                          "backups to verify.")
    newest = table.get("newest", 1 if "not_verified_days" not in table else None)
    if newest is not None and (isinstance(newest, bool) or not isinstance(newest, int)
                               or not 1 <= newest <= MAX_NEWEST):
        raise ConfigError(f"In {path}, [verify] newest must be a whole number from 1 to {MAX_NEWEST} (without quotes), "
                          f"not {newest!r}.")
    days = table.get("not_verified_days")
    if days is not None and (isinstance(days, bool) or not isinstance(days, (int, float)) or not 0 < days <= 3660):
        raise ConfigError(f"In {path}, [verify] not_verified_days must be a number of days above 0 and at most 3660 "
                          f"(without quotes), not {days!r}.")
    deep = table.get("deep", False)
    if not isinstance(deep, bool):
        raise ConfigError(f"In {path}, [verify] deep must be true or false (without quotes), not {deep!r}.")
    return VerifyJobConfig(cron=normalize_cron(cron), newest=newest,
                           not_verified_days=float(days) if days is not None else None, deep=deep)


def slots_done(runs: list[Any]) -> list[datetime]:
    return [parsed[0] for run in runs if getattr(run, "kind", None) == KIND
            for parsed in [parse_slot_detail(getattr(run, "detail", None))] if parsed is not None]


def due(job: VerifyJobConfig | None, runs: list[Any], now: datetime, *, started: datetime,
        grace: timedelta = timedelta(minutes=2)) -> tuple[datetime, bool] | None:
    """The verify job's slot to run now and whether it is a catch-up, or None. Slots missed while the
    appliance was down are one catch-up run; a job never run before runs for the newest past slot."""
    if job is None:
        return None
    done = max(slots_done(runs), key=utc, default=None)
    slot = due_slot(job.schedule, done, now)
    if slot is None:
        return None
    return slot, utc(slot) < utc(started) or utc(now) - utc(slot) > grace


def next_job(job: VerifyJobConfig | None, now: datetime) -> datetime | None:
    if job is None:
        return None
    upcoming = next_runs(job.schedule, now, 1)
    return upcoming[0] if upcoming else None


def select(service: "BackupService", job: VerifyJobConfig, now: datetime) -> list[str]:
    """The backups this job verifies, newest first."""
    backups = [b for b in service.list_backups() if service.is_own_backup(b.name)]
    if job.not_verified_days is None:
        return [b.name for b in backups[: job.newest]]
    since = now - timedelta(days=job.not_verified_days)
    recent = {r.name for r in service.journal.runs()
              if r.kind == "verify" and r.result == "ok" and r.ended_at is not None and utc(r.ended_at) >= utc(since)}
    return [b.name for b in backups if b.name not in recent]


def run(service: "BackupService", *, slot: datetime | None, catch_up: bool = False,
        cancel: threading.Event | None = None) -> VerifyJobResult:
    """Run the verify job (for `slot`, once) under the run lock."""
    job = service.config.verify
    if job is None:
        raise ConfigError(f"No verify job is set: add [verify] with a cron expression to {service.config.path}.")
    started = service.clock()
    with RunLock(service.state_dir, "verify job", now=started):
        service.recover_unlocked()
        if slot is not None and any(utc(done) == utc(slot) for done in slots_done(service.journal.runs())):
            raise SlotAlreadyDoneError(f"The verify job of {slot.isoformat(timespec='minutes')} already ran.")
        with service._journalled(KIND, now=started, detail=slot_detail(slot, catch_up) if slot else None):
            verified: list[str] = []
            failed: list[tuple[str, str]] = []
            for name in select(service, job, started):
                if cancel is not None and cancel.is_set():
                    raise InterruptedRunError("The verify job was stopped before it finished.")
                try:
                    service.verify(name, deep=job.deep, cancel=cancel)
                    verified.append(name)
                except InterruptedRunError:
                    raise
                except BackupError as exc:
                    failed.append((name, exc.message))
            if failed:
                shown = "; ".join(f"{name}: {why}" for name, why in failed[:3])
                raise VerifyJobFailedError(
                    f"{len(failed)} of {len(failed) + len(verified)} backup(s) failed verification ({shown}): do "
                    "not rely on them; take a new backup and check the storage.")
    return VerifyJobResult(verified=verified, failed=failed)


def status_line(report: Any) -> str:
    """The last verify job's outcome and the next one's time (a StatusReport), in the words the command
    and the console both use."""
    parts = []
    job = report.last_verify_job
    if job is not None and job.ended_at is not None:
        outcome = "passed" if job.result == "ok" else f"{job.result}: {job.error}"
        parts.append(f"last {job.ended_at:%Y-%m-%d %H:%M %Z} {outcome}")
    else:
        parts.append("not run yet")
    if report.next_verify_job is not None:
        parts.append(f"next {report.next_verify_job:%Y-%m-%d %H:%M %Z}")
    return "; ".join(parts)


class VerifyJobFailedError(BackupError):
    """One or more backups the job verified failed."""
