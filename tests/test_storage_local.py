"""Tests of the storage protocol on the local-directory backend.

`StorageContract` is the behaviour every backend shares; the NFS tests
(tests/test_storage_nfs.py) run the same class against a real NFS server.
A subclass provides the `storage` fixture (an empty storage) and `make_dir`.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import pytest

from backup.errors import BackupNotFoundError, StorageError, StorageFullError
from backup.storage import PARTIAL_SUFFIX, Storage
from backup.storage.local import LocalStorage


def names(storage: Storage, path: str = "") -> list[str]:
    return sorted(e.name for e in storage.list(path))


def put(storage: Storage, name: str, data: bytes) -> None:
    out = storage.create(name)
    out.write(data)
    out.commit()


class StorageContract:
    """What the backup core relies on, for any backend."""

    storage: Storage
    make_dir: Callable[[str], None]

    def test_empty(self, storage: Storage) -> None:
        assert storage.list("") == []
        assert storage.list() == []

    def test_create_commit_is_listed_private_and_durable(self, storage: Storage) -> None:
        data = os.urandom(3 * 1024 * 1024 + 17)
        out = storage.create("a.abk")
        assert out.name == "a.abk"
        half = len(data) // 2
        assert out.write(data[:half]) == half
        assert out.write(data[half:]) == len(data) - half
        assert out.written == len(data)
        out.commit()
        [entry] = storage.list("")
        assert (entry.name, entry.is_dir, entry.size) == ("a.abk", False, len(data))
        assert entry.mode == 0o600
        st = storage.stat("a.abk")
        assert (st.name, st.size, st.mode, st.is_dir) == ("a.abk", len(data), 0o600, False)
        assert st.mtime > 0
        with storage.open("a.abk") as f:
            assert f.read() == data

    def test_partial_name_while_writing(self, storage: Storage) -> None:
        out = storage.create("b.abk")
        out.write(b"x" * 1000)
        assert names(storage) == ["b.abk" + PARTIAL_SUFFIX]
        with pytest.raises(BackupNotFoundError):
            storage.stat("b.abk")
        out.commit()
        assert names(storage) == ["b.abk"]

    def test_abort_leaves_nothing(self, storage: Storage) -> None:
        out = storage.create("c.abk")
        out.write(os.urandom(100_000))
        out.abort()
        assert names(storage) == []

    def test_empty_file(self, storage: Storage) -> None:
        storage.create("e.abk").commit()
        assert storage.stat("e.abk").size == 0
        with storage.open("e.abk") as f:
            assert f.read() == b""

    def test_second_writer_of_the_same_name_is_refused(self, storage: Storage) -> None:
        first = storage.create("d.abk")
        with pytest.raises(StorageError):
            storage.create("d.abk")
        first.write(b"first")
        first.commit()
        with storage.open("d.abk") as f:
            assert f.read() == b"first"

    def test_commit_never_replaces_an_existing_backup(self, storage: Storage) -> None:
        put(storage, "f.abk", b"old")
        out = storage.create("f.abk")
        out.write(b"new")
        with pytest.raises(StorageError, match="already exists"):
            out.commit()
        assert names(storage) == ["f.abk"]
        with storage.open("f.abk") as f:
            assert f.read() == b"old"

    def test_open_read_readinto_seek_tell(self, storage: Storage) -> None:
        data = os.urandom(5 * 1024 * 1024 + 3)
        put(storage, "g.abk", data)
        with storage.open("g.abk") as f:
            assert f.read(10) == data[:10]
            assert f.tell() == 10
            buffer = bytearray(2 * 1024 * 1024)
            count = f.readinto(buffer)
            assert count == len(buffer) and bytes(buffer) == data[10:10 + count]
            assert f.tell() == 10 + count
            assert f.seek(0) == 0 and f.tell() == 0
            assert f.read(4) == data[:4]
            f.seek(0)
            chunks = []
            while chunk := f.read(1024 * 1024 + 7):
                chunks.append(chunk)
            assert b"".join(chunks) == data
            assert f.tell() == len(data)
            assert f.read() == b""

    def test_missing_backup(self, storage: Storage) -> None:
        with pytest.raises(BackupNotFoundError):
            storage.open("missing.abk")
        with pytest.raises(BackupNotFoundError):
            storage.stat("missing.abk")
        with pytest.raises(BackupNotFoundError):
            storage.delete("missing.abk")

    def test_missing_directory_is_a_storage_error(self, storage: Storage) -> None:
        with pytest.raises(StorageError) as info:
            storage.list("no-such-dir")
        assert not isinstance(info.value, BackupNotFoundError)
        assert "does not exist" in str(info.value)

    def test_delete(self, storage: Storage) -> None:
        put(storage, "h.abk", b"h")
        put(storage, "i.abk", b"i")
        storage.delete("h.abk")
        assert names(storage) == ["i.abk"]

    def test_subdirectory(self, storage: Storage) -> None:
        self.make_dir("sub")
        [entry] = storage.list("")
        assert (entry.name, entry.is_dir) == ("sub", True)
        assert storage.stat("sub").is_dir
        assert storage.list("sub") == []
        assert storage.access("sub") == (True, True)

    def test_usage(self, storage: Storage) -> None:
        usage = storage.usage("")
        assert usage.total > 0
        assert 0 <= usage.used <= usage.total
        assert 0 <= usage.free <= usage.total

    def test_access(self, storage: Storage) -> None:
        assert storage.access("") == (True, True)
        assert storage.access("no-such-dir") == (False, False)

    @pytest.mark.parametrize("path", ["../x", "/etc", "a/../../x"])
    def test_paths_outside_are_refused(self, storage: Storage, path: str) -> None:
        with pytest.raises(StorageError, match="not inside"):
            storage.list(path)
        with pytest.raises(StorageError, match="not inside"):
            storage.open(path)

    def test_paged_listing(self, storage: Storage) -> None:
        for i in range(23):
            put(storage, f"p{i:02d}.abk", b"")
        everything = [e.name for e in storage.list("")]
        assert sorted(everything) == [f"p{i:02d}.abk" for i in range(23)]
        pages = []
        offset = 0
        while page := storage.list("", offset=offset, limit=5):
            assert len(page) <= 5
            pages += [e.name for e in page]
            offset += len(page)
        assert pages == everything
        assert [e.name for e in storage.list("", offset=20, limit=100)] == everything[20:]
        assert [e.name for e in storage.list("", offset=7, limit=3)] == everything[7:10]
        assert storage.list("", offset=23) == []
        assert storage.list("", limit=0) == []


class TestLocalStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> LocalStorage:
        root = tmp_path / "backups"
        root.mkdir()
        self.make_dir = lambda name: (root / name).mkdir()
        return LocalStorage(root)

    def test_description(self, tmp_path: Path) -> None:
        assert LocalStorage(tmp_path).description == f"local directory {tmp_path}"

    def test_create_in_missing_directory(self, tmp_path: Path) -> None:
        with pytest.raises(StorageError, match="does not exist"):
            LocalStorage(tmp_path / "nope").create("a.abk")


def _as_nobody(code: str, root: Path) -> str:
    """Run `code` in a forked child that dropped root (uid/gid 65534); return what it printed.

    The venv's interpreter lives under /root here, unreadable to nobody, so a
    fresh process cannot be started as nobody: the child is forked instead.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            out = io.StringIO()
            sys.stdout = out
            exec(code, {"LocalStorage": LocalStorage, "root": root, "StorageError": StorageError})
            os.write(write, out.getvalue().encode())
        except BaseException as exc:  # noqa: BLE001
            os.write(write, f"child failed: {type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


class TestLocalStorageFailures:
    def test_permission_denied_for_an_unprivileged_process(self) -> None:
        # Root bypasses file permissions, so the check runs in a child that dropped to nobody.
        if os.geteuid() != 0:
            pytest.skip("needs root to drop to another user")
        # pytest's tmp_path sits below a 0700 directory that nobody cannot enter.
        base = Path(tempfile.mkdtemp(prefix="abk-perm-"))
        base.chmod(0o755)
        root = base / "backups"
        root.mkdir(mode=0o755)
        (root / "readable.abk").write_bytes(b"x")
        try:
            out = self._check_as_nobody(root)
        finally:
            shutil.rmtree(base)
        lines = out.splitlines()
        assert lines[0] == "(True, False)", out
        assert lines[1] == "['readable.abk']", out
        assert lines[2].startswith("StorageError Permission denied: Creating"), out

    @staticmethod
    def _check_as_nobody(root: Path) -> str:
        return _as_nobody(
            "s = LocalStorage(root)\n"
            "print(s.access(''))\n"
            "print([e.name for e in s.list('')])\n"
            "try:\n"
            "    s.create('a.abk')\n"
            "except StorageError as exc:\n"
            "    print(type(exc).__name__, exc)\n",
            root,
        )

    def test_disk_full_on_a_small_tmpfs(self, tmp_path: Path) -> None:
        mount_point = tmp_path / "small"
        mount_point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mount_point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"this machine refuses a tmpfs mount ({result.stderr.strip()}), so ENOSPC cannot be produced")
        try:
            storage = LocalStorage(mount_point)
            out = storage.create("big.abk")
            with pytest.raises(StorageFullError, match="The storage is full"):
                for _ in range(64):
                    out.write(b"\0" * 65536)
            out.abort()
            assert storage.list("") == []
        finally:
            subprocess.run(["umount", str(mount_point)], check=True)


