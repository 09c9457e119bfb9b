"""The headless command from the outside: exit codes, output, and what an operator reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backup.config import Config
from backup.errors import ConfigError, ExitCode
from backup.journal import RunJournal
from backup.service import BackupService
from tests.common import BIN, PASSPHRASE, ROOT, run_cli
from tests.helpers import appliance_state, mutate_appliance


def test_help_lists_commands_and_exit_codes() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for word in ("run", "list", "verify", "restore", "status", "secret", "demo", "exit codes", "integrity"):
        assert word in out.stdout


def test_full_cycle_from_the_command_line(appliance: Config, passphrase_file: Path) -> None:
    r = run_cli("run", config=appliance)
    assert r.returncode == ExitCode.DMS_NOT_SET, r.stderr
    assert "secret set" in r.stderr and "Traceback" not in r.stderr

    short = passphrase_file.with_name("short.txt")
    short.write_text("1234567\n")
    r = run_cli("secret", "set", "--passphrase-file", short, config=appliance)
    assert r.returncode == ExitCode.USAGE and "at least 8 characters" in r.stderr

    r = run_cli("secret", "set", "--passphrase-file", passphrase_file, config=appliance)
    assert r.returncode == 0, r.stderr
    key = appliance.state_dir / "dms.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert PASSPHRASE not in key.read_text()
    r = run_cli("secret", "set", "--passphrase-file", passphrase_file, config=appliance)
    assert r.returncode == ExitCode.DMS_ALREADY_SET and "only be set once" in r.stderr

    r = run_cli("run", config=appliance)
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip()
    assert name.endswith(".abk") and (appliance.storage.path / name).is_file()

    listed = json.loads(run_cli("list", "--json", config=appliance).stdout)
    assert [b["name"] for b in listed] == [name]
    assert listed[0]["size"] == (appliance.storage.path / name).stat().st_size

    status = json.loads(run_cli("status", "--json", config=appliance).stdout)
    assert status["status"] == "Not Running"
    assert status["last_successful_backup"]["name"] == name
    assert status["schedule"] == "Schedule Disabled" and status["next_scheduled_backup"] is None
    assert status["last_error"] is None and status["dms_set"] is True

    r = run_cli("verify", name, config=appliance)
    assert r.returncode == 0 and "OK" in r.stdout

    before = appliance_state(appliance)
    mutate_appliance(appliance)
    r = run_cli("restore", name, config=appliance)  # no terminal, no --yes
    assert r.returncode == ExitCode.USAGE and "--yes" in r.stderr
    r = run_cli("restore", name, "--yes", config=appliance)
    assert r.returncode == 0, r.stderr
    assert "rollback" in r.stdout
    assert appliance_state(appliance) == before

    for secret_output in (r.stdout, r.stderr, (appliance.state_dir / "journal.jsonl").read_text()):
        assert PASSPHRASE not in secret_output


def test_a_file_named_like_a_backup_but_with_no_real_date_is_listed_by_its_mtime(appliance: Config,
                                                                                 passphrase_file: Path) -> None:
    odd = appliance.storage.path / "other-20261399T000000Z-abcdef.abk"  # month 13
    odd.write_bytes(b"another tool's file")
    os.utime(odd, (1_700_000_000, 1_700_000_000))
    assert run_cli("secret", "set", "--passphrase-file", passphrase_file, config=appliance).returncode == 0
    r = run_cli("run", config=appliance)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(".abk")
    r = run_cli("list", "--json", config=appliance)
    assert r.returncode == 0, r.stderr
    listed = {b["name"]: b for b in json.loads(r.stdout)}
    assert listed[odd.name]["created_at"].startswith("2023-11-14")


def test_a_hand_edited_journal_line_with_an_impossible_pid_is_not_fatal(appliance: Config) -> None:
    with open(appliance.state_dir / "journal.jsonl", "a") as journal:
        journal.write('{"type":"start","id":"a","kind":"backup","at":"2026-11-26T14:30:00+00:00",'
                      '"pid":99999999999999999999999,"name":"x.abk","detail":null}\n')
    for command in (["status"], ["list"]):
        r = run_cli(*command, config=appliance)
        assert r.returncode == 0, r.stderr


def test_a_key_file_without_its_date_is_named_damaged(service: BackupService) -> None:
    key = service.state_dir / "dms.key"
    key.write_text(json.dumps({k: v for k, v in json.loads(key.read_text()).items() if k != "set_at"}))
    r = run_cli("status", config=service.config)
    assert r.returncode == ExitCode.USAGE and "is damaged" in r.stderr and "unexpected" not in r.stderr


def test_reading_a_backup_on_an_appliance_without_a_dms_asks_for_the_backups_dms(service: BackupService,
                                                                                 tmp_path: Path) -> None:
    name = service.run_backup().name
    (service.state_dir / "dms.key").unlink()
    r = run_cli("verify", name, config=service.config)
    assert r.returncode == ExitCode.DMS_NOT_SET and "--passphrase-file" in r.stderr
    assert "no backup can be created" not in r.stderr


def test_passphrase_files_that_hold_no_passphrase_are_named(service: BackupService, tmp_path: Path) -> None:
    name = service.run_backup().name
    (tmp_path / "empty").write_text("")
    (tmp_path / "blank-line").write_text("\nsecond line\n")
    for path, words in ((tmp_path / "empty", "is empty"), (tmp_path / "blank-line", "is empty"),
                        (tmp_path, "is a directory")):
        r = run_cli("verify", name, "--passphrase-file", path, config=service.config)
        assert r.returncode == ExitCode.USAGE and words in r.stderr, r.stderr


def test_a_folder_in_the_storage_is_no_backup(service: BackupService) -> None:
    (service.config.storage.path / "dir.abk").mkdir()
    r = run_cli("verify", "dir.abk", config=service.config)
    assert r.returncode == ExitCode.NOT_FOUND and "no backup named dir.abk" in r.stderr


def test_a_storage_path_that_is_a_file_is_named_so(appliance: Config, passphrase_file: Path, tmp_path: Path) -> None:
    assert run_cli("secret", "set", "--passphrase-file", passphrase_file, config=appliance).returncode == 0
    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_text("x")
    text = appliance.path.read_text().replace(str(appliance.storage.path), str(not_a_dir))
    appliance.path.write_text(text)
    r = run_cli("run", config=appliance)
    assert r.returncode == ExitCode.STORAGE and "is not a directory" in r.stderr


def test_json_output_is_strict_utf8_whatever_the_file_names(appliance: Config) -> None:
    os.close(os.open(os.fsencode(appliance.storage.path) + b"/caf\xe9.abk", os.O_CREAT | os.O_WRONLY, 0o600))
    r = subprocess.run([str(BIN), "--config", str(appliance.path), "list", "--json"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode("utf-8")  # strict: no lone surrogate was written
    assert "\\ud" not in text
    assert [b["name"] for b in json.loads(text)] == ["caf\\xe9.abk"]


def test_run_says_what_it_skipped(service: BackupService) -> None:
    os.mkfifo(service.config.appliance.system / "control.fifo")
    r = run_cli("run", config=service.config)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(".abk")  # stdout stays the name alone, for scripts
    assert "not backed up: 1 fifo(s), socket(s) or device(s)" in r.stderr and "system/control.fifo" in r.stderr


def test_anything_left_in_the_state_tmp_directory_is_cleared_not_fatal(appliance: Config) -> None:
    tmp = appliance.state_dir / "tmp"
    (tmp / "sub" / "deeper").mkdir(parents=True)
    (tmp / "stray.db").write_text("x")
    r = run_cli("status", config=appliance)
    assert r.returncode == 0, r.stderr
    assert list(tmp.iterdir()) == []


def test_a_passphrase_file_is_read_as_an_editor_may_have_saved_it(tmp_path: Path) -> None:
    from backup.secret import read_passphrase_file

    for name, content in (("plain", b"correct horse\n"), ("crlf", b"correct horse\r\nsecond line\r\n"),
                          ("bom", b"\xef\xbb\xbfcorrect horse\n"), ("no-newline", b"correct horse")):
        (tmp_path / name).write_bytes(content)
        assert read_passphrase_file(tmp_path / name) == "correct horse", name
    (tmp_path / "latin1").write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        read_passphrase_file(tmp_path / "latin1")


def _on_terminal(argv: list[str], answers: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run a command on a real pseudo-terminal (its controlling tty), typing each answer after the next prompt."""
    import pty
    import select

    pid, master = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal, as on an operator's SSH session
        os.execv(argv[0], argv)
    output = b""
    deadline = time.monotonic() + timeout
    pending = list(answers)
    answered_at = 0  # only a prompt printed after the last answer gets the next one
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
        if pending and output[answered_at:].rstrip().endswith(b":"):
            os.write(master, pending.pop(0).encode() + b"\n")
            answered_at = len(output)
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(master)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_restore_on_a_terminal_asks_and_names_what_it_replaces(service: BackupService) -> None:
    name = service.run_backup().name
    mutate_appliance(service.config)
    changed = appliance_state(service.config)
    argv = [str(BIN), "--config", str(service.config.path), "restore", name]
    code, out = _on_terminal(argv, ["no"])
    assert code == 0 and "Restore cancelled; nothing was changed." in out
    assert str(service.config.appliance.database) in out and str(service.config.appliance.firmware) in out
    assert appliance_state(service.config) == changed
    code, out = _on_terminal(argv, ["\x04"])  # Ctrl-D: the input ends, which is no yes
    assert code == 0 and "Restore cancelled; nothing was changed." in out and "unexpected" not in out
    assert appliance_state(service.config) == changed
    code, out = _on_terminal(argv, ["yes"])
    assert code == 0 and "Restored" in out
    assert appliance_state(service.config) != changed


