"""Provides the payload of a backup: a zstd-compressed tar stream, manifest first.

Members, in order:
  manifest.json          what is inside (written before any component)
  firmware/...           the firmware configuration directory
  system/...             the system configuration directory
  database/internal.db   a consistent SQLite snapshot of the internal database
  checksums.json         SHA-256 of every file and of every component

The checksums come last because the payload is written in one streaming pass;
the manifest comes first so a backup's details need only its first chunk.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import queue
import stat
import struct
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Iterator

import zstandard

from backup.errors import BackupError, IntegrityError, UnsafeArchiveError
from backup.fsutil import open_directory, reach
from backup.progress import Tracker

MANIFEST_NAME = "manifest.json"
CHECKSUMS_NAME = "checksums.json"
DIRECTORY_COMPONENTS = ("firmware", "system")
DATABASE_MEMBER = "database/internal.db"
COMPONENTS = ("firmware", "system", "database")
EXCLUDED = (
    "The HSM (hardware security module) and its keys: never part of a backup.",
    "External databases: never part of a backup.",
)
READ_SIZE = 1 << 20
BLOCK = tarfile.BLOCKSIZE
SMALL_FILE = 256 << 10
"""Files up to this size are hashed on the thread that reads them (and the writer reads them in one
piece): handing a 12 KiB file to the hash thread costs more than hashing it (about 7 µs with SHA-NI)."""
GATHER = 1 << 20
"""Small pieces (headers, small files, padding) are gathered up to this size before zstd gets them:
each call into zstd costs about 15 µs, and a configuration tree has thousands of small files."""
MAX_SKIPPED_LISTED = 1000
"""Skipped entries (fifos, sockets, devices) named in the manifest per component; the rest are counted."""
READ_ATTEMPTS = 3
"""A small file that changes while it is read is read again, this many times in all."""
MAX_MANIFEST = 1 << 20
MAX_CHECKSUMS = 64 << 20
MAX_EXTENDED_HEADER = 1 << 20
EXTENDED_HEADERS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                    tarfile.GNUTYPE_LONGLINK)


@dataclass(frozen=True)
class SourceEntry:
    """One file, directory or symlink of a component, as scanned before the backup."""

    arcname: str
    path: Path
    kind: str  # "file", "dir", "symlink"
    size: int
    mode: int
    mtime: float
    uid: int
    gid: int
    link: str = ""


@dataclass
class ComponentScan:
    name: str
    source: Path
    entries: list[SourceEntry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def files(self) -> int:
        return sum(1 for e in self.entries if e.kind == "file")

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.entries if e.kind == "file")


def scan_directory(name: str, root: Path) -> ComponentScan:
    """Every entry below `root`, sorted, as members under `name/`. Sockets, fifos and devices are skipped.

    The order is depth first, each directory's entries by name, a directory's content right after
    it. A tree may be thousands of folders deep (one Python frame per level ended in RecursionError
    near 1,000; paths pass PATH_MAX near 2,000): the walk keeps its own stack and one open directory,
    going down by name and back up through "..", each step checked against the directory it left.
    """
    scan = ComponentScan(name=name, source=root)
    st = os.stat(root)  # the configured directory, also when a link leads to it
    scan.entries.append(_entry(name, root, st))
    fd = open_directory(root)
    try:
        pending = [(iter(_listed(fd, root, name)), os.fstat(fd), root)]
        """(entries not walked yet, the directory as first opened, its path), the deepest last."""
        while pending:
            item = next(pending[-1][0], None)
            if item is None:
                pending.pop()
                if pending:
                    parent = _back_up(fd, *pending[-1][1:])
                    os.close(fd)
                    fd = parent
                continue
            arcname, path, st, link = item
            if stat.S_ISDIR(st.st_mode):
                try:
                    below = os.open(path.name, DIRECTORY_FLAGS, dir_fd=fd)
                except (FileNotFoundError, NotADirectoryError):
                    continue  # gone since it was listed
                except OSError as exc:
                    if exc.errno == errno.ELOOP:  # a link stands there now
                        continue
                    raise OSError(exc.errno, exc.strerror, str(path)) from None  # named in full, as before
                os.close(fd)
                fd = below
                scan.entries.append(_entry(arcname, path, st))
                pending.append((iter(_listed(fd, path, arcname)), os.fstat(fd), path))
            elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                scan.entries.append(_entry(arcname, path, st, link))
            else:
                scan.skipped.append(arcname)
    finally:
        os.close(fd)
    return scan


DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _listed(fd: int, directory: Path, prefix: str) -> list[tuple[str, Path, os.stat_result, str]]:
    """(arcname, path, lstat, link target or "") of each entry of the open directory, sorted by name."""
    with os.scandir(fd) as it:
        names = sorted(item.name for item in it)
    listed = []
    for item_name in names:
        try:
            st = os.stat(item_name, dir_fd=fd, follow_symlinks=False)
            link = os.readlink(item_name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else ""
        except FileNotFoundError:  # removed since it was listed: no longer on the appliance
            continue
        listed.append((f"{prefix}/{item_name}", directory / item_name, st, link))
    return listed


def _back_up(fd: int, expected: os.stat_result, path: Path) -> int:
    """The parent of the open directory `fd`, which must still be the directory walked before."""
    parent = os.open("..", DIRECTORY_FLAGS, dir_fd=fd)
    st = os.fstat(parent)
    if (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino):
        os.close(parent)
        raise BackupError(f"{path} was moved while it was being backed up: run the backup again.")
    return parent


def _entry(arcname: str, path: Path, st: os.stat_result, link: str | None = None) -> SourceEntry:
    if stat.S_ISDIR(st.st_mode):
        kind, size, link = "dir", 0, ""
    elif stat.S_ISLNK(st.st_mode):
        kind, size, link = "symlink", 0, os.readlink(path) if link is None else link
    else:
        kind, size, link = "file", st.st_size, ""
    return SourceEntry(arcname=arcname, path=path, kind=kind, size=size, mode=stat.S_IMODE(st.st_mode),
                       mtime=st.st_mtime, uid=st.st_uid, gid=st.st_gid, link=link)


def build_manifest(*, appliance: str, software_version: str, created_at: str, scans: list[ComponentScan],
                   database_bytes: int, database_source: str) -> dict:
    components = []
    for s in scans:
        component = {"name": s.name, "kind": "directory", "source": str(s.source), "files": s.files, "bytes": s.bytes,
                     "skipped": s.skipped[:MAX_SKIPPED_LISTED]}
        if len(s.skipped) > MAX_SKIPPED_LISTED:  # the manifest must stay under MAX_MANIFEST for readers
            component["skipped_more"] = len(s.skipped) - MAX_SKIPPED_LISTED
        components.append(component)
    components.append({"name": "database", "kind": "sqlite", "source": database_source, "files": 1,
                       "bytes": database_bytes, "skipped": []})
    return {
        "format": "appliance-backup manifest",
        "version": 1,
        "appliance": appliance,
        "software_version": software_version,
        "created_at": created_at,
        "components": components,
        "total_bytes": sum(c["bytes"] for c in components),
        "excluded": list(EXCLUDED),
    }


class Stage:
    """Runs `consume` on each item put, in order, on a thread of its own.

    The queue is bounded, so a slow stage holds the one before it back and
    memory stays flat. An error in `consume` is raised in the producer at its
    next put() or at close(); the stage keeps draining so a producer never blocks.
    """

    _STOP = object()

    def __init__(self, consume: Callable[[Any], None], *, name: str, depth: int = 8) -> None:
        self._consume = consume
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._discard = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not self._STOP:
            if self._error is None and not self._discard:
                try:
                    self._consume(item)
                except BaseException as exc:  # handed to the producer
                    self._error = exc

    def put(self, item: Any) -> None:
        self.raise_error()
        self._queue.put(item)

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Wait until everything put was consumed; raise what went wrong there."""
        self.stop()
        self.raise_error()

    def stop(self, *, discard: bool = False) -> None:
        """End the thread once it has taken everything put before; `discard` skips what is left."""
        self._discard = self._discard or discard
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()


