"""Provides RunProgress: stage, an ASCII progress bar, bytes, throughput and ETA of a running backup."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from backup.progress import Progress
from widgets.format import duration, human_bytes
from widgets.profile import ASCII, Glyphs


def bar(fraction: float | None, width: int, glyphs: Glyphs = ASCII) -> str:
    """`[####......]  42%` filling `width` characters; an unknown fraction shows an empty bar."""
    label = f" {fraction * 100:3.0f}%" if fraction is not None else "    "
    inner = max(1, width - 2 - len(label))
    filled = int(round(inner * (fraction or 0.0)))
    return f"[{glyphs.bar_done * filled}{glyphs.bar_todo * (inner - filled)}]{label}"


def details(progress: Progress) -> str:
    """"12.0 MiB of 300.0 MiB  45.2 MiB/s  ETA 6 s"."""
    done = human_bytes(progress.done)
    total = f" of {human_bytes(progress.total)}" if progress.total else ""
    rate = f"  {human_bytes(progress.throughput)}/s" if progress.throughput else ""
    eta = f"  ETA {duration(progress.eta)}" if progress.eta is not None else ""
    written = f"  written {human_bytes(progress.written)}" if progress.written else ""
    return f"{done}{total}{rate}{eta}{written}"


class RunProgress(Widget):
    """Three lines while a backup runs; the screen hides it otherwise."""

    DEFAULT_CSS = """
    RunProgress { height: 3; padding: 0 1; }
    """

    progress: reactive[Progress | None] = reactive(None, always_update=True)

    def __init__(self, glyphs: Glyphs = ASCII, **kwargs) -> None:
        super().__init__(**kwargs)
        self.glyphs = glyphs

    def render(self) -> Text:
        p = self.progress
        width = max(10, self.size.width)
        if p is None:
            return Text(f"Starting the backup...\n{bar(None, width, self.glyphs)}\n")
        return Text(f"{p.stage or 'Starting'}\n{bar(p.fraction, width, self.glyphs)}\n{details(p)}")
