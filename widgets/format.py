"""Provides the text forms of sizes, times and durations the console shows.

Times are shown in the time zone of the clock the App was given, so a fixed
clock gives fixed text (snapshots) and the real clock gives local time.
"""

from __future__ import annotations

from datetime import datetime

from backup.humanize import ago, human_bytes, printable

__all__ = ["ago", "human_bytes", "printable", "timestamp", "duration", "when_and_ago"]


def timestamp(when: datetime, now: datetime) -> str:
    """`when` as "2024-06-01 02:00:00 UTC" in the time zone of `now`."""
    local = when.astimezone(now.tzinfo) if now.tzinfo else when
    zone = local.strftime("%Z") or local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M:%S} {zone}".rstrip()


def when_and_ago(when: datetime, now: datetime) -> str:
    return f"{timestamp(when, now)} ({ago(when, now)})"


def duration(seconds: float | None) -> str:
    """A short duration: "42 s", "3 min 05 s", "1 h 02 min"."""
    if seconds is None:
        return "-"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