class _QueuedSink:
    """The zstd writer's sink: hands compressed output to the stage that encrypts and stores it."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    def write(self, data: bytes) -> int:
        self.stage.put(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


class PayloadWriter:
    """Writes tar members through zstd into `sink` (the encrypting ArchiveWriter).

    Three stages overlap on a 2-core appliance: this thread reads files and
    feeds zstd (whose workers compress in parallel), one thread hashes what
    was read, one encrypts and writes what was compressed. Hashing, zstd and
    file I/O release the GIL, so the stages really run at once.
    """

    def __init__(self, sink: BinaryIO, tracker: Tracker, *, level: int = 3, threads: int = 2) -> None:
        # zstd's workers hand their output over in bursts of 128 KiB pieces; a deeper queue lets this
        # thread keep feeding them meanwhile (1 GiB state, alternating: 2.93-3.89 s against 2.89-5.00 s).
        self._store = Stage(sink.write, name="backup-store", depth=64)
        self._hash = Stage(lambda item: item[0].update(item[1]), name="backup-hash", depth=16)
        params = zstandard.ZstdCompressionParameters.from_level(level, threads=threads, write_checksum=True)
        self._zstd = zstandard.ZstdCompressor(compression_params=params).stream_writer(
            _QueuedSink(self._store), closefd=False, write_return_read=True)
        self.tracker = tracker
        self._digests: list[tuple[str, Any]] = []
        """(member name, its sha256 object): finished by the hash stage, read at close()."""
        self._gathered = bytearray(GATHER)
        self._gathered_bytes = 0
        """Small pieces not yet handed to zstd (see GATHER): the first `_gathered_bytes` of `_gathered`."""

    def add_bytes(self, arcname: str, data: bytes, *, mtime: float) -> None:
        info = tarfile.TarInfo(arcname)
        info.size = len(data)
        info.mode = 0o600
        info.mtime = int(mtime)
        self._member(info, data)

    def add_entry(self, entry: SourceEntry) -> None:
        info = tarfile.TarInfo(entry.arcname)
        info.mode = entry.mode
        info.mtime = int(entry.mtime)
        info.uid, info.gid = entry.uid, entry.gid
        if entry.kind == "dir":
            info.type = tarfile.DIRTYPE
            self._header(info)
        elif entry.kind == "symlink":
            info.type = tarfile.SYMTYPE
            info.linkname = entry.link
            self._header(info)
        else:
            self._add_source_file(entry.arcname, entry.path, info)

    def _add_source_file(self, arcname: str, path: Path, info: tarfile.TarInfo) -> None:
        """A file of a configuration tree as one moment saw it: never torn by a writer.

        The scan's size is only a first look: the file is opened and measured
        again, since a writer that saves by rename puts a new file in its place
        and one that writes in place changes it. A small file is read whole
        and kept only if its size and times did not move meanwhile, else read
        again (READ_ATTEMPTS). A large one streams from its open descriptor,
        and the backup fails, naming it, if it changed underneath: its first
        bytes are already on their way. A file deleted since the scan (or no
        longer a regular file) is left out, as it is no longer on the appliance.
        """
        for _ in range(READ_ATTEMPTS):
            try:
                with reach(path) as (dir_fd, name):  # a path of any length (a very deep tree)
                    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
            except (FileNotFoundError, IsADirectoryError):
                return
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # a link now stands there
                    return
                raise
            try:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    return
                info.mode, info.mtime = stat.S_IMODE(before.st_mode), int(before.st_mtime)
                info.uid, info.gid = before.st_uid, before.st_gid
                if before.st_size > SMALL_FILE:
                    self._stream(arcname, lambda n: os.read(fd, n), before.st_size, info, path)
                    if not _unchanged(before, os.fstat(fd)):
                        raise BackupError(f"{path} changed while it was being backed up: run the backup again "
                                          "(or when whatever writes it is done).")
                    return
                data = _read_up_to(fd, before.st_size + 1)  # one more: a short read says the file ended
                after = os.fstat(fd)
            finally:
                os.close(fd)
            if _unchanged(before, after) and len(data) == after.st_size:
                info.size = len(data)
                self._digests.append((arcname, hashlib.sha256(data)))
                self._member(info, data)
                self.tracker.add(done=len(data))
                return
        raise BackupError(f"{path} changed each of the {READ_ATTEMPTS} times it was read during the backup: "
                          "run the backup again when it is not being written.")

    def add_file(self, arcname: str, path: Path, size: int, *, head: Callable[[bytes], bytes] | None = None,
                 like: Path | None = None) -> None:
        """Stream exactly `size` bytes of a file whose content cannot change meanwhile (a database snapshot).

        `head`, if given, rewrites the first block read (same length) before it is stored. The
        member's mode, owner and mtime are those of `like` (a snapshot's original), else of `path`.
        """
        info = tarfile.TarInfo(arcname)
        st = os.stat(like or path)
        info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
        info.uid, info.gid = st.st_uid, st.st_gid
        with open(path, "rb") as f:
            self._stream(arcname, f.read, size, info, path, head=head)

    def _stream(self, arcname: str, read: Callable[[int], bytes], size: int, info: tarfile.TarInfo, path: Path, *,
                head: Callable[[bytes], bytes] | None = None) -> None:
        """Header, then exactly `size` bytes from `read` (hashed on the hash thread), then padding."""
        info.size = size
        digest = hashlib.sha256()
        self._digests.append((arcname, digest))
        self._header(info)
        left = size
        while left:
            block = read(min(READ_SIZE, left))
            if not block:
                raise BackupError(f"{path} became shorter while it was being backed up: run the backup again "
                                  "(or when whatever writes it is done).")
            if head is not None:
                block, head = head(block), None
            left -= len(block)
            self._hash.put((digest, block))
            self._write(block)
            self.tracker.add(done=len(block))
        self._pad(size)

    def checksums(self) -> dict:
        """SHA-256 of every file and every component; call once the hash stage is done."""
        files = {name: digest.hexdigest() for name, digest in self._digests}
        components = {c: hashlib.sha256() for c in COMPONENTS}
        for name, hexdigest in files.items():
            components[name.split("/", 1)[0]].update(f"{hexdigest}  {name}\n".encode("utf-8", "surrogateescape"))
        return {"files": files, "components": {c: h.hexdigest() for c, h in components.items()}}

    def close(self) -> None:
        self._hash.close()
        data = json.dumps(self.checksums(), sort_keys=True).encode()
        if len(data) > MAX_CHECKSUMS:  # a reader refuses a longer list: no backup it could not restore
            raise BackupError(f"The configuration holds too many files for one backup: their checksum list would "
                              f"take {len(data) >> 20} MiB, and at most {MAX_CHECKSUMS >> 20} MiB can be read back. "
                              "Remove files the appliance does not need from the configuration folders.")
        self.add_bytes(CHECKSUMS_NAME, data, mtime=0)
        self._write(b"\0" * (2 * BLOCK))
        self._hand_over()
        self._zstd.flush(zstandard.FLUSH_FRAME)
        self._zstd.close()
        self._store.close()

    def abort(self) -> None:
        """Stop the stages after a failure; what was queued is dropped, nothing more is written."""
        self._hash.stop(discard=True)
        self._store.stop(discard=True)

    def _write(self, data: bytes | memoryview) -> None:
        count = len(data)
        if self._gathered_bytes + count > GATHER:
            self._hand_over()
        if count >= GATHER:
            self._zstd.write(data)
        else:
            self._gathered[self._gathered_bytes:self._gathered_bytes + count] = data
            self._gathered_bytes += count

    def _hand_over(self) -> None:
        """Give zstd what was gathered (zstd copies it in, so the buffer can be reused)."""
        if self._gathered_bytes:
            self._zstd.write(memoryview(self._gathered)[:self._gathered_bytes])
            self._gathered_bytes = 0

    def _member(self, info: tarfile.TarInfo, data: bytes) -> None:
        """A whole member held in memory: header, content, padding."""
        self._header(info)
        self._write(data)
        self._pad(len(data))

    def _header(self, info: tarfile.TarInfo) -> None:
        self._write(tar_header(info))

    def _pad(self, size: int) -> None:
        rest = size % BLOCK
        if rest:
            self._write(b"\0" * (BLOCK - rest))


def _unchanged(before: os.stat_result, after: os.stat_result) -> bool:
    """Whether nothing wrote to (or replaced) the file between two looks at it."""
    return (before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns) == \
        (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns)


def _read_up_to(fd: int, limit: int) -> bytes:
    """Read until the file ends or `limit` bytes came (usually one read)."""
    data = os.read(fd, limit)
    while 0 < len(data) < limit:
        more = os.read(fd, limit - len(data))
        if not more:
            break
        data += more
    return data


_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12x")
_PLAIN_TYPES = (tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE)
_OCTAL_7 = 8 ** 7
_OCTAL_11 = 8 ** 11


def tar_header(info: tarfile.TarInfo) -> bytes:
    """`info`'s header, byte for byte what tarfile (Python 3.11.4 on) writes in PAX format, built about four times faster.

    The fast path covers what a configuration tree is made of: ASCII names and link
    targets of up to 100 characters and integer fields that fit their octal fields, so
    no extended header is needed. Anything else (long or non-ASCII names, huge sizes,
    negative times) is left to tarfile.
    """
    name = info.name + "/" if info.type == tarfile.DIRTYPE and not info.name.endswith("/") else info.name
    if (info.type in _PLAIN_TYPES and name.isascii() and len(name) <= 100 and info.linkname.isascii()
            and len(info.linkname) <= 100 and not info.uname and not info.gname and not info.pax_headers
            and type(info.uid) is int and type(info.gid) is int and type(info.size) is int
            and type(info.mtime) is int and 0 <= info.uid < _OCTAL_7 and 0 <= info.gid < _OCTAL_7
            and 0 <= info.size < _OCTAL_11 and 0 <= info.mtime < _OCTAL_11
            and not info.devmajor and not info.devminor):
        header = bytearray(_USTAR.pack(
            name.encode("ascii"), b"%07o\0" % (info.mode & 0o7777), b"%07o\0" % info.uid, b"%07o\0" % info.gid,
            b"%011o\0" % info.size, b"%011o\0" % info.mtime, b" " * 8, info.type, info.linkname.encode("ascii"),
            tarfile.POSIX_MAGIC, b"", b"", b"", b"", b""))
        header[148:155] = b"%06o\0" % sum(header)
        return bytes(header)
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


# ---------------------------------------------------------------- reading


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads an extended header's data (pax, GNU long name) in one piece: refuse a huge one first."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in EXTENDED_HEADERS and self.size > MAX_EXTENDED_HEADER:
            raise tarfile.HeaderError(f"an extended tar header claims {self.size} bytes, more than the "
                                      f"{MAX_EXTENDED_HEADER} a writer ever needs")
        return super()._proc_member(tar)


def decompressed(archive: BinaryIO) -> BinaryIO:
    """The payload's tar stream: the decrypted archive, decompressed as it is read."""
    return zstandard.ZstdDecompressor().stream_reader(archive, read_size=READ_SIZE, closefd=False,
                                                        read_across_frames=True)


