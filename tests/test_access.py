"""What an operator may do comes from the login, not a flag (issue 14, item 4).

An OTP (or unlisted) operator may look and nothing else, in every command and
through the core. The login is the OS's: the process's real uid, or, for a root
process that sudo started, the user sudo names in SUDO_USER (sudo sets it; a
non-root process cannot make a root process, and a root process can do anything
anyway). The CLI tests give the real command SUDO_USER exactly as sudo would.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from backup.config import Config, load_config, update_config
from backup.errors import ConfigError, ExitCode, OperatorRefusedError
from backup.journal import RunJournal
from backup.operators import Login, current_login, resolve_access
from backup.service import BackupService
from tests.common import BIN, FAST_KDF, PASSPHRASE

PATH = Path("/etc/appliance-backup/config.toml")
TABLE = {"operators": {"alice": "oauth", "bob": "otp", "carol": "otp", "root": "oauth"}}
GUIDANCE = "create an OAuth account, sign in with it, and remove the OTP account"


def cli(*args: str | os.PathLike[str], config: Config, sudo_user: str | None = None,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real command; with `sudo_user`, started as sudo starts it for that user (SUDO_USER set)."""
    env = {**os.environ, "APPLIANCE_BACKUP_DEBUG": ""}
    env.pop("SUDO_USER", None)
    if sudo_user is not None:
        env["SUDO_USER"] = sudo_user
    return subprocess.run([str(BIN), "--config", str(config.path), *map(str, args)], capture_output=True, text=True,
                          input=input, timeout=120, env=env)


# ---------------------------------------------------------------- the login


def test_a_non_root_login_is_its_uid_whatever_the_environment_says():
    forged = {"LOGNAME": "root", "USER": "root", "SUDO_USER": "alice", "USERNAME": "alice"}
    assert current_login(getuid=lambda: 65534, environ=forged) == Login("nobody", superuser=False)


def test_a_root_process_started_by_sudo_is_the_user_sudo_names():
    assert current_login(getuid=lambda: 0, environ={"SUDO_USER": "bob"}) == Login("bob", superuser=False)
    assert current_login(getuid=lambda: 0, environ={}) == Login("root", superuser=True)
    assert current_login(getuid=lambda: 0, environ={"SUDO_USER": "root"}) == Login("root", superuser=True)


def test_a_uid_without_a_name_has_no_rights_under_an_operators_table():
    login = current_login(getuid=lambda: 54321, environ={})
    assert login == Login("", superuser=False)
    access = resolve_access(TABLE, PATH, None, login)
    assert not access.may_change and "cannot be determined" in access.refusal("create backups")


# ---------------------------------------------------------------- --operator and rights


def test_an_otp_login_cannot_name_an_oauth_operator():
    with pytest.raises(OperatorRefusedError) as err:
        resolve_access(TABLE, PATH, "root", Login("bob", superuser=False))
    assert str(err.value) == (
        "--operator root is refused: root may change the appliance, but this command runs under the login bob, "
        "which may only look, and a flag cannot raise a login's rights. Sign in as root to act as root."
    )
    assert err.value.exit_code == ExitCode.OPERATOR_REFUSED
    with pytest.raises(OperatorRefusedError):
        resolve_access(TABLE, PATH, "alice", Login("mallory", superuser=False))  # unlisted: may only look


def test_a_login_may_name_someone_with_no_more_rights():
    assert not resolve_access(TABLE, PATH, "carol", Login("bob", superuser=False)).may_change
    assert not resolve_access(TABLE, PATH, "mallory", Login("bob", superuser=False)).may_change
    bob = resolve_access(TABLE, PATH, "bob", Login("alice", superuser=False))
    assert (bob.operator, bob.may_change) == ("bob", False)
    assert resolve_access(TABLE, PATH, "alice", Login("alice", superuser=False)).may_change


def test_root_may_name_anyone_and_then_has_their_rights():
    """Root can rewrite the file that grants rights: naming an operator is how the appliance's own
    sign-in (running as root) tells the console who signed in."""
    root = Login("root", superuser=True)
    assert resolve_access(TABLE, PATH, "alice", root).may_change
    assert not resolve_access(TABLE, PATH, "bob", root).may_change
    assert resolve_access(TABLE, PATH, None, root).may_change  # root = "oauth" in TABLE
    unlisted_root = resolve_access({"operators": {"alice": "oauth"}}, PATH, None, root)
    assert not unlisted_root.may_change and 'root = "oauth"' in unlisted_root.refusal("create backups")


