"""Provides the restore's extraction: members written into staging directories, never through a link.

The main thread only decrypts, decompresses and checks; the writing is done
beside it. Small files go to a worker thread: creating a file costs kernel
time (0.03 ms on this ext4 at best, 0.5 ms soon after mass deletions, see
bench/README.md), and the 5,000 files of an appliance add up (extraction of
the 1 GiB bench state: 8.1-9.7 s all on one thread, 6.6-8.0 s with one
worker, measured soon after deletions). A second worker did not help: the
creates contend in the kernel. Large files' blocks go, in order, to a writer
thread of their own (_LargeFile), and a flusher syncs the staging
filesystems as they fill (_Flusher).

Symbolic links are made last, once every file and directory exists, so no
member can be written through a link the backup itself brought (a chain of
links that each stay inside their folder can still lead out of it).

Extended attributes and POSIX ACLs are set on each file as it is finished,
and on folders at the very end with their modes: a folder's default ACL set
earlier would have given every file created inside it an ACL it never had.
An attribute the filesystem refuses (no support for its namespace, not
permitted to this user) is left off and named in `refused`; the restore goes on.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from backup.errors import IntegrityError, UnsafeArchiveError
from backup.fsutil import WriteBehind, reach, sync_filesystem
from backup.payload import PayloadConsumer, Stage, member_xattrs

WORKERS = 1
SMALL_FILE = 256 << 10
"""Files up to this size are held in memory and written by a worker; larger ones stream on the caller's thread."""
PENDING_BYTES = 64 << 20
"""At most this much file content waits for the workers (memory stays bounded).

Enough for the 62 MiB of small files of the bench's 1 GiB state: the caller
then runs ahead to the database (last in a backup) and writes it while the
worker still creates files (restore 4.6-5.7 s here, against 6.2-6.6 s with 16 MiB).
"""
OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
BATCH_FILES = 32
BATCH_BYTES = 1 << 20
"""Small files go to the worker this many (or this many bytes) at a time. One at a time, the worker,
faster than the main thread, went idle after each file and every hand-over woke it up again."""
LARGE_FILE_QUEUE = 16
"""Blocks (of up to 1 MiB) of large files that may wait for the writer thread."""
FLUSH_INTERVAL_S = 0.5
"""While files are extracted, the staging filesystems are synced this often (see _Flusher)."""
REFUSALS = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.EINVAL, errno.E2BIG, errno.ERANGE)
"""What setxattr says when this filesystem or this user cannot have an attribute: it is left off and named."""


