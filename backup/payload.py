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

import base64
import copy
import errno
import hashlib
import json
import os
import queue
import re
import stat
import struct
import tarfile
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Iterator

import zstandard

from backup.errors import BackupError, IntegrityError, UnsafeArchiveError
from backup.fsutil import open_directory, reach
from backup.progress import Tracker

PAYLOAD_VERSION = 2
"""The manifest's `version`, the payload layer's (FORMAT.md P.5). Version 1 is still read."""
READ_VERSIONS = (1, 2)
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
XATTR_RECORD = "SCHILY.xattr."
"""The pax keyword prefix of an extended attribute (GNU tar's and libarchive's convention, docs/FORMAT.md P.6)."""
XATTR_NAMESPACES = (b"user.", b"security.", b"trusted.")
POSIX_ACLS = (b"system.posix_acl_access", b"system.posix_acl_default")
"""POSIX ACLs travel as these attributes, in Linux's binary form; no other system.* attribute is carried."""
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
"""Linux's limits on one attribute's name and value (limits.h)."""
_ACL_TAGS = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20)
"""ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER."""
_ACL = struct.Struct("<HHI")
_NOT_AN_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


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


def database_was_in_wal_mode(manifest: dict) -> bool:
    """Whether the manifest records the backed-up database in WAL mode (older backups record no mode)."""
    components = manifest.get("components")
    return isinstance(components, list) and any(
        isinstance(c, dict) and c.get("name") == "database" and c.get("journal_mode") == "wal" for c in components)


def build_manifest(*, appliance: str, software_version: str, created_at: str, scans: list[ComponentScan],
                   database_bytes: int, database_source: str, database_journal_mode: str | None = None,
                   appliance_id: str = "", backup: str = "") -> dict:
    components = []
    for s in scans:
        # Skipped names are for people to read: JSON text any parser takes (see portable_text).
        skipped = [portable_text(n) for n in s.skipped[:MAX_SKIPPED_LISTED]]
        component = {"name": s.name, "kind": "directory", "source": str(s.source), "files": s.files, "bytes": s.bytes,
                     "skipped": skipped}
        if len(s.skipped) > MAX_SKIPPED_LISTED:  # the manifest must stay under MAX_MANIFEST for readers
            component["skipped_more"] = len(s.skipped) - MAX_SKIPPED_LISTED
        components.append(component)
    components.append({"name": "database", "kind": "sqlite", "source": database_source, "files": 1,
                       "bytes": database_bytes, "skipped": []})
    if database_journal_mode is not None:
        components[-1]["journal_mode"] = database_journal_mode
    return {
        "format": "appliance-backup manifest",
        "version": PAYLOAD_VERSION,
        "backup": backup,
        "appliance": appliance,
        "appliance_id": appliance_id,
        "software_version": software_version,
        "created_at": created_at,
        "components": components,
        "total_bytes": sum(c["bytes"] for c in components),
        "excluded": list(EXCLUDED),
    }


