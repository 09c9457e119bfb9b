"""The committed whole-backup vector still opens: what format version 1 wrote stays readable."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

from backup.config import Config
from backup.service import BackupService
from tests.conftest import FAST_KDF

VECTOR = Path(__file__).parent / "vectors" / "backup"
EXPECTED = json.loads((VECTOR / "expected.json").read_text())


def test_the_backup_vector_verifies_and_restores_on_another_appliance(appliance: Config) -> None:
    shutil.copy(VECTOR / EXPECTED["file"], appliance.storage.path / EXPECTED["file"])
    service = BackupService(appliance, kdf_params=FAST_KDF)
    service.set_secret("this appliance's own secret")

    details = service.details(EXPECTED["file"], passphrase=EXPECTED["passphrase"])
    assert not details.opens_with_this_dms
    assert details.manifest["appliance"] == EXPECTED["appliance"]
    assert details.manifest["created_at"] == EXPECTED["created_at"]
    assert [c["name"] for c in details.manifest["components"]] == ["firmware", "system", "database"]

    result = service.verify(EXPECTED["file"], passphrase=EXPECTED["passphrase"])
    assert result.files == len(EXPECTED["files"]) + 1  # and the database

    service.restore(EXPECTED["file"], passphrase=EXPECTED["passphrase"])
    a = appliance.appliance
    found = {}
    for component, root in (("firmware", a.firmware), ("system", a.system)):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                found[f"{component}/{path.relative_to(root)}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    assert found == EXPECTED["files"]
    for link, target in EXPECTED["symlinks"].items():
        component, rest = link.split("/", 1)
        assert os.readlink(getattr(a, component) / rest) == target
    con = sqlite3.connect(a.database)
    for table, count in EXPECTED["database_rows"].items():
        assert con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == count
    con.close()
