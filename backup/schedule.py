"""Provides the backup schedule: a cron expression in the appliance's local time.

Configuration (in the appliance's config.toml):

    [schedule]
    enabled = true          # false (or no [schedule] table): Schedule Disabled
    cron = "0 2 * * *"      # minute hour day-of-month month day-of-week

Cron syntax is the classic five fields (as croniter reads them, restricted to
the portable subset): `*`, a number, a range `a-b` (a <= b), a step `*/n`,
`a/n` or `a-b/n`, and comma lists of those; months also take `jan`..`dec` and
weekdays `sun`..`sat` (0 and 7 are Sunday). When both day-of-month and
day-of-week are restricted, a day matching either runs (as in Vixie cron).

Local time and daylight saving time (the rules `next_runs` and `due_slot` follow):

- A time the clock skips (spring forward, e.g. 02:30 in Europe/Berlin on the
  last Sunday of March) runs once, at the moment the clock jumps (03:00 local).
- A time the clock passes twice (fall back, e.g. 02:30 on the last Sunday of
  October) runs once, at its first occurrence.
- Each wall-clock match runs at most once, so a sub-hourly schedule does not
  run again in the repeated hour.

Datetimes handed in must be timezone-aware; for these rules to apply they must
carry a zone with DST rules (a `zoneinfo.ZoneInfo`, see `local_timezone()`),
not a fixed UTC offset such as `datetime.now().astimezone()` gives.
"""

from __future__ import annotations

import calendar
import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from backup.errors import BackupError, ConfigError

DEFAULT_CRON = "0 2 * * *"
"""The cron expression offered when the schedule is first enabled: every day at 02:00."""

PRESETS = ("daily", "weekly", "monthly")

_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    # name, low, high, names (value by name)
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}),
    ("day-of-week", 0, 7, {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}),
)
_ALLOWED = (
    "a number from 0 to 59",
    "a number from 0 to 23",
    "a number from 1 to 31",
    "a number from 1 to 12 or a name jan..dec",
    "a number from 0 to 7 (0 and 7 are Sunday) or a name sun..sat",
)
_ELEMENT_RE = re.compile(r"(?P<range>\*|(?P<a>[a-z0-9]+)(?:-(?P<b>[a-z0-9]+))?)(?:/(?P<step>[0-9]+))?")

# DST transitions move the wall clock by at most 2 hours (historic double summer time);
# searching this far beyond a wall-clock time finds every instant that could map to it.
_DST_MARGIN = timedelta(hours=3)
_WEEKDAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")


@dataclass(frozen=True)
class Schedule:
    """The `[schedule]` settings."""

    enabled: bool = False
    """False: no scheduled backups (the console shows `Schedule Disabled`)."""
    cron: str = DEFAULT_CRON
    """Five-field cron expression in the appliance's local time; validated."""

    def to_config(self) -> dict[str, dict[str, Any]]:
        """The `changes` argument for `backup.config.update_config` that stores this schedule."""
        return {"schedule": {"enabled": self.enabled, "cron": self.cron}}


# ------------------------------------------------------------------ parsing and validation


def parse_schedule(raw: dict[str, Any], path: Path | str) -> Schedule:
    """Read `[schedule]` from a parsed config document; errors name the file, the key and the fix.

    No `[schedule]` table means the schedule is disabled.
    """
    table = raw.get("schedule", {})
    if not isinstance(table, dict):
        raise ConfigError(f"In {path}, schedule must be a table: write it as [schedule] followed by enabled = true and cron = \"{DEFAULT_CRON}\".")
    enabled = table.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"In {path}, [schedule] enabled must be true or false (without quotes), not {enabled!r}.")
    if "cron" not in table:
        if enabled:
            raise ConfigError(f"In {path}, [schedule] cron is missing: add it, for example cron = \"{DEFAULT_CRON}\" (every day at 02:00).")
        return Schedule(enabled=False)
    cron = table["cron"]
    if not isinstance(cron, str):
        raise ConfigError(f"In {path}, [schedule] cron must be a string in quotes, such as \"{DEFAULT_CRON}\", not {cron!r}.")
    problem = validate_cron(cron)
    if problem:
        raise ConfigError(f"In {path}, [schedule] cron: {problem}")
    return Schedule(enabled=enabled, cron=normalize_cron(cron))