def _content(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Iterator[bytes]:
    """A regular member's content, in blocks read straight from the payload (no copy through tarfile's reader)."""
    payload = tar.fileobj
    payload.seek(member.offset_data)  # where it already is: members are read in order
    left = member.size
    while left:
        block = payload.read(min(left, READ_SIZE))
        if not block:
            raise tarfile.ReadError("unexpected end of data")
        left -= len(block)
        yield block


def open_tar_stream(payload: BinaryIO) -> tarfile.TarFile:
    """A tar reader over the decompressed payload, read forward only.

    Mode "r:" reads members straight from `payload`; the streaming mode "r|"
    copies every byte through its own buffer several times (verify --deep of
    the 1 GiB bench state: 1.9-2.0 s that way, 1.2-1.3 s this way).
    """
    return tarfile.open(fileobj=payload, mode="r:", encoding="utf-8", errors="surrogateescape",
                        tarinfo=_BoundedTarInfo)


def read_manifest(archive: BinaryIO) -> dict:
    """The manifest, read from the start of the payload only."""
    try:
        return _first_manifest(open_tar_stream(decompressed(archive)))
    except (tarfile.TarError, zstandard.ZstdError, ValueError, EOFError) as exc:
        raise IntegrityError(f"The backup's contents cannot be read ({_short(exc)}): it is damaged.") from None


def _first_manifest(tar: tarfile.TarFile) -> dict:
    member = tar.next()
    if member is None or member.name != MANIFEST_NAME or not member.isfile() or member.size > MAX_MANIFEST:
        raise IntegrityError("The backup holds no manifest where one must be: it was not written by appliance-backup.")
    manifest = json.loads(tar.extractfile(member).read())
    if not isinstance(manifest, dict) or manifest.get("format") != "appliance-backup manifest":
        raise IntegrityError("The backup's manifest is not one appliance-backup wrote.")
    if manifest.get("version") != 1:
        raise IntegrityError(
            f"The backup's manifest is version {manifest.get('version')!r}; this software reads version 1: "
            "update appliance-backup to read it."
        )
    return manifest


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]


