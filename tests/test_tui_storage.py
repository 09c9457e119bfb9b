"""Pilot tests of the Storage screen and the storage browser (issue 5) on real demo appliances.

Local storage is real files in tmp_path. A permission-denied directory cannot be made real here (the
tests run as root, who may read anything), so that case uses FakeStorage, a small in-memory Storage
that raises the StorageError the local backend raises for EACCES.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import shutil
import signal
import threading
import tomllib
from pathlib import Path

from textual.strip import Strip
from textual.widgets import Input, LoadingIndicator, Select

from backup.config import load_config
from backup.demo import create_demo_appliance
from backup.errors import BackupNotFoundError, StorageError
from backup.service import BackupService
from backup.storage import Entry, Usage
from backup.storage.local import LocalStorage
from screens import storage_browser
from screens.dialogs import ConfirmQuitScreen
from screens.restore import ConfirmDeleteScreen, ConfirmRestoreScreen
from screens.storage import StorageScreen
from screens.storage_browser import PAGE_SIZE, BrowseLocation, StorageBrowser, local_location
from tests.helpers import appliance_state
from tests.tui_fixtures import FAST_KDF, fixed_clock, make_app, screen_text, settle, shown
from widgets.backup_details import BackupDetailsView
from widgets.storage_info import StorageInfo
from widgets.storage_tree import BACKUP, Row, StorageTree

SIZE = (100, 30)
OTHER_DMS = "another appliance's secret"


# ---------------------------------------------------------------- a fixed, in-memory storage


def entry(name: str, *, is_dir: bool = False, size: int = 0) -> Entry:
    return Entry(name=name, is_dir=is_dir, size=size, mtime=1_717_400_000.0, mode=0o755 if is_dir else 0o600,
                 uid=0, gid=0)


class FakeStorage:
    """A Storage over fixed directories and file contents, with fixed usage and permissions.

    `denied` maps a directory to nothing more: every call on it fails as the local backend fails
    for EACCES.
    """

    description = "fixed test storage"

    def __init__(self, dirs: dict[str, list[Entry]], files: dict[str, bytes] | None = None, *,
                 usage: Usage = Usage(total=500 * 2**30, used=123 * 2**30, free=377 * 2**30),
                 access: tuple[bool, bool] = (True, True), denied: set[str] = frozenset()) -> None:
        self.dirs = {k: list(v) for k, v in dirs.items()}
        self.files = dict(files or {})
        self._usage = usage
        self._access = access
        self.denied = set(denied)
        self.calls: list[tuple[str, int, int | None]] = []

    def _check(self, path: str, what: str) -> None:
        if path in self.denied:
            raise StorageError(f"Permission denied: {what} /{path} failed. Give the appliance write access "
                               "or choose another location.")

    def list(self, path: str = "", *, offset: int = 0, limit: int | None = None) -> list[Entry]:
        self.calls.append((path, offset, limit))
        self._check(path, "Listing")
        if path not in self.dirs:
            raise StorageError(f"Listing /{path} failed: the location does not exist.")
        entries = self.dirs[path]
        return entries[offset: None if limit is None else offset + limit]

    def stat(self, path: str) -> Entry:
        parent, _, name = path.rpartition("/")
        for item in self.dirs.get(parent, []):
            if item.name == name:
                return item
        raise BackupNotFoundError(f"/{path} does not exist in the storage.")

    def usage(self, path: str = "") -> Usage:
        self._check(path, "Reading the disk usage of")
        return self._usage

    def access(self, path: str = "") -> tuple[bool, bool]:
        return (False, False) if path in self.denied else self._access

    def create(self, name: str):
        raise StorageError("read only")

    def open(self, name: str):
        if name not in self.files:
            raise BackupNotFoundError(f"There is no backup named {name}.")
        return io.BytesIO(self.files[name])

    def delete(self, name: str) -> None:
        parent, _, base = name.rpartition("/")
        self.files.pop(name)
        self.dirs[parent] = [e for e in self.dirs[parent] if e.name != base]


def fake_location(storage: FakeStorage, start: str = "srv/appliance-backups") -> BrowseLocation:
    return BrowseLocation(opener=lambda: storage, kind="local", top="/", start=start)


# ---------------------------------------------------------------- helpers


def browser(app) -> StorageBrowser:
    assert isinstance(app.screen, StorageBrowser), type(app.screen)
    return app.screen


def tree(app) -> StorageTree:
    return browser(app).query_one(StorageTree)


async def open_storage_screen(pilot) -> StorageScreen:
    await settle(pilot)
    await pilot.press("3")
    await settle(pilot)
    assert isinstance(pilot.app.screen, StorageScreen)
    return pilot.app.screen


async def set_input(pilot, selector: str, text: str) -> None:
    field = pilot.app.screen.query_one(selector, Input)
    field.value = text
    await pilot.pause()


async def cursor_to(pilot, name: str) -> None:
    t = tree(pilot.app)
    index = t.names.index(name)
    t.move_to(index)
    await pilot.pause()


def saved_storage(config) -> dict:
    return tomllib.loads(config.path.read_text())["storage"]


def make_backup(config, *, passphrase: str | None = None) -> Path:
    """A real backup of `config`'s appliance, made at the fixed time; returns its file."""
    service = BackupService(config, kdf_params=FAST_KDF, clock=fixed_clock)
    if passphrase is not None:
        service.set_secret(passphrase)
    result = service.run_backup()
    return config.storage.path / result.name


