"""What someone who can write to the storage can put there instead of a backup (issue 14, item 5).

The storage is not the appliance's: anyone with write access to the share or the directory can put a
FIFO, a socket or a symbolic link under a backup's name. Opening a FIFO for reading waits for a
writer forever (signals do not end the wait: the command's handler only sets a flag and open() is
restarted), and a link would make the appliance read one of its own files as if it came from the
storage. Every backend opens without following links and without blocking, and refuses whatever is
not a regular file; listings show such names for what they are and never count them as backups.

Every test that could hang on the old code runs under a hang guard (fails_after, or a subprocess
timeout) so that a regression fails instead of stopping the suite.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from backup.config import update_config
from backup.errors import BackupNotFoundError, ExitCode
from backup.retention import RetentionPolicy
from backup.service import BackupService
from backup.storage.local import LocalStorage
from backup.storage.nfs import NfsStorage
from tests.common import FAST_KDF, run_cli
from tests.helpers import fails_after
from tests.tui_fixtures import fixed_clock, make_app

SECRET = "root:$6$not-a-real-hash:19000:0:99999:7:::\n"
NOT_REGULAR = "is not a regular file"


def later_name(name: str) -> str:
    """An own-looking backup name one year after `name` (the newest, as far as names go)."""
    prefix, stamp, rest = name.rsplit("-", 2)
    return f"{prefix}-{int(stamp[:4]) + 1}{stamp[4:]}-{rest}"


@pytest.fixture
def hostile(service: BackupService, tmp_path: Path) -> dict[str, str]:
    """A real backup, plus a FIFO and a link to a shadow-like appliance file under backup names."""
    genuine = service.run_backup().name
    storage = service.config.storage.path
    fifo = later_name(genuine)
    os.mkfifo(storage / fifo)
    shadow = tmp_path / "shadow"
    shadow.write_text(SECRET)
    shadow.chmod(0o600)
    link = fifo.replace(".abk", "-1.abk")
    os.symlink(shadow, storage / link)
    return {"genuine": genuine, "fifo": fifo, "link": link}


# ---------------------------------------------------------------- the core, local directory


@pytest.mark.parametrize("kind", ["fifo", "link"])
@pytest.mark.parametrize("operation", ["verify", "restore", "details", "delete_backup"])
def test_a_fifo_or_a_link_named_like_a_backup_is_refused_without_waiting(service, hostile, kind, operation):
    name = hostile[kind]
    with fails_after(20, f"{operation} of a {kind}"), pytest.raises(BackupNotFoundError, match=NOT_REGULAR):
        getattr(service, operation)(name)
    assert os.path.lexists(service.config.storage.path / name)  # left alone, not even deleted
    # The refused restore released the run lock: the next backup is not postponed.
    assert service.run_backup().name


def test_the_storage_opens_no_link_and_no_fifo_even_when_asked_directly(service, hostile):
    storage = LocalStorage(service.config.storage.path)
    for kind in ("fifo", "link"):
        with fails_after(20, f"opening a {kind}"), pytest.raises(BackupNotFoundError, match=NOT_REGULAR):
            storage.open(hostile[kind])
    with storage.open(hostile["genuine"]) as f:
        assert f.read(4) and os.get_blocking(f.fileno())  # a real backup reads as before


def test_listings_show_fifos_and_links_as_what_they_are(service, hostile):
    entries = {e.name: e for e in LocalStorage(service.config.storage.path).list("")}
    assert entries[hostile["genuine"]].regular
    assert not entries[hostile["fifo"]].regular and not entries[hostile["fifo"]].is_dir
    link = entries[hostile["link"]]
    assert not link.regular and link.size != len(SECRET)  # the link itself, not the file it names
    assert [b.name for b in service.list_backups()] == [hostile["genuine"]]


def test_prune_neither_counts_nor_touches_a_fifo_that_looks_like_the_newest_backup(service, hostile):
    service = BackupService(update_config(service.config, RetentionPolicy(keep_last=1).to_config()), kdf_params=FAST_KDF)
    with fails_after(20, "prune"):
        decisions = service.prune()
    counted = [(d.name, d.keep) for d in decisions if not d.reasons[0].startswith("not counted")]
    assert counted == [(hostile["genuine"], True)]
    assert all(d.keep for d in decisions)
    storage = service.config.storage.path
    assert (storage / hostile["genuine"]).exists() and os.path.lexists(storage / hostile["fifo"])


# ---------------------------------------------------------------- the real command


@pytest.mark.parametrize("command", ["verify", "restore"])
def test_the_command_refuses_a_fifo_with_a_sentence_instead_of_hanging(service, hostile, passphrase_file, command):
    extra = ["--yes"] if command == "restore" else []
    try:
        result = run_cli(command, hostile["fifo"], *extra, config=service.config, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{command}` of a FIFO hung")
    assert result.returncode == ExitCode.NOT_FOUND, result.stderr
    assert NOT_REGULAR in result.stderr and "Traceback" not in result.stderr
    assert run_cli("run", config=service.config).returncode == 0  # no lock left behind


def test_list_and_prune_of_the_command_leave_fifos_and_links_out(service, hostile):
    update_config(service.config, RetentionPolicy(keep_last=1).to_config())
    listed = run_cli("list", config=service.config, timeout=60)
    assert listed.returncode == 0
    assert hostile["genuine"] in listed.stdout
    assert hostile["fifo"] not in listed.stdout and hostile["link"] not in listed.stdout
    pruned = run_cli("prune", config=service.config, timeout=60)
    assert pruned.returncode == 0, pruned.stderr
    assert hostile["genuine"] in pruned.stdout
    assert f"keep  {hostile['fifo']}  (not counted: it is not a regular file" in pruned.stdout  # named, never opened
    assert (service.config.storage.path / hostile["genuine"]).exists()


# ---------------------------------------------------------------- the console


async def test_the_storage_browser_does_not_hang_on_a_fifo_named_like_a_backup(config_with_dms):
    from screens.storage_browser import StorageBrowser, local_location
    from widgets.storage_tree import FILE, StorageTree

    storage = config_with_dms.storage.path
    os.mkfifo(storage / "demo-appliance-20240603T093000Z-000001.abk")
    app = make_app(config_with_dms, clock=fixed_clock)
    with fails_after(60, "the storage browser on a FIFO"):
        async with app.run_test(size=(100, 30)) as pilot:
            app.push_screen(StorageBrowser(local_location(storage)))
            for _ in range(3):
                await pilot.app.workers.wait_for_complete()
                await pilot.pause()
            tree = app.screen.query_one(StorageTree)
            tree.move_to(tree.names.index("demo-appliance-20240603T093000Z-000001.abk"))
            await pilot.pause()
            await pilot.press("enter")
            for _ in range(3):
                await pilot.app.workers.wait_for_complete()
                await pilot.pause()
            screen = app.screen
            assert screen.details is None and "not a backup" in screen.sentence
            assert tree.row(tree.cursor).kind == FILE  # shown as a file, not as a backup
            await pilot.press("q")


# ---------------------------------------------------------------- the real NFS export


@pytest.mark.nfs
def test_a_fifo_and_a_link_on_an_nfs_share_are_refused_from_their_attributes(nfs_server, nfs_share, tmp_path):
    # nfs-rs cannot make a FIFO (no MKNOD): it is made in the exported directory, as a user of the
    # server would. Links are made through NFS.
    share = nfs_share.rsplit("/", 1)[1]
    directory = nfs_server.export_dir / share
    os.mkfifo(directory / "fifo.abk")
    (tmp_path / "shadow").write_text(SECRET)
    with nfs_server.client() as client:
        client.symlink(str(tmp_path / "shadow"), f"{share}/link.abk")
        client.mkdir(f"{share}/sub", mode=0o755)
        client.symlink("sub", f"{share}/via")
    storage = NfsStorage(nfs_share, "4.1", timeout=5)
    try:
        for name in ("fifo.abk", "link.abk"):
            with fails_after(30, f"opening {name} over NFS"), pytest.raises(BackupNotFoundError, match=NOT_REGULAR):
                storage.open(name)
        entries = {e.name: e for e in storage.list("")}
        assert not entries["fifo.abk"].regular and not entries["link.abk"].regular and not entries["via"].is_dir
    finally:
        storage.close()


def test_no_link_is_followed_in_the_folders_of_a_path_either(tmp_path):
    """The browser opens backups in sub-folders of the storage: a link among those folders is refused too."""
    root, appliance = tmp_path / "storage", tmp_path / "appliance-etc"
    root.mkdir()
    appliance.mkdir()
    (appliance / "shadow.abk").write_text(SECRET)
    (root / "real").mkdir()
    (root / "real" / "x.abk").write_bytes(b"backup")
    os.symlink(appliance, root / "etc")
    storage = LocalStorage(root)
    with pytest.raises(BackupNotFoundError, match=NOT_REGULAR):
        storage.open("etc/shadow.abk")
    with storage.open("real/x.abk") as f:
        assert f.read() == b"backup"
    with pytest.raises(BackupNotFoundError, match="no backup named"):
        storage.open("real/missing.abk")