def safe_member_path(name: str, folder: tuple[str, PurePosixPath] | None = None) -> tuple[str, PurePosixPath]:
    """Split a member name into its component and a path inside it; refuse anything that could escape.

    `folder`, the inner path of the last folder read (as text and path), is where the next members
    usually are: their path is made from it instead of parsed whole, which in a tree thousands of
    folders deep made reading a backup quadratic in its depth.
    """
    if "\0" in name:
        raise UnsafeArchiveError(f"The backup holds a member with a forbidden character in its name ({name!r}); restore refused.")
    if name.startswith("/"):
        raise UnsafeArchiveError(f"The backup holds a member with an absolute path ({name!r}); restore refused.")
    parts = name.rstrip("/").split("/")
    if ".." in parts or "" in parts:
        raise UnsafeArchiveError(f"The backup holds a member whose path leaves its folder ({name!r}); restore refused.")
    if "." in parts:
        parts = [part for part in parts if part != "."]  # as PurePosixPath reads them
    if not parts or parts[0] not in COMPONENTS:
        raise UnsafeArchiveError(f"The backup holds a member outside the known components ({name!r}); restore refused.")
    if len(parts) == 1:
        return parts[0], PurePosixPath(".")
    if folder is not None and len(parts) > 2 and folder[0] == "/".join(parts[1:-1]):
        return parts[0], folder[1] / parts[-1]
    return parts[0], PurePosixPath("/".join(parts[1:]))


