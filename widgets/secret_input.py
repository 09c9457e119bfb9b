"""Provides SecretInput: a masked field whose mask is ASCII on a serial console.

Textual masks a password with U+2022 (a bullet), which a serial terminal or
the Linux console's font may not have; there the mask is `*`.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Input

from widgets.console import ConsoleHandle


class SecretInput(ConsoleHandle, Input):
    """An Input with password=True; `*` for each character when the app runs the serial profile."""

    def __init__(self, **kwargs) -> None:
        super().__init__(password=True, **kwargs)

    @property
    def _value(self) -> Text:  # Textual 8.2's hook for the rendered value (pinned in requirements.lock)
        if self.password and self.console.serial:
            return Text("*" * len(self.value), no_wrap=True, overflow="ignore", end="")
        return super()._value