def portable_text(name: str) -> str:
    """A name as text every JSON parser reads: bytes that are not UTF-8 become U+FFFD (for people, not lookups)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def name_bytes(name: str) -> bytes:
    """A member name as the bytes the tar stream holds (tarfile decodes them with surrogateescape)."""
    return name.encode("utf-8", "surrogateescape")


def checksum_entries(digests: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """`files` and `files_base64` of checksums.json (FORMAT.md P.3) for (member name, hex digest) pairs.

    A name that is valid UTF-8 is a key of `files`; any other is a key of `files_base64`, as the
    base64 of its bytes: JSON strings are Unicode, and a raw byte has no spelling there that
    every parser accepts (version 1 wrote Python's surrogate escapes, which strict parsers refuse).
    """
    files: dict[str, str] = {}
    binary: dict[str, str] = {}
    for name, hexdigest in digests:
        raw = name_bytes(name)
        try:
            files[raw.decode("utf-8")] = hexdigest
        except UnicodeDecodeError:
            binary[base64.b64encode(raw).decode("ascii")] = hexdigest
    return files, binary


@dataclass(frozen=True)
class ManifestFacts:
    """What a backup says about itself, read from its authenticated manifest (FORMAT.md P.2).

    Version 1 manifests have no `backup` or `appliance_id`: those are then empty strings.
    """

    backup: str
    appliance: str
    appliance_id: str
    software_version: str
    created_at: datetime | None
    """None when the manifest's time is not ISO 8601 with an offset (only a faulty writer does that)."""
    version: int


def manifest_facts(manifest: dict) -> ManifestFacts:
    def text(key: str) -> str:
        value = manifest.get(key, "")
        return value if isinstance(value, str) else ""

    try:
        created = datetime.fromisoformat(text("created_at"))
        if created.utcoffset() is None:
            created = None
    except ValueError:
        created = None
    return ManifestFacts(backup=text("backup"), appliance=text("appliance"), appliance_id=text("appliance_id"),
                         software_version=text("software_version"), created_at=created,
                         version=manifest.get("version") if isinstance(manifest.get("version"), int) else 0)


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
            # A component's root may be reached through a link (scan_directory follows it): its folder's own.
            info.pax_headers = xattr_records(entry.path, follow_symlinks="/" not in entry.arcname)
            self._header(info)
        elif entry.kind == "symlink":
            info.type = tarfile.SYMTYPE
            info.linkname = entry.link
            info.pax_headers = xattr_records(entry.path)
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
                info.pax_headers = xattr_records(fd)  # a change to them changes ctime: read again then
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
        pairs = [(name, digest.hexdigest()) for name, digest in self._digests]
        files, binary = checksum_entries(pairs)
        components = {c: hashlib.sha256() for c in COMPONENTS}
        for name, hexdigest in pairs:
            components[name.split("/", 1)[0]].update(hexdigest.encode() + b"  " + name_bytes(name) + b"\n")
        return {"files": files, "files_base64": binary,
                "components": {c: h.hexdigest() for c, h in components.items()}}

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
        header = tar_header(info)
        if len(header) > MAX_EXTENDED_HEADER:  # a reader refuses a longer one: no backup it could not restore
            raise BackupError(f"{info.name} has more extended attributes than a backup can hold "
                              f"({len(header) >> 10} KiB of them, at most {MAX_EXTENDED_HEADER >> 10} KiB): "
                              "remove the ones the appliance does not need.")
        self._write(header)

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


def xattr_records(target: int | Path, *, follow_symlinks: bool = False) -> dict[str, str]:
    """The pax records of a file's extended attributes and POSIX ACLs (docs/FORMAT.md P.6), sorted by name.

    `target` is an open descriptor or a path (a link itself unless
    `follow_symlinks`). Only the namespaces a restore can set are read: user.*, security.*,
    trusted.* (listed to root alone) and the two POSIX ACLs. A filesystem
    without extended attributes has none; one removed meanwhile is left out,
    and so are those of an entry removed since the scan (it is stored as scanned).
    """
    if isinstance(target, int):
        return _xattr_records(target, {})
    try:
        with reach(target) as (dir_fd, name):
            # the xattr calls have no *at() form: a path past PATH_MAX goes through its open folder's /proc name
            where = name if dir_fd is None else f"/proc/self/fd/{dir_fd}/{name}"
            return _xattr_records(where, {"follow_symlinks": follow_symlinks})
    except OSError as exc:  # a folder on the way removed since the scan
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return {}
        raise


def _xattr_records(path_or_fd: int | str, follow: dict[str, bool]) -> dict[str, str]:
    try:
        names = os.listxattr(path_or_fd, **follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOENT, errno.ENOTDIR):
            return {}
        raise
    records = {}
    for name in sorted(names, key=os.fsencode):
        raw = os.fsencode(name)
        if not (raw in POSIX_ACLS or raw.startswith(XATTR_NAMESPACES)):
            continue
        try:
            value = os.getxattr(path_or_fd, name, **follow)
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.ENOENT, errno.ENOTDIR):
                continue
            raise
        records[XATTR_RECORD + _escape_xattr_name(name)] = value.decode("utf-8", "surrogateescape")
    return records


