"""Restored metadata: extended attributes and POSIX ACLs, setuid, setgid and sticky bits, the database's WAL mode.

Every test runs on the real filesystem under the test's tmp_path (ext4 here, as root: it takes user.*,
trusted.*, security.* and POSIX ACLs) and, where a refusal is the point, as an unprivileged user.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup import database
from backup.archive import ArchiveReader
from backup.cli import ExitCode
from backup.config import load_config
from backup.demo import create_demo_appliance
from backup.errors import IntegrityError
from backup.payload import (
    PayloadWriter,
    decompressed,
    member_xattrs,
    open_tar_stream,
    scan_directory,
    tar_header,
    xattr_records,
)
from backup.progress import Tracker
from backup.service import BackupService
from tests.common import BIN, FAST_KDF, PASSPHRASE
from tests.helpers import appliance_state, db_rows, mutate_appliance, sealed_backup

# Linux's POSIX ACL in its extended-attribute form (include/uapi/linux/posix_acl_xattr.h).
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
NO_ID = 0xFFFFFFFF


def acl(*entries: tuple[int, int, int]) -> bytes:
    """(tag, permissions, id) entries, in the kernel's order, as system.posix_acl_* holds them."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in entries)


ACCESS_ACL = acl((USER_OBJ, 7, NO_ID), (USER, 5, 1234), (GROUP_OBJ, 5, NO_ID), (GROUP, 7, 2345), (MASK, 7, NO_ID),
                 (OTHER, 0, NO_ID))
DEFAULT_ACL = acl((USER_OBJ, 7, NO_ID), (USER, 6, 1234), (GROUP_OBJ, 5, NO_ID), (MASK, 7, NO_ID), (OTHER, 0, NO_ID))
CAP_NET_BIND_SERVICE = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)
"""security.capability, revision 2, effective: cap_net_bind_service+ep (setcap's binary form)."""
BINARY_VALUE = b"\xff\x00\n12 key=value\n\x80"
"""Not UTF-8, with a NUL, newlines, a '=' and what looks like a pax record."""


def xattrs(path: Path) -> dict[str, bytes]:
    return {name: os.getxattr(path, name, follow_symlinks=False) for name in os.listxattr(path, follow_symlinks=False)}


def tree_xattrs(root: Path) -> dict[str, dict[str, bytes]]:
    """Every entry's extended attributes (ACLs included), the root's too."""
    found = {".": xattrs(root)}
    for path in sorted(root.rglob("*")):
        found[str(path.relative_to(root))] = xattrs(path)
    return found


def _dress_firmware(firmware: Path) -> None:
    """user.* (binary too, odd names), a file capability, trusted.*, an SELinux label, ACLs with a default ACL."""
    os.setxattr(firmware, "user.component", b"firmware")
    tool = firmware / "bin" / "bind-helper"
    tool.parent.mkdir()
    tool.write_bytes(b"\x7fELF not really\n")
    tool.chmod(0o755)
    os.setxattr(tool, "security.capability", CAP_NET_BIND_SERVICE)
    os.setxattr(tool, "user.binary", BINARY_VALUE)
    os.setxattr(tool, "user.a=b%41c", b"a name with '=' and '%'")
    os.setxattr(tool, "user.n\xe4me", "ünïcode value".encode())
    os.setxattr(tool, "trusted.overlay.origin", b"\x00\x01")
    os.setxattr(tool, "security.selinux", b"system_u:object_r:bin_t:s0\x00")
    shared = firmware / "shared"
    shared.mkdir()
    (shared / "before-the-default-acl.conf").write_text("no ACL of its own\n")
    os.setxattr(shared, "system.posix_acl_access", ACCESS_ACL)
    os.setxattr(shared, "system.posix_acl_default", DEFAULT_ACL)
    (shared / "inherits.conf").write_text("an ACL inherited from the folder's default ACL\n")
    (firmware / "big.bin").write_bytes(os.urandom(600 << 10))  # a large file: written by the restore's other thread
    os.setxattr(firmware / "big.bin", "user.large", b"yes")
    os.symlink("shared/inherits.conf", firmware / "link")
    os.setxattr(firmware / "link", "trusted.on-a-link", b"links take trusted.* and security.*", follow_symlinks=False)