def check_not_through_a_link(links: set[str], component: str, inner: PurePosixPath) -> None:
    """Refuse a member at or below one of the backup's own links (`links`: those read so far, "component/inner").

    A link may point anywhere, as the appliance's own did (/etc/localtime ->
    /usr/share/zoneinfo/...): a restore makes links last and writes nothing
    through them. A member at a link's path or under it would be written
    through it, and links that each look harmless can lead out of the
    component followed one through another (d/s -> .., d/l -> s/../..).
    """
    if not links:
        return
    path = f"{component}/{inner}"
    if path in links:
        through = True
    elif len(links) <= path.count("/"):  # whichever is fewer: the links, or the folders above the member
        through = any(path.startswith(f"{link}/") for link in links)
    else:
        through = any(path[:i] in links for i, char in enumerate(path) if char == "/")
    if through:
        raise UnsafeArchiveError(f"The backup holds a member at or inside one of its symbolic links "
                                 f"({component}/{inner}); restore refused.")


def _root_as_directory(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """A component's root stored as a link: the folder it stood for.

    Earlier versions stored a configured directory reached through a link so,
    followed by the directory's content below it; restored as a folder.
    """
    folder = copy.copy(member)
    folder.type, folder.linkname, folder.mode = tarfile.DIRTYPE, "", 0o755
    return folder


@dataclass
class PayloadSummary:
    manifest: dict
    checksums: dict
    files: int = 0
    bytes: int = 0


class PayloadConsumer:
    """Receives members while the payload is walked (verify: none; restore: extraction)."""

    def directory(self, component: str, inner: PurePosixPath, member: tarfile.TarInfo) -> None: ...

    def symlink(self, component: str, inner: PurePosixPath, member: tarfile.TarInfo) -> None: ...

    def file(self, component: str, inner: PurePosixPath, member: tarfile.TarInfo) -> BinaryIO | None:
        return None

    def file_done(self, component: str, inner: PurePosixPath, member: tarfile.TarInfo, handle: BinaryIO) -> None: ...


def walk_payload(archive: BinaryIO, tracker: Tracker, consumer: PayloadConsumer | None = None) -> PayloadSummary:
    """Read the whole payload, check every member and every checksum, hand members to `consumer`.

    Raises IntegrityError (or UnsafeArchiveError) on anything that is not as written.
    """
    consumer = consumer or PayloadConsumer()
    # As in PayloadWriter, the hashing runs on a thread of its own; digests are read once it is done.
    hashing = Stage(lambda item: item[0].update(item[1]), name="verify-hash", depth=16)
    digests: list[tuple[str, str, Any]] = []
    """(component, member name, its sha256 object), in archive order."""
    folder: tuple[str, PurePosixPath] | None = None
    """The last folder read: where the next members usually are (see safe_member_path)."""
    links: set[str] = set()
    """The backup's links read so far, as "component/inner"."""
    try:
        tar = open_tar_stream(decompressed(archive))
        manifest = _first_manifest(tar)
        checksums = None
        summary = PayloadSummary(manifest=manifest, checksums={})
        while (member := tar.next()) is not None:
            tracker.check_cancel()  # also between members without content (a tree of folders and links)
            if checksums is not None:
                raise IntegrityError(f"The backup holds a member after its checksums ({member.name!r}).")
            if member.name == CHECKSUMS_NAME:
                if not member.isfile() or member.size > MAX_CHECKSUMS:
                    raise IntegrityError("The backup's checksum list is malformed.")
                checksums = json.loads(tar.extractfile(member).read())
                continue
            component, inner = safe_member_path(member.name, folder)
            if member.issym() and str(inner) == ".":
                member = _root_as_directory(member)
            check_not_through_a_link(links, component, inner)
            if member.isdir():
                consumer.directory(component, inner, member)
                folder = (str(inner), inner)
            elif member.issym():
                links.add(f"{component}/{inner}")
                consumer.symlink(component, inner, member)
            elif member.isreg() and not member.issparse():
                digest = hashlib.sha256()
                handle = consumer.file(component, inner, member)
                small = member.size <= SMALL_FILE  # hashed here, as the writer does (see SMALL_FILE)
                for block in _content(tar, member):
                    if small:
                        digest.update(block)
                    else:
                        hashing.put((digest, block))
                    if handle is not None:
                        handle.write(block)
                    tracker.add(done=len(block))
                if handle is not None:
                    consumer.file_done(component, inner, member, handle)
                digests.append((component, member.name, digest))
                summary.files += 1
                summary.bytes += member.size
            else:
                raise UnsafeArchiveError(
                    f"The backup holds a member of a type it never writes ({member.name!r}: hard link, device, fifo or sparse file); restore refused."
                )
        # Drain to the end so the final chunk is authenticated too.
        while archive.read(READ_SIZE):
            pass
        hashing.close()
    except (tarfile.TarError, zstandard.ZstdError, ValueError, EOFError) as exc:
        raise IntegrityError(f"The backup's contents cannot be read ({_short(exc)}): it is damaged.") from None
    finally:
        hashing.stop(discard=True)
    if checksums is None:
        raise IntegrityError("The backup ends before its checksum list: it is incomplete.")
    files: dict[str, str] = {}
    components = {c: hashlib.sha256() for c in COMPONENTS}
    for component, name, digest in digests:
        files[name] = hexdigest = digest.hexdigest()
        components[component].update(f"{hexdigest}  {name}\n".encode("utf-8", "surrogateescape"))
    expected_files = checksums.get("files", {}) if isinstance(checksums, dict) else {}
    if expected_files != files:
        bad = sorted(set(expected_files.items()) ^ set(files.items()))[:3]
        raise IntegrityError(f"The backup's files do not match its checksums (first differences: {bad}).")
    for component, digest in components.items():
        if checksums.get("components", {}).get(component) != digest.hexdigest():
            raise IntegrityError(f"The {component} component does not match its checksum.")
    summary.checksums = checksums
    return summary