def _escape_xattr_name(name: str) -> str:
    """The name as a pax keyword: '%' and '=' (as GNU tar does) and bytes that are not UTF-8 as %XX."""
    if name.isascii() and "%" not in name and "=" not in name:
        return name
    out = []
    for char in name:
        if char in "%=" or "\udc80" <= char <= "\udcff":
            out.append("%%%02X" % (ord(char) & 0xFF))
        else:
            out.append(char)
    return "".join(out)


_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12x")
_PLAIN_TYPES = (tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE)
_OCTAL_7 = 8 ** 7
_OCTAL_11 = 8 ** 11


def tar_header(info: tarfile.TarInfo) -> bytes:
    """`info`'s header, byte for byte what tarfile (Python 3.11.4 on) writes in PAX format, built about four times faster.

    The fast path covers what a configuration tree is made of: ASCII names and link
    targets of up to 100 characters and integer fields that fit their octal fields, so
    no extended header is needed but for extended attributes (an SELinux system labels
    every file: tarfile took 7-10 times as long for such a header). Anything else (long
    or non-ASCII names, huge sizes, negative times) is left to tarfile.
    """
    name = info.name + "/" if info.type == tarfile.DIRTYPE and not info.name.endswith("/") else info.name
    if (info.type in _PLAIN_TYPES and name.isascii() and len(name) <= 100 and info.linkname.isascii()
            and len(info.linkname) <= 100 and not info.uname and not info.gname
            and all(keyword.startswith(XATTR_RECORD) for keyword in info.pax_headers)
            and type(info.uid) is int and type(info.gid) is int and type(info.size) is int
            and type(info.mtime) is int and 0 <= info.uid < _OCTAL_7 and 0 <= info.gid < _OCTAL_7
            and 0 <= info.size < _OCTAL_11 and 0 <= info.mtime < _OCTAL_11
            and not info.devmajor and not info.devminor):
        header = bytearray(_USTAR.pack(
            name.encode("ascii"), b"%07o\0" % (info.mode & 0o7777), b"%07o\0" % info.uid, b"%07o\0" % info.gid,
            b"%011o\0" % info.size, b"%011o\0" % info.mtime, b" " * 8, info.type, info.linkname.encode("ascii"),
            tarfile.POSIX_MAGIC, b"", b"", b"", b"", b""))
        header[148:155] = b"%06o\0" % sum(header)
        return _pax_header(info.pax_headers) + bytes(header) if info.pax_headers else bytes(header)
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def _pax_header(records: dict[str, str]) -> bytes:
    """The pax extended header (type x) holding `records`, as tarfile writes it: header block, records, padding."""
    binary = not all(_is_utf8(value) for value in records.values())  # tarfile then marks the values as bytes
    parts = [b"21 hdrcharset=BINARY\n"] if binary else []
    for keyword, value in records.items():
        record = b" %s=%s\n" % (keyword.encode("utf-8"), value.encode("utf-8", "surrogateescape"))
        length = len(record) + 1
        while len(b"%d%s" % (length, record)) != length:  # the length counts its own digits
            length += 1
        parts.append(b"%d%s" % (length, record))
    data = b"".join(parts)
    header = bytearray(_USTAR.pack(b"././@PaxHeader", b"0000000\0", b"0000000\0", b"0000000\0", b"%011o\0" % len(data),
                                   b"00000000000\0", b" " * 8, tarfile.XHDTYPE, b"", tarfile.POSIX_MAGIC, b"", b"", b"",
                                   b"", b""))
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header) + data + b"\0" * (-len(data) % BLOCK)


def _is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------- reading


_USTAR_MAGIC = b"ustar\x0000"
"""Magic and version of a POSIX ustar header (a GNU header has b"ustar  \\0" there)."""
_ZERO_BLOCK = bytes(BLOCK)
_MEMBER_TYPES = (tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE)
_NEVER_WRITTEN = {tarfile.LNKTYPE: "hard link", tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device",
                  tarfile.FIFOTYPE: "fifo", tarfile.CONTTYPE: "contiguous file", tarfile.AREGTYPE: "pre-POSIX file",
                  tarfile.GNUTYPE_SPARSE: "GNU sparse file", tarfile.XGLTYPE: "pax global header",
                  tarfile.SOLARIS_XHDTYPE: "Solaris extended header", tarfile.GNUTYPE_LONGNAME: "GNU long name",
                  tarfile.GNUTYPE_LONGLINK: "GNU long link name"}


