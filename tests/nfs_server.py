"""Provides a real NFSv4 server (nfs-ganesha on loopback) as pytest fixtures.

Register with `pytest_plugins = ["tests.nfs_server"]` (or `-p tests.nfs_server`).

- `nfs_server` (session): one server on a free loopback port with a fresh
  export directory and a fresh recovery directory (graceless, so a restart
  does not refuse opens for 90 s).
- `nfs_server_factory` (session): starts more servers, for example one whose
  `Minor_Versions` refuse 4.1, or one to stop and start under a backup.
- `nfs_share` (function): a fresh directory inside the session's export,
  created through NFS (the export is never written behind the server's back).

Each server runs in its own session (process group) so it cannot outlive the
tests; teardown sends SIGTERM, then SIGKILL if it has not gone in 5 s. A
missing ganesha.nfsd fails the tests that need it: they claim NFS works.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

GANESHA = "ganesha.nfsd"
READY_LINE = "NFS SERVER INITIALIZED"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
INSTALL_HINT = "apt-get install -y nfs-ganesha nfs-ganesha-vfs (make test installs them)"

CONFIG_TEMPLATE = """\
NFS_CORE_PARAM {{
    Protocols = 4; NFS_Port = {port}; Bind_addr = 127.0.0.1;
    Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false;
}}
NFSv4 {{
    Graceless = true; Lease_Lifetime = 10;
    Minor_Versions = {minor_versions};
    RecoveryBackend = fs; RecoveryRoot = {root}/recov;
    Only_Numeric_Owners = true;
}}
EXPORT {{
    Export_Id = 1; Path = {export}; Pseudo = /export;
    Protocols = 4; Transports = TCP; Access_Type = RW;
    Squash = No_Root_Squash; SecType = sys;
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = EVENT; }}
"""


def stop_group(process: subprocess.Popen | None, patience: float) -> None:
    """SIGTERM a server started in its own session (its process group); SIGKILL the group if it lingers."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(patience)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(patience)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class NfsServer:
    """One nfs-ganesha process serving `export_dir` as nfs://127.0.0.1:PORT/export."""

    def __init__(self, root: Path, *, minor_versions: tuple[int, ...] = (0, 1, 2),
                 export_dir: Path | None = None, port: int | None = None) -> None:
        self.root = root
        self.export_dir = export_dir or root / "export"
        self.port = port or free_port()
        self.minor_versions = minor_versions
        self.log_path = root / "ganesha.log"
        self.config_path = root / "ganesha.conf"
        self.process: subprocess.Popen | None = None
        self.export_dir.mkdir(parents=True, exist_ok=True)
        (root / "recov").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(CONFIG_TEMPLATE.format(
            port=self.port, root=root, export=self.export_dir,
            minor_versions=", ".join(str(v) for v in minor_versions),
        ))

    def url(self, path: str = "") -> str:
        """nfs://127.0.0.1:PORT/export[/path]."""
        return f"nfs://127.0.0.1:{self.port}/export" + (f"/{path.strip('/')}" if path else "")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start (or restart, on the same port and directories) and wait until it serves."""
        if self.running:
            return
        binary = shutil.which(GANESHA)
        if binary is None:
            pytest.fail(f"{GANESHA} is not installed, and the NFS tests need a real server: {INSTALL_HINT}.",
                        pytrace=False)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        deadline = time.monotonic() + START_TIMEOUT
        while _port_open(self.port):  # the previous instance may still be letting go of the port
            if time.monotonic() > deadline:
                pytest.fail(f"Port {self.port} is still taken; ganesha cannot start on it.", pytrace=False)
            time.sleep(0.05)
        self.process = subprocess.Popen(
            [binary, "-F", "-f", str(self.config_path), "-L", str(self.log_path),
             "-p", str(self.root / "ganesha.pid"), "-N", "NIV_EVENT"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                pytest.fail(f"ganesha.nfsd exited at start:\n{self._log_tail(offset)}", pytrace=False)
            if self._log_since(offset).find(READY_LINE) >= 0 and _port_open(self.port):
                return
            time.sleep(0.02)
        self.stop()
        pytest.fail(f"ganesha.nfsd did not get ready within {START_TIMEOUT:g} s:\n{self._log_tail(offset)}",
                    pytrace=False)

    def stop(self) -> None:
        """SIGTERM the server's process group; SIGKILL it if it lingers."""
        process, self.process = self.process, None
        stop_group(process, STOP_TIMEOUT)

    def client(self, path: str = "", version: str = "4.1"):
        """A raw nfs-rs client connected to the export (for test set-up through NFS)."""
        import nfs_rs

        return nfs_rs.Client.connect(self.url(path), versions=[version], connect_timeout=5, operation_timeout=10)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, offset: int) -> str:
        return "\n".join(self._log_since(offset).splitlines()[-15:])


@pytest.fixture(scope="session")
def nfs_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., NfsServer]]:
    """Start extra servers: `factory(minor_versions=(0,))`; all are stopped at the end of the session."""
    servers: list[NfsServer] = []
    counter = itertools.count()

    def factory(*, minor_versions: tuple[int, ...] = (0, 1, 2), export_dir: Path | None = None) -> NfsServer:
        server = NfsServer(tmp_path_factory.mktemp(f"ganesha{next(counter)}"), minor_versions=minor_versions,
                           export_dir=export_dir)
        servers.append(server)
        server.start()
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def nfs_server(nfs_server_factory: Callable[..., NfsServer]) -> NfsServer:
    """The session's NFSv4 server (4.0, 4.1 and 4.2 enabled)."""
    return nfs_server_factory()


@pytest.fixture
def nfs_share(nfs_server: NfsServer, request: pytest.FixtureRequest) -> str:
    """nfs:// URL of a fresh, empty directory on the session's server."""
    nfs_server.start()  # a test may have stopped it
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name)[:80] + f"-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    with nfs_server.client() as client:
        client.mkdir(name, mode=0o755)
    return nfs_server.url(name)
