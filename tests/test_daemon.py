"""Tests of backup.daemon: the scheduler loop, with an injected clock and sleep.

Until run_backup takes `slot` and `catch_up` (the contract in backup/daemon.py),
`SlotService` below stands in for the unmerged parameters: it journals the slot
with the real RunJournal exactly as the contract says, and refuses a slot
already journalled. The end of the file runs the daemon against the real
BackupService on a demo appliance, through a thin subclass with the same
stand-in.
"""

from __future__ import annotations

import os
import threading
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable
from zoneinfo import ZoneInfo

import tomli_w

from backup.archive import ScryptParams
from backup.config import load_config
from backup.daemon import POLL_SECONDS, log_line, run_daemon
from backup.demo import create_demo_appliance
from backup.errors import BackupError, ExitCode, InterruptedRunError, LockHeldError, SlotAlreadyDoneError
from backup.inhibit import Inhibitor
from backup.journal import RunJournal
from backup.schedule import parse_slot_detail, slot_already_done, slot_detail, utc
from backup.service import BackupService

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def at(tz, *fields, fold=0) -> datetime:
    return datetime(*fields, tzinfo=tz, fold=fold)


class FakeTime:
    """A clock and a sleep: sleeping moves the clock (in real time, across DST); stops at `until`."""

    def __init__(self, start: datetime, until: datetime, stop: threading.Event) -> None:
        self.now = start
        self.until = until
        self.stop = stop
        self.sleeps: list[float] = []
        self.hooks: list[tuple[datetime, Callable[[], None]]] = []

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now = (utc(self.now) + timedelta(seconds=seconds)).astimezone(self.now.tzinfo)
        for when, hook in list(self.hooks):
            if utc(self.now) >= utc(when):
                self.hooks.remove((when, hook))
                hook()
        if utc(self.now) >= utc(self.until):
            self.stop.set()

    def sleep(self, seconds: float) -> None:
        assert 0 <= seconds <= POLL_SECONDS
        self.sleeps.append(seconds)
        self.advance(seconds)


@dataclass
class Call:
    at: datetime
    slot: datetime
    catch_up: bool
    cancel: threading.Event | None


@dataclass
class SlotService:
    """Stand-in for BackupService with the unmerged `slot`/`catch_up` parameters of run_backup.

    It keeps the contract: refuse a slot already journalled (SlotAlreadyDoneError), journal
    the run with detail=slot_detail(slot, catch_up), end it ok/failed/interrupted.
    """

    config: Any
    journal: RunJournal
    time: FakeTime
    calls: list[Call] = field(default_factory=list)
    behaviour: Callable[["SlotService", threading.Event | None], None] | None = None
    duration: float = 300.0

    def run_backup(self, *, progress=None, cancel=None, slot=None, catch_up=False):
        self.calls.append(Call(self.time(), slot, catch_up, cancel))
        if slot_already_done(self.journal.runs(), slot):
            raise SlotAlreadyDoneError("done")
        run_id = self.journal.start("backup", now=self.time(), name=f"b{len(self.calls)}.abk",
                                    detail=slot_detail(slot, catch_up))
        try:
            if self.behaviour is not None:
                self.behaviour(self, cancel)
            self.time.advance(self.duration)
        except BaseException as exc:
            result = "interrupted" if isinstance(exc, InterruptedRunError) else "failed"
            self.journal.end(run_id, result, now=self.time(), error=str(exc))
            raise
        self.journal.end(run_id, "ok", now=self.time(), size=1234)
        return SimpleNamespace(name=f"b{len(self.calls)}.abk", size=1234)


