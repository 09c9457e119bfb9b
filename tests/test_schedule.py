"""Tests of backup.schedule: cron validation, presets, next runs across DST and month ends, due slots."""

from __future__ import annotations

import struct
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import TZPATH, ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import backup.schedule
from backup.errors import BackupError, ConfigError
from backup.journal import RunRecord
from backup.schedule import (
    Schedule,
    describe,
    due_slot,
    interval_estimate,
    last_slot_done,
    local_timezone,
    missed_slots,
    next_runs,
    parse_schedule,
    parse_slot_detail,
    preset_cron,
    previous_slot,
    slot_already_done,
    slot_detail,
    utc,
    validate_cron,
)
from tests.common import run_cli
from tests.helpers import fails_after

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
UTC = timezone.utc
PATH = Path("/etc/appliance-backup/config.toml")


def at(tz, *fields, fold=0) -> datetime:
    return datetime(*fields, tzinfo=tz, fold=fold)


def daily(cron: str) -> Schedule:
    return Schedule(enabled=True, cron=cron)


# ------------------------------------------------------------------ config


class TestParseSchedule:
    def test_no_table_is_disabled(self):
        assert parse_schedule({}, PATH) == Schedule(enabled=False)

    def test_enabled_with_cron(self):
        schedule = parse_schedule({"schedule": {"enabled": True, "cron": " 0  2 * *   * "}}, PATH)
        assert schedule == Schedule(enabled=True, cron="0 2 * * *")

    def test_disabled_keeps_its_cron(self):
        assert parse_schedule({"schedule": {"enabled": False, "cron": "15 3 * * 1"}}, PATH) == Schedule(False, "15 3 * * 1")

    @pytest.mark.parametrize(
        ("table", "expected"),
        [
            ({"enabled": "yes", "cron": "0 2 * * *"}, "[schedule] enabled must be true or false"),
            ({"enabled": True}, "[schedule] cron is missing: add it"),
            ({"enabled": True, "cron": 2}, "[schedule] cron must be a string in quotes"),
            ({"enabled": True, "cron": "0 25 * * *"}, "[schedule] cron: The hour field '25'"),
            ({"enabled": False, "cron": "every night"}, "[schedule] cron: The schedule 'every night' has 2 fields"),
        ],
    )
    def test_errors_name_file_key_and_fix(self, table, expected):
        with pytest.raises(ConfigError) as err:
            parse_schedule({"schedule": table}, PATH)
        assert str(err.value).startswith(f"In {PATH}, ")
        assert expected in str(err.value)

    def test_schedule_not_a_table(self):
        with pytest.raises(ConfigError, match=r"schedule must be a table: write it as \[schedule\]"):
            parse_schedule({"schedule": "0 2 * * *"}, PATH)

    def test_to_config_round_trips(self):
        schedule = Schedule(enabled=True, cron="30 4 * * 0")
        assert parse_schedule(schedule.to_config(), PATH) == schedule


class TestValidateCron:
    @pytest.mark.parametrize("expr", [
        "0 2 * * *", "*/15 * * * *", "0 2 1 * *", "30 3 * * 1-5", "0 2 * * sun", "0 2 * * 7", "0 2 1 jan-mar *",
        "0 0,12 * * *", "5/10 * * * *", "0 2 31 * *", "0 2 29 2 *", "0 2 30 2 1", "0-30/10 8-18 * * MON-FRI",
    ])
    def test_valid(self, expr):
        assert validate_cron(expr) is None

    @pytest.mark.parametrize(("expr", "field", "clause"), [
        ("60 2 * * *", "minute", "60 is out of range: use * or a number from 0 to 59"),
        ("0 24 * * *", "hour", "24 is out of range: use * or a number from 0 to 23"),
        ("0 2 0 * *", "day-of-month", "0 is out of range: use * or a number from 1 to 31"),
        ("0 2 * 13 *", "month", "13 is out of range: use * or a number from 1 to 12 or a name jan..dec"),
        ("0 2 * * 8", "day-of-week", "8 is out of range: use * or a number from 0 to 7 (0 and 7 are Sunday)"),
        ("5-2 * * * *", "minute", "the range '5-2' runs backwards: write the smaller value first"),
        ("*/0 * * * *", "minute", "the step in '*/0' is 0"),
        ("0 2 L * *", "day-of-month", "special cron syntax"),
        ("0 2 * * 5#2", "day-of-week", "special cron syntax"),
        ("0 2 * * funday", "day-of-week", "'funday' is not a number or a known name"),
        ("0 2,,3 * * *", "hour", "'' is not understood"),
    ])
    def test_invalid_names_the_field(self, expr, field, clause):
        problem = validate_cron(expr)
        assert problem is not None
        assert problem.startswith(f"The {field} field ")
        assert clause in problem

    @pytest.mark.parametrize("expr", ["0 2 * *", "0 0 2 * * *", "0 0 2 * * * 2030", "@daily", ""])
    def test_exactly_five_fields(self, expr):
        problem = validate_cron(expr)
        assert problem is not None and "a schedule has exactly 5: minute hour day-of-month month day-of-week" in problem

    def test_never_matching_date(self):
        problem = validate_cron("0 2 30 2 *")
        assert problem is not None and "never runs" in problem and "February has no day 30" in problem