def refused(what: str) -> IntegrityError:
    """A payload that breaks a rule of FORMAT.md P.4: the file authenticates, so a writer holding the DMS made it."""
    return IntegrityError(f"The backup is refused: its payload {what}, which docs/FORMAT.md does not allow. Its "
                          "bytes authenticate, so a faulty or foreign program holding the DMS wrote it: use "
                          "another backup.")


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile as FORMAT.md P.4 reads it: POSIX ustar headers and the member types the writer uses, nothing else.

    tarfile itself reads an extended header's data (pax, GNU long name) in one piece, so a huge one is
    refused first; it takes a header that does not verify, a short block or the end of the data as the
    end of the archive, and GNU, v7 and sparse members as ordinary ones: each of those is refused here.
    """

    raw_name = ""
    """The member's name as its ustar header holds it (prefix joined), before tarfile strips a directory's slash."""
    typeflag = b""
    """The header's own typeflag (tarfile turns some into others)."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        buf = tar.fileobj.read(BLOCK)
        where = tar.fileobj.tell() - len(buf)
        if len(buf) < BLOCK:
            raise refused("ends without the tar end-of-archive marker (two zero blocks)" if not buf else
                          f"ends inside a tar header (at byte {where} of the tar stream)")
        if buf == _ZERO_BLOCK:
            raise tarfile.EOFHeaderError("end of file header")
        if buf[257:265] != _USTAR_MAGIC:
            raise refused(f"holds a tar header that is not POSIX ustar (GNU or older) at byte {where} of the tar stream")
        try:
            obj = cls.frombuf(buf, tar.encoding, tar.errors)
        except tarfile.HeaderError:
            raise refused(f"holds a tar header whose checksum or fields are wrong at byte {where} of the tar "
                          "stream") from None
        obj.typeflag = buf[156:157]
        after_pax, tar.after_pax = getattr(tar, "after_pax", False), obj.typeflag == tarfile.XHDTYPE
        if after_pax and tar.after_pax:
            raise refused(f"holds two pax extended headers in a row at byte {where} of the tar stream")
        prefix = buf[345:500].split(b"\0", 1)[0]
        name = buf[0:100].split(b"\0", 1)[0]
        obj.raw_name = (prefix + b"/" + name if prefix else name).decode(tar.encoding, tar.errors)
        obj.offset = where
        return obj._proc_member(tar)

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.typeflag != tarfile.XHDTYPE and self.typeflag not in _MEMBER_TYPES:
            kind = _NEVER_WRITTEN.get(self.typeflag, f"type {self.typeflag!r}")
            raise UnsafeArchiveError(f"The backup holds a member of a type it never writes ({kind}, "
                                     f"{self.raw_name!r}); restore refused.")
        if self.type in EXTENDED_HEADERS and self.size > MAX_EXTENDED_HEADER:
            raise tarfile.HeaderError(f"an extended tar header claims {self.size} bytes, more than the "
                                      f"{MAX_EXTENDED_HEADER} a writer ever needs")
        return super()._proc_member(tar)

    def _proc_gnusparse_00(self, *args: Any) -> None:
        """pax records of a sparse file (GNU.sparse.*): refused, tarfile would fail inside them with no sentence."""
        raise UnsafeArchiveError("The backup holds a sparse file (pax GNU.sparse records), a type it never writes; "
                                 "restore refused.")

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00


