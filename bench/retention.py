"""How long `prune --dry-run` takes over N backups, with and without the catalogue cache (state/backups.json).

Retention opens each backup (its header and first chunk, up to 1 MiB) to read its authenticated manifest;
the catalogue remembers what it found, keyed by name, size and mtime. This measures both, on a local
directory and on a real NFSv4 share (nfs-ganesha on loopback, userspace client), for backups big enough
that their first chunk is a whole 1 MiB.

    .venv/bin/python bench/retention.py [--backups 200] [--runs 3] [--no-nfs]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backup.archive import ScryptParams  # noqa: E402
from backup.config import load_config, update_config  # noqa: E402
from backup.demo import create_demo_appliance  # noqa: E402
from backup.service import BackupService  # noqa: E402


def _timed(service: BackupService, *, cold: bool) -> float:
    if cold:
        service.catalog.path.unlink(missing_ok=True)
    service.close()
    started = time.perf_counter()
    decisions = service.prune(dry_run=True)
    elapsed = time.perf_counter() - started
    assert len(decisions) >= 1
    return elapsed


def _fill(storage_dir: Path, original: Path, count: int, appliance: str) -> None:
    """`count` backups: hard links to one real backup, under names one day apart (each opened separately)."""
    start = datetime.now(timezone.utc) - timedelta(days=count)
    for i in range(count):
        name = f"{appliance}-{start + timedelta(days=i):%Y%m%dT%H%M%S}Z-{i:06x}.abk"
        os.link(original, storage_dir / name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backups", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-nfs", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-retention-"))
    try:
        config = load_config(create_demo_appliance(root / "appliance"))
        (config.appliance.firmware / "blob.bin").write_bytes(os.urandom(3 << 20))  # first chunk: a full 1 MiB
        service = BackupService(config, kdf_params=ScryptParams(log2_n=10, r=8, p=1))
        service.set_secret("bench passphrase, not a secret")
        config = update_config(config, {"retention": {"keep_last": 7, "keep_daily": 30, "keep_monthly": 12}})
        made = BackupService(config).run_backup().name
        original = root / "original.abk"
        os.rename(config.storage.path / made, original)
        size = original.stat().st_size
        places = [("local directory", config, config.storage.path)]
        server = None
        if not args.no_nfs:
            from tests.nfs_server import NfsServer

            server = NfsServer(root / "ganesha")
            server.start()
            share = server.export_dir / "backups"
            share.mkdir()
            nfs = update_config(config, {"storage": {"type": "nfs", "path": None, "url": server.url("backups"),
                                                     "version": "4.1"}})
            places.append(("NFSv4.1 (nfs-rs, loopback)", nfs, share))
        try:
            print(f"{args.backups} backups of {size / 2**20:.1f} MiB each; prune --dry-run, best of {args.runs}:")
            for label, place_config, directory in places:
                _fill(directory, original, args.backups, config.appliance.name)
                svc = BackupService(place_config)
                cold = min(_timed(svc, cold=True) for _ in range(args.runs))
                warm = min(_timed(svc, cold=False) for _ in range(args.runs))
                svc.close()
                print(f"  {label:28} without cache {cold:6.2f} s   with cache {warm:6.3f} s")
        finally:
            if server is not None:
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