def _cached_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache (mincore(2) over a read-only mapping)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with open(path, "rb") as f:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vector = (ctypes.c_ubyte * pages)()
            assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
            return sum(v & 1 for v in vector)
        finally:
            libc.munmap(address, size)


class TestWriteBack:
    """The disk writes a backup while it is made, and the finished file does not stay in the page cache."""

    def test_ranges_are_handed_to_the_disk_as_they_are_written(self, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
        from backup import fsutil

        step = 1 << 20
        monkeypatch.setattr(fsutil, "WRITEBACK_STEP", step)
        advised = []
        real = os.posix_fadvise

        def recording(fd: int, offset: int, length: int, advice: int) -> None:
            advised.append((offset, length, advice))
            real(fd, offset, length, advice)  # the real call: only its arguments are recorded

        monkeypatch.setattr(fsutil.os, "posix_fadvise", recording)
        data = os.urandom(5 * step + 12_345)
        out = LocalStorage(tmp_path).create("a.abk")
        for i in range(0, len(data), 256 << 10):
            out.write(data[i:i + (256 << 10)])
        assert [(o, n) for o, n, _ in advised] == [(0, step), (0, 2 * step), (step, 2 * step), (2 * step, 2 * step),
                                                  (3 * step, 2 * step)]
        out.commit()
        assert advised[-1][:2] == (0, 0)  # after the fsync: the whole file
        assert {a for _, _, a in advised} == {os.POSIX_FADV_DONTNEED}
        assert (tmp_path / "a.abk").read_bytes() == data

    def test_a_committed_backup_leaves_the_page_cache(self, tmp_path: Path) -> None:
        data = os.urandom(8 << 20)
        out = LocalStorage(tmp_path).create("a.abk")
        out.write(data)
        assert _cached_pages(tmp_path / ("a.abk" + PARTIAL_SUFFIX)) > 0
        out.commit()
        assert _cached_pages(tmp_path / "a.abk") == 0
        with open(tmp_path / "a.abk", "rb") as f:
            assert f.read() == data