class Harness:
    """A config file, a journal, a fake clock, a log, and run_daemon wired to them."""

    def __init__(self, tmp_path: Path, start: datetime, until: datetime, cron: str | None = "0 2 * * *") -> None:
        self.config_path = tmp_path / "config.toml"
        self.write_config(cron)
        self.journal = RunJournal(tmp_path / "state")
        self.stop = threading.Event()
        self.time = FakeTime(start, until, self.stop)
        self.lines: list[str] = []
        self.loads = 0
        self.services: list[SlotService] = []
        self.behaviour: Callable[[SlotService, threading.Event | None], None] | None = None
        self.inhibitions: list[str] = []

    def write_config(self, cron: str | None, enabled: bool = True) -> None:
        raw: dict[str, Any] = {"appliance": {"name": "a1"}}
        if cron is not None:
            raw["schedule"] = {"enabled": enabled, "cron": cron}
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(tomli_w.dumps(raw))
        os.replace(tmp, self.config_path)  # as update_config writes it: a new file by rename

    def load_service(self) -> SlotService:
        self.loads += 1
        raw = tomllib.loads(self.config_path.read_text())
        service = SlotService(config=SimpleNamespace(path=self.config_path, raw=raw), journal=self.journal,
                              time=self.time, behaviour=self.behaviour)
        self.services.append(service)
        return service

    @property
    def calls(self) -> list[Call]:
        return [call for service in self.services for call in service.calls]

    def inhibit(self, why: str):
        harness = self

        class _Held:
            def __enter__(self):
                harness.inhibitions.append(f"enter {why}")
                return Inhibitor(False, "systemd-inhibit is not installed")

            def __exit__(self, *exc):
                harness.inhibitions.append("exit")
                return False

        return _Held()

    def run(self) -> int:
        return run_daemon(self.load_service, stop=self.stop, clock=self.time, sleep=self.time.sleep,
                          log=self.lines.append, inhibit=self.inhibit)

    def slots_journalled(self) -> list[tuple[str, bool, str | None]]:
        out = []
        for run in self.journal.runs():
            parsed = parse_slot_detail(run.detail)
            assert parsed is not None
            out.append((parsed[0].isoformat(), parsed[1], run.result))
        return out


def journal_slot(journal: RunJournal, slot: datetime, *, now: datetime, result: str = "ok") -> None:
    run_id = journal.start("backup", now=now, name="old.abk", detail=slot_detail(slot))
    journal.end(run_id, result, now=now + timedelta(minutes=5))


# ------------------------------------------------------------------ catch-up and normal runs


def test_downtime_across_several_slots_runs_one_catch_up(tmp_path):
    # Started off the half-minute grid: reaching 02:00:00 exactly needs the sleep to aim at the slot.
    h = Harness(tmp_path, start=at(BERLIN, 2026, 11, 26, 9, 17, 13), until=at(BERLIN, 2026, 11, 27, 2, 30))
    journal_slot(h.journal, at(BERLIN, 2026, 11, 20, 2), now=at(BERLIN, 2026, 11, 20, 2))

    assert h.run() == ExitCode.OK

    assert [(c.at.isoformat(), c.slot.isoformat(), c.catch_up) for c in h.calls] == [
        ("2026-11-26T09:17:13+01:00", "2026-11-26T02:00:00+01:00", True),   # six missed nights: one run
        ("2026-11-27T02:00:00+01:00", "2026-11-27T02:00:00+01:00", False),  # woke exactly at the slot
    ]
    assert all(c.cancel is h.stop for c in h.calls)
    assert h.slots_journalled() == [
        ("2026-11-20T02:00:00+01:00", False, "ok"),
        ("2026-11-26T02:00:00+01:00", True, "ok"),
        ("2026-11-27T02:00:00+01:00", False, "ok"),
    ]
    assert h.lines[:4] == [
        "<6>appliance-backup: daemon started; schedule '0 2 * * *' (Every day at 02:00); next backup at 2026-11-27T02:00+01:00",
        "<6>appliance-backup: backup started (slot 2026-11-26T02:00+01:00, catch-up for 6 slots missed since 2026-11-20T02:00+01:00, run once)",
        "<4>appliance-backup: no shutdown inhibitor available: systemd-inhibit is not installed",
        "<6>appliance-backup: backup finished (slot 2026-11-26T02:00+01:00, catch-up for 6 slots missed since 2026-11-20T02:00+01:00, run once): b1.abk, 1234 bytes",
    ]
    assert h.lines[4:] == [
        "<6>appliance-backup: next backup at 2026-11-27T02:00+01:00",
        "<6>appliance-backup: backup started (slot 2026-11-27T02:00+01:00)",
        "<4>appliance-backup: no shutdown inhibitor available: systemd-inhibit is not installed",
        "<6>appliance-backup: backup finished (slot 2026-11-27T02:00+01:00): b2.abk, 1234 bytes",
        "<6>appliance-backup: next backup at 2026-11-28T02:00+01:00",
        "<6>appliance-backup: daemon stopped",
    ]
    assert h.inhibitions == ["enter Scheduled backup in progress", "exit"] * 2
    assert max(h.time.sleeps) <= POLL_SECONDS
    assert h.loads == 1  # the config file never changed


