"""Tests of backup.retention: table tests of dates -> kept or removed, with the reasons."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from backup.errors import ConfigError
from backup.retention import Decision, RetentionPolicy, parse_retention, plan, to_delete

BERLIN = ZoneInfo("Europe/Berlin")
UTC = timezone.utc
PATH = Path("/etc/appliance-backup/config.toml")


def utc(*fields) -> datetime:
    return datetime(*fields, tzinfo=UTC)


# Created-at times as list_backups gives them (UTC); days, weeks and months count in Berlin time.
BACKUPS = [
    ("b1", utc(2026, 11, 26, 1, 30)),   # Thu 26 Nov 02:30 CET, 2026-W48
    ("b2", utc(2026, 11, 25, 23, 30)),  # Thu 26 Nov 00:30 CET: same local day as b1 (25 Nov in UTC)
    ("b3", utc(2026, 11, 24, 1, 0)),    # Tue 24 Nov, W48
    ("b4", utc(2026, 11, 22, 1, 0)),    # Sun 22 Nov, W47
    ("b5", utc(2026, 11, 16, 1, 0)),    # Mon 16 Nov, W47
    ("b6", utc(2026, 11, 1, 1, 0)),     # Sun 1 Nov, W44
    ("b7", utc(2026, 10, 31, 1, 0)),    # Sat 31 Oct, W44
    ("b8", utc(2026, 10, 15, 1, 0)),    # Thu 15 Oct, W42
    ("b9", utc(2026, 9, 30, 1, 0)),     # Wed 30 Sep, W40
]
GONE = ["not kept by any rule"]


def outcome(decisions: list[Decision]) -> dict[str, list[str]]:
    """name -> reasons kept, or GONE."""
    return {d.name: (d.reasons if d.keep else GONE) for d in decisions}


@pytest.mark.parametrize(("policy", "expected"), [
    pytest.param(RetentionPolicy(keep_last=2), {
        "b1": ["newest backup", "last 1"], "b2": ["last 2"],
        "b3": GONE, "b4": GONE, "b5": GONE, "b6": GONE, "b7": GONE, "b8": GONE, "b9": GONE,
    }, id="keep_last"),
    pytest.param(RetentionPolicy(keep_daily=3), {
        "b1": ["newest backup", "daily 2026-11-26"], "b2": GONE, "b3": ["daily 2026-11-24"],
        "b4": ["daily 2026-11-22"], "b5": GONE, "b6": GONE, "b7": GONE, "b8": GONE, "b9": GONE,
    }, id="keep_daily-local-days-with-backups"),
    pytest.param(RetentionPolicy(keep_weekly=3), {
        "b1": ["newest backup", "weekly 2026-W48"], "b2": GONE, "b3": GONE, "b4": ["weekly 2026-W47"],
        "b5": GONE, "b6": ["weekly 2026-W44"], "b7": GONE, "b8": GONE, "b9": GONE,
    }, id="keep_weekly-iso-weeks"),
    pytest.param(RetentionPolicy(keep_monthly=2), {
        "b1": ["newest backup", "monthly 2026-11"], "b2": GONE, "b3": GONE, "b4": GONE, "b5": GONE,
        "b6": GONE, "b7": ["monthly 2026-10"], "b8": GONE, "b9": GONE,
    }, id="keep_monthly"),
    pytest.param(RetentionPolicy(keep_last=1, keep_daily=2, keep_weekly=2, keep_monthly=3), {
        "b1": ["newest backup", "last 1", "daily 2026-11-26", "weekly 2026-W48", "monthly 2026-11"],
        "b2": GONE, "b3": ["daily 2026-11-24"], "b4": ["weekly 2026-W47"], "b5": GONE, "b6": GONE,
        "b7": ["monthly 2026-10"], "b8": GONE, "b9": ["monthly 2026-09"],
    }, id="rules-combined-independently"),
    pytest.param(RetentionPolicy(keep_daily=100, keep_monthly=100), {
        "b1": ["newest backup", "daily 2026-11-26", "monthly 2026-11"], "b2": GONE,
        "b3": ["daily 2026-11-24"], "b4": ["daily 2026-11-22"], "b5": ["daily 2026-11-16"],
        "b6": ["daily 2026-11-01"], "b7": ["daily 2026-10-31", "monthly 2026-10"], "b8": ["daily 2026-10-15"],
        "b9": ["daily 2026-09-30", "monthly 2026-09"],
    }, id="more-slots-than-backups"),
    pytest.param(RetentionPolicy(), {
        name: (["newest backup", "policy keeps everything"] if name == "b1" else ["policy keeps everything"])
        for name, _ in BACKUPS
    }, id="all-zero-keeps-everything"),
])
def test_policy_table(policy, expected):
    decisions = plan(BACKUPS, policy, tz=BERLIN)
    assert [d.name for d in decisions] == [name for name, _ in BACKUPS]  # newest first
    assert outcome(decisions) == expected


def test_days_are_local_days():
    # In UTC, b2 (23:30 UTC on the 25th) is a day of its own and is kept.
    decisions = plan(BACKUPS, RetentionPolicy(keep_daily=3), tz=UTC)
    assert [d.name for d in decisions if d.keep] == ["b1", "b2", "b3"]


def test_protected_backups_are_kept():
    decisions = plan(BACKUPS, RetentionPolicy(keep_last=1), protected={"b8", "b5", "not-in-the-list"}, tz=BERLIN)
    assert outcome(decisions) == {
        "b1": ["newest backup", "last 1"], "b2": GONE, "b3": GONE, "b4": GONE, "b5": ["protected"],
        "b6": GONE, "b7": GONE, "b8": ["protected"], "b9": GONE,
    }
    assert to_delete(decisions) == ["b2", "b3", "b4", "b6", "b7", "b9"]


def test_iso_week_across_new_year():
    backups = [("new-year", utc(2027, 1, 1, 12)), ("old-year", utc(2026, 12, 31, 12)), ("before", utc(2026, 12, 27, 12))]
    decisions = plan(backups, RetentionPolicy(keep_weekly=2), tz=BERLIN)
    assert outcome(decisions) == {
        "new-year": ["newest backup", "weekly 2026-W53"], "old-year": GONE, "before": ["weekly 2026-W52"],
    }


def test_input_order_does_not_matter_and_ties_break_by_name():
    same_time = utc(2026, 11, 26, 1)
    shuffled = [("a", same_time), ("c", utc(2026, 11, 20)), ("b", same_time)]
    decisions = plan(shuffled, RetentionPolicy(keep_last=1), tz=BERLIN)
    assert [(d.name, d.keep) for d in decisions] == [("b", True), ("a", False), ("c", False)]


def test_single_backup_is_never_deleted():
    assert plan([("only", utc(2020, 1, 1))], RetentionPolicy(keep_daily=1), tz=BERLIN) == [
        Decision("only", True, ["newest backup", "daily 2020-01-01"]),
    ]


def test_empty_and_duplicates():
    assert plan([], RetentionPolicy(keep_last=1)) == []
    with pytest.raises(ValueError, match="only once"):
        plan([("x", utc(2026, 1, 1)), ("x", utc(2026, 1, 2))], RetentionPolicy(keep_last=1))


class TestParseRetention:
    def test_missing_table_keeps_everything(self):
        policy = parse_retention({}, PATH)
        assert policy == RetentionPolicy() and policy.keeps_everything

    def test_values(self):
        policy = parse_retention({"retention": {"keep_last": 3, "keep_monthly": 6}}, PATH)
        assert policy == RetentionPolicy(keep_last=3, keep_monthly=6) and not policy.keeps_everything

    @pytest.mark.parametrize(("table", "message"), [
        ({"keep_last": -1}, "[retention] keep_last must be a whole number from 0 to 100000 (without quotes), not -1."),
        ({"keep_daily": "7"}, "[retention] keep_daily must be a whole number from 0 to 100000 (without quotes), not '7'."),
        ({"keep_weekly": True}, "[retention] keep_weekly must be a whole number"),
        ({"keep_monthly": 1.5}, "[retention] keep_monthly must be a whole number"),
        ({"keep_yearly": 1}, "[retention] keep_yearly is not a retention setting: use keep_last, keep_daily, keep_weekly, keep_monthly, or remove it."),
    ])
    def test_errors_name_file_and_key(self, table, message):
        with pytest.raises(ConfigError) as err:
            parse_retention({"retention": table}, PATH)
        assert str(err.value) == f"In {PATH}, {message}" or str(err.value).startswith(f"In {PATH}, {message}")

    def test_not_a_table(self):
        with pytest.raises(ConfigError, match=r"retention must be a table"):
            parse_retention({"retention": 3}, PATH)

    def test_to_config_round_trips(self):
        policy = RetentionPolicy(keep_last=2, keep_weekly=4)
        changes = policy.to_config()
        assert changes == {"retention": {"keep_last": 2, "keep_daily": None, "keep_weekly": 4, "keep_monthly": None}}
        written = {"retention": {k: v for k, v in changes["retention"].items() if v is not None}}
        assert parse_retention(written, PATH) == policy
