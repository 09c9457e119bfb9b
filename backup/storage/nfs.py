"""Provides the NFS storage backend: an NFSv4 share, through the kernel client or a userspace one.

Two transports reach a share:

- the kernel NFS client, the normal path on a real appliance: the share is
  mounted (`vers=4|4.1|4.2,soft`) into a private directory and used through
  LocalStorage;
- the userspace client `nfs-rs`, where the kernel has no NFS (containers, the
  test machine). It speaks NFS 4.0 and 4.1 only.

`open_nfs_storage` picks one with `transport_for` and never falls back to a
version other than the one configured.

Every call of the userspace backend is bounded by a timeout; a dead server is
a StorageError sentence after `timeout` seconds, never a hang. After a
connection-level failure the client is dropped (closing it on a dead server
would wait out another timeout) and the next call connects anew, so a server
that went away and came back is used again without a restart of the console.
"""

from __future__ import annotations

import errno
import io
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, TypeVar

from backup.errors import BackupError, BackupNotFoundError, StorageError, StorageFullError
from backup.humanize import printable
from backup.storage import PARTIAL_SUFFIX, Entry, Usage
from backup.storage.local import not_a_backup
from backup.storage.nfsurl import NfsUrl, parse_nfs_url

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
"""Seconds any one NFS call may take (connect, and each operation)."""
WRITE_BLOCK = 8 * 1024 * 1024
"""Bytes handed to the client per write. nfs-rs makes every write() durable
(UNSTABLE WRITEs then COMMIT), so small writes would each pay a COMMIT."""
READ_BUFFER = 8 * 1024 * 1024
"""Read-ahead of backup files: the client splits it into parallel READs."""
READDIR_BUFFER = 64 * 1024
"""Bytes of one READDIR reply (about 340 entries with their attributes). Without a limit nfs-rs asks
for the server's read size (1 MiB from ganesha: about 5,500 entries, 150-470 ms on loopback), so the
first page of a big directory came that much later; small replies also make every later page cheap."""
USERSPACE_VERSIONS = {"4": "4.0", "4.1": "4.1"}
"""Configured version -> the version nfs-rs is asked for; nothing else is offered."""
NFS_VERSIONS = ("4", "4.1", "4.2")

NO_USERSPACE_42 = (
    "This machine has no kernel NFS client and the userspace client speaks NFS 4.0 and 4.1 only, "
    "so choose 4.1 or 4."
)


# ---------------------------------------------------------------- transport choice


def kernel_nfs_problem(*, filesystems: Path = Path("/proc/filesystems"),
                       which: Callable[[str], str | None] = shutil.which,
                       euid: Callable[[], int] = os.geteuid,
                       modules: Path = Path("/lib/modules")) -> str | None:
    """Why the kernel NFS client cannot be used here, or None if it can.

    The kernel client needs: NFSv4 in the kernel (listed in /proc/filesystems,
    or a loadable nfsv4 module for the running kernel, which mount.nfs4 loads
    on demand), the mount.nfs4 helper, and root to mount.
    """
    try:
        listed = filesystems.read_text()
    except OSError:
        listed = ""
    in_kernel = any(line.split()[-1:] == ["nfs4"] for line in listed.splitlines())
    if not in_kernel:
        release = os.uname().release
        module_dir = modules / release / "kernel" / "fs" / "nfs"
        in_kernel = module_dir.is_dir() and any(p.name.startswith("nfsv4.ko") for p in module_dir.iterdir())
    if not in_kernel:
        return "the kernel has no NFSv4 support (no nfs4 in /proc/filesystems and no nfsv4 module)"
    if not (which("mount.nfs4") or which("mount.nfs")):
        return "the mount.nfs4 helper is not installed (package nfs-common)"
    if euid() != 0:
        return "mounting needs root"
    return None


def transport_for(version: str, **probe: Any) -> str:
    """"kernel" or "userspace" for NFS `version` on this machine, or a StorageError saying why neither works.

    The kernel client is preferred whenever it is usable. Without it, 4 and
    4.1 go through the userspace client; 4.2 is refused, never downgraded.
    `probe` is passed to kernel_nfs_problem (tests point it at fake files).
    """
    if version not in NFS_VERSIONS:
        raise StorageError(f"NFS version {version!r} is not offered: choose 4, 4.1 or 4.2.")
    if kernel_nfs_problem(**probe) is None:
        return "kernel"
    if version in USERSPACE_VERSIONS:
        return "userspace"
    raise StorageError(NO_USERSPACE_42)