def test_restart_does_not_run_a_slot_twice(tmp_path):
    h = Harness(tmp_path, start=at(BERLIN, 2026, 11, 26, 1, 59), until=at(BERLIN, 2026, 11, 26, 2, 10))
    journal_slot(h.journal, at(BERLIN, 2026, 11, 25, 2), now=at(BERLIN, 2026, 11, 25, 2))
    h.run()
    assert [c.slot.isoformat() for c in h.calls] == ["2026-11-26T02:00:00+01:00"]
    # The daemon restarts (systemd) at 02:20: the 02:00 slot is journalled, so nothing runs.
    (tmp_path / "x").mkdir()
    again = Harness(tmp_path / "x", start=at(BERLIN, 2026, 11, 26, 2, 20), until=at(BERLIN, 2026, 11, 26, 3))
    again.journal = h.journal
    again.run()
    assert again.calls == []
    assert len(h.journal.runs()) == 2  # the 25th's and the 26th's, once each


def test_first_start_without_any_backup_runs_the_latest_slot(tmp_path):
    h = Harness(tmp_path, start=at(BERLIN, 2026, 11, 26, 14), until=at(BERLIN, 2026, 11, 26, 14, 1))
    h.run()
    assert [(c.slot.isoformat(), c.catch_up) for c in h.calls] == [("2026-11-26T02:00:00+01:00", True)]


def test_first_start_after_a_recent_manual_backup_waits_for_the_next_slot(tmp_path):
    h = Harness(tmp_path, start=at(BERLIN, 2026, 11, 26, 14), until=at(BERLIN, 2026, 11, 26, 15))
    run_id = h.journal.start("backup", now=at(BERLIN, 2026, 11, 26, 10), name="manual.abk")
    h.journal.end(run_id, "ok", now=at(BERLIN, 2026, 11, 26, 10, 5))
    h.run()
    assert h.calls == []


def test_schedule_disabled_never_runs_and_polls(tmp_path):
    h = Harness(tmp_path, start=at(BERLIN, 2026, 11, 26, 1), until=at(BERLIN, 2026, 11, 26, 3))
    h.write_config("0 2 * * *", enabled=False)
    h.run()
    assert h.calls == []
    assert set(h.time.sleeps) == {POLL_SECONDS}
    assert h.lines[0] == ("<6>appliance-backup: daemon started; schedule disabled (set [schedule] enabled = true "
                          "in the configuration to run backups on a schedule)")


# ------------------------------------------------------------------ DST


def test_berlin_fall_back_night_runs_once(tmp_path):
    h = Harness(tmp_path, start=at(BERLIN, 2026, 10, 25, 0), until=at(BERLIN, 2026, 10, 25, 4), cron="30 2 * * *")
    journal_slot(h.journal, at(BERLIN, 2026, 10, 24, 2, 30), now=at(BERLIN, 2026, 10, 24, 2, 30))
    h.run()
    assert [(c.at.isoformat(), c.catch_up) for c in h.calls] == [("2026-10-25T02:30:00+02:00", False)]
    # Five hours of real time passed (the clock showed 02:xx twice).
    assert utc(h.time.now) - utc(at(BERLIN, 2026, 10, 25, 0)) == timedelta(hours=5)


def test_berlin_spring_forward_night_runs_once_at_0300(tmp_path):
    h = Harness(tmp_path, start=at(BERLIN, 2026, 3, 29, 0), until=at(BERLIN, 2026, 3, 29, 5), cron="30 2 * * *")
    journal_slot(h.journal, at(BERLIN, 2026, 3, 28, 2, 30), now=at(BERLIN, 2026, 3, 28, 2, 30))
    h.run()
    assert [(c.at.isoformat(), c.slot.isoformat(), c.catch_up) for c in h.calls] == [
        ("2026-03-29T03:00:00+02:00", "2026-03-29T03:00:00+02:00", False),
    ]


def test_new_york_fall_back_night_runs_once(tmp_path):
    h = Harness(tmp_path, start=at(NEW_YORK, 2026, 11, 1, 0), until=at(NEW_YORK, 2026, 11, 1, 3), cron="30 1 * * *")
    journal_slot(h.journal, at(NEW_YORK, 2026, 10, 31, 1, 30), now=at(NEW_YORK, 2026, 10, 31, 1, 30))
    h.run()
    assert [c.at.isoformat() for c in h.calls] == ["2026-11-01T01:30:00-04:00"]


# ------------------------------------------------------------------ configuration changes