def test_secret_set_on_a_terminal_asks_twice(appliance: Config) -> None:
    argv = [str(BIN), "--config", str(appliance.path), "secret", "set"]
    code, out = _on_terminal(argv, ["abcdefgh1", "abcdefgh2"])
    assert code == ExitCode.USAGE and "do not match" in out
    assert "abcdefgh" not in out  # never echoed
    code, out = _on_terminal(argv, ["short", "short"])
    assert code == ExitCode.USAGE and "at least 8 characters" in out
    code, out = _on_terminal(argv, ["\x04"])  # Ctrl-D
    assert code == ExitCode.USAGE and "No secret was typed" in out and "unexpected" not in out
    code, out = _on_terminal(argv, [PASSPHRASE, PASSPHRASE])
    assert code == 0 and "is set" in out and PASSPHRASE not in out
    code, out = _on_terminal(argv, [])
    assert code == ExitCode.DMS_ALREADY_SET and "only be set once" in out
    r = run_cli("secret", "set", "--passphrase-file", "/dev/zero", config=appliance)
    assert r.returncode == ExitCode.DMS_ALREADY_SET, r.stderr  # whatever it holds: it cannot be set again


def test_a_passphrase_file_with_no_end_to_its_first_line_is_refused(appliance: Config) -> None:
    r = run_cli("secret", "set", "--passphrase-file", "/dev/zero", config=appliance)
    assert r.returncode == ExitCode.USAGE and "longer than 4096 characters" in r.stderr


