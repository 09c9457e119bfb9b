"""Pilot tests of the console: every flow of issue 4 on a real demo appliance (real files, real SQLite)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from textual.widgets import Input

from backup.config import load_config
from backup.lock import RunLock
from backup.secret import SecretInfo
from backup.service import BackupService
from screens.dialogs import ConfirmQuitScreen, HelpScreen
from screens.settings import SettingsScreen
from screens.status import StatusScreen
from screens.storage import StorageScreen
from tests.tui_fixtures import (
    FAST_KDF,
    FIXED_NOW,
    PASSPHRASE,
    fixed_clock,
    make_app,
    screen_text,
    settle,
    shown,
    text_of,
)
from tui.app import ANSI_THEME, BackupConsole
from widgets import profile
from widgets.messages import Concealed

SIZE = (80, 24)


async def type_into(pilot, selector: str, text: str, *, keys: bool = False) -> None:
    """Focus a field and enter `text`: as key presses when `keys`, else at once (typing is slow in Pilot)."""
    field = pilot.app.screen.query_one(selector, Input)
    field.focus()
    await pilot.pause()
    if keys:
        await pilot.press(*text)
    else:
        field.insert_text_at_cursor(text)
        await pilot.pause()


class TestShell:
    async def test_starts_on_status_and_switches_modes_with_plain_keys(self, config):
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert isinstance(app.screen, StatusScreen)
            text = shown(app)
            for label in ("Current Backup Status", "Not Running", "Last Successful Backup", "None yet",
                          "Next Scheduled Backup Execution", "Schedule Disabled"):
                assert label in text
            for key in ("1 Status", "2 Settings", "3 Storage", "b Back up now", "? Help", "q Quit"):
                assert key in text, f"footer lacks {key!r}"
            await pilot.press("2")
            assert isinstance(app.screen, SettingsScreen)
            await pilot.press("3")
            assert isinstance(app.screen, StorageScreen)
            assert "Storage Type" in shown(app)  # the Storage screen of issue 5 (tests/test_tui_storage.py)
            assert "Configured storage: local directory" in shown(app)
            await pilot.press("1")
            assert isinstance(app.screen, StatusScreen)

    async def test_help_opens_and_closes(self, config):
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            assert "Back up now" in shown(app)
            await pilot.press("q")  # closes the help, does not quit
            assert isinstance(app.screen, StatusScreen)
            assert app.is_running

    async def test_every_action_is_in_the_command_palette(self, config):
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            titles = [c.title for c in app.get_system_commands(app.screen)]
            for title in ("Status", "Settings", "Storage", "Back up now", "Help", "Quit"):
                assert title in titles
            assert titles.count("Quit") == 1

    async def test_palette_runs_an_action(self, config):
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("ctrl+p")
            await pilot.pause()
            await pilot.press(*"Settings")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, SettingsScreen)

    async def test_q_quits_when_idle(self, config):
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("q")
            await pilot.pause()
        assert app.return_code == 0

    async def test_recovers_on_start(self, config, tmp_path):
        """A run left open by a dead process is closed as interrupted when the console starts."""
        from backup.journal import RunJournal
        journal = RunJournal(config.state_dir)
        run_id = journal.start("backup", now=FIXED_NOW, name="demo-appliance-x.abk")
        lines = journal.path.read_text().replace(f'"pid":{os.getpid()}', '"pid":999999999')
        journal.path.write_text(lines)
        app = make_app(config, clock=fixed_clock)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert [r.result for r in journal.runs() if r.id == run_id] == ["interrupted"]
            assert "interrupted" in text_of(app, "#value-last-failure")


class TestSecret:
    async def _set(self, pilot, first: str, second: str) -> None:
        await type_into(pilot, "#secret", first)
        await type_into(pilot, "#secret-repeat", second)
        await pilot.press("enter")
        await settle(pilot)

    async def test_too_short_is_refused_inline(self, config):
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2", "tab")  # Tab enters the first field: the secret
            assert app.focused is app.screen.query_one("#secret", Input)
            await pilot.press(*"short", "tab", *"short", "enter")
            await settle(pilot)
            assert "at least 8 characters" in text_of(app, "#secret-error")
            assert not app.service.secret_info().is_set
            assert app.screen.query_one("#secret", Input).value == ""
            assert app.screen.query_one("#secret-repeat", Input).value == ""

    async def test_mismatch_is_refused_inline(self, config):
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            await self._set(pilot, PASSPHRASE, PASSPHRASE + "x")
            assert "do not match" in text_of(app, "#secret-error")
            assert not app.service.secret_info().is_set

    async def test_set_once_then_form_replaced_and_cannot_set_again(self, config):
        app = make_app(config, clock=fixed_clock)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            await self._set(pilot, PASSPHRASE, PASSPHRASE)
            info = app.service.secret_info()
            assert info.is_set and info.set_at == FIXED_NOW
            assert not app.screen.query_one("#set-form").display
            assert app.screen.query_one("#is-set").display
            text = shown(app)
            assert "set on 2024-06-03 09:30:00 UTC" in text
            assert "safe place" in text
            assert PASSPHRASE not in text
            # The core refuses a second time too; the console shows its sentence.
            app.set_secret(Concealed("another passphrase"), app.screen)
            await settle(pilot)
            assert "can only be set once" in text_of(app, "#secret-error")
            assert BackupService(config, kdf_params=FAST_KDF).check_secret(PASSPHRASE)
            # Nothing of the secret in worker descriptions or notifications.
            assert all(PASSPHRASE not in w.description for w in app.workers)
            assert all(PASSPHRASE not in n.message for n in app._notifications)

    async def test_status_says_secret_is_set(self, config):
        app = make_app(config, clock=fixed_clock)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert "Not set" in text_of(app, "#value-secret")
            await pilot.press("2")
            await self._set(pilot, PASSPHRASE, PASSPHRASE)
            await pilot.press("escape", "1")
            await settle(pilot)
            assert "Set on 2024-06-03 09:30:00 UTC" in text_of(app, "#value-secret")

    @pytest.mark.parametrize(("typed", "answer"), [(PASSPHRASE, "Yes"), ("not the secret", "No")])
    async def test_check_says_yes_or_no(self, config_with_dms, typed, answer):
        app = make_app(config_with_dms)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            await settle(pilot)
            assert app.screen.query_one("#is-set").display
            await type_into(pilot, "#check-secret", typed)
            await pilot.press("enter")
            await settle(pilot)
            assert text_of(app, "#check-result").startswith(answer + ":")
            assert app.screen.query_one("#check-secret", Input).value == ""

    async def test_check_of_nothing_asks_for_a_passphrase(self, config_with_dms):
        app = make_app(config_with_dms)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            await settle(pilot)
            app.screen.query_one("#check-secret", Input).focus()
            await pilot.press("enter")
            assert "Type a passphrase first" in text_of(app, "#check-result")


class TestPrefix:
    async def test_invalid_prefix_is_shown_and_nothing_saved(self, config):
        before = config.path.read_bytes()
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            await type_into(pilot, "#prefix", "bad/prefix")
            await pilot.press("enter")
            await settle(pilot)
            assert "is not allowed" in text_of(app, "#prefix-error")
            assert "Nothing was saved" in text_of(app, "#save-result")
        assert config.path.read_bytes() == before

    async def test_valid_prefix_is_saved_to_the_file_and_used(self, config_with_dms):
        app = make_app(config_with_dms)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            await type_into(pilot, "#prefix", "site-a")
            app.screen.query_one("#save").focus()
            await pilot.press("enter")
            await settle(pilot)
            assert "Saved" in text_of(app, "#save-result")
            assert load_config(config_with_dms.path).prefix == "site-a"
            assert app.service.config.prefix == "site-a"
            await pilot.press("escape", "b")
            await settle(pilot)
        names = [p.name for p in config_with_dms.storage.path.iterdir()]
        assert len(names) == 1 and names[0].startswith("site-a-demo-appliance-")

    async def test_a_file_that_cannot_be_written_keeps_the_old_settings(self, config):
        """Save Settings shows the core's sentence when the write fails; nothing is half-saved.

        The tests run as root, whom permissions do not stop, so the write is made to fail by taking
        the config file's directory away for the moment of the save.
        """
        app = make_app(config)
        away = config.path.parent.with_name("moved-away")
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            await type_into(pilot, "#prefix", "ok-prefix")
            config.path.parent.rename(away)
            try:
                await pilot.press("enter")
                await settle(pilot)
            finally:
                away.rename(config.path.parent)
            assert "Nothing was saved" in text_of(app, "#save-result")
        assert load_config(config.path).prefix == ""


class TestBackUpNow:
    async def test_refused_without_dms(self, config):
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("b")
            await settle(pilot)
            text = shown(app)
            assert "No Domain Master Secret is set" in text
            assert "Not Running" in text
            assert list(config.storage.path.iterdir()) == []

    async def test_refused_for_an_otp_operator(self, config_with_dms):
        import getpass

        from backup.config import update_config

        config = update_config(config_with_dms, {"operators": {getpass.getuser(): "otp"}})
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("b")
            await settle(pilot)
            assert "create an OAuth account, sign in with it, and remove the OTP account" in text_of(app, "#notice")
            assert list(config.storage.path.iterdir()) == []

    async def test_refused_while_another_run_holds_the_lock(self, config_with_dms):
        app = make_app(config_with_dms)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            with RunLock(config_with_dms.state_dir, "backup", now=FIXED_NOW):
                app.refresh_status()
                await settle(pilot)
                assert "In Progress" in text_of(app, "#value-state")
                await pilot.press("b")
                await settle(pilot)
                assert "Another backup or restore is running" in text_of(app, "#notice")

    async def test_shows_the_progress_of_another_process(self, config_with_dms):
        from backup.journal import RunJournal

        app = make_app(config_with_dms)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            with RunLock(config_with_dms.state_dir, "backup", now=FIXED_NOW):
                RunJournal(config_with_dms.state_dir).write_progress(
                    {"task": "backup", "stage": "Archiving the internal database", "done": 1048576,
                     "total": 4194304, "written": 524288, "elapsed": 2.0})
                app.refresh_status()
                await settle(pilot)
                text = shown(app)
                assert "In Progress" in text and "Archiving the internal database" in text
                assert "[" in text and "25%" in text and "1.0 MiB of 4.0 MiB" in text
            app.refresh_status()
            await settle(pilot)
            assert not app.screen.query_one("#run-progress").display

    async def test_succeeds_and_status_shows_last_successful_backup(self, config_with_dms):
        messages = []
        app = make_app(config_with_dms)
        async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
            await settle(pilot)
            assert "None yet" in text_of(app, "#value-last-success")
            await pilot.press("b")
            await settle(pilot)
            assert "just now" in text_of(app, "#value-last-success")
            assert "Not Running" in text_of(app, "#value-state")
            assert "ok" in shown(app)
        backups = [p for p in config_with_dms.storage.path.iterdir()]
        assert len(backups) == 1 and backups[0].suffix == ".abk"
        kinds = {type(m).__name__ for m in messages}
        assert {"BackupStarted", "BackupProgressed", "BackupFinished", "StatusRefreshed"} <= kinds


class GatedService(BackupService):
    """The real service, whose backup waits at the start until the test opens the gate."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.started = threading.Event()

    def run_backup(self, *, progress=None, cancel=None, **kwargs):
        def gated(p):
            if progress:
                progress(p)
            if not self.started.is_set():
                self.started.set()
                self.gate.wait(10)
        return super().run_backup(progress=gated, cancel=cancel, **kwargs)


