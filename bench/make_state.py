#!/usr/bin/env python3
"""Provides a seeded generator of a large appliance state for the benchmarks.

    python bench/make_state.py OUT_DIR [--size-mib 1024] [--seed 1]

creates

    OUT_DIR/appliance/firmware/    firmware configuration
    OUT_DIR/appliance/system/      system configuration
    OUT_DIR/appliance/internal.db  the internal SQLite database (WAL mode)
    OUT_DIR/appliance/backups/     empty local storage
    OUT_DIR/appliance/state/       empty, mode 0700
    OUT_DIR/config.toml            the appliance config (same keys as the demo's)
    OUT_DIR/make_state.json        what was made, written last (marks completion)

Proportions, as in the performance issue: about 70 % SQLite database
(certificates with PEM blobs and an audit log: text and base64, moderately
compressible), about 5,000 small configuration files, and about 24 %
incompressible files (archived logs, firmware images, CRL caches). Above
2 GiB the database and configuration stop growing and the rest is large
incompressible files, so a 10 GiB state still generates quickly.

Everything comes from the seed: the same size and seed give the same files
and the same database rows. The shapes (tables, row generators, the base
configuration trees) are the demo appliance's, from `backup.demo`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backup.demo import (  # noqa: E402  (the repository root is put on the path first)
    create_indexes,
    create_schema,
    iter_audit_rows,
    iter_certificate_rows,
    iter_key_rows,
    iter_operator_rows,
    settings_rows,
    write_appliance_config,
    write_firmware_tree,
    write_system_tree,
)

MiB = 1 << 20
GENERATOR_VERSION = 1
"""Bumped whenever the output for a given size and seed changes, so stale states get rebuilt."""

DATABASE_SHARE = 0.70
CONFIG_SHARE = 0.06
CONFIG_FILES = 5000
FULL_SCALE_LIMIT_MIB = 2048
"""Above this size only the incompressible files grow."""

# Bytes one row takes in the database file, table and indexes together
# (measured on this generator); used to size the row counts up front.
CERTIFICATE_ROW_BYTES = 2150
AUDIT_ROW_BYTES = 330
CERTIFICATE_SHARE = 0.65
"""Share of the database's bytes in the certificates table; the audit log has the rest."""
BATCH_ROWS = 20_000
CHUNK = 1 * MiB


