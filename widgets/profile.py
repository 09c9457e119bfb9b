"""Provides the serial-console profile: which terminals get the ANSI theme and ASCII glyphs,
and the terminal size used when the tty reports 0x0.

No Textual import: the entry point decides these before the App exists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

SERIAL_TERMS = ("linux", "vt100", "vt102", "vt220", "vt320", "ansi", "dumb")
"""TERM values of serial lines and the Linux text console: 16 colours, few glyphs."""

FALLBACK_SIZE = (80, 24)


def is_serial_terminal(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether TERM names a serial line or the Linux console."""
    term = environ.get("TERM", "")
    return term in SERIAL_TERMS or term.startswith(("vt1", "vt2", "vt3"))


@dataclass(frozen=True)
class Glyphs:
    """The characters the console's own widgets draw with."""

    bar_done: str
    bar_todo: str
    trend: str
    """Characters from lowest to highest, for the size trend."""
    ok: str
    failed: str
    running: str


ASCII = Glyphs(bar_done="#", bar_todo=".", trend="_.-=*#", ok="ok", failed="FAILED", running="..")
UNICODE = Glyphs(bar_done="#", bar_todo=".", trend="▁▂▃▄▅▆▇█", ok="ok", failed="FAILED", running="..")


def glyphs_for(ascii_only: bool) -> Glyphs:
    return ASCII if ascii_only else UNICODE


def ensure_terminal_size(fd: int = 1, environ: os._Environ | dict = os.environ) -> tuple[int, int] | None:
    """When the tty reports a size of 0x0 (some serial consoles do), set COLUMNS/LINES so the
    console lays out for 80x24 (or what COLUMNS/LINES already say). Returns the size set, or None.
    """
    try:
        columns, lines = os.get_terminal_size(fd)
    except OSError:
        return None
    if columns > 0 and lines > 0:
        return None
    width = _positive(environ.get("COLUMNS")) or FALLBACK_SIZE[0]
    height = _positive(environ.get("LINES")) or FALLBACK_SIZE[1]
    environ["COLUMNS"] = str(width)
    environ["LINES"] = str(height)
    return width, height


def _positive(value: str | None) -> int | None:
    try:
        number = int(value or "")
    except ValueError:
        return None
    return number if number > 0 else None
