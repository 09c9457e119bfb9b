"""Console-level NFS faults (issues 5 and 7): the NFS server stops while the console writes a backup.

A real NFSv4.1 server (nfs-ganesha on loopback, a private one from `nfs_server_factory` so it can be
stopped) and the console's own userspace NFS client (nfs-rs). Nothing here is mocked: the server is
stopped and started for real, and the share is looked at through the storage backend.

The headless variant (the service alone: server stopped mid-backup, restarted, the next backup
succeeds and no partial file is left) is tests/test_storage_nfs.py
TestServiceOverNfs.test_server_stopped_during_a_backup.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from backup.config import Config, update_config
from backup.service import BackupService
from backup.storage import PARTIAL_SUFFIX
from backup.storage.nfs import open_nfs_storage
from screens.settings import SettingsScreen
from screens.status import StatusScreen
from tests.nfs_server import NfsServer
from tests.tui_fixtures import FAST_KDF, PASSPHRASE, shown, text_of
from tui.app import BackupConsole

pytestmark = pytest.mark.nfs

SIZE = (120, 40)
TIMEOUT = 2.0
"""Seconds one NFS call may take in this test (the console's default is 10)."""
FAILURE_BOUND = 2 * TIMEOUT + 3
"""How long the failed backup may take to end once it writes again: the write that finds the server
gone (at most TIMEOUT), the attempt to remove the partial file (at most TIMEOUT), 3 s of slack for a
loaded CI machine. Not a speed target: the proof that the worker ends instead of hanging."""
BLOB = 24 * 1024 * 1024
"""Incompressible bytes added to the firmware configuration: several 8 MiB NFS writes are still to
come when the backup resumes with the server gone."""


class PausingService(BackupService):
    """The real service; its first backup holds still once, inside its first "Archiving" progress
    report (the partial file is open on the share by then), until the test lets it go on.

    Not a mock: the backup does all its real work. The pause only makes "the server stops while the
    backup is writing" certain instead of a race with a fast loopback server.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.paused = threading.Event()
        self.resume = threading.Event()

    def run_backup(self, *, progress=None, **kwargs):
        def pausing(p) -> None:
            if progress is not None:
                progress(p)
            if p.stage.startswith("Archiving") and not self.paused.is_set():
                self.paused.set()
                self.resume.wait(30)

        return super().run_backup(progress=pausing, **kwargs)


def backup_workers(app) -> list:
    return [w for w in app.workers if w.group == "backup" and not w.is_finished]


async def wait_for(pilot, condition, seconds: float, what: str) -> float:
    """Let the console run until `condition()` holds; the seconds it took (fails after `seconds`)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            pytest.fail(f"{what}: not within {seconds:g} s; the screen shows: {shown(pilot.app)}")
        await pilot.pause(0.02)
    return time.monotonic() - started


async def status_settled(pilot) -> None:
    """Wait for the app's own status worker (never wait_for_complete: see DESIGN.md)."""
    await pilot.pause()
    for worker in [w for w in pilot.app.workers if w.group == "status"]:
        await worker.wait()
    await pilot.pause()


def nfs_config(config: Config, server: NfsServer) -> tuple[Config, str]:
    """The demo appliance, storing on a fresh directory `b` of `server` over NFS 4.1."""
    with server.client() as client:
        client.mkdir("b", mode=0o755)
    url = server.url("b")
    config = update_config(config, {"storage": {"type": "nfs", "url": url, "version": "4.1", "path": None}})
    (config.appliance.firmware / "blob.bin").write_bytes(os.urandom(BLOB))
    return config, url


def names(storage) -> list[str]:
    return sorted(e.name for e in storage.list(""))


class TestServerStoppedDuringABackup:
    async def test_error_on_screen_console_answers_then_next_backup_succeeds(self, config, nfs_server_factory):
        """Stop the server while `b`'s backup writes: the run ends within the NFS timeout with a sentence
        naming the share and what to do, keys work all along; restarted, `b` succeeds, no partial left."""
        server = nfs_server_factory()
        config, url = nfs_config(config, server)
        # The storage the configuration names, as open_storage opens it, with a short timeout.
        storage = open_nfs_storage(config.storage.url, config.storage.version, timeout=TIMEOUT)
        service = PausingService(config, kdf_params=FAST_KDF, storage=storage)
        service.set_secret(PASSPHRASE)
        app = BackupConsole(config, service=service, refresh_interval=None, run_schedule=False)
        try:
            async with app.run_test(size=SIZE) as pilot:
                await status_settled(pilot)
                assert f"NFS 4.1 share {url}" in text_of(app, "#value-storage")
                await pilot.press("b")
                # Wait on what the operator sees: the backup in progress, archiving.
                await wait_for(pilot, lambda: service.paused.is_set() and "Archiving" in shown(app),
                               30, "the backup shows its progress")
                assert "In Progress" in text_of(app, "#value-state")
                partials = [n for n in os.listdir(server.export_dir / "b") if n.endswith(PARTIAL_SUFFIX)]
                assert len(partials) == 1, partials  # read-only look: the backup is writing on the share

                server.stop()
                # The console answers keys while the backup is stuck on a dead server.
                await pilot.press("2")
                await pilot.pause()
                assert isinstance(app.screen, SettingsScreen)
                await pilot.press("1")
                await pilot.pause()
                assert isinstance(app.screen, StatusScreen)
                assert app.backup_running

                service.resume.set()
                [worker] = backup_workers(app)
                took = await wait_for(pilot, lambda: worker.is_finished and not app.backup_running,
                                      FAILURE_BOUND, "the failed backup ends")
                assert took < FAILURE_BOUND
                # Still answering with the server down and the failure shown.
                await pilot.press("2")
                await pilot.pause()
                assert isinstance(app.screen, SettingsScreen)
                await pilot.press("1")
                await status_settled(pilot)
                assert isinstance(app.screen, StatusScreen)

                assert "Not Running" in text_of(app, "#value-state")
                failure = text_of(app, "#value-last-failure")
                text = shown(app)
                assert "Last Backup Could Not Be Created" in text
                for words in (f"{url}/", "failed", f"the NFS server 127.0.0.1:{server.port} does not answer",
                              "Check that it is running and reachable"):
                    assert words in failure, (words, failure)
                assert "Traceback" not in text and "/tmp" not in failure
                [run] = [r for r in service.journal.runs() if r.kind == "backup"]
                assert run.result == "failed" and run.error and run.error in failure
                notices = [n.message for n in app._notifications]
                assert run.error in notices

                # Restarted on the same port, export and recovery directory: graceless, so it serves at once.
                server.start()
                await pilot.press("b")
                await wait_for(pilot, lambda: not app.backup_running and not backup_workers(app), 60,
                               "the second backup ends")
                await status_settled(pilot)
                assert "just now" in text_of(app, "#value-last-success"), shown(app)
                ok = [r for r in service.journal.runs() if r.kind == "backup" and r.result == "ok"]
                assert len(ok) == 1
                # Only the new backup on the share: the partial of the failed run is gone.
                assert names(service.storage) == [ok[0].name]
                assert sorted(os.listdir(server.export_dir / "b")) == [ok[0].name]
                service.verify(ok[0].name)
        finally:
            storage.close()
            server.stop()
