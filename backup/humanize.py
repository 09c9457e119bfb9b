"""Provides sizes and times the way the command's lines and the console's screens show them."""

from __future__ import annotations

from datetime import datetime


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