class _Buffer(bytearray):
    """A small file's content while it is read from the backup (handed to a worker when complete)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def write(self, data: bytes) -> int:
        self.extend(data)
        return len(data)


class Extractor(PayloadConsumer):
    """Writes members into staging directories beside the targets; close() always, finish() on success."""

    def __init__(self, stages: dict[str, Path], db_stage: Path) -> None:
        self.stages = stages
        self.db_stage = db_stage
        self.dir_modes: list[tuple[Path, tarfile.TarInfo]] = []
        """Directories and their members: mode, attributes and mtime are set once everything inside them exists."""
        self.refused: list[tuple[str, bytes, int]] = []
        """Extended attributes the filesystem refused: (member name, attribute name, errno)."""
        self.links: dict[Path, tarfile.TarInfo] = {}
        self.seen_db = False
        self._folder: tuple[str, PurePosixPath, Path] | None = None
        """The last directory made (component, inner path, path): where the next members usually go."""
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="restore-write")  # files in archive order
        self._pending_bytes = 0
        self._room = threading.Condition()
        self._batch: list[tuple[Path, bytes | bytearray, tarfile.TarInfo]] = []
        self._batch_bytes = 0
        """Small files not yet handed to the worker (see BATCH_FILES)."""
        self._error: BaseException | None = None
        for stage in stages.values():
            stage.mkdir(mode=0o700)
        self._large = Stage(lambda call: call(), name="restore-write-large", depth=LARGE_FILE_QUEUE)
        """Writes large files' blocks and finishes those files, in order; the caller keeps decompressing."""
        self._large_fds: set[int] = set()
        """Large files the writer thread has not closed yet."""
        try:
            self._flusher = _Flusher([*stages.values(), db_stage.parent])
        except BaseException:  # no Extractor to close(): end the writer thread here
            self._large.stop()
            raise

    def _path(self, component: str, inner: PurePosixPath) -> Path:
        if component == "database":
            if str(inner) != "internal.db":
                raise IntegrityError(f"The backup holds an unexpected database member (database/{inner}).")
            self.seen_db = True
            return self.db_stage
        folder = self._folder
        if folder is not None and folder[0] == component and folder[1] == inner.parent:
            return folder[2] / inner.name  # joining a Path parses every part again: quadratic in a deep tree
        return self.stages[component] / inner  # never at or below a link: walk_payload refuses those

    # ------------------------------------------------------------ members

    def directory(self, component: str, inner: PurePosixPath, member: tarfile.TarInfo) -> None:
        path = self._path(component, inner)
        with reach(path) as (dir_fd, name):  # every path here: a tree may be deeper than PATH_MAX allows
            if str(inner) != ".":
                try:
                    os.mkdir(name, 0o700, dir_fd=dir_fd)
                except FileExistsError:
                    if not stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                        raise
            if os.geteuid() == 0:
                _quietly(os.chown, name, member.uid, member.gid, dir_fd=dir_fd, follow_symlinks=False)
        self.dir_modes.append((path, member))
        self._folder = (component, inner, path)

    def symlink(self, component: str, inner: PurePosixPath, member: tarfile.TarInfo) -> None:
        path = self._path(component, inner)  # refuses a second link of the same name
        if _lexists(path):
            raise UnsafeArchiveError(f"The backup holds {component}/{inner} both as a link and as a file or folder; "
                                     "restore refused.")
        self.links[path] = member

    def file(self, component: str, inner: PurePosixPath, member: tarfile.TarInfo) -> BinaryIO:
        path = self._path(component, inner)
        self._raise_worker_error()
        if member.size <= SMALL_FILE and path != self.db_stage:
            return _Buffer(path)  # type: ignore[return-value]
        with reach(path) as (dir_fd, name):
            fd = os.open(name, OPEN_FLAGS, 0o600, dir_fd=dir_fd)
        return _LargeFile(fd, self._large, self._large_fds, self.refused)  # type: ignore[return-value]

    def file_done(self, component: str, inner: PurePosixPath, member: tarfile.TarInfo, handle: BinaryIO) -> None:
        if isinstance(handle, _Buffer):
            self._submit(handle.path, handle, member)  # the buffer is not written to again
            return
        handle.finish(member)  # type: ignore[attr-defined]

    # ------------------------------------------------------------ workers

    def _submit(self, path: Path, data: bytes | bytearray, member: tarfile.TarInfo) -> None:
        self._batch.append((path, data, member))
        self._batch_bytes += len(data)
        if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
            self._submit_batch()

    def _submit_batch(self) -> None:
        """Hand the gathered small files to the worker in one go (one wake-up instead of one per file)."""
        if not self._batch:
            return
        batch, size = self._batch, self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        with self._room:
            while self._pending_bytes + size > PENDING_BYTES and self._pending_bytes:
                self._room.wait()
            self._pending_bytes += size
        self._raise_worker_error()
        future = self._pool.submit(_write_batch, batch, self.refused)
        future.add_done_callback(lambda f: self._done(f, size))

    def _done(self, future: Future, size: int) -> None:
        with self._room:
            self._pending_bytes -= size
            if future.exception() is not None and self._error is None:
                self._error = future.exception()
            self._room.notify_all()

    def _raise_worker_error(self) -> None:
        if self._error is not None:
            raise self._error
        self._large.raise_error()

    def refused_attributes(self) -> list[str]:
        """One line per file that came back without some of its extended attributes: which, and why."""
        by_file: dict[str, list[str]] = {}
        for member, name, number in sorted(self.refused):
            by_file.setdefault(member, []).append(f"{_shown(os.fsdecode(name))} ({_REASONS.get(number, os.strerror(number))})")
        return [f"{_shown(member)}: {', '.join(names)}" for member, names in by_file.items()]

    def close(self) -> None:
        """Wait for the workers (always, before the staging directories are removed); what waits is dropped."""
        self._pool.shutdown(wait=True)
        self._large.stop(discard=True)
        while self._large_fds:  # left open by a failure
            os.close(self._large_fds.pop())
        self._flusher.stop()

    # ------------------------------------------------------------ the end

    def finish(self) -> None:
        """After the whole backup authenticated: links, directory modes, then one flush to disk."""
        self._submit_batch()
        self._large.close()
        self.close()
        self._raise_worker_error()
        if not self.seen_db:
            raise IntegrityError("The backup holds no internal database; nothing was changed.")
        for path, member in self.links.items():
            with reach(path) as (dir_fd, name):
                try:
                    os.symlink(member.linkname, name, dir_fd=dir_fd)
                except FileExistsError:
                    raise UnsafeArchiveError(f"The backup holds {path.name} both as a link and as a file or folder; "
                                             "restore refused.") from None
                if os.geteuid() == 0:
                    _quietly(os.chown, name, member.uid, member.gid, dir_fd=dir_fd, follow_symlinks=False)
                # setxattr has no *at() form: a deep link is reached through its open folder's /proc name
                _set_xattrs(Path(name if dir_fd is None else f"/proc/self/fd/{dir_fd}/{name}"), member, self.refused)
                _quietly(os.utime, name, (member.mtime, member.mtime), dir_fd=dir_fd, follow_symlinks=False)
        for path, member in reversed(self.dir_modes):  # the deepest first: setting one changes no other
            with reach(path) as (dir_fd, name):
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                os.fchmod(fd, _mode(member, fd))
                _set_xattrs(fd, member, self.refused)
                os.utime(fd, (member.mtime, member.mtime))
            finally:
                os.close(fd)
        synced = set()
        for path in [*self.stages.values(), self.db_stage]:
            device = os.stat(path).st_dev
            if device not in synced:
                sync_filesystem(path)
                synced.add(device)


