"""Local users cannot replace what protects the backups (issue 14, item 3).

Real hostile layouts in tmp_path, made the way another local user would make
them (the tests run as root, so "another user" is uid 65534 given the files by
os.chown): a folder above the state directory that everyone may write, a key
file planted by another uid, a state directory that is theirs. Every command of
the real program must then refuse with a sentence that names the path and the
fix, and encrypt nothing. And under umask 000 every folder and file the
product creates is private (0700 / 0600), while restored files keep the modes
recorded in the backup.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from backup.archive import ScryptParams
from backup.config import Config, load_config, update_config
from backup.demo import create_demo_appliance
from backup.errors import ExitCode
from backup.secret import DomainMasterSecret
from backup.service import BackupService
from tests.common import BIN, FAST_KDF, PASSPHRASE

NOBODY = 65534
"""Another local user (nobody): the owner of what the attacker makes."""
ATTACKER_DMS = "the attacker's own passphrase"


def cli(*args: str | os.PathLike[str], config: Config | Path | None = None, umask: int | None = None,
        env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, with the umask and environment of the test's choosing."""
    argv = [str(BIN)]
    if config is not None:
        argv += ["--config", str(config.path if isinstance(config, Config) else config)]
    argv += [str(a) for a in args]
    kwargs = {"umask": umask} if umask is not None else {}
    return subprocess.run(argv, capture_output=True, text=True, input=input, timeout=120,
                          env={**os.environ, "APPLIANCE_BACKUP_DEBUG": "", **(env or {})}, **kwargs)


@pytest.fixture
def shared(tmp_path: Path) -> tuple[Config, Path]:
    """A demo appliance whose state directory sits in its own folder `srv` (mode 0755, root's), DMS set,
    one backup made. Returns the configuration and `srv`."""
    config = load_config(create_demo_appliance(tmp_path / "appliance"))
    srv = tmp_path / "srv"
    srv.mkdir(mode=0o755)
    srv.chmod(0o755)
    config = update_config(config, {"state": {"dir": str(srv / "state")}})
    service = BackupService(config, kdf_params=FAST_KDF)
    service.set_secret(PASSPHRASE)
    service.run_backup()
    return config, srv


def every_command(config: Config, backup: str, passphrase_file: Path) -> list[tuple[str, ...]]:
    """Every subcommand (and the console), with arguments that would otherwise succeed or at least start."""
    return [("status",), ("status", "--json"), ("list",), ("run",), ("verify", backup), ("restore", backup, "--yes"),
            ("secret", "set", "--passphrase-file", str(passphrase_file)), ("prune", "--dry-run"), ("prune",),
            ("schedule", "show"), ("schedule", "set", "--daily", "02:00"), ("schedule", "disable"), ()]


def refused_everywhere(config: Config, passphrase_file: Path, *must_name: str) -> None:
    backup = sorted(p.name for p in config.storage.path.iterdir())[0]
    before = sorted(p.name for p in config.storage.path.iterdir())
    config_text = config.path.read_text()
    for args in every_command(config, backup, passphrase_file):
        r = cli(*args, config=config, input="")
        assert r.returncode == ExitCode.USAGE, (args, r.returncode, r.stdout, r.stderr)
        message = " ".join(r.stderr.split())
        for text in must_name:
            assert text in message, (args, message)
        assert "Traceback" not in r.stderr
    assert sorted(p.name for p in config.storage.path.iterdir()) == before  # nothing written, nothing pruned
    assert config.path.read_text() == config_text  # no schedule changed


@pytest.fixture
def passphrase_file(tmp_path: Path) -> Path:
    path = tmp_path / "dms.txt"
    path.write_text(PASSPHRASE + "\n")
    path.chmod(0o600)
    return path


def test_the_issues_attack_a_planted_key_above_a_0777_folder_is_refused_by_every_command(shared, passphrase_file,
                                                                                         tmp_path):
    config, srv = shared
    srv.chmod(0o777)  # as `mkdir -p` left it under umask 000
    # Another user makes a state with a key of their own passphrase, moves the state aside and puts theirs there.
    evil = tmp_path / "evil"
    evil.mkdir(mode=0o700)
    DomainMasterSecret(evil / "state", params=ScryptParams(log2_n=10, r=8, p=1)).set(
        ATTACKER_DMS, now=datetime.now(timezone.utc))
    for path in (evil / "state", evil / "state" / "dms.key"):
        os.chown(path, NOBODY, NOBODY)
    os.rename(srv / "state", srv / "state.moved")
    os.rename(evil / "state", srv / "state")
    refused_everywhere(config, passphrase_file, str(srv), f"chmod go-w {srv}")
    r = cli("status", config=config)
    assert "writable by every user (mode 0777)" in " ".join(r.stderr.split())


def test_a_folder_above_the_state_that_others_may_write_is_refused(shared, passphrase_file):
    config, srv = shared
    srv.chmod(0o777)
    refused_everywhere(config, passphrase_file, f"The state directory {srv / 'state'} cannot be trusted",
                       str(srv), f"chmod go-w {srv}")


def test_a_group_writable_folder_above_the_state_is_refused(shared, passphrase_file):
    config, srv = shared
    srv.chmod(0o775)
    r = cli("status", config=config)
    assert r.returncode == ExitCode.USAGE
    assert "writable by its group" in r.stderr and f"chmod go-w {srv}" in " ".join(r.stderr.split())


def test_a_key_file_owned_by_another_user_is_refused(shared, passphrase_file):
    config, srv = shared
    key = srv / "state" / "dms.key"
    os.chown(key, NOBODY, NOBODY)
    refused_everywhere(config, passphrase_file, f"{key}", "owned by nobody", "planted")


