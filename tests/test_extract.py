"""The restore's extraction flushes to the disk while it runs, and leaves no thread behind."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from backup import extract
from backup.service import BackupService


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