def normalize_cron(expr: str) -> str:
    """The expression with single spaces between fields and lower-case names."""
    return " ".join(expr.split()).lower()


def validate_cron(expr: str) -> str | None:
    """Return a sentence saying what is wrong with a cron expression, or None when it is fine."""
    if not isinstance(expr, str):
        return f"The schedule must be a cron expression in quotes, not {expr!r}."
    shown_fields = expr.split()
    fields = [f.lower() for f in shown_fields]
    if len(fields) != 5:
        shown = expr.strip() or "(empty)"
        return (
            f"The schedule {shown!r} has {len(fields)} field{'s' if len(fields) != 1 else ''}; a schedule has exactly 5: "
            f"minute hour day-of-month month day-of-week, for example {DEFAULT_CRON!r} (every day at 02:00)."
        )
    values: list[set[int]] = []
    for index, text in enumerate(fields):
        parsed = _parse_field(index, text)
        if isinstance(parsed, str):
            name = _FIELDS[index][0]
            return f"The {name} field {shown_fields[index]!r} of the schedule {expr.strip()!r} is not valid: {parsed}."
        values.append(parsed)
    minutes, hours, days, months, weekdays = values
    if fields[4] == "*" and not any(day <= _max_days(month) for day in days for month in months):
        return (
            f"The schedule {expr.strip()!r} never runs: no month it names has the day of month it names "
            "(for example, February has no day 30): choose a day that exists, or days 1 to 28 to run every month."
        )
    try:
        croniter(normalize_cron(expr), datetime(2000, 1, 1)).get_next(datetime)
    except (CroniterError, ValueError) as exc:  # the subset above should always pass; say so if not
        return f"The schedule {expr.strip()!r} is not accepted by the cron parser ({exc})."
    return None


def _max_days(month: int) -> int:
    return 29 if month == 2 else calendar.monthrange(2001, month)[1]


def _parse_field(index: int, text: str) -> set[int] | str:
    """The values a field allows, or what is wrong with it (a clause for a sentence)."""
    name, low, high, names = _FIELDS[index]
    allowed = _ALLOWED[index]
    help_text = f"use * or {allowed}, a range a-b, a step */n or a-b/n, or a comma list of those"
    if text == "":
        return f"it is empty: {help_text}"
    result: set[int] = set()
    for element in text.split(","):
        match = _ELEMENT_RE.fullmatch(element)
        if not match:
            if any(ch in element for ch in "lw#?h"):
                return f"{element!r} uses special cron syntax (L, W, #, ? or H) that is not supported here: {help_text}"
            return f"{element!r} is not understood: {help_text}"
        if match["range"] == "*":
            start, end = low, high
        else:
            first = _value(match["a"], low, high, names)
            if isinstance(first, str):
                return f"{first}: {help_text}"
            start = end = first
            if match["b"] is not None:
                last = _value(match["b"], low, high, names)
                if isinstance(last, str):
                    return f"{last}: {help_text}"
                end = last
                if end < start:
                    return f"the range {element.split('/')[0]!r} runs backwards: write the smaller value first"
            elif match["step"] is not None:
                end = high  # "a/n" means from a to the end of the range, every n
        step = 1
        if match["step"] is not None:
            step = int(match["step"])
            if step == 0:
                return f"the step in {element!r} is 0: use a step of 1 or more"
        result.update(range(start, end + 1, step))
    if index == 4 and 7 in result:
        result.discard(7)
        result.add(0)
    return result


def _valid_field(index: int, text: str) -> set[int]:
    """The values of a field already validated."""
    values = _parse_field(index, text)
    if isinstance(values, str):
        raise ValueError(values)
    return values


def _value(token: str, low: int, high: int, names: dict[str, int]) -> int | str:
    if token.isdigit():
        value = int(token)
        if not low <= value <= high:
            return f"{value} is out of range"
        return value
    if token in names:
        return names[token]
    if re.fullmatch(r"[0-9]*[lwh][0-9]*", token):
        return f"{token!r} is special cron syntax (L, W, # or H) that is not supported here"
    return f"{token!r} is not a number" + (" or a known name" if names else "")


# ------------------------------------------------------------------ presets and descriptions


