"""Snapshot tests of the Storage screen and the storage browser at 80x24 and 120x40.

What would differ per run is fixed: the clock is FIXED_NOW, the storage in use is shown as
FIXED_STORAGE, the typed directory is /srv/appliance-backups, and the browser browses a
FakeStorage (fixed entries, permissions and disk usage). The backup whose details are shown is a
real backup of the demo appliance made at FIXED_NOW, served by the FakeStorage under a fixed name.
"""

from __future__ import annotations

import pytest

from backup.service import BackupService
from screens.storage_browser import StorageBrowser
from test_tui_storage import FakeStorage, entry, fake_location, make_backup
from tests.tui_fixtures import fixed_clock, make_app, settle
from widgets.storage_tree import StorageTree

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]
BACKUP_NAME = "demo-appliance-20240603T093000Z-0a1b2c.abk"
TOP = "srv/appliance-backups"


def app_on(config, **kwargs):
    return make_app(config, clock=fixed_clock, fixed_storage=True, **kwargs)


def fixed_storage(backup: bytes = b"") -> FakeStorage:
    names = [f"demo-appliance-202405{day:02d}T093000Z-00000{day % 10}.abk" for day in range(27, 32)]
    return FakeStorage({
        "srv": [entry("appliance-backups", is_dir=True)],
        TOP: [entry("archive", is_dir=True), entry("site-b", is_dir=True), entry("README.txt", size=812),
              *[entry(n, size=3_801_000 + 10_000 * i) for i, n in enumerate(names)],
              entry(BACKUP_NAME, size=len(backup) or 3_950_000)],
    }, {f"{TOP}/{BACKUP_NAME}": backup}, access=(True, True))


@pytest.mark.parametrize("size", SIZES)
class TestStorageScreen:
    def test_local_directory(self, snap_compare, config, size):
        """Storage Type local: the directory, the chosen location, the storage in use, Browse and Save."""

        async def fixed_path(pilot) -> None:
            await settle(pilot)
            await pilot.press("3")
            await settle(pilot)
            pilot.app.screen.query_one("#local-path").value = "/srv/appliance-backups"
            await pilot.pause()

        assert snap_compare(app_on(config), terminal_size=size, run_before=fixed_path)

    def test_nfs_with_a_bad_url(self, snap_compare, config, size):
        """Storage Type NFS: a URL with the wrong scheme is explained inline; the version and its client."""

        async def bad_url(pilot) -> None:
            await settle(pilot)
            await pilot.press("3")
            await settle(pilot)
            screen = pilot.app.screen
            screen.query_one("#storage-type").value = "nfs"
            screen.query_one("#nfs-url").value = "http://backup-server/export/appliances"
            await pilot.pause()

        assert snap_compare(app_on(config), terminal_size=size, run_before=bad_url)


@pytest.mark.parametrize("size", SIZES)
class TestStorageBrowser:
    def test_directory_and_storage_information(self, snap_compare, config, size):
        """The directory (`..`, folders, backups, a file), the location, and its Storage Information."""

        async def browse(pilot) -> None:
            await settle(pilot)
            pilot.app.push_screen(StorageBrowser(fake_location(fixed_storage())))
            await settle(pilot)

        assert snap_compare(app_on(config), terminal_size=size, run_before=browse)

    def test_backup_details(self, snap_compare, config_with_dms, size, monkeypatch):
        """A real backup chosen: its Backup Details table and the Verify, Restore and Delete actions."""
        # Written under the name it is shown with (the name's last part is random), or its manifest
        # would say it was renamed.
        monkeypatch.setattr(BackupService, "new_backup_name", lambda self, now: BACKUP_NAME)
        backup = make_backup(config_with_dms).read_bytes()

        async def details(pilot) -> None:
            await settle(pilot)
            pilot.app.push_screen(StorageBrowser(fake_location(fixed_storage(backup))))
            await settle(pilot)
            tree = pilot.app.screen.query_one(StorageTree)
            tree.move_to(tree.names.index(BACKUP_NAME))
            await pilot.press("enter")
            await settle(pilot)

        assert snap_compare(app_on(config_with_dms), terminal_size=size, run_before=details)
