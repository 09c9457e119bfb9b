"""A configuration tree thousands of folders deep is backed up, verified and restored (issue 14, item 8).

A firmware tree about 1,100 folders deep failed the backup with RecursionError: the scan recursed
once per level. 5,000 levels of one-letter folders also make paths of 10,000 bytes, past PATH_MAX
(4,096), which no single system call takes: the scan walks with its own stack and one open
directory, and every path the backup reads or the restore writes is reached a piece at a time
(backup.fsutil.reach). The trees here are made and compared with *at() calls for the same reason
(os.walk of this Python recurses too).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from backup.fsutil import PATH_LIMIT, reach, remove_tree
from backup.payload import scan_directory
from backup.service import BackupService
from tests.common import FAST_KDF, run_cli

DEPTH = 5000
FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


@pytest.fixture(autouse=True)
def removed_afterwards(tmp_path: Path):
    """Each test's trees are removed here: pytest's own clean-up of old runs uses shutil.rmtree, which
    recurses and fails on them."""
    yield
    for child in tmp_path.iterdir():
        if child.is_dir() and not child.is_symlink():
            remove_tree(child)


def make_deep(root: Path, depth: int) -> None:
    """root/d/d/.../d, `depth` folders; a file every 1,000 levels, a file and a link at the bottom."""
    root.mkdir()
    fd = os.open(root, FLAGS)
    try:
        for level in range(1, depth + 1):
            os.mkdir("d", 0o750, dir_fd=fd)
            below = os.open("d", FLAGS, dir_fd=fd)
            os.close(fd)
            fd = below
            if level % 1000 == 0 or level == depth:
                file = os.open(f"level-{level}.conf", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd)
                os.write(file, f"depth = {level}\n".encode())
                os.close(file)
        os.symlink(f"level-{depth}.conf", "current", dir_fd=fd)
    finally:
        os.close(fd)


def digest(root: Path) -> dict[str, tuple]:
    """Every entry below `root` (kind, permission bits, content or link target), walked by descriptor."""
    out: dict[str, tuple] = {}
    pending = [(os.open(root, FLAGS), "")]
    while pending:
        fd, prefix = pending.pop()
        try:
            for name in sorted(os.listdir(fd)):
                rel = f"{prefix}/{name}" if prefix else name
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    out[rel] = ("link", os.readlink(name, dir_fd=fd))
                elif stat.S_ISDIR(st.st_mode):
                    out[rel] = ("dir", stat.S_IMODE(st.st_mode))
                    pending.append((os.open(name, FLAGS, dir_fd=fd), rel))
                else:
                    file = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
                    try:
                        content = os.read(file, 1 << 20)
                    finally:
                        os.close(file)
                    out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(content).hexdigest())
        finally:
            os.close(fd)
    return out


def test_the_scan_order_is_the_format_order(tmp_path):
    """Depth first, by name, a folder's content right after it (what every earlier backup holds)."""
    root = tmp_path / "fw"
    for d in ("a/c", "b", "a/b"):
        (root / d).mkdir(parents=True)
    for f in ("a/z.conf", "a/b/x", "a/a", "b.conf", "b/y", "a/c/w"):
        (root / f).write_text(f)
    (root / "a/link").symlink_to("z.conf")
    os.mkfifo(root / "a/b/fifo")
    scan = scan_directory("firmware", root)
    assert [e.arcname for e in scan.entries] == [
        "firmware", "firmware/a", "firmware/a/a", "firmware/a/b", "firmware/a/b/x", "firmware/a/c",
        "firmware/a/c/w", "firmware/a/link", "firmware/a/z.conf", "firmware/b", "firmware/b/y", "firmware/b.conf",
    ]
    assert scan.skipped == ["firmware/a/b/fifo"]
    assert [e.link for e in scan.entries if e.kind == "symlink"] == ["z.conf"]


def test_a_5000_level_tree_is_scanned(tmp_path):
    make_deep(tmp_path / "fw", DEPTH)
    scan = scan_directory("firmware", tmp_path / "fw")
    assert len(scan.entries) == 1 + DEPTH + DEPTH // 1000 + 1
    bottom = "firmware" + "/d" * DEPTH
    by_name = {e.arcname: e for e in scan.entries}
    assert by_name[f"{bottom}/current"].link == f"level-{DEPTH}.conf"
    assert by_name[f"{bottom}/level-{DEPTH}.conf"].size == len(f"depth = {DEPTH}\n")
    assert len(bottom) > 2 * DEPTH > PATH_LIMIT
    # Depth first: a folder's content right after it, so each level's file follows all that is below it.
    assert [e.arcname.rsplit("/", 1)[1] for e in scan.entries[-(DEPTH // 1000):]] == [
        f"level-{level}.conf" for level in range(DEPTH, 0, -1000)]


@pytest.mark.slow
def test_a_5000_level_firmware_tree_is_backed_up_verified_deeply_and_restored(service: BackupService):
    firmware = service.config.appliance.firmware
    make_deep(firmware / "deep", DEPTH)
    before = digest(firmware)
    name = service.run_backup().name
    assert service.verify(name, deep=True).files == service.verify(name).files
    remove_tree(firmware / "deep")
    assert not (firmware / "deep").exists()
    result = run_cli("restore", name, "--yes", config=service.config, timeout=300)
    assert result.returncode == 0, result.stderr
    assert digest(firmware) == before
    # Restoring again puts this deep state aside as the rollback copy.
    rollback = BackupService(service.config, kdf_params=FAST_KDF).restore(name).rollback_dir
    assert digest(firmware) == before == digest(rollback / "firmware")


@pytest.mark.slow
def test_remove_tree_removes_5000_levels_and_never_follows_a_link(tmp_path):
    make_deep(tmp_path / "fw", DEPTH)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("kept")
    with reach(str(tmp_path / "fw") + "/d" * DEPTH + "/out") as (dir_fd, name):
        assert dir_fd is not None  # the path is too long for one call
        os.symlink(outside, name, dir_fd=dir_fd)
    remove_tree(tmp_path / "fw")
    assert not (tmp_path / "fw").exists() and (outside / "keep").read_text() == "kept"
    remove_tree(tmp_path / "fw")  # already gone: nothing to do


def test_reading_a_backup_of_folders_only_stops_when_cancelled(service: BackupService):
    """Cancel is checked between members, not only when file content is read: a payload of
    thousands of folders (and links) has none for a long way."""
    import json
    import tarfile
    import threading

    from backup.errors import InterruptedRunError
    from tests.helpers import sealed_backup

    def member(name: str, kind: bytes, data: bytes = b"") -> tuple[tarfile.TarInfo, bytes]:
        info = tarfile.TarInfo(name)
        info.type, info.size = kind, len(data)
        return info, data

    manifest = json.dumps({"format": "appliance-backup manifest", "version": 1, "components": []}).encode()
    folders = [member("firmware" + "/d" * level, tarfile.DIRTYPE) for level in range(200)]
    name = sealed_backup(service, [member("manifest.json", tarfile.REGTYPE, manifest), *folders])
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(InterruptedRunError):
        service.verify(name, deep=True, cancel=cancel)