def preset_cron(preset: str, time: str = "02:00", *, weekday: int = 0, day: int = 1) -> str:
    """The cron expression of a preset.

    Args:
        preset: "daily", "weekly" or "monthly".
        time: "HH:MM", 24-hour local time.
        weekday: for "weekly", 0 = Monday .. 6 = Sunday (Python's `date.weekday()` numbering).
        day: for "monthly", the day of the month, 1..28 so that every month has it.

    Raises:
        ConfigError: a sentence saying which argument is wrong.
    """
    match = re.fullmatch(r"([0-9]{1,2}):([0-9]{2})", time.strip()) if isinstance(time, str) else None
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ConfigError(f"The time {time!r} is not a time of day: write it as HH:MM, from 00:00 to 23:59.")
    hour, minute = int(match[1]), int(match[2])
    if preset == "daily":
        return f"{minute} {hour} * * *"
    if preset == "weekly":
        if isinstance(weekday, bool) or not isinstance(weekday, int) or not 0 <= weekday <= 6:
            raise ConfigError(f"The weekday {weekday!r} is not valid: use 0 (Monday) to 6 (Sunday).")
        return f"{minute} {hour} * * {(weekday + 1) % 7}"
    if preset == "monthly":
        if isinstance(day, bool) or not isinstance(day, int) or not 1 <= day <= 28:
            raise ConfigError(f"The day of the month {day!r} is not valid: use 1 to 28, so that every month has it.")
        return f"{minute} {hour} {day} * *"
    raise ConfigError(f"The preset {preset!r} is not known: use one of " + ", ".join(repr(p) for p in PRESETS) + ".")


def describe(cron: str) -> str:
    """A short English sentence for a valid cron expression, e.g. "Every day at 02:00."

    Common shapes get a plain sentence; anything else is described field by field.
    A minute step is "every n minutes" only when n divides 60: the step
    restarts at every hour, so */45 runs at minutes 0 and 45 and */90 at minute 0.
    """
    if validate_cron(cron):
        return f"Not a valid schedule: {cron!r}."
    minute, hour, dom, month, dow = normalize_cron(cron).split()
    minutes = sorted(_parse_field(0, minute))
    hours = sorted(_parse_field(1, hour))
    if minute.isdigit() and hour.isdigit():
        when = f"at {int(hour):02d}:{int(minute):02d}"
    elif minute.startswith("*/") and hour == "*" and 60 % int(minute[2:]) == 0 and int(minute[2:]) < 60:
        when = f"every {int(minute[2:])} minutes"
    elif minute == "*" and hour == "*":
        when = "every minute"
    elif hour == "*":
        # A minute step restarts at every hour: */45 runs at :00 and :45, */90 only at :00.
        when = f"every hour at minute{'s' if len(minutes) > 1 else ''} {_join([str(m) for m in minutes])}"
    elif minute.isdigit() and len(hours) <= 6:
        when = "at " + _join([f"{h:02d}:{minutes[0]:02d}" for h in hours])
    else:
        when = f"at minute {_join([str(m) for m in minutes])} of hour {_join([str(h) for h in hours])}"
    days = _describe_days(dom, dow)
    months = ""
    if month != "*":
        month_set = sorted(_valid_field(3, month))
        months = " in " + _join([calendar.month_name[m] for m in month_set])
    if when.startswith("every") and days == "every day":
        sentence = f"{when}{months}."
    elif when.startswith("every"):
        sentence = f"{days}{months}, {when}."
    else:
        sentence = f"{days}{months} {when}."
    return sentence[0].upper() + sentence[1:]


def _describe_days(dom: str, dow: str) -> str:
    parts = []
    if dom != "*":
        day_set = sorted(_valid_field(2, dom))
        parts.append("on day " + _join([str(d) for d in day_set]) + " of the month")
    if dow != "*":
        dow_set = sorted(_valid_field(4, dow))
        if dow_set == [1, 2, 3, 4, 5]:
            parts.append("on weekdays (Monday to Friday)")
        else:
            ordered = sorted(dow_set, key=lambda d: (d + 6) % 7)  # Monday first
            parts.append("every " + _join([_WEEKDAYS[d] for d in ordered]))
    if not parts:
        return "every day"
    return " or ".join(parts)


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# ------------------------------------------------------------------ time zone


_LOCALTIME = Path("/etc/localtime")
_LEAP_SECOND_PREFIX = "right/"


