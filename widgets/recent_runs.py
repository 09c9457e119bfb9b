"""Provides RecentRuns (time, duration, size, result of past backups) and SizeTrend (their sizes at a glance)."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import DataTable

from backup.journal import RunRecord
from widgets.format import duration, human_bytes, timestamp
from widgets.profile import ASCII, Glyphs

RESULT_WORDS = {"ok": "ok", "failed": "FAILED", "interrupted": "interrupted"}


class RecentRuns(DataTable):
    """Backup runs, newest first."""

    DEFAULT_CSS = """
    RecentRuns { height: 1fr; min-height: 3; }
    """

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = False
        self.add_columns("Started", "Duration", "Size", "Result")

    _shown: tuple = ()

    def show(self, runs: list[RunRecord], now: datetime) -> None:
        rows = tuple((run.id, (timestamp(run.started_at, now), duration(run.duration),
                               human_bytes(run.size) if run.size is not None else "-",
                               RESULT_WORDS.get(run.result or "", run.result or "running"))) for run in runs)
        if rows == self._shown:  # unchanged: nothing is drawn again (a serial line pays for every byte)
            return
        self._shown = rows
        self.clear()
        for key, cells in rows:
            self.add_row(*cells, key=key)


def trend(sizes: list[int], glyphs: Glyphs = ASCII) -> str:
    """One character per size, scaled between the smallest and the largest."""
    if not sizes:
        return ""
    low, high = min(sizes), max(sizes)
    steps = len(glyphs.trend) - 1
    if high == low:
        return glyphs.trend[steps // 2] * len(sizes)
    return "".join(glyphs.trend[round((s - low) / (high - low) * steps)] for s in sizes)


class SizeTrend(Widget):
    """Sizes of the recent successful backups, oldest to newest, with the range."""

    DEFAULT_CSS = """
    SizeTrend { height: 1; padding: 0 1; }
    """

    sizes: reactive[tuple[int, ...]] = reactive(tuple)

    def __init__(self, glyphs: Glyphs = ASCII, **kwargs) -> None:
        super().__init__(**kwargs)
        self.glyphs = glyphs

    def render(self) -> Text:
        if not self.sizes:
            return Text("Size trend: no successful backup yet")
        sizes = list(self.sizes)
        return Text(f"Size trend: {trend(sizes, self.glyphs)}  "
                    f"({human_bytes(min(sizes))} - {human_bytes(max(sizes))}, last {len(sizes)})")
