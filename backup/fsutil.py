"""Provides crash-safe file writing: temp file, fsync, rename, fsync the directory."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

WRITEBACK_STEP = 32 * 1024 * 1024
"""Every this many bytes written, WriteBehind asks the kernel to start putting them on the disk."""


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Make everything written to the filesystem holding `path` durable, in one call.

    One syncfs(2) replaces thousands of per-file fsyncs when a restore has
    staged a whole tree; os.sync() where syncfs is not available.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


class WriteBehind:
    """Hands a file written front to back to the disk as it grows, and drops what is written from the cache.

    Call wrote() after each write. Every WRITEBACK_STEP bytes, the new part's
    writeback starts and the part started one step earlier, on the disk by
    then, leaves the page cache: at most two steps of the file stay cached.

    Without it the kernel writes nothing until the final fsync, which then
    waits for the whole file while the CPU idles; this way the disk writes
    while the caller compresses or decompresses. Dropping the written pages
    keeps a big file (a backup, a restored database) from pushing the
    appliance's own files out of the cache, and the next writes reuse the
    freed pages: on this VM, where fresh page-cache pages are slow to touch,
    writing 700 MiB took 0.7-0.9 s instead of 1.8-1.9 s (fsync included).
    It is only advice: where it is not supported (tmpfs, some shares)
    nothing changes.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.written = 0
        self._advised = 0
        """Where the last request to start writing back ended."""
        self._kept = 0
        """Where the part still left in the page cache starts."""

    def wrote(self, n: int) -> None:
        """`n` more bytes were written at the end of the file."""
        self.written += n
        if self.written - self._advised >= WRITEBACK_STEP:
            self.drop(self._kept, self.written - self._kept)
            self._kept, self._advised = self._advised, self.written

    def drop(self, start: int = 0, length: int = 0) -> None:
        """Start writing back the range and forget its pages already written (0 bytes: to the end of the file)."""
        try:
            os.posix_fadvise(self.fd, start, length, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data` so a crash leaves the old or the new file, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def ensure_private_dir(path: Path) -> None:
    """Create `path` and each missing folder above it with mode 0700, whatever the umask.

    mkdir's mode is filtered by the umask, and `mkdir -p` (Path.mkdir(parents=True)) makes the
    parents with the umask's mode alone: 0777 under umask 000, which let another user replace the
    state directory. Each level is made 0700 and set so explicitly; an existing folder keeps its
    mode (backup.trust refuses one that others may write). The process umask is left alone:
    hooks and the appliance's own files made during a restore are not this function's business.
    """
    path = Path(path)
    missing = []
    level = path
    while not level.is_dir() and level != level.parent:
        missing.append(level)
        level = level.parent
    for level in reversed(missing):
        try:
            os.mkdir(level, 0o700)
        except FileExistsError:
            if level.is_dir():
                continue  # made by another process meanwhile
            raise
        if stat.S_IMODE(os.lstat(level).st_mode) != 0o700:  # a umask that took the owner's bits
            os.chmod(level, 0o700)



PATH_LIMIT = 3072
"""Bytes of a path handed to the kernel in one piece. PATH_MAX (4096) bounds every path a system call
takes, but not how deep a tree goes: a firmware tree 5,000 folders deep has paths of 10,000 bytes and
more. Longer paths are reached a piece at a time (reach, open_directory)."""


def open_directory(path: str | os.PathLike[str]) -> int:
    """A descriptor of the directory `path`, however long the path: opened in pieces under PATH_LIMIT."""
    rest = os.fsencode(path)
    if len(rest) < PATH_LIMIT:
        return os.open(os.fspath(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # errors name it as given
    fd: int | None = None
    try:
        while rest:
            if len(rest) < PATH_LIMIT:
                piece, rest = rest, b""
            else:
                cut = rest.rfind(b"/", 1, PATH_LIMIT)
                if cut < 1:
                    raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), os.fsdecode(path))
                piece, rest = rest[:cut], rest[cut + 1:]
            opened = os.open(piece, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            if fd is not None:
                os.close(fd)
            fd = opened
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        raise OSError(exc.errno, exc.strerror, os.fsdecode(path)) from None
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    if fd is None:
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), "")
    return fd


@contextmanager
def reach(path: str | os.PathLike[str]) -> Iterator[tuple[int | None, str]]:
    """(dir_fd, name) for the *at() form of a call on `path` (os.open(name, ..., dir_fd=dir_fd)): the path
    itself and None when it is short enough, else its directory opened in pieces and its last name."""
    text = os.fspath(path)
    if len(os.fsencode(text)) < PATH_LIMIT:
        yield None, text
        return
    parent, name = os.path.split(text)
    fd = open_directory(parent)
    try:
        yield fd, name
    finally:
        os.close(fd)


def remove_tree(path: str | os.PathLike[str], *, ignore_errors: bool = False) -> None:
    """Remove the directory `path` and everything in it, however deep (shutil.rmtree of Python 3.11
    recurses, one frame per level, and fails with RecursionError near 1,000 levels). Links are removed,
    never followed. Two descriptors are open at a time: the walk goes back up through "..".
    A missing `path` is no error; with `ignore_errors`, the first other failure ends it quietly."""
    try:
        _remove_tree(path)
    except OSError:
        if not ignore_errors:
            raise


def _remove_tree(path: str | os.PathLike[str]) -> None:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        with reach(path) as (dir_fd, name):
            fd = os.open(name, flags, dir_fd=dir_fd)  # a link to a directory is refused (ELOOP), as rmtree does
    except FileNotFoundError:
        return
    names: list[str] = []
    try:
        while True:
            below = None
            with os.scandir(fd) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        below = entry.name
                        break
                    os.unlink(entry.name, dir_fd=fd)
            if below is not None:
                child = os.open(below, flags, dir_fd=fd)
                os.close(fd)
                fd = child
                names.append(below)
                continue
            if not names:
                break
            parent = os.open("..", flags, dir_fd=fd)
            os.close(fd)
            fd = parent
            os.rmdir(names.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    with reach(path) as (dir_fd, name):
        try:
            os.rmdir(name, dir_fd=dir_fd)
        except FileNotFoundError:  # removed meanwhile by someone else: gone all the same
            pass