def local_timezone(*, localtime: Path = _LOCALTIME) -> tzinfo:
    """The appliance's local time zone with its DST rules: $TZ, else /etc/localtime, else UTC.

    $TZ is read as the C library reads it, so that the schedule keeps the time
    the rest of the output shows: one leading ':' is dropped, an absolute path
    names a TZif file (`TZ=/usr/share/zoneinfo/Europe/Berlin`), anything else
    is a zone name (`Europe/Berlin`), and an empty TZ is UTC. A leap-second zone (`right/Europe/Berlin`)
    gives its plain zone: Python's datetime counts no leap seconds, so the plain
    zone is the wall clock it means, and zoneinfo would read the right/ file's
    transitions 27 s late (and past its leap-second table's expiry, without DST).

    A value zoneinfo cannot load falls back to `localtime`, else UTC, rather
    than stopping every command: a directory of zones (`TZ=America`), an unknown
    name, an unreadable file. Limitation: a POSIX TZ rule string (`UTC+5`,
    `CET-1CEST,M3.5.0,M10.5.0/3`) is valid for the C library but zoneinfo
    cannot represent it, so it falls back too, and the schedule may then
    disagree with the C library's local time: give such appliances a zone name.

    Args:
        localtime: the system's zone file (a parameter so tests need not read the real one).
    """
    if os.environ.get("TZ") == "":  # set but empty: UTC to the C library
        return UTC
    value = os.environ.get("TZ", "").removeprefix(":")
    if value:
        zone = _load_zone(value)
        if zone is not None:
            return zone
    try:
        target = str(localtime.resolve())
        if "/zoneinfo/" in target:
            zone = _load_zone(target.split("/zoneinfo/", 1)[1])
            if zone is not None:
                return zone
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop, on Python < 3.13
        pass
    return _load_zone(str(localtime.absolute()), key="localtime") or UTC


def _load_zone(name: str, *, key: str | None = None) -> tzinfo | None:
    """The zone a TZ value names (a zone key or an absolute path to a TZif file), or None if it cannot be loaded."""
    try:
        if os.path.isabs(name):
            if not os.path.isfile(name):  # a directory, or a FIFO or device that would block the read
                return None
            with open(name, "rb") as f:
                return ZoneInfo.from_file(f, key=key or name)
        if name.startswith(_LEAP_SECOND_PREFIX):
            plain = _load_zone(name[len(_LEAP_SECOND_PREFIX):])
            if plain is not None:
                return plain
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a directory of zones (TZ=America) is found as a path, then cannot be read as a file.
        return None


def local_now() -> datetime:
    """Now, in `local_timezone()` (unlike `datetime.now().astimezone()`, which has a fixed offset)."""
    return datetime.now(local_timezone())


# ------------------------------------------------------------------ slots


def utc(moment: datetime) -> datetime:
    """`moment` in UTC, for comparing and subtracting.

    Python compares and subtracts two datetimes of the same zone by wall clock,
    ignoring DST folds (02:30 CET on the fall-back night "equals" 02:30 CEST),
    and never finds an ambiguous local time equal to a time in another zone:
    every comparison of schedule times goes through UTC.
    """
    return moment.astimezone(UTC)


def _instant(wall: datetime, tz: tzinfo) -> datetime:
    """The instant a scheduled wall-clock time runs at, by the DST rules in the module docstring."""
    first = wall.replace(tzinfo=tz, fold=0)
    if first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall:
        return first  # exists; if it exists twice, fold=0 is its first occurrence
    # The clock skipped this wall time: run when it jumped, the first instant whose wall time is later.
    low = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)  # before the jump
    high = first.astimezone(UTC)  # after the jump
    while high - low > timedelta(seconds=1):
        mid = low + (high - low) / 2
        mid = mid.replace(microsecond=0)
        if mid.astimezone(tz).replace(tzinfo=None) > wall:
            high = mid
        else:
            low = mid
    return high.astimezone(tz)


def _tz_of(moment: datetime, tz: tzinfo | None) -> tzinfo:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("schedule times must be timezone-aware datetimes (use backup.schedule.local_now())")
    return tz if tz is not None else moment.tzinfo


# croniter keeps its position as a POSIX timestamp and turns it back into a
# datetime with the C library's gmtime, which under a leap-second zone
# (TZ=right/...) is the leap seconds so far (27 s) early: asked for the next
# match after a match, croniter then finds that same match again, forever.
# Each step therefore starts just before the minute after the previous match
# (matches are whole minutes), which finds the next match whether or not the
# conversion is off by under a minute; a step that still does not move on
# raises rather than spins.
_NEXT_STEP_FROM = timedelta(seconds=59)


