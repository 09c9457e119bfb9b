"""Hooks: real commands run before and after backups and restores, without a shell.

The hooks here are real programs (/usr/bin/env, /bin/sh scripts, /bin/sleep):
what they print is journalled, so /usr/bin/env as a hook shows exactly the
environment the appliance gave it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backup.config import Config, load_config
from backup.errors import ConfigError
from backup.hooks import HookFailedError
from backup.service import BackupService
from tests.common import FAST_KDF, PASSPHRASE, run_cli
from tests.helpers import appliance_state, mutate_appliance


def with_sections(config: Config, text: str) -> Config:
    """The appliance's config file with `text` (TOML tables) appended, loaded again."""
    with open(config.path, "a", encoding="utf-8") as out:
        out.write("\n" + text)
    return load_config(config.path)


def service_with(config: Config, text: str) -> BackupService:
    service = BackupService(with_sections(config, text), kdf_params=FAST_KDF)
    if not service.secret.is_set():
        service.set_secret(PASSPHRASE)
    return service


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def hook_events(service: BackupService) -> list[dict]:
    return service.journal.events("hook")


def env_of(event: dict) -> dict[str, str]:
    return dict(line.split("=", 1) for line in event["output"].splitlines() if "=" in line)


def test_every_backup_hook_gets_the_facts_in_its_environment(appliance: Config) -> None:
    service = service_with(appliance, '[hooks]\nbefore_backup = "/usr/bin/env"\nafter_backup = ["/usr/bin/env"]\n'
                                      'on_failure = "/usr/bin/env"\n')
    name = service.run_backup().name
    before, after = hook_events(service)
    assert (before["hook"], after["hook"]) == ("before_backup", "after_backup")
    assert env_of(before)["APPLIANCE_BACKUP_EVENT"] == "before_backup"
    assert env_of(before)["APPLIANCE_BACKUP_NAME"] == name
    assert env_of(before)["APPLIANCE_BACKUP_RESULT"] == ""
    assert env_of(after)["APPLIANCE_BACKUP_RESULT"] == "ok"
    assert env_of(after)["APPLIANCE_BACKUP_ERROR"] == ""
    assert after["exit_status"] == 0 and after["problem"] is None


def test_a_failing_before_backup_hook_stops_the_backup_and_says_so(appliance: Config, tmp_path: Path) -> None:
    failing = script(tmp_path, "stop-ca.sh", "echo 'the CA service would not stop'\nexit 3\n")
    service = service_with(appliance, f'[hooks]\nbefore_backup = "{failing}"\non_failure = "/usr/bin/env"\n')
    with pytest.raises(HookFailedError) as caught:
        service.run_backup()
    message = caught.value.message
    assert "before_backup hook" in message and "exit status 3" in message
    assert "the CA service would not stop" in message and "nothing was changed" in message
    assert service.list_backups() == []
    assert list(service.config.storage.path.iterdir()) == []  # no partial file either
    run = service.journal.runs()[-1]
    assert (run.kind, run.result, run.error) == ("backup", "failed", message)
    on_failure = hook_events(service)[-1]
    assert on_failure["hook"] == "on_failure"
    assert env_of(on_failure)["APPLIANCE_BACKUP_RESULT"] == "failed"
    assert "exit status 3" in env_of(on_failure)["APPLIANCE_BACKUP_ERROR"]


def test_the_headless_run_says_the_hook_stopped_it(appliance: Config, tmp_path: Path) -> None:
    failing = script(tmp_path, "no.sh", "exit 1\n")
    service = service_with(appliance, f'[hooks]\nbefore_backup = "{failing}"\n')
    result = run_cli("run", config=service.config)
    assert result.returncode == 1
    assert "before_backup hook" in result.stderr and "did not start" in result.stderr
    assert "Traceback" not in result.stderr
    assert service.list_backups() == []