def test_a_key_file_others_may_write_is_refused(shared, passphrase_file):
    config, srv = shared
    key = srv / "state" / "dms.key"
    key.chmod(0o666)
    r = cli("run", config=config)
    assert r.returncode == ExitCode.USAGE, r.stderr
    assert str(key) in r.stderr and "writable by every user" in r.stderr


def test_a_state_directory_owned_by_another_user_is_refused(shared, passphrase_file):
    config, srv = shared
    os.chown(srv / "state", NOBODY, NOBODY)
    r = cli("status", config=config)
    assert r.returncode == ExitCode.USAGE
    message = " ".join(r.stderr.split())
    assert f"{srv / 'state'} is owned by nobody" in message and "chown root" in message


def test_a_sticky_state_directory_is_still_refused(shared):
    """The sticky bit protects others' entries from each other, not the state from new entries (a key
    planted before the DMS is set): the state directory itself must be the owner's alone."""
    config, srv = shared
    (srv / "state").chmod(0o1777)
    r = cli("status", config=config)
    assert r.returncode == ExitCode.USAGE and "(mode 1777)" in r.stderr


def test_a_sticky_root_folder_above_the_state_is_accepted(tmp_path):
    """Like /tmp: others may add their own entries there, but not rename or remove root's."""
    config = load_config(create_demo_appliance(tmp_path / "appliance"))
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    config = update_config(config, {"state": {"dir": str(sticky / "state")}})
    r = cli("status", "--json", config=config)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["dms_set"] is False


def test_a_link_in_a_folder_others_may_write_is_refused(shared):
    """The state reached through a link: whoever may replace the link may point it elsewhere."""
    config, srv = shared
    open_folder = srv.parent / "open"
    open_folder.mkdir()
    open_folder.chmod(0o777)
    (open_folder / "state").symlink_to(srv / "state")
    config = update_config(config, {"state": {"dir": str(open_folder / "state")}})
    r = cli("status", config=config)
    assert r.returncode == ExitCode.USAGE
    assert f"chmod go-w {open_folder}" in " ".join(r.stderr.split())


def test_a_configuration_file_others_may_write_is_refused(shared):
    """Whoever may rewrite the configuration chooses the state directory, the storage and the operators."""
    config, srv = shared
    config.path.chmod(0o646)
    r = cli("status", config=config)
    assert r.returncode == ExitCode.USAGE
    assert f"The configuration file {config.path}" in r.stderr and "writable by every user" in r.stderr


def test_the_service_refuses_too_not_only_the_command(shared):
    """The check is the core's: the console and the daemon build the same service."""
    from backup.errors import ConfigError

    config, srv = shared
    srv.chmod(0o777)
    with pytest.raises(ConfigError, match="cannot be trusted"):
        BackupService(config)
    srv.chmod(0o755)
    BackupService(config).status()


def test_the_daemon_does_not_start_on_a_hostile_layout(shared):
    config, srv = shared
    srv.chmod(0o777)
    r = cli("daemon", config=config)
    assert r.returncode == ExitCode.USAGE
    assert f"chmod go-w {srv}" in " ".join(r.stderr.split())


# ---------------------------------------------------------------- umask 000


def modes_below(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in sorted(root.rglob("*"))
            if not p.is_symlink()}


def test_under_umask_000_everything_the_product_creates_is_private(tmp_path, passphrase_file):
    demo = tmp_path / "made" / "by" / "demo"
    r = cli("demo", demo, umask=0)
    assert r.returncode == 0, r.stderr
    for level in (tmp_path / "made", tmp_path / "made" / "by", demo, demo / "backups", demo / "state"):
        assert stat.S_IMODE(level.stat().st_mode) == 0o700, level
    config = load_config(demo / "config.toml")
    # A state directory three levels below anything that exists: each level is made 0700.
    deep = tmp_path / "var" / "lib" / "appliance-backup"
    config = update_config(config, {"state": {"dir": str(deep / "state")}})
    firmware_modes = modes_below(config.appliance.firmware)
    assert cli("secret", "set", "--passphrase-file", passphrase_file, config=config, umask=0).returncode == 0
    r = cli("run", config=config, umask=0)
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip()
    assert cli("verify", name, config=config, umask=0).returncode == 0
    (config.appliance.firmware / "added-later.conf").write_text("later\n")
    r = cli("restore", name, "--yes", config=config, umask=0)
    assert r.returncode == 0, r.stderr
    assert cli("status", config=config, umask=0).returncode == 0

    for level in (tmp_path / "var", tmp_path / "var" / "lib", deep, deep / "state"):
        assert stat.S_IMODE(level.stat().st_mode) == 0o700, level
    state_modes = modes_below(deep / "state")
    assert {"rollback", "dms.key", "journal.jsonl"} <= set(state_modes), state_modes
    loose = {path: f"{mode:04o}" for path, mode in state_modes.items()
             if (mode & 0o077) or (stat.S_ISDIR((deep / "state" / path).lstat().st_mode) and mode != 0o700)}
    # Restored copies in rollback/ are the appliance's own files with their own modes, inside 0700 folders.
    loose = {p: m for p, m in loose.items() if not p.startswith("rollback/") or p.count("/") < 2}
    assert loose == {}, loose
    assert stat.S_IMODE((config.storage.path / name).stat().st_mode) == 0o600
    # What the restore put back has the modes recorded in the backup, not the umask's.
    assert modes_below(config.appliance.firmware) == firmware_modes


def test_the_progress_file_is_private_under_umask_000(tmp_path):
    """It is published while a run is going and removed after, so the command-level test above cannot see it."""
    from backup.journal import RunJournal

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    previous = os.umask(0)
    try:
        journal = RunJournal(state)
        journal.write_progress({"task": "backup", "stage": "Archiving"})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(journal.progress_path.stat().st_mode) == 0o600
