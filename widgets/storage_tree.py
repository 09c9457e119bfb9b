"""Provides StorageTree: one directory of a storage as a lazy, paged list with a cursor.

The widget never reads the storage itself. It shows the rows it was given
(`..` first, then the entries in pages) and asks for the next page with a
PageWanted message when the cursor comes near the end of what is loaded; the
screen lists that page on a thread worker and hands it back with
`add_page`. It is a Line API ScrollView, so drawing costs the same for a
directory of 20 entries as for one of 50,000: only visible rows are rendered.
Icons are plain ASCII ("[D]", "[F]", "[B]") for serial consoles.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from rich.segment import Segment
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from backup.humanize import printable
from backup.storage import Entry
from widgets.format import human_bytes

UP = ".."
"""The first row of every directory below the top: one level up."""
BACKUP_SUFFIX = ".abk"
PAGE_MARGIN = 50
"""Ask for the next page when the cursor is this many rows from the end of what is loaded."""


FILE, DIRECTORY, BACKUP, PARENT = 0, 1, 2, 3
"""Row kinds, kept in a bytearray: a directory of 50,000 entries is three objects to the garbage
collector (names, kinds, sizes), not 100,000; a full collection over that many objects stalls
the event loop for a third of a second.
"""


class Row(NamedTuple):
    """One line of the list: `..`, or an entry of the directory."""

    name: str
    kind: int
    size: int

    @property
    def is_up(self) -> bool:
        return self.kind == PARENT

    @property
    def is_dir(self) -> bool:
        return self.kind in (DIRECTORY, PARENT)

    @property
    def is_backup(self) -> bool:
        return self.kind == BACKUP


def kind_of(entry: Entry) -> int:
    if entry.is_dir:
        return DIRECTORY
    return BACKUP if entry.regular and entry.name.endswith(BACKUP_SUFFIX) else FILE  # a FIFO or link is no backup


def icon(row: Row) -> str:
    if row.is_up:
        return "[^]"
    if row.is_dir:
        return "[D]"
    return "[B]" if row.is_backup else "[F]"


def sort_key(entry: Entry) -> tuple[bool, str]:
    return (not entry.is_dir, entry.name.casefold())


class StorageTree(ScrollView, can_focus=True):
    """The current directory of the storage browser."""

    DEFAULT_CSS = """
    StorageTree { height: 1fr; background: $surface; }
    StorageTree > .storage-tree--cursor { background: $block-cursor-blurred-background; }
    StorageTree:focus > .storage-tree--cursor { background: $block-cursor-background; color: $block-cursor-foreground; text-style: bold; }
    StorageTree > .storage-tree--note { color: $text-muted; }
    StorageTree > .storage-tree--dir { text-style: bold; }
    StorageTree > .storage-tree--backup { color: $accent; }
    """
    COMPONENT_CLASSES = {"storage-tree--cursor", "storage-tree--note", "storage-tree--dir", "storage-tree--backup"}
    BINDINGS = [
        Binding("enter", "open", "Open", show=False),
        Binding("backspace", "up", "Up", show=False),
        Binding("up", "cursor(-1)", show=False),
        Binding("down", "cursor(1)", show=False),
        Binding("pageup", "page(-1)", show=False),
        Binding("pagedown", "page(1)", show=False),
        Binding("home", "first", show=False),
        Binding("end", "last", show=False),
    ]

    @dataclass
    class PageWanted(Message):
        """The cursor is near the end of the loaded rows: list `path` from `offset`."""

        tree: StorageTree
        path: str
        offset: int

    @dataclass
    class Highlighted(Message):
        tree: StorageTree
        row: Row | None

    @dataclass
    class Opened(Message):
        """Enter on a row: a directory to go into, `..` to go up, or a file to show."""

        tree: StorageTree
        row: Row

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.path = ""
        """The directory shown, relative to the storage's top ("" is the top)."""
        self._names: list[str] = []
        self._kinds = bytearray()
        self._sizes = array("q")
        self.cursor = 0
        self.loaded = 0
        """Entries of the directory loaded so far (the offset of the next page)."""
        self.complete = False
        """Whether the last page came (no more entries)."""
        self.page_pending = False
        """Whether a page was asked for and has not come yet. (Not Textual's `loading`: setting that
        mounts a LoadingIndicator over the list for every page, hiding the rows and leaving a dead widget's
        line cache behind in the lru_cache on StylesCache.get_inner_outer, Textual issue #6665.)"""
        self.note = ""
        """What the last line says while loading, or when the directory is empty or unreadable."""
        self._select: str | None = None

    # ------------------------------------------------------------ data

    def show_directory(self, path: str, *, at_top: bool, select: str | None = None) -> None:
        """Start showing `path` (its pages come with add_page); `select` is put under the cursor when it arrives."""
        self.path = path
        self._names, self._kinds, self._sizes = [], bytearray(), array("q")
        if not at_top:
            self._append(UP, PARENT, 0)
        self.cursor = 0
        self.loaded = 0
        self.complete = False
        self.page_pending = False
        self.note = "loading..."
        self._select = select
        self.scroll_to(0, 0, animate=False, immediate=True)
        self._resize()
        self.refresh()
        self.post_message(self.Highlighted(self, self.current))
        self.request_page()

    def request_page(self) -> None:
        """Ask for the next page (the screen answers with add_page)."""
        if self.complete or self.page_pending:
            return
        self.page_pending = True
        self.post_message(self.PageWanted(self, self.path, self.loaded))

    def add_page(self, path: str, offset: int, entries: Sequence[Entry], complete: bool) -> bool:
        """Append a page of `path`; a page of another directory or offset (a stale answer) is ignored."""
        if path != self.path or offset != self.loaded:
            return False
        first = not self.loaded
        for entry in sorted(entries, key=sort_key):
            self._append(entry.name, kind_of(entry), entry.size)
        self.loaded += len(entries)
        self.complete = complete or not entries
        self.page_pending = False
        self.note = "(empty)" if self.complete and not self.loaded else ""
        if self._select is not None:
            index = self._index(self._select, start=len(self._names) - len(entries))
            if index is not None:
                self._select = None
                self.move_to(index)
        elif first and self.count > 1 and self.cursor == 0:
            self.move_to(1)  # the first entry, not `..`
        self._resize()
        self.refresh()
        self._maybe_more()
        return True

    def page_failed(self, path: str, sentence: str) -> None:
        if path != self.path:
            return
        self.page_pending = False
        self.complete = True
        self.note = "(cannot be read)"
        self._resize()
        self.refresh()

    def remove_entry(self, name: str) -> None:
        """Take an entry out (it was deleted)."""
        index = self._index(name, start=0 if self.at_top else 1)
        if index is None:
            return
        del self._names[index], self._kinds[index], self._sizes[index]
        self.loaded = max(0, self.loaded - 1)
        self.cursor = -1  # so that move_to announces the row now under the cursor
        self.move_to(min(index, self.count - 1))
        self._resize()
        self.refresh()

    def _append(self, name: str, kind: int, size: int) -> None:
        self._names.append(name)
        self._kinds.append(kind)
        self._sizes.append(size)

    def _index(self, name: str, start: int = 0) -> int | None:
        try:
            return self._names.index(name, max(0, start))
        except ValueError:
            return None

    @property
    def count(self) -> int:
        """Rows loaded, `..` included."""
        return len(self._names)

    def row(self, index: int) -> Row:
        return Row(self._names[index], self._kinds[index], self._sizes[index])

    @property
    def names(self) -> list[str]:
        """The names of the rows, `..` first below the top (a copy)."""
        return list(self._names)

    @property
    def current(self) -> Row | None:
        return self.row(self.cursor) if 0 <= self.cursor < self.count else None

    @property
    def at_top(self) -> bool:
        return not self._names or self._kinds[0] != PARENT

    def _resize(self) -> None:
        lines = self.count + (1 if self.note else 0)
        self.virtual_size = Size(self.size.width, lines)

    def _maybe_more(self) -> None:
        if not self.complete and not self.page_pending and self.cursor >= self.count - PAGE_MARGIN:
            self.request_page()

    # ------------------------------------------------------------ cursor

    def move_to(self, index: int) -> None:
        index = max(0, min(index, self.count - 1))
        if index == self.cursor and self.count:
            self._scroll_to_cursor()
            return
        self.cursor = index
        self._scroll_to_cursor()
        self.refresh()
        self.post_message(self.Highlighted(self, self.current))
        self._maybe_more()

    def _scroll_to_cursor(self) -> None:
        height = max(1, self.scrollable_content_region.height)
        top = int(self.scroll_y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False, immediate=True)

    def action_cursor(self, delta: int) -> None:
        self.move_to(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self.move_to(self.cursor + direction * max(1, self.scrollable_content_region.height - 1))

    def action_first(self) -> None:
        self.move_to(0)

    def action_last(self) -> None:
        self.move_to(self.count - 1)

    def action_open(self) -> None:
        row = self.current
        if row is not None:
            self.post_message(self.Opened(self, row))

    def action_up(self) -> None:
        if not self.at_top:
            self.post_message(self.Opened(self, self.row(0)))

    def on_click(self, event: events.Click) -> None:
        index = int(self.scroll_y) + event.y
        if 0 <= index < self.count:
            if index == self.cursor and event.chain >= 2:
                self.action_open()
            self.move_to(index)

    def on_resize(self) -> None:
        self._resize()

    # ------------------------------------------------------------ drawing

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        index = int(self.scroll_y) + y
        base = self.rich_style
        if index >= self.count:
            if index == self.count and self.note:
                style = base + self.get_component_rich_style("storage-tree--note")
                return Strip([Segment(f" {printable(self.note)}".ljust(width)[:width], style)], width)
            return Strip.blank(width, base)
        row = self.row(index)
        style = base
        if row.is_dir:
            style += self.get_component_rich_style("storage-tree--dir")
        elif row.is_backup:
            style += self.get_component_rich_style("storage-tree--backup")
        if index == self.cursor:
            style += self.get_component_rich_style("storage-tree--cursor")
        return Strip([Segment(self._text(row, width), style)], width)

    @staticmethod
    def _text(row: Row, width: int) -> str:
        size = "" if row.is_dir else human_bytes(row.size)
        name = printable(row.name) + ("/" if row.is_dir and not row.is_up else "")
        room = max(1, width - 6 - len(size))
        if len(name) > room:
            # Cut in the middle, keeping more of the end: backup names differ by the time and suffix they end with.
            keep = max(2, room - 3)
            head = max(1, keep // 4)
            name = name[:head] + "..." + name[len(name) - (keep - head):]
        left = f" {icon(row)} {name}"
        return (left + " " * max(1, width - len(left) - len(size) - 1) + size + " ")[:width]


__all__ = ["StorageTree", "Row", "UP", "icon"]
