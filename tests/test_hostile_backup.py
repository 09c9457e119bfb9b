"""Every change to a whole real backup is refused, with the kind of failure docs/FORMAT.md gives it.

The backups here are made by the service from a tiny appliance (a few files
and a one-table SQLite database), so a whole file is about 1.5 KB and every
byte of it can be changed in turn. The appliance's stored KEK is used where
the header's salt and scrypt parameters are intact (no key derivation per
position); changes that reach the salt or the parameters go through the full
passphrase path, which derives with whatever the changed header says.

What docs/FORMAT.md (section 6, 6.1, 8) says a reader reports, and what is
asserted here:

- a change the unkeyed header checksum catches is **damage** (exit code 5),
  never a wrong DMS, and costs no key derivation;
- a header change with the checksum recomputed (what an attacker can do) is a
  **wrong DMS** (exit code 4) in bytes 0..97 when the fields stay within the
  reader's limits, **tampered** (exit code 5) in the MAC, bytes 98..129;
- a change in the chunks, a cut, a rearrangement or a foreign chunk is
  damage, named as section 6.1 names it;
- header fields and payload lengths out of range are refused before any
  allocation or derivation they size (section 6 step 4, payload P.4).

The last part holds a DMS with non-ASCII characters to docs/SECURITY.md 3.8:
either Unicode form opens the backups, and the minimum length counts code
points of the NFC form, through the service and the real command.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import sqlite3
import struct
import tarfile
import tempfile
import time
import tracemalloc
import unicodedata
from pathlib import Path

import pytest
import zstandard

from backup import archive
from backup.archive import HEADER_LENGTH, TAG_LENGTH, ArchiveReader, ArchiveWriter, derive_kek, read_header
from backup.config import Config, load_config
from backup.demo import write_appliance_config
from backup.errors import BackupError, ExitCode, IntegrityError, NotABackupError, WrongDmsError
from backup.payload import walk_payload
from backup.progress import Tracker
from backup.service import BackupService
from tests.common import FAST_KDF, PASSPHRASE, run_cli
from tests.helpers import appliance_state

MASKS = (0x01, 0xFF)
MIB = 1 << 20


def tiny_appliance(root: Path, *, name: str = "tiny", firmware_bytes: bytes = b"") -> Config:
    """A real appliance small enough that its whole backup is about 1.5 KB.

    `firmware_bytes`, when given, is added as one more firmware file (to make a
    backup span several 1 MiB chunks)."""
    firmware, system, storage, state = (root / d for d in ("firmware", "system", "backups", "state"))
    for d in (firmware, system, storage):
        d.mkdir(parents=True)
    state.mkdir(mode=0o700)
    (firmware / "VERSION.json").write_text('{"version": "4.2.1"}\n')
    (firmware / "limits.conf").write_text("max_sessions = 64\n")
    (firmware / "current").symlink_to("VERSION.json")
    (system / "hosts").write_text("127.0.0.1 localhost\n")
    if firmware_bytes:
        (firmware / "noise.bin").write_bytes(firmware_bytes)
    con = sqlite3.connect(root / "internal.db")
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, at TEXT, what TEXT)")
        con.executemany("INSERT INTO events (at, what) VALUES (?, ?)",
                        [("2024-06-03", "boot"), ("2024-06-03", "login")])
        con.commit()
    finally:
        con.close()
    write_appliance_config(root / "config.toml", name=name, firmware=firmware, system=system,
                           database=root / "internal.db", state_dir=state, storage_dir=storage)
    return load_config(root / "config.toml")


def tiny_service(root: Path, *, passphrase: str = PASSPHRASE, **kwargs) -> BackupService:
    service = BackupService(tiny_appliance(root, **kwargs), kdf_params=FAST_KDF)
    service.set_secret(passphrase)
    return service


@pytest.fixture
def tiny() -> tuple[BackupService, str, Path, bytes]:
    """A tiny appliance with its DMS set, and one real backup of it: (service, name, path, bytes).

    It lives in /dev/shm where there is one: every verify appends two fsynced lines to the run
    journal, and thousands of fsyncs on a busy disk would time the disk, not the reader."""
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="hostile-backup-", dir=shm if shm.is_dir() else None))
    try:
        service = tiny_service(root / "tiny")
        name = service.run_backup().name
        path = service.config.storage.path / name
        yield service, name, path, path.read_bytes()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def kdf_calls(monkeypatch) -> list:
    """Counts scrypt runs; the real scrypt still runs (a spy, not a stand-in)."""
    calls: list = []
    real = archive._scrypt

    def counting(password, salt, params):
        calls.append(params)
        return real(password, salt, params)

    monkeypatch.setattr(archive, "_scrypt", counting)
    return calls


# ----------------------------------------------------------------- oracles from docs/FORMAT.md


def within_limits(header: bytes) -> bool:
    """Section 6 step 4, written from the table (not from archive.py)."""
    length, cipher, kdf, log2_n, r, p, reserved = struct.unpack_from(">HBBBBBB", header, 10)
    (chunk,) = struct.unpack_from(">I", header, 34)
    return (length == 162 and cipher in (1, 2) and kdf == 1 and reserved == 0 and 10 <= log2_n <= 20
            and 1 <= r <= 32 and 1 <= p <= 16 and 128 * r * 2**log2_n <= 256 * MIB
            and 4096 <= chunk <= 16 * MIB and chunk & (chunk - 1) == 0)


def with_checksum(data: bytes) -> bytes:
    """`data` with its header checksum recomputed, as anyone can (it is unkeyed)."""
    return data[:130] + hashlib.sha256(data[:130]).digest() + data[HEADER_LENGTH:]


def expected_damage(data: bytes, pos: int) -> tuple[type[BackupError], str]:
    """The failure FORMAT.md section 6 gives a file whose byte `pos` changed (checksum not recomputed)."""
    if pos < 8:
        return NotABackupError, "is not an appliance-backup file"
    if pos < 10:
        return IntegrityError, r"format version \d+; this software reads version 1"
    if pos < HEADER_LENGTH:
        if not within_limits(data):
            return IntegrityError, r"header of .* is invalid: "
        return IntegrityError, r"header of .* is damaged \(its checksum does not match\)"
    return IntegrityError, r"chunk 0 .*failed authentication|chunk 0 is damaged"


def expected_forged(data: bytes, pos: int) -> tuple[type[BackupError], str]:
    """The same with the checksum recomputed: the changes an attacker can make to header[0:130]."""
    if pos < 10 or not within_limits(data):
        return expected_damage(data, pos)
    if pos < 98:  # bound by the key wrap (bytes 0..37 its AAD, 38..97 its nonce and ciphertext)
        return WrongDmsError, r"does not open this backup"
    return IntegrityError, r"header of .* has been tampered with"


def changed(data: bytes, pos: int, mask: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= mask
    return bytes(out)


def refused_by(call, *args, **kwargs) -> BackupError:
    try:
        call(*args, **kwargs)
    except BackupError as exc:
        # Its frames hold the reader and its 2 MiB of buffers: let them go now, not at the next GC.
        exc.__traceback__ = None
        return exc
    raise AssertionError(f"{call.__name__} accepted a changed backup")


def read_all(data: bytes, **how) -> None:
    """The reader a restore runs, minus the writing: decrypt, decompress, walk every member and checksum."""
    walk_payload(ArchiveReader(io.BytesIO(data), **how), Tracker("restore", None, None))


def check(exc: BaseException, kind: type[BackupError], message: str, where: str) -> str | None:
    """Why `exc` is not the expected failure, or None."""
    if type(exc) is not kind:
        return f"{where}: {type(exc).__name__} instead of {kind.__name__}: {exc}"
    if not re.search(message, str(exc)):
        return f"{where}: message {str(exc)!r} does not say {message!r}"
    if exc.exit_code != kind.exit_code or not str(exc).endswith("."):
        return f"{where}: exit code {exc.exit_code} or not a sentence: {exc}"
    return None


# ----------------------------------------------------------------- every byte of a whole backup


def test_every_byte_change_of_a_whole_backup_is_refused_with_its_documented_kind(tiny, kdf_calls) -> None:
    """Each byte of the file (header included), xor 0x01 and xor 0xFF, through `verify` and
    `verify --deep` (the stored KEK) and through the reader `restore --passphrase-file` runs (the
    passphrase; the stored KEK when the header is intact, see the module docstring): never accepted,
    never called a wrong DMS, and refused as the region's documented kind; no key is derived for a
    changed header (the checksum stops it first)."""
    service, name, path, data = tiny
    kek = derive_kek(PASSPHRASE, read_header(io.BytesIO(data)).salt, FAST_KDF)  # the one derivation
    assert kek.key == service.secret.kek().key
    kdf_calls.clear()
    problems: list[str] = []
    counts = {NotABackupError: 0, IntegrityError: 0}
    started = time.perf_counter()
    for pos in range(len(data)):
        for mask in MASKS:
            damaged = changed(data, pos, mask)
            kind, message = expected_damage(damaged, pos)
            counts[kind] += 1
            path.write_bytes(damaged)
            problems.append(check(refused_by(service.verify, name), kind, message, f"verify {pos}^{mask:#x}"))
            problems.append(check(refused_by(service.verify, name, deep=True), kind, message,
                                  f"verify --deep {pos}^{mask:#x}"))
            if pos < HEADER_LENGTH:  # the full passphrase path: refused before any derivation
                how = {"passphrase": PASSPHRASE}
            else:  # the header is intact, so the passphrase would give `kek` again
                how = {"kek": kek}
            problems.append(check(refused_by(read_all, damaged, **how), kind, message, f"reader {pos}^{mask:#x}"))
    elapsed = time.perf_counter() - started
    assert [p for p in problems if p] == []
    assert kdf_calls == [], "a changed header made the reader derive a key"
    path.write_bytes(data)
    assert service.verify(name, deep=True).files == 4  # VERSION.json, limits.conf, hosts, internal.db
    service.verify(name)
    read_all(data, passphrase=PASSPHRASE)
    print(f"\nwhole-file flips: {len(data)} bytes ({HEADER_LENGTH} header), {len(data) * len(MASKS)} changed "
          f"files, each through verify, verify --deep and the restore reader; {counts[NotABackupError]} not a backup, "
          f"{counts[IntegrityError]} damaged; {elapsed:.2f} s")


def test_header_changes_with_a_recomputed_checksum_are_a_wrong_dms_or_tampering(tiny, kdf_calls) -> None:
    """What an attacker can do to header[0:130] (the checksum is unkeyed): bytes 0..97 within the
    limits read as a wrong DMS (exit 4), the MAC as tampering (exit 5). Salt and scrypt
    parameters go through the full passphrase path, which really derives with the changed ones."""
    service, name, path, data = tiny
    kek = service.secret.kek()
    kdf_calls.clear()
    problems: list[str] = []
    derived_for = 0
    kinds: dict[str, int] = {}
    for pos in range(130):
        for mask in MASKS:
            forged = with_checksum(changed(data, pos, mask))
            kind, message = expected_forged(forged, pos)
            kinds[kind.__name__] = kinds.get(kind.__name__, 0) + 1
            path.write_bytes(forged)
            problems.append(check(refused_by(service.verify, name), kind, message, f"verify {pos}^{mask:#x}"))
            if 14 <= pos < 34:  # log2_n, r, p, reserved, salt: the passphrase gives another KEK, or none
                reaches_kdf = within_limits(forged) and pos != 17
                derived_for += reaches_kdf
                problems.append(check(refused_by(read_all, forged, passphrase=PASSPHRASE), kind, message,
                                      f"reader {pos}^{mask:#x}"))
                problems.append(check(refused_by(service.verify, name, passphrase=PASSPHRASE), kind, message,
                                      f"verify --passphrase-file {pos}^{mask:#x}"))
            else:
                problems.append(check(refused_by(read_all, forged, kek=kek), kind, message, f"reader {pos}^{mask:#x}"))
    assert [p for p in problems if p] == []
    # Two derivations (reader and service) per salt/parameter change within limits, none otherwise.
    assert len(kdf_calls) == 2 * derived_for and derived_for >= 32
    assert kinds["WrongDmsError"] > 100 and kinds["IntegrityError"] > 64
    # The same two outcomes through the real command: a checksum flip is damage, a forged wrap a wrong DMS.
    for forged, code in ((changed(data, 140, 0x01), ExitCode.INTEGRITY),
                         (with_checksum(changed(data, 60, 0x01)), ExitCode.WRONG_DMS)):
        path.write_bytes(forged)
        r = run_cli("verify", name, config=service.config)
        assert r.returncode == code, r.stderr
        assert "Traceback" not in r.stderr
    path.write_bytes(data)
    print(f"\nforged headers: 260 changes, {kinds}, {len(kdf_calls)} scrypt runs (salt/parameter changes only)")


# One representative per header field and region: restore itself refuses and changes nothing.
REGIONS = {"magic": 0, "version": 9, "header_length": 11, "cipher": 12, "kdf": 13, "log2_n": 14, "r": 15,
           "p": 16, "reserved": 17, "salt": 25, "chunk_size": 36, "wrap_nonce": 40, "wrapped_key": 70,
           "mac": 110, "checksum": 150, "first_chunk_byte": HEADER_LENGTH, "tag": -TAG_LENGTH, "last_byte": -1}


def test_restore_refuses_a_change_in_every_region_and_changes_nothing(tiny) -> None:
    service, name, path, data = tiny
    before = appliance_state(service.config)
    for region, pos in REGIONS.items():
        pos %= len(data)
        for forge in (False, True):
            damaged = changed(data, pos, 0x01)
            if forge and pos < 130:
                damaged = with_checksum(damaged)
            kind, message = (expected_forged if forge and pos < 130 else expected_damage)(damaged, pos)
            path.write_bytes(damaged)
            assert check(refused_by(service.restore, name), kind, message, region) is None
    assert appliance_state(service.config) == before
    assert not list((service.state_dir / "rollback").glob("*/*"))
    assert not [p for p in service.config.appliance.firmware.parent.iterdir() if ".restore-" in p.name]
    path.write_bytes(data)
    r = run_cli("restore", name, "--yes", config=service.config)
    assert r.returncode == 0, r.stderr


# ----------------------------------------------------------------- cuts and rearranged chunks


@pytest.fixture
def multi(tmp_path: Path) -> tuple[BackupService, str, Path, bytes]:
    """A real backup spanning four 1 MiB chunks (3 MiB of incompressible firmware): chunks 0-2 full."""
    noise = hashlib.shake_256(b"noise").digest(3 * MIB + 1000)
    service = tiny_service(tmp_path / "multi", firmware_bytes=noise)
    name = service.run_backup().name
    path = service.config.storage.path / name
    data = path.read_bytes()
    assert read_header(io.BytesIO(data)).chunk_size == MIB
    return service, name, path, data


def _chunks(data: bytes) -> list[bytes]:
    sealed = MIB + TAG_LENGTH
    return [data[i:i + sealed] for i in range(HEADER_LENGTH, len(data), sealed)]


def test_cuts_at_and_around_every_chunk_boundary_are_named(multi) -> None:
    """FORMAT.md 6.1 on a whole backup: every boundary, one byte either side, 15/16/17 bytes into a
    chunk and mid-chunk; verify names each cut, restore refuses them all and changes nothing."""
    service, name, path, data = multi
    sealed = MIB + TAG_LENGTH
    full = (len(data) - HEADER_LENGTH) // sealed
    assert full == 3 and (len(data) - HEADER_LENGTH) % sealed
    cuts: dict[int, str] = {0: "is not an appliance-backup file", 7: "is not an appliance-backup file",
                            9: r"truncated \(9 of 162 bytes\)", 161: r"truncated \(161 of 162 bytes\)",
                            HEADER_LENGTH: "ends right after the header"}
    for i in range(full):
        boundary = HEADER_LENGTH + (i + 1) * sealed
        start = boundary - sealed
        cuts[start + 1] = rf"ends inside chunk {i}"
        cuts[start + 15] = rf"ends inside chunk {i}"
        cuts[start + 16] = rf"last chunk {i} .*failed authentication"
        cuts[start + 17] = rf"last chunk {i} .*failed authentication"
        cuts[start + sealed // 2] = rf"last chunk {i} .*failed authentication"
        cuts[boundary - 1] = rf"last chunk {i} .*failed authentication"
        cuts[boundary] = rf"truncated: it ends after chunk {i} \(at byte {boundary}\)"
    cuts[len(data) - 1] = rf"last chunk {full} .*failed authentication"
    problems = []
    for cut, message in sorted(cuts.items()):
        path.write_bytes(data[:cut])
        kind = NotABackupError if cut < 8 else IntegrityError
        problems.append(check(refused_by(service.verify, name), kind, message, f"cut at {cut}"))
    assert [p for p in problems if p] == []
    before = appliance_state(service.config)
    for cut in (HEADER_LENGTH + sealed, HEADER_LENGTH + 2 * sealed + 5, HEADER_LENGTH + 3 * sealed):
        path.write_bytes(data[:cut])  # chunks 0.. authenticate and are staged before the cut is seen
        assert isinstance(refused_by(service.restore, name), IntegrityError)
    assert appliance_state(service.config) == before
    path.write_bytes(data)
    service.verify(name)
    print(f"\ncuts: {len(cuts)} on a {len(data)}-byte backup of {full + 1} chunks")


def test_rearranged_and_foreign_chunks_are_named_and_refused(multi) -> None:
    """Swaps, duplicates, drops, a moved final chunk, and a chunk from another backup of the same
    appliance (same KEK): verify names what happened; restore refuses and changes nothing."""
    service, name, path, data = multi
    header, chunks = data[:HEADER_LENGTH], _chunks(data)
    sealed = MIB + TAG_LENGTH
    at = [HEADER_LENGTH + k * sealed for k in range(6)]
    cases = {
        "first two swapped": ([1, 0, 2, 3], rf"position 0 \(byte {at[0]}\) holds chunk 1"),
        "middle swapped": ([0, 2, 1, 3], rf"position 1 \(byte {at[1]}\) holds chunk 2"),
        "duplicated": ([0, 1, 1, 2, 3], rf"position 2 \(byte {at[2]}\) holds chunk 1"),
        "dropped": ([0, 2, 3], rf"position 1 \(byte {at[1]}\) holds chunk 2"),
        "final dropped": ([0, 1, 2], r"truncated: it ends after chunk 2"),
        "final moved up": ([0, 1, 3], rf"position 2 \(byte {at[2]}\) holds chunk 3"),
        "final duplicated": ([0, 1, 2, 3, 3], r"end of the backup file .* is damaged"),
    }
    # A second backup of the same appliance: same salt and KEK, another file key.
    other_name = service.run_backup().name
    other = (service.config.storage.path / other_name).read_bytes()
    assert other[14:34] == data[14:34] and other[50:98] != data[50:98]
    variants = {label: (header + b"".join(chunks[i] for i in order), message)
                for label, (order, message) in cases.items()}
    variants["chunk 1 from another backup"] = (header + chunks[0] + _chunks(other)[1] + chunks[2] + chunks[3],
                                               r"chunk 1 \(bytes \d+\.\.\d+\) failed authentication")
    variants["other backup's header"] = (other[:HEADER_LENGTH] + b"".join(chunks),
                                         r"chunk 0 \(bytes 162\.\.\d+\) failed authentication")
    before = appliance_state(service.config)
    problems = []
    for label, (variant, message) in variants.items():
        path.write_bytes(variant)
        problems.append(check(refused_by(service.verify, name), IntegrityError, message, label))
        assert isinstance(refused_by(service.restore, name), IntegrityError), label
    assert [p for p in problems if p] == []
    assert appliance_state(service.config) == before
    path.write_bytes(data)
    service.verify(name)


# ----------------------------------------------------------------- hostile lengths: no big allocation


def _vm_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")


def measured(call) -> tuple[BaseException | None, int, int]:
    """Run `call`; return what it raised, its Python allocation peak and its peak RSS growth, in bytes."""
    _reset_peak_rss()
    rss = _vm_kib("VmRSS")
    tracemalloc.start()
    try:
        call()
        raised = None
    except BaseException as exc:  # noqa: BLE001 - reported to the caller
        raised = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return raised, peak, (_vm_kib("VmHWM") - rss) * 1024


def _set(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return with_checksum(bytes(out))


def _scrypt_fields(data: bytes, log2_n: int, r: int, p: int) -> bytes:
    return _set(_set(_set(data, 14, ">B", log2_n), 15, ">B", r), 16, ">B", p)


USTAR_MAX = 8 * 1024**3 - 1
"""The largest size a ustar header's 12-byte octal field holds (8 GiB - 1)."""


