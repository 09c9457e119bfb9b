"""Provides Console, what screens and widgets may ask of the running console App, and ConsoleHandle.

The App (tui.app.BackupConsole) sits above screens and widgets, so they cannot import it; they name what
they use of it here, and mypy checks both sides against this Protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any, Protocol, cast

from textual.message_pump import MessagePump

from backup.config import Config
from backup.operators import Access
from backup.progress import Progress
from backup.service import BackupService, StatusReport
from widgets.profile import Glyphs

if TYPE_CHECKING:
    from widgets.messages import Concealed


class Console(Protocol):
    """The console App as screens and widgets see it."""

    config: Config
    service: BackupService
    clock: Callable[[], datetime]
    schedule_tz: tzinfo | None
    glyphs: Glyphs
    serial: bool
    report: StatusReport | None
    progress: Progress | None
    backup_running: bool
    notice: str
    access: Access | None

    def refresh_status(self) -> Any: ...

    def set_secret(self, passphrase: Concealed, reply_to: MessagePump) -> Any: ...

    def check_secret(self, passphrase: Concealed, reply_to: MessagePump) -> Any: ...

    def save_settings(self, changes: dict[str, dict[str, Any]], reply_to: MessagePump) -> Any: ...


class ConsoleHandle:
    """Mixed into a screen or widget: `self.console` is the App, typed as a Console."""

    @property
    def console(self) -> Console:
        return cast("Console", self.app)  # type: ignore[attr-defined]