def open_nfs_storage(url: str, version: str, *, timeout: float = DEFAULT_TIMEOUT, probe: dict[str, Any] | None = None,
                     commands: MountCommands | None = None) -> NfsStorage | KernelNfsStorage:
    """The backend for an NFS share, on the transport this machine offers for `version`.

    `probe` goes to kernel_nfs_problem and `commands` to KernelNfsStorage (tests substitute both).
    """
    parsed = parse_nfs_url(url)
    if transport_for(version, **(probe or {})) == "kernel":
        return KernelNfsStorage(parsed, version, timeout=timeout, commands=commands or MountCommands())
    return NfsStorage(parsed, version, timeout=timeout)


def describe_share(url: NfsUrl, version: str, transport: str) -> str:
    return f"NFS {version} share {url} ({transport} client)"


# ---------------------------------------------------------------- userspace client (nfs-rs)


def _nfs_rs() -> Any:
    try:
        import nfs_rs
    except ImportError:  # pragma: no cover - the package is a dependency
        raise StorageError(
            "The userspace NFS client (Python package nfs-rs) is not installed: reinstall appliance-backup."
        ) from None
    return nfs_rs


class _Broken(Exception):
    """A client that failed at the connection level; used once, never shown."""


class NfsStorage:
    """A share on an NFSv4.0/4.1 server, through the userspace client nfs-rs.

    nfs-rs cannot list the root of the export it is connected to (it sends
    LOOKUP "" and servers answer NFS4ERR_BADNAME), so the client connects to
    the parent of the configured directory and prefixes every path with the
    directory's name.
    """

    def __init__(self, url: str | NfsUrl, version: str = "4.1", *, timeout: float = DEFAULT_TIMEOUT,
                 uid: int | None = None, gid: int | None = None) -> None:
        self.url = url if isinstance(url, NfsUrl) else parse_nfs_url(url)
        if version == "4.2":
            raise StorageError(NO_USERSPACE_42)
        if version not in USERSPACE_VERSIONS:
            raise StorageError(f"NFS version {version!r} is not offered: choose 4 or 4.1.")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.version = version
        self.timeout = float(timeout)
        self.uid = uid
        self.gid = gid
        self.description = describe_share(self.url, version, "userspace")
        path = PurePosixPath(self.url.export_path)
        self._mount_path = str(path.parent)
        self._prefix = path.name
        self._lock = threading.Lock()
        self._connecting = threading.Lock()
        """Held by the thread that connects; others wait for its client (or its failure)."""
        self._attempts = 0
        self._last_failure: StorageError | None = None
        self._client: Any = None
        self._usage_client: Any = None
        self._pending_removals: set[str] = set()
        self._cursors: dict[str, list[tuple[int, Any]]] = {}

    # ------------------------------------------------------------ connection

    @property
    def server(self) -> str:
        return self.url.netloc

    def _connect(self, export_path: str) -> Any:
        nfs_rs = _nfs_rs()
        options: dict[str, Any] = {}
        if self.uid is not None:
            options["uid"] = self.uid
        if self.gid is not None:
            options["gid"] = self.gid
        host = f"[{self.url.host}]" if ":" in self.url.host else self.url.host
        try:
            return nfs_rs.Client.connect(
                f"nfs://{host}:{self.url.port}{export_path}",
                versions=[USERSPACE_VERSIONS[self.version]], readdir_buffer=READDIR_BUFFER,
                connect_timeout=self.timeout, operation_timeout=self.timeout, **options,
            )
        except nfs_rs.NfsError as exc:
            raise self._error(exc, f"Connecting to the NFS share {self.url}", missing=f"The export path {export_path} does not exist on the NFS server {self.server}: check the URL.") from None

    def _get_client(self) -> Any:
        """The connected client; one thread connects at a time, and threads that waited for an
        attempt that failed get its sentence at once instead of waiting out another timeout."""
        with self._lock:
            if self._client is not None:
                return self._client
            seen = self._attempts
        with self._connecting:
            with self._lock:
                if self._client is not None:
                    return self._client
                failure = self._last_failure if self._attempts != seen else None
            if failure is not None:
                raise type(failure)(failure.message)
            try:
                client = self._connect(self._mount_path)
                try:
                    self._check_share(client)
                except StorageError:
                    self._drop(client)  # check again on the next call: the directory may have been created
                    raise
            except StorageError as exc:
                with self._lock:
                    self._attempts += 1
                    self._last_failure = exc
                raise
            with self._lock:
                self._client = client
                self._attempts += 1
                self._last_failure = None
        self._remove_pending(client)
        return client

    def connect(self) -> None:
        """Connect now and check the share, so that the first call does not wait for it (the storage
        browser starts this while its screen is built). Failures are StorageError sentences."""
        self._get_client()

    def _check_share(self, client: Any) -> None:
        nfs_rs = _nfs_rs()
        try:
            info = client.stat(self._prefix)
        except nfs_rs.NfsNotFoundError:
            raise StorageError(
                f"The directory {self.url.export_path} does not exist on the NFS server {self.server}: "
                "create it on the server or choose another location."
            ) from None
        except nfs_rs.NfsError as exc:
            raise self._error(exc, f"Opening {self.url}", client=client) from None
        if info.type != nfs_rs.FileType.DIRECTORY:
            raise StorageError(f"{self.url} is not a directory on the NFS server: choose a directory.")

    def _drop(self, client: Any) -> None:
        """Forget a client that failed at the connection level; close it without waiting."""
        with self._lock:
            if self._client is client:
                self._client = None
            if self._usage_client is client:
                self._usage_client = None
            self._cursors.clear()
        threading.Thread(target=_close_quietly, args=(client,), daemon=True, name="nfs-close").start()

    def close(self) -> None:
        """Release the connections (safe to call more than once)."""
        with self._lock:
            clients = [c for c in (self._client, self._usage_client) if c is not None]
            self._client = self._usage_client = None
        for client in clients:
            _close_quietly(client)

    def __enter__(self) -> NfsStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, op: Callable[[Any], T], *, missing: str | None = None,
              missing_error: type[Exception] = StorageError, retry: bool = True) -> T:
        """Run `op(client)`, turning NFS errors into sentences.

        A read-only call (`retry`) that fails because the server restarted
        under an old client is tried once more on a new connection.
        """
        nfs_rs = _nfs_rs()
        for attempt in (1, 2):
            client = self._get_client()
            try:
                return op(client)
            except nfs_rs.NfsNotFoundError as exc:
                if missing is not None:
                    raise missing_error(missing) from None
                raise self._error(exc, what, client=client) from None
            except nfs_rs.NfsError as exc:
                if attempt == 1 and retry and _stale_client(nfs_rs, exc):
                    self._drop(client)
                    continue
                raise self._error(exc, what, client=client) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, exc: Any, what: str, *, client: Any = None, missing: str | None = None) -> StorageError:
        """The sentence for an nfs-rs error (and drop `client` when the connection itself failed)."""
        nfs_rs = _nfs_rs()
        code = getattr(exc, "code_name", None) or ""
        server = self.server
        if isinstance(exc, (nfs_rs.NfsTimeoutError, nfs_rs.NfsConnectionError, nfs_rs.NfsRpcError,
                            nfs_rs.NfsOperationOutcomeError, nfs_rs.NfsStateLostError,
                            nfs_rs.NfsClosedResourceError, nfs_rs.NfsFileCloseError)) or code in _STALE_CODES:
            if client is not None:
                self._drop(client)
        # A connection-level failure says what was being done, on which share (the URL, never a
        # local path), then why and what to do.
        if isinstance(exc, nfs_rs.NfsTimeoutError):
            return StorageError(
                f"{what} failed: the NFS server {server} does not answer (timed out after {self.timeout:g} s). "
                "Check that it is running and reachable, then try again."
            )
        if isinstance(exc, nfs_rs.NfsConnectionError):
            if getattr(exc, "errno", None) == 111:
                return StorageError(
                    f"{what} failed: the NFS server {server} does not answer (connection refused). "
                    "Check that it is running and reachable, and that the port is right."
                )
            return StorageError(
                f"{what} failed: the connection to the NFS server {server} was lost ({exc.message}). "
                "Check that it is running and reachable, then try again."
            )
        if isinstance(exc, nfs_rs.NfsRpcError):
            return StorageError(
                f"{server} answered, but not as an NFS server ({exc.message}): check the server name and port."
            )
        if code == "NFS4ERR_MINOR_VERS_MISMATCH" or isinstance(exc, nfs_rs.NfsUnsupportedError):
            return StorageError(
                f"The NFS server {server} refuses NFS version {self.version}: choose a version the server accepts "
                "on the Storage screen, or have the server's administrator enable it."
            )
        if code in ("NFS4ERR_NOSPC", "NFS4ERR_DQUOT") or getattr(exc, "errno", None) in (28, 122):
            return StorageFullError(
                f"The NFS share {self.url} is full: {what} failed for lack of space"
                + (" (the quota is used up)" if code == "NFS4ERR_DQUOT" else "")
                + ". Free space on the server or choose another location."
            )
        if code == "NFS4ERR_ROFS" or getattr(exc, "errno", None) == 30:
            return StorageError(
                f"The NFS share {self.url} is exported read-only: {what} failed. "
                "Have the server export it read-write, or choose another location."
            )
        if isinstance(exc, nfs_rs.NfsPermissionError) or code in ("NFS4ERR_ACCESS", "NFS4ERR_PERM"):
            who = f"uid {self.uid if self.uid is not None else os.geteuid()}"
            return StorageError(
                f"Permission denied: {what} on the NFS share {self.url} failed. Give this appliance ({who}) "
                "write access on the server, or choose another location."
            )
        if isinstance(exc, nfs_rs.NfsNotFoundError):
            if missing:
                return StorageError(missing)
            return StorageError(f"{what} failed: it does not exist on the NFS share {self.url}.")
        if code == "NFS4ERR_GRACE":
            return StorageError(
                f"The NFS server {server} has just restarted and is still in its grace period: {what} failed. "
                "Try again in a minute or two."
            )
        if isinstance(exc, (nfs_rs.NfsOperationOutcomeError, nfs_rs.NfsStateLostError)) or code in _STALE_CODES:
            return StorageError(
                f"The NFS server {server} restarted or lost this appliance's session during {what[:1].lower() + what[1:]}: "
                "try again."
            )
        detail = f"{exc.message} ({code})" if code else str(getattr(exc, "message", exc))
        where = "" if str(self.url) in what else f" on the NFS share {self.url}"  # "Connecting to the NFS share X"
        return StorageError(f"{what}{where} failed: {detail}.")

    # ------------------------------------------------------------ paths

    def _path(self, path: str) -> str:
        parts = PurePosixPath(path).parts if path else ()
        if path.startswith("/") or ".." in parts or "\x00" in path:
            raise StorageError(f"The storage path {path!r} is not inside the storage location.")
        return "/".join((self._prefix, *[p for p in parts if p != "."]))

    def _shown(self, path: str) -> str:
        return f"{self.url}/{path}" if path else str(self.url)

    # ------------------------------------------------------------ the Storage protocol

    def list(self, path: str = "", *, offset: int = 0, limit: int | None = None) -> list[Entry]:
        """Entries of a directory, `offset` and `limit` applied in the server's order.

        Pages are read with server cookies; the cookie at each page boundary
        is kept, so asking for the next slice of a huge directory resumes
        near it instead of reading the directory again from the start.
        """
        nfs_rs = _nfs_rs()
        target = self._path(path)

        def op(client: Any) -> list[Entry]:
            cursors = self._cursors.setdefault(target, [(0, nfs_rs.DirectoryCookie())])
            index, cookie = max((c for c in cursors if c[0] <= offset), key=lambda c: c[0])
            entries: list[Entry] = []
            while limit is None or len(entries) < limit:
                try:
                    page = client.scandir_page(target, cookie)
                except nfs_rs.NfsBadCookieError:
                    if index == 0:
                        raise
                    self._cursors[target] = cursors = [(0, nfs_rs.DirectoryCookie())]
                    index, cookie = cursors[0]
                    entries.clear()
                    continue
                for item in page.entries:
                    if index >= offset and (limit is None or len(entries) < limit):
                        entries.append(_entry(item.name, item.info))
                    index += 1
                if page.eof or not page.entries:
                    break
                cookie = page.next
                if len(cursors) < 4096 and all(i != index for i, _ in cursors):
                    cursors.append((index, cookie))
            return entries

        missing = f"Listing {self._shown(path)} failed: the directory does not exist. Create it or choose another location."
        return self._call(f"Listing {self._shown(path)}", op, missing=missing)

    def stat(self, path: str) -> Entry:
        target = self._path(path)
        info = self._call(f"Reading {self._shown(path)}", lambda c: c.stat(target),
                          missing=f"{self._shown(path)} does not exist in the storage.", missing_error=BackupNotFoundError)
        return _entry(PurePosixPath(target).name if path else PurePosixPath(self.url.export_path).name, info)

    def usage(self, path: str = "") -> Usage:
        """Space of the file system holding the share (nfs-rs reports it for the connected export only)."""
        self._path(path)
        nfs_rs = _nfs_rs()
        what = f"Reading the disk usage of {self._shown(path)}"
        for attempt in (1, 2):
            with self._lock:
                client = self._usage_client
            if client is None:
                # The main client sits one level up, possibly on the server's pseudo file
                # system, which reports zeros; this one is connected to the share itself.
                client = self._connect(self.url.export_path)
                with self._lock:
                    self._usage_client = client
            try:
                st = client.fs_stat()
            except nfs_rs.NfsError as exc:
                if attempt == 1 and _stale_client(nfs_rs, exc):
                    self._drop(client)
                    continue
                raise self._error(exc, what, client=client) from None
            return Usage(total=st.total_bytes, used=st.total_bytes - st.free_bytes, free=st.available_bytes)
        raise AssertionError("unreachable")  # pragma: no cover

    def access(self, path: str = "") -> tuple[bool, bool]:
        target = self._path(path)

        nfs_rs = _nfs_rs()

        def op(client: Any) -> tuple[bool, bool]:
            try:
                return client.access(target, os.R_OK | os.X_OK), client.access(target, os.W_OK | os.X_OK)
            except nfs_rs.NfsNotFoundError:
                return False, False  # as os.access answers for a missing path

        return self._call(f"Checking access to {self._shown(path)}", op)

    def create(self, name: str) -> NfsAtomicFile:
        self._path(name)
        if "/" in name or name in ("", ".", ".."):
            raise StorageError(f"{name!r} is not a file name: a backup is written at the top of the storage.")
        return NfsAtomicFile(self, name)

    def open(self, name: str) -> BinaryIO:
        """The file's type is read from its attributes first: a FIFO, device or link is refused before
        any OPEN or READ (the server does not follow links, in the path or at its end)."""
        nfs_rs = _nfs_rs()
        target = self._path(name)
        missing = f"There is no backup named {printable(name)} in the {self.description}."

        def op(client: Any) -> _NfsReader:
            if client.stat(target).type != nfs_rs.FileType.FILE:
                raise not_a_backup(name, self.description)
            try:
                file = client.open(target, "rb")
            except nfs_rs.NfsError as exc:
                if getattr(exc, "code_name", None) in NOT_A_FILE_CODES:  # replaced since the look
                    raise not_a_backup(name, self.description) from None
                raise
            return _NfsReader(self, client, file, name)

        raw = self._call(f"Opening {self._shown(printable(name))}", op, missing=missing, missing_error=BackupNotFoundError)
        return io.BufferedReader(raw, buffer_size=READ_BUFFER)  # type: ignore[return-value]

    def delete(self, name: str) -> None:
        target = self._path(name)
        missing = f"There is no backup named {name} in the {self.description}."
        # NFSv4 REMOVE is synchronous on the server: the directory change is durable when it answers.
        self._call(f"Deleting {self._shown(name)}", lambda c: c.unlink(target), missing=missing,
                   missing_error=BackupNotFoundError, retry=False)
        self._forget_cursors(target)

    def _forget_cursors(self, changed: str) -> None:
        """Listing positions of the directory holding `changed` no longer count entries right."""
        with self._lock:
            self._cursors.pop(str(PurePosixPath(changed).parent), None)

    # ------------------------------------------------------------ cleanup after a failure

    def _discard(self, path: str) -> None:
        """Remove `path` now if the server answers, else on the next successful connection."""
        nfs_rs = _nfs_rs()
        with self._lock:
            client = self._client
        try:
            if client is None:
                client = self._get_client()  # bounded by the connect timeout; removes pending ones
            client.unlink(path, missing_ok=True)
        except (nfs_rs.NfsError, StorageError) as exc:
            if isinstance(exc, nfs_rs.NfsError) and client is not None:
                self._error(exc, "Removing a partial file", client=client)
            with self._lock:
                self._pending_removals.add(path)
            return
        with self._lock:
            self._pending_removals.discard(path)
        self._forget_cursors(path)

    def _remove_pending(self, client: Any) -> None:
        with self._lock:
            pending = sorted(self._pending_removals)
        for path in pending:
            try:
                client.unlink(path, missing_ok=True)
            except Exception:  # noqa: BLE001 - best effort; tried again on the next connection
                continue
            with self._lock:
                self._pending_removals.discard(path)

    @property
    def pending_removals(self) -> list[str]:
        """Partial files an abort could not remove yet (the server was gone), relative to the share."""
        with self._lock:
            return sorted(p.split("/", 1)[1] for p in self._pending_removals)


