"""A damaged, tampered or hostile backup is refused, and the appliance stays as it was."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import tarfile
from pathlib import Path

import pytest

from backup import database
from backup.archive import read_header
from backup.errors import BackupError, ExitCode, UnsafeArchiveError
from backup.service import BackupService
from tests.common import run_cli
from tests.helpers import appliance_state, db_rows, mutate_appliance, sealed_backup

HEADER = 162


@pytest.fixture
def backed_up(service: BackupService) -> tuple[BackupService, str, Path]:
    name = service.run_backup().name
    return service, name, service.config.storage.path / name


def _refused(service: BackupService, name: str, code: ExitCode, *, cli: bool = False) -> None:
    """Both verify and restore refuse with `code`, and restore changes nothing.

    In-process by default (fast); `cli=True` goes through the real command.
    """
    before = appliance_state(service.config)
    if cli:
        for args in (("verify", name), ("restore", name, "--yes")):
            r = run_cli(*args, config=service.config)
            assert r.returncode == code, r.stderr
            assert "Traceback" not in r.stderr
    else:
        for call in (service.verify, service.restore):
            with pytest.raises(BackupError) as caught:
                call(name)
            assert caught.value.exit_code == code, caught.value
    assert appliance_state(service.config) == before
    parent = service.config.appliance.firmware.parent
    assert not [p for p in parent.iterdir() if ".restore-" in p.name]
    rollback = service.state_dir / "rollback"
    assert not rollback.exists() or not list(rollback.iterdir())  # nothing replaced, nothing kept


def test_byte_flips_across_the_file_are_detected(backed_up) -> None:
    service, name, path = backed_up
    data = path.read_bytes()
    chunk = read_header(io.BytesIO(data)).chunk_size + 16
    positions = sorted({0, 9, 13, 20, 40, 60, 100, 140, HEADER, HEADER + 1, HEADER + chunk // 2,
                        HEADER + chunk - 1, len(data) // 2, len(data) - 17, len(data) - 1})
    for pos in positions:
        damaged = bytearray(data)
        damaged[pos] ^= 0x01
        path.write_bytes(damaged)
        # A flip in the KDF salt or parameters under an intact checksum cannot happen by accident;
        # every flip here is an integrity failure (or "not a backup" for the magic).
        _refused(service, name, ExitCode.INTEGRITY, cli=pos in (HEADER, len(data) - 1))
    path.write_bytes(data)
    assert run_cli("verify", name, config=service.config).returncode == 0


def test_truncation_and_appended_data_are_detected(backed_up) -> None:
    service, name, path = backed_up
    data = path.read_bytes()
    chunk = read_header(io.BytesIO(data)).chunk_size + 16
    cuts = [0, 10, HEADER - 1, HEADER, HEADER + 1, HEADER + chunk // 2, len(data) - 1]
    cuts += [HEADER + k * chunk for k in range(1, (len(data) - HEADER) // chunk + 1)]
    for cut in sorted(set(c for c in cuts if c < len(data))):
        path.write_bytes(data[:cut])
        _refused(service, name, ExitCode.INTEGRITY, cli=cut == HEADER + chunk)
    path.write_bytes(data + b"extra")
    _refused(service, name, ExitCode.INTEGRITY, cli=True)


def test_swapped_and_dropped_chunks_are_detected(backed_up, tmp_path: Path) -> None:
    service, name, path = backed_up
    # Make the backup span several chunks.
    (service.config.appliance.firmware / "noise.bin").write_bytes(os.urandom(3 << 20))
    name = service.run_backup().name
    path = service.config.storage.path / name
    data = path.read_bytes()
    chunk = read_header(io.BytesIO(data)).chunk_size + 16
    body = data[HEADER:]
    chunks = [body[i:i + chunk] for i in range(0, len(body), chunk)]
    assert len(chunks) >= 3
    swapped = chunks[:]
    swapped[0], swapped[1] = swapped[1], swapped[0]
    for variant in (swapped, chunks[1:], chunks[:1] + chunks[2:], chunks[:1] + chunks, chunks[:-1] + chunks[-1:] * 2):
        path.write_bytes(data[:HEADER] + b"".join(variant))
        _refused(service, name, ExitCode.INTEGRITY)


def test_not_a_backup(service: BackupService) -> None:
    (service.config.storage.path / "notes.abk").write_text("just text\n" * 100)
    r = run_cli("verify", "notes.abk", config=service.config)
    assert r.returncode == ExitCode.INTEGRITY and "not an appliance-backup file" in r.stderr


def test_wrong_dms_is_told_apart_from_damage(backed_up, tmp_path: Path) -> None:
    service, name, path = backed_up
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not the secret at all\n")
    before = appliance_state(service.config)
    r = run_cli("restore", name, "--yes", "--passphrase-file", wrong, config=service.config)
    assert r.returncode == ExitCode.WRONG_DMS, r.stderr
    assert appliance_state(service.config) == before


# ------------------------------------------------------------ hostile members


def _hostile_backup(service: BackupService, members: list[tuple[tarfile.TarInfo, bytes]]) -> str:
    """An authentic backup (this appliance's key) whose payload holds `members` after a valid manifest."""
    manifest = json.dumps({"format": "appliance-backup manifest", "version": 1, "components": []}).encode()
    return sealed_backup(service, [_member("manifest.json", data=manifest), *members])


def _member(name: str, *, type=tarfile.REGTYPE, data: bytes = b"x", linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = type
    info.linkname = linkname
    info.size = len(data) if type == tarfile.REGTYPE else 0
    return info, data if type == tarfile.REGTYPE else b""


@pytest.mark.parametrize(
    "members",
    [
        [_member("/etc/evil")],
        [_member("firmware/../../evil")],
        [_member("../evil")],
        [_member("elsewhere/evil")],
        [_member("firmware", type=tarfile.DIRTYPE), _member("firmware/out", type=tarfile.SYMTYPE, linkname="/etc"),
         _member("firmware/out/evil")],
        [_member("firmware", type=tarfile.DIRTYPE), _member("firmware/up", type=tarfile.SYMTYPE, linkname="../.."),
         _member("firmware/up", type=tarfile.DIRTYPE), _member("firmware/up/evil")],
        [_member("firmware", type=tarfile.DIRTYPE), _member("firmware/hard", type=tarfile.LNKTYPE, linkname="/etc/passwd")],
        [_member("firmware", type=tarfile.DIRTYPE), _member("firmware/dev", type=tarfile.CHRTYPE)],
        [_member("firmware", type=tarfile.DIRTYPE), _member("firmware/fifo", type=tarfile.FIFOTYPE)],
        [_member("firmware", type=tarfile.DIRTYPE), _member("firmware/sparse", type=tarfile.GNUTYPE_SPARSE)],
        # Each link stays inside its folder, but followed one through the other they lead out:
        # firmware/deep/s -> .. is firmware/, so firmware/deep/l -> s/../.. is firmware's parent.
        [_member("firmware", type=tarfile.DIRTYPE), _member("firmware/deep", type=tarfile.DIRTYPE),
         _member("firmware/deep/s", type=tarfile.SYMTYPE, linkname=".."),
         _member("firmware/deep/l", type=tarfile.SYMTYPE, linkname="s/../.."),
         _member("firmware/deep/l/evil")],
        [_member("firmware", type=tarfile.DIRTYPE), _member("firmware/l", type=tarfile.SYMTYPE, linkname="."),
         _member("firmware/l", type=tarfile.DIRTYPE)],
    ],
    ids=["absolute", "dotdot-inside", "dotdot", "unknown-component", "through-an-absolute-link", "through-a-link-up",
         "hardlink", "device", "fifo", "sparse", "through-a-chain-of-links", "link-and-folder"],
)
def test_hostile_members_are_refused(service: BackupService, members, tmp_path: Path) -> None:
    name = _hostile_backup(service, members)
    before = appliance_state(service.config)
    with pytest.raises(UnsafeArchiveError):
        service.verify(name, deep=True)
    with pytest.raises(UnsafeArchiveError):
        service.restore(name)
    assert appliance_state(service.config) == before
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()
    assert not (service.config.appliance.firmware.parent / "evil").exists()
    r = run_cli("restore", name, "--yes", config=service.config)
    assert r.returncode == ExitCode.INTEGRITY and "restore refused" in r.stderr


def test_links_come_back_wherever_they_point(service: BackupService) -> None:
    """As the appliance had them: /etc/localtime points into /usr/share, configuration links across folders."""
    firmware = service.config.appliance.firmware
    links = {"inside-link": "sub/../version.txt", "localtime": "/usr/share/zoneinfo/UTC",
             "motd": "../system/motd", "dangling": "../../nowhere/at/all"}
    for link, target in links.items():
        os.symlink(target, firmware / link)
    name = service.run_backup().name
    assert service.verify(name, deep=True).files > 0
    for link in links:
        (firmware / link).unlink()
    service.restore(name)
    assert {link: os.readlink(firmware / link) for link in links} == links
    assert not Path("/usr/share/zoneinfo/UTC.restore").exists()


def test_a_backslash_is_an_ordinary_character_of_a_name(service: BackupService) -> None:
    firmware = service.config.appliance.firmware
    (firmware / "C:\\boot.ini").write_text("not windows\n")
    (firmware / "dir\\x").mkdir()
    (firmware / "dir\\x" / "f").write_text("y\n")
    before = appliance_state(service.config)
    name = service.run_backup().name
    mutate_appliance(service.config)
    service.restore(name)
    assert appliance_state(service.config) == before


def test_configured_paths_reached_through_links_are_backed_up_and_restored_where_they_lead(
        service: BackupService) -> None:
    """The links stay links; the directories and the database they lead to are restored."""
    appliance = service.config.appliance
    real = appliance.firmware.parent / "real"
    real.mkdir()
    for path in (appliance.firmware, appliance.database):
        os.rename(path, real / path.name)
        os.symlink(real / path.name, path)
    os.rename(appliance.system, real / "system")
    os.symlink("real/system", appliance.system)  # relative, as well
    before = appliance_state(service.config)
    name = service.run_backup().name
    assert service.verify(name, deep=True).files > 0
    mutate_appliance(service.config)
    service.restore(name)
    assert appliance_state(service.config) == before
    assert all(path.is_symlink() for path in (appliance.firmware, appliance.system, appliance.database))
    assert not [p.name for p in real.iterdir() if "restore-" in p.name]


def test_a_component_stored_as_a_link_by_an_earlier_version_is_restored_as_its_folder(
        service: BackupService, monkeypatch: pytest.MonkeyPatch) -> None:
    """Earlier versions stored a configured directory reached through a link as that link, its content below."""
    from backup import payload
    from backup import service as service_module

    firmware = service.config.appliance.firmware
    os.rename(firmware, firmware.with_name("real-firmware"))
    os.symlink("real-firmware", firmware)
    before = appliance_state(service.config)
    real_scan = payload.scan_directory

    def as_before(name: str, root: Path) -> payload.ComponentScan:
        scan = real_scan(name, root)
        scan.entries[0] = payload._entry(name, root, os.lstat(root))  # the root entry as they made it
        return scan

    monkeypatch.setattr(service_module, "scan_directory", as_before)
    name = service.run_backup().name
    monkeypatch.undo()
    mutate_appliance(service.config)
    service.restore(name)
    assert appliance_state(service.config) == before
    assert firmware.is_symlink() and firmware.resolve() == firmware.with_name("real-firmware")


# ------------------------------------------------------------ rollback


def test_a_failure_after_the_database_was_renamed_in_puts_the_previous_state_back(backed_up, monkeypatch) -> None:
    """Fault injection: the new database is in place, then the step fails (as a directory fsync can)."""
    service, name, _ = backed_up
    (service.config.appliance.firmware / "after.conf").write_text("made after the backup\n")
    before = appliance_state(service.config)
    real = database.replace
    calls = []

    def failing_after(staged, live, *, keep):  # the restore's call replaces, then fails; the undo's call works
        calls.append(staged.name)
        replaced = real(staged, live, keep=keep)
        if len(calls) == 1:
            assert replaced is database.Replaced.RENAMED
            raise OSError(5, "Input/output error")
        return replaced

    monkeypatch.setattr(database, "replace", failing_after)
    with pytest.raises(BackupError, match="previous state was put back"):
        service.restore(name)
    monkeypatch.undo()
    assert len(calls) == 2 and ".pre-restore-" in calls[1]
    assert appliance_state(service.config) == before
    assert service.journal.runs()[-1].result == "failed"
    assert not [p for p in service.config.appliance.database.parent.iterdir() if "restore-" in p.name]


def test_a_failure_while_writing_into_an_open_database_puts_the_previous_state_back(backed_up, monkeypatch) -> None:
    """Fault injection: the appliance holds the database open, and SQLite's write of the backup fails."""
    service, name, _ = backed_up
    (service.config.appliance.firmware / "after.conf").write_text("made after the backup\n")
    before = appliance_state(service.config)
    held = sqlite3.connect(service.config.appliance.database)
    held.execute("SELECT count(*) FROM sqlite_master").fetchone()
    real = database.restore_into
    calls = []

    def broken(staged, live):  # the first call (the restore) fails; the rollback's own call works
        calls.append(staged)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        real(staged, live)

    monkeypatch.setattr(database, "restore_into", broken)
    try:
        with pytest.raises(BackupError, match="previous state was put back"):
            service.restore(name)
        monkeypatch.undo()
        assert len(calls) == 2
        assert appliance_state(service.config) == before
        held.execute("SELECT count(*) FROM sqlite_master").fetchone()  # its connection still works
    finally:
        held.close()


def _crash_mid_swap(service: BackupService, name: str, phase: str, database_step: str) -> str:
    """Replays what _swap_in does, up to a crash, for a run whose process no longer exists."""
    run_id = service.journal.start("restore", now=service.clock(), name=name)
    paths = service._restore_paths(run_id)
    live = service.config.appliance.database
    paths["rollback"].mkdir(parents=True)
    assert database.in_wal_mode(live)  # the demo appliance's, as a real one's
    service._note_database_mode(paths)
    (paths["rollback"] / "PHASE").write_text(phase + "\n")
    fw = service.config.appliance.firmware
    os.rename(fw, paths["firmware.old"])
    fw.mkdir()
    (fw / "half-restored").write_text("x")
    if database_step in ("out of WAL mode", "kept", "renamed in"):  # as replace() does: out of WAL mode,
        con = sqlite3.connect(live)
        con.execute("PRAGMA journal_mode=DELETE")
        con.close()
    if database_step in ("kept", "renamed in"):  # then a hard link
        os.link(live, paths["database.old"])
    if database_step == "renamed in":
        other = live.with_name("other.db")
        con = sqlite3.connect(other)
        con.execute("CREATE TABLE replaced (x)")
        con.commit()
        con.close()
        os.rename(other, live)
    journal = service.journal.path.read_text().replace(f'"pid":{os.getpid()}', '"pid":999999999')
    service.journal.path.write_text(journal)
    return run_id


@pytest.mark.parametrize("database_step", ["not yet", "out of WAL mode", "kept", "renamed in"])
def test_a_restore_killed_mid_swap_is_undone_at_next_start(backed_up, database_step: str) -> None:
    """A crash while the phase file says "swapping": the directories, and the database wherever it was."""
    service, name, _ = backed_up
    (service.config.appliance.firmware / "after.conf").write_text("made after the backup\n")
    before = appliance_state(service.config)
    run_id = _crash_mid_swap(service, name, "swapping", database_step)

    closed = service.recover()
    assert [r.id for r in closed] == [run_id]
    assert appliance_state(service.config) == before
    assert database.in_wal_mode(service.config.appliance.database)  # as it was, not left in rollback-journal mode
    parent = service.config.appliance.database.parent
    assert not [p.name for p in parent.iterdir() if "restore-" in p.name]


def test_a_restore_killed_after_its_commit_is_finished_at_next_start(backed_up) -> None:
    service, name, _ = backed_up
    old_rows = db_rows(service.config.appliance.database)
    run_id = _crash_mid_swap(service, name, "committed", "renamed in")
    after = appliance_state(service.config)

    service.recover()
    assert appliance_state(service.config) == after  # the new state stays
    rollback = service._restore_paths(run_id)["rollback"]
    assert db_rows(rollback / "internal.db") == old_rows
    assert (rollback / "PHASE").read_text() == "done\n"
    parent = service.config.appliance.database.parent
    assert not [p.name for p in parent.iterdir() if "restore-" in p.name]


def test_restore_as_root_keeps_setuid_setgid_and_sticky_bits(service: BackupService) -> None:
    """A 1777 folder that came back 0777 was world-writable without the sticky bit: anyone could delete in it.

    (tests/test_metadata.py: the other combinations, and a restore by another user, which keeps no
    setuid or setgid bit of an owner it could not give the file.)
    """
    firmware = service.config.appliance.firmware
    (firmware / "tool").write_text("#!/bin/sh\n")
    (firmware / "tool").chmod(0o6755)
    (firmware / "shared").mkdir()
    (firmware / "shared").chmod(0o1777)
    name = service.run_backup().name
    service.restore(name)
    assert (firmware / "tool").stat().st_mode & 0o7777 == 0o6755
    assert (firmware / "shared").stat().st_mode & 0o7777 == 0o1777
