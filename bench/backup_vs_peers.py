#!/usr/bin/env python3
"""Provides the backup/restore benchmark: appliance-backup against tar | zstd -3 -T0 | age.

    python bench/backup_vs_peers.py [--size-mib 1024] [--seed 1] [--runs 3] [--quick]

Generates a seeded appliance state once (bench/make_state.py, into
bench/out/state-<size>m-seed<seed>/, reused while its content is unchanged),
then measures, alternating between the two and `--runs` times each:

- ours: `appliance-backup --config CFG run`, then
  `appliance-backup --config CFG restore NAME --yes` (restores in place, timed
  as the operator would run it; the appliance opens its own backups with the
  key it keeps, as age opens the peer's with its identity file: no KDF on
  either side; `--passphrase-file`, for another appliance's backup, adds
  scrypt's 0.9 s here);
- peer: `tar -C APPLIANCE -cf - firmware system internal.db | zstd -3 -T0 -q -c
  | age -e -r RECIPIENT > FILE`, then `age -d -i KEY FILE | zstd -d -q -c |
  tar -xf -` into a fresh directory (as shared/perf/peers.sh does).

Every step starts with a warm page cache (the inputs are read first) and a
`sync`, and its time includes a final `sync`, so every output is on disk
(peers.sh with PEERS_SYNC=1; here restores are synced too, as ours fsyncs).
Peak RSS comes from GNU time (`/usr/bin/time`). After each restore the
result is checked against the generated state (untimed).

What a run replaced (our rollback copy, the peer's restored tree) is moved
aside and deleted only when the bench ends. On an ext4 without a journal (this
machine's root) the kernel will not reuse an inode freed in the last 5 s (300 s
while its inode-table block is dirty) and every file creation scans past such
inodes: right after 5,000 files were deleted, a create cost about 0.5 ms
instead of 0.03 ms, on whichever side came next (perf: `recently_deleted`
was 8% of a restore's CPU). Deleting at the end keeps that out of both
sides' times.

Prints a table of medians and writes everything to bench/out/results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import secrets
import shutil
import signal
import sqlite3
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import make_state  # noqa: E402  (bench/ is put on the path first)

MiB = 1 << 20
QUICK_SIZE_MIB = 64
COMPONENTS = ("firmware", "system", "internal.db")
"""What a backup holds, relative to the appliance directory (both sides back up exactly these)."""
STEP_TIMEOUT_S = 3600
# Debian packages providing each command the benchmark drives.
TOOLS = {"tar": "tar", "zstd": "zstd", "age": "age", "age-keygen": "age", "/usr/bin/time": "time"}


class BenchError(Exception):
    """A step failed; the message says which and why."""


@dataclass
class Measurement:
    """One timed step of one run."""

    tool: str
    step: str
    run: int
    seconds: float
    peak_rss_kib: int
    archive_bytes: int
    input_bytes: int
    verified: bool | None = None


# --------------------------------------------------------------------------
# Set-up


def ensure_tools() -> None:
    """Install the Debian packages of any missing tool (as root), else explain what to install."""
    missing = sorted({pkg for cmd, pkg in TOOLS.items() if shutil.which(cmd) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise BenchError(f"Missing tools; install them first: sudo apt-get install -y {' '.join(missing)}")
    print(f"installing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", *missing]
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=True)


def find_appliance_backup() -> str:
    """The `appliance-backup` beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "appliance-backup"
    if beside.exists():
        return str(beside)
    found = shutil.which("appliance-backup")
    if found is None:
        raise BenchError(
            "appliance-backup is not installed: run `make venv` (or pip install -e .) and use the venv's python."
        )
    return found


