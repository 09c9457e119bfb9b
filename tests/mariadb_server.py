"""Provides real MariaDB servers (and a Galera cluster) on this machine as pytest fixtures.

Register with `pytest_plugins = ["tests.mariadb_server"]`.

- `mariadb_factory` (session): starts private `mariadbd` servers, each with a
  fresh datadir made by `mariadb-install-db` and a socket in a short private
  folder (a Unix socket path has at most 107 bytes); root connects through the
  socket (unix_socket authentication), no password anywhere.
- `mariadb` (function): one fresh server for a test.
- `galera_cluster` (module): three nodes on loopback ports, run as the
  `mysql` user (rsync SST drops to `nobody` when the server runs as root).

Every server runs in its own session (process group) and is stopped (SIGTERM,
then SIGKILL) at teardown. A missing server binary fails the tests that need
it: they claim MariaDB works (make test installs mariadb-server,
mariadb-backup and galera-4).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.nfs_server import free_port, stop_group

INSTALL_HINT = "apt-get install -y mariadb-server mariadb-backup galera-4 (make test installs them)"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
GALERA_PROVIDER = "/usr/lib/galera/libgalera_smm.so"


def _require(binary: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if path is None:
        pytest.fail(f"{binary} is not installed, and this test needs a real MariaDB server: {INSTALL_HINT}.",
                    pytrace=False)
    return path


class MariaServer:
    """One private mariadbd: datadir `root/data`, socket `root/sock`, log `root/err.log`."""

    def __init__(self, root: Path, *, user: str = "root", port: int | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        self.root = root
        self.user = user
        self.port = port
        self.extra = extra
        self.datadir = root / "data"
        self.socket = root / "sock"
        self.pid_file = root / "pid"
        self.log = root / "err.log"
        self.process: subprocess.Popen | None = None

    def install(self, template: Path | None = None) -> None:
        """A fresh datadir: a copy of `template` (a datadir no server runs on), else made anew (about 1 s)."""
        if template is not None:
            shutil.copytree(template, self.datadir, symlinks=True)
            return
        subprocess.run([_require("mariadb-install-db"), f"--user={self.user}", f"--datadir={self.datadir}",
                        "--auth-root-authentication-method=socket", "--skip-test-db"],
                       check=True, capture_output=True, timeout=120)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self, *more: str) -> list[str]:
        """The mariadbd command line: as `start` runs it (a restore's `start` command uses it too)."""
        argv = [_require("mariadbd"), f"--user={self.user}", f"--datadir={self.datadir}",
                f"--socket={self.socket}", f"--pid-file={self.pid_file}", f"--log-error={self.log}",
                "--innodb-buffer-pool-size=128M", "--innodb-log-file-size=64M"]
        argv += [f"--port={self.port}", "--bind-address=127.0.0.1"] if self.port else ["--skip-networking"]
        return argv + list(self.extra) + list(more)

    def start(self, *more: str) -> None:
        """Start and wait until it answers (or fail with the tail of its log)."""
        if self.running:
            return
        self.process = subprocess.Popen(self.command(*more), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        self.wait_ready()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                self.process = None
                pytest.fail(f"mariadbd exited at start:\n{self.log_tail()}", pytrace=False)
            if self.answers():
                return
            time.sleep(0.1)
        pytest.fail(f"mariadbd did not answer within {timeout:g} s:\n{self.log_tail()}", pytrace=False)

    def answers(self) -> bool:
        result = subprocess.run(["mariadb", f"--socket={self.socket}", "-e", "select 1"],
                                capture_output=True, timeout=10)
        return result.returncode == 0

    def sql(self, query: str, *, database: str | None = None) -> str:
        """Run `query` through the socket; the rows as tab-separated text."""
        argv = ["mariadb", f"--socket={self.socket}", "--batch", "--skip-column-names", "-e", query]
        if database:
            argv.append(database)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise AssertionError(f"{query!r} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def status(self, variable: str) -> str:
        row = self.sql(f"SHOW GLOBAL STATUS LIKE '{variable}'")
        return row.split("\t", 1)[1] if row else ""

    def stop(self) -> None:
        """A clean shutdown (SIGTERM to the group); SIGKILL when it lingers."""
        process, self.process = self.process, None
        stop_group(process, STOP_TIMEOUT)

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"


def short_private_dir(prefix: str, *, mode: int = 0o700) -> Path:
    """A folder with a short path (sockets need one), removed by the caller."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(mode)
    return path


@pytest.fixture(scope="session")
def mariadb_factory() -> Iterator[Callable[..., MariaServer]]:
    """Start private servers: `factory()` -> an installed, running MariaServer; all stopped at the end."""
    servers: list[MariaServer] = []
    folders: list[Path] = []
    template: list[MariaServer] = []  # one datadir made by mariadb-install-db, copied for each server

    def factory(*, start: bool = True, **kwargs) -> MariaServer:
        if not template:
            folder = short_private_dir("abdb-")
            folders.append(folder)
            template.append(MariaServer(folder))
            template[0].install()
        folder = short_private_dir("abdb-")
        folders.append(folder)
        server = MariaServer(folder, **kwargs)
        servers.append(server)
        server.install(template[0].datadir)
        if start:
            server.start()
        return server

    yield factory
    for server in servers:
        server.stop()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def mariadb(mariadb_factory: Callable[..., MariaServer]) -> Iterator[MariaServer]:
    """A fresh, running private server for one test."""
    server = mariadb_factory()
    yield server
    server.stop()


class GaleraCluster:
    """Three nodes on loopback, run as `mysql`; node 1 bootstraps, 2 and 3 join by rsync SST."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.gcomm = [free_port() for _ in range(size)]
        self.nodes: list[MariaServer] = []
        address = "gcomm://" + ",".join(f"127.0.0.1:{p}" for p in self.gcomm)
        for n in range(size):
            folder = root / f"n{n + 1}"
            folder.mkdir()
            shutil.chown(folder, "mysql", "mysql")
            ist, sst = free_port(), free_port()
            self.nodes.append(MariaServer(folder, user="mysql", port=free_port(), extra=(
                "--wsrep-on=ON", f"--wsrep-provider={GALERA_PROVIDER}", f"--wsrep-cluster-address={address}",
                f"--wsrep-node-address=127.0.0.1:{self.gcomm[n]}",
                f"--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:{self.gcomm[n]};"
                f"ist.recv_addr=127.0.0.1:{ist}",
                "--wsrep-sst-method=rsync", f"--wsrep-sst-receive-address=127.0.0.1:{sst}",
                "--binlog-format=ROW", "--default-storage-engine=InnoDB", "--innodb-autoinc-lock-mode=2",
            )))

    def start(self) -> None:
        if not os.path.exists(GALERA_PROVIDER):
            pytest.fail(f"{GALERA_PROVIDER} is missing, and the Galera tests need a real cluster: {INSTALL_HINT}.",
                        pytrace=False)
        first, *others = self.nodes
        first.install()
        first.start("--wsrep-new-cluster")
        self.wait_synced(first)
        for node in others:
            node.install()
            node.start()
            self.wait_synced(node)
        self.wait_size(len(self.nodes))

    @staticmethod
    def wait_synced(node: MariaServer, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.status("wsrep_local_state_comment") == "Synced":
                return
            time.sleep(0.2)
        pytest.fail(f"Galera node {node.root.name} is not Synced after {timeout:g} s:\n{node.log_tail()}",
                    pytrace=False)

    def wait_size(self, size: int, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(node.running and node.status("wsrep_cluster_size") == str(size) for node in self.nodes
                   if node.running):
                return
            time.sleep(0.2)
        pytest.fail(f"The Galera cluster did not reach {size} nodes in {timeout:g} s.", pytrace=False)

    def stop(self) -> None:
        """All nodes at once: stopped one by one, each waits for the others' departure (about 4 s each)."""
        threads = [threading.Thread(target=node.stop) for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


@pytest.fixture(scope="module")
def galera_cluster() -> Iterator[GaleraCluster]:
    """A three-node Galera cluster on loopback, Synced."""
    folder = short_private_dir("abgal-", mode=0o755)  # the nodes run as mysql and must reach their folders
    cluster = GaleraCluster(folder)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
