"""The payload writer: what it stores is exactly the files, whichever path a file takes.

Small files (up to SMALL_FILE) are read in one piece, hashed on the writing
thread and gathered with their headers before zstd gets them; larger files are
streamed in blocks and hashed on the hash thread. Headers come from a fast
builder for plain entries and from tarfile for the rest. These tests read the
payload back with tarfile itself, so any slip in a header, a padding or a
checksum shows as a difference.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from backup import payload
from backup.errors import BackupError
from backup.payload import (
    CHECKSUMS_NAME,
    GATHER,
    READ_SIZE,
    SMALL_FILE,
    PayloadWriter,
    SourceEntry,
    decompressed,
    open_tar_stream,
    tar_header,
)
from backup.progress import Tracker

SIZES = (0, 1, 511, 512, 513, 12_345, SMALL_FILE - 1, SMALL_FILE, SMALL_FILE + 1, GATHER - 1, GATHER + 7,
         3 * READ_SIZE + 5)


def _entry(path: Path, arcname: str) -> SourceEntry:
    st_ = os.lstat(path)
    kind = "dir" if path.is_dir() and not path.is_symlink() else "symlink" if path.is_symlink() else "file"
    return SourceEntry(arcname=arcname, path=path, kind=kind, size=st_.st_size if kind == "file" else 0,
                       mode=st_.st_mode & 0o7777, mtime=st_.st_mtime, uid=st_.st_uid, gid=st_.st_gid,
                       link=os.readlink(path) if kind == "symlink" else "")


def _write_payload(entries: list[SourceEntry]) -> tuple[bytes, Tracker]:
    sink = io.BytesIO()
    tracker = Tracker("backup", None, None)
    writer = PayloadWriter(sink, tracker)
    for entry in entries:
        writer.add_entry(entry)
    writer.close()
    return sink.getvalue(), tracker


def _read_payload(payload: bytes) -> tuple[dict[str, tuple[tarfile.TarInfo, bytes]], dict]:
    tar = open_tar_stream(decompressed(io.BytesIO(payload)))
    members = {}
    checksums = None
    for member in tar:
        data = tar.extractfile(member).read() if member.isfile() else b""
        if member.name == CHECKSUMS_NAME:
            checksums = json.loads(data)
        else:
            members[member.name] = (member, data)
    assert checksums is not None
    return members, checksums


def test_files_of_every_size_come_back_exactly(tmp_path: Path) -> None:
    root = tmp_path / "system"
    root.mkdir()
    entries = [_entry(root, "system")]
    contents = {}
    for size in SIZES:
        path = root / f"file-{size}"
        contents[f"system/{path.name}"] = data = os.urandom(size)
        path.write_bytes(data)
        os.utime(path, (1_700_000_000, 1_700_000_000 + size))
        entries.append(_entry(path, f"system/{path.name}"))
    (root / "sub").mkdir()
    (root / "link").symlink_to("sub")
    entries += [_entry(root / "sub", "system/sub"), _entry(root / "link", "system/link")]

    payload, tracker = _write_payload(entries)
    members, checksums = _read_payload(payload)

    assert sorted(members) == sorted(["system", "system/sub", "system/link", *contents])
    for name, data in contents.items():
        member, stored = members[name]
        assert stored == data, name
        assert member.mtime == 1_700_000_000 + len(data)
        assert checksums["files"][name] == hashlib.sha256(data).hexdigest()
    assert members["system/link"][0].issym() and members["system/link"][0].linkname == "sub"
    assert members["system/sub"][0].isdir()
    assert tracker.done == sum(SIZES)


@pytest.mark.parametrize("size", [100, SMALL_FILE + READ_SIZE])
@pytest.mark.parametrize("change", [-1, +10])
def test_a_file_that_changed_since_the_scan_is_stored_as_it_is_now(tmp_path: Path, size: int, change: int) -> None:
    """Never cut at (or padded to) the scanned size: a writer that saves by rename leaves a new, whole file."""
    path = tmp_path / "f"
    path.write_bytes(b"a" * size)
    scanned = _entry(path, "system/f")
    new = b"b" * (size + change)
    path.with_name("f.new").write_bytes(new)
    os.rename(path.with_name("f.new"), path)
    members, checksums = _read_payload(_write_payload([scanned])[0])
    assert members["system/f"][1] == new
    assert checksums["files"]["system/f"] == hashlib.sha256(new).hexdigest()


def test_a_small_file_written_while_it_is_read_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: a writer strikes between the look at the file and its read (a window too short to hit)."""
    path = tmp_path / "acl.conf"
    path.write_text('mode = "strict"\n')
    scanned = _entry(path, "system/acl.conf")
    real = payload._read_up_to
    calls = []

    def writer_strikes(fd: int, limit: int) -> bytes:
        calls.append(limit)
        if len(calls) == 1:
            with open(path, "r+") as f:  # in place, as an editor without rename does
                f.write('mode = "permissive"\nallowed = ["0.0.0.0/0"]\n')
        return real(fd, limit)

    monkeypatch.setattr(payload, "_read_up_to", writer_strikes)
    members, _ = _read_payload(_write_payload([scanned])[0])
    assert len(calls) == 2
    assert members["system/acl.conf"][1] == b'mode = "permissive"\nallowed = ["0.0.0.0/0"]\n'


