"""Provides ConsoleScreen: a mode screen with a title line on top and the key footer below."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static


class ConsoleScreen(Screen):
    """Base of the mode screens. Subclasses give SCREEN_TITLE and compose_body()."""

    SCREEN_TITLE = ""

    def compose(self) -> ComposeResult:
        yield Static(f"appliance-backup | {self.SCREEN_TITLE}", id="title-bar", markup=False)
        yield from self.compose_body()
        yield Footer(show_command_palette=not self.app.serial)

    def compose_body(self) -> ComposeResult:
        yield from ()


class FormScreen(ConsoleScreen):
    """A mode screen with fields. Nothing is focused on arrival, so the plain keys 1/2/3/b/q work;
    Tab enters the fields and Esc leaves them."""

    AUTO_FOCUS = ""
    BINDINGS = [Binding("escape", "leave_field", "Leave field")]

    def action_leave_field(self) -> None:
        self.set_focus(None)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "leave_field":
            return self.focused is not None
        return True