class _ZstdFrames:
    """Passes the decrypted payload to the decompressor and checks its frame structure (FORMAT.md, Payload).

    The payload must be zstd frames (RFC 8878 section 3.1.1) back to back, each with a
    content checksum, and nothing else: the decompressor alone would take a frame without
    its checksum and would never see what follows the data the tar reader needed. Only
    the frame, block and checksum headers are read here; the blocks are skipped.
    """

    MAGIC = 0xFD2FB528

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._head = bytearray()
        self._want = 4
        self._state = "magic"
        self._skip = 0
        self.frames = 0
        self.offset = 0
        """Bytes of the compressed payload seen so far."""

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        if data:
            self._feed(data)
        return data

    def finish(self) -> None:
        """The payload ended: refuse it unless it ended after a whole frame."""
        while self.read(READ_SIZE):
            pass
        if self.frames == 0 and self._state == "magic" and not self._head:
            raise refused("is empty, not a zstd stream")
        if self._state != "magic" or self._head or self._skip:
            raise refused(f"ends inside zstd frame {self.frames} (counting from 0)")

    def _feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                take = min(self._skip, n - i)
                self._skip -= take
                i += take
                continue
            take = min(self._want - len(self._head), n - i)
            self._head += data[i:i + take]
            i += take
            if len(self._head) == self._want:
                self._parsed(self.offset + i - len(self._head))
        self.offset += n

    def _parsed(self, at: int) -> None:
        head, self._head = bytes(self._head), bytearray()
        if self._state == "magic":
            magic = int.from_bytes(head, "little")
            if magic != self.MAGIC:
                what = "a skippable zstd frame" if magic & 0xFFFFFFF0 == 0x184D2A50 else "data that is not a zstd frame"
                raise refused(f"holds {what} at byte {at} of the compressed payload, after {self.frames} frame(s)")
            self._state, self._want = "descriptor", 1
        elif self._state == "descriptor":
            fhd = head[0]
            if fhd & 0x08:
                raise refused(f"holds zstd frame {self.frames} with a reserved bit set")
            if fhd & 0x03:
                raise refused(f"holds zstd frame {self.frames}, which needs a dictionary")
            if not fhd & 0x04:
                raise refused(f"holds zstd frame {self.frames} without a content checksum")
            single = bool(fhd & 0x20)
            rest = (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + ((1 if single else 0), 2, 4, 8)[fhd >> 6]
            self._state, self._want = "block", 3
            self._skip = rest
        elif self._state == "block":
            header = int.from_bytes(head, "little")
            kind, size = (header >> 1) & 3, header >> 3
            if kind == 3:
                raise refused(f"holds a zstd block of the reserved type in frame {self.frames}")
            self._skip = 1 if kind == 1 else size
            if header & 1:
                self._state, self._want = "checksum", 4
        else:  # the frame's content checksum, checked by the decompressor
            self.frames += 1
            self._state, self._want = "magic", 4


def _end_of_tar(stream: BinaryIO) -> None:
    """After the first zero block: the second one, then nothing but zero bytes (tar record padding) to the end."""
    second = stream.read(BLOCK)
    if len(second) < BLOCK:
        raise refused("ends after one zero block, without the second block of the tar end-of-archive marker")
    if second != _ZERO_BLOCK:
        raise refused("holds data after a single zero block (the tar end-of-archive marker is two zero blocks)")
    while block := stream.read(READ_SIZE):
        if block.strip(b"\0"):
            raise refused("holds data after the tar end-of-archive marker")


def _member_name(member: tarfile.TarInfo) -> str:
    """The name as written (pax `path`, else ustar prefix and name), without the one `/` a directory's name may end in."""
    name = member.pax_headers.get("path", member.raw_name)
    if member.isdir() and name.endswith("/"):
        name = name[:-1]
    return name


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
    if manifest.get("version") not in READ_VERSIONS or isinstance(manifest.get("version"), bool):
        raise IntegrityError(
            f"The backup's manifest is version {manifest.get('version')!r}; this software reads versions "
            f"{' and '.join(map(str, READ_VERSIONS))}: update appliance-backup to read it."
        )
    return manifest


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]


