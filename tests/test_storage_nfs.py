"""Tests of the NFS storage backend against a real NFSv4 server (nfs-ganesha on loopback).

Nothing here mocks NFS: every test talks to ganesha through nfs-rs. The
kernel-mount transport cannot mount NFS in this container (no NFS in the
kernel): TestKernelTransport runs it on a bind mount made by a stand-in for
mount(8), and says so.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from backup.config import load_config
from backup.demo import create_demo_appliance
from backup.errors import BackupNotFoundError, StorageError, StorageFullError
from backup.service import BackupService
from backup.storage import PARTIAL_SUFFIX
from backup.storage.nfs import (
    NO_USERSPACE_42,
    KernelNfsStorage,
    MountCommands,
    NfsStorage,
    is_mounted,
    kernel_nfs_problem,
    open_nfs_storage,
    transport_for,
)
from tests.common import FAST_KDF, PASSPHRASE
from tests.helpers import appliance_state, mutate_appliance
from tests.nfs_server import NfsServer
from tests.test_storage_local import StorageContract, names

pytestmark = pytest.mark.nfs

TIMEOUT = 2.0


@pytest.fixture(params=["4", "4.1"])
def version(request: pytest.FixtureRequest) -> str:
    return request.param


class TestNfsStorageContract(StorageContract):
    """The same behaviour as the local backend, over NFS 4.0 and 4.1."""

    @pytest.fixture
    def storage(self, nfs_server: NfsServer, nfs_share: str, version: str):
        share = nfs_share.rsplit("/", 1)[1]

        def make_dir(name: str) -> None:
            with nfs_server.client() as client:
                client.mkdir(f"{share}/{name}", mode=0o755)

        self.make_dir = make_dir
        storage = NfsStorage(nfs_share, version, timeout=TIMEOUT)
        yield storage
        storage.close()


class TestNfsStorage:
    def test_description_names_transport_and_version(self, nfs_share: str, version: str) -> None:
        with NfsStorage(nfs_share, version, timeout=TIMEOUT) as storage:
            assert storage.description == f"NFS {version} share {nfs_share} (userspace client)"

    def test_files_are_created_0600(self, nfs_server: NfsServer, nfs_share: str, version: str) -> None:
        with NfsStorage(nfs_share, version, timeout=TIMEOUT) as storage:
            out = storage.create("a.abk")
            assert storage.stat("a.abk" + PARTIAL_SUFFIX).mode == 0o600
            out.commit()
            assert storage.stat("a.abk").mode == 0o600
        share_dir = nfs_server.export_dir / nfs_share.rsplit("/", 1)[1]
        assert (share_dir / "a.abk").stat().st_mode & 0o7777 == 0o600
        assert [p.name for p in share_dir.iterdir()] == ["a.abk"]  # no temporary name left behind

    def test_share_directory_missing(self, nfs_server: NfsServer) -> None:
        with NfsStorage(nfs_server.url("no-such-share"), "4.1", timeout=TIMEOUT) as storage:
            with pytest.raises(StorageError, match="does not exist on the NFS server"):
                storage.list("")

    def test_export_missing(self, nfs_server: NfsServer) -> None:
        url = f"nfs://127.0.0.1:{nfs_server.port}/nope/backups"
        with NfsStorage(url, "4.1", timeout=TIMEOUT) as storage:
            with pytest.raises(StorageError, match="does not exist on the NFS server"):
                storage.list("")

    def test_share_is_a_file(self, nfs_server: NfsServer, nfs_share: str) -> None:
        with NfsStorage(nfs_share, "4.1", timeout=TIMEOUT) as storage:
            storage.create("f").commit()
        with NfsStorage(nfs_share + "/f", "4.1", timeout=TIMEOUT) as storage:
            with pytest.raises(StorageError, match="is not a directory"):
                storage.list("")

    def test_export_root_itself(self, nfs_server: NfsServer) -> None:
        # nfs-rs cannot list the root it is connected to; the backend connects one level up.
        with NfsStorage(nfs_server.url(), "4.1", timeout=TIMEOUT) as storage:
            assert isinstance(storage.list(""), list)
            assert storage.usage().total > 0

    def test_permission_denied(self, nfs_share: str) -> None:
        # The share is root's, mode 0755: the server refuses writes from uid 65534.
        with NfsStorage(nfs_share, "4.1", timeout=TIMEOUT, uid=65534, gid=65534) as storage:
            assert storage.access("") == (True, False)
            with pytest.raises(StorageError) as info:
                storage.create("a.abk")
            assert str(info.value).startswith("Permission denied: Creating")
            assert "uid 65534" in str(info.value)
            assert storage.list("") == []

    def test_large_directory_paged(self, nfs_server: NfsServer, nfs_share: str) -> None:
        share = nfs_share.rsplit("/", 1)[1]
        with nfs_server.client() as client:
            for i in range(1500):
                client.open(f"{share}/f{i:05d}", "wb").close()
        with NfsStorage(nfs_share, "4.1", timeout=TIMEOUT) as storage:
            everything = [e.name for e in storage.list("")]
            assert len(everything) == 1500
            seen: list[str] = []
            started = time.monotonic()
            first = storage.list("", offset=0, limit=100)
            first_page = time.monotonic() - started
            seen += [e.name for e in first]
            while page := storage.list("", offset=len(seen), limit=100):
                seen += [e.name for e in page]
            assert seen == everything
            assert first_page < 1.0


class TestVersions:
    def test_42_is_refused_here_with_the_reason(self, nfs_share: str) -> None:
        assert kernel_nfs_problem() is not None, "this test machine was expected to have no kernel NFS"
        with pytest.raises(StorageError) as info:
            open_nfs_storage(nfs_share, "4.2")
        assert str(info.value) == NO_USERSPACE_42
        assert str(info.value) == ("This machine has no kernel NFS client and the userspace client speaks "
                                   "NFS 4.0 and 4.1 only, so choose 4.1 or 4.")
        with pytest.raises(StorageError, match="speaks NFS 4.0 and 4.1 only"):
            NfsStorage(nfs_share, "4.2")

    @pytest.mark.parametrize("version", ["4", "4.1"])
    def test_open_nfs_storage_uses_the_userspace_client_here(self, nfs_share: str, version: str) -> None:
        storage = open_nfs_storage(nfs_share, version, timeout=TIMEOUT)
        assert isinstance(storage, NfsStorage)
        assert storage.description.endswith("(userspace client)")
        assert storage.list("") == []
        storage.close()

    @pytest.mark.parametrize(("server_minors", "version"), [((0,), "4.1"), ((1,), "4")])
    def test_version_the_server_refuses(self, nfs_server_factory: Callable[..., NfsServer],
                                        server_minors: tuple[int, ...], version: str) -> None:
        server = nfs_server_factory(minor_versions=server_minors)
        with NfsStorage(server.url(), version, timeout=TIMEOUT) as storage:
            started = time.monotonic()
            with pytest.raises(StorageError) as info:
                storage.list("")
            assert time.monotonic() - started < TIMEOUT
        assert str(info.value) == (
            f"The NFS server 127.0.0.1:{server.port} refuses NFS version {version}: choose a version the server "
            "accepts on the Storage screen, or have the server's administrator enable it."
        )
        other = "4" if version == "4.1" else "4.1"
        with NfsStorage(server.url(), other, timeout=TIMEOUT) as storage:
            assert isinstance(storage.list(""), list)


class TestTransportChoice:
    """Detection only: a kernel mount cannot be made in this container."""

    @staticmethod
    def probe(tmp_path: Path, *, nfs4: bool = True, helper: bool = True, euid: int = 0) -> dict:
        filesystems = tmp_path / "filesystems"
        filesystems.write_text("nodev\tsysfs\nnodev\ttmpfs\n\text4\n" + ("nodev\tnfs\nnodev\tnfs4\n" if nfs4 else ""))
        return {"filesystems": filesystems, "which": lambda name: "/sbin/" + name if helper else None,
                "euid": lambda: euid, "modules": tmp_path / "no-modules"}

    def test_kernel_client_preferred_for_every_version(self, tmp_path: Path) -> None:
        for version in ("4", "4.1", "4.2"):
            assert transport_for(version, **self.probe(tmp_path)) == "kernel"

    @pytest.mark.parametrize(("kwargs", "reason"), [
        ({"nfs4": False}, "no NFSv4 support"),
        ({"helper": False}, "mount.nfs4 helper"),
        ({"euid": 1000}, "needs root"),
    ])
    def test_without_kernel_client(self, tmp_path: Path, kwargs: dict, reason: str) -> None:
        probe = self.probe(tmp_path, **kwargs)
        assert reason in kernel_nfs_problem(**probe)
        assert transport_for("4", **probe) == "userspace"
        assert transport_for("4.1", **probe) == "userspace"
        with pytest.raises(StorageError) as info:
            transport_for("4.2", **probe)
        assert str(info.value) == NO_USERSPACE_42

    def test_loadable_module_counts_as_kernel_support(self, tmp_path: Path) -> None:
        probe = self.probe(tmp_path, nfs4=False)
        module_dir = probe["modules"] / os.uname().release / "kernel" / "fs" / "nfs"
        module_dir.mkdir(parents=True)
        (module_dir / "nfsv4.ko.xz").write_bytes(b"")
        assert transport_for("4.2", **probe) == "kernel"

    def test_unknown_version(self, tmp_path: Path) -> None:
        with pytest.raises(StorageError, match="choose 4, 4.1 or 4.2"):
            transport_for("3", **self.probe(tmp_path))

    def test_this_machine(self) -> None:
        problem = kernel_nfs_problem()
        assert problem is not None  # a container: no NFS in the kernel
        assert transport_for("4.1") == "userspace"

    def test_kernel_mount_command(self) -> None:
        storage = KernelNfsStorage("nfs://[fd00::1]:2050/export/backups", "4.2", timeout=5)
        assert storage.description == "NFS 4.2 share nfs://[fd00::1]:2050/export/backups (kernel client)"
        assert storage.mount_command(Path("/run/x")) == [
            "mount", "-t", "nfs4", "-o", "vers=4.2,soft,timeo=50,retrans=2,port=2050,nosuid,nodev,noexec",
            "[fd00::1]:/export/backups", "/run/x",
        ]
        assert "vers=4.0," in KernelNfsStorage("nfs://nas/e", "4").mount_command(Path("/m"))[4]


class TestDeadServer:
    def test_connection_refused(self) -> None:
        port = _unused_port()
        with NfsStorage(f"nfs://127.0.0.1:{port}/export/b", "4.1", timeout=TIMEOUT) as storage:
            started = time.monotonic()
            with pytest.raises(StorageError) as info:
                storage.list("")
            assert time.monotonic() - started < 1
        assert str(info.value) == (f"Connecting to the NFS share nfs://127.0.0.1:{port}/export/b failed: the NFS server "
                                   f"127.0.0.1:{port} does not answer (connection refused). "
                                   "Check that it is running and reachable, and that the port is right.")

    def test_a_server_name_that_does_not_resolve_is_named_once(self) -> None:
        with NfsStorage("nfs://no-such-host.invalid/export", "4.1", timeout=TIMEOUT) as storage:
            with pytest.raises(StorageError) as info:
                storage.list("")
        sentence = str(info.value)
        assert sentence.startswith("Connecting to the NFS share nfs://no-such-host.invalid:2049/export failed: ")
        assert sentence.count("no-such-host.invalid") == 1

    def test_server_that_never_answers(self) -> None:
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(4)
            port = silent.getsockname()[1]
            with NfsStorage(f"nfs://127.0.0.1:{port}/export/b", "4.1", timeout=TIMEOUT) as storage:
                started = time.monotonic()
                with pytest.raises(StorageError) as info:
                    storage.list("")
                elapsed = time.monotonic() - started
        assert str(info.value) == (f"Connecting to the NFS share nfs://127.0.0.1:{port}/export/b failed: the NFS server "
                                   f"127.0.0.1:{port} does not answer (timed out after 2 s). "
                                   "Check that it is running and reachable, then try again.")
        assert TIMEOUT - 0.1 <= elapsed < TIMEOUT + 1.5

    def test_not_an_nfs_server(self) -> None:
        with socket.socket() as http:
            http.bind(("127.0.0.1", 0))
            http.listen(4)
            port = http.getsockname()[1]

            def answer() -> None:
                while True:
                    try:
                        conn, _ = http.accept()
                    except OSError:
                        return
                    with conn:
                        conn.recv(4096)  # like a web server: read the request, then answer
                        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                        time.sleep(0.2)

            threading.Thread(target=answer, daemon=True).start()
            with NfsStorage(f"nfs://127.0.0.1:{port}/export/b", "4.1", timeout=TIMEOUT) as storage:
                with pytest.raises(StorageError, match="answered, but not as an NFS server"):
                    storage.list("")

    def test_server_gone_then_back(self, nfs_server_factory: Callable[..., NfsServer]) -> None:
        server = nfs_server_factory()
        with server.client() as client:
            client.mkdir("b", mode=0o755)
        with NfsStorage(server.url("b"), "4.1", timeout=TIMEOUT) as storage:
            storage.create("a.abk").commit()
            server.stop()
            started = time.monotonic()
            with pytest.raises(StorageError, match="does not answer"):
                storage.list("")
            assert time.monotonic() - started < TIMEOUT + 1
            server.start()
            # The same storage object reconnects by itself.
            assert names(storage) == ["a.abk"]
            assert storage.stat("a.abk").size == 0


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestDiskFull:
    def test_share_on_a_full_file_system(self, nfs_server_factory: Callable[..., NfsServer], tmp_path: Path) -> None:
        export = tmp_path / "small"
        export.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(export)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"this machine refuses a tmpfs mount ({result.stderr.strip()}), so NFS4ERR_NOSPC cannot be produced")
        server = None
        try:
            server = nfs_server_factory(export_dir=export)
            with server.client() as client:
                client.mkdir("b", mode=0o755)
            with NfsStorage(server.url("b"), "4.1", timeout=TIMEOUT) as storage:
                out = storage.create("big.abk")
                with pytest.raises(StorageFullError) as info:
                    for _ in range(4):
                        out.write(os.urandom(4 * 1024 * 1024))
                    out.commit()
                assert str(info.value).startswith(f"The NFS share {server.url('b')} is full: Writing ")
                out.abort()
                assert names(storage) == []
        finally:
            if server is not None:
                server.stop()
            subprocess.run(["umount", str(export)], check=True)


# ---------------------------------------------------------------- the whole service over NFS


def nfs_service(tmp_path: Path, url: str, version: str, *, timeout: float = TIMEOUT) -> BackupService:
    config = load_config(create_demo_appliance(tmp_path / "a"))
    service = BackupService(config, kdf_params=FAST_KDF, storage=NfsStorage(url, version, timeout=timeout))
    service.set_secret(PASSPHRASE)
    return service


class TestServiceOverNfs:
    def test_backup_list_details_verify_restore(self, tmp_path: Path, nfs_share: str, version: str) -> None:
        service = nfs_service(tmp_path, nfs_share, version)
        before = appliance_state(service.config)
        result = service.run_backup()
        [info] = service.list_backups()
        assert (info.name, info.size) == (result.name, result.size)
        assert names(service.storage) == [result.name]
        details = service.details(result.name)
        assert details.opens_with_this_dms and details.manifest is not None
        assert details.manifest["appliance"] == service.config.appliance.name
        checked = service.verify(result.name)
        assert checked.bytes > 0
        mutate_appliance(service.config)
        assert appliance_state(service.config) != before
        service.restore(result.name)
        assert appliance_state(service.config) == before
        service.storage.close()

    def test_server_stopped_during_a_backup(self, tmp_path: Path, nfs_server_factory: Callable[..., NfsServer]) -> None:
        server = nfs_server_factory()
        with server.client() as client:
            client.mkdir("b", mode=0o755)
        service = nfs_service(tmp_path, server.url("b"), "4.1")
        stopped_at: list[float] = []

        def progress(p) -> None:
            if p.stage.startswith("Archiving") and not stopped_at:
                server.stop()
                stopped_at.append(time.monotonic())

        with pytest.raises(StorageError) as info:
            service.run_backup(progress=progress)
        failed_after = time.monotonic() - stopped_at[0]
        assert "does not answer" in str(info.value)
        assert failed_after < 2 * TIMEOUT + 1, failed_after
        [run] = [r for r in service.journal.runs() if r.kind == "backup"]
        assert run.result == "failed" and "does not answer" in run.error
        status = service.status()
        assert status.last_failure is not None and "does not answer" in status.last_failure.error

        server.start()  # graceless: no 90 s grace period after the restart
        # The partial could not be removed while the server was gone; the storage
        # removes it as soon as the server answers again.
        assert names(service.storage) == []
        result = service.run_backup()
        assert names(service.storage) == [result.name]
        service.verify(result.name)
        service.storage.close()

    def test_partial_of_a_failed_run_removed_by_a_later_process(
            self, tmp_path: Path, nfs_server_factory: Callable[..., NfsServer]) -> None:
        server = nfs_server_factory()
        with server.client() as client:
            client.mkdir("b", mode=0o755)
        service = nfs_service(tmp_path, server.url("b"), "4.1")

        def progress(p) -> None:
            if p.stage.startswith("Archiving") and server.running:
                server.stop()

        with pytest.raises(StorageError):
            service.run_backup(progress=progress)
        service.storage.close()
        server.start()
        # A new process: a new service and storage on the same appliance.
        later = BackupService(service.config, kdf_params=FAST_KDF,
                              storage=NfsStorage(server.url("b"), "4.1", timeout=TIMEOUT))
        later.recover()
        assert not any(n.endswith(PARTIAL_SUFFIX) for n in names(later.storage))


# ---------------------------------------------------------------- the kernel-mount transport


STANDIN_URL = "nfs://127.0.0.1:2049/export/backups"
STANDIN_OPTIONS = "vers=4.2,soft,timeo=20,retrans=2,port=2049,nosuid,nodev,noexec"


class TestKernelTransport:
    """The kernel-mount transport (KernelNfsStorage), run for real except for the kernel's NFS client.

    This machine's kernel has no NFS client, so `mount -t nfs4` cannot work here, and no NFS server
    is involved in these tests. The mount and umount commands are a dependency of the backend
    (MountCommands) and are replaced by stand-in scripts: the mount stand-in checks that it was asked
    for exactly `-t nfs4 -o vers=4.2,soft,timeo=20,... 127.0.0.1:/export/backups <a private mount
    point>`, then bind-mounts a local directory (standing for the export) at that mount point; the
    umount stand-in runs the real umount. Everything else -- the transport choice, the backend, the
    service's backup, list, verify and restore on a real mount point, the unmount and the removal of
    the mount point, the sentences the operator sees -- is the product's own code.
    """

    @pytest.fixture
    def standin(self, tmp_path: Path) -> Iterator[dict]:
        export = tmp_path / "export-standin"
        export.mkdir()
        log = tmp_path / "calls.log"
        log.touch()
        real_mount, real_umount = shutil.which("mount"), shutil.which("umount")
        assert real_mount and real_umount

        def script(name: str, body: str) -> str:
            path = tmp_path / name
            path.write_text("#!/bin/sh\n" + f"echo \"{name} $*\" >> {shlex.quote(str(log))}\n" + body)
            path.chmod(0o755)
            return str(path)

        mount = script("mount-standin", f"""\