def test_without_an_operators_table_everyone_may_change():
    access = resolve_access({}, PATH, "anyone", Login("bob", superuser=False))
    assert access.may_change and access.operator == "anyone"


def test_the_refusal_names_the_action_and_gives_the_guidance():
    access = resolve_access(TABLE, PATH, None, Login("bob", superuser=False))
    assert access.refusal("change the schedule") == (
        f"Operator bob signs in with OTP, so may not change the schedule (OTP accounts may only look): {GUIDANCE}."
    )


def test_a_bad_operators_table_is_a_config_error():
    with pytest.raises(ConfigError, match="must be \"oauth\" or \"otp\""):
        resolve_access({"operators": {"bob": "password"}}, PATH, None, Login("bob", superuser=False))


# ---------------------------------------------------------------- the real command


@pytest.fixture
def appliance_with_backup(service: BackupService) -> tuple[Config, str]:
    """The demo appliance (root and its creator are "oauth", otp-operator is "otp"), DMS set, one backup."""
    return service.config, service.run_backup().name


def test_the_issues_case_run_operator_root_from_an_otp_login_is_refused(appliance_with_backup):
    config, _ = appliance_with_backup
    before = sorted(p.name for p in config.storage.path.iterdir())
    r = cli("run", "--operator", "root", config=config, sudo_user="otp-operator")
    assert r.returncode == ExitCode.OPERATOR_REFUSED, r.stderr
    assert "a flag cannot raise a login's rights" in r.stderr
    assert sorted(p.name for p in config.storage.path.iterdir()) == before
    # The same flag on a command that only looks is refused too: the flag itself is the problem.
    r = cli("status", "--operator", "root", config=config, sudo_user="otp-operator")
    assert r.returncode == ExitCode.OPERATOR_REFUSED


def test_an_otp_login_may_look_and_nothing_else(appliance_with_backup, tmp_path):
    config, backup = appliance_with_backup
    passphrase_file = tmp_path / "dms.txt"
    passphrase_file.write_text(PASSPHRASE + "\n")
    config_text = config.path.read_text()
    stored = sorted(p.name for p in config.storage.path.iterdir())
    journalled = len(RunJournal(config.state_dir).runs())
    firmware = sorted(p.name for p in config.appliance.firmware.rglob("*"))
    (config.appliance.firmware / "added-later.conf").write_text("later\n")
    for args in (("run",), ("restore", backup, "--yes"), ("prune",), ("schedule", "set", "--daily", "02:00"),
                 ("schedule", "disable"), ("secret", "set", "--passphrase-file", passphrase_file)):
        r = cli(*args, config=config, sudo_user="otp-operator")
        assert r.returncode == ExitCode.OPERATOR_REFUSED, (args, r.stderr)
        assert "Operator otp-operator signs in with OTP, so may not" in r.stderr and GUIDANCE in r.stderr, args
    for args in (("status",), ("list",), ("schedule", "show"), ("prune", "--dry-run"), ("verify", backup)):
        r = cli(*args, config=config, sudo_user="otp-operator")
        assert r.returncode == 0, (args, r.stderr)
    assert "not recorded" in cli("verify", backup, config=config, sudo_user="otp-operator").stderr
    assert config.path.read_text() == config_text
    assert sorted(p.name for p in config.storage.path.iterdir()) == stored
    assert len(RunJournal(config.state_dir).runs()) == journalled  # not even the verify
    assert (config.appliance.firmware / "added-later.conf").exists()  # nothing restored
    assert sorted(p.name for p in config.appliance.firmware.rglob("*")) == sorted([*firmware, "added-later.conf"])
    # The same commands from an OAuth login (sudo for root, which the demo lists as "oauth") go through.
    assert cli("verify", backup, config=config, sudo_user="root").returncode == 0
    assert RunJournal(config.state_dir).runs()[-1].kind == "verify"
    assert cli("schedule", "set", "--daily", "02:00", config=config, sudo_user="root").returncode == 0