def safe_member_path(name: str, folder: tuple[str, PurePosixPath] | None = None) -> tuple[str, PurePosixPath]:
    """Split a member name into its component and a path inside it; refuse anything that could escape.

    `name` is as FORMAT.md P.4 step 2 reads it (a directory's one final `/` already removed): relative,
    `/`-separated elements none of which is empty, `.` or `..`, the first a component's name.
    `folder`, the inner path of the last folder read (as text and path), is where the next members
    usually are: their path is made from it instead of parsed whole, which in a tree thousands of
    folders deep made reading a backup quadratic in its depth.
    """
    if "\0" in name:
        raise UnsafeArchiveError(f"The backup holds a member with a forbidden character in its name ({name!r}); restore refused.")
    if name.startswith("/"):
        raise UnsafeArchiveError(f"The backup holds a member with an absolute path ({name!r}); restore refused.")
    parts = name.split("/")
    if ".." in parts:
        raise UnsafeArchiveError(f"The backup holds a member whose path leaves its folder ({name!r}); restore refused.")
    if "" in parts or "." in parts:
        raise UnsafeArchiveError(f"The backup holds a member whose name has an empty or `.` element ({name!r}); "
                                 "restore refused.")
    if parts[0] not in COMPONENTS:
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


def member_xattrs(member: tarfile.TarInfo) -> dict[bytes, bytes]:
    """The extended attributes (POSIX ACLs included) a member's pax records carry, checked (docs/FORMAT.md P.6).

    Raises IntegrityError for a record no writer of this format makes: a name
    outside the namespaces a backup carries, over Linux's limits, badly
    escaped; a value too long; an ACL that is not Linux's binary form; a
    default ACL on anything but a folder. Other pax records are ignored.
    """
    if not member.pax_headers:
        return {}
    found = {}
    for keyword, value in member.pax_headers.items():
        if not keyword.startswith(XATTR_RECORD):
            continue
        escaped = keyword[len(XATTR_RECORD):].encode("utf-8", "surrogateescape")
        name = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), escaped)
        data = value.encode("utf-8", "surrogateescape")
        problem = _NOT_AN_ESCAPE.search(escaped) and "a '%' that starts no %XX escape in its name"
        problem = problem or _xattr_problem(name, data, member)
        if problem:
            raise IntegrityError(f"The backup holds a malformed extended attribute record for {member.name!r} "
                                 f"({problem}); a writer of this format never makes one: do not restore it.")
        found[name] = data
    return found


def _xattr_problem(name: bytes, value: bytes, member: tarfile.TarInfo) -> str | None:
    if not name or b"\0" in name or len(name) > XATTR_NAME_MAX:
        return f"its name is empty, holds a NUL or is longer than {XATTR_NAME_MAX} bytes"
    if len(value) > XATTR_SIZE_MAX:
        return f"its value is longer than {XATTR_SIZE_MAX} bytes"
    if name in POSIX_ACLS:
        if name == POSIX_ACLS[1] and not member.isdir():
            return "a default ACL on something that is not a folder"
        return _acl_problem(value)
    if not any(name.startswith(space) and len(name) > len(space) for space in XATTR_NAMESPACES):
        return f"{name!r} is in no namespace a backup carries (user., security., trusted., the POSIX ACLs)"
    return None


