"""Provides the retention policy: which old backups to keep and which to delete.

Configuration (in the appliance's config.toml):

    [retention]
    keep_last = 3       # the 3 newest backups
    keep_daily = 7      # the newest backup of each of the 7 most recent days that have one
    keep_weekly = 4     # the newest backup of each of the 4 most recent ISO weeks that have one
    keep_monthly = 6    # the newest backup of each of the 6 most recent months that have one

Semantics (as restic's `forget --keep-*`; copy into README.md):

- Every key is a whole number, 0 or more; a missing key is 0. When every key
  is 0 (or there is no [retention] table) every backup is kept.
- `keep_last = N` keeps the N newest backups.
- `keep_daily = N` looks at the days that have at least one backup, newest
  first, and keeps the newest backup of each of the first N such days. Days
  without a backup do not count, so a week without backups does not use up
  daily slots. Days are calendar days in the appliance's local time.
- `keep_weekly = N` does the same with ISO weeks (Monday to Sunday, weeks
  numbered as ISO 8601), `keep_monthly = N` with calendar months.
- The rules are independent: each looks at all backups, and a backup kept by
  any rule is kept (one backup can count for several rules at once).
- Never deleted, whatever the rules say: the newest backup; the newest backup
  that verified successfully; a backup being read (verified or restored)
  right now. The caller names these in `protected`.
- Only backups this appliance wrote are considered: files of other
  appliances, or that are not backups, are never passed in, so never deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, Iterable

from backup.errors import ConfigError

KEYS = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")
MAX_KEEP = 100_000


@dataclass(frozen=True)
class RetentionPolicy:
    """The `[retention]` settings."""

    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0

    @property
    def keeps_everything(self) -> bool:
        """True when no rule is set: nothing is ever deleted."""
        return not (self.keep_last or self.keep_daily or self.keep_weekly or self.keep_monthly)

    def to_config(self) -> dict[str, dict[str, Any]]:
        """The `changes` argument for `backup.config.update_config` (zeros are removed from the file)."""
        return {"retention": {key: (getattr(self, key) or None) for key in KEYS}}


@dataclass(frozen=True)
class Decision:
    """What the policy says about one backup."""

    name: str
    keep: bool
    reasons: list[str] = field(default_factory=list)
    """Why it is kept (e.g. "last 1", "daily 2026-11-26", "weekly 2026-W48", "monthly 2026-11",
    "protected", "newest backup"), or why it goes ("not kept by any rule")."""


def parse_retention(raw: dict[str, Any], path: Path | str) -> RetentionPolicy:
    """Read `[retention]` from a parsed config document; errors name the file, the key and the fix."""
    table = raw.get("retention", {})
    if not isinstance(table, dict):
        raise ConfigError(f"In {path}, retention must be a table: write it as [retention] followed by keep_last = 7 and the like.")
    for key in table:
        if key not in KEYS:
            raise ConfigError(f"In {path}, [retention] {key} is not a retention setting: use " + ", ".join(KEYS) + ", or remove it.")
    values = {}
    for key in KEYS:
        value = table.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_KEEP:
            raise ConfigError(f"In {path}, [retention] {key} must be a whole number from 0 to {MAX_KEEP} (without quotes), not {value!r}.")
        values[key] = value
    return RetentionPolicy(**values)


def plan(backups: Iterable[tuple[str, datetime]], policy: RetentionPolicy, protected: set[str] | frozenset[str] = frozenset(),
         *, tz: tzinfo | None = None) -> list[Decision]:
    """Decide, for each backup, whether the policy keeps it. Nothing is deleted here.

    Args:
        backups: (name, created_at) of the backups this appliance wrote; created_at timezone-aware, taken
            from each backup's authenticated manifest (never its name: see BackupService.prune).
        policy: the retention rules.
        protected: names never to delete (the newest verified backup, a backup being read, ...).
        tz: the zone whose calendar days, weeks and months count; default the system's local zone.

    Returns:
        One decision per backup, newest first.
    """
    ordered = sorted(backups, key=lambda b: (b[1], b[0]), reverse=True)
    names = [name for name, _ in ordered]
    if len(set(names)) != len(names):
        raise ValueError("each backup name may appear only once")
    reasons: dict[str, list[str]] = {name: [] for name in names}
    if ordered:
        reasons[ordered[0][0]].append("newest backup")
    for name in names:
        if name in protected:
            reasons[name].append("protected")
    if policy.keeps_everything:
        for name in names:
            reasons[name].append("policy keeps everything")
    for index, (name, _) in enumerate(ordered[: policy.keep_last]):
        reasons[name].append(f"last {index + 1}")
    for label, count, bucket in (
        ("daily", policy.keep_daily, lambda d: d.strftime("%Y-%m-%d")),
        ("weekly", policy.keep_weekly, lambda d: "{0}-W{1:02d}".format(*d.isocalendar())),
        ("monthly", policy.keep_monthly, lambda d: d.strftime("%Y-%m")),
    ):
        seen: set[str] = set()
        for name, created in ordered:
            if len(seen) >= count:
                break
            key = bucket(created.astimezone(tz))
            if key not in seen:
                seen.add(key)
                reasons[name].append(f"{label} {key}")
    return [
        Decision(name=name, keep=bool(reasons[name]), reasons=reasons[name] or ["not kept by any rule"])
        for name in names
    ]


def to_delete(decisions: Iterable[Decision]) -> list[str]:
    """The names the plan removes, newest first."""
    return [d.name for d in decisions if not d.keep]