# ---------------------------------------------------------------- the Storage screen


class TestStorageScreen:
    async def test_shows_the_configured_local_storage(self, config):
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_storage_screen(pilot)
            assert screen.query_one("#storage-type", Select).value == "local"
            assert screen.query_one("#local-path", Input).value == str(config.storage.path)
            text = shown(app)
            for words in ("Storage Type", "Local directory", "Chosen location", "Browse Storage", "Save",
                          f"Configured storage: local directory {config.storage.path}"):
                assert words in text
            assert not screen.query_one("#nfs-fields").display

    async def test_bad_nfs_url_is_explained_inline_and_nothing_saved(self, config):
        before = config.path.read_text()
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_storage_screen(pilot)
            screen.query_one("#storage-type", Select).value = "nfs"
            await pilot.pause()
            assert screen.query_one("#nfs-fields").display and not screen.query_one("#local-fields").display
            await set_input(pilot, "#nfs-url", "http://server/export")
            error = str(screen.query_one("#nfs-url-error").render())
            assert "nfs://" in error
            await pilot.press("escape")
            await pilot.press("s")
            await settle(pilot)
            assert "Nothing was saved: correct the fields marked above." in shown(app)
        assert config.path.read_text() == before

    async def test_a_password_typed_into_the_nfs_url_is_not_shown_back(self, config):
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_storage_screen(pilot)
            screen.query_one("#storage-type", Select).value = "nfs"
            await pilot.pause()
            await set_input(pilot, "#nfs-url", "nfs://admin:Hunter2Secret@nas.example/export/backups")
            await pilot.pause()
            chosen = str(screen.query_one("#chosen-location").render())
            error = str(screen.query_one("#nfs-url-error").render())
            assert "nfs://***@nas.example/export/backups" in chosen
            for text in (chosen, error):
                assert "Hunter2Secret" not in text and "admin" not in text

    async def test_relative_directory_is_refused(self, config):
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_storage_screen(pilot)
            await set_input(pilot, "#local-path", "backups")
            assert "relative path" in str(screen.query_one("#local-path-error").render())

    async def test_save_nfs_writes_the_file_and_reloads_the_service(self, config):
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_storage_screen(pilot)
            screen.query_one("#storage-type", Select).value = "nfs"
            screen.query_one("#nfs-version", Select).value = "4"
            await set_input(pilot, "#nfs-url", "nfs://backup-server/export/appliances")
            assert "NFS 4 goes through the" in str(screen.query_one("#nfs-transport").render())
            screen.query_one("#save").press()
            await settle(pilot)
            assert "Saved to config.toml: the storage is now the NFS 4 share" in shown(app)
            assert app.service.config.storage.type == "nfs"
            assert "NFS 4 share nfs://backup-server:2049/export/appliances" in shown(app)
        assert saved_storage(config) == {"type": "nfs", "url": "nfs://backup-server/export/appliances", "version": "4"}
        assert load_config(config.path).storage.version == "4"

    async def test_save_none_and_browse_is_refused(self, config):
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_storage_screen(pilot)
            screen.query_one("#storage-type", Select).value = "none"
            await pilot.pause()
            await pilot.press("o")
            assert "Choose a storage type" in shown(app)
            await pilot.press("s")
            await settle(pilot)
        assert saved_storage(config) == {"type": "none"}

    async def test_save_local_directory(self, config, tmp_path):
        target = tmp_path / "elsewhere"
        target.mkdir()
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            await open_storage_screen(pilot)
            await set_input(pilot, "#local-path", str(target))
            await pilot.press("s")
            await settle(pilot)
        assert saved_storage(config) == {"type": "local", "path": str(target)}

    async def test_storage_actions_are_in_the_command_palette(self, config):
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            await open_storage_screen(pilot)
            await pilot.press("ctrl+p")
            await pilot.pause()
            for char in "Browse":
                await pilot.press(char)
            await pilot.pause(0.3)
            assert "Browse Storage" in shown(app)
            await pilot.press("enter")
            await settle(pilot)
            assert isinstance(app.screen, StorageBrowser)