def _acl_problem(value: bytes) -> str | None:
    """Whether `value` is a POSIX ACL in Linux's binary form: version 2, then (tag, permissions, id) entries."""
    if len(value) < 4 + _ACL.size or (len(value) - 4) % _ACL.size or value[:4] != struct.pack("<I", 2):
        return "its ACL is not version 2 with whole 8-byte entries"
    for tag, perm, _ in _ACL.iter_unpack(value[4:]):
        if tag not in _ACL_TAGS or perm > 7:
            return f"its ACL has an entry with tag {tag:#x} and permissions {perm:#o}"
    return None


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

    Checks FORMAT.md P.4 steps 1-4. Raises IntegrityError (or UnsafeArchiveError) on anything that is
    not as written.
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
    folders: set[tuple[str, PurePosixPath]] = set()
    names = {MANIFEST_NAME}
    order = 0
    """Index in COMPONENTS of the component read last: components come in that order."""
    try:
        frames = _ZstdFrames(archive)
        tar = open_tar_stream(decompressed(frames))
        manifest = _first_manifest(tar)
        checksums = None
        summary = PayloadSummary(manifest=manifest, checksums={})
        while (member := tar.next()) is not None:
            tracker.check_cancel()  # also between members without content (a tree of folders and links)
            name = _member_name(member)
            if checksums is not None:
                raise refused(f"holds a member after checksums.json ({name!r})")
            if name in names:  # a second copy would be written over (or through) the first
                raise UnsafeArchiveError(f"The backup holds the member {name!r} twice; restore refused.")
            names.add(name)
            if name == CHECKSUMS_NAME:
                if not member.isfile() or member.size > MAX_CHECKSUMS:
                    raise IntegrityError("The backup's checksum list is malformed.")
                checksums = json.loads(tar.extractfile(member).read())
                continue
            component, inner = safe_member_path(name, folder)
            position = COMPONENTS.index(component)
            if position < order:
                raise refused(f"holds {name!r} after members of the {COMPONENTS[order]} component (the order is "
                              f"{', '.join(COMPONENTS)})")
            order = position
            if component == "database" and (name != DATABASE_MEMBER or not member.isreg()):
                raise UnsafeArchiveError(f"The backup holds {name!r} under database/, where the only member is the "
                                         f"file {DATABASE_MEMBER}; restore refused.")
            if member.issym() and str(inner) == ".":
                member = _root_as_directory(member)
            member_xattrs(member)  # checked here: deep verify refuses what a restore would
            check_not_through_a_link(links, component, inner)
            if component != "database" and str(inner) != "." and (component, inner.parent) not in folders:
                raise UnsafeArchiveError(f"The backup holds {name!r} without its folder before it; restore refused.")
            if member.isdir():
                folders.add((component, inner))
                consumer.directory(component, inner, member)
                folder = (str(inner), inner)
            elif member.issym():
                links.add(f"{component}/{inner}")
                consumer.symlink(component, inner, member)
            else:  # a regular file: _BoundedTarInfo lets no other type through
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
                digests.append((component, name, digest))
                summary.files += 1
                summary.bytes += member.size
        if checksums is None:
            raise IntegrityError("The backup ends before its checksum list: it is incomplete.")
        _end_of_tar(tar.fileobj)
        frames.finish()  # to the end, so the final chunk is authenticated too
        hashing.close()
    except (tarfile.TarError, zstandard.ZstdError, ValueError, EOFError) as exc:
        raise IntegrityError(f"The backup's contents cannot be read ({_short(exc)}): it is damaged.") from None
    finally:
        hashing.stop(discard=True)
    _check_digests(manifest, checksums, [(component, name, digest.hexdigest()) for component, name, digest in digests])
    summary.checksums = checksums
    return summary


def _check_digests(manifest: dict, checksums: Any, digests: list[tuple[str, str, str]]) -> None:
    """checksums.json against what was read (FORMAT.md P.3; version 1 spelled names that are not UTF-8 its own way)."""
    if not isinstance(checksums, dict):
        raise IntegrityError("The backup's checksum list is malformed.")
    components = {c: hashlib.sha256() for c in COMPONENTS}
    for component, name, hexdigest in digests:
        components[component].update(hexdigest.encode() + b"  " + name_bytes(name) + b"\n")
    if manifest.get("version") == 1:
        expected = {"files": checksums.get("files", {})}
        found = {"files": {name: hexdigest for _, name, hexdigest in digests}}
    else:
        expected = {key: checksums.get(key) for key in ("files", "files_base64")}
        files, binary = checksum_entries([(name, hexdigest) for _, name, hexdigest in digests])
        found = {"files": files, "files_base64": binary}
    for key, value in expected.items():
        if not isinstance(value, dict):
            raise IntegrityError(f"The backup's checksum list is malformed (no `{key}` object).")
        if value != found[key]:
            bad = sorted(set(value.items()) ^ set(found[key].items()))[:3]
            raise IntegrityError(f"The backup's files do not match its checksums (first differences: {bad}).")
    listed = checksums.get("components")
    for component, digest in components.items():
        if not isinstance(listed, dict) or listed.get(component) != digest.hexdigest():
            raise IntegrityError(f"The {component} component does not match its checksum.")
