"""Verify: the default pass authenticates every chunk; `--deep` also checks every file.

The default pass is what makes verify run at storage speed (bench: 4 GB/s of
archive warm, against ~170 MB/s deep). These tests pin what each pass proves
and, as honestly, what the default pass does not: a payload that the writer
itself got wrong but sealed with the right key passes it and fails `--deep`.
"""

from __future__ import annotations

import json
import tarfile
import threading
from datetime import datetime, timezone

import pytest

from backup.errors import ExitCode, IntegrityError, InterruptedRunError
from backup.service import VERIFY_AUTHENTICATED, VERIFY_DEEP, BackupService
from tests.common import run_cli
from tests.helpers import sealed_backup
from widgets.backup_details import detail_rows


def _verify_runs(service: BackupService) -> list:
    return [r for r in service.journal.runs() if r.kind == "verify"]


def test_default_verify_authenticates_the_whole_file(service: BackupService) -> None:
    name = service.run_backup().name
    size = service.storage.stat(name).size
    seen = []
    result = service.verify(name, progress=seen.append)
    assert not result.deep
    assert result.bytes == size  # every byte of the file was read and authenticated
    assert result.files == sum(c["files"] for c in result.manifest["components"])
    assert seen and seen[-1].written == size
    assert _verify_runs(service)[-1].detail == VERIFY_AUTHENTICATED
    assert _verify_runs(service)[-1].result == "ok"


def test_deep_verify_checks_every_file(service: BackupService) -> None:
    name = service.run_backup().name
    result = service.verify(name, deep=True)
    assert result.deep and result.files > 10
    assert result.bytes == result.manifest["total_bytes"] or result.bytes > 0
    run = _verify_runs(service)[-1]
    assert (run.detail, run.result) == (VERIFY_DEEP, "ok")
    rows = dict(detail_rows(service.details(name), datetime.now(timezone.utc)))
    assert rows["Last verification"].endswith("intact, every file checked")


def test_cli_says_what_each_pass_proved(service: BackupService) -> None:
    name = service.run_backup().name
    quick = run_cli("verify", name, config=service.config)
    assert quick.returncode == 0, quick.stderr
    assert "authenticated, every chunk intact and in order" in quick.stdout
    deep = run_cli("verify", "--deep", name, config=service.config)
    assert deep.returncode == 0, deep.stderr
    assert "checked against their SHA-256" in deep.stdout


@pytest.mark.parametrize("where", ["first chunk", "middle", "last byte"])
def test_default_verify_finds_damage_anywhere(service: BackupService, where: str) -> None:
    name = service.run_backup().name
    path = service.config.storage.path / name
    data = bytearray(path.read_bytes())
    position = {"first chunk": 200, "middle": len(data) // 2, "last byte": len(data) - 1}[where]
    data[position] ^= 0x40
    path.write_bytes(data)
    r = run_cli("verify", name, config=service.config)
    assert r.returncode == ExitCode.INTEGRITY, r.stderr
    assert "Traceback" not in r.stderr
    assert _verify_runs(service)[-1].result == "failed"


def test_default_verify_finds_a_missing_tail(service: BackupService) -> None:
    name = service.run_backup().name
    path = service.config.storage.path / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(IntegrityError):
        service.verify(name)


def _sealed_with_bad_checksums(service: BackupService) -> str:
    """A backup sealed with this appliance's key whose checksum list does not match its files.

    Only a writer holding the DMS can make one: a bug in the writer, not damage in the storage.
    """
    members = []
    for member, data in (
        ("manifest.json", json.dumps({"format": "appliance-backup manifest", "version": 1,
                                      "components": [{"name": "firmware", "files": 1}]}).encode()),
        ("firmware", b""),
        ("firmware/version.txt", b"1.0\n"),
        ("checksums.json", json.dumps({"files": {"firmware/version.txt": "0" * 64}, "components": {}}).encode()),
    ):
        info = tarfile.TarInfo(member)
        info.size = len(data)
        if member == "firmware":  # P.4: a folder comes before what is in it
            info.type = tarfile.DIRTYPE
        members.append((info, data))
    return sealed_backup(service, members)


def test_only_deep_verify_catches_a_writer_that_sealed_wrong_checksums(service: BackupService) -> None:
    name = _sealed_with_bad_checksums(service)
    assert service.verify(name).files == 1  # authentic: the default pass cannot tell
    r = run_cli("verify", "--deep", name, config=service.config)
    assert r.returncode == ExitCode.INTEGRITY, r.stderr
    assert "do not match its checksums" in r.stderr


def test_default_verify_can_be_stopped(service: BackupService) -> None:
    name = service.run_backup().name
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(InterruptedRunError):
        service.verify(name, cancel=cancel)
    assert _verify_runs(service)[-1].result == "interrupted"
