"""Provides ConsoleScreen: a mode screen with a title line on top and the key footer below."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

from backup.operators import Access
from widgets.console import ConsoleHandle


class ConsoleScreen(ConsoleHandle, Screen):
    """Base of the mode screens. Subclasses give SCREEN_TITLE and compose_body()."""

    SCREEN_TITLE = ""

    def compose(self) -> ComposeResult:
        yield Static(f"appliance-backup | {self.SCREEN_TITLE}", id="title-bar", markup=False)
        yield from self.compose_body()
        yield Footer(show_command_palette=not self.console.serial)

    def compose_body(self) -> ComposeResult:
        yield from ()


class FormScreen(ConsoleScreen):
    """A mode screen with fields. Nothing is focused on arrival, so the plain keys 1/2/3/b/q work;
    Tab enters the fields and Esc leaves them."""

    AUTO_FOCUS = ""
    BINDINGS = [Binding("escape", "leave_field", "Leave field")]

    def action_leave_field(self) -> None:
        self.set_focus(None)

    def access_note(self) -> Static:
        """The line that tells a look-only operator, on arrival, why their changes will be refused."""
        return Static("", id="access-note", classes="form-error", markup=False)

    def watch_access(self) -> None:
        """Call from on_mount: keep the access note up to date with the App's `access`."""
        self.watch(self.app, "access", self._show_access)

    def _show_access(self, access: Access | None) -> None:
        note = self.query_one("#access-note", Static)
        look_only = access is not None and not access.may_change
        note.update(access.refusal("change anything here") if look_only else "")  # type: ignore[union-attr]
        note.display = look_only

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "leave_field":
            return self.focused is not None
        return True