def test_config_change_is_picked_up_without_running_past_slots(tmp_path):
    h = Harness(tmp_path, start=at(BERLIN, 2026, 11, 26, 9), until=at(BERLIN, 2026, 11, 27, 6))
    journal_slot(h.journal, at(BERLIN, 2026, 11, 26, 2), now=at(BERLIN, 2026, 11, 26, 2))
    # At 12:00 the operator saves "every day at 04:00 and 11:00": 11:00 today is past, not run.
    h.time.hooks.append((at(BERLIN, 2026, 11, 26, 12), lambda: h.write_config("0 4,11 * * *")))
    h.run()
    assert h.loads == 2
    assert "<6>appliance-backup: configuration reloaded; schedule '0 4,11 * * *' (Every day at 04:00 and 11:00); next backup at 2026-11-27T04:00+01:00" in h.lines
    assert [(c.at.isoformat(), c.catch_up) for c in h.calls] == [("2026-11-27T04:00:00+01:00", False)]
    # The change was seen within one poll interval.
    reload_index = next(i for i, line in enumerate(h.lines) if "configuration reloaded" in line)
    assert reload_index == 1


def test_bad_config_on_reload_keeps_the_previous_one(tmp_path):
    h = Harness(tmp_path, start=at(BERLIN, 2026, 11, 26, 1), until=at(BERLIN, 2026, 11, 26, 2, 1))
    journal_slot(h.journal, at(BERLIN, 2026, 11, 25, 2), now=at(BERLIN, 2026, 11, 25, 2))
    h.time.hooks.append((at(BERLIN, 2026, 11, 26, 1, 30), lambda: h.write_config("0 25 * * *")))
    h.run()
    errors = [line for line in h.lines if line.startswith("<3>")]
    assert errors == [
        f"<3>appliance-backup: configuration not reloaded, the previous one stays in effect: In {h.config_path}, "
        "[schedule] cron: The hour field '25' of the schedule '0 25 * * *' is not valid: 25 is out of range: use * or "
        "a number from 0 to 23, a range a-b, a step */n or a-b/n, or a comma list of those.",
    ]
    assert [c.slot.isoformat() for c in h.calls] == ["2026-11-26T02:00:00+01:00"]


def test_bad_config_at_start(tmp_path):
    h = Harness(tmp_path, start=at(BERLIN, 2026, 11, 26, 1), until=at(BERLIN, 2026, 11, 26, 2))
    h.write_config("every night")
    assert h.run() == ExitCode.USAGE
    assert len(h.lines) == 1 and h.lines[0].startswith(f"<3>appliance-backup: not started: In {h.config_path}, [schedule] cron:")


# ------------------------------------------------------------------ failures and stopping


def test_failed_run_is_not_retried_for_the_same_slot(tmp_path):
    h = Harness(tmp_path, start=at(BERLIN, 2026, 11, 26, 1, 59), until=at(BERLIN, 2026, 11, 26, 4))
    journal_slot(h.journal, at(BERLIN, 2026, 11, 25, 2), now=at(BERLIN, 2026, 11, 25, 2))

    def fail(service, cancel):
        raise BackupError("The NFS server did not answer: check the network.")

    h.behaviour = fail
    assert h.run() == ExitCode.OK
    assert len(h.calls) == 1
    assert "<3>appliance-backup: backup failed (slot 2026-11-26T02:00+01:00): The NFS server did not answer: check the network." in h.lines
    assert h.slots_journalled() == [
        ("2026-11-25T02:00:00+01:00", False, "ok"), ("2026-11-26T02:00:00+01:00", False, "failed"),
    ]


def test_failure_before_journalling_is_not_retried_either(tmp_path):
    h = Harness(tmp_path, start=at(BERLIN, 2026, 11, 26, 1, 59), until=at(BERLIN, 2026, 11, 26, 4))
    journal_slot(h.journal, at(BERLIN, 2026, 11, 25, 2), now=at(BERLIN, 2026, 11, 25, 2))
    calls = []

    def load():
        service = h.load_service()

        def refuse(**kwargs):
            calls.append(kwargs["slot"])
            raise BackupError("No backup can be made until the Domain Master Secret is set: set it in Settings.")

        service.run_backup = refuse
        return service

    run_daemon(load, stop=h.stop, clock=h.time, sleep=h.time.sleep, log=h.lines.append, inhibit=None)
    assert calls == [at(BERLIN, 2026, 11, 26, 2)]


