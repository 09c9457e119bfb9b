"""Provides StorageInfo: the storage browser's "Storage Information" panel.

Permissions (read, write) and used, remaining and total disk space of one
directory, in human units. The screen loads them on a worker and calls
`show`, or `show_problem` with the sentence of what went wrong.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from backup.storage import Usage
from widgets.format import human_bytes, printable


def permissions(readable: bool, writable: bool) -> str:
    if readable and writable:
        return "read, write"
    if readable:
        return "read only (backups cannot be written here)"
    if writable:
        return "write only (backups cannot be listed or read here)"
    return "none (neither read nor write)"


def info_table(rows: list[tuple[str, str]], label_width: int) -> Table:
    """Two columns, no borders: a label and a value that wraps under itself."""
    table = Table(box=None, show_header=False, padding=(0, 1, 0, 0), expand=True)
    table.add_column(no_wrap=True, width=label_width, style="bold")
    table.add_column(overflow="fold", ratio=1)
    for label, value in rows:
        table.add_row(Text(label), Text(printable(value)))  # names and paths come from the storage
    return table


class StorageInfo(Static):
    """Storage Information of the directory the browser shows."""

    DEFAULT_CSS = """
    StorageInfo { height: auto; padding: 0 1; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__("", markup=False, **kwargs)
        self.values: dict[str, str] = {}
        """What is shown, by label (tests read it)."""

    def show_loading(self, where: str) -> None:
        self._show([("Permissions", "reading..."), ("Used Disk Space", "-"),
                    ("Remaining Disk Space", "-"), ("Total Disk Space", "-")])

    def show(self, where: str, access: tuple[bool, bool], usage: Usage) -> None:
        used = human_bytes(usage.used)
        if usage.total:
            used += f" ({usage.used * 100 / usage.total:.0f}%)"
        self._show([("Permissions", permissions(*access)), ("Used Disk Space", used),
                    ("Remaining Disk Space", human_bytes(usage.free)), ("Total Disk Space", human_bytes(usage.total))])

    def show_problem(self, where: str, sentence: str) -> None:
        self._show([("Permissions", "unknown"), ("Used Disk Space", "unknown"),
                    ("Remaining Disk Space", "unknown"), ("Total Disk Space", "unknown"), ("Problem", sentence)])

    def _show(self, rows: list[tuple[str, str]]) -> None:
        self.values = dict(rows)
        self.update(info_table(rows, 20))


__all__ = ["StorageInfo", "permissions", "info_table"]