class TestPresetsAndDescribe:
    @pytest.mark.parametrize(("args", "kwargs", "cron"), [
        (("daily", "02:00"), {}, "0 2 * * *"),
        (("daily", "23:59"), {}, "59 23 * * *"),
        (("weekly", "03:15"), {"weekday": 0}, "15 3 * * 1"),
        (("weekly", "03:15"), {"weekday": 6}, "15 3 * * 0"),
        (("monthly", "4:05"), {"day": 28}, "5 4 28 * *"),
    ])
    def test_presets(self, args, kwargs, cron):
        assert preset_cron(*args, **kwargs) == cron
        assert validate_cron(cron) is None

    @pytest.mark.parametrize(("args", "kwargs", "message"), [
        (("daily", "24:00"), {}, "is not a time of day: write it as HH:MM"),
        (("daily", "2am"), {}, "is not a time of day"),
        (("weekly", "02:00"), {"weekday": 7}, "use 0 (Monday) to 6 (Sunday)"),
        (("monthly", "02:00"), {"day": 29}, "use 1 to 28, so that every month has it"),
        (("hourly", "02:00"), {}, "use one of 'daily', 'weekly', 'monthly'"),
    ])
    def test_preset_errors(self, args, kwargs, message):
        with pytest.raises(ConfigError) as err:
            preset_cron(*args, **kwargs)
        assert message in str(err.value)

    @pytest.mark.parametrize(("cron", "sentence"), [
        ("0 2 * * *", "Every day at 02:00."),
        ("15 3 * * 1", "Every Monday at 03:15."),
        ("0 2 * * 1-5", "On weekdays (Monday to Friday) at 02:00."),
        ("0 4 1 * *", "On day 1 of the month at 04:00."),
        ("0 2 1 * 1", "On day 1 of the month or every Monday at 02:00."),
        ("*/15 * * * *", "Every 15 minutes."),
        ("0 1,13 * * *", "Every day at 01:00 and 13:00."),
        ("0 2 * jul *", "Every day in July at 02:00."),
        ("0 2 * * sat,sun", "Every Saturday and Sunday at 02:00."),
    ])
    def test_describe(self, cron, sentence):
        assert describe(cron) == sentence

    @pytest.mark.parametrize(("cron", "sentence"), [
        # A minute step restarts at every hour: only a step that divides 60 runs "every n minutes".
        ("*/45 * * * *", "Every hour at minutes 0 and 45."),
        ("*/25 * * * *", "Every hour at minutes 0, 25 and 50."),
        ("*/90 * * * *", "Every hour at minute 0."),
        ("*/60 * * * *", "Every hour at minute 0."),
        ("*/1000000 * * * *", "Every hour at minute 0."),
        ("*/45 * * * 1", "Every Monday, every hour at minutes 0 and 45."),
        ("*/30 * * * *", "Every 30 minutes."),
        ("*/20 * * * 1", "Every Monday, every 20 minutes."),
    ])
    def test_describe_minute_steps_truthfully(self, cron, sentence):
        assert describe(cron) == sentence


# ------------------------------------------------------------------ next runs


