"""Schedules, retention, operator rules and the daemon, through the real command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone

from backup.config import Config, load_config, update_config
from backup.errors import ExitCode
from backup.journal import RunJournal
from backup.schedule import parse_slot_detail
from backup.service import BackupService
from tests.common import BIN, FAST_KDF, run_cli


def test_otp_and_unlisted_operators_are_refused_by_the_core(service: BackupService) -> None:
    for args in (("run", "--operator", "otp-operator"), ("restore", "x.abk", "--yes", "--operator", "otp-operator")):
        r = run_cli(*args, config=service.config)
        assert r.returncode == ExitCode.OPERATOR_REFUSED, r.stderr
        assert "create an OAuth account, sign in with it, and remove the OTP account" in r.stderr
    r = run_cli("run", "--operator", "mallory", config=service.config)
    assert r.returncode == ExitCode.OPERATOR_REFUSED and 'mallory = "oauth"' in r.stderr
    assert list(service.config.storage.path.iterdir()) == []
    # The demo lists whoever runs it as an OAuth operator: the default login name passes.
    assert run_cli("run", config=service.config).returncode == 0


def test_no_operators_table_means_no_account_check(service: BackupService) -> None:
    raw = dict(service.config.raw)
    raw.pop("operators")
    import tomli_w

    service.config.path.write_text(tomli_w.dumps(raw))
    assert run_cli("run", "--operator", "anyone", config=service.config).returncode == 0


def test_schedule_set_show_disable_and_status(service: BackupService) -> None:
    r = run_cli("schedule", "show", "--json", config=service.config)
    assert json.loads(r.stdout)["enabled"] is False
    status = json.loads(run_cli("status", "--json", config=service.config).stdout)
    assert status["schedule"] == "Schedule Disabled" and status["next_scheduled_backup"] is None

    r = run_cli("schedule", "set", "--weekly", "tue", "03:30", config=service.config)
    assert r.returncode == 0 and "Every Tuesday at 03:30" in r.stdout
    shown = json.loads(run_cli("schedule", "show", "--json", "--next", "3", config=service.config).stdout)
    assert shown["cron"] == "30 3 * * 2" and len(shown["next_runs"]) == 3
    runs = [datetime.fromisoformat(t) for t in shown["next_runs"]]
    assert all(t.weekday() == 1 and (t.hour, t.minute) == (3, 30) for t in runs)
    assert runs[1] - runs[0] == timedelta(days=7)
    status = json.loads(run_cli("status", "--json", config=service.config).stdout)
    assert status["next_scheduled_backup"] == shown["next_runs"][0]

    r = run_cli("schedule", "set", "--cron", "0 25 * * *", config=service.config)
    assert r.returncode == ExitCode.USAGE and "hour" in r.stderr
    assert load_config(service.config.path).schedule.cron == "30 3 * * 2"  # nothing half-saved

    r = run_cli("schedule", "disable", config=service.config)
    assert r.returncode == 0 and "Schedule Disabled" in r.stdout
    assert load_config(service.config.path).schedule.enabled is False


def test_bad_schedule_in_the_file_names_the_key(service: BackupService) -> None:
    text = service.config.path.read_text().replace('cron = "0 2 * * *"', 'cron = "every night"')
    service.config.path.write_text(text)
    r = run_cli("status", config=service.config)
    assert r.returncode == ExitCode.USAGE and "[schedule] cron" in r.stderr and str(service.config.path) in r.stderr


def test_staleness_is_flagged_without_any_failure(appliance: Config) -> None:
    config = update_config(appliance, {"schedule": {"enabled": True, "cron": "0 2 * * *"}})
    now = [datetime(2026, 11, 20, 3, 0, tzinfo=timezone.utc)]
    svc = BackupService(config, kdf_params=FAST_KDF, clock=lambda: now[0])
    svc.set_secret("correct horse battery staple")
    svc.run_backup()
    assert svc.status().stale is None
    now[0] += timedelta(days=1, hours=20)
    assert svc.status().stale is None
    now[0] += timedelta(days=1)
    stale = svc.status().stale
    assert stale and "2.8 days old" in stale and "twice the schedule's interval" in stale
    assert svc.status().last_failure is None


def _backups(config: Config) -> list[str]:
    return sorted(p.name for p in config.storage.path.iterdir() if p.name.endswith(".abk"))


def test_retention_after_each_backup_keeps_foreign_files(appliance: Config) -> None:
    config = update_config(appliance, {"retention": {"keep_last": 2, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}})
    moments = iter(datetime(2026, 11, d, 2, 0, tzinfo=timezone.utc) for d in range(1, 30))
    now = [next(moments)]
    svc = BackupService(config, kdf_params=FAST_KDF, clock=lambda: now[0])
    svc.set_secret("correct horse battery staple")
    foreign = config.storage.path / "other-appliance-20260101T000000Z-abcdef.abk"
    foreign.write_bytes(b"not ours")
    names = []
    for _ in range(4):
        names.append(svc.run_backup().name)
        now[0] = next(moments)
    assert _backups(config) == sorted([foreign.name, *names[-2:]])

    # The newest verified backup survives even when keep_last would drop it.
    svc.verify(names[-2])
    for _ in range(2):
        names.append(svc.run_backup().name)
        now[0] = next(moments)
    assert _backups(config) == sorted([foreign.name, names[-4], *names[-2:]])

    r = run_cli("prune", "--dry-run", "--json", config=config)
    decisions = {d["name"]: d for d in json.loads(r.stdout)}
    assert foreign.name not in decisions
    assert "protected" in decisions[names[-4]]["reasons"] and decisions[names[-4]]["keep"]


def test_daemon_takes_a_scheduled_backup_and_journals_its_slot(service: BackupService) -> None:
    update_config(service.config, {"schedule": {"enabled": True, "cron": "* * * * *"}})
    proc = subprocess.Popen([str(BIN), "--config", str(service.config.path), "daemon"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not [r for r in RunJournal(service.state_dir).runs() if r.result == "ok"]:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    run = RunJournal(service.state_dir).runs()[-1]
    slot, catch_up = parse_slot_detail(run.detail)
    assert slot.second == 0 and run.started_at >= slot
    assert "<6>appliance-backup: backup started" in out and "backup finished" in out and "daemon stopped" in out
    assert _backups(service.config) == [run.name]


def test_daemon_stops_cleanly_on_sigterm_mid_backup(service: BackupService) -> None:
    with open(service.config.appliance.firmware / "large.bin", "wb") as f:
        for _ in range(48):
            f.write(os.urandom(4 << 20))
    update_config(service.config, {"schedule": {"enabled": True, "cron": "* * * * *"}})
    proc = subprocess.Popen([str(BIN), "--config", str(service.config.path), "daemon"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(service.config.storage.path.glob("*.partial")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert list(service.config.storage.path.iterdir()) == []
    run = RunJournal(service.state_dir).runs()[-1]
    assert run.result == "interrupted" and parse_slot_detail(run.detail) is not None
    assert "backup interrupted" in out and "daemon stopped" in out