class _LargeFile:
    """A large file of the backup: its blocks are written, and the file finished, by the writer thread.

    The main thread's work on a large file is decrypting and decompressing;
    copying each block into the page cache (a fifth of its time, more when
    this machine's page-cache copies are slow) now runs beside that.
    Alternating restores of the 1 GiB bench state, pairwise: 0.98 of the
    time before in one hour, 0.78 in another, when the copies were slow.

    Each file is handed to the disk as it grows and its written parts leave
    the page cache (WriteBehind, as a backup file is): the restored database
    does not push the appliance's files out of the cache, and the writer
    reuses the freed pages. Eight alternating restores: 0.75 of the peer's
    time against 0.88 without it (sys time 0.77 s against 0.70 s in a fast
    hour, 1.26 s against 2.70 s in a slow one).
    """

    def __init__(self, fd: int, stage: Stage, open_fds: set[int], refused: list) -> None:
        self._fd = fd
        self._refused = refused
        self._stage = stage
        self._open_fds = open_fds
        open_fds.add(fd)
        self._behind = WriteBehind(fd)

    def write(self, data: bytes) -> int:
        self._stage.put(lambda: self._write(data))
        return len(data)

    def _write(self, data: bytes) -> None:
        _write_all(self._fd, data)
        self._behind.wrote(len(data))

    def finish(self, member: tarfile.TarInfo) -> None:
        """Queue the metadata and the close (made durable all at once in Extractor.finish())."""
        self._stage.put(lambda: self._close(member))

    def _close(self, member: tarfile.TarInfo) -> None:
        try:
            _set_metadata(self._fd, member, self._refused)
        finally:
            self._open_fds.discard(self._fd)
            os.close(self._fd)