class TestNextRuns:
    def test_plain_daily(self):
        runs = next_runs(daily("0 2 * * *"), at(BERLIN, 2026, 11, 25, 12, 0), 3)
        assert runs == [at(BERLIN, 2026, 11, 26, 2), at(BERLIN, 2026, 11, 27, 2), at(BERLIN, 2026, 11, 28, 2)]

    def test_strictly_after(self):
        assert next_runs(daily("0 2 * * *"), at(BERLIN, 2026, 11, 26, 2, 0), 1) == [at(BERLIN, 2026, 11, 27, 2)]

    def test_disabled_or_zero(self):
        assert next_runs(Schedule(False, "0 2 * * *"), at(BERLIN, 2026, 1, 1), 3) == []
        assert next_runs(daily("0 2 * * *"), at(BERLIN, 2026, 1, 1), 0) == []

    def test_naive_datetime_is_refused(self):
        with pytest.raises(ValueError, match="timezone-aware"):
            next_runs(daily("0 2 * * *"), datetime(2026, 1, 1), 1)

    def test_berlin_spring_forward_0230_runs_once_at_0300(self):
        # 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
        runs = next_runs(daily("30 2 * * *"), at(BERLIN, 2026, 3, 27, 12), 4)
        assert [(r.isoformat()) for r in runs] == [
            "2026-03-28T02:30:00+01:00",
            "2026-03-29T03:00:00+02:00",
            "2026-03-30T02:30:00+02:00",
            "2026-03-31T02:30:00+02:00",
        ]

    def test_berlin_spring_forward_0200(self):
        runs = next_runs(daily("0 2 * * *"), at(BERLIN, 2026, 3, 28, 12), 2)
        assert [r.isoformat() for r in runs] == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"]

    def test_berlin_fall_back_0230_runs_once(self):
        # 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice, runs at the first.
        runs = next_runs(daily("30 2 * * *"), at(BERLIN, 2026, 10, 24, 12), 3)
        assert [r.isoformat() for r in runs] == [
            "2026-10-25T02:30:00+02:00",
            "2026-10-26T02:30:00+01:00",
            "2026-10-27T02:30:00+01:00",
        ]

    def test_berlin_fall_back_asked_during_the_repeated_hour(self):
        # 02:10 CET is the second pass; 02:30 already ran at 02:30 CEST, an hour ago in real time.
        second_pass = at(BERLIN, 2026, 10, 25, 2, 10, fold=1)
        assert second_pass.utcoffset() == timedelta(hours=1)
        assert [r.isoformat() for r in next_runs(daily("30 2 * * *"), second_pass, 1)] == ["2026-10-26T02:30:00+01:00"]

    def test_new_york_spring_forward(self):
        # 2026-03-08: 02:00 EST jumps to 03:00 EDT.
        runs = next_runs(daily("30 2 * * *"), at(NEW_YORK, 2026, 3, 7, 12), 3)
        assert [r.isoformat() for r in runs] == [
            "2026-03-08T03:00:00-04:00",
            "2026-03-09T02:30:00-04:00",
            "2026-03-10T02:30:00-04:00",
        ]

    def test_new_york_fall_back_0130_runs_once(self):
        # 2026-11-01: 02:00 EDT goes back to 01:00 EST; 01:30 happens twice.
        runs = next_runs(daily("30 1 * * *"), at(NEW_YORK, 2026, 10, 31, 12), 3)
        assert [r.isoformat() for r in runs] == [
            "2026-11-01T01:30:00-04:00",
            "2026-11-02T01:30:00-05:00",
            "2026-11-03T01:30:00-05:00",
        ]

    def test_new_york_hourly_across_both_changes(self):
        spring = next_runs(daily("0 * * * *"), at(NEW_YORK, 2026, 3, 8, 0, 30), 3)
        assert [r.isoformat() for r in spring] == [
            "2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T04:00:00-04:00",
        ]
        fall = next_runs(daily("0 * * * *"), at(NEW_YORK, 2026, 11, 1, 0, 30), 3)
        # 01:00 runs once (EDT); the repeated 01:00 EST does not run again.
        assert [r.isoformat() for r in fall] == [
            "2026-11-01T01:00:00-04:00", "2026-11-01T02:00:00-05:00", "2026-11-01T03:00:00-05:00",
        ]

    def test_zone_given_separately(self):
        runs = next_runs(daily("30 2 * * *"), datetime(2026, 3, 29, 0, 0, tzinfo=UTC), 1, tz=BERLIN)
        assert runs == [datetime(2026, 3, 29, 1, 0, tzinfo=UTC)]

    def test_day_31_skips_short_months(self):
        runs = next_runs(daily("0 2 31 * *"), at(BERLIN, 2026, 1, 1), 7)
        assert [(r.month, r.day) for r in runs] == [(1, 31), (3, 31), (5, 31), (7, 31), (8, 31), (10, 31), (12, 31)]
        assert all(r.hour == 2 for r in runs)

    def test_leap_day(self):
        assert next_runs(daily("0 2 29 2 *"), at(BERLIN, 2026, 1, 1), 2) == [
            at(BERLIN, 2028, 2, 29, 2), at(BERLIN, 2032, 2, 29, 2),
        ]

    def test_weekdays_or_day_of_month(self):
        # Both day fields restricted: a day matching either runs (Vixie cron).
        runs = next_runs(daily("0 2 1 * 1"), at(BERLIN, 2026, 1, 1, 12), 4)
        assert [r.date().isoformat() for r in runs] == ["2026-01-05", "2026-01-12", "2026-01-19", "2026-01-26"]


