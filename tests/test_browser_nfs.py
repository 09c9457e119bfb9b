"""Pilot tests of the storage browser over a real NFS share (nfs-ganesha on loopback, nfs-rs client).

Nothing is mocked: the share is made through NFS by the `nfs_share` fixture, and the server that goes
away under the browser is a private one from `nfs_server_factory`, stopped for real.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from backup.storage.nfs import NfsStorage
from screens.storage import StorageScreen
from screens.storage_browser import BrowseLocation, StorageBrowser, nfs_location
from test_tui_storage import browser, settle, shown, tree
from tests.tui_fixtures import make_app
from widgets.storage_info import StorageInfo

pytestmark = pytest.mark.nfs

SIZE = (100, 30)
TIMEOUT = 2.0
"""Seconds one NFS call may take in these tests (the console's default is 10)."""


def short_timeout_location(url: str) -> BrowseLocation:
    """nfs_location, with a storage that gives up on a silent server after TIMEOUT seconds."""
    location = nfs_location(url, "4.1")
    location.opener = lambda: NfsStorage(url, "4.1", timeout=TIMEOUT)
    return location


async def wait_for(pilot, condition, seconds: float) -> float:
    """Let the console run until `condition()` holds; returns the seconds it took (fails after `seconds`)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            pytest.fail(f"not within {seconds:g} s; the screen shows: {shown(pilot.app)}")
        await pilot.pause(0.05)
    return time.monotonic() - started


def location(app) -> str:
    return str(browser(app).query_one("#browser-path").render())


def make_tree(server, share_url: str) -> str:
    """`site-a/`, `site-a/daily/` and a file `notes.txt`, created through NFS in the share."""
    share = share_url.rsplit("/", 1)[1]
    with server.client() as client:
        client.mkdir(f"{share}/site-a", mode=0o755)
        client.mkdir(f"{share}/site-a/daily", mode=0o755)
        client.open(f"{share}/notes.txt", "wb").close()
    return share


class TestBrowserOverNfs:
    async def test_lists_a_directory_and_shows_storage_information(self, config, nfs_server, nfs_share):
        make_tree(nfs_server, nfs_share)
        app = make_app(config)
        async with app.run_test(size=SIZE) as pilot:
            app.push_screen(StorageBrowser(nfs_location(nfs_share, "4.1")))
            await settle(pilot)
            t = tree(app)
            assert t.at_top and t.names == ["site-a", "notes.txt"]
            assert "[D] site-a/" in shown(app) and "[F] notes.txt" in shown(app)
            assert location(app) == f"Location: {nfs_share}"
            info = browser(app).query_one(StorageInfo).values
            assert info["Permissions"] == "read, write", info
            assert info["Total Disk Space"].endswith("B") and info["Remaining Disk Space"].endswith("B")
            await pilot.press("home")
            await pilot.press("enter")  # into site-a
            await settle(pilot)
            assert t.path == "site-a" and t.names == ["..", "daily"]
            assert location(app) == f"Location: {nfs_share}/site-a"
            await pilot.press("backspace")
            await settle(pilot)
            assert t.path == "" and t.current.name == "site-a"

    async def test_a_server_that_goes_away_is_a_sentence_and_the_console_still_answers(self, config,
                                                                                     nfs_server_factory):
        server = nfs_server_factory()
        with server.client() as client:
            client.mkdir("share", mode=0o755)
        share = server.url("share")
        make_tree(server, share)
        app = make_app(config)
        try:
            async with app.run_test(size=SIZE) as pilot:
                await settle(pilot)
                await pilot.press("3")
                await settle(pilot)
                assert isinstance(app.screen, StorageScreen)
                app.push_screen(StorageBrowser(short_timeout_location(share)))
                await settle(pilot)
                t = tree(app)
                assert "site-a" in t.names
                server.stop()
                t.move_to(t.names.index("site-a"))
                await pilot.press("enter")  # listing site-a and reading its information now fail
                info = browser(app).query_one(StorageInfo)
                took = await wait_for(pilot, lambda: "Problem" in info.values and bool(browser(app).sentence),
                                      TIMEOUT + 3)
                assert took < TIMEOUT + 3
                sentence = browser(app).sentence
                assert sentence and "Traceback" not in sentence and sentence.endswith("."), sentence
                assert info.values["Problem"] and info.values["Permissions"] == "unknown"
                await pilot.pause()  # the frame that shows the sentence
                assert "(cannot be read)" in shown(app)
                assert sentence.split()[0] in shown(app), (sentence, shown(app))
                # The console answers keys without waiting on the server that is gone: a console blocked on it
                # would take the NFS timeout at least. (Not a speed target; bench/ measures speed.)
                started = time.monotonic()
                await pilot.press("escape")
                await pilot.pause()
                assert isinstance(app.screen, StorageScreen)
                assert time.monotonic() - started < TIMEOUT
                await pilot.press("1")  # and moves on to another screen
                await pilot.pause()
                assert not isinstance(app.screen, (StorageScreen, StorageBrowser))
                await asyncio.sleep(0)
        finally:
            server.stop()