def test_lock_held_postpones_and_retries(tmp_path):
    h = Harness(tmp_path, start=at(BERLIN, 2026, 11, 26, 1, 59), until=at(BERLIN, 2026, 11, 26, 3))
    journal_slot(h.journal, at(BERLIN, 2026, 11, 25, 2), now=at(BERLIN, 2026, 11, 25, 2))
    attempts = []

    def load():
        service = h.load_service()
        real_run = service.run_backup

        def busy_once(**kwargs):
            attempts.append((h.time().isoformat(), kwargs["slot"].isoformat()))
            if len(attempts) == 1:  # the lock is taken before anything is journalled
                raise LockHeldError("Another backup or restore is running: wait for it to finish, then try again.")
            return real_run(**kwargs)

        service.run_backup = busy_once
        return service

    run_daemon(load, stop=h.stop, clock=h.time, sleep=h.time.sleep, log=h.lines.append, inhibit=None)
    assert attempts == [
        ("2026-11-26T02:00:00+01:00", "2026-11-26T02:00:00+01:00"),
        ("2026-11-26T02:00:30+01:00", "2026-11-26T02:00:00+01:00"),
    ]
    assert ("<4>appliance-backup: backup postponed (slot 2026-11-26T02:00+01:00): Another backup or restore is "
            "running: wait for it to finish, then try again.") in h.lines
    assert h.slots_journalled()[-1] == ("2026-11-26T02:00:00+01:00", False, "ok")


def test_slot_already_done_elsewhere_is_skipped(tmp_path):
    h = Harness(tmp_path, start=at(BERLIN, 2026, 11, 26, 1, 59), until=at(BERLIN, 2026, 11, 26, 3))
    journal_slot(h.journal, at(BERLIN, 2026, 11, 25, 2), now=at(BERLIN, 2026, 11, 25, 2))

    def other_process_ran_it(service, cancel):
        raise SlotAlreadyDoneError("done")

    h.behaviour = other_process_ran_it
    h.run()
    assert len(h.calls) == 1
    assert "<6>appliance-backup: backup skipped (slot 2026-11-26T02:00+01:00): that slot was already run" in h.lines


def test_stop_during_a_run_interrupts_it_and_ends_the_daemon(tmp_path):
    h = Harness(tmp_path, start=at(BERLIN, 2026, 11, 26, 1, 59), until=at(BERLIN, 2026, 11, 28))
    journal_slot(h.journal, at(BERLIN, 2026, 11, 25, 2), now=at(BERLIN, 2026, 11, 25, 2))

    def sigterm_mid_run(service, cancel):
        h.stop.set()  # what the SIGTERM handler does
        if cancel is not None and cancel.is_set():
            raise InterruptedRunError("The backup was stopped before it finished; nothing partial was kept.")

    h.behaviour = sigterm_mid_run
    assert h.run() == ExitCode.OK
    assert len(h.calls) == 1
    assert h.lines[-2:] == [
        "<4>appliance-backup: backup interrupted (slot 2026-11-26T02:00+01:00): The backup was stopped before it finished; nothing partial was kept.",
        "<6>appliance-backup: daemon stopped",
    ]
    assert h.slots_journalled() == [
        ("2026-11-25T02:00:00+01:00", False, "ok"), ("2026-11-26T02:00:00+01:00", False, "interrupted"),
    ]
    assert h.inhibitions == ["enter Scheduled backup in progress", "exit"]


def test_default_sleep_wakes_at_once_on_stop(tmp_path):
    """Without an injected sleep the daemon waits on `stop`, so SIGTERM ends it at once, not after 30 s."""
    h = Harness(tmp_path, start=at(BERLIN, 2026, 11, 26, 1), until=at(BERLIN, 2030, 1, 1))
    h.write_config("0 2 * * *", enabled=False)
    result = []
    thread = threading.Thread(target=lambda: result.append(
        run_daemon(h.load_service, stop=h.stop, clock=h.time, log=h.lines.append, inhibit=None)))
    thread.start()
    deadline = time.monotonic() + 5
    while not h.lines and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    h.stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive() and result == [ExitCode.OK]
    assert time.monotonic() - started < 1


def test_log_line_format():
    assert log_line(6, "backup started (slot 2026-11-26T02:00+01:00)") == \
        "<6>appliance-backup: backup started (slot 2026-11-26T02:00+01:00)"


# ------------------------------------------------------------------ the real BackupService