ZONES = [BERLIN, NEW_YORK]
CRONS = ["30 2 * * *", "0 2 * * *", "0 * * * *", "*/20 1-3 * * *", "0 3 * * 0", "0 2 31 * *", "45 1 * * *"]


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    cron=st.sampled_from(CRONS),
    # Concentrated around the 2026 DST changes of both zones.
    base=st.sampled_from([datetime(2026, 3, 7), datetime(2026, 3, 28), datetime(2026, 10, 24), datetime(2026, 10, 31)]),
    offset=st.integers(min_value=0, max_value=3 * 24 * 3600),
)
def test_previous_and_next_slots_agree(zone, cron, base, offset):
    """Forward and backward iteration give the same slots, across DST: prev <= now < next, no duplicates."""
    now = (base.replace(tzinfo=UTC) + timedelta(seconds=offset)).astimezone(zone)
    schedule = daily(cron)
    prev = previous_slot(schedule, now)
    following = next_runs(schedule, now, 3)
    # Compared in UTC: Python compares datetimes of one zone by wall clock, ignoring the DST fold.
    assert prev is not None and utc(prev) <= utc(now) < utc(following[0])
    assert utc(next_runs(schedule, prev, 1)[0]) == utc(following[0])
    instants = [utc(r) for r in following]
    assert instants == sorted(set(instants))
    assert due_slot(schedule, None, now) == prev
    assert due_slot(schedule, prev, now) is None


# ------------------------------------------------------------------ due slots and catch-up


class TestDueSlot:
    schedule = daily("0 2 * * *")

    def test_down_across_several_slots_gives_one_catch_up(self):
        last_done = at(BERLIN, 2026, 11, 20, 2)
        now = at(BERLIN, 2026, 11, 26, 9, 17)  # down for six nights
        assert missed_slots(self.schedule, last_done, now) == 6
        slot = due_slot(self.schedule, last_done, now)
        assert slot == at(BERLIN, 2026, 11, 26, 2)
        # Once the caller journals that slot, nothing else is due until the next night.
        assert due_slot(self.schedule, slot, now) is None
        assert due_slot(self.schedule, slot, at(BERLIN, 2026, 11, 27, 1, 59, 59)) is None
        assert due_slot(self.schedule, slot, at(BERLIN, 2026, 11, 27, 2)) == at(BERLIN, 2026, 11, 27, 2)

    def test_nothing_due_before_the_slot(self):
        assert due_slot(self.schedule, at(BERLIN, 2026, 11, 25, 2), at(BERLIN, 2026, 11, 26, 1, 59)) is None

    def test_never_done_means_latest_slot_due(self):
        assert due_slot(self.schedule, None, at(BERLIN, 2026, 11, 26, 14)) == at(BERLIN, 2026, 11, 26, 2)

    def test_disabled(self):
        assert due_slot(Schedule(False, "0 2 * * *"), None, at(BERLIN, 2026, 11, 26, 14)) is None

    def test_spring_forward_slot_due_at_0300(self):
        schedule = daily("30 2 * * *")
        last = at(BERLIN, 2026, 3, 28, 2, 30)
        assert due_slot(schedule, last, at(BERLIN, 2026, 3, 29, 1, 59)) is None
        assert due_slot(schedule, last, at(BERLIN, 2026, 3, 29, 3, 0)) == at(BERLIN, 2026, 3, 29, 3, 0)

    def test_fall_back_slot_not_due_again_in_repeated_hour(self):
        schedule = daily("30 2 * * *")
        first = at(BERLIN, 2026, 10, 25, 2, 30)  # CEST
        due = due_slot(schedule, at(BERLIN, 2026, 10, 24, 2, 30), at(BERLIN, 2026, 10, 25, 2, 31))
        assert due is not None and due.isoformat() == "2026-10-25T02:30:00+02:00"
        second_pass = at(BERLIN, 2026, 10, 25, 2, 45, fold=1)  # CET, an hour later
        assert due_slot(schedule, first, second_pass) is None
        # As read back from the journal (a fixed offset, not the zone): still the same instant.
        journalled = datetime.fromisoformat("2026-10-25T02:30:00+02:00")
        assert due_slot(schedule, journalled, second_pass) is None
        assert slot_already_done([RunRecord(id="x", kind="backup", started_at=journalled, pid=1,
                                            detail=slot_detail(journalled))], first)

    def test_new_york_fall_back_slot_not_due_again(self):
        schedule = daily("30 1 * * *")
        first = at(NEW_YORK, 2026, 11, 1, 1, 30)
        assert due_slot(schedule, first, at(NEW_YORK, 2026, 11, 1, 1, 40, fold=1)) is None