# ---------------------------------------------------------------- browsing


class TestBrowsing:
    async def test_down_and_up_and_use_this_location(self, config):
        storage_dir = config.storage.path
        (storage_dir / "site-a" / "daily").mkdir(parents=True)
        (storage_dir / "notes.txt").write_text("x")
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            await open_storage_screen(pilot)
            await pilot.press("o")
            await settle(pilot)
            t = tree(app)
            assert str(browser(app).query_one("#browser-path").render()) == f"Location: {storage_dir}"
            assert t.names == ["..", "site-a", "notes.txt"]
            assert t.current.name == "site-a"
            assert "[D] site-a/" in shown(app) and "[F] notes.txt" in shown(app)
            await pilot.press("enter")
            await settle(pilot)
            assert t.path == str(storage_dir / "site-a").strip("/")
            await pilot.press("enter")  # the cursor starts on the first entry, not on `..`
            await settle(pilot)
            location = browser(app).query_one("#browser-path").render()
            assert str(location) == f"Location: {storage_dir}/site-a/daily"
            assert t.names == [".."] and "(empty)" in shown(app)
            info = browser(app).query_one(StorageInfo).values
            assert info["Permissions"] == "read, write" and info["Total Disk Space"].endswith("B")
            await pilot.press("enter")  # on `..`
            await settle(pilot)
            assert str(browser(app).query_one("#browser-path").render()) == f"Location: {storage_dir}/site-a"
            assert t.current.name == "daily"  # back on the directory we came from
            await pilot.press("backspace")
            await settle(pilot)
            assert t.path == str(storage_dir).strip("/")
            await pilot.press("enter")  # into site-a again
            await settle(pilot)
            await pilot.press("u")
            await settle(pilot)
            assert isinstance(app.screen, StorageScreen)
            assert app.screen.query_one("#local-path", Input).value == f"{storage_dir}/site-a"
            assert app.service.config.storage.path == storage_dir / "site-a"
        assert saved_storage(config) == {"type": "local", "path": f"{storage_dir}/site-a"}

    async def test_up_reaches_the_root_of_the_file_system(self, config):
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            app.push_screen(StorageBrowser(local_location(Path("/tmp"))))
            await settle(pilot)
            await pilot.press("backspace")
            await settle(pilot)
            t = tree(app)
            assert t.path == "" and t.at_top and "Location: /" in shown(app)
            assert "tmp" in t.names and ".." not in t.names

    async def test_a_big_directory_is_listed_in_pages(self, config, tmp_path):
        big = tmp_path / "big"
        big.mkdir()
        for i in range(5000):
            (big / f"file-{i:05d}").touch()
        real = LocalStorage(Path("/"))
        spy = FakeStorage({})
        spy.list = lambda path="", *, offset=0, limit=None: (spy.calls.append((path, offset, limit)),
                                                                   real.list(path, offset=offset, limit=limit))[1]
        spy.usage, spy.access = real.usage, real.access
        location = BrowseLocation(opener=lambda: spy, kind="local", top="/", start=str(big).strip("/"))
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            app.push_screen(StorageBrowser(location))
            await settle(pilot)
            t = tree(app)
            # The first page is on screen and nothing more was read.
            assert spy.calls == [(str(big).strip("/"), 0, PAGE_SIZE)]
            assert t.loaded == PAGE_SIZE and not t.complete
            assert "file-" in shown(app)
            await pilot.press("end")
            await settle(pilot)
            assert t.loaded == 2 * PAGE_SIZE and [c[1] for c in spy.calls] == [0, PAGE_SIZE]
            for _ in range(40):
                if t.complete:
                    break
                await pilot.press("end")
                await settle(pilot)
            assert t.complete and t.loaded == 5000
            assert len(set(t.names)) == 5001
            assert all(limit == PAGE_SIZE for _, _, limit in spy.calls)