NOT_A_FILE_CODES = frozenset({"NFS4ERR_SYMLINK", "NFS4ERR_WRONG_TYPE", "NFS4ERR_ISDIR", "NFS4ERR_NOTDIR"})
"""What OPEN answers for a name that is no regular file, or whose path goes through a link."""

_STALE_CODES = frozenset({
    "NFS4ERR_STALE_CLIENTID", "NFS4ERR_STALE_STATEID", "NFS4ERR_BADSESSION", "NFS4ERR_DEADSESSION",
    "NFS4ERR_EXPIRED", "NFS4ERR_BAD_STATEID", "NFS4ERR_CONN_NOT_BOUND_TO_SESSION",
})


def _stale_client(nfs_rs: Any, exc: Any) -> bool:
    """The server restarted (or the lease ran out) under this client: a new connection may succeed."""
    return (isinstance(exc, (nfs_rs.NfsOperationOutcomeError, nfs_rs.NfsStateLostError, nfs_rs.NfsClosedResourceError))
            or getattr(exc, "code_name", None) in _STALE_CODES)


RETRIES = 3
"""Attempts of a read or write the server answered with "try again" (never of a timeout)."""


def _safe_to_retry(nfs_rs: Any, exc: Any) -> bool:
    """The server answered that this request may simply be sent again (seen here: NFS4ERR_RETRY_UNCACHED_REP
    under parallel 4.1 READs). A timeout or a lost connection is not retried: it would only wait again."""
    if isinstance(exc, (nfs_rs.NfsTimeoutError, nfs_rs.NfsConnectionError)):
        return False
    return (isinstance(exc, nfs_rs.NfsRetryableError)
            or str(getattr(exc, "outcome", "") or "") in ("safe_to_retry", "OperationOutcome.SAFE_TO_RETRY")
            or getattr(exc, "code_name", None) in ("NFS4ERR_RETRY_UNCACHED_REP", "NFS4ERR_DELAY"))


