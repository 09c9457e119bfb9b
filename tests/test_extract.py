"""The restore's extraction: it flushes to the disk while it runs, and a failure leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from backup import extract, fsutil
from backup.config import load_config
from backup.demo import create_demo_appliance
from backup.errors import BackupError
from backup.service import BackupService
from tests.common import FAST_KDF, PASSPHRASE
from tests.helpers import appliance_state


def _flush_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "restore-flush"]


def test_the_flusher_syncs_until_stopped_and_outlives_a_vanished_path(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    real = extract.sync_filesystem

    def recording(path: Path) -> None:
        synced.append(path)
        real(path)  # the real syncfs: only the call is recorded

    monkeypatch.setattr(extract, "sync_filesystem", recording)
    monkeypatch.setattr(extract, "FLUSH_INTERVAL_S", 0.01)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    flusher = extract._Flusher([a, b])  # one filesystem: synced through one path
    deadline = time.monotonic() + 10
    while len(synced) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(synced) >= 3
    [path] = set(synced)
    path.rmdir()  # its sync now fails; the flusher goes on
    count = len(synced)
    while len(synced) < count + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(synced) >= count + 2
    flusher.stop()
    assert not _flush_threads()
    count = len(synced)
    time.sleep(0.05)
    assert len(synced) == count


def test_a_restore_leaves_no_flusher_running(service: BackupService) -> None:
    name = service.run_backup().name
    service.restore(name)
    assert not _flush_threads()


def test_a_restored_large_file_is_handed_to_the_disk_as_it_is_written(service: BackupService,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Like a backup (see test_storage_local.TestWriteBack): every step starts writeback, the step before leaves the cache."""
    step = 1 << 20
    big = service.config.appliance.firmware / "image.bin"
    data = os.urandom(5 * step + 12_345)
    big.write_bytes(data)
    name = service.run_backup().name
    monkeypatch.setattr(fsutil, "WRITEBACK_STEP", step)
    advised: list[tuple[str, int, int, int]] = []
    real = os.posix_fadvise

    def recording(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append((os.readlink(f"/proc/self/fd/{fd}"), offset, length, advice))
        real(fd, offset, length, advice)  # the real call: only its arguments are recorded

    monkeypatch.setattr(fsutil.os, "posix_fadvise", recording)
    service.restore(name)
    assert [(o, n, a) for path, o, n, a in advised if path.endswith("/image.bin")] == [
        (0, step, os.POSIX_FADV_DONTNEED), (0, 2 * step, os.POSIX_FADV_DONTNEED),
        (step, 2 * step, os.POSIX_FADV_DONTNEED), (2 * step, 2 * step, os.POSIX_FADV_DONTNEED),
        (3 * step, 2 * step, os.POSIX_FADV_DONTNEED)]
    assert big.read_bytes() == data


def test_a_restore_onto_a_full_disk_changes_nothing_and_leaves_no_file_open(tmp_path: Path) -> None:
    """The large file's write fails on the writer thread; the sentence reaches the caller, nothing is left."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", str(mount)], check=True)
    try:
        config = load_config(create_demo_appliance(mount / "appliance"))
        big = config.appliance.system / "firmware-image.bin"
        big.write_bytes(os.urandom(6 << 20))  # above SMALL_FILE: written by the large-file writer
        service = BackupService(config, kdf_params=FAST_KDF)
        service.set_secret(PASSPHRASE)
        name = service.run_backup().name
        before = appliance_state(config)
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        (mount / "filler").write_bytes(b"\0" * (free - (2 << 20)))  # 2 MiB left: the 6 MiB file cannot be staged
        fds = sorted(os.listdir("/proc/self/fd"))
        with pytest.raises(BackupError, match="The appliance.s disk is full .*Nothing was changed"):
            service.restore(name)
        assert sorted(os.listdir("/proc/self/fd")) == fds
        assert not _flush_threads()
        assert appliance_state(config) == before
        assert not [p.name for p in config.appliance.system.parent.iterdir() if ".restore-" in p.name]
        (mount / "filler").unlink()
        service.restore(name)  # with room again it goes through
        assert appliance_state(config) == before
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