def prepare_state(out: Path, size_mib: int, seed: int) -> tuple[Path, dict, str]:
    """Reuse the generated state if complete and unchanged, else (re)generate it.

    Returns the state directory, make_state's summary and the state's digest.
    """
    state_dir = out / f"state-{size_mib}m-seed{seed}"
    summary_file = state_dir / "make_state.json"
    digest_file = state_dir / "digest.txt"
    if summary_file.exists() and digest_file.exists():
        summary = json.loads(summary_file.read_text())
        expected = digest_file.read_text().strip()
        if summary.get("generator_version") == make_state.GENERATOR_VERSION:
            t = time.perf_counter()
            actual = state_digest(Path(summary["appliance"]))
            if actual == expected:
                print(f"state: reusing {state_dir} (checked in {time.perf_counter() - t:.1f} s)")
                return state_dir, summary, expected
            print(f"state: {state_dir} changed since it was generated; generating it again")
    if state_dir.exists():
        shutil.rmtree(state_dir)
    print(f"state: generating {size_mib} MiB (seed {seed}) in {state_dir}")
    result = make_state.make_state(state_dir, size_mib=size_mib, seed=seed, log=print)
    print(f"state: {result.total_bytes / MiB:,.1f} MiB in {result.seconds['total']:.1f} s")
    digest = state_digest(Path(result.appliance))
    digest_file.write_text(digest + "\n")
    return state_dir, asdict(result), digest


def state_digest(root: Path) -> str:
    """sha256 of the components under `root`: file trees by content, the database by its rows.

    The database is compared logically (row counts and content sums), since a
    restore may legitimately write an equivalent file with other page bytes.
    """
    digest = hashlib.sha256()
    for component in ("firmware", "system"):
        base = root / component
        if not base.is_dir():
            return f"missing {component}"
        for path in sorted(base.rglob("*")):
            relative = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            digest.update(f"{relative}\0{mode:o}\0".encode())
            if stat.S_ISREG(mode):  # a directory's st_size depends on its history, not its content
                with path.open("rb") as f:
                    digest.update(hashlib.file_digest(f, "sha256").digest())
    database = root / "internal.db"
    if not database.is_file():
        return "missing internal.db"
    # A plain connection, not mode=ro: a read-only one cannot remove the -wal
    # and -shm files that opening a WAL database creates.
    connection = sqlite3.connect(database)
    try:
        for query in (
            "SELECT count(*), total(length(pem)), max(serial) FROM certificates",
            "SELECT count(*), max(ts), total(length(details)) FROM audit_log",
            "SELECT count(*), max(label) FROM keys_metadata",
            "SELECT count(*), max(username) FROM operators",
            "SELECT count(*), group_concat(value) FROM settings",
        ):
            digest.update(repr(connection.execute(query).fetchone()).encode())
    finally:
        connection.close()
    return digest.hexdigest()


def input_bytes(appliance: Path) -> int:
    total = 0
    for component in COMPONENTS:
        path = appliance / component
        if path.is_file():
            total += path.stat().st_size
        else:
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total


def warm_up(root: Path) -> None:
    """Read every input file once so each step starts with the same warm page cache."""
    for component in COMPONENTS:
        path = root / component
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            warm_file(file)


def warm_file(file: Path) -> None:
    with file.open("rb") as f:
        while f.read(4 * MiB):
            pass


# --------------------------------------------------------------------------
# The appliance writing while a backup runs

WRITER = """
import signal, sqlite3, sys, time
# A bench started in the background (`make bench &`) passes SIGINT on as ignored; the writer stops on it.
signal.signal(signal.SIGINT, signal.default_int_handler)
con = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
commits = 0
print("writing", flush=True)
try:
    while True:
        con.execute("BEGIN IMMEDIATE")
        # Rewrites rows with their own values: real WAL frames and fsyncs, the same rows after.
        con.execute("UPDATE settings SET value = value, updated_at = updated_at")
        con.execute("COMMIT")
        commits += 1
        time.sleep(WAIT)
except KeyboardInterrupt:
    print(commits, flush=True)
"""


