"""[verify] jobs: which backups, once per slot, catch-up once, never beside a backup, failures alert.

Real demo appliances, real backups, the real daemon loop with an injected
clock and sleep (as tests/test_daemon.py), a real webhook server on loopback.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone

import pytest

from backup.config import Config, load_config
from backup.daemon import run_daemon
from backup.errors import ConfigError, LockHeldError, SlotAlreadyDoneError
from backup.lock import RunLock
from backup.schedule import parse_slot_detail
from backup.service import BackupService
from backup.verifyjob import VerifyJobFailedError
from tests.alert_servers import http_server
from tests.common import FAST_KDF, PASSPHRASE, run_cli
from tests.test_daemon import FakeTime
from tests.test_hooks import with_sections

UTC = timezone.utc
WAIT = 60


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def job_service(config: Config, section: str, clock=None) -> BackupService:
    service = BackupService(with_sections(config, section), kdf_params=FAST_KDF,
                            **({"clock": clock} if clock else {}))
    if not service.secret.is_set():
        service.set_secret(PASSPHRASE)
    return service


def backups(service: BackupService, count: int, clock: Clock | None = None) -> list[str]:
    """`count` real backups, newest first (a minute apart when the test's clock is given: names hold seconds)."""
    names = []
    for _ in range(count):
        names.append(service.run_backup().name)
        if clock is not None:
            clock.now += timedelta(minutes=1)
    return list(reversed(names))


def verify_runs(service: BackupService) -> list:
    return [r for r in service.journal.runs() if r.kind == "verify"]


def jobs(service: BackupService) -> list:
    return [r for r in service.journal.runs() if r.kind == "verify_job"]


def damage(service: BackupService, name: str) -> None:
    path = service.config.storage.path / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def test_newest_n_verifies_the_newest_backups(appliance: Config) -> None:
    clock = Clock(datetime(2026, 12, 1, 4, 0, tzinfo=UTC))
    service = job_service(appliance, '[verify]\ncron = "0 4 * * *"\nnewest = 2\n', clock)
    names = backups(service, 3, clock)
    result = service.run_verify_job()
    assert result.verified == names[:2] and result.failed == []
    assert [(r.name, r.result, r.detail) for r in verify_runs(service)] == [
        (names[0], "ok", "authenticated"), (names[1], "ok", "authenticated")]
    assert jobs(service)[-1].result == "ok"


def test_deep_and_not_verified_within_days(appliance: Config) -> None:
    clock = Clock(datetime(2026, 12, 1, 4, 0, tzinfo=UTC))
    service = job_service(appliance, '[verify]\ncron = "0 4 * * *"\nnot_verified_days = 7\ndeep = true\n', clock)
    names = backups(service, 3, clock)
    service.verify(names[1])
    service.run_verify_job()
    assert [r.name for r in verify_runs(service)][1:] == [names[0], names[2]]  # names[1] was verified today
    assert {r.detail for r in verify_runs(service)[1:]} == {"deep"}
    clock.now += timedelta(days=8)  # every verification is now older than 7 days
    service.run_verify_job()
    assert sorted(r.name for r in verify_runs(service)[3:]) == sorted(names)


def test_a_failed_verify_fails_the_job_and_alerts(appliance: Config) -> None:
    clock = Clock(datetime(2026, 12, 1, 4, 0, tzinfo=UTC))
    with http_server() as (port, log):
        service = job_service(appliance, f'[verify]\ncron = "0 4 * * *"\nnewest = 2\n'
                                         f'[notify.webhook]\nurl = "http://127.0.0.1:{port}/h"\n', clock)
        names = backups(service, 2, clock)
        damage(service, names[1])
        with pytest.raises(VerifyJobFailedError) as caught:
            service.run_verify_job()
        service.alerts.wait(WAIT)
    assert f"1 of 2 backup(s) failed verification ({names[1]}: " in caught.value.message
    assert jobs(service)[-1].result == "failed" and jobs(service)[-1].error == caught.value.message
    alerts = [r["body"] for r in log.requests]
    assert [(a["event"], a["name"]) for a in alerts] == [("verify_failed", names[1])]
    status = json.loads(run_cli("status", "--json", config=service.config).stdout)
    assert status["verify_job"]["last"]["result"] == "failed"
    assert status["verify_job"]["next"] is not None
    assert status["verify_job"]["oldest_unverified"]["name"] == names[1]
    text = run_cli("status", config=service.config).stdout
    assert "Verify Job:                     last " in text and "failed: 1 of 2 backup(s)" in text
    assert f"Oldest Unverified Backup:       {names[1]}" in text


def test_a_slot_runs_once_and_never_beside_a_backup(appliance: Config) -> None:
    service = job_service(appliance, '[verify]\ncron = "0 4 * * *"\n')
    backups(service, 1)
    slot = datetime(2026, 12, 3, 4, 0, tzinfo=UTC)
    with RunLock(service.state_dir, "backup", now=service.clock()):
        with pytest.raises(LockHeldError):
            service.run_verify_job(slot=slot)
    assert jobs(service) == []  # postponed, not journalled: the slot is still due
    service.run_verify_job(slot=slot)
    with pytest.raises(SlotAlreadyDoneError):
        service.run_verify_job(slot=slot)
    assert len(jobs(service)) == 1 and parse_slot_detail(jobs(service)[0].detail)[0] == slot


def test_the_daemon_runs_the_job_once_per_slot_and_catches_up_once(appliance: Config) -> None:
    service = job_service(appliance, '[verify]\ncron = "0 4 * * *"\n')
    backups(service, 1)
    stop = threading.Event()
    # The appliance was down for three days; the daemon starts at 10:00 and runs until the next day 05:00.
    fake = FakeTime(datetime(2026, 12, 3, 10, 0, tzinfo=UTC), datetime(2026, 12, 4, 5, 0, tzinfo=UTC), stop)
    lines: list[str] = []
    code = run_daemon(lambda: BackupService(load_config(service.config.path), kdf_params=FAST_KDF, clock=fake),
                      stop=stop, clock=fake, sleep=fake.sleep, log=lines.append, inhibit=None)
    assert code == 0
    done = [parse_slot_detail(r.detail) for r in jobs(service)]
    assert done == [(datetime(2026, 12, 3, 4, 0, tzinfo=UTC), True), (datetime(2026, 12, 4, 4, 0, tzinfo=UTC), False)]
    assert sum("verify job finished" in line for line in lines) == 2


def test_the_daemon_postpones_the_job_while_a_backup_runs(appliance: Config) -> None:
    service = job_service(appliance, '[verify]\ncron = "0 4 * * *"\n')
    backups(service, 1)
    stop = threading.Event()
    fake = FakeTime(datetime(2026, 12, 3, 4, 0, tzinfo=UTC), datetime(2026, 12, 3, 4, 5, tzinfo=UTC), stop)
    lock = RunLock(service.state_dir, "backup", now=fake.now)
    lock.acquire()
    fake.hooks.append((datetime(2026, 12, 3, 4, 1, tzinfo=UTC), lock.release))
    lines: list[str] = []
    run_daemon(lambda: BackupService(load_config(service.config.path), kdf_params=FAST_KDF, clock=fake),
               stop=stop, clock=fake, sleep=fake.sleep, log=lines.append, inhibit=None)
    assert any("verify job postponed" in line for line in lines)
    assert len(jobs(service)) == 1 and jobs(service)[0].started_at >= datetime(2026, 12, 3, 4, 1, tzinfo=UTC)


@pytest.mark.parametrize("section, says", [
    ("[verify]\nnewest = 2\n", "[verify] cron is missing"),
    ('[verify]\ncron = "61 4 * * *"\n', "[verify] cron:"),
    ('[verify]\ncron = "0 4 * * *"\nnewest = 0\n', "newest must be a whole number from 1"),
    ('[verify]\ncron = "0 4 * * *"\nnewest = 2\nnot_verified_days = 3\n', "sets both newest and not_verified_days"),
    ('[verify]\ncron = "0 4 * * *"\ndeep = "yes"\n', "deep must be true or false"),
    ('[verify]\ncron = "0 4 * * *"\nnewset = 2\n', "newset is not a setting of [verify] (did you mean newest?)"),
])
def test_bad_verify_settings_are_named(appliance: Config, section: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        with_sections(appliance, section)
    assert says in caught.value.message