def test_an_unlisted_login_is_refused_with_how_to_add_it(appliance_with_backup):
    config, _ = appliance_with_backup
    r = cli("run", config=config, sudo_user="mallory")
    assert r.returncode == ExitCode.OPERATOR_REFUSED
    assert 'add the line mallory = "oauth"' in r.stderr


def test_the_global_operator_option_lowers_rights_for_any_command(appliance_with_backup):
    config, _ = appliance_with_backup
    r = cli("--operator", "otp-operator", "schedule", "set", "--daily", "02:00", config=config)
    assert r.returncode == ExitCode.OPERATOR_REFUSED and GUIDANCE in r.stderr
    r = cli("--operator", "otp-operator", "prune", config=config)
    assert r.returncode == ExitCode.OPERATOR_REFUSED


# ---------------------------------------------------------------- the core, for every front end


def otp_service(config: Config) -> BackupService:
    """The service as a console started by sudo for otp-operator builds it (the OS login, injected)."""
    return BackupService(config, kdf_params=FAST_KDF, login=Login("otp-operator", superuser=False))


def test_every_mutating_entry_point_of_the_core_refuses_a_look_only_operator(appliance_with_backup):
    config, backup = appliance_with_backup
    service = otp_service(config)
    config_text = config.path.read_text()
    attempts = {
        "create backups": lambda: service.run_backup(),
        "restore backups": lambda: service.restore(backup),
        "delete backups": lambda: service.delete_backup(backup),
        "prune backups": lambda: service.prune(),
        "change the schedule": lambda: service.update_settings({"schedule": {"enabled": True, "cron": "0 2 * * *"}}),
        "change the storage": lambda: service.update_settings(
            {"storage": {"type": "local", "path": "/srv/elsewhere", "url": None, "version": None}}),
        "change the settings": lambda: service.update_settings({"backup": {"prefix": "x"}}),
        "change the operators": lambda: service.update_settings({"operators": {"otp-operator": "oauth"}}),
        "set the Domain Master Secret": lambda: service.set_secret("another secret entirely"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OperatorRefusedError) as err:
            attempt()
        assert f"so may not {what}" in str(err.value) and GUIDANCE in str(err.value), what
    assert config.path.read_text() == config_text
    assert (config.storage.path / backup).exists()
    result = service.verify(backup)
    assert not result.recorded
    assert not any(r.kind == "verify" for r in RunJournal(config.state_dir).runs())


def test_a_demotion_takes_effect_in_a_service_already_open(appliance_with_backup):
    """An open console keeps its service: [operators] is read again at every check."""
    config, _ = appliance_with_backup
    service = BackupService(config, kdf_params=FAST_KDF, login=Login("alice", superuser=False))
    update_config(config, {"operators": {"alice": "oauth"}})
    assert service.access().may_change
    update_config(config, {"operators": {"alice": "otp"}})
    with pytest.raises(OperatorRefusedError, match="Operator alice signs in with OTP"):
        service.run_backup()


def test_a_console_left_open_does_not_undo_a_demotion_when_it_saves(appliance_with_backup):
    """Two consoles: one demotes bob; the other, open since before, saves its prefix afterwards."""
    config, _ = appliance_with_backup
    config = update_config(config, {"operators": {"bob": "oauth"}})
    stale = BackupService(config, kdf_params=FAST_KDF)  # root: "oauth" in the demo
    BackupService(config, kdf_params=FAST_KDF).update_settings({"operators": {"bob": "otp"}})
    saved = stale.update_settings({"backup": {"prefix": "site-a"}})
    assert saved.operators["bob"] == "otp" and saved.prefix == "site-a"
    assert load_config(config.path).operators["bob"] == "otp"


def test_scheduled_runs_are_the_appliances_own(appliance_with_backup):
    """The daemon (root, not an operator) runs the schedule an OAuth operator set, and applies retention."""
    config, _ = appliance_with_backup
    config = update_config(config, {"operators": {"alice": "oauth", "root": None}})  # root is not listed
    service = BackupService(config, kdf_params=FAST_KDF, login=Login("root", superuser=True))
    assert not service.access().may_change
    with pytest.raises(OperatorRefusedError):
        service.run_backup()
    from datetime import datetime, timezone

    result = service.run_backup(slot=datetime(2026, 1, 1, 2, 0, tzinfo=timezone.utc))
    assert (config.storage.path / result.name).exists()