class Writer:
    """A process committing to the appliance's database every few ms while a backup step runs.

    The target is a backup "consistent while a writer is active"; the writer
    changes no row's content, so each restore still compares equal to the
    generated state.
    """

    def __init__(self, database: Path, *, interval_ms: float) -> None:
        self.database = database
        self.interval = interval_ms / 1000
        self.commits: list[int] = []

    @contextlib.contextmanager
    def active(self):
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER.replace("WAIT", repr(self.interval)), str(self.database)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            if process.stdout.readline().strip() != "writing":
                raise BenchError(f"The database writer did not start: {process.stderr.read().strip()}")
            yield
        finally:
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=60)
            if process.returncode != 0 or not out.strip().isdigit():
                raise BenchError(f"The database writer failed: {err.strip() or out.strip()}")
            self.commits.append(int(out.strip()))


# --------------------------------------------------------------------------
# Timing


def timed(command: list[str], *, cwd: Path | None = None, what: str) -> tuple[float, int, str]:
    """Run `command` under GNU time, then sync; returns (seconds incl. sync, peak RSS KiB, stdout)."""
    os.sync()
    with tempfile.NamedTemporaryFile("r", prefix="bench-time-", suffix=".txt") as rusage:
        started = time.perf_counter()
        process = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", rusage.name, *command],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=STEP_TIMEOUT_S,
        )
        if process.returncode == 0:
            os.sync()
        seconds = time.perf_counter() - started
        report = rusage.read().strip().splitlines()
    if process.returncode != 0:
        raise BenchError(
            f"{what} failed with exit code {process.returncode}.\n"
            f"  command: {' '.join(command)}\n"
            f"  stderr:\n{_indent(process.stderr) or '    (empty)'}"
            + (f"\n  stdout:\n{_indent(process.stdout)}" if process.stdout.strip() else "")
        )
    # GNU time's last line is the format; earlier lines may say "Command exited ...".
    peak_rss = int(report[-1]) if report and report[-1].isdigit() else 0
    return seconds, peak_rss, process.stdout


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.rstrip().splitlines())


def _size(path: Path) -> int:
    return path.stat().st_size


# --------------------------------------------------------------------------
# The two sides


