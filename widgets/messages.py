"""Provides the messages the console's workers and widgets send: small dataclasses, one module.

Workers run the core on threads and post these to the App; the App keeps the
latest state and the screens render it. No message ever carries a secret.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from textual.message import Message

from backup.config import Config
from backup.operators import Access
from backup.progress import Progress
from backup.secret import SecretInfo
from backup.service import BackupResult, StatusReport


class Concealed:
    """A secret on its way to a worker. Its repr, which Textual puts into worker
    descriptions and message dumps, hides it; only `reveal()` gives it.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Concealed('********')"

    __str__ = __repr__


@dataclass
class SecretSubmitted(Message):
    """The operator asked to set the DMS with a passphrase that passed the form's checks."""

    passphrase: Concealed


@dataclass
class SecretCheckRequested(Message):
    """The operator asked whether a passphrase is the DMS."""

    passphrase: Concealed


@dataclass
class StatusRefreshed(Message):
    """A fresh status report was read from the core."""

    report: StatusReport


@dataclass
class BackupStarted(Message):
    """A manual backup worker began (the core may still refuse it)."""


@dataclass
class BackupProgressed(Message):
    """A progress report of the running backup; a newer one replaces an older one in the queue."""

    progress: Progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, BackupProgressed)


@dataclass
class BackupFinished(Message):
    """The backup was written and committed to the storage."""

    result: BackupResult


@dataclass
class BackupFailed(Message):
    """The backup was refused or failed; `sentence` is what the operator sees."""

    sentence: str
    refused: bool
    """True when the core refused before starting (no DMS, lock held, operator not allowed)."""
    quiet: bool = False
    """A scheduled slot another process already took: nothing to tell the operator."""


@dataclass
class SecretSet(Message):
    """The Domain Master Secret was set."""

    info: SecretInfo


@dataclass
class SecretSetFailed(Message):
    """Setting the Domain Master Secret failed; `sentence` never contains the secret."""

    sentence: str


@dataclass
class SecretChecked(Message):
    """The answer to "is this the DMS?"; None when no answer could be given."""

    matches: bool | None
    sentence: str = ""


@dataclass
class SettingsSaved(Message):
    """The configuration file was written; `config` is what it now holds."""

    config: Config


@dataclass
class SettingsSaveFailed(Message):
    sentence: str


@dataclass
class AlertsTested(Message):
    """`notify test` from the console: one line per alert target (what it answered), and whether all took it."""

    lines: list[str]
    all_sent: bool


@dataclass
class StatusUnavailable(Message):
    """The status could not be read; `sentence` says why."""

    sentence: str


# ---------------------------------------------------------------- the storage browser


@dataclass
class DirectoryPageListed(Message):
    """A page of a directory the storage browser shows; `complete` when it was the last."""

    path: str
    offset: int
    entries: list
    """backup.storage.Entry items, in the storage's order."""
    complete: bool


@dataclass
class DirectoryListFailed(Message):
    path: str
    offset: int
    sentence: str


@dataclass
class StorageInfoRead(Message):
    """Permissions and disk usage of a directory; `sentence` says why they could not be read."""

    path: str
    access: tuple[bool, bool] | None
    usage: object | None
    """A backup.storage.Usage, or None."""
    sentence: str = ""


@dataclass
class BackupDetailsRead(Message):
    """The details of a backup file; `sentence` says why they could not be read."""

    path: str
    details: object | None
    """A backup.service.BackupDetails, or None."""
    sentence: str = ""


@dataclass
class BackupIdentityRead(Message):
    """Whose backup it is, read with the DMS an operator gave to restore it; `foreign` names another appliance."""

    path: str
    passphrase: Concealed
    foreign: str | None
    """backup.service.foreign_note's sentence, or None when it is this appliance's (or could not be read)."""


@dataclass
class BackupTaskProgressed(Message):
    """Progress of a verify or restore the browser runs; a newer one replaces an older one."""

    progress: Progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, BackupTaskProgressed)


@dataclass
class BackupTaskStarted(Message):
    """The browser started a verify, restore or delete; it bubbles to the App, which owns what runs."""

    task: str
    """"verify", "verify_deep", "restore" or "delete"."""
    stop_task: Callable[[], None]
    """Asks the task to stop (the operator quits the console); it ends with a BackupTaskEnded."""


@dataclass
class BackupTaskEnded(Message):
    """A verify, restore or delete the browser ran has ended; `sentence` is what the operator sees."""

    task: str
    """"verify", "restore" or "delete"."""
    path: str
    ok: bool
    sentence: str


@dataclass
class OperatorAccessRead(Message):
    """Who the operator is and whether they may change anything, read again with each status."""

    access: Access
