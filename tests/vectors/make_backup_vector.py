"""Writes tests/vectors/backup-v2/: one whole backup file (both layers) of a tiny appliance.

Run from the repository root: `.venv/bin/python tests/vectors/make_backup_vector.py`.
Regenerate only when the format version changes, into a new folder; readers must keep
opening the committed files (tests/vectors/backup/ is what this script wrote for payload
version 1, before a name that is not UTF-8 and the nested folders were added). The file key is random, so the bytes differ each run;
`expected.json` holds what a reader must find inside.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from backup.archive import ScryptParams  # noqa: E402
from backup.config import load_config  # noqa: E402
from backup.service import BackupService  # noqa: E402

PASSPHRASE = "vector passphrase, not secret"
OUT = Path(__file__).resolve().parent / "backup-v2"
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def build(base: Path) -> Path:
    fw, system = base / "firmware", base / "system"
    (fw / "boot").mkdir(parents=True)
    (fw / "version.txt").write_text("firmware 7.4.2\n")
    (fw / "boot" / "params.conf").write_text("console=ttyS0,115200\nquiet\n")
    (fw / "boot-x").write_text("after boot/ and everything in it\n")
    (Path(os.fsdecode(bytes(fw) + b"/caf\xe9.conf"))).write_text("a name that is not UTF-8\n")
    (system / "network").mkdir(parents=True)
    (system / "network" / "interfaces.conf").write_text("eth0 = dhcp\n")
    (system / "cluster.json").write_text('{"nodes": ["a", "b", "c"], "quorum": 2}\n')
    (system / "current").symlink_to("network/interfaces.conf")
    (system / "empty.conf").write_bytes(b"")
    db = base / "internal.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE certificates (serial TEXT PRIMARY KEY, subject TEXT)")
    con.executemany("INSERT INTO certificates VALUES (?, ?)", [(f"{i:04x}", f"CN=host{i}") for i in range(50)])
    con.commit()
    con.close()
    (base / "backups").mkdir()
    config = base / "config.toml"
    config.write_text(
        f'[appliance]\nname = "vector-appliance"\nfirmware = "{fw}"\nsystem = "{system}"\ndatabase = "{db}"\n'
        f'[state]\ndir = "{base / "state"}"\n[storage]\ntype = "local"\npath = "{base / "backups"}"\n'
    )
    return config


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(build(Path(tmp)))
        service = BackupService(config, clock=lambda: CREATED, kdf_params=ScryptParams(log2_n=10))
        service.set_secret(PASSPHRASE)
        name = service.run_backup().name
        OUT.mkdir(exist_ok=True)
        for old in OUT.glob("*.abk"):
            old.unlink()
        (OUT / name).write_bytes((config.storage.path / name).read_bytes())
        files, binary = {}, {}
        for component, root in (("firmware", config.appliance.firmware), ("system", config.appliance.system)):
            for path in sorted(root.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    raw = os.fsencode(f"{component}/{path.relative_to(root)}")
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    try:
                        files[raw.decode("utf-8")] = digest
                    except UnicodeDecodeError:
                        binary[base64.b64encode(raw).decode()] = digest
        expected = {
            "file": name,
            "passphrase": PASSPHRASE,
            "appliance": "vector-appliance",
            "appliance_id": service.appliance_id(),
            "manifest_version": 2,
            "created_at": CREATED.isoformat(),
            "files": files,
            "files_base64": binary,
            "symlinks": {"system/current": "network/interfaces.conf"},
            "database_rows": {"certificates": 50},
        }
        (OUT / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