def _close_quietly(obj: Any) -> None:
    try:
        obj.close()
    except Exception:  # noqa: BLE001 - closing what already failed
        pass


def _entry(name: str, info: Any) -> Entry:
    nfs_rs = _nfs_rs()
    return Entry(name=name, is_dir=info.type == nfs_rs.FileType.DIRECTORY, size=info.size,
                 mtime=info.mtime / 1e9, mode=info.mode & 0o7777, uid=info.uid, gid=info.gid,
                 regular=info.type == nfs_rs.FileType.FILE)


class NfsAtomicFile:
    """A backup being written as `<name>.partial` on the share; commit renames it to `<name>`.

    nfs-rs has no exclusive-create open, so the partial file is created under
    a random temporary name and hard-linked to `<name>.partial` (LINK fails
    with NFS4ERR_EXIST if that name is taken), then the temporary name is
    removed; writing continues through the same open file.
    """

    def __init__(self, storage: NfsStorage, name: str) -> None:
        self.storage = storage
        self.name = name
        self.written = 0
        self._final = storage._path(name)
        self._partial = storage._path(name + PARTIAL_SUFFIX)
        self._shown = storage._shown(name + PARTIAL_SUFFIX)
        self._buffer = bytearray()
        self._file: Any = None
        self._client: Any = None
        self._done = False
        self._create()

    def _create(self) -> None:
        nfs_rs = _nfs_rs()
        storage = self.storage
        temporary = storage._path(f".{self.name}.{secrets.token_hex(4)}.new")
        what = f"Creating {self._shown}"
        client = storage._get_client()
        try:
            file = client.open(temporary, "wb")
        except nfs_rs.NfsError as exc:
            raise storage._error(exc, what, client=client) from None
        try:
            client.chmod(temporary, 0o600)  # nfs-rs creates files 0666
            try:
                client.link(temporary, self._partial)
            except nfs_rs.NfsAlreadyExistsError:
                raise StorageError(f"{self._shown} already exists: another backup with this name is being written.") from None
            finally:
                client.unlink(temporary, missing_ok=True)
        except nfs_rs.NfsError as exc:
            _close_quietly(file)
            raise storage._error(exc, what, client=client) from None
        except StorageError:
            _close_quietly(file)
            raise
        self._file, self._client = file, client
        storage._forget_cursors(self._partial)

    def write(self, data: bytes) -> int:
        if self._done:
            raise StorageError(f"{self._shown} was already finished or abandoned; nothing more can be written to it.")
        n = len(data)
        self._buffer += data
        self.written += n
        if len(self._buffer) >= WRITE_BLOCK:
            self._flush(whole_blocks=True)
        return n

    def _flush(self, *, whole_blocks: bool) -> None:
        nfs_rs = _nfs_rs()
        end = len(self._buffer) - len(self._buffer) % WRITE_BLOCK if whole_blocks else len(self._buffer)
        if end == 0:
            return
        done = self.written - len(self._buffer)
        for attempt in range(1, RETRIES + 1):
            try:
                # Positional, so a retry writes the same bytes at the same place (idempotent).
                with memoryview(self._buffer) as view:
                    self._file.write_at(view[:end], done)
                break
            except nfs_rs.NfsError as exc:
                if attempt < RETRIES and _safe_to_retry(nfs_rs, exc):
                    continue
                after = f" (after {done} bytes)" if done else ""
                raise self.storage._error(exc, f"Writing {self._shown}{after}", client=self._client) from None
        del self._buffer[:end]

    def commit(self) -> None:
        nfs_rs = _nfs_rs()
        storage = self.storage
        try:
            # Every nfs-rs write returns once its bytes are on stable storage (COMMIT or
            # FILE_SYNC), so flushing the tail is the fsync.
            self._flush(whole_blocks=False)
            try:
                self._file.close()
            except nfs_rs.NfsError as exc:
                raise storage._error(exc, f"Closing {self._shown}", client=self._client) from None
            try:
                exists = self._client.exists(self._final)
            except nfs_rs.NfsError as exc:
                raise storage._error(exc, f"Finishing {storage._shown(self.name)}", client=self._client) from None
            if exists:
                raise StorageError(f"{storage._shown(self.name)} already exists; the new backup was not put over it.")
            try:
                # RENAME is synchronous on an NFSv4 server: durable when it answers.
                self._client.rename(self._partial, self._final)
            except nfs_rs.NfsError as exc:
                raise storage._error(exc, f"Finishing {storage._shown(self.name)}", client=self._client) from None
            storage._forget_cursors(self._final)
        except StorageError:
            self.abort()
            raise
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer = bytearray()
        storage = self.storage
        with storage._lock:
            alive = storage._client is self._client
        if alive and self._file is not None:
            _close_quietly(self._file)
        storage._discard(self._partial)


