"""Provides the storage backends that hold backup files, behind one protocol.

Paths given to a backend are relative to its root (the configured location),
"" being the root itself. Every backend reports failures as StorageError
sentences; a network backend bounds every call with a timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:  # backup.config validates NFS URLs with backup.storage.nfsurl
    from backup.config import Config
from backup.errors import StorageError


@dataclass(frozen=True)
class Entry:
    name: str
    is_dir: bool
    size: int
    mtime: float
    mode: int
    """Permission bits only."""
    uid: int
    gid: int
    regular: bool = True
    """A regular file. False for a folder, and for a link, FIFO, socket or device, which backends
    show as they are (a link is never followed) and never open."""


@dataclass(frozen=True)
class Usage:
    total: int
    used: int
    free: int
    """Bytes this appliance may still write."""


class AtomicFile(Protocol):
    """A file being written under a partial name; `commit()` makes it durable and final."""

    name: str

    def write(self, data: bytes) -> int: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class Storage(Protocol):
    description: str
    """Where the backups go, for the operator: "local directory /srv/backups"."""

    def list(self, path: str = "", *, offset: int = 0, limit: int | None = None) -> list[Entry]: ...

    def stat(self, path: str) -> Entry: ...

    def usage(self, path: str = "") -> Usage: ...

    def access(self, path: str = "") -> tuple[bool, bool]:
        """(readable, writable) for this appliance."""
        ...

    def create(self, name: str) -> AtomicFile: ...

    def open(self, name: str) -> BinaryIO:
        """A regular file, read from the start. Never follows a link and never blocks on a FIFO or device:
        anything that is not a regular file is refused (BackupNotFoundError) before a byte is read."""
        ...

    def delete(self, name: str) -> None: ...


PARTIAL_SUFFIX = ".partial"


def open_storage(config: "Config") -> Storage:
    """The backend the configuration names."""
    kind = config.storage.type
    if kind == "local" and config.storage.path is not None:  # config.py requires the path of a local storage
        from backup.storage.local import LocalStorage

        return LocalStorage(config.storage.path)
    if kind in ("none", "local"):
        raise StorageError(
            "No backup storage is configured: choose a local directory or an NFS share on the Storage screen, "
            f"or set [storage] in {config.path}."
        )
    from backup.storage.nfs import open_nfs_storage

    return open_nfs_storage(config.storage.url or "", config.storage.version or "4.1")
