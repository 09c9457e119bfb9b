"""Provides the dialogs of the storage browser's actions: ConfirmRestoreScreen,
ConfirmDeleteScreen and PassphraseScreen.

A restore dialog names exactly what will be replaced (the appliance's
firmware, system and database paths) and, when this appliance's DMS does not
open the backup, asks for the DMS it was made with. Passphrases leave a
dialog only wrapped in Concealed; the field is cleared as it is read.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Static

from backup.config import Config
from widgets.format import printable
from widgets.messages import Concealed
from widgets.secret_input import SecretInput


@dataclass(frozen=True)
class RestoreConfirmed:
    """The operator confirmed a restore; `passphrase` is the backup's DMS when it was asked for."""

    passphrase: Concealed | None


def restore_warning(name: str, config: Config) -> str:
    appliance = config.appliance
    return (f"Restoring {printable(name)} replaces this appliance's state with the backup's:\n"
            f"  firmware configuration  {appliance.firmware}\n"
            f"  system configuration    {appliance.system}\n"
            f"  internal database       {appliance.database}\n"
            "Nothing changes until the whole backup has been decrypted and checked. The state before the "
            f"restore is kept under {config.state_dir / 'rollback'}, and a failed restore puts it back.")


class _Dialog(ModalScreen):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)


class ConfirmRestoreScreen(_Dialog):
    """Dismisses a RestoreConfirmed, or None when the operator keeps the current state."""

    def __init__(self, name: str, config: Config, *, ask_dms: bool, foreign: str | None = None) -> None:
        super().__init__()
        self.foreign = foreign
        """The sentence naming the other appliance the backup is from (backup.service.foreign_note), if it is."""
        self.backup_name = name
        self.config = config
        self.ask_dms = ask_dms

    def compose(self) -> ComposeResult:
        with Vertical(id="restore-dialog", classes="dialog"):
            yield Static("Restore this backup?", classes="section-title")
            if self.foreign:
                yield Static(self.foreign, id="restore-foreign", classes="note", markup=False)
            yield Static(restore_warning(self.backup_name, self.config), id="restore-warning", markup=False)
            if self.ask_dms:
                yield Static("This appliance's Domain Master Secret does not open this backup: "
                             "give the DMS it was made with.", classes="note", markup=False)
                yield SecretInput(id="restore-dms", placeholder="the backup's DMS", compact=True)
                yield Static("", id="restore-error", classes="form-error", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Keep the current state", id="cancel", variant="primary", compact=True)
                yield Button("Restore and replace", id="restore", variant="error", compact=True)
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one("#restore-dms" if self.ask_dms else "#cancel").focus()
        if self.ask_dms:
            self.query_one("#restore-error").display = False

    @on(Button.Pressed, "#restore")
    @on(Input.Submitted, "#restore-dms")
    def _restore(self) -> None:
        if not self.ask_dms:
            self.dismiss(RestoreConfirmed(None))
            return
        field = self.query_one("#restore-dms", Input)
        value = field.value
        field.clear()
        if not value:
            error = self.query_one("#restore-error", Static)
            error.update("Type the backup's Domain Master Secret first.")
            error.display = True
            field.focus()
            return
        self.dismiss(RestoreConfirmed(Concealed(value)))


class ConfirmDeleteScreen(_Dialog):
    """Dismisses True to delete the backup file."""

    def __init__(self, name: str, where: str) -> None:
        super().__init__()
        self.backup_name = name
        self.where = where

    def compose(self) -> ComposeResult:
        with Vertical(id="delete-dialog", classes="dialog"):
            yield Static("Delete this backup?", classes="section-title")
            yield Static(f"The backup file {printable(self.backup_name)} in {printable(self.where)} is deleted for good; "
                         "it cannot be restored afterwards.", id="delete-warning", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Keep it", id="cancel", variant="primary", compact=True)
                yield Button("Delete the backup", id="delete", variant="error", compact=True)
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one("#cancel").focus()

    @on(Button.Pressed, "#delete")
    def _delete(self) -> None:
        self.dismiss(True)


class PassphraseScreen(_Dialog):
    """Asks for the DMS a backup was made with (to verify a backup of another appliance)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.backup_name = name

    def compose(self) -> ComposeResult:
        with Vertical(id="passphrase-dialog", classes="dialog"):
            yield Static("Domain Master Secret of this backup", classes="section-title")
            yield Static(f"This appliance's DMS does not open {printable(self.backup_name)}: give the DMS it was made with.",
                         markup=False)
            yield SecretInput(id="backup-dms", placeholder="the backup's DMS", compact=True)
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel", compact=True)
                yield Button("Verify", id="ok", variant="primary", compact=True)
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one("#backup-dms").focus()

    @on(Button.Pressed, "#ok")
    @on(Input.Submitted, "#backup-dms")
    def _ok(self) -> None:
        field = self.query_one("#backup-dms", Input)
        value = field.value
        field.clear()
        self.dismiss(Concealed(value) if value else None)


__all__ = ["ConfirmRestoreScreen", "ConfirmDeleteScreen", "PassphraseScreen", "RestoreConfirmed", "restore_warning"]
