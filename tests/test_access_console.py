"""Pilot tests: a look-only (OTP or unlisted) operator at the console may look, and nothing else (issue 14, item 4).

The operator is the process's login, as for every command. Here the console runs as root (the tests
do), and root is made an OTP operator in [operators]: the real path by which the console learns who
is there. One test injects a sudo'ed login instead (a real sudo cannot run inside the test process).
"""

from __future__ import annotations

import getpass

from backup.config import Config, update_config
from backup.journal import RunJournal
from backup.operators import Login
from backup.service import BackupService
from screens.restore import ConfirmDeleteScreen, ConfirmRestoreScreen
from screens.settings import SettingsScreen
from screens.storage import StorageScreen
from screens.storage_browser import StorageBrowser
from test_tui_console import type_into
from test_tui_storage import make_backup, open_backup, set_input, settle
from tests.tui_fixtures import FAST_KDF, PASSPHRASE, fixed_clock, make_app, text_of
from tui.app import BackupConsole

SIZE = (100, 30)
GUIDANCE = "create an OAuth account, sign in with it, and remove the OTP account"


def as_otp(config: Config) -> Config:
    """The same appliance with this process's login (root here) listed as an OTP operator."""
    return update_config(config, {"operators": {getpass.getuser(): "otp", "alice": "oauth"}})


class TestSettings:
    async def test_save_settings_is_refused_with_the_guidance_and_nothing_is_written(self, config_with_dms):
        config = as_otp(config_with_dms)
        before = config.path.read_bytes()
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            await settle(pilot)
            assert isinstance(app.screen, SettingsScreen)
            assert GUIDANCE in text_of(app, "#access-note")
            await type_into(pilot, "#prefix", "site-b")
            app.screen.query_one("#schedule-cron").value = "0 3 * * *"
            app.screen.query_one("#save").focus()
            await pilot.press("enter")
            await settle(pilot)
            result = text_of(app, "#save-result")
            assert result.startswith("Nothing was saved: Operator root signs in with OTP, so may not change")
            assert GUIDANCE in result
        assert config.path.read_bytes() == before

    async def test_the_secret_cannot_be_set(self, config):
        config = as_otp(config)
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            await type_into(pilot, "#secret", PASSPHRASE)
            await type_into(pilot, "#secret-repeat", PASSPHRASE)
            await pilot.press("enter")
            await settle(pilot)
            assert "so may not set the Domain Master Secret" in text_of(app, "#secret-error")
        assert not (config.state_dir / "dms.key").exists()

    async def test_an_oauth_operator_sees_no_note(self, config_with_dms):
        app = make_app(config_with_dms)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            await settle(pilot)
            assert not app.screen.query_one("#access-note").display


class TestStorage:
    async def test_save_storage_is_refused(self, config_with_dms, tmp_path):
        config = as_otp(config_with_dms)
        before = config.path.read_bytes()
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("3")
            await settle(pilot)
            assert isinstance(app.screen, StorageScreen)
            assert GUIDANCE in text_of(app, "#access-note")
            await set_input(pilot, "#local-path", str(tmp_path / "elsewhere"))
            await pilot.press("s")
            await settle(pilot)
            assert "so may not change the storage" in text_of(app, "#storage-result")
        assert config.path.read_bytes() == before

    async def test_the_browser_refuses_restore_delete_and_use_but_verifies_without_recording(self, config_with_dms):
        backup = make_backup(config_with_dms)
        config = as_otp(config_with_dms)
        before = config.path.read_bytes()
        marker = config.appliance.system / "added-after-the-backup.conf"
        marker.write_text("later\n")
        app = make_app(config, clock=fixed_clock)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            screen = await open_backup(pilot, backup.name, backup.parent)
            for key in ("r", "x"):
                await pilot.press(key)
                await settle(pilot)
                assert not isinstance(app.screen, (ConfirmRestoreScreen, ConfirmDeleteScreen)), key
                assert isinstance(app.screen, StorageBrowser)
                assert GUIDANCE in " ".join(screen.sentence.split()), key
            await pilot.press("u")
            await settle(pilot)
            assert isinstance(app.screen, StorageBrowser)
            assert "so may not change the storage" in screen.sentence
            await pilot.press("v")
            await settle(pilot)
            assert screen.sentence.startswith(f"The backup {backup.name} is intact")
            assert "not recorded" in screen.sentence
        assert backup.exists() and marker.exists()
        assert config.path.read_bytes() == before
        assert not any(r.kind in ("verify", "restore", "delete") for r in RunJournal(config.state_dir).runs())


class TestBackUpNow:
    async def test_a_demotion_while_the_console_is_open_takes_effect(self, config_with_dms):
        """The console keeps its configuration in memory; who may do what is read from the file at every check."""
        app = make_app(config_with_dms)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            as_otp(config_with_dms)  # another process (an OAuth operator) demotes this login
            await pilot.press("b")
            await settle(pilot)
            assert GUIDANCE in text_of(app, "#notice")
        assert list(config_with_dms.storage.path.iterdir()) == []

    async def test_a_console_started_by_sudo_for_an_otp_operator(self, config_with_dms):
        config = update_config(config_with_dms, {"operators": {"bob": "otp", getpass.getuser(): "oauth"}})
        service = BackupService(config, kdf_params=FAST_KDF, login=Login("bob", superuser=False))
        app = BackupConsole(config, service=service, refresh_interval=None, run_schedule=False)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("b")
            await settle(pilot)
            assert "Operator bob signs in with OTP, so may not create backups" in text_of(app, "#notice")
        assert list(config.storage.path.iterdir()) == []
