"""The restore's extraction: it flushes to the disk while it runs, and a failure leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from backup import extract
from backup.config import load_config
from backup.demo import create_demo_appliance
from backup.errors import BackupError
from backup.service import BackupService
from tests.conftest import FAST_KDF, PASSPHRASE
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
