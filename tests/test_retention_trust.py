"""Retention trusts neither file names nor the clock (issue 14, item 1).

What a backup is, whose it is and when it was made come from its authenticated
header and manifest; a file named like a backup that does not open with this
appliance's key is never counted and never deleted; a backup dated in the future
is kept and named; the backup a run has just written is never removed; `status`
never names a Last Successful Backup that is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from backup.config import Config, load_config, update_config
from backup.demo import create_demo_appliance
from backup.retention import RetentionPolicy
from backup.service import BackupService
from tests.common import FAST_KDF, run_cli
from tests.helpers import sealed_backup
from tests.tui_fixtures import FIXED_NOW, fixed_clock, make_app, screen_text

NOW = datetime.now(timezone.utc)


def _with_policy(service: BackupService, **keep: int) -> Config:
    return update_config(service.config, RetentionPolicy(**keep).to_config())


def _backup_at(config: Config, when: datetime) -> str:
    """A backup made while the appliance's clock read `when` (a clock that was wrong, or is); retention
    keeps everything meanwhile, so the backups a test makes are all there when it applies its policy."""
    everything = update_config(config, RetentionPolicy().to_config())
    try:
        return BackupService(everything, clock=lambda: when).run_backup().name
    finally:
        update_config(everything, {"retention": config.retention.to_config()["retention"]})


def _files(config: Config) -> set[str]:
    return {p.name for p in config.storage.path.iterdir()}


def _lines_naming(output: str, name: str) -> list[str]:
    return [line for line in output.splitlines() if name in line]


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    return info, data


def test_a_run_never_removes_the_backup_it_has_just_written_after_the_clock_was_corrected(service: BackupService):
    # Eight daily backups made while the clock was 3 minutes ahead (NTP then corrected it, e.g. after a
    # VM resume): the newest of them is dated 3 minutes after the next run, on the same day.
    config = _with_policy(service, keep_daily=7)
    now = datetime.now(timezone.utc)
    for days in range(7, -1, -1):
        _backup_at(config, now + timedelta(minutes=3) - timedelta(days=days))
    r = run_cli("run", config=config)
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip()
    assert f"retention removed {name}" not in r.stderr
    assert name in _files(config)


def test_the_run_protects_its_own_backup_by_name_even_when_the_dates_say_otherwise(service: BackupService):
    # A clock 50 s ahead is within the tolerance, so that backup counts and is the day's newest: only
    # the run's naming of its own backup keeps retention from removing it.
    config = _with_policy(service, keep_daily=1)
    ahead = _backup_at(config, datetime.now(timezone.utc) + timedelta(seconds=50))
    r = run_cli("run", config=config)
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip()
    assert f"retention removed {name}" not in r.stderr
    assert {name, ahead} <= _files(config)


def test_empty_files_named_like_backups_are_neither_counted_nor_deleted(service: BackupService):
    config = _with_policy(service, keep_last=2)
    older = _backup_at(config, NOW - timedelta(hours=2))
    newer = _backup_at(config, NOW - timedelta(hours=1))
    empty = [f"demo-appliance-20991231T00000{i}Z-00000{i}.abk" for i in (1, 2)]
    for name in empty:
        (config.storage.path / name).touch()
    r = run_cli("run", config=config)
    assert r.returncode == 0, r.stderr
    made = r.stdout.strip()
    # Only real backups count: the two newest real ones stay, the oldest goes; the empty files stay.
    assert _files(config) == {made, newer, *empty}
    assert f"retention removed {older}" in r.stderr

    dry = run_cli("prune", "--dry-run", config=config)
    assert dry.returncode == 0, dry.stderr
    for name in empty:
        [line] = _lines_naming(dry.stdout, name)
        assert line.startswith("keep") and "not counted" in line and "empty" in line, dry.stdout


def _other_appliance(tmp_path: Path, name: str) -> BackupService:
    other = BackupService(load_config(create_demo_appliance(tmp_path / name)), kdf_params=FAST_KDF)
    other.set_secret("another appliance's secret")
    return other


def test_files_that_do_not_open_as_this_appliances_backups_are_never_counted(service: BackupService,
                                                                             tmp_path: Path):
    config = _with_policy(service, keep_last=1)
    service = BackupService(config)
    real_old = _backup_at(config, NOW - timedelta(hours=3))
    real_new = _backup_at(config, NOW - timedelta(hours=2))
    storage = config.storage.path
    late = NOW - timedelta(minutes=10)  # every impostor is named newer than the real backups
    impostors = {}

    def named(tag: str) -> str:
        return f"demo-appliance-{late:%Y%m%dT%H%M%S}Z-{tag}.abk"

    # Made with another DMS (another appliance's backup, renamed).
    other = _other_appliance(tmp_path, "foreign")
    impostors["foreign"] = named("f00001")
    shutil.copy(other.config.storage.path / other.run_backup().name, storage / impostors["foreign"])
    # Sealed with this appliance's key, but its manifest names another appliance (a shared DMS).
    manifest = json.dumps({"format": "appliance-backup manifest", "version": 1, "appliance": "other-appliance",
                           "created_at": late.isoformat(), "components": []}).encode()
    sealed = sealed_backup(service, [_member("manifest.json", manifest)])
    impostors["shared-dms"] = named("f00002")
    os.rename(storage / sealed, storage / impostors["shared-dms"])
    # A real backup cut short.
    impostors["truncated"] = named("f00003")
    data = (storage / real_new).read_bytes()
    (storage / impostors["truncated"]).write_bytes(data[:200])
    # Not a file at all.
    impostors["directory"] = named("f00004")
    (storage / impostors["directory"]).mkdir()
    impostors["fifo"] = named("f00005")
    os.mkfifo(storage / impostors["fifo"])

    decisions = {d.name: d for d in service.prune(dry_run=True)}
    for kind in ("foreign", "shared-dms", "truncated", "fifo"):
        d = decisions[impostors[kind]]
        assert d.keep and any("not counted" in r for r in d.reasons), (kind, d)
    assert impostors["directory"] not in decisions or decisions[impostors["directory"]].keep
    assert decisions[real_new].keep and "newest backup" in decisions[real_new].reasons
    assert not decisions[real_old].keep

    service.prune()
    assert _files(config) == {real_new, *impostors.values()}


def test_backups_are_ordered_by_their_authenticated_creation_time_not_their_names(service: BackupService):
    config = _with_policy(service, keep_last=1)
    service = BackupService(config)
    oldest = _backup_at(config, NOW - timedelta(days=2))
    middle = _backup_at(config, NOW - timedelta(days=1))
    newest = _backup_at(config, NOW - timedelta(hours=1))
    # Someone who can write the storage renames the oldest backup to a newer-looking name.
    renamed = f"demo-appliance-{NOW - timedelta(minutes=1):%Y%m%dT%H%M%S}Z-abcdef.abk"
    os.rename(config.storage.path / oldest, config.storage.path / renamed)
    decisions = {d.name: d for d in service.prune(dry_run=True)}
    assert decisions[newest].keep and "newest backup" in decisions[newest].reasons
    assert not decisions[renamed].keep and not decisions[middle].keep


def test_a_backup_dated_in_the_future_is_kept_named_and_not_counted(service: BackupService):
    config = _with_policy(service, keep_last=1)
    past = _backup_at(config, NOW - timedelta(hours=1))
    future = _backup_at(config, NOW + timedelta(days=2))  # made while the clock was two days ahead
    r = run_cli("run", config=config)
    assert r.returncode == 0, r.stderr
    made = r.stdout.strip()
    # The future one is kept and does not take the one "last" slot: the run's own backup holds it.
    assert _files(config) == {made, future}
    assert f"retention removed {past}" in r.stderr

    dry = run_cli("prune", "--dry-run", config=config)
    [line] = _lines_naming(dry.stdout, future)
    assert line.startswith("keep") and "in the future" in line, dry.stdout
    [line] = _lines_naming(dry.stdout, made)
    assert "last 1" in line

    status = json.loads(run_cli("status", "--json", config=config).stdout)
    assert any(future in w and "future" in w for w in status["warnings"]), status["warnings"]
    text = run_cli("status", config=config).stdout
    assert any(line.startswith("Warning:") and future in line for line in text.splitlines()), text


def test_status_never_names_a_last_successful_backup_that_is_gone(service: BackupService):
    config = _with_policy(service)  # keeps everything
    service = BackupService(config)
    first = _backup_at(config, NOW - timedelta(hours=2))
    second = service.run_backup().name
    assert service.status().last_success.name == second
    service.delete_backup(second)
    assert service.status().last_success.name == first
    status = json.loads(run_cli("status", "--json", config=config).stdout)
    assert status["last_successful_backup"]["name"] == first
    service.delete_backup(first)
    assert service.status().last_success is None


async def test_the_console_status_screen_names_a_backup_dated_in_the_future(config_with_dms):
    # Made while the clock read two days later than the console's clock; its own run looked at the storage.
    future = BackupService(config_with_dms, clock=lambda: FIXED_NOW + timedelta(days=2)).run_backup().name
    app = make_app(config_with_dms, clock=fixed_clock)
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(3):
            await pilot.app.workers.wait_for_complete()
            await pilot.pause()
        assert app.screen.query_one("#stale").display
        text = " ".join(screen_text(app).split())
        assert "dated in the future" in text and future in text, text


def test_a_deleted_backup_dated_in_the_future_is_no_longer_named_by_status(service: BackupService):
    config = _with_policy(service)
    future = _backup_at(config, NOW + timedelta(days=2))
    service = BackupService(config)
    assert any(future in w for w in service.status().warnings)
    service.delete_backup(future)
    assert not any(future in w for w in service.status().warnings)


def test_a_manifest_dated_at_the_edge_of_the_calendar_is_not_counted_and_stops_nothing(service: BackupService):
    # Only a writer holding this appliance's key could seal these; retention must still not fail on them.
    config = _with_policy(service, keep_daily=1)
    service = BackupService(config)
    real = _backup_at(config, NOW - timedelta(hours=1))
    edges = []
    for when in ("0001-01-01T00:00:00-12:00", "9999-12-31T23:59:59+14:00", "2026-01-01T00:00:00"):
        manifest = json.dumps({"format": "appliance-backup manifest", "version": 1, "appliance": "demo-appliance",
                               "created_at": when, "components": []}).encode()
        edges.append(sealed_backup(service, [_member("manifest.json", manifest)]))
    decisions = {d.name: d for d in service.prune(dry_run=True)}
    for name in edges:
        assert decisions[name].keep and decisions[name].reasons[0].startswith("not counted"), decisions[name]
    assert decisions[real].keep and "newest backup" in decisions[real].reasons
    assert "dated" not in " ".join(w for w in service.status().warnings)
