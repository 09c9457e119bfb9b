"""The committed whole-backup vectors still open: what each payload version wrote stays readable.

tests/vectors/backup/ is payload version 1, tests/vectors/backup-v2/ version 2 (a name that is
not UTF-8, the manifest's identity fields); both verify deeply and restore on another appliance.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from backup.config import Config
from backup.service import BackupService
from tests.common import FAST_KDF

VECTORS = Path(__file__).parent / "vectors"


@pytest.mark.parametrize("folder", ["backup", "backup-v2"])
def test_the_backup_vector_verifies_and_restores_on_another_appliance(appliance: Config, folder: str) -> None:
    vector = VECTORS / folder
    expected = json.loads((vector / "expected.json").read_text())
    wanted = {name.encode(): digest for name, digest in expected["files"].items()}
    wanted |= {base64.b64decode(name): digest for name, digest in expected.get("files_base64", {}).items()}
    shutil.copy(vector / expected["file"], appliance.storage.path / expected["file"])
    service = BackupService(appliance, kdf_params=FAST_KDF)
    service.set_secret("this appliance's own secret")

    details = service.details(expected["file"], passphrase=expected["passphrase"])
    assert not details.opens_with_this_dms
    assert details.manifest["appliance"] == expected["appliance"]
    assert details.manifest["created_at"] == expected["created_at"]
    assert details.manifest["version"] == expected.get("manifest_version", 1)
    assert [c["name"] for c in details.manifest["components"]] == ["firmware", "system", "database"]
    assert details.facts.created_at.isoformat() == expected["created_at"]
    assert details.facts.appliance_id == expected.get("appliance_id", "")
    assert details.foreign == ("appliance_id" in expected)  # a version 1 backup names no identity
    assert not details.renamed

    result = service.verify(expected["file"], passphrase=expected["passphrase"], deep=True)
    assert result.files == len(wanted) + 1  # and the database

    service.restore(expected["file"], passphrase=expected["passphrase"])
    a = appliance.appliance
    found = {}
    for component, root in (("firmware", a.firmware), ("system", a.system)):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                found[os.fsencode(f"{component}/{path.relative_to(root)}")] = hashlib.sha256(path.read_bytes()).hexdigest()
    assert found == wanted
    for link, target in expected["symlinks"].items():
        component, rest = link.split("/", 1)
        assert os.readlink(getattr(a, component) / rest) == target
    con = sqlite3.connect(a.database)
    for table, count in expected["database_rows"].items():
        assert con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == count
    con.close()