class RealSlotService(BackupService):
    """The real BackupService with a stand-in for the unmerged `slot`/`catch_up` parameters.

    It journals the slot by adding the detail to run_backup's own journal.start call;
    everything else (lock, archive, storage, cancel, partial removal, journal) is the real code.
    """

    def __init__(self, *args, on_stage: Callable[[str], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_stage = on_stage

    def run_backup(self, *, progress=None, cancel=None, slot=None, catch_up=False):
        if slot is None:
            return super().run_backup(progress=progress, cancel=cancel)
        if slot_already_done(self.journal.runs(), slot):
            raise SlotAlreadyDoneError(f"The scheduled backup of {slot.isoformat()} was already run.")
        journal = self.journal
        plain_start = journal.start

        def start(kind, *, now, name=None, detail=None):
            return plain_start(kind, now=now, name=name, detail=slot_detail(slot, catch_up))

        def report(p):
            if self.on_stage is not None:
                self.on_stage(p.stage)
            if progress is not None:
                progress(p)

        journal.start = start
        try:
            return super().run_backup(progress=report, cancel=cancel)
        finally:
            del journal.start


def real_appliance(tmp_path: Path, cron: str) -> Path:
    config_path = create_demo_appliance(tmp_path / "a")
    raw = tomllib.loads(config_path.read_text())
    raw["schedule"] = {"enabled": True, "cron": cron}
    config_path.write_text(tomli_w.dumps(raw))
    return config_path


def test_real_service_catch_up_run(tmp_path):
    config_path = real_appliance(tmp_path, "0 2 * * *")
    stop = threading.Event()
    clock = FakeTime(at(BERLIN, 2026, 11, 26, 9, 17), at(BERLIN, 2026, 11, 26, 9, 18), stop)
    kdf = ScryptParams(log2_n=10)
    BackupService(load_config(config_path), kdf_params=kdf).set_secret("correct horse battery staple")
    lines: list[str] = []

    def load():
        return RealSlotService(load_config(config_path), clock=clock, kdf_params=kdf)

    assert run_daemon(load, stop=stop, clock=clock, sleep=clock.sleep, log=lines.append, inhibit=None) == ExitCode.OK
    service = load()
    backups = service.list_backups()
    assert len(backups) == 1
    runs = service.journal.runs()
    assert [(r.kind, r.result, r.detail, r.name) for r in runs] == [
        ("backup", "ok", "slot=2026-11-26T02:00:00+01:00 catch-up", backups[0].name),
    ]
    assert lines[1] == "<6>appliance-backup: backup started (slot 2026-11-26T02:00+01:00, catch-up)"
    assert lines[2].startswith(f"<6>appliance-backup: backup finished (slot 2026-11-26T02:00+01:00, catch-up): {backups[0].name}, ")


def test_real_service_stopped_mid_run_leaves_nothing_partial(tmp_path):
    config_path = real_appliance(tmp_path, "0 2 * * *")
    stop = threading.Event()
    clock = FakeTime(at(BERLIN, 2026, 11, 26, 1, 59), at(BERLIN, 2026, 11, 27), stop)
    kdf = ScryptParams(log2_n=10)
    BackupService(load_config(config_path), kdf_params=kdf).set_secret("correct horse battery staple")
    lines: list[str] = []
    stages: list[str] = []

    def sigterm_while_archiving(stage: str) -> None:
        stages.append(stage)
        if stage.startswith("Archiving the system"):
            stop.set()  # what the SIGTERM handler does, in the middle of writing the archive

    def load():
        return RealSlotService(load_config(config_path), clock=clock, kdf_params=kdf, on_stage=sigterm_while_archiving)

    journal_slot(load().journal, at(BERLIN, 2026, 11, 25, 2), now=at(BERLIN, 2026, 11, 25, 2))

    assert run_daemon(load, stop=stop, clock=clock, sleep=clock.sleep, log=lines.append, inhibit=None) == ExitCode.OK
    assert "Archiving the system configuration" in stages
    service = load()
    assert service.list_backups() == []
    storage_dir = tmp_path / "a" / "backups"
    assert sorted(p.name for p in storage_dir.iterdir()) == []  # no .partial left behind
    run = service.journal.runs()[-1]
    assert (run.result, run.detail) == ("interrupted", "slot=2026-11-26T02:00:00+01:00")
    assert lines[-2].startswith("<4>appliance-backup: backup interrupted (slot 2026-11-26T02:00+01:00): ")
    assert lines[-1] == "<6>appliance-backup: daemon stopped"