def test_restore_of_a_missing_backup_says_so_before_asking(service: BackupService) -> None:
    argv = [str(BIN), "--config", str(service.config.path), "restore", "no-such.abk"]
    code, out = _on_terminal(argv, [])
    assert code == ExitCode.NOT_FOUND and "no-such.abk" in out and "Type 'yes'" not in out


@pytest.mark.parametrize(("args", "words"), [
    (["--cron", ""], "has 0 fields"),
    (["--daily", ""], "HH:MM"),
    (["--weekly", "Sunflower", "02:00"], "not a day of the week"),
    (["--weekly", "monkey", "02:00"], "not a day of the week"),
])
def test_schedule_set_names_an_empty_or_wrong_value(appliance: Config, args: list[str], words: str) -> None:
    r = run_cli("schedule", "set", *args, config=appliance)
    assert r.returncode == ExitCode.USAGE, r.stderr
    assert words in r.stderr and "unexpected" not in r.stderr


def test_schedule_set_weekly_takes_a_day_in_full_or_in_three_letters(appliance: Config) -> None:
    for day in ("Monday", "mon", " SUNDAY "):
        r = run_cli("schedule", "set", "--weekly", day, "03:00", config=appliance)
        assert r.returncode == 0, r.stderr
    assert "Sunday" in r.stdout


def test_failed_backup_is_reported_in_status(service: BackupService) -> None:
    service.config.storage.path.rmdir()
    r = run_cli("run", config=service.config)
    assert r.returncode == ExitCode.STORAGE
    assert "does not exist" in r.stderr
    status = json.loads(run_cli("status", "--json", config=service.config).stdout)
    assert status["last_error"]["result"] == "failed"
    assert "does not exist" in status["last_error"]["message"]