def _matches(cron: str, start: datetime, *, backwards: bool = False) -> Iterator[datetime]:
    """The naive wall-clock times matching `cron` after (or before) naive `start`, strictly in order.

    Ends when croniter finds no further match within its search window.

    Raises:
        BackupError: the cron parser answered a time that does not move on.
    """
    it = croniter(normalize_cron(cron), start)
    step = it.get_prev if backwards else it.get_next
    previous: datetime | None = None
    while True:
        try:
            if previous is None:
                match = step(datetime)
            else:
                match = step(datetime, start_time=previous if backwards else previous + _NEXT_STEP_FROM)
        except CroniterError:
            return
        if previous is not None and (match >= previous if backwards else match <= previous):
            raise BackupError(
                f"The next runs of the schedule {cron!r} cannot be computed: the cron parser answered "
                f"{match:%Y-%m-%d %H:%M} when asked for the match {'before' if backwards else 'after'} "
                f"{previous:%Y-%m-%d %H:%M}, so its search did not advance. "
                "Set TZ to a plain zone name (such as Europe/Berlin) or choose another schedule; "
                "if it persists, report it with the schedule and the value of TZ."
            )
        previous = match
        yield match


def iter_runs(cron: str, after: datetime, *, tz: tzinfo | None = None) -> Iterator[datetime]:
    """Every run strictly after `after`, in order, each instant once, in zone `tz` (default: `after`'s).

    Raises:
        BackupError: the cron parser stopped advancing (see `_matches`), instead of looping forever.
    """
    zone = _tz_of(after, tz)
    wall = after.astimezone(zone).replace(tzinfo=None) - _DST_MARGIN
    last: datetime | None = None
    for match in _matches(cron, wall):
        candidate = _instant(match, zone)
        if utc(candidate) > utc(after) and (last is None or utc(candidate) > utc(last)):
            last = candidate
            yield candidate


def iter_runs_before(cron: str, until: datetime, *, tz: tzinfo | None = None) -> Iterator[datetime]:
    """Every run at or before `until`, newest first, each instant once.

    Raises:
        BackupError: the cron parser stopped advancing (see `_matches`), instead of looping forever.
    """
    zone = _tz_of(until, tz)
    wall = until.astimezone(zone).replace(tzinfo=None) + _DST_MARGIN
    last: datetime | None = None
    for match in _matches(cron, wall, backwards=True):
        candidate = _instant(match, zone)
        if utc(candidate) <= utc(until) and (last is None or utc(candidate) < utc(last)):
            last = candidate
            yield candidate


def next_runs(schedule: Schedule, after: datetime, n: int, *, tz: tzinfo | None = None) -> list[datetime]:
    """The next `n` scheduled runs strictly after `after` (empty when the schedule is disabled)."""
    if not schedule.enabled or n <= 0:
        return []
    runs = []
    for run in iter_runs(schedule.cron, after, tz=tz):
        runs.append(run)
        if len(runs) == n:
            break
    return runs


def previous_slot(schedule: Schedule, now: datetime, *, tz: tzinfo | None = None) -> datetime | None:
    """The most recent scheduled slot at or before `now`, or None (disabled, or none ever)."""
    if not schedule.enabled:
        return None
    return next(iter_runs_before(schedule.cron, now, tz=tz), None)


def due_slot(schedule: Schedule, last_slot_done: datetime | None, now: datetime, *,
             tz: tzinfo | None = None) -> datetime | None:
    """The slot to run now, or None.

    That is the most recent slot at or before `now`, unless a slot at or after
    it was already done. Slots missed while the appliance was down collapse
    into this one: after any downtime one run is due, never one per missed
    slot. The caller records the slot it ran (journal) and passes the newest
    recorded slot as `last_slot_done`, so each slot runs at most once.
    `last_slot_done=None` means no slot was ever done: the latest slot is due.
    """
    slot = previous_slot(schedule, now, tz=tz)
    if slot is None:
        return None
    if last_slot_done is not None and utc(last_slot_done) >= utc(slot):
        return None
    return slot


def missed_slots(schedule: Schedule, last_slot_done: datetime, now: datetime, *, limit: int = 1000,
                 tz: tzinfo | None = None) -> int:
    """How many slots fell strictly between `last_slot_done` and `now` (counted up to `limit`)."""
    if not schedule.enabled:
        return 0
    count = 0
    for run in iter_runs(schedule.cron, last_slot_done, tz=tz):
        if utc(run) > utc(now) or count >= limit:
            break
        count += 1
    return count