def test_extended_attributes_and_acls_come_back(service: BackupService) -> None:
    firmware = service.config.appliance.firmware
    _dress_firmware(firmware)
    assert set(xattrs(firmware / "shared" / "inherits.conf")) == {"system.posix_acl_access"}
    assert xattrs(firmware / "shared" / "before-the-default-acl.conf") == {}
    before, state = tree_xattrs(firmware), appliance_state(service.config)

    name = service.run_backup().name
    assert service.verify(name, deep=True).files > 0
    os.removexattr(firmware / "bin" / "bind-helper", "user.binary")
    os.setxattr(firmware / "shared", "user.added-later", b"x")
    mutate_appliance(service.config)
    result = service.restore(name)

    assert tree_xattrs(firmware) == before
    assert appliance_state(service.config) == state  # the ACL's mask is the group bits: modes unchanged too
    assert result.warnings == []


def test_a_configured_folder_reached_through_a_link_keeps_its_own_attributes(service: BackupService) -> None:
    firmware = service.config.appliance.firmware
    real = firmware.parent / "real-firmware"
    os.rename(firmware, real)
    os.symlink(real.name, firmware)
    os.setxattr(real, "system.posix_acl_default", DEFAULT_ACL)
    os.setxattr(real, "user.component", b"the folder's, not the link's")
    before = xattrs(real)
    name = service.run_backup().name
    os.removexattr(real, "user.component")
    service.restore(name)
    assert firmware.is_symlink() and xattrs(real) == before


def test_entries_removed_after_the_scan_do_not_fail_the_backup(tmp_path: Path) -> None:
    """Reading attributes is the writer's first touch of a folder or link: one gone since the scan is no error."""
    root = tmp_path / "firmware"
    (root / "gone" / "inner").mkdir(parents=True)
    os.symlink("nowhere", root / "gone-link")
    (root / "kept").mkdir()
    os.setxattr(root / "kept", "user.x", b"1")
    scan = scan_directory("firmware", root)
    shutil.rmtree(root / "gone")
    (root / "gone-link").unlink()
    sink = io.BytesIO()
    writer = PayloadWriter(sink, Tracker("backup", None, None))
    for entry in scan.entries:
        writer.add_entry(entry)
    writer.close()
    members = {m.name: m for m in open_tar_stream(decompressed(io.BytesIO(sink.getvalue())))}
    assert member_xattrs(members["firmware/kept"]) == {b"user.x": b"1"}
    assert "firmware/gone/inner" in members and not members["firmware/gone"].pax_headers


def test_a_backup_without_attribute_records_restores_as_before(service: BackupService) -> None:
    """No pax records at all for a tree without extended attributes: the bytes older versions wrote."""
    name = service.run_backup().name
    with service._open(name) as source:
        tar = tarfile.open(fileobj=decompressed(ArchiveReader(source, kek=service.secret.kek())), mode="r:")
        assert not [m.name for m in tar if m.pax_headers]
    service.restore(name)
    assert tree_xattrs(service.config.appliance.firmware) == {".": {}, **{
        str(p.relative_to(service.config.appliance.firmware)): {} for p in service.config.appliance.firmware.rglob("*")}}


def test_gnu_tar_reads_the_attribute_records(service: BackupService, tmp_path: Path) -> None:
    """The records are GNU tar's and libarchive's SCHILY.xattr convention: tar --xattrs restores them unaided.

    (Not the ACLs: GNU tar takes those from its own SCHILY.acl.* text records only; docs/FORMAT.md P.6.)
    """
    firmware = service.config.appliance.firmware
    (firmware / "plain.conf").write_text("x\n")
    os.setxattr(firmware / "plain.conf", "user.note", "a UTF-8 note ✓".encode())
    os.setxattr(firmware / "plain.conf", "user.binary", BINARY_VALUE)
    os.setxattr(firmware / "plain.conf", "user.a=b%41c", b"escaped as GNU tar does")
    os.setxattr(firmware / "plain.conf", "security.capability", CAP_NET_BIND_SERVICE)
    name = service.run_backup().name
    with service._open(name) as source:
        payload = decompressed(ArchiveReader(source, kek=service.secret.kek())).read()
    out = tmp_path / "gnu"
    out.mkdir()
    done = subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-x", "-C", str(out)], input=payload,
                          capture_output=True)
    assert done.returncode == 0, done.stderr
    assert xattrs(out / "firmware" / "plain.conf") == xattrs(firmware / "plain.conf")