class Trash:
    """Trees a run replaced, kept until the bench ends (see the module docstring for why).

    When keeping them would leave less than `reserve` bytes free on the disk,
    the trash is emptied at once instead, and the bench says so: the next
    restore may then pay for the deletions.
    """

    def __init__(self, directory: Path, *, reserve: int) -> None:
        self.directory = directory
        self.reserve = reserve
        self._count = 0

    def discard(self, path: Path) -> None:
        self.directory.mkdir(exist_ok=True)
        self._count += 1
        path.rename(self.directory / f"{self._count}-{path.name}")
        if shutil.disk_usage(self.directory).free < self.reserve:
            print(f"bench: less than {self.reserve >> 30} GiB free: the trash is emptied now, so the next "
                  "restore's file creation may be slower (see the module docstring)")
            self.empty()

    def empty(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class Ours:
    """appliance-backup's run and restore on the generated appliance."""

    executable: str
    config: Path
    appliance: Path
    passphrase_file: Path
    expected_digest: str
    trash: Trash
    verify: bool = True
    writer: Writer | None = None

    @property
    def storage(self) -> Path:
        return self.appliance / "backups"

    def command(self, *args: str) -> list[str]:
        return [self.executable, "--config", str(self.config), *args]

    def set_secret(self) -> None:
        process = subprocess.run(
            self.command("secret", "set", "--passphrase-file", str(self.passphrase_file)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
        )
        if process.returncode == 8:
            print("ours: the Domain Master Secret was already set")
        elif process.returncode != 0:
            raise BenchError(
                f"appliance-backup secret set failed with exit code {process.returncode}.\n"
                f"  stderr:\n{_indent(process.stderr) or '    (empty)'}"
            )
        else:
            print("ours: Domain Master Secret set")

    def backup_and_restore(self, run: int, size: int) -> list[Measurement]:
        for old in self.storage.iterdir():  # only the previous run's backup
            if old.is_file():
                old.unlink()
        warm_up(self.appliance)
        with self.writer.active() if self.writer else contextlib.nullcontext():
            seconds, rss, stdout = timed(self.command("run"), what="appliance-backup run")
        lines = [line.strip() for line in stdout.splitlines() if line.strip()]
        if not lines:
            raise BenchError("appliance-backup run succeeded but printed no backup name on stdout.")
        name = lines[-1]
        archive = self.storage / name
        if not archive.is_file():
            raise BenchError(f"appliance-backup run printed {name!r}, but {archive} does not exist.")
        archive_bytes = _size(archive)
        backup = Measurement("ours", "backup", run, seconds, rss, archive_bytes, size)
        checks = []
        for step, extra in (("verify", ()), ("verify-deep", ("--deep",))):
            warm_file(archive)
            seconds, rss, _ = timed(self.command("verify", *extra, name), what=f"appliance-backup verify {' '.join(extra)}")
            checks.append(Measurement("ours", step, run, seconds, rss, archive_bytes, size))

        seconds, rss, _ = timed(
            self.command("restore", name, "--yes"),
            what="appliance-backup restore",
        )
        restore = Measurement("ours", "restore", run, seconds, rss, archive_bytes, size)
        if self.verify:
            restore.verified = state_digest(self.appliance) == self.expected_digest
            if not restore.verified:
                raise BenchError(f"After `appliance-backup restore {name}` the appliance differs from the generated state.")
        # Each restore keeps the state it replaced (a full copy) for rollback; move it out of
        # the appliance so retention never deletes one inside a timed restore.
        for kept in sorted((self.appliance / "state" / "rollback").glob("*")):
            self.trash.discard(kept)
        return [backup, *checks, restore]


@dataclass
class Peer:
    """tar | zstd -3 -T0 | age, and its restore, as in shared/perf/peers.sh."""

    appliance: Path
    work: Path
    key_file: Path
    expected_digest: str
    trash: Trash
    verify: bool = True
    writer: Writer | None = None

    def __post_init__(self) -> None:
        self.recipient = subprocess.run(
            ["age-keygen", "-y", str(self.key_file)], check=True, stdout=subprocess.PIPE, text=True
        ).stdout.strip()

    def backup_and_restore(self, run: int, size: int) -> list[Measurement]:
        archive = self.work / "a.tar.zst.age"
        archive.unlink(missing_ok=True)
        warm_up(self.appliance)
        pipeline = (
            f"tar -C '{self.appliance}' -cf - {' '.join(COMPONENTS)} | zstd -3 -T0 -q -c "
            f"| age -e -r {self.recipient} > '{archive}'"
        )
        with self.writer.active() if self.writer else contextlib.nullcontext():
            seconds, rss, _ = timed(["bash", "-o", "pipefail", "-c", pipeline], what="peer backup (tar|zstd|age)")
        archive_bytes = _size(archive)
        backup = Measurement("peer", "backup", run, seconds, rss, archive_bytes, size)
        checks = []
        for step, pipeline in (
            ("verify", f"age -d -i '{self.key_file}' '{archive}' > /dev/null"),
            ("verify-deep", f"age -d -i '{self.key_file}' '{archive}' | zstd -d -q -c | tar -tf - > /dev/null"),
        ):
            warm_file(archive)
            seconds, rss, _ = timed(["bash", "-o", "pipefail", "-c", pipeline], what=f"peer {step}")
            checks.append(Measurement("peer", step, run, seconds, rss, archive_bytes, size))

        target = self.work / "restore"
        if target.exists():
            self.trash.discard(target)
        target.mkdir()
        pipeline = f"age -d -i '{self.key_file}' '{archive}' | zstd -d -q -c | tar -xf -"
        seconds, rss, _ = timed(["bash", "-o", "pipefail", "-c", pipeline], cwd=target, what="peer restore (age|zstd|tar)")
        restore = Measurement("peer", "restore", run, seconds, rss, archive_bytes, size)
        if self.verify:
            restore.verified = state_digest(target) == self.expected_digest
            if not restore.verified:
                raise BenchError("The peer's restore differs from the generated state.")
        self.trash.discard(target)
        return [backup, *checks, restore]


# --------------------------------------------------------------------------
# Report

STEPS = ("backup", "verify", "verify-deep", "restore")


def summarise(measurements: list[Measurement]) -> list[dict]:
    rows = []
    for step in STEPS:
        row: dict = {"step": step}
        for tool in ("ours", "peer"):
            chosen = [m for m in measurements if m.tool == tool and m.step == step]
            if not chosen:
                continue
            median = statistics.median(m.seconds for m in chosen)
            archive = chosen[-1].archive_bytes
            row[tool] = {
                "median_s": round(median, 3),
                "all_s": [round(m.seconds, 3) for m in chosen],
                # verify runs are rated by the archive they read, the others by the state
                "mib_per_s": round((archive if step.startswith("verify") else chosen[-1].input_bytes) / MiB / median, 1),
                "archive_bytes": archive,
                "compression_ratio": round(chosen[-1].input_bytes / archive, 3),
                "peak_rss_mib": round(max(m.peak_rss_kib for m in chosen) / 1024, 1),
            }
        if "ours" in row and "peer" in row:
            row["ratio_ours_over_peer"] = round(row["ours"]["median_s"] / row["peer"]["median_s"], 3)
        rows.append(row)
    return rows


def print_table(rows: list[dict], input_size: int) -> None:
    print()
    print(f"input: {input_size:,} bytes ({input_size / MiB:,.1f} MiB): {', '.join(COMPONENTS)}")
    header = (
        f"{'step':<12} {'ours s':>8} {'peer s':>8} {'ours/peer':>9} {'ours MiB/s':>10} {'peer MiB/s':>10} "
        f"{'ours bytes':>13} {'peer bytes':>13} {'ours x':>7} {'peer x':>7} {'ours RSS MiB':>12} {'peer RSS MiB':>12}"
    )
    print(header)
    print("-" * len(header))

    def get(row: dict, tool: str, key: str, fmt: str) -> str:
        return format(row[tool][key], fmt) if tool in row else "-"

    for row in rows:
        ratio = format(row["ratio_ours_over_peer"], ".2f") if "ratio_ours_over_peer" in row else "-"
        print(
            f"{row['step']:<12} {get(row, 'ours', 'median_s', '.2f'):>8} {get(row, 'peer', 'median_s', '.2f'):>8} "
            f"{ratio:>9} {get(row, 'ours', 'mib_per_s', '.0f'):>10} {get(row, 'peer', 'mib_per_s', '.0f'):>10} "
            f"{get(row, 'ours', 'archive_bytes', ','):>13} {get(row, 'peer', 'archive_bytes', ','):>13} "
            f"{get(row, 'ours', 'compression_ratio', '.2f'):>7} {get(row, 'peer', 'compression_ratio', '.2f'):>7} "
            f"{get(row, 'ours', 'peak_rss_mib', '.0f'):>12} {get(row, 'peer', 'peak_rss_mib', '.0f'):>12}"
        )
    print("seconds are medians of the runs and include a final sync; x = input bytes / archive bytes;")
    print("MiB/s is of the state, except verify rows: of the archive. verify: ours authenticates every chunk,")
    print("the peer runs age -d; verify-deep: ours --deep checks every file, the peer lists the tar (tar -t).")
    print("peer RSS is the largest single process of the pipeline.")


def environment(executable: str | None) -> dict:
    def first_line(command: list[str]) -> str:
        try:
            out = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
            return (out.stdout.strip().splitlines() or [""])[0]
        except (OSError, subprocess.SubprocessError):
            return "unavailable"

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "appliance_backup": first_line([executable, "--version"]) if executable else None,
        "tar": first_line(["tar", "--version"]),
        "zstd": first_line(["zstd", "--version"]),
        "age": first_line(["age", "--version"]),
    }


# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark appliance-backup against tar | zstd -3 -T0 | age.")
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the generated state (default 1024)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated state (default 1)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side (default 3)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run on a {QUICK_SIZE_MIB} MiB state")
    parser.add_argument("--only", choices=("ours", "peer"), help="measure one side only")
    parser.add_argument("--no-verify", action="store_true", help="skip checking each restore against the state")
    parser.add_argument("--writer-ms", type=float, default=10.0,
                        help="a process commits to the database every N ms during each backup (default 10; 0: none)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="working directory (default bench/out)")
    args = parser.parse_args(argv)
    size_mib = QUICK_SIZE_MIB if args.quick else args.size_mib
    try:
        return run(args, size_mib)
    except BenchError as exc:
        print(f"\nbench: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, size_mib: int) -> int:
    ensure_tools()
    executable = find_appliance_backup() if args.only != "peer" else None
    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    _, summary, digest = prepare_state(out, size_mib, args.seed)
    appliance = Path(summary["appliance"])

    secrets_dir = out / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    passphrase_file = secrets_dir / "passphrase"
    if not passphrase_file.exists():
        passphrase_file.write_text(secrets.token_hex(24) + "\n")
        passphrase_file.chmod(0o600)
    key_file = secrets_dir / "age.key"
    if not key_file.exists():
        subprocess.run(["age-keygen", "-o", str(key_file)], check=True, stderr=subprocess.DEVNULL)

    writer = Writer(appliance / "internal.db", interval_ms=args.writer_ms) if args.writer_ms > 0 else None
    trash = Trash(out / "trash", reserve=4 * input_bytes(appliance) + (2 << 30))
    trash.empty()  # what an interrupted bench left
    try:
        return _measure(args, size_mib, executable, out, summary, digest, passphrase_file, key_file, writer, trash)
    finally:
        trash.empty()


def _measure(args: argparse.Namespace, size_mib: int, executable: str | None, out: Path, summary: dict,
             digest: str, passphrase_file: Path, key_file: Path, writer: Writer | None, trash: Trash) -> int:
    appliance = Path(summary["appliance"])
    config = Path(summary["config"])
    size = input_bytes(appliance)
    sides: list[Ours | Peer] = []
    if args.only != "peer":
        ours = Ours(executable, config, appliance, passphrase_file, digest, trash, verify=not args.no_verify,
                    writer=writer)
        ours.set_secret()
        sides.append(ours)
    if args.only != "ours":
        peer_work = out / "peer"
        peer_work.mkdir(exist_ok=True)
        sides.append(Peer(appliance, peer_work, key_file, digest, trash, verify=not args.no_verify, writer=writer))

    measurements: list[Measurement] = []
    for run_number in range(1, args.runs + 1):
        # Alternate which side goes first, so drift (thermal, cache) hits both alike.
        order = sides if run_number % 2 else list(reversed(sides))
        for side in order:
            for m in side.backup_and_restore(run_number, size):
                measurements.append(m)
                check = "" if m.verified is None else ("  verified" if m.verified else "  DIFFERS")
                print(
                    f"run {m.run} {m.tool:<4} {m.step:<11} {m.seconds:7.2f} s  {m.archive_bytes:>13,} bytes  "
                    f"RSS {m.peak_rss_kib / 1024:6.0f} MiB{check}"
                )

    rows = summarise(measurements)
    print_table(rows, size)
    if writer is not None:
        print(f"during each backup a writer committed every {args.writer_ms:g} ms: "
              f"{', '.join(map(str, writer.commits))} commits")
    results = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "size_mib": size_mib,
        "seed": args.seed,
        "runs": args.runs,
        "input_bytes": size,
        "state": summary,
        "environment": environment(executable),
        "summary": rows,
        "measurements": [asdict(m) for m in measurements],
    }
    results_file = out / "results.json"
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {results_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
