"""Provides the local-directory storage backend (also any share the system already mounted)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from backup.errors import BackupNotFoundError, StorageError, StorageFullError
from backup.fsutil import WriteBehind, fsync_dir
from backup.humanize import printable
from backup.storage import PARTIAL_SUFFIX, Entry, Usage

OPEN_FOR_READING = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""How a file in the storage is opened: never through a link, never waiting for a FIFO's writer or a
device (anyone who can write to the storage could have put one under a backup's name)."""


def not_a_backup(name: str, description: str) -> BackupNotFoundError:
    return BackupNotFoundError(f"{printable(name)} in the {description} is not a regular file (a link, FIFO, "
                               "socket or device stands there): it is no backup and was not opened.")


def storage_error(exc: OSError, what: str) -> StorageError:
    """Turn an OSError into the sentence the operator sees."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(f"The storage is full: {what} failed for lack of space. Free space or choose another location.")
    if exc.errno == errno.EROFS:
        return StorageError(f"The storage is read-only: {what} failed. Mount it read-write or choose another location.")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StorageError(f"Permission denied: {what} failed. Give the appliance write access or choose another location.")
    if exc.errno == errno.ENOENT:
        return StorageError(f"{what} failed: the location does not exist. Create it or choose another location.")
    return StorageError(f"{what} failed: {exc.strerror or exc}.")


class LocalFile:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.root = root
        self.final = root / name
        self.partial = root / (name + PARTIAL_SUFFIX)
        try:
            fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise storage_error(exc, f"Creating {self.partial}") from None
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._behind = WriteBehind(fd)
        """The disk writes the backup while it is made; the written parts leave the page cache."""

    @property
    def written(self) -> int:
        return self._behind.written

    def write(self, data: bytes) -> int:
        try:
            n = self._file.write(data)
        except OSError as exc:
            raise storage_error(exc, f"Writing {self.partial} (after {self.written} bytes)") from None
        self._behind.wrote(n)
        return n

    def commit(self) -> None:
        try:
            os.fsync(self._file.fileno())
            self._behind.drop()  # all of it is on the disk now: a backup is rarely read back soon
            self._file.close()
            if self.final.exists():
                raise StorageError(f"{self.final} already exists; the new backup was not put over it.")
            os.rename(self.partial, self.final)
            fsync_dir(self.root)
        except OSError as exc:
            self.abort()
            raise storage_error(exc, f"Finishing {self.final}") from None
        except StorageError:
            self.abort()
            raise

    def abort(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass
        try:
            os.unlink(self.partial)
        except OSError:
            pass


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.description = f"local directory {self.root}"

    def _path(self, path: str) -> Path:
        if path.startswith("/") or ".." in Path(path).parts:
            raise StorageError(f"The storage path {path!r} is not inside the storage location.")
        return self.root / path if path else self.root

    def list(self, path: str = "", *, offset: int = 0, limit: int | None = None) -> list[Entry]:
        directory = self._path(path)
        entries = []
        try:
            with os.scandir(directory) as it:
                for i, item in enumerate(it):
                    if i < offset:
                        continue
                    if limit is not None and len(entries) >= limit:
                        break
                    try:
                        entries.append(self._entry(item.name, item.stat(follow_symlinks=False)))
                    except OSError:
                        continue  # vanished: not something to show
        except OSError as exc:
            raise storage_error(exc, f"Listing {directory}") from None
        return entries

    def stat(self, path: str) -> Entry:
        target = self._path(path)
        try:  # the location itself may be a link (as configured); nothing inside it is followed
            return self._entry(target.name, os.stat(target, follow_symlinks=not path))
        except FileNotFoundError:
            raise BackupNotFoundError(f"{target} does not exist in the storage.") from None
        except OSError as exc:
            raise storage_error(exc, f"Reading {target}") from None

    def usage(self, path: str = "") -> Usage:
        try:
            st = os.statvfs(self._path(path))
        except OSError as exc:
            raise storage_error(exc, f"Reading the disk usage of {self._path(path)}") from None
        total = st.f_blocks * st.f_frsize
        return Usage(total=total, used=total - st.f_bfree * st.f_frsize, free=st.f_bavail * st.f_frsize)

    def access(self, path: str = "") -> tuple[bool, bool]:
        target = self._path(path)
        return os.access(target, os.R_OK | os.X_OK), os.access(target, os.W_OK | os.X_OK)

    def create(self, name: str) -> LocalFile:
        if not self.root.is_dir():
            if self.root.exists():
                raise StorageError(f"The storage path {self.root} is not a directory: choose a directory.")
            raise StorageError(f"The storage directory {self.root} does not exist: create it or choose another location.")
        return LocalFile(self.root, name)

    def open(self, name: str) -> BinaryIO:
        target = self._path(name)
        try:
            fd = self._open_below_root(target)
        except (FileNotFoundError, IsADirectoryError):  # a folder of that name is no backup either
            raise BackupNotFoundError(f"There is no backup named {printable(name)} in the {self.description}.") from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):  # a link on the way; a socket or lone device
                raise not_a_backup(name, self.description) from None
            raise storage_error(exc, f"Opening {printable(str(target))}") from None
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):  # a folder of that name is no backup either
                raise BackupNotFoundError(f"There is no backup named {printable(name)} in the {self.description}.")
            if not stat.S_ISREG(mode):
                raise not_a_backup(name, self.description)
            os.set_blocking(fd, True)
            return open(target, "rb", opener=lambda *_: fd)  # named by its path, as readers' messages need
        except BaseException:
            os.close(fd)
            raise

    def _open_below_root(self, target: Path) -> int:
        """`target` opened for reading with no link followed below the root (in a folder of the path as at
        its end); the root itself, the configured location, may be a link."""
        *folders, last = target.relative_to(self.root).parts
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for folder in folders:
                below = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = below
            return os.open(last, OPEN_FOR_READING, dir_fd=fd)
        finally:
            os.close(fd)

    def delete(self, name: str) -> None:
        target = self._path(name)
        try:
            os.unlink(target)
            fsync_dir(target.parent)
        except FileNotFoundError:
            raise BackupNotFoundError(f"There is no backup named {name} in the {self.description}.") from None
        except OSError as exc:
            raise storage_error(exc, f"Deleting {target}") from None

    @staticmethod
    def _entry(name: str, st: os.stat_result) -> Entry:
        return Entry(name=name, is_dir=stat.S_ISDIR(st.st_mode), size=st.st_size, mtime=st.st_mtime,
                     mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid, regular=stat.S_ISREG(st.st_mode))
