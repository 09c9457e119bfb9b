"""Provides the MariaDB engine of the internal database: facts, a hot physical backup stream, restore.

Configuration (the `[database]` table of config.toml):

    [database]
    engine = "mariadb"                         # "sqlite" (default): the file is [appliance] database
    socket = "/run/mysqld/mysqld.sock"         # how the backup connects
    datadir = "/var/lib/mysql"                 # what a restore replaces
    defaults_file = "/etc/mysql/debian.cnf"    # optional credentials, never in config.toml
    stop = "systemctl stop mariadb"            # run before a restore replaces the datadir
    start = "systemctl start mariadb"          # run after it, and after a rollback

A backup is `mariadb-backup --backup --stream=xbstream` read as it is written:
the server keeps taking writes, and the copy is one committed point in time
(InnoDB's redo log is copied alongside and applied by `--prepare`). A restore
unpacks the stream into a staging folder beside the datadir (`mbstream -x`),
prepares it, runs `stop`, swaps the datadir (the old one is kept as the
rollback copy), runs `start`, waits until the server answers and checks every
table can be read; on any failure the old datadir is put back and started.

The client programs (`mariadb`, `mariadb-backup`, `mbstream`) are run without
a shell; credentials come only from `defaults_file` (never a command line, so
never a process listing or a log).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backup.errors import BackupError, ConfigError

ENGINES = ("sqlite", "mariadb")
KEYS = ("engine", "socket", "datadir", "defaults_file", "stop", "start", "wait")
DEFAULT_SOCKET = Path("/run/mysqld/mysqld.sock")
DEFAULT_DATADIR = Path("/var/lib/mysql")
DEFAULT_WAIT = 120.0
"""Seconds a restore waits for the restarted server to answer before it rolls back."""
CLIENT_TIMEOUT = 30.0
"""Seconds one query of the `mariadb` client may take (a server that accepts and never answers)."""
STDERR_LINES = 40
"""The last lines of mariadb-backup's log kept for the sentence when it fails."""
READ_BLOCK = 1 << 20


class DatabaseServerError(BackupError):
    """The MariaDB server or its tools refused or failed; the message says which and what to do."""


@dataclass(frozen=True)
class MariaDBSettings:
    """The `[database]` table when engine = "mariadb"."""

    socket: Path = DEFAULT_SOCKET
    datadir: Path = DEFAULT_DATADIR
    defaults_file: Path | None = None
    stop: tuple[str, ...] = ()
    """The command line that stops the server (run without a shell); empty: none configured."""
    start: tuple[str, ...] = ()
    wait: float = DEFAULT_WAIT

    def client_options(self) -> list[str]:
        """Options every client program takes first (--defaults-file must lead)."""
        options = [f"--defaults-file={self.defaults_file}"] if self.defaults_file else []
        return options + [f"--socket={self.socket}"]


def parse_database(raw: dict[str, Any], path: Path | str) -> MariaDBSettings | None:
    """The `[database]` table: None for the SQLite engine (the default), settings for MariaDB.

    Raises:
        ConfigError: a sentence naming the key that is wrong and what to write.
    """
    table = raw.get("database")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"In {path}, database must be a table: write it as [database] followed by engine = \"sqlite\" "
                          "or engine = \"mariadb\".")
    for key in table:
        if key not in KEYS:
            raise ConfigError(f"In {path}, [database] {key} is not a known key: the keys are {', '.join(KEYS)}.")
    engine = table.get("engine", "sqlite")
    if engine not in ENGINES:
        raise ConfigError(f"In {path}, [database] engine is {engine!r}; it must be \"sqlite\" (the file named by "
                          "[appliance] database) or \"mariadb\".")
    if engine == "sqlite":
        others = sorted(set(table) - {"engine"})
        if others:
            raise ConfigError(f"In {path}, [database] {others[0]} applies only to engine = \"mariadb\": remove it, "
                              "or set engine = \"mariadb\".")
        return None

    def folder(key: str, default: Path) -> Path:
        value = table.get(key, str(default))
        if not isinstance(value, str) or not value.startswith("/"):
            raise ConfigError(f"In {path}, [database] {key} must be an absolute path in quotes, not {value!r}.")
        return Path(value)

    def command(key: str) -> tuple[str, ...]:
        value = table.get(key, "")
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        if not isinstance(value, str):
            raise ConfigError(f"In {path}, [database] {key} must be a command line in quotes, such as "
                              f"\"systemctl {key} mariadb\", not {value!r}.")
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise ConfigError(f"In {path}, [database] {key} cannot be split into words ({exc}): check its quotes.") \
                from None

    wait = table.get("wait", DEFAULT_WAIT)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 1 <= wait <= 3600:
        raise ConfigError(f"In {path}, [database] wait must be a number of seconds from 1 to 3600, not {wait!r}.")
    defaults = table.get("defaults_file")
    return MariaDBSettings(
        socket=folder("socket", DEFAULT_SOCKET),
        datadir=folder("datadir", DEFAULT_DATADIR),
        defaults_file=folder("defaults_file", Path("/")) if defaults is not None else None,
        stop=command("stop"),
        start=command("start"),
        wait=float(wait),
    )