class TestIntervalEstimate:
    @pytest.mark.parametrize(("cron", "interval"), [
        ("0 2 * * *", timedelta(days=1)),
        ("0 2 * * 1-5", timedelta(days=3)),
        ("0 2 * * 0", timedelta(days=7)),
        ("0 2 1 * *", timedelta(days=31)),
        ("*/15 * * * *", timedelta(minutes=15)),
        ("0 2 29 2 *", timedelta(days=4 * 365 + 1)),
    ])
    def test_longest_gap(self, cron, interval):
        assert interval_estimate(daily(cron)) == interval

    def test_disabled(self):
        assert interval_estimate(Schedule(False)) == timedelta(0)

    @settings(max_examples=40, deadline=None)
    @given(minute=st.sampled_from(["0", "30", "5,50", "*/20"]),
           hour=st.sampled_from(["2", "0,23", "*/8", "9-11"]),
           day=st.sampled_from(["*", "1", "13", "1-31", "*/2", "28-31", "29"]),
           month=st.sampled_from(["*", "2", "1,7", "*/5", "jan-mar"]),
           weekday=st.sampled_from(["*", "1", "0-6", "5", "mon-fri", "sat,sun"]))
    def test_fields_agree_with_stepping_the_parser(self, minute, hour, day, month, weekday):
        """The analytic gap equals the longest gap between the runs the cron parser steps through."""
        cron = f"{minute} {hour} {day} {month} {weekday}"
        days = 200
        start = datetime(2001, 1, 1, tzinfo=timezone.utc)
        end = start + timedelta(days=days + 1)
        runs = []
        for run in backup.schedule.iter_runs(cron, start - timedelta(minutes=1)):
            if run >= end:
                break
            runs.append(run)
        stepped = max((b - a for a, b in zip(runs, runs[1:])), default=timedelta(0))
        if len(runs) > 1:
            assert backup.schedule._longest_gap(cron, days) == stepped


class TestJournalSlots:
    def test_detail_round_trip(self):
        slot = at(BERLIN, 2026, 11, 26, 2)
        assert slot_detail(slot) == "slot=2026-11-26T02:00:00+01:00"
        assert slot_detail(slot, catch_up=True) == "slot=2026-11-26T02:00:00+01:00 catch-up"
        assert parse_slot_detail(slot_detail(slot)) == (slot, False)
        assert parse_slot_detail(slot_detail(slot, True)) == (slot, True)

    @pytest.mark.parametrize("detail", [None, "", "manual", "slot=", "slot=yesterday", "slot=2026-11-26T02:00:00"])
    def test_other_details(self, detail):
        assert parse_slot_detail(detail) is None

    def test_last_slot_done_from_runs(self):
        def run(kind, detail, result="ok"):
            return RunRecord(id="x", kind=kind, started_at=at(BERLIN, 2026, 11, 26, 9), pid=1, detail=detail, result=result)

        runs = [
            run("backup", slot_detail(at(BERLIN, 2026, 11, 24, 2))),
            run("backup", slot_detail(at(BERLIN, 2026, 11, 25, 2), True), result="interrupted"),
            run("backup", None),
            run("verify", slot_detail(at(BERLIN, 2026, 11, 30, 2))),
        ]
        assert last_slot_done(runs) == at(BERLIN, 2026, 11, 25, 2)
        # Compared as instants: the same slot written in UTC counts as done.
        assert slot_already_done(runs, datetime(2026, 11, 25, 1, 0, tzinfo=UTC))
        assert not slot_already_done(runs, at(BERLIN, 2026, 11, 26, 2))
        assert last_slot_done([]) is None