def _authentic(service: BackupService, members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """An authentic file under this appliance's KEK whose tar stream holds `members` (headers as given)."""
    raw = io.BytesIO()
    for info, body in members:
        raw.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        raw.write(body)
    raw.write(bytes(1024))
    out = io.BytesIO()
    with ArchiveWriter(out, service.secret.kek()) as writer:
        writer.write(zstandard.ZstdCompressor(write_checksum=True).compress(raw.getvalue()))
    return out.getvalue()


def _member(name: str, claimed: int, body: bytes = b"") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = claimed
    return info, body


def test_hostile_lengths_are_refused_before_any_big_allocation(tiny) -> None:
    """Huge scrypt cost, chunk size, header length (checksum recomputed so the limits are what stops
    them), an in-limit 16 MiB chunk size on a forged header, and authentic payloads whose manifest or
    checksum list claims gigabytes: each is refused with Python allocations under 1 MiB (tracemalloc)
    (for the payload cases: within 64 KiB of an intact file's working set, the exception and its
    message) and peak RSS growth under 8 MiB (VmHWM, which sees scrypt's native memory). Controls show both
    measures see a 16 MiB-chunk reader's buffers and a 64 MiB scrypt."""
    service, name, path, data = tiny
    kek = service.secret.kek()
    manifest = json.dumps({"format": "appliance-backup manifest", "version": 1}).encode()
    manifest_member = _member("manifest.json", len(manifest), manifest + bytes(-len(manifest) % 512))
    cases = {
        "scrypt N=2^20 r=32 p=16 (64 GiB)": (_scrypt_fields(data, 20, 32, 16), IntegrityError),
        "scrypt N=2^255 r=p=255": (_scrypt_fields(data, 255, 255, 255), IntegrityError),
        "scrypt N=2^19 r=8 (512 MiB)": (_scrypt_fields(data, 19, 8, 1), IntegrityError),
        "chunk size 2^32-1": (_set(data, 34, ">I", 2**32 - 1), IntegrityError),
        "chunk size 2^31": (_set(data, 34, ">I", 2**31), IntegrityError),
        "chunk size 16 MiB, forged": (_set(data, 34, ">I", 16 * MIB), WrongDmsError),
        "header length 65535": (_set(data, 10, ">H", 65535), IntegrityError),
        "manifest claims 8 GiB": (_authentic(service, [_member("manifest.json", USTAR_MAX, b"{}")]), IntegrityError),
        "checksum list claims 8 GiB": (_authentic(service, [manifest_member, _member("checksums.json", USTAR_MAX)]),
                                       IntegrityError),
    }
    # An intact file read the same way: the reader's working set for 1 MiB chunks (two chunk buffers,
    # the decompressor's and tar's read buffers). A hostile length must not add to it.
    raised, working_set, _ = measured(lambda: read_all(data, kek=kek))
    assert raised is None and working_set > 2 * MIB
    rows = [("intact file", "kek", "-", working_set, 0)]
    for label, (hostile, kind) in cases.items():
        for how in ({"kek": kek}, {"passphrase": PASSPHRASE}):
            if "forged" in label and "passphrase" in how:
                continue  # the passphrase path derives the (small) KEK first: measured below with scrypt
            raised, peak, rss = measured(lambda: read_all(hostile, **how))
            rows.append((label, next(iter(how)), type(raised).__name__, peak, rss))
            assert isinstance(raised, kind), (label, how, raised)
            bound = working_set + 64 * 1024 if "claims" in label else MIB  # header cases: before the chunk buffers
            assert peak < bound and rss < 8 * MIB, (label, how, peak, rss)
    # The service too (the stored KEK), on the file in the storage.
    for label in ("scrypt N=2^20 r=32 p=16 (64 GiB)", "chunk size 16 MiB, forged", "manifest claims 8 GiB"):
        path.write_bytes(cases[label][0])
        raised, peak, rss = measured(lambda: service.verify(name))
        rows.append((label, "service", type(raised).__name__, peak, rss))
        bound = working_set + 64 * 1024 if "claims" in label else MIB
        assert isinstance(raised, cases[label][1]) and peak < bound and rss < 8 * MIB, (label, raised, peak, rss)
    path.write_bytes(data)

    # Controls: the measures do see what is refused above.
    big_chunks = io.BytesIO()
    with ArchiveWriter(big_chunks, kek, chunk_size=16 * MIB) as writer:
        writer.write(b"x")
    raised, peak, _ = measured(lambda: ArchiveReader(io.BytesIO(big_chunks.getvalue()), kek=kek).read())
    assert raised is None and peak >= 32 * MIB, peak
    raised, _, rss = measured(lambda: derive_kek(PASSPHRASE, bytes(16), archive.ScryptParams(16, 8, 1)))
    assert raised is None and rss >= 48 * MIB, rss
    print("\n" + "\n".join(f"{label:34} {how:10} {kind:15} py peak {peak / 1024:7.1f} KiB, rss +{rss / 1024:7.1f} KiB"
                           for label, how, kind, peak, rss in rows))


# ----------------------------------------------------------------- a DMS with non-ASCII characters

# The same secret in its two Unicode forms: precomposed (NFC, as most keyboards type it) and
# decomposed (NFD, as some input methods and macOS file names give it).
DMS_NFC = "Grüße aus Åre, señor Dvořák"
DMS_NFD = unicodedata.normalize("NFD", DMS_NFC)
OTHER_DMS = "another appliance's own secret"


def test_the_two_forms_differ_as_bytes() -> None:
    assert DMS_NFC != DMS_NFD and DMS_NFC.encode() != DMS_NFD.encode()
    assert len(DMS_NFD) == len(DMS_NFC) + 5  # ü Å ñ ř á decompose; ß does not
    assert unicodedata.normalize("NFC", DMS_NFD) == DMS_NFC


@pytest.mark.parametrize(("set_as", "entered_as"), [(DMS_NFD, DMS_NFC), (DMS_NFC, DMS_NFD)], ids=["nfd-set", "nfc-set"])
def test_a_dms_set_in_one_form_opens_backups_in_the_other(tmp_path: Path, set_as: str, entered_as: str) -> None:
    """Service level: the appliance that made the backup checks the other form as its DMS; another
    appliance verifies and restores the backup with the other form, and not with its own DMS."""
    source = tiny_service(tmp_path / "source", passphrase=set_as)
    assert source.check_secret(entered_as) and source.check_secret(set_as)
    assert not source.check_secret(OTHER_DMS)
    name = source.run_backup().name
    target = tiny_service(tmp_path / "target", passphrase=OTHER_DMS, name="target")
    (target.config.storage.path / name).write_bytes((source.config.storage.path / name).read_bytes())
    (target.config.appliance.firmware / "only-on-target.conf").write_text("x = 1\n")
    for call in (target.verify, target.restore):
        exc = refused_by(call, name)
        assert isinstance(exc, WrongDmsError) and exc.exit_code == ExitCode.WRONG_DMS == 4, exc
        assert "--passphrase-file" in str(exc)
    assert isinstance(refused_by(target.verify, name, passphrase=OTHER_DMS), WrongDmsError)
    assert target.verify(name, passphrase=entered_as, deep=True).files == 4
    target.restore(name, passphrase=entered_as)
    assert appliance_state(target.config) == appliance_state(source.config)


def test_the_minimum_length_counts_code_points_after_nfc(tmp_path: Path) -> None:
    """Eight code points of the NFC form, whatever form is typed: combining marks that compose do
    not count, marks with no precomposed form do (the count is of code points, not of what a reader
    sees as letters). Each refusal is a sentence that says the length, and nothing is stored."""
    service = BackupService(tiny_appliance(tmp_path / "a"), kdf_params=FAST_KDF)
    refused = {
        "": 0,
        "1234567": 7,
        "é" * 7: 7,  # 7 in NFC ...
        unicodedata.normalize("NFD", "é" * 7): 7,  # ... and so 7 when typed as 14 NFD code points
        "e\u0301" * 4: 4,  # 8 code points typed, 4 after NFC
        "한국어비밀번호": 7,  # 7 Hangul syllables; 18 conjoining jamo in NFD
        unicodedata.normalize("NFD", "한국어비밀번호"): 7,
    }
    for passphrase, counted in refused.items():
        exc = refused_by(service.set_secret, passphrase)
        assert exc.exit_code == ExitCode.USAGE and str(exc) == (
            f"The Domain Master Secret must be at least 8 characters long (it has {counted})."), exc
        assert not service.secret.is_set()
    assert len(unicodedata.normalize("NFD", "한국어비밀번호")) == 18
    # 8 code points after NFC, 4 letters on screen (q and x have no precomposed dotted forms): accepted.
    accepted = "q\u0307x\u0323" * 2
    assert unicodedata.normalize("NFC", accepted) == accepted and len(accepted) == 8
    service.set_secret(accepted)
    assert service.check_secret(accepted)


def test_dms_forms_and_refusals_through_the_command(tmp_path: Path) -> None:
    """The real command: `secret set` from an NFD file, the backup opened elsewhere with an NFC file
    (exit 0), with the other appliance's own DMS or a wrong file (exit 4); too short refused (exit 2)
    with a sentence; no form of any secret in any output."""
    files = {}
    for label, text in (("nfd", DMS_NFD), ("nfc", DMS_NFC), ("wrong", OTHER_DMS), ("seven", "é" * 7),
                        ("empty", ""), ("combining", "e\u0301" * 4)):
        files[label] = tmp_path / f"{label}.txt"
        files[label].write_text(text + "\n", encoding="utf-8")
    source = tiny_appliance(tmp_path / "source")
    outputs = []

    def cli(*args, config, code):
        r = run_cli(*args, config=config)
        outputs.append(r.stdout + r.stderr)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr
        return r

    for label, counted in (("seven", 7), ("combining", 4)):
        r = cli("secret", "set", "--passphrase-file", files[label], config=source, code=ExitCode.USAGE)
        assert f"must be at least 8 characters long (it has {counted})." in r.stderr
    r = cli("secret", "set", "--passphrase-file", files["empty"], config=source, code=ExitCode.USAGE)
    assert "is empty: its first line must hold the passphrase" in r.stderr
    assert not (source.state_dir / "dms.key").exists()
    cli("secret", "set", "--passphrase-file", files["nfd"], config=source, code=0)
    name = cli("run", config=source, code=0).stdout.strip()

    target = tiny_service(tmp_path / "target", passphrase=OTHER_DMS, name="target")
    (target.config.storage.path / name).write_bytes((source.storage.path / name).read_bytes())
    r = cli("verify", name, config=target.config, code=ExitCode.WRONG_DMS)
    assert "--passphrase-file" in r.stderr
    cli("restore", name, "--yes", "--passphrase-file", files["wrong"], config=target.config, code=ExitCode.WRONG_DMS)
    cli("verify", name, "--passphrase-file", files["nfc"], config=target.config, code=0)
    cli("restore", name, "--yes", "--passphrase-file", files["nfc"], config=target.config, code=0)
    assert appliance_state(target.config) == appliance_state(source)
    for form in {DMS_NFC, DMS_NFD, OTHER_DMS, "é" * 7, "e\u0301" * 4}:
        assert not [o for o in outputs if form in o]


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME], ids=["pax-header", "gnu-longname"])
def test_a_huge_extended_tar_header_is_refused_before_it_is_read_into_memory(tiny, kind) -> None:
    """An authentic payload (it needs the KEK: a compromised writer, SECURITY.md 3.5) whose first tar
    member is a pax extended header or GNU long name claiming 64 MiB, made of zeros so the whole file
    is about 2 KB. tarfile reads such a header's data into memory in one piece before looking at it,
    so unless the reader bounds it first, 2 KB of file cost 2 x 64 MiB of memory (and an 8 GiB claim
    8 x more than that). Refused by verify, verify --deep and restore within 8 MiB of Python memory: the
    reader's working set once a payload fills tar's 1 MiB read buffer is about 5 MiB (two chunk buffers,
    the decompressor's and tar's buffers, one 1 MiB read)."""
    service, name, path, data = tiny
    kek = service.secret.kek()
    info = tarfile.TarInfo("././@PaxHeader" if kind == tarfile.XHDTYPE else "././@LongLink")
    info.type, info.size = kind, 64 * MIB
    compress = zstandard.ZstdCompressor(write_checksum=True).compressobj()
    out = io.BytesIO()
    with ArchiveWriter(out, kek) as writer:
        writer.write(compress.compress(info.tobuf(format=tarfile.USTAR_FORMAT)))
        for _ in range(64):
            writer.write(compress.compress(bytes(MIB)))
        writer.write(compress.compress(bytes(1024)) + compress.flush())
    hostile = out.getvalue()
    assert len(hostile) < 4096
    path.write_bytes(hostile)
    for label, call in (("reader", lambda: read_all(hostile, kek=kek)), ("verify", lambda: service.verify(name)),
                        ("verify --deep", lambda: service.verify(name, deep=True)),
                        ("restore", lambda: service.restore(name))):
        raised, peak, _ = measured(call)
        assert isinstance(raised, IntegrityError), (label, raised)
        assert peak < 8 * MIB, f"{label}: {peak / MIB:.1f} MiB for a {len(hostile)}-byte file"
    path.write_bytes(data)