@dataclass
class StateSummary:
    """What `make_state` made: written to OUT_DIR/make_state.json."""

    size_mib: int
    seed: int
    generator_version: int = GENERATOR_VERSION
    config: str = ""
    appliance: str = ""
    database_bytes: int = 0
    certificates: int = 0
    audit_events: int = 0
    config_files: int = 0
    config_bytes: int = 0
    incompressible_files: int = 0
    incompressible_bytes: int = 0
    total_bytes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def make_state(out_dir: Path, *, size_mib: int = 1024, seed: int = 1, log: Callable[[str], None] = print) -> StateSummary:
    """Generate the appliance state in `out_dir` (which must be missing or empty)."""
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SystemExit(f"make_state: {out_dir} is not empty; remove it or pick another directory.")
    if size_mib < 16:
        raise SystemExit("make_state: --size-mib must be at least 16.")
    started = time.perf_counter()
    summary = StateSummary(size_mib=size_mib, seed=seed)
    appliance = out_dir / "appliance"
    firmware, system, database = appliance / "firmware", appliance / "system", appliance / "internal.db"
    appliance.mkdir(parents=True)

    total = size_mib * MiB
    scaled = min(size_mib, FULL_SCALE_LIMIT_MIB) * MiB
    database_target = int(scaled * DATABASE_SHARE)
    config_target = int(scaled * CONFIG_SHARE)

    t = time.perf_counter()
    base = random.Random(f"{seed}:base")
    write_firmware_tree(firmware, base)
    write_system_tree(system, base)
    files, size = write_bulk_config(appliance, random.Random(f"{seed}:config"), CONFIG_FILES, config_target)
    base_files = [p for root in (firmware, system) for p in root.rglob("*") if p.is_file()]
    summary.config_files = len(base_files)
    summary.config_bytes = sum(p.stat().st_size for p in base_files)
    summary.seconds["config"] = time.perf_counter() - t
    log(f"  configuration: {summary.config_files:,} files, {summary.config_bytes / MiB:,.1f} MiB "
        f"in {summary.seconds['config']:.1f} s")

    t = time.perf_counter()
    summary.certificates, summary.audit_events = write_database(database, random.Random(f"{seed}:database"), database_target)
    summary.database_bytes = database.stat().st_size
    summary.seconds["database"] = time.perf_counter() - t
    log(f"  database: {summary.database_bytes / MiB:,.1f} MiB, {summary.certificates:,} certificates, "
        f"{summary.audit_events:,} audit events in {summary.seconds['database']:.1f} s")

    t = time.perf_counter()
    blobs_target = max(0, total - summary.database_bytes - summary.config_bytes)
    summary.incompressible_files, summary.incompressible_bytes = write_incompressible(
        appliance, random.Random(f"{seed}:blobs"), blobs_target
    )
    summary.seconds["incompressible"] = time.perf_counter() - t
    log(f"  incompressible: {summary.incompressible_files:,} files, {summary.incompressible_bytes / MiB:,.1f} MiB "
        f"in {summary.seconds['incompressible']:.1f} s")

    (appliance / "backups").mkdir()
    (appliance / "state").mkdir()
    (appliance / "state").chmod(0o700)
    config = out_dir / "config.toml"
    write_appliance_config(
        config,
        name="bench-appliance",
        firmware=firmware,
        system=system,
        database=database,
        state_dir=appliance / "state",
        storage_dir=appliance / "backups",
    )
    summary.config = str(config)
    summary.appliance = str(appliance)
    summary.total_bytes = summary.database_bytes + summary.config_bytes + summary.incompressible_bytes

    t = time.perf_counter()
    os.sync()
    summary.seconds["sync"] = time.perf_counter() - t
    summary.seconds["total"] = time.perf_counter() - started
    # Written last: its presence says the state is complete.
    (out_dir / "make_state.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------
# Database


def write_database(path: Path, rng: random.Random, target_bytes: int) -> tuple[int, int]:
    """Fill the internal database to about `target_bytes`; returns (certificates, audit events)."""
    certificates = max(100, int(target_bytes * CERTIFICATE_SHARE / CERTIFICATE_ROW_BYTES))
    audit_events = max(100, int(target_bytes * (1 - CERTIFICATE_SHARE) / AUDIT_ROW_BYTES))
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        # Bulk load: no rollback journal and no fsync while generating. The
        # file is fsynced and switched to WAL mode, as the service runs it, at the end.
        connection.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-262144; "
            "PRAGMA temp_store=MEMORY; PRAGMA locking_mode=EXCLUSIVE;"
        )
        create_schema(connection)
        connection.execute("BEGIN")
        operators = list(iter_operator_rows(rng, 40))
        connection.executemany("INSERT INTO operators VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", operators)
        connection.executemany(
            "INSERT INTO keys_metadata VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", iter_key_rows(rng, 400)
        )
        connection.executemany("INSERT INTO settings VALUES (?, ?, ?)", settings_rows(rng))
        usernames = [row[1] for row in operators]
        certificate_rows = iter_certificate_rows(random.Random(rng.getrandbits(64)), certificates, keys=400, operators=usernames)
        audit_rows = iter_audit_rows(random.Random(rng.getrandbits(64)), audit_events, operators=usernames)
        # Interleaved, as a running service writes both tables.
        certificate_batch = max(1, BATCH_ROWS * certificates // (certificates + audit_events))
        audit_batch = max(1, BATCH_ROWS - certificate_batch)
        done_certificates = done_audit = 0
        while done_certificates < certificates or done_audit < audit_events:
            chunk = _take(certificate_rows, certificate_batch)
            connection.executemany("INSERT INTO certificates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", chunk)
            done_certificates += len(chunk)
            chunk = _take(audit_rows, audit_batch)
            connection.executemany("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)", chunk)
            done_audit += len(chunk)
        connection.execute("COMMIT")
        create_indexes(connection)
        connection.execute("PRAGMA locking_mode=NORMAL")
        connection.execute("PRAGMA synchronous=FULL")
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise SystemExit(f"make_state: could not switch {path} to WAL mode (got {mode!r}).")
    finally:
        connection.close()
    return done_certificates, done_audit


def _take(rows: Iterator[tuple], count: int) -> list[tuple]:
    return [row for _, row in zip(range(count), rows)]


# --------------------------------------------------------------------------
# Configuration files


def _line_endpoint(rng: random.Random, i: int) -> str:
    return (
        f"  - host: {_host(rng)}\n    port: {rng.choice((443, 8443, 636, 1812, 5432))}\n"
        f"    tls: {rng.choice(('true', 'true', 'false'))}\n    timeout_s: {rng.randrange(1, 60)}\n"
    )


def _line_acl(rng: random.Random, i: int) -> str:
    return (
        f"{rng.choice(('allow', 'allow', 'deny'))} {_ip(rng)}/{rng.choice((32, 28, 24))} "
        f"{rng.choice(('certificate.issue', 'certificate.revoke', 'ocsp', 'crl', 'est.enroll'))}"
        f"  # ticket CHG-{rng.randrange(10000, 99999)}\n"
    )


def _line_ini(rng: random.Random, i: int) -> str:
    key = rng.choice(("timeout_s", "retries", "max_connections", "queue_depth", "log_level", "cache_ttl_s"))
    value = rng.choice(("info", "debug", "warning")) if key == "log_level" else str(rng.randrange(1, 10000))
    section = f"[worker.{rng.randrange(64)}]\n" if rng.random() < 0.15 else ""
    return f"{section}{key} = {value}\n"


def _line_operator(rng: random.Random, i: int) -> str:
    return (
        f'    {{"at": "2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T'
        f'{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z", "from": "{_ip(rng)}", '
        f'"client": "{rng.choice(("console", "api", "ssh"))}", "result": "{rng.choice(("ok", "ok", "ok", "denied"))}"}},\n'
    )


def _line_profile(rng: random.Random, i: int) -> str:
    return (
        f"    - oid: 1.3.6.1.4.1.{rng.randrange(1000, 60000)}.{rng.randrange(1, 20)}.{rng.randrange(1, 200)}\n"
        f"      critical: {rng.choice(('true', 'false'))}\n"
        f"      value: \"{rng.choice(('serverAuth', 'clientAuth', 'codeSigning', 'emailProtection', 'OCSPSigning'))}\"\n"
    )


def _line_rule(rng: random.Random, i: int) -> str:
    return (
        f"-A INPUT -p {rng.choice(('tcp', 'udp'))} -s {_ip(rng)}/{rng.choice((32, 24))} "
        f"--dport {rng.choice((22, 80, 443, 636, 1792, 7400, 8443))} -m comment --comment \"{_host(rng)}\" -j ACCEPT\n"
    )


def _line_agent(rng: random.Random, i: int) -> str:
    return f"{rng.choice(('probe', 'check', 'collect'))}.{rng.randrange(500)} = {_host(rng)}:{rng.randrange(1024, 65535)} every {rng.choice((10, 30, 60, 300))}s\n"


_CONFIG_KINDS: tuple[tuple[Callable[[int], str], str, Callable[[random.Random, int], str]], ...] = (
    (lambda i: f"system/tenants/tenant-{i // 60:03d}/endpoints-{i:05d}.yaml", "endpoints:\n", _line_endpoint),
    (lambda i: f"system/tenants/tenant-{i // 60:03d}/acl-{i:05d}.conf", "# access control list\n", _line_acl),
    (lambda i: f"system/tenants/tenant-{i // 60:03d}/service-{i:05d}.ini", "[service]\n", _line_ini),
    (lambda i: f"system/users/operators/op-{i:05d}.json", '{\n  "logins": [\n', _line_operator),
    (lambda i: f"system/pki/profiles/custom/profile-{i:05d}.yaml", "profile:\n  extensions:\n", _line_profile),
    (lambda i: f"system/network/firewall/rules.d/{i:05d}.rules", "*filter\n", _line_rule),
    (lambda i: f"system/cluster/nodes/node-{i % 16:02d}/agent-{i:05d}.conf", "# monitoring agent\n", _line_agent),
    (lambda i: f"firmware/modules/conf.d/{i:05d}.conf" if i % 10 == 7 else f"system/services/conf.d/{i:05d}.conf",
     "# module options\n", _line_ini),
)


def write_bulk_config(root: Path, rng: random.Random, count: int, total_bytes: int) -> tuple[int, int]:
    """Write `count` small configuration files of about `total_bytes` together."""
    average = max(128, total_bytes // max(count, 1))
    written = 0
    made: set[Path] = set()
    for i in range(count):
        path_of, header, line = _CONFIG_KINDS[i % len(_CONFIG_KINDS)]
        path = root / path_of(i)
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        target = int(average * (0.25 + 1.5 * rng.random()))
        parts = [header]
        size = len(header)
        while size < target:
            text = line(rng, i)
            parts.append(text)
            size += len(text)
        data = "".join(parts).encode()
        path.write_bytes(data)
        written += len(data)
    return count, written


def _host(rng: random.Random) -> str:
    return f"{rng.choice(('web', 'api', 'db', 'edge', 'gw', 'ldap', 'sso', 'node'))}-{rng.randrange(1000):03d}.corp.example.com"


def _ip(rng: random.Random) -> str:
    bits = rng.getrandbits(24)
    return f"10.{bits >> 16}.{(bits >> 8) & 255}.{(bits & 255) % 254 + 1}"


# --------------------------------------------------------------------------
# Incompressible files


_BLOB_PLACES = (
    "system/archive/audit-{n:04d}.log.zst",
    "system/crl-cache/issuing-{n:04d}.crl",
    "firmware/images/fpga-bitstream-{n:04d}.bin",
    "system/archive/metrics-{n:04d}.tar.zst",
    "system/ocsp-cache/responses-{n:04d}.der",
)


def write_incompressible(root: Path, rng: random.Random, total_bytes: int) -> tuple[int, int]:
    """Write files of seeded random bytes, `total_bytes` together; returns (files, bytes)."""
    # A 1 GiB state gets a few dozen files of a few MiB; a 10 GiB state files of up to 256 MiB.
    typical = min(256 * MiB, max(1 * MiB, total_bytes // 32))
    files = written = 0
    while written < total_bytes:
        size = min(total_bytes - written, int(typical * (0.5 + rng.random())))
        path = root / _BLOB_PLACES[files % len(_BLOB_PLACES)].format(n=files)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            left = size
            while left:
                block = rng.randbytes(min(CHUNK, left))
                out.write(block)
                left -= len(block)
        files += 1
        written += size
    return files, written


# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate a seeded appliance state for the benchmarks.")
    parser.add_argument("out_dir", type=Path, help="where to create appliance/ and config.toml (missing or empty)")
    parser.add_argument("--size-mib", type=int, default=1024, help="total size of the state (default 1024)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every generated byte (default 1)")
    parser.add_argument("--force", action="store_true", help="remove OUT_DIR first if it exists")
    args = parser.parse_args(argv)
    if args.force and args.out_dir.exists():
        shutil.rmtree(args.out_dir)
    print(f"make_state: {args.size_mib} MiB, seed {args.seed} -> {args.out_dir.absolute()}")
    summary = make_state(args.out_dir, size_mib=args.size_mib, seed=args.seed)
    print(
        f"make_state: {summary.total_bytes / MiB:,.1f} MiB in {summary.seconds['total']:.1f} s "
        f"(sync {summary.seconds['sync']:.1f} s); config {summary.config}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
