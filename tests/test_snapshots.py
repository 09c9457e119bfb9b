"""Snapshot tests of every screen at 80x24 and 120x40, with a fixed clock and fixed data.

The appliance is a real demo appliance in tmp_path; what would differ per run
(its path, the time) is fixed: the clock is FIXED_NOW and the storage is shown
as FIXED_STORAGE. Cursor blink is off.
"""

from __future__ import annotations

import pytest

from backup.progress import Progress
from tests.tui_fixtures import fixed_clock, make_app, settle, write_history
from tui.app import ANSI_THEME

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


def app_on(config, **kwargs):
    return make_app(config, clock=fixed_clock, fixed_storage=True, **kwargs)


@pytest.mark.parametrize("size", SIZES)
class TestStatusScreen:
    def test_fresh_appliance(self, snap_compare, config, size):
        """A new appliance: no DMS, no backup yet, schedule disabled."""
        assert snap_compare(app_on(config), terminal_size=size, run_before=settle)

    def test_history_and_last_failure(self, snap_compare, config_with_dms, size):
        """A week of daily backups, the size trend, and why the last attempt failed."""
        write_history(config_with_dms)
        assert snap_compare(app_on(config_with_dms), terminal_size=size, run_before=settle)

    def test_backup_running(self, snap_compare, config_with_dms, size):
        """A backup in progress: stage, bar, bytes, throughput, ETA."""
        write_history(config_with_dms)

        async def running(pilot) -> None:
            await settle(pilot)
            app = pilot.app
            app.backup_running = True
            app.progress = Progress(task="backup", stage="Archiving the system configuration", done=157_286_400,
                                    total=314_572_800, written=61_865_984, elapsed=4.0)
            await pilot.pause()

        assert snap_compare(app_on(config_with_dms), terminal_size=size, run_before=running)

    def test_refused_without_dms(self, snap_compare, config, size):
        """Back up now without a DMS: the core's sentence is shown."""
        async def back_up_now(pilot) -> None:
            await settle(pilot)
            await pilot.press("b")
            await settle(pilot)

        assert snap_compare(app_on(config), terminal_size=size, run_before=back_up_now)


@pytest.mark.parametrize("size", SIZES)
class TestSettingsScreen:
    def test_secret_not_set(self, snap_compare, config, size):
        """The Set Domain Master Secret form, the prefix and the schedule placeholder."""
        assert snap_compare(app_on(config), press=["2"], terminal_size=size, run_before=settle)

    def test_secret_set(self, snap_compare, config_with_dms, size):
        """Once set: when, the reminder, and the check; no set form."""
        assert snap_compare(app_on(config_with_dms), press=["2"], terminal_size=size, run_before=settle)

    def test_bad_prefix(self, snap_compare, config_with_dms, size):
        """An invalid prefix: the sentence inline, nothing saved."""

        async def bad_prefix(pilot) -> None:
            await settle(pilot)
            await pilot.press("2")
            field = pilot.app.screen.query_one("#prefix")
            field.focus()
            field.insert_text_at_cursor("bad/prefix")
            await pilot.press("enter")
            await settle(pilot)

        assert snap_compare(app_on(config_with_dms), terminal_size=size, run_before=bad_prefix)


    def test_schedule_preview(self, snap_compare, config_with_dms, size):
        """A weekly schedule at 03:15: its sentence and the next three runs; retention rules."""

        async def weekly(pilot) -> None:
            await settle(pilot)
            await pilot.press("2")
            await settle(pilot)
            screen = pilot.app.screen
            screen.query_one("#schedule-time").value = "03:15"
            screen.query_one("#preset-weekly").press()
            screen.query_one("#keep_last").value = "3"
            await pilot.pause()
            screen.query_one("#settings-body").scroll_end(animate=False)
            await pilot.pause()

        assert snap_compare(app_on(config_with_dms), terminal_size=size, run_before=weekly)


# The Storage screen and the storage browser: tests/test_snapshots_storage.py (with a fixed directory).


class TestDialogs:
    def test_help(self, snap_compare, config):
        """The help dialog over the Status screen."""
        assert snap_compare(app_on(config), press=["question_mark"], run_before=settle)

    def test_quit_while_backup_runs(self, snap_compare, config_with_dms):
        """Quitting during a backup asks first and says why."""

        async def ask(pilot) -> None:
            await settle(pilot)
            pilot.app.backup_running = True
            await pilot.press("q")
            await pilot.pause()

        assert snap_compare(app_on(config_with_dms), run_before=ask)


class TestSerialProfile:
    def test_status_in_ansi_theme_with_ascii_glyphs(self, snap_compare, config_with_dms):
        """TERM=linux at 80x24: the ANSI theme and ASCII glyphs."""
        write_history(config_with_dms)
        app = app_on(config_with_dms, serial=True, theme=ANSI_THEME)
        assert snap_compare(app, run_before=settle)


# The snapshots' secrets are checked by tests/test_secrets.py (all snapshot folders, SVG-escaped text).