async def test_the_status_is_not_reread_every_2_s_while_this_consoles_backup_runs(config_with_dms):
    """The backup's progress arrives as messages; rereading and redrawing the whole status meanwhile
    gave the event loop its longest stalls (bench/console.py). Other processes' runs still show."""
    service = GatedService(config_with_dms, kdf_params=FAST_KDF)
    reads = []
    real_status = service.status
    service.status = lambda **kw: reads.append(1) or real_status(**kw)  # counts; the status is real
    app = BackupConsole(config_with_dms, service=service, refresh_interval=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.3)
        assert len(reads) >= 3  # the timer reads it while idle
        await pilot.press("b")
        assert service.started.wait(10)
        await pilot.pause(0.1)
        during = len(reads)
        await pilot.pause(0.5)
        assert len(reads) == during and app.backup_running
        service.gate.set()
        for _ in range(100):
            if not app.backup_running:
                break
            await pilot.pause(0.05)
        await pilot.pause(0.3)
        assert len(reads) > during + 2  # read at the end, and the timer again


class TestQuitDuringBackup:
    def _app(self, config):
        service = GatedService(config, kdf_params=FAST_KDF)
        return BackupConsole(config, service=service, refresh_interval=None), service

    async def test_quit_asks_and_keep_running_keeps_it(self, config_with_dms):
        app, service = self._app(config_with_dms)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("b")
            assert service.started.wait(10)
            await pilot.pause()
            assert app.backup_running
            assert "In Progress" in text_of(app, "#value-state")
            await pilot.press("q")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmQuitScreen)
            assert "must not be restarted" in shown(app)
            await pilot.press("escape")
            await pilot.pause()
            assert isinstance(app.screen, StatusScreen)
            assert app.is_running
            service.gate.set()
            await settle(pilot)
            assert not app.backup_running
            assert "just now" in text_of(app, "#value-last-success")

    async def test_stop_and_quit_stops_the_backup_cleanly(self, config_with_dms):
        app, service = self._app(config_with_dms)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("b")
            assert service.started.wait(10)
            await pilot.pause()
            await pilot.press("q")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmQuitScreen)
            await pilot.press("y")
            await pilot.pause()
            service.gate.set()
            for _ in range(100):
                if not app.is_running:
                    break
                await pilot.pause(0.05)
        assert app.return_code == 0
        assert list(config_with_dms.storage.path.iterdir()) == []
        runs = service.journal.runs()
        assert [r.result for r in runs] == ["interrupted"]

    async def test_sigterm_stops_the_backup_cleanly_and_exits(self, config_with_dms):
        app, service = self._app(config_with_dms)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("b")
            assert service.started.wait(10)
            await pilot.pause()
            # Only send the signal when the console's handler is on the loop: otherwise it would end pytest.
            assert signal.SIGTERM in asyncio.get_running_loop()._signal_handlers
            os.kill(os.getpid(), signal.SIGTERM)
            await pilot.pause()
            service.gate.set()
            for _ in range(100):
                if not app.is_running:
                    break
                await pilot.pause(0.05)
        assert app.return_code == 0
        assert [r.result for r in service.journal.runs()] == ["interrupted"]
        assert list(config_with_dms.storage.path.iterdir()) == []

    async def test_second_back_up_now_is_refused_while_one_runs(self, config_with_dms):
        app, service = self._app(config_with_dms)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("b")
            assert service.started.wait(10)
            await pilot.pause()
            await pilot.press("b")
            await pilot.pause()
            assert "already running" in text_of(app, "#notice")
            service.gate.set()
            await settle(pilot)