def test_local_timezone_follows_tz(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    assert local_timezone() == BERLIN
    monkeypatch.setenv("TZ", ":America/New_York")
    assert local_timezone() == NEW_YORK


# ------------------------------------------------------------------ local time zone from $TZ


def tzif(offset: timedelta, abbreviation: str) -> bytes:
    """A minimal TZif (version 1) file: one fixed offset, no transitions."""
    names = abbreviation.encode("ascii") + b"\0"
    header = b"TZif" + b"\0" * 16 + struct.pack(">6l", 0, 0, 0, 0, 1, len(names))
    return header + struct.pack(">lBB", int(offset.total_seconds()), 0, 0) + names


class TestLocalTimezone:
    """$TZ is read as the C library reads it; what zoneinfo cannot load falls back, never fails."""

    @pytest.fixture
    def tokyo_file(self, tmp_path: Path) -> Path:
        path = tmp_path / "Tokyo"
        path.write_bytes(tzif(timedelta(hours=9), "JST"))
        return path

    @staticmethod
    def offset_and_name(zone) -> tuple[timedelta, str]:
        moment = datetime(2026, 7, 1, 12, tzinfo=zone)
        return moment.utcoffset(), moment.tzname()

    @pytest.mark.parametrize("value", ["America", "Europe", ":Europe", "Etc"])
    def test_tz_naming_a_directory_falls_back(self, monkeypatch, tmp_path, tokyo_file, value):
        monkeypatch.setenv("TZ", value)
        assert local_timezone(localtime=tmp_path / "missing") is UTC
        assert self.offset_and_name(local_timezone(localtime=tokyo_file)) == (timedelta(hours=9), "JST")

    @pytest.mark.parametrize("value", ["Nowhere/Special", "UTC+5", "CET-1CEST,M3.5.0,M10.5.0/3", "../etc/passwd"])
    def test_unknown_names_and_posix_rules_fall_back(self, monkeypatch, tmp_path, tokyo_file, value):
        # POSIX TZ rule strings are valid for the C library, but zoneinfo cannot represent them.
        monkeypatch.setenv("TZ", value)
        assert local_timezone(localtime=tmp_path / "missing") is UTC
        assert self.offset_and_name(local_timezone(localtime=tokyo_file)) == (timedelta(hours=9), "JST")

    @pytest.mark.parametrize("prefix", ["", ":"])
    def test_tz_as_an_absolute_path_to_a_tzif_file(self, monkeypatch, tmp_path, tokyo_file, prefix):
        monkeypatch.setenv("TZ", prefix + str(tokyo_file))
        zone = local_timezone(localtime=tmp_path / "missing")
        assert self.offset_and_name(zone) == (timedelta(hours=9), "JST")
        runs = next_runs(daily("30 2 * * *"), datetime(2026, 7, 1, tzinfo=UTC), 1, tz=zone)
        assert [utc(r) for r in runs] == [datetime(2026, 7, 1, 17, 30, tzinfo=UTC)]

    def test_tz_as_an_absolute_path_to_a_system_zone(self, monkeypatch, tmp_path):
        system_file = next((Path(d) / "Europe" / "Berlin" for d in TZPATH
                            if (Path(d) / "Europe" / "Berlin").is_file()), None)
        assert system_file is not None, "the Debian package tzdata provides /usr/share/zoneinfo"
        monkeypatch.setenv("TZ", str(system_file))
        zone = local_timezone(localtime=tmp_path / "missing")
        assert [r.isoformat() for r in next_runs(daily("30 2 * * *"), at(zone, 2026, 3, 28, 12), 2)] == [
            "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00",
        ]

    @pytest.mark.parametrize("name", ["directory", "missing", "not-tzif"])
    def test_absolute_path_that_is_not_a_tzif_file_falls_back(self, monkeypatch, tmp_path, tokyo_file, name):
        (tmp_path / "directory").mkdir()
        (tmp_path / "not-tzif").write_text("Europe/Berlin\n")
        monkeypatch.setenv("TZ", str(tmp_path / name))
        assert self.offset_and_name(local_timezone(localtime=tokyo_file)) == (timedelta(hours=9), "JST")

    def test_an_empty_tz_is_utc_as_for_the_c_library(self, monkeypatch, tokyo_file):
        monkeypatch.setenv("TZ", "")
        assert local_timezone(localtime=tokyo_file) is UTC

    def test_colon_prefixed_name(self, monkeypatch, tmp_path):
        monkeypatch.setenv("TZ", ":Europe/Berlin")
        assert local_timezone(localtime=tmp_path / "missing") is BERLIN

    def test_leap_second_zone_means_the_plain_zone(self, monkeypatch, tmp_path):
        # Python's datetime counts no leap seconds; the right/ file's transitions would be 27 s late.
        ZoneInfo("right/Europe/Berlin")  # Debian's tzdata has the right/ zones; without them this test cannot show anything
        monkeypatch.setenv("TZ", "right/Europe/Berlin")
        assert local_timezone(localtime=tmp_path / "missing") is BERLIN


# ------------------------------------------------------------------ a cron iteration that does not advance


@pytest.fixture
def leap_second_libc(monkeypatch):
    """The process's C library set to a leap-second zone (its gmtime then counts leap seconds)."""
    ZoneInfo("right/UTC")  # Debian's tzdata has the right/ zones; without them this test cannot show anything
    monkeypatch.setenv("TZ", "right/UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


class TestIterationAlwaysAdvances:
    def test_leap_second_zone_next_runs(self, leap_second_libc):
        with fails_after(20, "the schedule's iteration"):
            runs = next_runs(daily("30 2 * * *"), at(UTC, 2026, 11, 26, 14, 31), 3, tz=ZoneInfo("right/UTC"))
            hourly = next_runs(daily("*/20 * * * *"), at(UTC, 2026, 11, 26, 14, 31), 3, tz=UTC)
        assert [utc(r) for r in runs] == [at(UTC, 2026, 11, d, 2, 30) for d in (27, 28, 29)]
        assert hourly == [at(UTC, 2026, 11, 26, 14, 40), at(UTC, 2026, 11, 26, 15, 0), at(UTC, 2026, 11, 26, 15, 20)]

    def test_leap_second_zone_interval_and_previous_slots(self, leap_second_libc):
        with fails_after(20, "the schedule's iteration"):
            assert interval_estimate(daily("30 2 * * *")) == timedelta(days=1)
            assert interval_estimate(daily("*/15 * * * *")) == timedelta(minutes=15)
            now = at(UTC, 2026, 11, 26, 14, 31)
            assert previous_slot(daily("30 2 * * *"), now) == at(UTC, 2026, 11, 26, 2, 30)
            assert missed_slots(daily("30 2 * * *"), at(UTC, 2026, 11, 20, 2, 30), now) == 6

    @pytest.mark.parametrize("method", ["get_next", "get_prev"])
    def test_a_stuck_cron_iterator_gives_a_clear_error(self, monkeypatch, method):
        class StuckCroniter:
            """Answers the same time whatever it is asked, as croniter does when its clock conversion is off."""

            def __init__(self, expr, start):
                self.answer = start.replace(second=0, microsecond=0) + timedelta(minutes=5 if method == "get_next" else -5)

            def get_next(self, ret_type=None, start_time=None):
                return self.answer

            get_prev = get_next

        monkeypatch.setattr(backup.schedule, "croniter", StuckCroniter)
        now = at(UTC, 2026, 11, 26, 14, 31)
        with fails_after(20, "the schedule's iteration"), pytest.raises(BackupError) as err:
            if method == "get_next":
                next_runs(daily("30 2 * * *"), now, 3)
            else:
                list(backup.schedule.iter_runs_before("30 2 * * *", now))
        assert "did not advance" in str(err.value)


@pytest.mark.parametrize("value", ["America", "right/UTC", "right/Europe/Berlin", "/usr/share/zoneinfo/Europe/Berlin"])
def test_schedule_commands_under_any_tz(monkeypatch, appliance, value):
    """The real command with an enabled schedule: status and schedule show answer, none fails or hangs."""
    monkeypatch.setenv("TZ", value)
    set_result = run_cli("schedule", "set", "--daily", "02:30", config=appliance, timeout=20)
    assert set_result.returncode == 0, set_result.stderr
    for args in (("schedule", "show", "--next", "3"), ("status",)):
        result = run_cli(*args, config=appliance, timeout=20)
        assert result.returncode == 0, result.stderr
    assert "02:30" in set_result.stdout