class _Flusher:
    """Syncs the filesystems of `paths` every FLUSH_INTERVAL_S until stopped.

    Left alone, the kernel writes a restore's gigabyte to the disk only when
    finish() syncs, and the restore then waits for the disk with the CPU
    idle. Synced as it goes, the disk writes while the restore decompresses
    (1 GiB bench state: the final sync 0.40 s -> 0.07 s; six alternating
    pairs of restores, 3.08 s -> 2.81 s median). A failed sync here is left
    for finish()'s own sync to report.
    """

    def __init__(self, paths: list[Path]) -> None:
        self._paths = list({os.stat(path).st_dev: path for path in paths}.values())  # one per filesystem
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="restore-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(FLUSH_INTERVAL_S):
            for path in self._paths:
                try:
                    sync_filesystem(path)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def _write_small(path: Path, data: bytes | bytearray, member: tarfile.TarInfo, refused: list) -> None:
    with reach(path) as (dir_fd, name):
        fd = os.open(name, OPEN_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        _write_all(fd, data)
        _set_metadata(fd, member, refused)
    finally:
        os.close(fd)


def _write_batch(batch: list[tuple[Path, bytes | bytearray, tarfile.TarInfo]], refused: list) -> None:
    for path, data, member in batch:
        _write_small(path, data, member, refused)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _set_metadata(fd: int, member: tarfile.TarInfo, refused: list) -> None:
    """Owner (as root), mode (see _mode), extended attributes, mtime: in this order.

    A change of owner clears setuid, setgid and a file capability
    (security.capability), so the mode and the attributes come after it.
    """
    if os.geteuid() == 0:
        _quietly(os.fchown, fd, member.uid, member.gid)
    os.fchmod(fd, _mode(member, fd))
    _set_xattrs(fd, member, refused)
    os.utime(fd, (member.mtime, member.mtime))


def _mode(member: tarfile.TarInfo, target: int | Path) -> int:
    """The member's mode, setuid only where the restored file has the recorded owner, setgid the recorded group.

    The sticky bit only narrows who may delete in a folder: always kept. A
    setuid or setgid file that could not be given its owner (a restore run by
    another user than root, a filesystem that refuses the owner) would run
    as whoever restored it instead: those bits are then dropped, never widened.
    """
    mode = member.mode & 0o7777
    if mode & (stat.S_ISUID | stat.S_ISGID):
        st = os.fstat(target) if isinstance(target, int) else os.lstat(target)
        if st.st_uid != member.uid:
            mode &= ~stat.S_ISUID
        if st.st_gid != member.gid:
            mode &= ~stat.S_ISGID
    return mode


def _set_xattrs(target: int | Path, member: tarfile.TarInfo, refused: list) -> None:
    """Set the member's extended attributes; those this filesystem or user may not have go to `refused`."""
    attributes = member_xattrs(member)
    follow = {} if isinstance(target, int) else {"follow_symlinks": False}
    for name, value in attributes.items():
        try:
            os.setxattr(target, name, value, **follow)
        except OSError as exc:
            if exc.errno not in REFUSALS:
                raise
            refused.append((member.name, name, exc.errno))


_REASONS = {errno.EPERM: "not permitted to this user", errno.EACCES: "not permitted to this user",
            errno.ENOTSUP: "not supported by this filesystem", errno.EINVAL: "refused as invalid here",
            errno.E2BIG: "too large for this filesystem", errno.ERANGE: "too large for this filesystem"}


def _shown(text: str) -> str:
    """A name as an operator may see it: quoted with escapes when it holds control or unprintable characters."""
    return text if text.isprintable() else repr(text)


def _lexists(path: Path) -> bool:
    with reach(path) as (dir_fd, name):
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:  # as os.path.lexists answers
            return False
    return True


def _quietly(call, *args, **kwargs) -> None:
    """Ownership is restored where the numbers exist here; a refusal leaves root's, as tar does."""
    try:
        call(*args, **kwargs)
    except OSError:
        pass