class TestSerialProfile:
    def test_serial_terms(self):
        assert profile.is_serial_terminal({"TERM": "linux"})
        assert profile.is_serial_terminal({"TERM": "vt100"})
        assert not profile.is_serial_terminal({"TERM": "xterm-256color"})

    async def test_ansi_theme_is_used_on_a_serial_console(self, config, monkeypatch):
        monkeypatch.setenv("TERM", "linux")
        app = BackupConsole(config, service=BackupService(config, kdf_params=FAST_KDF), refresh_interval=None)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert app.theme == ANSI_THEME
            assert app.glyphs is profile.ASCII

    async def test_masks_and_scrollbars_are_ascii_on_a_serial_console(self, config_with_dms):
        """Textual masks secrets with U+2022 and ends scrollbar thumbs with eighth blocks, which not every
        serial terminal's character set has (the notification's edge: tests/test_e2e_tmux.py)."""
        backup = BackupService(config_with_dms, kdf_params=FAST_KDF).run_backup().name
        for serial, mask in ((True, "*"), (False, "\u2022")):
            app = make_app(config_with_dms, serial=serial)
            async with app.run_test(size=(80, 24)) as pilot:
                await settle(pilot)
                await pilot.press("2")
                await pilot.pause()
                await pilot.press("tab")
                await pilot.press(*"secret!")
                await pilot.pause()
                assert mask * 7 in screen_text(app)
                await pilot.press("escape", "3", "o")  # the browser: Backup Details overflow 80x24
                await settle(pilot)
                await pilot.press("down", "enter")
                await settle(pilot)
                text = screen_text(app)
                assert backup[-16:] in text  # the list keeps the end of a long name, where backups differ
                assert text.isascii() == serial, sorted({c for c in text if not c.isascii()})

    async def test_ansi_theme_can_be_chosen(self, config):
        app = make_app(config, theme=ANSI_THEME)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert app.theme == ANSI_THEME

    def test_zero_size_tty_falls_back_to_80x24(self, monkeypatch):
        monkeypatch.setattr(os, "get_terminal_size", lambda fd=1: os.terminal_size((0, 0)))
        env: dict[str, str] = {}
        assert profile.ensure_terminal_size(1, env) == (80, 24)
        assert env == {"COLUMNS": "80", "LINES": "24"}
        env = {"COLUMNS": "132", "LINES": "0"}
        assert profile.ensure_terminal_size(1, env) == (132, 24)

    def test_a_real_size_is_left_alone(self, monkeypatch):
        monkeypatch.setattr(os, "get_terminal_size", lambda fd=1: os.terminal_size((100, 30)))
        env: dict[str, str] = {}
        assert profile.ensure_terminal_size(1, env) is None and env == {}

    def test_concealed_hides_the_secret(self):
        secret = Concealed(PASSPHRASE)
        assert PASSPHRASE not in repr(secret) and PASSPHRASE not in str(secret)
        assert PASSPHRASE not in repr(SecretInfo(True))
        assert secret.reveal() == PASSPHRASE