if [ "$#" -ne 6 ] || [ "$1" != -t ] || [ "$2" != nfs4 ] || [ "$3" != -o ] || [ "$4" != {STANDIN_OPTIONS} ]; then
    echo "mount stand-in: unexpected arguments: $*" >&2; exit 1
fi
case "$6" in /*/appliance-backup-nfs-*) ;; *) echo "mount stand-in: not a private mount point: $6" >&2; exit 1;; esac
if [ "$5" != 127.0.0.1:/export/backups ]; then
    echo "mount.nfs4: mounting $5 failed, reason given by server: No such file or directory" >&2; exit 32
fi
exec {real_mount} -o "bind${{STANDIN_RO:+,ro}}" {shlex.quote(str(export))} "$6"
""")
        umount = script("umount-standin", f'exec {real_umount} "$@"\n')
        opened: list[KernelNfsStorage] = []
        yield {"export": export, "log": log, "commands": MountCommands(mount=(mount,), umount=(umount,)),
               "probe": TestTransportChoice.probe(tmp_path), "opened": opened}
        for storage in opened:  # a failed test must not leave a mount behind
            storage.close()

    @staticmethod
    def calls(standin: dict) -> list[list[str]]:
        return [line.split() for line in standin["log"].read_text().splitlines()]

    def open(self, standin: dict, url: str = STANDIN_URL) -> KernelNfsStorage:
        storage = open_nfs_storage(url, "4.2", timeout=TIMEOUT, probe=standin["probe"], commands=standin["commands"])
        assert isinstance(storage, KernelNfsStorage)
        standin["opened"].append(storage)
        return storage

    def test_backup_list_verify_restore_through_the_mount(self, tmp_path: Path, standin: dict) -> None:
        storage = self.open(standin)
        assert storage.description == f"NFS 4.2 share {STANDIN_URL} (kernel client)"
        config = load_config(create_demo_appliance(tmp_path / "a"))
        service = BackupService(config, kdf_params=FAST_KDF, storage=storage)
        service.set_secret(PASSPHRASE)
        before = appliance_state(config)
        result = service.run_backup()
        mount_point = storage.mount_point
        assert mount_point is not None and is_mounted(mount_point)
        assert mount_point.name.startswith("appliance-backup-nfs-")
        assert [b.name for b in service.list_backups()] == [result.name]
        assert sorted(p.name for p in standin["export"].iterdir()) == [result.name]  # no partial left
        assert (standin["export"] / result.name).stat().st_mode & 0o777 == 0o600
        assert service.verify(result.name).bytes > 0
        mutate_appliance(config)
        service.restore(result.name)
        assert appliance_state(config) == before
        service.close()
        assert not is_mounted(mount_point) and not mount_point.exists()
        assert self.calls(standin) == [
            ["mount-standin", "-t", "nfs4", "-o", STANDIN_OPTIONS, "127.0.0.1:/export/backups", str(mount_point)],
            ["umount-standin", str(mount_point)],
        ]
        storage.close()  # twice is harmless
        assert len(self.calls(standin)) == 2

    def test_a_failed_backup_names_the_url_and_the_mount_point_still_goes(self, tmp_path: Path, standin: dict,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("STANDIN_RO", "1")  # the stand-in mounts the export read-only
        storage = self.open(standin)
        config = load_config(create_demo_appliance(tmp_path / "a"))
        service = BackupService(config, kdf_params=FAST_KDF, storage=storage)
        service.set_secret(PASSPHRASE)
        with pytest.raises(StorageError) as info:
            service.run_backup()
        mount_point = storage.mount_point
        assert mount_point is not None
        message = str(info.value)
        assert f"Creating {STANDIN_URL}/demo-appliance-" in message and "failed" in message, message
        assert str(mount_point) not in message and "appliance-backup-nfs-" not in message
        with pytest.raises(BackupNotFoundError) as info:
            storage.stat("missing/thing")
        assert str(mount_point) not in str(info.value) and STANDIN_URL in str(info.value)
        service.close()
        assert not is_mounted(mount_point) and not mount_point.exists()

    def test_a_busy_share_is_detached_lazily(self, tmp_path: Path, standin: dict) -> None:
        storage = self.open(standin)
        out = storage.create("a.abk")
        out.write(b"x" * 1000)
        out.commit()
        reader = storage.open("a.abk")  # still open: a plain umount answers "target is busy"
        mount_point = storage.mount_point
        storage.close()
        assert not is_mounted(mount_point) and not mount_point.exists()
        assert [c[1:] for c in self.calls(standin) if c[0] == "umount-standin"] == [[str(mount_point)],
                                                                                    ["-l", str(mount_point)]]
        assert reader.read() == b"x" * 1000  # the detached mount lives until the last file on it closes
        reader.close()

    def test_mount_refused(self, standin: dict) -> None:
        url = "nfs://127.0.0.1:2049/export/other"
        storage = self.open(standin, url)
        with pytest.raises(StorageError) as info:
            storage.list("")
        assert str(info.value) == (
            f"Mounting the NFS 4.2 share {url} (kernel client) failed (mount.nfs4: mounting 127.0.0.1:/export/other "
            "failed, reason given by server: No such file or directory): check the URL, the version and that the "
            "server exports the path to this appliance.")
        [[_, *_, mount_point]] = self.calls(standin)
        assert not Path(mount_point).exists() and storage.mount_point is None

    def test_a_mount_that_mounted_nothing(self, tmp_path: Path, standin: dict) -> None:
        liar = tmp_path / "mount-liar"
        said = tmp_path / "mount-point"
        liar.write_text(f'#!/bin/sh\necho "$6" > {shlex.quote(str(said))}\nexit 0\n')
        liar.chmod(0o755)
        commands = MountCommands(mount=(str(liar),), umount=standin["commands"].umount)
        storage = KernelNfsStorage(STANDIN_URL, "4.2", timeout=TIMEOUT, commands=commands)
        standin["opened"].append(storage)
        with pytest.raises(StorageError, match="reported success, but nothing is mounted"):
            storage.create("a.abk")
        mount_point = Path(said.read_text().strip())
        assert mount_point.name.startswith("appliance-backup-nfs-") and not mount_point.exists()
