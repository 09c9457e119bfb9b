"""Unit and property tests of the encryption layer (backup/archive.py, docs/FORMAT.md).

Besides the reference reader, the files are also read by `spec_read`, a small
independent reader written from docs/FORMAT.md with standard primitives only,
so that the document and the code are held to each other.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import traceback
import unicodedata
from functools import lru_cache
from pathlib import Path

import pytest
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backup import archive
from backup.archive import (
    HEADER_LENGTH,
    MAX_CHUNK_INDEX,
    ArchiveReader,
    ArchiveWriter,
    KeyEncryptionKey,
    ScryptParams,
    chunk_nonce,
    derive_kek,
    new_salt,
    opens_with,
    parse_header,
    read_header,
)
from backup.errors import BackupError, IntegrityError, NotABackupError, WrongDmsError
from tests.common import PASSPHRASE

VECTORS = Path(__file__).parent / "vectors"

SMALL = ScryptParams(log2_n=10, r=8, p=1)
CHUNK = 4096
SEALED = CHUNK + 16
CIPHERS = ["aes-256-gcm", "chacha20-poly1305"]
SALT = bytes(range(16))


@lru_cache(maxsize=None)
def kek_for(
    cipher: str = "aes-256-gcm", salt: bytes = SALT, passphrase: str = PASSPHRASE
) -> KeyEncryptionKey:
    return derive_kek(passphrase, salt, SMALL, cipher)


def payload_of(length: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"payload {seed}".encode()).digest(length)


def seal(
    payload: bytes,
    *,
    cipher: str = "aes-256-gcm",
    chunk_size: int = CHUNK,
    splits: list[int] | None = None,
    **keys: bytes,
) -> bytes:
    sink = io.BytesIO()
    writer = ArchiveWriter(sink, kek_for(cipher), chunk_size=chunk_size, **keys)
    if splits is None:
        writer.write(payload)
    else:
        view = memoryview(payload)
        for size in splits:
            writer.write(view[:size])
            view = view[size:]
        writer.write(view)
    writer.close()
    assert writer.bytes_written == len(sink.getvalue())
    return sink.getvalue()


def open_all(data: bytes, **how) -> bytes:
    if not how:
        how = {"kek": kek_for()}
    return ArchiveReader(io.BytesIO(data), **how).read()


def chunks_of(data: bytes, chunk_size: int = CHUNK) -> list[bytes]:
    body = data[HEADER_LENGTH:]
    return [body[i : i + chunk_size + 16] for i in range(0, len(body), chunk_size + 16)]


def with_checksum(header: bytes) -> bytes:
    header = bytes(header[:130])
    return header + hashlib.sha256(header).digest()


# An independent reader, written from docs/FORMAT.md only ---------------------


class SpecRefusal(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _spec_hkdf(ikm: bytes, info: bytes) -> bytes:
    prk = hmac.new(b"", ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def spec_read(data: bytes, passphrase: str) -> bytes:
    """Decrypt a whole file following docs/FORMAT.md section 6, or raise SpecRefusal."""
    if len(data) < 8 or data[:8] != b"\x89ABK\r\n\x1a\n":
        raise SpecRefusal("not_a_backup")
    if len(data) < 162 or data[8:10] != b"\x00\x01":
        raise SpecRefusal("integrity")
    header = data[:162]
    length, cipher_id, kdf_id, log2_n, r, p, reserved = struct.unpack(">HBBBBBB", header[10:18])
    salt = header[18:34]
    (chunk_size,) = struct.unpack(">I", header[34:38])
    if not (
        length == 162
        and cipher_id in (1, 2)
        and kdf_id == 1
        and reserved == 0
        and 10 <= log2_n <= 20
        and 1 <= r <= 32
        and 1 <= p <= 16
        and 128 * r * 2**log2_n <= 256 * 2**20
        and log2_n < 16 * r
        and 4096 <= chunk_size <= 16 * 2**20
        and bin(chunk_size).count("1") == 1
    ):
        raise SpecRefusal("integrity")
    if hashlib.sha256(header[:130]).digest() != header[130:162]:
        raise SpecRefusal("integrity")
    aead = AESGCM if cipher_id == 1 else ChaCha20Poly1305
    password = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    kek = hashlib.scrypt(password, salt=salt, n=2**log2_n, r=r, p=p, maxmem=2**30, dklen=32)
    try:
        file_key = aead(kek).decrypt(header[38:50], header[50:98], header[0:38])
    except InvalidTag:
        raise SpecRefusal("wrong_dms") from None
    mac_key = _spec_hkdf(file_key, b"appliance-backup v1 header")
    mac = hmac.new(mac_key, header[:98], hashlib.sha256).digest()
    if not hmac.compare_digest(mac, header[98:130]):
        raise SpecRefusal("integrity")
    payload = aead(_spec_hkdf(file_key, b"appliance-backup v1 payload"))
    out = []
    position = 162
    index = 0
    while True:
        stored = data[position : position + chunk_size + 16]
        position += len(stored)
        final = position == len(data)
        try:
            nonce = index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")
            out.append(payload.decrypt(nonce, stored, b""))
        except InvalidTag:
            raise SpecRefusal("integrity") from None
        if final:
            if not out[-1] and index > 0:
                raise SpecRefusal("integrity")
            return b"".join(out)
        index += 1


# Round trips -----------------------------------------------------------------


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize(
    "size",
    [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 17, 5 * CHUNK],
)
def test_round_trip_at_chunk_boundaries(cipher: str, size: int) -> None:
    payload = payload_of(size, size)
    data = seal(payload, cipher=cipher)
    chunk_count = max(1, -(-size // CHUNK))
    assert len(data) == HEADER_LENGTH + size + 16 * chunk_count
    assert open_all(data, kek=kek_for(cipher)) == payload
    assert open_all(data, passphrase=PASSPHRASE) == payload
    assert spec_read(data, PASSPHRASE) == payload


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cipher=st.sampled_from(CIPHERS),
    size=st.one_of(
        st.sampled_from([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 1]),
        st.integers(0, 6 * CHUNK),
    ),
    seed=st.integers(0, 2**32),
    write_splits=st.lists(st.integers(0, 2 * CHUNK + 3), max_size=12),
    read_sizes=st.lists(st.integers(1, 2 * CHUNK + 3), min_size=1, max_size=12),
)
def test_round_trip_any_size_and_splits(cipher, size, seed, write_splits, read_sizes) -> None:
    payload = payload_of(size, seed)
    data = seal(payload, cipher=cipher, splits=write_splits)
    assert spec_read(data, PASSPHRASE) == payload
    reader = ArchiveReader(io.BytesIO(data), kek=kek_for(cipher))
    got = bytearray()
    for turn in range(len(payload) + 2):
        wanted = read_sizes[turn % len(read_sizes)]
        method = ("read", "readinto", "read1")[turn % 3]
        if method == "read":
            part = reader.read(wanted)
        elif method == "readinto":
            buffer = bytearray(wanted)
            part = buffer[: reader.readinto(buffer)]
        else:
            part = reader.read1(wanted)
        if method != "read1" and len(part) < wanted:
            # read() and readinto() come back short only at the end of the payload.
            assert len(got) + len(part) == len(payload)
        got += part
        if not part:
            break
    else:
        pytest.fail("the reader never reported the end of the payload")
    assert bytes(got) == payload
    assert reader.finished
    assert reader.tell() == len(payload)
    assert reader.read(10) == b""


FILE_KEY = bytes(range(32))
WRAP_NONCE = bytes(range(12))


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(0, 4 * CHUNK),
    splits_a=st.lists(st.integers(1, CHUNK + 1), max_size=8),
    splits_b=st.lists(st.integers(1, 3 * CHUNK), max_size=4),
)
def test_output_does_not_depend_on_write_splits(size, splits_a, splits_b) -> None:
    payload = payload_of(size)
    fixed = {"file_key": FILE_KEY, "wrap_nonce": WRAP_NONCE}
    assert seal(payload, splits=splits_a, **fixed) == seal(payload, splits=splits_b, **fixed)


def test_large_chunk_size_round_trip() -> None:
    payload = payload_of(3 * (1 << 20) + 5)
    data = seal(payload, chunk_size=1 << 20)
    assert open_all(data) == payload
    assert len(chunks_of(data, 1 << 20)) == 4


def test_file_key_is_random_per_file() -> None:
    assert seal(b"same") != seal(b"same")
    one, two = (parse_header(seal(b"same")[:HEADER_LENGTH]) for _ in range(2))
    assert one.wrap_nonce != two.wrap_nonce
    assert one.wrapped_file_key != two.wrapped_file_key


def test_writer_emits_a_chunk_only_when_more_data_follows_it() -> None:
    sink = io.BytesIO()
    writer = ArchiveWriter(sink, kek_for(), chunk_size=CHUNK)
    assert writer.bytes_written == len(sink.getvalue()) == HEADER_LENGTH
    writer.write(b"a" * CHUNK)
    assert len(sink.getvalue()) == HEADER_LENGTH  # it could still be the final chunk
    writer.write(b"b")
    assert len(sink.getvalue()) == HEADER_LENGTH + SEALED
    writer.write(b"c" * (3 * CHUNK))  # one write spanning several chunks; 1 byte stays buffered
    assert len(sink.getvalue()) == HEADER_LENGTH + 4 * SEALED
    writer.close()
    assert len(sink.getvalue()) == HEADER_LENGTH + 4 * SEALED + 1 + 16
    assert writer.bytes_written == len(sink.getvalue())
    assert open_all(sink.getvalue()) == b"a" * CHUNK + b"b" + b"c" * 3 * CHUNK


def test_empty_payload_is_one_final_chunk_of_only_a_tag() -> None:
    data = seal(b"")
    assert len(data) == HEADER_LENGTH + 16
    assert open_all(data) == b""


def test_writer_leaves_the_sink_open_and_refuses_writes_after_close() -> None:
    sink = io.BytesIO()
    writer = ArchiveWriter(sink, kek_for())
    writer.write(b"x")
    writer.close()
    writer.close()  # idempotent
    assert not sink.closed
    assert writer.closed and writer.writable() and not writer.readable()
    with pytest.raises(ValueError):
        writer.write(b"more")


def test_writer_with_block_seals_only_on_success() -> None:
    sink = io.BytesIO()
    with ArchiveWriter(sink, kek_for()) as writer:
        writer.write(b"complete")
    assert open_all(sink.getvalue()) == b"complete"

    sink = io.BytesIO()
    with pytest.raises(RuntimeError):
        with ArchiveWriter(sink, kek_for()) as writer:
            writer.write(payload_of(3 * CHUNK))
            raise RuntimeError("disk on fire")
    with pytest.raises(IntegrityError, match="truncated"):
        open_all(sink.getvalue())


def test_abort_leaves_a_file_every_reader_refuses() -> None:
    sink = io.BytesIO()
    writer = ArchiveWriter(sink, kek_for())
    writer.write(payload_of(2 * CHUNK + 10))
    writer.abort()
    writer.close()
    with pytest.raises(IntegrityError):
        open_all(sink.getvalue())
    with pytest.raises(SpecRefusal):
        spec_read(sink.getvalue(), PASSPHRASE)


def test_a_failed_write_never_seals_the_file() -> None:
    class FailingSink(io.BytesIO):
        fail = False

        def write(self, data):
            if self.fail:
                raise OSError(28, "No space left on device")
            return super().write(data)

    sink = FailingSink()
    writer = ArchiveWriter(sink, kek_for(), chunk_size=CHUNK)
    writer.write(payload_of(CHUNK + 1))
    sink.fail = True
    with pytest.raises(OSError):
        writer.write(payload_of(CHUNK))
    sink.fail = False
    writer.close()  # must not write a final chunk now
    with pytest.raises(ValueError):
        writer.write(b"x")
    with pytest.raises(IntegrityError, match="truncated"):
        open_all(sink.getvalue())


def test_writer_copes_with_a_raw_sink_taking_little_at_a_time() -> None:
    class TrickleSink:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, data) -> int:
            taken = bytes(data[:1000])
            self.data += taken
            return len(taken)

    sink = TrickleSink()
    payload = payload_of(2 * CHUNK + 7)
    writer = ArchiveWriter(sink, kek_for())
    writer.write(payload)
    writer.close()
    assert writer.bytes_written == len(sink.data)
    assert open_all(bytes(sink.data)) == payload


def test_reader_copes_with_a_source_without_readinto_giving_short_reads() -> None:
    payload = payload_of(3 * CHUNK + 100)
    data = seal(payload)

    class Trickle:
        def __init__(self) -> None:
            self.position = 0

        def read(self, size: int) -> bytes:
            size = min(size, 7)
            part = data[self.position : self.position + size]
            self.position += len(part)
            return part

    reader = ArchiveReader(Trickle(), passphrase=PASSPHRASE)
    assert reader.read() == payload
    assert reader.bytes_read == len(data)


def test_zstandard_and_tarfile_run_on_top_of_writer_and_reader() -> None:
    members = {"etc/config.toml": b"answer = 42\n", "db/big.bin": payload_of(5 * CHUNK + 3)}
    sink = io.BytesIO()
    writer = ArchiveWriter(sink, kek_for())
    with zstandard.ZstdCompressor(level=3).stream_writer(writer, closefd=False) as compressed:
        with tarfile.open(fileobj=compressed, mode="w|") as tar:
            for name, content in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    writer.close()

    reader = ArchiveReader(io.BytesIO(sink.getvalue()), passphrase=PASSPHRASE)
    found = {}
    with zstandard.ZstdDecompressor().stream_reader(reader) as decompressed:
        with tarfile.open(fileobj=decompressed, mode="r|") as tar:
            for member in tar:
                found[member.name] = tar.extractfile(member).read()
    assert found == members
    assert reader.finished


def test_tarfile_stream_mode_reads_the_reader_directly() -> None:
    sink = io.BytesIO()
    writer = ArchiveWriter(sink, kek_for())
    with tarfile.open(fileobj=writer, mode="w|") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    writer.close()
    reader = ArchiveReader(io.BytesIO(sink.getvalue()), kek=kek_for())
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        assert [member.name for member in tar] == ["manifest.json"]


def test_reader_small_api() -> None:
    payload = payload_of(2 * CHUNK + 3)
    reader = ArchiveReader(io.BytesIO(seal(payload)), kek=kek_for())
    assert reader.readable() and not reader.seekable()
    assert reader.read(0) == b""
    assert reader.read1(-1) == payload[:CHUNK]  # read1 stays within one chunk
    buffer = bytearray(10)
    assert reader.readinto1(buffer) == 10 and bytes(buffer) == payload[CHUNK : CHUNK + 10]
    assert reader.tell() == CHUNK + 10
    assert not reader.finished
    assert reader.drain() == len(payload) - CHUNK - 10
    assert reader.finished and reader.read() == b""
    reader.close()
    with pytest.raises(ValueError):
        reader.read(1)


# Only authenticated plaintext ------------------------------------------------


def test_plaintext_of_a_damaged_chunk_is_never_handed_out() -> None:
    payload = payload_of(3 * CHUNK)
    data = bytearray(seal(payload))
    data[HEADER_LENGTH + SEALED + 5] ^= 0x40  # inside chunk 1's ciphertext
    reader = ArchiveReader(io.BytesIO(bytes(data)), kek=kek_for())
    assert reader.read(CHUNK) == payload[:CHUNK]
    with pytest.raises(IntegrityError, match="chunk 1") as first:
        reader.read(1)
    with pytest.raises(IntegrityError) as again:  # the failure sticks
        reader.read(1)
    assert str(again.value) == str(first.value)
    buffer = bytearray(b"\xee" * CHUNK)
    with pytest.raises(IntegrityError):
        reader.readinto(buffer)
    assert buffer == b"\xee" * CHUNK


def test_end_of_stream_only_after_the_final_chunk_authenticated() -> None:
    payload = payload_of(2 * CHUNK + 5)
    data = seal(payload)
    cut = data[: HEADER_LENGTH + 2 * SEALED]  # final chunk missing
    reader = ArchiveReader(io.BytesIO(cut), kek=kek_for())
    got = b""
    with pytest.raises(IntegrityError, match="truncated"):
        while part := reader.read(1000):
            got += part
    assert got == payload[: len(got)] and len(got) <= 2 * CHUNK


# Tampering -------------------------------------------------------------------


def test_every_single_bit_flip_of_a_three_chunk_file_is_detected() -> None:
    payload = payload_of(2 * CHUNK + 1000)
    data = seal(payload)
    assert len(chunks_of(data)) == 3
    kek = kek_for()
    failures = []
    for position in range(len(data)):
        for mask in (0x01, 0x80):
            damaged = bytearray(data)
            damaged[position] ^= mask
            try:
                ArchiveReader(io.BytesIO(bytes(damaged)), kek=kek).drain()
            except IntegrityError:
                continue
            except WrongDmsError:
                failures.append((position, mask, "reported as a wrong DMS"))
                continue
            failures.append((position, mask, "accepted"))
    assert failures == []


def test_every_header_byte_flip_is_refused_before_the_kdf(monkeypatch) -> None:
    data = seal(b"x")

    def no_kdf(*args, **kwargs):
        raise AssertionError("the KDF ran on a damaged header")

    monkeypatch.setattr(archive, "_scrypt", no_kdf)
    for position in range(HEADER_LENGTH):
        damaged = bytearray(data)
        damaged[position] ^= 0xFF
        with pytest.raises(IntegrityError):
            ArchiveReader(io.BytesIO(bytes(damaged)), passphrase=PASSPHRASE)


def test_every_truncation_is_detected() -> None:
    data = seal(payload_of(2 * CHUNK + 1000))
    kek = kek_for()
    for length in range(len(data)):
        with pytest.raises(IntegrityError):
            ArchiveReader(io.BytesIO(data[:length]), kek=kek).drain()


@pytest.mark.parametrize("cipher", CIPHERS)
def test_truncation_messages(cipher: str) -> None:
    data = seal(payload_of(3 * CHUNK + 100), cipher=cipher)
    how = {"kek": kek_for(cipher)}
    with pytest.raises(NotABackupError, match="is not an appliance-backup file"):
        open_all(data[:0], **how)
    with pytest.raises(NotABackupError, match="is not an appliance-backup file"):
        open_all(data[:5], **how)
    with pytest.raises(IntegrityError, match=r"header .* is truncated \(100 of 162 bytes\)"):
        open_all(data[:100], **how)
    with pytest.raises(IntegrityError, match="ends right after the header"):
        open_all(data[:HEADER_LENGTH], **how)
    for index in range(3):
        boundary = HEADER_LENGTH + (index + 1) * SEALED
        ends_after = rf"truncated: it ends after chunk {index} \(at byte {boundary}\)"
        with pytest.raises(IntegrityError, match=ends_after):
            open_all(data[:boundary], **how)
        with pytest.raises(IntegrityError, match=rf"truncated: it ends inside chunk {index + 1}"):
            open_all(data[: boundary + 15], **how)
        with pytest.raises(IntegrityError, match=rf"last chunk {index + 1} .*failed auth"):
            open_all(data[: boundary + 16], **how)
        with pytest.raises(IntegrityError, match=rf"last chunk {index}\b"):
            open_all(data[: boundary - 1], **how)


def test_swapped_duplicated_and_dropped_chunks_are_named() -> None:
    data = seal(payload_of(4 * CHUNK + 10))
    header, chunks = data[:HEADER_LENGTH], chunks_of(data)
    assert len(chunks) == 5
    cases = {
        "swapped": ([0, 2, 1, 3, 4], r"position 1 \(byte 4274\) holds chunk 2"),
        "duplicated": ([0, 1, 1, 2, 3, 4], r"position 2 \(byte 8386\) holds chunk 1"),
        "dropped": ([0, 1, 3, 4], r"position 2 \(byte 8386\) holds chunk 3"),
        "final moved": ([0, 1, 2, 4], r"position 3 \(byte 12498\) holds chunk 4"),
    }
    for name, (order, message) in cases.items():
        rearranged = header + b"".join(chunks[i] for i in order)
        with pytest.raises(IntegrityError, match=message):
            open_all(rearranged)
        with pytest.raises(SpecRefusal, match="integrity"):
            spec_read(rearranged, PASSPHRASE)


def test_chunks_from_another_file_with_the_same_kek_are_refused() -> None:
    one = seal(payload_of(2 * CHUNK, 1))
    two = seal(payload_of(2 * CHUNK, 2))
    spliced = one[:HEADER_LENGTH] + chunks_of(one)[0] + chunks_of(two)[1]
    with pytest.raises(IntegrityError, match="last chunk 1|chunk 1"):
        open_all(spliced)


def test_appended_data_is_detected() -> None:
    full_final = seal(payload_of(2 * CHUNK))
    appended = r"Data was appended after the end of the backup .*after chunk 1"
    with pytest.raises(IntegrityError, match=appended):
        open_all(full_final + b"x")
    with pytest.raises(IntegrityError, match="Data was appended after the end of the backup"):
        open_all(full_final + full_final)
    short_final = seal(payload_of(2 * CHUNK + 100))
    for extra in (b"x", b"y" * 16, chunks_of(short_final)[0]):
        with pytest.raises(IntegrityError):
            open_all(short_final + extra)
        with pytest.raises(SpecRefusal, match="integrity"):
            spec_read(short_final + extra, PASSPHRASE)


def test_an_empty_final_chunk_after_data_is_refused() -> None:
    """A correct writer never ends with an empty chunk; one forged with the file key is refused."""
    data = seal(payload_of(CHUNK), file_key=FILE_KEY, wrap_nonce=WRAP_NONCE)
    payload_aead = AESGCM(_spec_hkdf(FILE_KEY, b"appliance-backup v1 payload"))
    chunk0 = payload_aead.encrypt(chunk_nonce(0, False), payload_of(CHUNK), b"")
    empty_final = payload_aead.encrypt(chunk_nonce(1, True), b"", b"")
    forged = data[:HEADER_LENGTH] + chunk0 + empty_final
    with pytest.raises(SpecRefusal):
        spec_read(forged, PASSPHRASE)
    with pytest.raises(IntegrityError, match="final chunk 1 is empty"):
        open_all(forged)


def test_counter_overflow_is_refused() -> None:
    assert chunk_nonce(0, False) == bytes(12)
    assert chunk_nonce(258, True) == bytes(9) + b"\x01\x02\x01"
    assert chunk_nonce(MAX_CHUNK_INDEX, True) == b"\xff" * 11 + b"\x01"
    with pytest.raises(OverflowError):
        chunk_nonce(MAX_CHUNK_INDEX + 1, True)
    with pytest.raises(OverflowError):
        chunk_nonce(-1, False)

    writer = ArchiveWriter(io.BytesIO(), kek_for(), chunk_size=CHUNK)
    writer._index = MAX_CHUNK_INDEX - 1
    writer.write(payload_of(2 * CHUNK))  # chunk 2**88-2 is sealed as non-final
    with pytest.raises(BackupError, match="too large"):
        writer.write(b"x")  # chunk 2**88-1 would need a successor
    writer.close()

    writer = ArchiveWriter(io.BytesIO(), kek_for(), chunk_size=CHUNK)
    writer._index = MAX_CHUNK_INDEX
    writer.write(b"last")
    writer.close()  # the very last index may be final

    reader = ArchiveReader(io.BytesIO(seal(payload_of(2 * CHUNK + 1))), kek=kek_for())
    reader._index = MAX_CHUNK_INDEX
    with pytest.raises(IntegrityError, match="more chunks than the format allows"):
        reader.read(1)


# Header limits, before any KDF -------------------------------------------------

# (offset, struct format, bad value, expected message)
OUT_OF_RANGE = [
    (10, ">H", 161, "header length 161 is not 162"),
    (10, ">H", 0, "header length 0 is not 162"),
    (12, ">B", 0, "cipher id 0 is unknown"),
    (12, ">B", 3, "cipher id 3 is unknown"),
    (13, ">B", 0, "key-derivation id 0 is unknown"),
    (13, ">B", 2, "key-derivation id 2 is unknown"),
    (14, ">B", 9, r"log2\(N\) = 9 is outside 10..20"),
    (14, ">B", 21, r"log2\(N\) = 21 is outside 10..20"),
    (14, ">B", 255, r"log2\(N\) = 255 is outside 10..20"),
    (15, ">B", 0, "r = 0 is outside 1..32"),
    (15, ">B", 33, "r = 33 is outside 1..32"),
    (16, ">B", 0, "p = 0 is outside 1..16"),
    (16, ">B", 17, "p = 17 is outside 1..16"),
    (17, ">B", 1, "reserved byte is 1, not 0"),
    (34, ">I", 0, "chunk size 0 is not a power of two"),
    (34, ">I", 2048, "chunk size 2048 is not a power of two"),
    (34, ">I", 4097, "chunk size 4097 is not a power of two"),
    (34, ">I", 3 * 4096, "chunk size 12288 is not a power of two"),
    (34, ">I", 32 << 20, "chunk size 33554432 is not a power of two"),
    (34, ">I", 2**32 - 1, "is not a power of two"),
]


def _set_field(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    header = bytearray(data[:HEADER_LENGTH])
    struct.pack_into(fmt, header, offset, value)
    return with_checksum(header) + data[HEADER_LENGTH:]


@pytest.fixture
def kdf_forbidden(monkeypatch):
    for cipher in CIPHERS:  # derive the tests' own keys first, whichever test runs first in this process
        kek_for(cipher)
    calls = []

    def no_kdf(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the KDF ran")

    monkeypatch.setattr(archive, "_scrypt", no_kdf)
    return calls


def test_the_kdf_guard_is_where_the_reader_derives(kdf_forbidden) -> None:
    """Control for the tests below: with a valid header the patched KDF is reached."""
    with pytest.raises(AssertionError, match="the KDF ran"):
        ArchiveReader(io.BytesIO(seal(b"x")), passphrase=PASSPHRASE)
    assert len(kdf_forbidden) == 1


def test_scrypt_cost_too_high_for_its_block_size_is_refused_before_the_kdf(kdf_forbidden) -> None:
    """RFC 7914 wants N < 2**(16 r): OpenSSL refuses N = 2**16 with r = 1 (as a MemoryError, found by fuzzing)."""
    data = _set_field(_set_field(seal(b"x"), 15, ">B", 1), 14, ">B", 16)
    with pytest.raises(IntegrityError, match=r"log2\(N\) = 16 needs r of at least 2"):
        ArchiveReader(io.BytesIO(data), passphrase=PASSPHRASE)
    with pytest.raises(SpecRefusal, match="integrity"):
        spec_read(data, PASSPHRASE)
    assert kdf_forbidden == []
    valid = _set_field(_set_field(seal(b"x"), 15, ">B", 1), 14, ">B", 15)
    assert read_header(io.BytesIO(valid)).params.log2_n == 15  # N = 2**15 < 2**16 is allowed


@pytest.mark.parametrize(("offset", "fmt", "value", "message"), OUT_OF_RANGE)
def test_out_of_range_header_fields_are_refused_before_the_kdf(
    kdf_forbidden, offset, fmt, value, message
) -> None:
    data = _set_field(seal(b"x"), offset, fmt, value)
    with pytest.raises(IntegrityError, match=message) as raised:
        ArchiveReader(io.BytesIO(data), passphrase=PASSPHRASE)
    assert "header" in str(raised.value) and "invalid" in str(raised.value)
    with pytest.raises(IntegrityError, match=message):
        read_header(io.BytesIO(data))
    with pytest.raises(SpecRefusal, match="integrity"):
        spec_read(data, PASSPHRASE)
    assert kdf_forbidden == []


@pytest.mark.parametrize(
    ("log2_n", "r", "p", "refused"),
    [
        (18, 8, 1, False),  # 256 MiB: the limit itself
        (20, 2, 1, False),
        (13, 32, 16, False),
        (18, 9, 1, True),  # 288 MiB
        (19, 8, 1, True),
        (20, 8, 1, True),
        (17, 32, 1, True),
    ],
)
def test_scrypt_memory_limit(kdf_forbidden, log2_n, r, p, refused) -> None:
    data = seal(b"x")
    for offset, value in ((14, log2_n), (15, r), (16, p)):
        data = _set_field(data, offset, ">B", value)
    if refused:
        with pytest.raises(IntegrityError, match="scrypt would need .* MiB of memory"):
            read_header(io.BytesIO(data))
    else:
        header = read_header(io.BytesIO(data))
        assert header.params == ScryptParams(log2_n, r, p)
    assert kdf_forbidden == []


def test_a_huge_kdf_cost_is_refused_at_once() -> None:
    """No patching here: a header asking for N = 2**63, r = p = 255 fails in well under 1 s."""
    data = seal(payload_of(CHUNK))
    for offset, value in ((14, 63), (15, 255), (16, 255)):
        data = _set_field(data, offset, ">B", value)
    started = time.perf_counter()
    with pytest.raises(IntegrityError, match="outside"):
        ArchiveReader(io.BytesIO(data), passphrase=PASSPHRASE)
    assert time.perf_counter() - started < 0.5


def test_other_format_versions_are_named(kdf_forbidden) -> None:
    data = _set_field(seal(b"x"), 8, ">H", 2)
    message = "format version 2; this software reads version 1"
    with pytest.raises(IntegrityError, match=message) as raised:
        ArchiveReader(io.BytesIO(data), passphrase=PASSPHRASE)
    assert not isinstance(raised.value, NotABackupError)
    with pytest.raises(IntegrityError, match="format version 0;"):
        read_header(io.BytesIO(_set_field(data, 8, ">H", 0)))


def test_wrong_magic_is_not_a_backup(kdf_forbidden) -> None:
    data = seal(b"x")
    with pytest.raises(NotABackupError, match="is not an appliance-backup file"):
        read_header(io.BytesIO(b"PK\x03\x04" + data[4:]))
    named = io.BytesIO(b"%PDF-1.7\n" + bytes(200))
    named.name = "/mnt/backups/report.pdf"
    message = "'/mnt/backups/report.pdf' is not an appliance-backup file"
    with pytest.raises(NotABackupError, match=message):
        ArchiveReader(named, passphrase=PASSPHRASE)


def test_a_damaged_header_says_so(kdf_forbidden) -> None:
    data = bytearray(seal(b"x"))
    data[60] ^= 0x04  # inside the wrapped file key
    with pytest.raises(IntegrityError, match="header .* is damaged") as raised:
        ArchiveReader(io.BytesIO(bytes(data)), passphrase=PASSPHRASE)
    assert not isinstance(raised.value, NotABackupError)


def test_a_tampered_header_with_a_recomputed_checksum_is_refused() -> None:
    data = seal(payload_of(CHUNK + 1))
    # A field bound by the key wrap: the chunk size (still within limits).
    resized = _set_field(data, 34, ">I", 8192)
    with pytest.raises(WrongDmsError):
        open_all(resized)
    # The MAC itself.
    header = bytearray(data[:HEADER_LENGTH])
    header[100] ^= 0x01
    with pytest.raises(IntegrityError, match="tampered with"):
        open_all(with_checksum(header) + data[HEADER_LENGTH:])
    with pytest.raises(SpecRefusal, match="integrity"):
        spec_read(with_checksum(header) + data[HEADER_LENGTH:], PASSPHRASE)


def test_read_header_reports_the_fields() -> None:
    data = seal(b"x", cipher="chacha20-poly1305", chunk_size=8192)
    source = io.BytesIO(data)
    header = read_header(source)
    assert source.tell() == HEADER_LENGTH
    assert header.version == 1
    assert header.cipher == "chacha20-poly1305"
    assert header.kdf == "scrypt"
    assert header.params == SMALL
    assert header.salt == SALT
    assert header.chunk_size == 8192
    assert header.raw == data[:HEADER_LENGTH] and header.length == HEADER_LENGTH
    assert header.raw.hex() not in repr(header)


# Keys and the DMS ------------------------------------------------------------


def test_derive_kek_is_scrypt_over_nfc_utf8() -> None:
    salt = new_salt()
    assert len(salt) == 16 and salt != new_salt()
    passphrase = "Cafe\u0301 \u00fcber 🔑"
    password = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    expected = hashlib.scrypt(password, salt=salt, n=1024, r=8, p=1, dklen=32)
    kek = derive_kek(passphrase, salt, SMALL)
    assert kek.key == expected
    assert derive_kek(unicodedata.normalize("NFD", passphrase), salt, SMALL).key == expected
    assert (kek.salt, kek.params, kek.cipher) == (salt, SMALL, "aes-256-gcm")


def test_derive_kek_and_writer_refuse_unusable_parameters() -> None:
    with pytest.raises(ValueError, match="outside"):
        derive_kek(PASSPHRASE, SALT, ScryptParams(9, 8, 1))
    with pytest.raises(ValueError, match="memory"):
        derive_kek(PASSPHRASE, SALT, ScryptParams(20, 8, 1))
    with pytest.raises(ValueError, match="salt"):
        derive_kek(PASSPHRASE, b"short", SMALL)
    with pytest.raises(ValueError, match="cipher"):
        derive_kek(PASSPHRASE, SALT, SMALL, "rot13")
    for chunk_size in (2048, 4097, 32 << 20):
        with pytest.raises(ValueError, match="chunk size"):
            ArchiveWriter(io.BytesIO(), kek_for(), chunk_size=chunk_size)
    bad_params = KeyEncryptionKey(bytes(32), SALT, ScryptParams(21, 8, 1))
    with pytest.raises(ValueError, match="scrypt"):
        ArchiveWriter(io.BytesIO(), bad_params)
    with pytest.raises(ValueError):
        ArchiveWriter(io.BytesIO(), kek_for(), file_key=bytes(31))
    with pytest.raises(ValueError):
        ArchiveWriter(io.BytesIO(), kek_for(), wrap_nonce=bytes(11))
    with pytest.raises(ValueError):
        KeyEncryptionKey(bytes(16), SALT, SMALL)


def test_writer_defaults() -> None:
    kek = KeyEncryptionKey(bytes(range(32)), SALT, ScryptParams())
    writer = ArchiveWriter(io.BytesIO(), kek)
    assert writer.chunk_size == 1 << 20
    header = writer.header
    assert header.cipher == "aes-256-gcm"
    assert header.params == ScryptParams(17, 8, 1)
    assert header.chunk_size == 1 << 20


def test_wrong_passphrase_is_a_wrong_dms() -> None:
    data = seal(payload_of(100))
    with pytest.raises(WrongDmsError, match="passphrase does not open this backup"):
        open_all(data, passphrase="correct horse battery stapler")
    with pytest.raises(SpecRefusal, match="wrong_dms"):
        spec_read(data, "correct horse battery stapler")


def test_a_kek_with_another_salt_or_params_is_a_wrong_dms(kdf_forbidden) -> None:
    data = seal(payload_of(100))
    header = read_header(io.BytesIO(data))
    right = kek_for()
    other_salt = KeyEncryptionKey(right.key, bytes(16), right.params)
    other_params = KeyEncryptionKey(right.key, right.salt, ScryptParams(11, 8, 1))
    other_key = KeyEncryptionKey(bytes(32), right.salt, right.params)
    for kek in (other_salt, other_params):
        with pytest.raises(WrongDmsError, match="salt or parameters differ"):
            open_all(data, kek=kek)
        assert not opens_with(header, kek)
    with pytest.raises(WrongDmsError, match="different DMS"):
        open_all(data, kek=other_key)
    assert not opens_with(header, other_key)
    assert opens_with(header, right)
    assert open_all(data, kek=right) == payload_of(100)


def test_exactly_one_of_kek_and_passphrase() -> None:
    data = seal(b"x")
    with pytest.raises(ValueError):
        ArchiveReader(io.BytesIO(data))
    with pytest.raises(ValueError):
        ArchiveReader(io.BytesIO(data), kek=kek_for(), passphrase=PASSPHRASE)


# Secrets never shown ---------------------------------------------------------


def test_kek_repr_shows_no_key() -> None:
    kek = KeyEncryptionKey(bytes(range(100, 132)), SALT, SMALL)
    for text in (repr(kek), str(kek), f"{kek}", repr([kek])):
        assert "<hidden>" in text
        assert kek.key.hex() not in text
        assert repr(kek.key)[2:-1] not in text
        assert "key=b" not in text
    assert SALT.hex() in repr(kek)


def _archive_frame_locals(error: BaseException) -> list[str]:
    summary = traceback.TracebackException.from_exception(error, capture_locals=True)
    values = []
    for frame in summary.stack:
        if frame.filename.endswith(os.path.join("backup", "archive.py")):
            values.extend((frame.locals or {}).values())
    assert values, "the traceback passed through no frame of backup/archive.py"
    return values


def test_no_secret_in_errors_or_traceback_locals() -> None:
    secret = "hunter2-but-much-longer"
    wrong_key = derive_kek(secret, SALT, SMALL).key
    data = seal(payload_of(3 * CHUNK))
    with pytest.raises(WrongDmsError) as raised:
        ArchiveReader(io.BytesIO(data), passphrase=secret)
    shown = [str(raised.value), repr(raised.value), *_archive_frame_locals(raised.value)]
    for text in shown:
        assert secret not in text
        assert wrong_key.hex() not in text and repr(wrong_key)[2:-1] not in text
        assert kek_for().key.hex() not in text and repr(kek_for().key)[2:-1] not in text

    damaged = bytearray(data)
    damaged[-1] ^= 1
    reader = ArchiveReader(io.BytesIO(bytes(damaged)), kek=kek_for())
    with pytest.raises(IntegrityError) as raised:
        reader.read()
    for text in [str(raised.value), *_archive_frame_locals(raised.value)]:
        assert kek_for().key.hex() not in text and repr(kek_for().key)[2:-1] not in text


def test_no_file_key_in_traceback_locals_when_the_sink_fails() -> None:
    class BrokenSink:
        def write(self, data):
            raise OSError(5, "Input/output error")

    with pytest.raises(OSError) as raised:
        ArchiveWriter(BrokenSink(), kek_for(), file_key=FILE_KEY, wrap_nonce=WRAP_NONCE)
    for text in _archive_frame_locals(raised.value):
        assert FILE_KEY.hex() not in text and repr(FILE_KEY)[2:-1] not in text
        assert repr(kek_for().key)[2:-1] not in text


def test_archive_imports_only_the_errors_module_of_the_core() -> None:
    code = (
        "import sys, backup.archive; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('backup', 'textual')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    assert result.stdout.strip() == "['backup', 'backup.archive', 'backup.errors']"


# Test vectors ----------------------------------------------------------------

INDEX = json.loads((VECTORS / "vectors.json").read_text(encoding="utf-8"))
KINDS = {"integrity": IntegrityError, "not_a_backup": NotABackupError, "wrong_dms": WrongDmsError}


def test_vectors_cover_what_the_brief_asks() -> None:
    valid = {entry["name"]: entry for entry in INDEX["valid"]}
    assert valid["empty"]["plaintext_length"] == 0
    assert 0 < valid["short"]["plaintext_length"] < valid["short"]["chunk_size"]
    assert valid["multi"]["plaintext_length"] > 2 * valid["multi"]["chunk_size"]
    assert {entry["cipher"] for entry in valid.values()} == set(CIPHERS)
    assert all(entry["scrypt"]["log2_n"] == 10 for entry in valid.values())


@pytest.mark.parametrize("entry", INDEX["valid"], ids=lambda entry: entry["name"])
def test_valid_vector(entry) -> None:
    data = (VECTORS / entry["file"]).read_bytes()
    expected = (VECTORS / entry["plaintext_file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["file_sha256"]
    assert hashlib.sha256(expected).hexdigest() == entry["plaintext_sha256"]
    assert len(expected) == entry["plaintext_length"]
    passphrase = entry["passphrase"]
    assert ArchiveReader(io.BytesIO(data), passphrase=passphrase).read() == expected
    assert spec_read(data, passphrase) == expected
    if passphrase != unicodedata.normalize("NFD", passphrase):
        decomposed = unicodedata.normalize("NFD", passphrase)
        assert ArchiveReader(io.BytesIO(data), passphrase=decomposed).read() == expected
    header = read_header(io.BytesIO(data))
    assert header.cipher == entry["cipher"]
    assert header.salt.hex() == entry["salt"]
    assert header.chunk_size == entry["chunk_size"]
    assert header.params == ScryptParams(**entry["scrypt"])
    kek = derive_kek(passphrase, header.salt, header.params, header.cipher)
    # The writer reproduces the file byte for byte from the listed inputs.
    sink = io.BytesIO()
    writer = ArchiveWriter(
        sink,
        kek,
        chunk_size=entry["chunk_size"],
        file_key=bytes.fromhex(entry["file_key"]),
        wrap_nonce=bytes.fromhex(entry["wrap_nonce"]),
    )
    writer.write(expected)
    writer.close()
    assert sink.getvalue() == data


@pytest.mark.parametrize("entry", INDEX["invalid"], ids=lambda entry: entry["name"])
def test_invalid_vector(entry) -> None:
    data = (VECTORS / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["file_sha256"]
    expected = KINDS[entry["expect"]]
    with pytest.raises(expected) as raised:
        ArchiveReader(io.BytesIO(data), passphrase=entry["passphrase"]).read()
    if entry["expect"] == "integrity":
        assert not isinstance(raised.value, NotABackupError)
    with pytest.raises(SpecRefusal, match=entry["expect"]):
        spec_read(data, entry["passphrase"])


def _generator():
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_vector_generator_reproduces_the_committed_files(tmp_path) -> None:
    generator = _generator()
    assert generator.check(VECTORS) == []
    listed = {entry["file"] for entry in INDEX["valid"] + INDEX["invalid"]}
    listed |= {entry["plaintext_file"] for entry in INDEX["valid"]}
    committed = {path.name for path in VECTORS.iterdir() if path.suffix in (".abk", ".plain")}
    assert committed == listed
    # The check notices a changed byte.
    copy = tmp_path / "vectors"
    shutil.copytree(VECTORS, copy)
    changed = bytearray((copy / "multi.abk").read_bytes())
    changed[-1] ^= 1
    (copy / "multi.abk").write_bytes(bytes(changed))
    assert generator.check(copy) == ["multi.abk differs from what the generator produces"]