@pytest.mark.parametrize(
    "content, words",
    [
        (None, "does not exist"),
        ("[appliance\nname=", "not valid TOML"),
        ('[appliance]\nname = "a"\nfirmware = "rel/fw"\nsystem = "/s"\ndatabase = "/d"\n[state]\ndir = "/x"\n', "relative path"),
        ('[appliance]\nname = "a"\nfirmware = "/f"\nsystem = "/s"\ndatabase = "/d"\n[state]\ndir = "/x"\n'
         '[storage]\ntype = "ftp"\n', "[storage] type"),
        ('[appliance]\nname = "a"\nfirmware = "/f"\ndatabase = "/d"\n[state]\ndir = "/x"\n', "[appliance] system is missing"),
        ('[appliance]\nname = "a"\nfirmware = "/f"\nsystem = "/s"\ndatabase = "/d"\n[state]\ndir = "/x"\n'
         '[backup]\nprefix = "../x"\n', "prefix"),
        *[('[appliance]\nname = "a"\nfirmware = "/f"\nsystem = "/s"\ndatabase = "/d"\n[state]\ndir = "/x"\n'
           f'[schedule]\ncron = "0 2 * * *"\nmax_age_hours = {value}\n', "max_age_hours must be a number of hours")
          for value in ("inf", "nan", "1e300", "0", "-1", '"36"')],
        ('[appliance]\nname = "a"\nfirmware = "/f"\nsystem = "/s"\ndatabase = "/d"\n[state]\ndir = "/x"\n'
         '[backup]\ndatabase_wait_seconds = 0\n', "above 0 and at most 3600"),
        ('[appliance]\nname = "a"\nfirmware = "/f"\nsystem = "/f/s"\ndatabase = "/d"\n[state]\ndir = "/x"\n',
         "[appliance] system is inside [appliance] firmware"),
        ('[appliance]\nname = "a"\nfirmware = "/f"\nsystem = "/f"\ndatabase = "/d"\n[state]\ndir = "/x"\n',
         "[appliance] system is the same folder as [appliance] firmware"),
        ('[appliance]\nname = "a"\nfirmware = "/f"\nsystem = "/s"\ndatabase = "/s/app.db"\n[state]\ndir = "/x"\n',
         "[appliance] database is inside [appliance] system"),
        ('[appliance]\nname = "a"\nfirmware = "/f"\nsystem = "/s"\ndatabase = "/d"\n[state]\ndir = "/s/state"\n',
         "[state] dir is inside [appliance] system"),
        ('[appliance]\nname = "a"\nfirmware = "/f"\nsystem = "/s"\ndatabase = "/d"\n[state]\ndir = "/x"\n'
         '[storage]\ntype = "local"\npath = "/f/backups"\n', "[storage] path is inside [appliance] firmware"),
        ('[appliance]\nname = "a"\nfirmware = "/f"\nsystem = "/s"\ndatabase = "/d"\n[state]\ndir = "/etc/hostname"\n',
         "which is a file, not a folder"),
        ('[appliance]\nname = "a"\nfirmware = "/f"\nsystem = "/s"\ndatabase = "/d"\n[state]\ndir = "/x"\n'
         '[schedule]\nenable = true\ncron = "0 2 * * *"\n', "[schedule] enable is not a setting of [schedule] (did you mean enabled?)"),
        ('[appliance]\nname = "a"\nfirmware = "/f"\nsystem = "/s"\ndatabase = "/d"\n[state]\ndir = "/x"\n'
         '[sheduler]\nenabled = true\n', "[sheduler] is not a section of this configuration (did you mean [schedule]?)"),
        ('prefix = "x"\n[appliance]\nname = "a"\nfirmware = "/f"\nsystem = "/s"\ndatabase = "/d"\n[state]\ndir = "/x"\n',
         "prefix is set before any [section] header (it belongs under [backup])"),
    ],
)
def test_config_errors_name_the_file_and_the_key(tmp_path: Path, content: str | None, words: str) -> None:
    path = tmp_path / "config.toml"
    if content is not None:
        path.write_text(content)
    r = run_cli("status", config=path)
    assert r.returncode == ExitCode.USAGE
    assert str(path) in r.stderr and words in r.stderr
    assert "Traceback" not in r.stderr


def test_a_config_file_with_a_byte_order_mark_reads(appliance: Config) -> None:
    appliance.path.write_bytes(b"\xef\xbb\xbf" + appliance.path.read_bytes())
    r = run_cli("status", config=appliance)
    assert r.returncode == 0, r.stderr


def test_a_config_path_through_a_file_is_named(appliance: Config) -> None:
    r = run_cli("status", config=appliance.path / "config.toml")
    assert r.returncode == ExitCode.USAGE and "goes through a file" in r.stderr


def test_changing_a_linked_config_writes_the_file_the_link_leads_to(appliance: Config) -> None:
    real = appliance.path.with_name("real.toml")
    os.rename(appliance.path, real)
    os.symlink("real.toml", appliance.path)
    r = run_cli("schedule", "set", "--daily", "03:00", config=appliance)
    assert r.returncode == 0, r.stderr
    assert appliance.path.is_symlink() and "0 3 * * *" in real.read_text()