class TestSchedule:
    async def test_preset_preview_save_and_status_shows_next_run(self, config):
        from textual.widgets import Checkbox

        app = make_app(config, clock=fixed_clock)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert "Schedule Disabled" in text_of(app, "#value-next-scheduled")
            await pilot.press("2")
            await settle(pilot)
            field = app.screen.query_one("#schedule-time", Input)
            field.value = "03:15"
            app.screen.query_one("#preset-weekly").press()
            await pilot.pause()
            assert app.screen.query_one("#schedule-cron", Input).value == "15 3 * * 1"
            assert app.screen.query_one("#schedule-enabled", Checkbox).value
            preview = text_of(app, "#schedule-preview")
            # FIXED_NOW is Monday 2024-06-03 09:30 UTC: the next Mondays at 03:15.
            assert "Every Monday at 03:15" in preview
            assert "2024-06-10 03:15:00 UTC, 2024-06-17 03:15:00 UTC, 2024-06-24 03:15:00 UTC" in preview
            app.screen.query_one("#save").press()
            await settle(pilot)
            assert "Saved" in text_of(app, "#save-result")
            await pilot.press("1")
            await settle(pilot)
            assert text_of(app, "#value-next-scheduled") == "2024-06-10 03:15:00 UTC"
        saved = load_config(config.path).raw["schedule"]
        assert saved == {"enabled": True, "cron": "15 3 * * 1"}

    # '\u00b2' and '\u0661\u0662' pass str.isdigit() but are no numbers to type: '\u00b2' crashed the app.
    @pytest.mark.parametrize("keep", ["x", "\u00b2", "\u0661\u0662", "1.5", "-1"])
    async def test_bad_cron_and_bad_retention_are_shown_and_nothing_saved(self, config, keep):
        before = config.path.read_bytes()
        app = make_app(config, clock=fixed_clock)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            await settle(pilot)
            app.screen.query_one("#schedule-cron", Input).value = "61 2 * * *"
            app.screen.query_one("#keep_daily", Input).value = keep
            await pilot.pause()
            assert "not valid" in text_of(app, "#schedule-error")
            app.screen.query_one("#save").press()
            await settle(pilot)
            assert "Keep daily must be a whole number" in text_of(app, "#retention-error")
            assert "Nothing was saved" in text_of(app, "#save-result")
        assert config.path.read_bytes() == before

    async def test_bad_preset_time_is_explained(self, config):
        app = make_app(config, clock=fixed_clock)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            await settle(pilot)
            app.screen.query_one("#schedule-time", Input).value = "25:00"
            app.screen.query_one("#preset-daily").press()
            await pilot.pause()
            assert "is not a time of day" in text_of(app, "#schedule-error")

    async def test_retention_is_saved(self, config):
        app = make_app(config, clock=fixed_clock)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            await settle(pilot)
            app.screen.query_one("#keep_last", Input).value = "3"
            app.screen.query_one("#keep_monthly", Input).value = "6"
            app.screen.query_one("#save").press()
            await settle(pilot)
        raw = load_config(config.path).raw
        assert raw["retention"] == {"keep_last": 3, "keep_monthly": 6}
        assert raw["schedule"] == {"enabled": False, "cron": "0 2 * * *"}