def test_a_small_file_that_never_stops_changing_fails_the_backup_by_name(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "busy.conf"
    path.write_text("0\n")
    scanned = _entry(path, "system/busy.conf")
    real = payload._read_up_to

    def always_written(fd: int, limit: int) -> bytes:
        data = real(fd, limit)
        path.write_text(str(int(path.read_text()) + 1) + "\n")
        return data

    monkeypatch.setattr(payload, "_read_up_to", always_written)
    with pytest.raises(BackupError, match=f"busy.conf changed each of the {payload.READ_ATTEMPTS} times"):
        _write_payload([scanned])


@pytest.mark.parametrize(("what", "words"), [("written", "changed while it was being backed up"),
                                             ("shortened", "became shorter")])
def test_a_large_file_changed_while_it_streams_fails_the_backup_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       what: str, words: str) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(SMALL_FILE + 3 * READ_SIZE))
    scanned = _entry(path, "system/big.bin")
    real = PayloadWriter._write
    blocks = []

    def writer_strikes(self, data) -> None:
        blocks.append(len(data))
        if len(blocks) == 3:  # the header and the first block are on their way
            if what == "written":
                with open(path, "r+b") as f:
                    f.write(b"changed")
            else:
                os.truncate(path, READ_SIZE)
        real(self, data)

    monkeypatch.setattr(PayloadWriter, "_write", writer_strikes)
    with pytest.raises(BackupError, match=words):
        _write_payload([scanned])


def test_a_file_gone_or_replaced_since_the_scan_is_left_out(tmp_path: Path) -> None:
    root = tmp_path / "system"
    root.mkdir()
    for name in ("deleted", "now-a-folder", "now-a-link", "now-a-fifo", "kept"):
        (root / name).write_text(name)
    entries = [_entry(root, "system"), *(_entry(root / n, f"system/{n}") for n in
                                         ("deleted", "now-a-folder", "now-a-link", "now-a-fifo", "kept"))]
    (root / "deleted").unlink()
    (root / "now-a-folder").unlink()
    (root / "now-a-folder").mkdir()
    (root / "now-a-link").unlink()
    os.symlink("kept", root / "now-a-link")
    (root / "now-a-fifo").unlink()
    os.mkfifo(root / "now-a-fifo")  # opening it for reading would wait for a writer forever
    members, checksums = _read_payload(_write_payload(entries)[0])
    assert sorted(members) == ["system", "system/kept"]
    assert sorted(checksums["files"]) == ["system/kept"]


_names = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-/", min_size=1, max_size=120),
    st.text(min_size=1, max_size=40).filter(lambda s: "\0" not in s),
)
_numbers = st.one_of(st.integers(0, 8 ** 7), st.integers(-5, 8 ** 12), st.sampled_from([0, 8 ** 7 - 1, 8 ** 11 - 1]))


@settings(max_examples=400, deadline=None)
@given(name=_names, kind=st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE]),
       link=_names, mode=st.integers(0, 0o177777), uid=_numbers, gid=_numbers, size=_numbers, mtime=_numbers)
def test_the_fast_header_is_byte_for_byte_tarfiles(name: str, kind: bytes, link: str, mode: int, uid: int,
                                                     gid: int, size: int, mtime: int) -> None:
    """Compared with the running Python's tarfile (3.11.4 on leaves device fields empty for these types)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, mtime
    info.size = size if kind == tarfile.REGTYPE else 0
    info.linkname = link if kind == tarfile.SYMTYPE else ""
    assert tar_header(info) == info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


@pytest.mark.parametrize("cut", [1, 511, 512, 100_000, READ_SIZE + 3])
def test_a_payload_of_several_zstd_frames_reads_whole(cut: int) -> None:
    """docs/FORMAT.md: the payload is one or more zstd frames, and a frame may end anywhere."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, size in (("system/a", 700_000), ("system/b", 3 * READ_SIZE)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes([size % 251]) * size))
    tar_bytes = raw.getvalue()
    frames = (zstandard.ZstdCompressor(level=3, write_checksum=True).compress(tar_bytes[:cut])
              + zstandard.ZstdCompressor(level=1).compress(tar_bytes[cut:]))
    tar = open_tar_stream(decompressed(io.BytesIO(frames)))
    assert [(m.name, tar.extractfile(m).read()) for m in tar] == [
        ("system/a", bytes([700_000 % 251]) * 700_000), ("system/b", bytes([3 * READ_SIZE % 251]) * 3 * READ_SIZE)]


def test_the_manifest_of_a_tree_full_of_fifos_stays_readable(tmp_path: Path) -> None:
    scan = payload.ComponentScan(name="system", source=tmp_path,
                                 skipped=[f"system/fifo-{i:06d}-" + "x" * 90 for i in range(50_000)])
    manifest = payload.build_manifest(appliance="a", software_version="1", created_at="now", scans=[scan],
                                      database_bytes=0, database_source="/d")
    assert len(json.dumps(manifest, indent=1).encode()) < payload.MAX_MANIFEST
    component = manifest["components"][0]
    assert len(component["skipped"]) == payload.MAX_SKIPPED_LISTED
    assert component["skipped_more"] == 50_000 - payload.MAX_SKIPPED_LISTED


def test_a_checksum_list_too_long_to_read_back_fails_the_backup(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payload, "MAX_CHECKSUMS", 300)  # a few files stand for the 216,000 it takes at 64 MiB
    entries = []
    for i in range(5):
        (tmp_path / f"file-{i}").write_text("x")
        entries.append(_entry(tmp_path / f"file-{i}", f"system/file-{i}"))
    with pytest.raises(BackupError, match="too many files for one backup"):
        _write_payload(entries)

