"""Provides the small modal dialogs: HelpScreen and ConfirmQuitScreen."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Static

HELP_TEXT = """\
Keys (shown in the footer; every action is also in the command palette, ctrl+p):
  1  Status     backup status, the running backup, recent runs
  2  Settings   Domain Master Secret, backup filename prefix, schedule
  3  Storage    where backups are kept
  b  Back up now
  ?  this help
  q  quit (asks first while a backup runs)
On Storage, o opens the storage browser: Enter opens, Backspace goes up,
u uses the location; on a backup, v verifies it (V: deep verify),
r restores it, x deletes it.
Tab and shift+Tab move between fields; Enter presses a button; Esc leaves a field.
A backup can be created only once the Domain Master Secret is set.
Do not restart or shut down the appliance while a backup runs."""

QUIT_WARNING = ("A backup is running. The appliance must not be restarted or shut down during a backup.\n"
                "Quitting now stops the backup: nothing partial is kept, and no new backup is created.")
QUIT_WARNINGS = {
    "backup": QUIT_WARNING,
    "restore": ("A restore is running. The appliance must not be restarted or shut down during a restore.\n"
                "Quitting now stops it: while the backup is still being checked nothing on the appliance has "
                "changed; once the state is being replaced, that step finishes first. The appliance is never "
                "left half restored."),
    "verify": "A verify is running. Quitting now stops it; nothing is changed.",
}
"""What quitting now would do, by the kind of run in progress."""


class HelpScreen(ModalScreen[None]):
    """Keys and what each screen does. Any of Esc, ?, q closes it."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("question_mark", "close", "Close", show=False),
        Binding("q", "close", "Close", show=False),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="help-dialog", classes="dialog"):
            yield Static("Help", classes="section-title")
            yield Static(HELP_TEXT, markup=False)
            yield Button("Close", id="close", compact=True)
        yield Footer(show_command_palette=False)

    @on(Button.Pressed, "#close")
    def action_close(self) -> None:
        self.dismiss(None)


class ConfirmQuitScreen(ModalScreen[bool]):
    """Asks before quitting while a backup, restore or verify runs; dismisses True to stop it and quit."""

    BINDINGS = [
        Binding("escape", "keep", "Keep running"),
        Binding("n", "keep", "Keep running", show=False),
        Binding("y", "stop", "Stop and quit"),
    ]

    def __init__(self, run: str = "backup") -> None:
        super().__init__()
        self.run = run
        """"backup", "restore" or "verify": a key of QUIT_WARNINGS."""

    def compose(self) -> ComposeResult:
        run = self.run
        with Vertical(id="quit-dialog", classes="dialog"):
            yield Static(f"Quit while a {run} runs?", classes="section-title")
            yield Static(QUIT_WARNINGS[run], id="quit-warning", markup=False)
            with Horizontal(classes="buttons"):
                yield Button(f"Keep the {run} running", id="keep", variant="primary", compact=True)
                yield Button(f"Stop the {run} and quit", id="stop", variant="error", compact=True)
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one("#keep", Button).focus()

    @on(Button.Pressed, "#keep")
    def action_keep(self) -> None:
        self.dismiss(False)

    @on(Button.Pressed, "#stop")
    def action_stop(self) -> None:
        self.dismiss(True)
