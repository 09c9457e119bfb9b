"""Prometheus textfile metrics: written by rename after every run, checked by the real promtool.

promtool comes from Debian's prometheus package (Makefile APT_PACKAGES).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from backup.config import Config
from backup.errors import ConfigError
from backup.metrics import PREFIX
from backup.service import BackupService
from tests.common import FAST_KDF
from tests.test_hooks import service_with, with_sections

SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>[^}]*)\} (?P<value>\S+)$')


def promtool_check(path: Path) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make sysdeps` installs Debian's prometheus package"
    with open(path, "rb") as data:
        return subprocess.run([promtool, "check", "metrics"], stdin=data, capture_output=True, text=True, timeout=60)


def parse(path: Path) -> dict[str, float]:
    """name -> value; every sample must carry exactly the appliance label, every family HELP and TYPE gauge."""
    samples: dict[str, float] = {}
    typed = set()
    for line in path.read_text().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind == "gauge"
            typed.add(name)
            continue
        if line.startswith("# HELP "):
            continue
        match = SAMPLE.match(line)
        assert match, line
        assert match["labels"] == 'appliance="demo-appliance"'
        assert match["name"] in typed
        samples[match["name"][len(PREFIX):]] = float(match["value"])
    return samples


@pytest.fixture
def metered(appliance: Config, tmp_path: Path) -> BackupService:
    (tmp_path / "node-exporter").mkdir()
    return service_with(appliance, f'[metrics]\ntextfile = "{tmp_path}/node-exporter/appliance_backup.prom"\n')


def test_after_a_backup_the_file_passes_promtool_and_says_what_happened(metered: BackupService) -> None:
    result = metered.run_backup()
    path = metered.config.metrics_textfile
    check = promtool_check(path)
    assert check.returncode == 0, check.stdout + check.stderr
    values = parse(path)
    run = metered.journal.runs()[-1]
    assert values["last_success_timestamp_seconds"] == run.ended_at.timestamp()
    assert values["last_size_bytes"] == result.size
    assert values["last_duration_seconds"] == run.duration
    assert values["backups"] == 1
    assert values["backups_size_bytes"] == result.size
    assert values["storage_free_bytes"] > 0
    assert values["oldest_unverified_age_seconds"] >= 0
    assert values["in_progress"] == 0
    assert values["schedule_enabled"] == 0
    assert "last_failure_timestamp_seconds" not in values  # never failed: not "failed in 1970"
    assert "next_run_timestamp_seconds" not in values
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["appliance_backup.prom"]  # no temporary left


def test_a_failure_verify_and_prune_each_rewrite_it(metered: BackupService) -> None:
    name = metered.run_backup().name
    path = metered.config.metrics_textfile
    assert parse(path)["oldest_unverified_age_seconds"] >= 0
    metered.verify(name)
    values = parse(path)
    assert values["oldest_unverified_age_seconds"] == 0
    assert values["last_verify_timestamp_seconds"] == metered.journal.runs()[-1].ended_at.timestamp()
    metered.config.appliance.database.unlink()
    with pytest.raises(ConfigError):
        metered.run_backup()
    values = parse(path)
    assert values["last_failure_timestamp_seconds"] == metered.journal.runs()[-1].ended_at.timestamp()
    assert values["backups"] == 1
    path.unlink()
    metered.prune()
    assert parse(path)["backups"] == 1
    assert promtool_check(path).returncode == 0


def test_in_progress_is_one_while_a_backup_runs(metered: BackupService, tmp_path: Path) -> None:
    """A before_backup hook copies the file while the backup holds the appliance."""
    copy = tmp_path / "during.prom"
    config = with_sections(metered.config, f'[hooks]\nbefore_backup = ["/bin/cp", "{metered.config.metrics_textfile}", '
                                           f'"{copy}"]\n')
    service = BackupService(config, kdf_params=FAST_KDF)
    service.run_backup()
    assert parse(copy)["in_progress"] == 1
    assert parse(config.metrics_textfile)["in_progress"] == 0


def test_schedule_and_next_run(metered: BackupService) -> None:
    from backup.config import update_config

    config = update_config(metered.config, {"schedule": {"enabled": True, "cron": "0 2 * * *"}})
    service = BackupService(config, kdf_params=FAST_KDF)
    service.run_backup()
    values = parse(config.metrics_textfile)
    assert values["schedule_enabled"] == 1
    assert values["next_run_timestamp_seconds"] > values["last_success_timestamp_seconds"]
    assert promtool_check(config.metrics_textfile).returncode == 0


def test_an_unwritable_metrics_folder_does_not_fail_the_backup(appliance: Config, tmp_path: Path) -> None:
    service = service_with(appliance, f'[metrics]\ntextfile = "{tmp_path}/missing/appliance_backup.prom"\n')
    service.run_backup()
    assert service.journal.runs()[-1].result == "ok"
    problem = service.journal.events("metrics")[-1]["error"]
    assert "could not be written" in problem and "missing" in problem


@pytest.mark.parametrize("value, says", [
    ('"metrics.prom"', "relative path"),
    ('"/tmp/metrics.txt"', "must end in .prom"),
    ("3", "must be a path in quotes"),
])
def test_bad_textfile_is_named(appliance: Config, value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        with_sections(appliance, f"[metrics]\ntextfile = {value}\n")
