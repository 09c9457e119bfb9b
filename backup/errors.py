"""Provides the typed errors of the core and the exit code of each.

Every error carries a sentence an operator can act on: what failed, why, what
to do. Messages never contain a passphrase or key material.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of the headless command (documented in README.md)."""

    OK = 0
    FAILED = 1
    """The operation failed for a reason not listed below (I/O error, ...)."""
    USAGE = 2
    """Bad command line, or a missing or malformed configuration."""
    DMS_NOT_SET = 3
    WRONG_DMS = 4
    INTEGRITY = 5
    """Tampered, truncated, or not a backup file."""
    LOCKED = 6
    """Another backup or restore holds the appliance's lock."""
    STORAGE = 7
    """Storage not configured, unreachable, not writable, or full."""
    DMS_ALREADY_SET = 8
    OPERATOR_REFUSED = 9
    """The operator may not create or restore backups (an OTP account)."""
    NOT_FOUND = 10
    """The named backup does not exist in the storage."""
    INTERRUPTED = 130
    """Stopped by SIGINT, SIGTERM or SIGHUP; nothing partial was left behind."""


class BackupError(Exception):
    """Base of every error the core raises on purpose."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(BackupError):
    exit_code = ExitCode.USAGE


class DmsNotSetError(BackupError):
    exit_code = ExitCode.DMS_NOT_SET


class DmsAlreadySetError(BackupError):
    exit_code = ExitCode.DMS_ALREADY_SET


class WrongDmsError(BackupError):
    exit_code = ExitCode.WRONG_DMS


class IntegrityError(BackupError):
    exit_code = ExitCode.INTEGRITY


class NotABackupError(IntegrityError):
    """The file does not start like a backup at all."""


class UnsafeArchiveError(IntegrityError):
    """An authenticated archive holds a member that would escape its target."""


class LockHeldError(BackupError):
    exit_code = ExitCode.LOCKED


class StorageError(BackupError):
    exit_code = ExitCode.STORAGE


class StorageFullError(StorageError):
    pass


class StateDirError(BackupError):
    """The appliance's own state directory (journal, lock, temporary copies) cannot be used."""


class DatabaseLockedError(BackupError):
    """Another program held the internal database locked for longer than the backup waits."""


class OperatorRefusedError(BackupError):
    exit_code = ExitCode.OPERATOR_REFUSED


class BackupNotFoundError(BackupError):
    exit_code = ExitCode.NOT_FOUND


class InterruptedRunError(BackupError):
    exit_code = ExitCode.INTERRUPTED


class UnfinishedRestoreError(BackupError):
    """An interrupted restore is not yet finished or undone: the appliance may be a mix of two states."""


class SlotAlreadyDoneError(BackupError):
    """A scheduled slot was already run (by the daemon or an open console): it is not run twice."""

    exit_code = ExitCode.OK


class UnsafePathError(ConfigError):
    """Another local user could replace the configuration, the state directory or the key file (backup.trust)."""