class _NfsReader(io.RawIOBase):
    """A backup file opened for reading; NFS errors become StorageError sentences.

    Reads are positional (the position is kept here), so a READ the server
    asks to resend is sent again for the same range.
    """

    def __init__(self, storage: NfsStorage, client: Any, file: Any, name: str) -> None:
        super().__init__()
        self._storage = storage
        self._client = client
        self._file = file
        self._name = name
        self._position = 0

    def _guard(self, what: str, op: Callable[[], T]) -> T:
        nfs_rs = _nfs_rs()
        for attempt in range(1, RETRIES + 1):
            try:
                return op()
            except nfs_rs.NfsError as exc:
                if attempt < RETRIES and _safe_to_retry(nfs_rs, exc):
                    continue
                raise self._storage._error(exc, f"{what} {self._storage._shown(self._name)}", client=self._client) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._guard("Reading", lambda: self._file.readinto_at(buffer, self._position))
        self._position += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            size = self._guard("Reading", lambda: self._client.stat(self._storage._path(self._name)).size)
            position = size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._position = position
        return position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        if not self.closed:
            with self._storage._lock:
                alive = self._storage._client is self._client
            if alive:
                _close_quietly(self._file)
        super().close()


# ---------------------------------------------------------------- kernel client


@dataclass(frozen=True)
class MountCommands:
    """The programs that mount and unmount a share: the system's own, unless a test substitutes
    stand-ins (the kernel NFS client cannot exist in the test container)."""

    mount: tuple[str, ...] = ("mount",)
    umount: tuple[str, ...] = ("umount",)


