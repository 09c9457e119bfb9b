"""Provides sizes, times and names the way the command's lines and the console's screens show them."""

from __future__ import annotations

import unicodedata
from datetime import datetime

UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode categories written as escapes: controls (C0, DEL, C1 such as the 8-bit CSI U+009B), format
characters (bidi overrides such as U+202E, zero-width ones), lone surrogates (bytes that are not
UTF-8) and line or paragraph separators."""


def printable(name: str) -> str:
    """`name` safe to put on a terminal or a screen: every character that could move the cursor, start
    an escape sequence, end the line, or reorder what follows is written as a Python-style escape
    ("\\x1b", "\\u202e"); a byte that is not UTF-8 (kept as a lone surrogate) as "\\xNN".

    File names in the storage are chosen by whoever can write there, not by this appliance: every
    name that reaches an operator goes through here (`list --json` escapes them as JSON does).
    """
    if name.isprintable():
        return name
    out = []
    for char in name:
        if unicodedata.category(char) not in UNPRINTABLE:
            out.append(char)
            continue
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the original byte
            code -= 0xDC00
        out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def human_bytes(n: float | None) -> str:
    """Bytes in binary units, one decimal: "3.1 MiB"; "-" for unknown."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def ago(when: datetime, now: datetime) -> str:
    """How long before `now`, coarsely: "5 min ago", "3 h ago", "2 d ago"."""
    seconds = int((now - when).total_seconds())
    if seconds < 60:
        return "just now" if seconds >= 0 else "in the future"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return "just now"