def test_a_hook_that_hangs_is_stopped_at_its_timeout(appliance: Config, tmp_path: Path) -> None:
    hangs = script(tmp_path, "hangs.sh", "echo started\nexec /bin/sleep 600\n")
    service = service_with(appliance, f'[hooks]\nbefore_backup = "{hangs}"\ntimeout_seconds = 1\n')
    with pytest.raises(HookFailedError, match=r"did not finish within 1 s and was stopped"):
        service.run_backup()
    event = hook_events(service)[-1]
    assert event["exit_status"] is None and event["output"] == "started\n"


def test_an_after_backup_hook_that_fails_leaves_the_backup_standing(appliance: Config, tmp_path: Path) -> None:
    failing = script(tmp_path, "notify.sh", "echo oops >&2\nexit 2\n")
    service = service_with(appliance, f'[hooks]\nafter_backup = "{failing}"\n')
    name = service.run_backup().name
    assert [b.name for b in service.list_backups()] == [name]
    assert service.journal.runs()[-1].result == "ok"
    event = hook_events(service)[-1]
    assert (event["hook"], event["exit_status"], event["output"]) == ("after_backup", 2, "oops\n")


def test_a_failing_before_restore_hook_changes_nothing(appliance: Config, tmp_path: Path) -> None:
    service = service_with(appliance, "")
    name = service.run_backup().name
    mutate_appliance(service.config)
    state = appliance_state(service.config)
    failing = script(tmp_path, "stop.sh", "echo cannot stop the CA\nexit 1\n")
    started = script(tmp_path, "start.sh", "exit 0\n")
    service = service_with(appliance, f'[hooks]\nbefore_restore = "{failing}"\nafter_restore = "{started}"\n')
    with pytest.raises(HookFailedError, match="so the restore did not start and nothing was changed"):
        service.restore(name)
    assert appliance_state(service.config) == state
    assert [e["hook"] for e in hook_events(service)] == ["before_restore"]  # after_restore: nothing was stopped


def test_after_restore_runs_whatever_the_result(appliance: Config, tmp_path: Path) -> None:
    """The CA service a before_restore hook stopped must be started again even when the restore failed."""
    service = service_with(appliance, '[hooks]\nbefore_restore = "/bin/true"\nafter_restore = "/usr/bin/env"\n')
    name = service.run_backup().name
    service.restore(name)
    ok = hook_events(service)[-1]
    assert env_of(ok)["APPLIANCE_BACKUP_EVENT"] == "after_restore"
    assert env_of(ok)["APPLIANCE_BACKUP_RESULT"] == "ok"
    path = service.config.storage.path / name
    data = bytearray(path.read_bytes())
    data[-40] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(Exception):
        service.restore(name)
    failed = hook_events(service)[-1]
    assert env_of(failed)["APPLIANCE_BACKUP_RESULT"] == "failed"
    assert env_of(failed)["APPLIANCE_BACKUP_ERROR"] == service.journal.runs()[-1].error


def test_hooks_run_without_a_shell(appliance: Config, tmp_path: Path) -> None:
    marker = tmp_path / "should-not-exist"
    service = service_with(appliance, f'[hooks]\nafter_backup = "/bin/echo $HOME; touch {marker}"\n')
    service.run_backup()
    assert hook_events(service)[-1]["output"] == f"$HOME; touch {marker}\n"
    assert not marker.exists()


@pytest.mark.parametrize("line, says", [
    ('before_backup = "systemctl stop ca"', "not an absolute path"),
    ('before_backup = ""', "is empty"),
    ('before_backup = 3', "must be a command line"),
    ('before_backup = "/bin/x \'unclosed"', "cannot be split"),
    ('timeout_seconds = 0', "timeout_seconds must be a number"),
    ('before_bakup = "/bin/true"', "before_bakup is not a setting of [hooks] (did you mean before_backup?)"),
])
def test_bad_hooks_are_named(appliance: Config, line: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        with_sections(appliance, f"[hooks]\n{line}\n")
    assert says in caught.value.message