def test_config_from_the_environment(appliance: Config) -> None:
    env = {**os.environ, "APPLIANCE_BACKUP_CONFIG": str(appliance.path)}
    r = subprocess.run([str(BIN), "status", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "Not Running"


def test_unknown_backup_name(service: BackupService) -> None:
    r = run_cli("verify", "no-such.abk", config=service.config)
    assert r.returncode == ExitCode.NOT_FOUND and "no-such.abk" in r.stderr
    r = run_cli("verify", "../../etc/passwd", config=service.config)
    assert r.returncode == ExitCode.NOT_FOUND


def _big_state(config: Config) -> None:
    """Enough data that a backup takes a while, to stop it in the middle."""
    with open(config.appliance.firmware / "large.bin", "wb") as f:
        for _ in range(48):
            f.write(os.urandom(4 << 20))


def _wait_for_partial(config: Config, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        partials = list(config.storage.path.glob("*.partial"))
        if partials and partials[0].stat().st_size > 1 << 20:
            return
        assert proc.poll() is None, "the backup finished before it could be stopped"
        time.sleep(0.005)
    raise AssertionError("no partial file appeared")


def test_sigterm_mid_backup_stops_cleanly(service: BackupService) -> None:
    _big_state(service.config)
    proc = subprocess.Popen([str(BIN), "--config", str(service.config.path), "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_partial(service.config, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert list(service.config.storage.path.iterdir()) == []
    runs = RunJournal(service.state_dir).runs()
    assert runs[-1].result == "interrupted"
    assert "Traceback" not in err


def test_killed_backup_is_cleaned_up_at_next_start(service: BackupService) -> None:
    _big_state(service.config)
    proc = subprocess.Popen([str(BIN), "--config", str(service.config.path), "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_partial(service.config, proc)
    proc.kill()
    proc.wait(timeout=30)
    assert list(service.config.storage.path.glob("*.partial"))  # left behind by the kill
    assert not [p for p in service.config.storage.path.iterdir() if p.name.endswith(".abk")]

    status = json.loads(run_cli("status", "--json", config=service.config).stdout)
    assert status["status"] == "Not Running"
    assert status["last_error"]["result"] == "interrupted"
    assert list(service.config.storage.path.iterdir()) == []  # the partial went at the next start

    r = run_cli("run", config=service.config)
    assert r.returncode == 0, r.stderr


def test_status_from_another_process_shows_a_running_backup(service: BackupService) -> None:
    """The backup runs in this process and is held mid-way; `status` runs as a separate process."""
    import threading

    _big_state(service.config)
    reached, release = threading.Event(), threading.Event()

    def hold(p) -> None:
        if p.done > 8 << 20 and not reached.is_set():
            reached.set()
            release.wait(30)

    worker = threading.Thread(target=service.run_backup, kwargs={"progress": hold})
    worker.start()
    try:
        assert reached.wait(30)
        status = json.loads(run_cli("status", "--json", config=service.config).stdout)
    finally:
        release.set()
        worker.join()
    assert status["status"] == "In Progress" and status["task"] == "backup"
    progress = status["progress"]
    assert progress["stage"].startswith("Archiving")
    assert 8 << 20 < progress["done"] < progress["total"]
    after = json.loads(run_cli("status", "--json", config=service.config).stdout)
    assert after["status"] == "Not Running" and after["progress"] is None


def test_loosened_permissions_on_the_state_dir_and_key_file_are_warned(service: BackupService) -> None:
    assert json.loads(run_cli("status", "--json", config=service.config).stdout)["warnings"] == []
    service.state_dir.chmod(0o755)
    (service.state_dir / "dms.key").chmod(0o644)
    status = json.loads(run_cli("status", "--json", config=service.config).stdout)
    assert len(status["warnings"]) == 2
    assert "chmod 700" in status["warnings"][0] and "chmod 600" in status["warnings"][1]
    assert "Warning:" in run_cli("status", config=service.config).stdout


MALLINFO = '''
import ctypes, sys
from backup.cli import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "keep":
    keep_freed_memory()
block = bytearray(8 << 20)
mapped = libc.mallinfo2().hblkhd
del block
print(mapped, libc.mallinfo2().fordblks)
'''


@pytest.mark.parametrize("mode", ["default", "keep"])
def test_streaming_commands_keep_freed_buffers_for_reuse(mode: str) -> None:
    """In a fresh interpreter (glibc): an 8 MiB buffer is mapped and unmapped by default, kept for reuse after."""
    out = subprocess.run([sys.executable, "-c", MALLINFO, mode], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    mapped, free_in_heap = map(int, out.split())
    if mode == "default":
        assert mapped >= 8 << 20 and free_in_heap < 8 << 20
    else:
        assert mapped < 8 << 20 and free_in_heap >= 8 << 20