# ------------------------------------------------------------------ the server's facts


@dataclass(frozen=True)
class ServerFacts:
    """What the running server says about itself, as a backup records it."""

    version: str
    """VERSION(), e.g. "10.11.19-MariaDB-0+deb12u1"."""
    galera: bool
    """wsrep is on: the server is a Galera cluster node."""
    galera_state: str = ""
    """wsrep_local_state_comment: "Synced" when the node may be backed up."""
    cluster_uuid: str = ""
    cluster_size: int = 0

    @property
    def series(self) -> tuple[int, int]:
        """(major, minor) of the server, e.g. (10, 11)."""
        return _series(self.version)


def _series(version: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _program(name: str) -> str:
    found = shutil.which(name) or next((f"{d}/{name}" for d in ("/usr/sbin", "/usr/bin") if os.access(f"{d}/{name}", os.X_OK)), None)
    if found is None:
        package = "mariadb-backup" if name in ("mariadb-backup", "mbstream") else "mariadb-client"
        raise DatabaseServerError(f"The program {name} is not installed, and the MariaDB engine needs it: "
                                  f"install the Debian package {package} (apt-get install {package}), then try again.")
    return found


def query(settings: MariaDBSettings, sql: str, *, timeout: float = CLIENT_TIMEOUT) -> list[list[str]]:
    """Rows of `sql` run through the `mariadb` client on the configured socket.

    Raises:
        DatabaseServerError: the server does not answer, refuses the login, or the query fails.
    """
    argv = [_program("mariadb"), *settings.client_options(), "--batch", "--skip-column-names", "--raw", "-e", sql]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DatabaseServerError(f"The MariaDB server on {settings.socket} accepted the connection but did not answer "
                                  f"within {timeout:g} s: check that it is not stuck (its error log), then try again.") \
            from None
    if result.returncode != 0:
        raise DatabaseServerError(_client_sentence(settings, result.stderr))
    return [line.split("\t") for line in result.stdout.splitlines()]


def _client_sentence(settings: MariaDBSettings, stderr: str) -> str:
    """The sentence for a failed client call, from what the client printed (which holds no password)."""
    text = " ".join(stderr.split())
    if "Can't connect to local server through socket" in text or "(2002)" in text:
        if not settings.socket.exists():
            return (f"The MariaDB server is not running, or [database] socket names the wrong file: {settings.socket} "
                    "does not exist. Start the server, or correct socket in the configuration, then try again.")
        return (f"The MariaDB server does not answer on {settings.socket} (the socket exists but nothing accepts "
                "connections on it): start the server, then try again.")
    if "Access denied" in text or "(1045)" in text or "(1698)" in text:
        where = f"the credentials in {settings.defaults_file}" if settings.defaults_file else "the login running the backup"
        return (f"The MariaDB server on {settings.socket} refused {where} (access denied): give [database] "
                "defaults_file a user with the RELOAD, PROCESS, LOCK TABLES and BINLOG MONITOR privileges "
                "(the file holds the password; config.toml never does), then try again.")
    if "defaults-file" in text or "Could not open required defaults file" in text:
        return (f"The MariaDB client could not read [database] defaults_file {settings.defaults_file}: check that it "
                "exists and is readable by the user running the backup.")
    return f"The MariaDB server on {settings.socket} refused the request: {text[-300:] or 'no reason given'}."


def server_facts(settings: MariaDBSettings) -> ServerFacts:
    """Version and Galera state of the running server."""
    rows = query(settings, "SELECT VERSION(); SHOW GLOBAL VARIABLES LIKE 'wsrep_on'; "
                           "SHOW GLOBAL STATUS WHERE Variable_name IN "
                           "('wsrep_local_state_comment', 'wsrep_cluster_state_uuid', 'wsrep_cluster_size')")
    version = rows[0][0] if rows and rows[0] else ""
    values = {row[0].lower(): row[1] for row in rows[1:] if len(row) == 2}
    galera = values.get("wsrep_on", "OFF").upper() == "ON"
    size = values.get("wsrep_cluster_size", "0")
    return ServerFacts(version=version, galera=galera, galera_state=values.get("wsrep_local_state_comment", ""),
                       cluster_uuid=values.get("wsrep_cluster_state_uuid", ""),
                       cluster_size=int(size) if size.isdigit() else 0)


def backup_tool_series() -> tuple[int, int]:
    """(major, minor) of the installed mariadb-backup ("based on MariaDB server 10.11.19")."""
    result = subprocess.run([_program("mariadb-backup"), "--version"], capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    match = re.search(r"server (\d+\.\d+)", result.stdout + result.stderr)
    return _series(match[1]) if match else (0, 0)


def check_can_back_up(settings: MariaDBSettings) -> ServerFacts:
    """The server's facts when a hot backup of it can start now; a sentence when not.

    Raises:
        DatabaseServerError: server down, login refused, a Galera node not Synced, or a
            mariadb-backup of another series than the server (it cannot read its files).
    """
    facts = server_facts(settings)
    if facts.galera and facts.galera_state != "Synced":
        raise DatabaseServerError(
            f"This MariaDB server is a Galera cluster node in state {facts.galera_state or 'unknown'}, not Synced, so "
            "its data may lag the cluster: wait until it is Synced (SHOW STATUS LIKE 'wsrep_local_state_comment'), "
            "or back up another node, then try again.")
    tool = backup_tool_series()
    if tool != facts.series:
        raise DatabaseServerError(
            f"mariadb-backup is of MariaDB {tool[0]}.{tool[1]}, but the server is {facts.version}: a backup tool reads "
            "only its own series' files. Install the mariadb-backup package of the server's version, then try again.")
    return facts


# ------------------------------------------------------------------ the hot backup stream


@dataclass
class StreamResult:
    """What mariadb-backup said at the end: the point in time the copy holds."""

    binlog_file: str = ""
    binlog_position: str = ""
    gtid: str = ""

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("binlog_file", self.binlog_file), ("binlog_position", self.binlog_position),
                                  ("gtid", self.gtid)) if v}