@pytest.mark.parametrize("mode", [0o4755, 0o2755, 0o6755, 0o1777, 0o3775], ids=oct)
def test_special_mode_bits_come_back_as_root(service: BackupService, mode: int) -> None:
    firmware = service.config.appliance.firmware
    (firmware / "tool").write_text("#!/bin/sh\n")
    os.chown(firmware / "tool", 1234, 2345)  # setuid and setgid of another user and group: chown clears them
    (firmware / "tool").chmod(mode)
    (firmware / "folder").mkdir()
    os.chown(firmware / "folder", 1234, 2345)
    (firmware / "folder").chmod(mode)
    name = service.run_backup().name
    (firmware / "tool").chmod(0o755)
    service.restore(name)
    assert (firmware / "tool").stat().st_mode & 0o7777 == mode
    assert (firmware / "folder").stat().st_mode & 0o7777 == mode
    assert ((firmware / "tool").stat().st_uid, (firmware / "tool").stat().st_gid) == (1234, 2345)


NOBODY = 65534


@pytest.fixture
def nobodys_appliance():
    """An appliance that an unprivileged user owns, in a folder that user can reach (pytest's is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="appliance-backup-nobody-"))
    base.chmod(0o755)
    try:
        path = create_demo_appliance(base / "appliance")
        text = path.read_text()
        assert "\n[operators]\n" in text
        path.write_text(text.replace("\n[operators]\n", '\n[operators]\nnobody = "oauth"\n'))  # who restores
        config = load_config(path)
        service = BackupService(config, kdf_params=FAST_KDF)
        service.set_secret(PASSPHRASE)
        yield service
    finally:
        shutil.rmtree(base)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, gid, follow_symlinks=False)


def test_an_unprivileged_restore_widens_nothing_and_names_what_it_could_not_set(nobodys_appliance) -> None:
    """As a user other than root: no setuid or setgid for another identity; refused attributes are named."""
    service = nobodys_appliance
    firmware = service.config.appliance.firmware
    (firmware / "root-tool").write_text("#!/bin/sh\n")
    (firmware / "own-tool").write_text("#!/bin/sh\n")
    (firmware / "shared").mkdir()
    (firmware / "capable").write_text("#!/bin/sh\n")
    _chown_tree(service.config.path.parent, NOBODY, NOBODY)
    os.setxattr(firmware / "capable", "security.capability", CAP_NET_BIND_SERVICE)  # after chown, which clears it
    os.setxattr(firmware / "capable", "trusted.root-only", b"1")
    os.setxattr(firmware / "capable", "user.anyone", b"kept")
    os.chown(firmware / "root-tool", 0, 0)
    (firmware / "root-tool").chmod(0o6755)  # root's: setuid root
    os.chown(firmware / "own-tool", NOBODY, NOBODY)
    (firmware / "own-tool").chmod(0o6755)  # the restoring user's own: setuid to itself widens nothing
    (firmware / "shared").chmod(0o1777)
    os.chown(service.config.path.parent, 0, 0)  # root's backup trusts a state and configuration only root can change
    os.chown(service.config.path, 0, 0)
    _chown_tree(service.config.state_dir, 0, 0)
    name = service.run_backup().name
    _chown_tree(service.config.path.parent, NOBODY, NOBODY)  # what the root backup left (journal, lock)

    done = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", str(BIN),
                           "--config", str(service.config.path), "restore", name, "--yes"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "APPLIANCE_BACKUP_DEBUG": ""})
    assert done.returncode == ExitCode.OK, done.stderr
    assert (firmware / "root-tool").stat().st_mode & 0o7777 == 0o755
    assert (firmware / "root-tool").stat().st_uid == NOBODY
    assert (firmware / "own-tool").stat().st_mode & 0o7777 == 0o6755
    assert (firmware / "shared").stat().st_mode & 0o7777 == 0o1777  # the sticky bit only narrows: always kept
    assert xattrs(firmware / "capable") == {"user.anyone": b"kept"}
    assert "firmware/capable" in done.stdout and "security.capability" in done.stdout
    assert "trusted.root-only" in done.stdout
    restore = [r for r in service.journal.runs() if r.kind == "restore"][-1]
    assert restore.result == "ok" and "firmware/capable" in restore.warning


# ------------------------------------------------------------ the database's journal mode


@pytest.mark.parametrize("read_while_backing_up", [False, True])
def test_a_wal_database_restored_where_none_existed_is_in_wal_mode(service: BackupService,
                                                                    read_while_backing_up: bool) -> None:
    live = service.config.appliance.database
    assert database.in_wal_mode(live)
    rows = db_rows(live)
    reader = None
    if read_while_backing_up:  # the file cannot be frozen: a snapshot copy is backed up
        reader = sqlite3.connect(live, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM sqlite_master").fetchone()
    try:
        name = service.run_backup().name
    finally:
        if reader is not None:
            reader.close()
    live.unlink()
    service.restore(name)
    assert database.in_wal_mode(live)
    assert db_rows(live) == rows
    assert not [p.name for p in live.parent.iterdir() if p.name.startswith(".") and "restore-" in p.name]
    # And with the appliance's services still holding it, the same backup is written into it as before.
    holder = sqlite3.connect(live)
    holder.execute("SELECT count(*) FROM sqlite_master").fetchone()
    try:
        service.restore(name)
    finally:
        holder.close()
    assert database.in_wal_mode(live) and db_rows(live) == rows


def test_a_rollback_journal_database_restored_where_none_existed_stays_so(service: BackupService) -> None:
    live = service.config.appliance.database
    con = sqlite3.connect(live)
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()
    name = service.run_backup().name
    live.unlink()
    service.restore(name)
    assert not database.in_wal_mode(live)
    manifest = service.details(name).manifest
    assert [c.get("journal_mode") for c in manifest["components"]] == [None, None, "rollback"]


# ------------------------------------------------------------ what a reader checks


def _digest_of_nothing() -> str:
    return hashlib.sha256(b"").hexdigest()


def _sealed_with_attributes(service: BackupService, pax: dict[str, str], *, kind=tarfile.DIRTYPE) -> str:
    """An authentic backup whose one folder (or file) carries `pax` records, checksums right."""
    members = []
    manifest = json.dumps({"format": "appliance-backup manifest", "version": 1, "components": []}).encode()
    info = tarfile.TarInfo("manifest.json")
    info.size = len(manifest)
    members.append((info, manifest))
    info = tarfile.TarInfo("firmware/")  # the component's folder comes first (FORMAT.md P.0, order)
    info.type = tarfile.DIRTYPE
    members.append((info, b""))
    info = tarfile.TarInfo("firmware/thing")
    info.type = kind
    info.pax_headers = pax
    members.append((info, b""))
    data = json.dumps({"files": {"firmware/thing": _digest_of_nothing()} if kind == tarfile.REGTYPE else {},
                       "components": {"firmware": hashlib.sha256(f"{_digest_of_nothing()}  firmware/thing\n".encode())
                                      .hexdigest() if kind == tarfile.REGTYPE else _digest_of_nothing(),
                                      "system": _digest_of_nothing(), "database": _digest_of_nothing()}}).encode()
    info = tarfile.TarInfo("checksums.json")
    info.size = len(data)
    members.append((info, data))
    return sealed_backup(service, members)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


@pytest.mark.parametrize("pax", [
    {"SCHILY.xattr.user.x": "1", "SCHILY.xattr.user.binary": _text(BINARY_VALUE),
     "SCHILY.xattr.user.a%3Db%2541c": "escaped name", "SCHILY.xattr.user.raw%FF": "a name that is not UTF-8",
     "SCHILY.xattr.trusted.t": "", "SCHILY.xattr.security.selinux": "system_u:object_r:etc_t:s0\0",
     "SCHILY.xattr.system.posix_acl_access": _text(ACCESS_ACL),
     "SCHILY.xattr.system.posix_acl_default": _text(DEFAULT_ACL)},
    {"SCHILY.xattr.user.x": "y" * 65536},
    {"comment": "pax records this reader does not know are ignored", "SCHILY.acl.access": "user::rwx"},
], ids=["every-namespace", "largest-value", "unknown-keys"])
def test_deep_verify_accepts_attribute_records(service: BackupService, pax: dict[str, str]) -> None:
    name = _sealed_with_attributes(service, pax)
    assert service.verify(name, deep=True).files == 0


@pytest.mark.parametrize(("pax", "kind"), [
    ({"SCHILY.xattr.user.": "an empty name"}, tarfile.DIRTYPE),
    ({"SCHILY.xattr.user": "no namespace separator"}, tarfile.DIRTYPE),
    ({"SCHILY.xattr.os2.x": "an unknown namespace"}, tarfile.DIRTYPE),
    ({"SCHILY.xattr.system.nfs4_acl": "a system attribute that is no POSIX ACL"}, tarfile.DIRTYPE),
    ({"SCHILY.xattr.user." + "n" * 251: "a name over 255 bytes"}, tarfile.DIRTYPE),
    ({"SCHILY.xattr.user.x": "y" * 65537}, tarfile.DIRTYPE),
    ({"SCHILY.xattr.system.posix_acl_access": _text(ACCESS_ACL[:-1])}, tarfile.DIRTYPE),
    ({"SCHILY.xattr.system.posix_acl_access": _text(b"\x01\0\0\0" + ACCESS_ACL[4:])}, tarfile.DIRTYPE),
    ({"SCHILY.xattr.system.posix_acl_access": _text(acl((USER_OBJ, 9, NO_ID)))}, tarfile.DIRTYPE),
    ({"SCHILY.xattr.system.posix_acl_access": _text(acl((0x40, 7, NO_ID)))}, tarfile.DIRTYPE),
    ({"SCHILY.xattr.system.posix_acl_default": _text(DEFAULT_ACL)}, tarfile.REGTYPE),
    ({"SCHILY.xattr.user.bad%zzescape": "x"}, tarfile.DIRTYPE),
], ids=["empty-name", "no-dot", "unknown-namespace", "other-system", "long-name", "long-value", "acl-cut",
        "acl-version", "acl-permissions", "acl-tag", "default-acl-on-a-file", "bad-escape"])
def test_deep_verify_and_restore_refuse_malformed_attribute_records(service: BackupService, pax, kind) -> None:
    name = _sealed_with_attributes(service, pax, kind=kind)
    before = appliance_state(service.config)
    with pytest.raises(IntegrityError, match="extended attribute"):
        service.verify(name, deep=True)
    with pytest.raises(IntegrityError, match="extended attribute"):
        service.restore(name)
    assert appliance_state(service.config) == before


@settings(max_examples=200, deadline=None)
@given(names=st.lists(st.binary(min_size=1, max_size=250).filter(lambda b: b"\0" not in b), min_size=1, max_size=4,
                      unique=True),
       values=st.lists(st.binary(max_size=300), min_size=4, max_size=4))
def test_any_name_and_value_survive_the_pax_records_byte_for_byte(names: list[bytes], values: list[bytes]) -> None:
    """Any attribute the kernel takes (a name of any bytes but NUL) is read, written and read back exactly."""
    expected = {b"user." + name: value for name, value in zip(names, values)}
    with tempfile.NamedTemporaryFile() as f:
        for name, value in expected.items():
            os.setxattr(f.name, name, value)
        info = tarfile.TarInfo("firmware/f")
        info.pax_headers = xattr_records(f.fileno())
    member = open_tar_stream(io.BytesIO(tar_header(info) + b"\0" * 1024)).next()
    assert member_xattrs(member) == expected


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE]),
       records=st.dictionaries(st.text(min_size=1, max_size=40).filter(lambda t: "=" not in t and "\0" not in t),
                               st.one_of(st.text(max_size=200), st.binary(max_size=200).map(_text)), max_size=5),
       size=st.integers(0, 1 << 33))
def test_the_fast_header_with_attribute_records_is_byte_for_byte_tarfiles(kind: bytes, records: dict[str, str],
                                                                        size: int) -> None:
    info = tarfile.TarInfo("system/some/file.conf")
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, 0o4755, 1234, 2345, 1_700_000_000
    info.size = size if kind == tarfile.REGTYPE else 0
    info.linkname = "target" if kind == tarfile.SYMTYPE else ""
    info.pax_headers = {"SCHILY.xattr.user." + name: value for name, value in records.items()}
    assert tar_header(info) == info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")