_SERVER_GONE = frozenset(os.strerror(e) for e in (errno.ETIMEDOUT, errno.EIO, errno.ESTALE, errno.EHOSTDOWN,
                                                   errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.ENOTCONN))
"""What a soft NFS mount answers when the server is gone (as the local backend words it)."""


def is_mounted(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> bool:
    """Whether something is mounted on `path`. os.path.ismount misses a mount of the same file system
    (a bind mount); the kernel's mount table does not."""
    try:
        table = mountinfo.read_text()
    except OSError:
        return os.path.ismount(path)
    wanted = os.path.realpath(path)
    for line in table.splitlines():
        fields = line.split()
        if len(fields) > 4 and _unescape_mount_path(fields[4]) == wanted:
            return True
    return False


def _unescape_mount_path(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


class KernelNfsStorage:
    """A share mounted by the kernel NFS client into a private directory, used as a local directory.

    `soft` makes a dead server fail calls after timeo x retrans instead of hanging them forever.
    Errors name the share's nfs:// URL, never the private mount point. `close()` unmounts (lazily
    if the share is busy or the server gone) and removes the mount point.
    """

    def __init__(self, url: str | NfsUrl, version: str, *, timeout: float = DEFAULT_TIMEOUT,
                 run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                 commands: MountCommands = MountCommands()) -> None:
        self.url = url if isinstance(url, NfsUrl) else parse_nfs_url(url)
        if version not in NFS_VERSIONS:
            raise StorageError(f"NFS version {version!r} is not offered: choose 4, 4.1 or 4.2.")
        self.version = version
        self.timeout = float(timeout)
        self.description = describe_share(self.url, version, "kernel")
        self._run = run
        self._commands = commands
        self._mount_point: Path | None = None
        self._local: Any = None
        self._lock = threading.Lock()

    def mount_command(self, mount_point: Path) -> list[str]:
        host = f"[{self.url.host}]" if ":" in self.url.host else self.url.host
        vers = "4.0" if self.version == "4" else self.version
        deciseconds = max(1, int(self.timeout * 10))
        options = f"vers={vers},soft,timeo={deciseconds},retrans=2,port={self.url.port},nosuid,nodev,noexec"
        return [*self._commands.mount, "-t", "nfs4", "-o", options, f"{host}:{self.url.export_path}", str(mount_point)]

    @property
    def mount_point(self) -> Path | None:
        """Where the share is mounted now, or None."""
        return self._mount_point

    def _storage(self) -> Any:
        from backup.storage.local import LocalStorage

        with self._lock:
            if self._local is not None:
                return self._local
            mount_point = Path(tempfile.mkdtemp(prefix="appliance-backup-nfs-"))  # mode 0700
            try:
                result = self._run(self.mount_command(mount_point), capture_output=True, text=True,
                                   timeout=self.timeout * 3 + 5)
            except subprocess.TimeoutExpired:
                self._unmount(mount_point)  # mount may have finished after all
                raise StorageError(
                    f"Mounting the {self.description} failed: the NFS server {self.url.netloc} does not answer "
                    "(timed out). Check that it is running and reachable, then try again."
                ) from None
            if result.returncode != 0:
                mount_point.rmdir()
                reason = (result.stderr or result.stdout or "").strip().splitlines()
                detail = (reason[-1] if reason else f"exit {result.returncode}").replace(str(mount_point), "the mount point")
                raise StorageError(
                    f"Mounting the {self.description} failed ({detail}): "
                    "check the URL, the version and that the server exports the path to this appliance."
                )
            if not is_mounted(mount_point):
                self._unmount(mount_point)
                raise StorageError(
                    f"Mounting the {self.description} reported success, but nothing is mounted: "
                    "check the system's mount command (mount.nfs4, package nfs-common)."
                )
            self._mount_point = mount_point
            self._local = LocalStorage(mount_point)
            self._local.description = self.description
            return self._local

    def close(self) -> None:
        """Unmount and remove the mount point (safe to call more than once)."""
        with self._lock:
            mount_point, self._mount_point, self._local = self._mount_point, None, None
        if mount_point is not None:
            self._unmount(mount_point)

    def _unmount(self, mount_point: Path) -> None:
        umount = list(self._commands.umount)
        if is_mounted(mount_point):
            try:
                result = self._run([*umount, str(mount_point)], capture_output=True, timeout=self.timeout * 3 + 5)
                busy_or_gone = result.returncode != 0
            except subprocess.TimeoutExpired:
                busy_or_gone = True
            if busy_or_gone and is_mounted(mount_point):
                # Detach now; the kernel finishes when the last file on it is closed.
                try:
                    self._run([*umount, "-l", str(mount_point)], capture_output=True, timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        try:
            mount_point.rmdir()
        except OSError:
            pass  # still mounted: removing it would fail anyway, and its contents are the share's

    # ------------------------------------------------------------ errors name the share, not the mount point

    def _translated(self, exc: BackupError) -> BackupError:
        mount_point = self._mount_point
        message = exc.message
        if mount_point is not None:
            message = message.replace(str(mount_point), str(self.url))
        if any(message.endswith(f"failed: {reason}.") for reason in _SERVER_GONE):
            message += f" Check that the NFS server {self.url.netloc} is running and reachable, then try again."
        return type(exc)(message)

    def _call(self, op: Callable[[Any], T]) -> T:
        try:
            return op(self._storage())
        except BackupError as exc:
            raise self._translated(exc) from None

    def list(self, path: str = "", *, offset: int = 0, limit: int | None = None) -> list[Entry]:
        return self._call(lambda s: s.list(path, offset=offset, limit=limit))

    def stat(self, path: str) -> Entry:
        return self._call(lambda s: s.stat(path))

    def usage(self, path: str = "") -> Usage:
        return self._call(lambda s: s.usage(path))

    def access(self, path: str = "") -> tuple[bool, bool]:
        return self._call(lambda s: s.access(path))

    def create(self, name: str) -> Any:
        return _KernelFile(self, self._call(lambda s: s.create(name)))

    def open(self, name: str) -> BinaryIO:
        raw = _KernelReader(self, name, self._call(lambda s: s.open(name)))
        return io.BufferedReader(raw, buffer_size=READ_BUFFER)  # type: ignore[return-value]

    def delete(self, name: str) -> None:
        self._call(lambda s: s.delete(name))


class _KernelFile:
    """The local backend's atomic file on the mounted share; its errors name the share."""

    def __init__(self, storage: KernelNfsStorage, inner: Any) -> None:
        self._storage = storage
        self._inner = inner
        self.name = inner.name

    @property
    def written(self) -> int:
        return self._inner.written

    def _guard(self, op: Callable[[], T]) -> T:
        try:
            return op()
        except BackupError as exc:
            raise self._storage._translated(exc) from None

    def write(self, data: bytes) -> int:
        return self._guard(lambda: self._inner.write(data))

    def commit(self) -> None:
        self._guard(self._inner.commit)

    def abort(self) -> None:
        self._inner.abort()


class _KernelReader(io.RawIOBase):
    """A backup file on the mounted share; an I/O error (a soft mount's timeout) names the share."""

    def __init__(self, storage: KernelNfsStorage, name: str, inner: Any) -> None:
        super().__init__()
        self._storage = storage
        self._name = name
        self._inner = inner

    def _fail(self, exc: OSError) -> StorageError:
        reason = exc.strerror or str(exc)
        return self._storage._translated(StorageError(f"Reading {self._storage.url}/{self._name} failed: {reason}."))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return self._inner.readinto(buffer)
        except OSError as exc:
            raise self._fail(exc) from None

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        try:
            return self._inner.seek(offset, whence)
        except OSError as exc:
            raise self._fail(exc) from None

    def tell(self) -> int:
        return self._inner.tell()

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()