_POSITION = re.compile(r"MySQL binlog position: filename '(?P<file>[^']*)', position '(?P<pos>[^']*)'"
                       r"(?:, GTID of the last change '(?P<gtid>[^']*)')?")


class HotBackup:
    """`mariadb-backup --backup --stream=xbstream` as a readable stream (context manager).

    Read it to the end, then leave the `with` block: a non-zero exit of the tool
    (or a stream cut short) raises DatabaseServerError with the tail of its log.
    Leaving early (an exception, a cancel) kills the tool; nothing of it stays.
    """

    def __init__(self, settings: MariaDBSettings, work_dir: Path, *, galera: bool = False) -> None:
        self.settings = settings
        self.work_dir = work_dir
        self.galera = galera
        self.result = StreamResult()
        self._tail: deque[str] = deque(maxlen=STDERR_LINES)
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> HotBackup:
        self.work_dir.mkdir(mode=0o700, parents=False, exist_ok=False)
        argv = [_program("mariadb-backup"), *self.settings.client_options(), "--backup", "--stream=xbstream",
                f"--target-dir={self.work_dir}"]
        if self.settings.defaults_file is None:
            argv.append("--user=root")
        if self.galera:
            argv.append("--galera-info")
        self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True)
        self._reader = threading.Thread(target=self._read_log, name="mariadb-backup log", daemon=True)
        self._reader.start()
        return self

    def _read_log(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for raw in self._process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._tail.append(line)
            match = _POSITION.search(line)
            if match:
                self.result = StreamResult(match["file"], match["pos"], match["gtid"] or "")

    def read(self, size: int = READ_BLOCK) -> bytes:
        assert self._process is not None and self._process.stdout is not None
        return self._process.stdout.read1(size)  # type: ignore[attr-defined]

    def chunks(self) -> Iterator[bytes]:
        while data := self.read():
            yield data

    def __exit__(self, exc_type, exc, tb) -> None:
        process = self._process
        assert process is not None
        try:
            if exc_type is not None:
                _kill_group(process)
                return
            process.stdout.close()  # type: ignore[union-attr]
            code = process.wait()
            if self._reader is not None:
                self._reader.join(10)
            if code != 0 or not any("completed OK!" in line for line in self._tail):
                raise DatabaseServerError(self._failure_sentence(code))
        finally:
            if process.poll() is None:
                _kill_group(process)
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _failure_sentence(self, code: int) -> str:
        lines = [line for line in self._tail if "error" in line.lower()] or list(self._tail)[-3:]
        detail = " ".join(" ".join(line.split()) for line in lines[-3:])[-400:]
        if any("Access denied" in line for line in self._tail):
            return _client_sentence(self.settings, "Access denied")
        if any("Can't connect" in line for line in self._tail):
            return _client_sentence(self.settings, "Can't connect to local server through socket")
        return (f"mariadb-backup failed (exit {code}), so the database was not backed up: {detail or 'no reason given'}. "
                "Check the MariaDB server's error log, then try again.")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


# ------------------------------------------------------------------ restore


def unpack(stream: Callable[[int], bytes], stage: Path) -> None:
    """Unpack an xbstream read from `stream` into the empty folder `stage` (`mbstream -x`).

    Raises:
        DatabaseServerError: mbstream refused the stream (cut short, damaged).
    """
    stage.mkdir(mode=0o700, exist_ok=True)
    process = subprocess.Popen([_program("mbstream"), "-x", "-C", str(stage)], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    assert process.stdin is not None
    try:
        while data := stream(READ_BLOCK):
            process.stdin.write(data)
        process.stdin.close()
    except BrokenPipeError:
        pass
    except BaseException:
        _kill_group(process)
        raise
    error = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.wait() != 0:
        raise DatabaseServerError(f"The backup's MariaDB stream could not be unpacked ({' '.join(error.split())[-300:]}): "
                                  "nothing on the appliance was changed.")


def prepare(stage: Path, *, use_memory: str = "128M") -> None:
    """Apply the copied redo log (`mariadb-backup --prepare`): the staged datadir becomes consistent."""
    result = subprocess.run([_program("mariadb-backup"), "--prepare", f"--target-dir={stage}",
                             f"--use-memory={use_memory}"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0 or "completed OK!" not in result.stderr:
        tail = " ".join(" ".join(result.stderr.split()).split()[-40:])
        raise DatabaseServerError(f"mariadb-backup --prepare failed on the restored database ({tail}): nothing on "
                                  "the appliance was changed.")


def run_command(argv: tuple[str, ...], what: str, *, timeout: float = 300.0) -> str:
    """Run a configured stop/start command without a shell; its output for the journal.

    Raises:
        DatabaseServerError: it failed or could not be run, with its last output.
    """
    if not argv:
        raise DatabaseServerError(f"[database] {what} is not configured, so the restore cannot {what} the MariaDB "
                                  f"server: set it (for example {what} = \"systemctl {what} mariadb\").")
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise DatabaseServerError(f"[database] {what} names {argv[0]}, which does not exist: correct it.") from None
    except subprocess.TimeoutExpired:
        raise DatabaseServerError(f"[database] {what} ({shlex.join(argv)}) did not finish within {timeout:g} s.") \
            from None
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise DatabaseServerError(f"[database] {what} ({shlex.join(argv)}) failed with exit {result.returncode}: "
                                  f"{' '.join(output.split())[-300:] or 'no output'}.")
    return output


def wait_until_answering(settings: MariaDBSettings) -> None:
    """Poll until the server answers, for `settings.wait` seconds."""
    deadline = time.monotonic() + settings.wait
    last = ""
    while time.monotonic() < deadline:
        try:
            query(settings, "SELECT 1", timeout=10)
            return
        except DatabaseServerError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise DatabaseServerError(f"The MariaDB server did not answer within {settings.wait:g} s after it was started "
                              f"({last})")


def check_tables(settings: MariaDBSettings) -> int:
    """Read every base table of every user schema once (CHECKSUM TABLE); the number of tables.

    Raises:
        DatabaseServerError: a table cannot be read.
    """
    rows = query(settings, "SELECT CONCAT('`', REPLACE(table_schema, '`', '``'), '`.`', REPLACE(table_name, '`', '``'), "
                           "'`') FROM information_schema.tables WHERE table_type = 'BASE TABLE' AND table_schema NOT "
                           "IN ('mysql', 'information_schema', 'performance_schema', 'sys')", timeout=300)
    names = [row[0] for row in rows if row]
    for start in range(0, len(names), 200):
        part = names[start:start + 200]
        checked = query(settings, "CHECKSUM TABLE " + ", ".join(part), timeout=600)
        broken = [row[0] for row in checked if len(row) > 1 and row[1] in ("NULL", "")]
        if broken:
            raise DatabaseServerError(f"The restored database cannot read the table {broken[0]}.")
    return len(names)


@contextmanager
def stopped_server(settings: MariaDBSettings, journal: Callable[[str], None]) -> Iterator[None]:
    """Stop the server for the body; start it again afterwards, whatever happened in the body."""
    journal(run_command(settings.stop, "stop"))
    try:
        yield
    finally:
        journal(run_command(settings.start, "start"))
        wait_until_answering(settings)


def same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def copy_owner_and_mode(source: Path, tree: Path) -> None:
    """Give every entry of `tree` the owner of `source` (the live datadir: mysql:mysql), and `tree` its mode."""
    st = os.stat(source)
    for root, dirs, files in os.walk(tree):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), st.st_uid, st.st_gid, follow_symlinks=False)
    os.chown(tree, st.st_uid, st.st_gid)
    os.chmod(tree, st.st_mode & 0o7777)