def live(kind: type) -> int:
    """How many objects of exactly `kind` are alive after a full collection."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is kind)


class TestPagingKeepsNoGarbage:
    """Paging through a big directory keeps the objects alive in proportion to the screen, not to the
    entries: a full collection over hundreds of thousands of Strips stalled the console for 0.3-0.4 s.
    """

    async def test_live_strips_stay_flat_while_paging_5000_entries(self, config):
        entries = [entry(f"entry-{i:05d}.dat", size=i) for i in range(5000)]
        storage = FakeStorage({"big": entries})
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            app.push_screen(StorageBrowser(fake_location(storage, start="big")))
            await settle(pilot)
            t = tree(app)
            await pilot.press("end")  # one page of warm-up: every kind of line has been drawn once
            await settle(pilot)
            strips_before, indicators_before = live(Strip), live(LoadingIndicator)
            for _ in range(5000 // PAGE_SIZE + 5):
                if t.complete:
                    break
                await pilot.press("end")
                await settle(pilot)
            assert t.complete and t.loaded == 5000
            grown = live(Strip) - strips_before
            # A Strip or two per screen line at most (the line caches are bounded by the screen).
            assert grown <= 2 * SIZE[1], f"{grown} more live Strips after paging 5,000 entries"
            # A page being listed never covers the list with a LoadingIndicator (one widget per page,
            # whose line cache Textual's lru_cache then keeps alive).
            assert live(LoadingIndicator) == indicators_before == 0
            assert not t.query(LoadingIndicator)
            assert "entry-04999.dat" in shown(app)


# ---------------------------------------------------------------- backups in the browser


async def open_backup(pilot, name: str, start: Path) -> StorageBrowser:
    pilot.app.push_screen(StorageBrowser(local_location(start)))
    await settle(pilot)
    await cursor_to(pilot, name)
    await pilot.press("enter")
    await settle(pilot)
    return browser(pilot.app)


class TestBackups:
    async def test_details_verify_and_delete(self, config_with_dms):
        backup = make_backup(config_with_dms)
        app = make_app(config_with_dms, clock=fixed_clock)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_backup(pilot, backup.name, backup.parent)
            values = screen.query_one(BackupDetailsView).values
            assert values["Backup"] == backup.name
            assert values["Created at"] == "2024-06-03 09:30:00 UTC"
            assert values["Appliance"] == "demo-appliance"
            assert values["Software version"]
            assert "files" in values["Firmware config"] and "files" in values["System config"]
            assert values["Internal database"].endswith("1 file")
            assert "HSM" in values["Not included"] and "external databases" in values["Not included"]
            assert values["Encryption"].startswith(("AES-256-GCM", "ChaCha20-Poly1305"))
            assert values["This DMS opens it"] == "yes"
            assert values["Last verification"] == "never"
            text = shown(app)
            assert "v Verify" in text and "r Restore" in text and "x Delete" in text
            await pilot.press("v")
            await settle(pilot)
            assert browser(app).sentence.startswith(f"The backup {backup.name} is intact: ")
            assert "intact:" in shown(app)
            assert screen.query_one(BackupDetailsView).values["Last verification"].endswith("intact")
            assert "every chunk intact and in order" in browser(app).sentence
            await pilot.press("V")  # the deep pass: every file against its SHA-256
            await settle(pilot)
            assert "checked against their SHA-256" in browser(app).sentence
            assert screen.query_one(BackupDetailsView).values["Last verification"].endswith(
                "intact, every file checked")
            await pilot.press("x")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmDeleteScreen)
            assert backup.name in shown(app)
            app.screen.query_one("#delete").press()
            await settle(pilot)
            assert browser(app).sentence == f"The backup {backup.name} was deleted."
            assert backup.name not in tree(app).names
        assert not backup.exists()

    async def test_the_results_of_verify_and_restore_are_scrolled_into_view_at_80x24(self, config_with_dms):
        backup = make_backup(config_with_dms)
        app = make_app(config_with_dms, clock=fixed_clock)
        async with app.run_test(size=(80, 24)) as pilot:
            await open_backup(pilot, backup.name, backup.parent)
            assert "is intact" not in shown(app)
            await pilot.press("v")
            await settle(pilot)
            assert "is intact" in shown(app)  # below the details, which fill the panel at this size
            await pilot.press("r")
            await pilot.pause()
            app.screen.query_one("#restore").press()
            await settle(pilot)
            rollback = next((config_with_dms.state_dir / "rollback").iterdir())
            assert rollback.name[-6:] + "." in shown(app)  # the end of the sentence's last line

    async def test_delete_can_be_cancelled(self, config_with_dms):
        backup = make_backup(config_with_dms)
        app = make_app(config_with_dms, clock=fixed_clock)
        async with app.run_test(size=SIZE) as pilot:
            await open_backup(pilot, backup.name, backup.parent)
            await pilot.press("x")
            await pilot.pause()
            await pilot.press("escape")
            await settle(pilot)
            assert isinstance(app.screen, StorageBrowser)
        assert backup.exists()

    async def test_restore_asks_naming_what_is_replaced(self, config_with_dms):
        backup = make_backup(config_with_dms)
        marker = config_with_dms.appliance.system / "added-after-the-backup.conf"
        marker.write_text("later\n")
        app = make_app(config_with_dms, clock=fixed_clock)
        async with app.run_test(size=SIZE) as pilot:
            await open_backup(pilot, backup.name, backup.parent)
            await pilot.press("r")
            await pilot.pause()
            dialog = app.screen
            assert isinstance(dialog, ConfirmRestoreScreen)
            warning = str(dialog.query_one("#restore-warning").render())
            appliance = config_with_dms.appliance
            for path in (appliance.firmware, appliance.system, appliance.database):
                assert str(path) in warning
            assert not dialog.query("#restore-dms")  # this appliance's DMS opens it
            assert marker.exists()
            database_inode = appliance.database.stat().st_ino
            dialog.query_one("#restore").press()
            await settle(pilot)
            assert browser(app).sentence.startswith(f"The appliance was restored from {backup.name}")
            assert "The state before the restore is" in shown(app)
            rollback = next((config_with_dms.state_dir / "rollback").iterdir())
            assert str(rollback) in " ".join(browser(app).sentence.split())
        assert not marker.exists()
        assert (rollback / "system" / "added-after-the-backup.conf").exists()
        # The console holds no connection to the database, so the restored file was renamed in.
        assert appliance.database.stat().st_ino != database_inode
        assert (rollback / "internal.db").stat().st_ino == database_inode

    async def test_shutdown_during_a_restore_stops_it_before_anything_changes(self, config_with_dms, monkeypatch):
        backup = make_backup(config_with_dms)
        marker = config_with_dms.appliance.system / "added-after-the-backup.conf"
        marker.write_text("later\n")
        started, gate = threading.Event(), threading.Event()

        class GatedRestore(BackupService):
            """The real restore, held at its first progress report until the test opens the gate."""

            def restore(self, name, *, progress=None, **kwargs):
                def gated(p):
                    if progress:
                        progress(p)
                    if not started.is_set():
                        started.set()
                        gate.wait(10)
                return super().restore(name, progress=gated, **kwargs)

        monkeypatch.setattr(storage_browser, "BackupService", GatedRestore)
        app = make_app(config_with_dms, clock=fixed_clock)
        async with app.run_test(size=SIZE) as pilot:
            await open_backup(pilot, backup.name, backup.parent)
            await pilot.press("r")
            await pilot.pause()
            app.screen.query_one("#restore").press()
            for _ in range(200):
                if started.is_set():
                    break
                await pilot.pause(0.05)
            assert started.is_set() and browser(app).running_task == "restore"
            await pilot.press("escape")  # the browser stays open while its restore runs
            await pilot.pause()
            assert isinstance(app.screen, StorageBrowser)
            assert browser(app).sentence == "A restore is running: wait for it to finish."
            await pilot.press("ctrl+q")  # the one quit key a dialog leaves active: it asks, naming the restore
            await pilot.pause()
            assert isinstance(app.screen, ConfirmQuitScreen)
            assert "A restore is running" in shown(app) and "Keep the restore running" in shown(app)
            await pilot.press("escape")
            await pilot.pause()
            assert isinstance(app.screen, StorageBrowser) and app.is_running
            # A shutdown (SIGTERM) stops the restore cleanly and the console exits once it has.
            # Only send the signal when the console's handler is on the loop: otherwise it would end pytest.
            assert signal.SIGTERM in asyncio.get_running_loop()._signal_handlers
            os.kill(os.getpid(), signal.SIGTERM)
            await pilot.pause()
            assert app.is_running  # waits for the restore to stop
            gate.set()
            for _ in range(200):
                if not app.is_running:
                    break
                await pilot.pause(0.05)
        assert app.return_code == 0
        assert marker.exists()  # stopped while the backup was being checked: nothing was replaced
        runs = [r for r in BackupService(config_with_dms).journal.runs() if r.kind == "restore"]
        assert [r.result for r in runs] == ["interrupted"]

    async def test_restore_of_another_appliances_backup_asks_for_its_dms(self, config_with_dms, tmp_path):
        other = load_config(create_demo_appliance(tmp_path / "other", seed=7))
        foreign = make_backup(other, passphrase=OTHER_DMS)
        copied = config_with_dms.storage.path / foreign.name
        shutil.copy(foreign, copied)
        app = make_app(config_with_dms, clock=fixed_clock)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_backup(pilot, copied.name, copied.parent)
            values = screen.query_one(BackupDetailsView).values
            assert values["This DMS opens it"].startswith("no")
            assert values["Contents"].startswith("unknown")
            await pilot.press("r")
            await pilot.pause()
            dialog = app.screen
            assert isinstance(dialog, ConfirmRestoreScreen) and dialog.query_one("#restore-dms")
            assert "does not open this backup" in shown(app)
            dialog.query_one("#restore-dms", Input).value = "not the right one"
            await pilot.press("enter")
            await settle(pilot)
            assert "Restoring" in browser(app).sentence and "failed" in browser(app).sentence
            await pilot.press("r")
            await pilot.pause()
            app.screen.query_one("#restore-dms", Input).value = OTHER_DMS
            await pilot.press("enter")
            await settle(pilot)
            app.screen.query_one("#restore").press()  # yes, although another appliance's (see the next test)
            await settle(pilot)
            assert f"The appliance was restored from {copied.name}" in browser(app).sentence

    async def test_restore_of_another_appliances_backup_names_that_appliance_once_its_dms_is_given(
            self, config_with_dms, tmp_path):
        """The manifest says whose backup it is; readable only with the DMS, so the console asks again,
        naming the other appliance's identity, before anything is restored."""
        other = load_config(create_demo_appliance(tmp_path / "other", seed=7))
        foreign = make_backup(other, passphrase=OTHER_DMS)
        copied = config_with_dms.storage.path / foreign.name
        shutil.copy(foreign, copied)
        identity = BackupService(other).appliance_id()
        before = appliance_state(config_with_dms)
        app = make_app(config_with_dms, clock=fixed_clock)
        async with app.run_test(size=SIZE) as pilot:
            await open_backup(pilot, copied.name, copied.parent)
            await pilot.press("r")
            await pilot.pause()
            app.screen.query_one("#restore-dms", Input).value = OTHER_DMS
            await pilot.press("enter")
            await settle(pilot)
            dialog = app.screen
            assert isinstance(dialog, ConfirmRestoreScreen) and not dialog.query("#restore-dms")
            note = str(dialog.query_one("#restore-foreign").render())
            assert identity in " ".join(note.split()) and "another appliance" in note
            dialog.query_one("#cancel").press()
            await settle(pilot)
        assert appliance_state(config_with_dms) == before
        firmware = sorted(p.relative_to(other.appliance.firmware) for p in other.appliance.firmware.rglob("*"))
        assert firmware == sorted(p.relative_to(config_with_dms.appliance.firmware)
                                  for p in config_with_dms.appliance.firmware.rglob("*"))

    async def test_a_file_that_is_not_a_backup_is_explained(self, config_with_dms):
        junk = config_with_dms.storage.path / "holiday-photos.abk"
        junk.write_bytes(os.urandom(4096))
        app = make_app(config_with_dms, clock=fixed_clock)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_backup(pilot, junk.name, junk.parent)
            assert screen.details is None
            assert "not" in screen.sentence and "backup" in screen.sentence
            assert screen.sentence in " ".join(screen_text(app).split()) or screen.sentence[:30] in shown(app)
            assert not screen.check_action("verify", ()) and not screen.check_action("restore", ())
            await pilot.press("up")  # still usable
            await pilot.pause()

    async def test_permission_denied_directory_is_a_sentence_and_the_browser_stays_usable(self, config):
        storage = FakeStorage({
            "srv": [entry("appliance-backups", is_dir=True), entry("locked", is_dir=True)],
            "srv/appliance-backups": [],
        }, denied={"srv/locked"})
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            app.push_screen(StorageBrowser(fake_location(storage, start="srv")))
            await settle(pilot)
            await cursor_to(pilot, "locked")
            await pilot.press("enter")
            await settle(pilot)
            text = shown(app)
            assert "Permission denied: Listing /srv/locked failed." in text
            assert "(cannot be read)" in text
            assert browser(app).query_one(StorageInfo).values["Permissions"] == "unknown"
            await pilot.press("enter")  # `..` still works
            await settle(pilot)
            assert tree(app).path == "srv" and "Permission denied" not in shown(app)
            await pilot.press("escape")
            await settle(pilot)
            assert not isinstance(app.screen, StorageBrowser)


def test_a_long_backup_name_keeps_its_distinguishing_end_on_a_narrow_screen() -> None:
    """At 80x24 every backup of an appliance looked the same: the names were cut where they differ."""
    names = ["demo-appliance-20261126T152418Z-3f9a1c.abk", "demo-appliance-20261126T153002Z-77b0e2.abk"]
    lines = [StorageTree._text(Row(name, BACKUP, 383 << 20), 40) for name in names]  # its width at 80x24
    assert all(len(line) == 40 for line in lines)
    assert lines[0] != lines[1]
    assert "2418Z-3f9a1c.abk" in lines[0] and "3002Z-77b0e2.abk" in lines[1]