def interval_estimate(schedule: Schedule) -> timedelta:
    """The longest gap between two consecutive runs of the schedule.

    Status calls the last success stale when it is older than twice this. It
    is the longest gap (not the usual one) so that, for example, "Monday to
    Friday" is not stale over a weekend. Measured in UTC over nine years from
    a fixed date (a leap day recurs within eight), so it does not depend on
    today or on DST. A disabled schedule gives 0.
    """
    if not schedule.enabled:
        return timedelta(0)
    return _longest_gap(schedule.cron)


_GAP_START = date(2001, 1, 1)
_GAP_DAYS = 366 * 9


@functools.lru_cache(maxsize=32)
def _longest_gap(cron: str, days: int = _GAP_DAYS) -> timedelta:
    """The longest gap between consecutive matches of `cron` in UTC within `days` days from 2001-01-01.

    Status asks for it every refresh; stepping the cron parser through a
    year of runs took 0.4 s, so this reads the fields the parser expands
    (the same sets and the same day-of-month OR day-of-week rule it
    follows) and walks days, not runs.
    """
    (minutes, hours, month_days, months, weekdays), _ = croniter.expand(normalize_cron(cron))
    times = sorted(h * 60 + m for h in _all_or(hours, range(24)) for m in _all_or(minutes, range(60)))
    day_set, month_set, weekday_set = set(_all_or(month_days, range(1, 32))), set(_all_or(months, range(1, 13))), \
        set(_all_or(weekdays, range(7)))
    either = month_days[0] != "*" and weekdays[0] != "*"
    longest = max((b - a for a, b in zip(times, times[1:])), default=0)
    previous: int | None = None
    for offset in range(days + 1):
        day = _GAP_START + timedelta(days=offset)
        if day.month not in month_set:
            continue
        by_day, by_weekday = day.day in day_set, (day.weekday() + 1) % 7 in weekday_set
        if not (by_day or by_weekday if either else by_day and by_weekday):
            continue
        if previous is not None:
            longest = max(longest, (offset - previous) * 1440 - times[-1] + times[0])
        previous = offset
    return timedelta(minutes=longest)


def _all_or(values: list[Any], every: range) -> list[int]:
    """A field as the parser expands it: its values, or all of `every` for "*"."""
    return list(every) if values[0] == "*" else [int(v) for v in values]


# ------------------------------------------------------------------ slots in the run journal

SLOT_PREFIX = "slot="
CATCH_UP_MARK = "catch-up"


def slot_detail(slot: datetime, catch_up: bool = False) -> str:
    """The journal `detail` of a scheduled backup run: "slot=<iso>" or "slot=<iso> catch-up"."""
    text = SLOT_PREFIX + slot.isoformat()
    return f"{text} {CATCH_UP_MARK}" if catch_up else text


def parse_slot_detail(detail: str | None) -> tuple[datetime, bool] | None:
    """(slot, catch_up) from a journal `detail`, or None when the run was not a scheduled one."""
    if not detail or not detail.startswith(SLOT_PREFIX):
        return None
    words = detail[len(SLOT_PREFIX):].split()
    try:
        slot = datetime.fromisoformat(words[0])
    except (IndexError, ValueError):
        return None
    if slot.tzinfo is None:
        return None
    return slot, CATCH_UP_MARK in words[1:]


def slots_done(runs: Iterator[Any] | list[Any]) -> list[datetime]:
    """The slots of the backup runs in a journal (`RunJournal.runs()`), whatever their result."""
    slots = []
    for run in runs:
        if getattr(run, "kind", None) != "backup":
            continue
        parsed = parse_slot_detail(getattr(run, "detail", None))
        if parsed is not None:
            slots.append(parsed[0])
    return slots


def last_slot_done(runs: Iterator[Any] | list[Any]) -> datetime | None:
    """The newest slot a backup run was journalled for, or None."""
    return max(slots_done(runs), key=utc, default=None)


def slot_already_done(runs: Iterator[Any] | list[Any], slot: datetime) -> bool:
    """Whether a backup run was journalled for `slot` (compared as instants)."""
    return any(utc(done) == utc(slot) for done in slots_done(runs))