class TestStale:
    async def test_a_too_old_last_success_is_called_out(self, config_with_dms):
        from backup.config import update_config
        from tests.tui_fixtures import write_history

        write_history(config_with_dms)
        config = update_config(config_with_dms, {"schedule": {"enabled": True, "cron": "0 2 * * *",
                                                              "max_age_hours": 12}})
        app = make_app(config, clock=fixed_clock)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert app.screen.query_one("#stale").display
            assert "The last successful backup is" in text_of(app, "#stale")
            assert text_of(app, "#value-next-scheduled") == "2024-06-04 02:00:00 UTC"


class TestConsoleRunsTheSchedule:
    """With the console open, a slot that falls due is run by the console, once, like the daemon would."""

    async def test_a_due_slot_is_run_and_journalled(self, config_with_dms):
        from backup.config import update_config
        from backup.journal import RunJournal
        from backup.schedule import parse_slot_detail

        config = update_config(config_with_dms, {"schedule": {"enabled": True, "cron": "0 2 * * *"}})
        app = make_app(config, clock=fixed_clock, run_schedule=True)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await settle(pilot)
            backups = [r for r in RunJournal(config.state_dir).runs() if r.kind == "backup"]
            assert [r.result for r in backups] == ["ok"]
            slot, catch_up = parse_slot_detail(backups[0].detail)
            # FIXED_NOW is 09:30 UTC, so the slot of 02:00 that day was missed: one catch-up run.
            assert slot == FIXED_NOW.replace(hour=2, minute=0) and catch_up
            assert "Last Successful Backup" in shown(app)
            app.refresh_status()
            await settle(pilot)
            assert len([r for r in RunJournal(config.state_dir).runs() if r.kind == "backup"]) == 1

    async def test_a_slot_the_daemon_took_is_not_run_again(self, config_with_dms):
        from backup.config import update_config
        from backup.journal import RunJournal
        from backup.schedule import slot_detail

        config = update_config(config_with_dms, {"schedule": {"enabled": True, "cron": "0 2 * * *"}})
        journal = RunJournal(config.state_dir)
        slot = FIXED_NOW.replace(hour=2, minute=0)
        run = journal.start("backup", now=slot, name="taken-by-the-daemon.abk", detail=slot_detail(slot))
        journal.end(run, "ok", now=slot, name="taken-by-the-daemon.abk", size=1)
        app = make_app(config, clock=fixed_clock, run_schedule=True)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await settle(pilot)
        assert [r.name for r in RunJournal(config.state_dir).runs() if r.kind == "backup"] == ["taken-by-the-daemon.abk"]
        assert list(config.storage.path.iterdir()) == []


def test_the_first_screen_loads_no_settings_or_storage_screens() -> None:
    """Their modules are imported when first opened: a faster start (the target is under 0.5 s)."""
    code = ("import sys, tui.app\n"
            "print(sorted(m for m in ('screens.settings', 'screens.storage', 'screens.storage_browser') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]"
