"""The MariaDB engine against real servers: facts, refusals, and a hot backup that restores to one point in time."""

from __future__ import annotations

import random
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from backup.errors import ConfigError
from backup.mariadb import (
    DatabaseServerError,
    HotBackup,
    MariaDBSettings,
    check_can_back_up,
    check_tables,
    parse_database,
    prepare,
    query,
    server_facts,
    unpack,
)
from tests.mariadb_server import GaleraCluster, MariaServer

ACCOUNTS = 50
OPENING_BALANCE = 1000


def settings_of(server: MariaServer, **more) -> MariaDBSettings:
    return MariaDBSettings(socket=server.socket, datadir=server.datadir, **more)


class Transfers:
    """Money moves between accounts in transactions while a backup runs: a torn copy breaks the total."""

    def __init__(self, server: MariaServer) -> None:
        server.sql("CREATE DATABASE bank; CREATE TABLE bank.account (id INT PRIMARY KEY, balance INT NOT NULL) "
                   "ENGINE=InnoDB; CREATE TABLE bank.ledger (id INT AUTO_INCREMENT PRIMARY KEY, src INT, dst INT, "
                   "amount INT, note VARBINARY(200)) ENGINE=InnoDB;")
        values = ",".join(f"({i},{OPENING_BALANCE})" for i in range(ACCOUNTS))
        server.sql(f"INSERT INTO bank.account VALUES {values}")
        self.server = server
        self.stop = threading.Event()
        self.count = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = subprocess.Popen(["mariadb", f"--socket={self.server.socket}", "bank"], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        rng = random.Random(7)
        assert client.stdin is not None
        while not self.stop.is_set():
            a, b, amount = rng.randrange(ACCOUNTS), rng.randrange(ACCOUNTS), rng.randrange(1, 50)
            client.stdin.write(
                f"START TRANSACTION; UPDATE account SET balance = balance - {amount} WHERE id = {a}; "
                f"UPDATE account SET balance = balance + {amount} WHERE id = {b}; "
                f"INSERT INTO ledger (src, dst, amount, note) VALUES ({a}, {b}, {amount}, REPEAT('x', 150)); COMMIT;\n")
            self.count += 1
            if self.count % 50 == 0:
                client.stdin.flush()
        client.stdin.close()
        client.wait(60)

    def __enter__(self) -> Transfers:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self._thread.join(60)


def invariants(server: MariaServer) -> tuple[int, int]:
    """(total balance, ledger rows); the total is constant whatever point in time a copy holds."""
    total = int(server.sql("SELECT SUM(balance) FROM bank.account"))
    return total, int(server.sql("SELECT COUNT(*) FROM bank.ledger"))


class TestConfiguration:
    def test_sqlite_is_the_default(self):
        assert parse_database({}, "c.toml") is None
        assert parse_database({"database": {"engine": "sqlite"}}, "c.toml") is None

    def test_mariadb_keys(self):
        got = parse_database({"database": {"engine": "mariadb", "socket": "/run/s.sock", "datadir": "/var/lib/m",
                                           "stop": "systemctl stop 'maria db'", "start": ["/bin/true"]}}, "c.toml")
        assert got == MariaDBSettings(socket=Path("/run/s.sock"), datadir=Path("/var/lib/m"),
                                      stop=("systemctl", "stop", "maria db"), start=("/bin/true",))

    @pytest.mark.parametrize(("table", "said"), [
        ({"engine": "postgres"}, "must be \"sqlite\""),
        ({"engine": "mariadb", "socket": "run/s"}, "socket must be an absolute path"),
        ({"engine": "mariadb", "password": "x"}, "password is not a known key"),
        ({"engine": "sqlite", "socket": "/s"}, "applies only to engine = \"mariadb\""),
        ({"engine": "mariadb", "stop": "systemctl 'stop"}, "cannot be split into words"),
        ({"engine": "mariadb", "wait": 0}, "wait must be a number of seconds"),
    ])
    def test_refusals_name_the_key(self, table, said):
        with pytest.raises(ConfigError, match=said):
            parse_database({"database": table}, "c.toml")


class TestServerFacts:
    def test_version_and_not_galera(self, mariadb):
        facts = server_facts(settings_of(mariadb))
        assert facts.version.startswith("10.") and not facts.galera
        assert check_can_back_up(settings_of(mariadb)) == facts

    def test_wrong_socket(self, tmp_path):
        with pytest.raises(DatabaseServerError, match="not running, or \\[database\\] socket names the wrong file"):
            server_facts(MariaDBSettings(socket=tmp_path / "nothing.sock"))

    def test_server_stopped_leaves_a_dead_socket_or_none(self, mariadb_factory):
        server = mariadb_factory()
        server.stop()
        with pytest.raises(DatabaseServerError, match="not running|does not answer"):
            server_facts(settings_of(server))

    def test_access_denied_names_the_defaults_file_not_the_password(self, mariadb, tmp_path):
        secret = "s3cret-pass-word"
        mariadb.sql("CREATE USER 'weak'@'localhost' IDENTIFIED BY 'other-password'")
        defaults = tmp_path / "my.cnf"
        defaults.write_text(f"[client]\nuser=weak\npassword={secret}\n")
        defaults.chmod(0o600)
        with pytest.raises(DatabaseServerError) as caught:
            server_facts(settings_of(mariadb, defaults_file=defaults))
        assert "access denied" in str(caught.value) and str(defaults) in str(caught.value)
        assert secret not in str(caught.value)


class TestHotBackup:
    def test_under_writes_restores_one_committed_point(self, mariadb_factory, tmp_path):
        source = mariadb_factory(extra=("--log-bin=mysql-bin", "--server-id=1"))
        with Transfers(source) as transfers:
            while transfers.count < 200:
                threading.Event().wait(0.05)
            stream = tmp_path / "db.xbstream"
            with HotBackup(settings_of(source), tmp_path / "work") as backup, stream.open("wb") as out:
                for data in backup.chunks():
                    out.write(data)
            during = transfers.count
        assert backup.result.binlog_file == "mysql-bin.000001" and backup.result.gtid.startswith("0-1-")
        assert during > 200 and not (tmp_path / "work").exists()

        stage = tmp_path / "stage"
        with stream.open("rb") as src:
            unpack(src.read, stage)
        prepare(stage)
        target = mariadb_factory(start=False)
        shutil.rmtree(target.datadir)
        shutil.move(stage, target.datadir)
        target.start()
        total, rows = invariants(target)
        assert total == ACCOUNTS * OPENING_BALANCE
        assert 0 < rows
        assert check_tables(settings_of(target)) == 2

    def test_a_failing_tool_is_a_sentence_and_leaves_nothing(self, mariadb_factory, tmp_path):
        server = mariadb_factory()
        server.stop()
        with pytest.raises(DatabaseServerError, match="not running|does not answer|mariadb-backup failed"):
            with HotBackup(settings_of(server), tmp_path / "work") as backup:
                for _ in backup.chunks():
                    pass
        assert not (tmp_path / "work").exists()

    def test_a_cut_stream_is_refused_by_unpack(self, mariadb, tmp_path):
        with HotBackup(settings_of(mariadb), tmp_path / "work") as backup:
            data = b"".join(backup.chunks())
        cut = data[: len(data) // 2]
        with pytest.raises(DatabaseServerError, match="could not be unpacked"):
            unpack(_reader(cut), tmp_path / "stage")


def _reader(data: bytes):
    view = memoryview(data)
    position = 0

    def read(size: int) -> bytes:
        nonlocal position
        piece = bytes(view[position:position + size])
        position += len(piece)
        return piece

    return read


@pytest.mark.slow
class TestGalera:
    def test_synced_node_backs_up_and_a_desynced_one_is_refused(self, galera_cluster: GaleraCluster, tmp_path):
        node = galera_cluster.nodes[1]
        facts = check_can_back_up(settings_of(node))
        assert facts.galera and facts.galera_state == "Synced" and facts.cluster_size == 3
        node.sql("SET GLOBAL wsrep_desync = ON")
        try:
            with pytest.raises(DatabaseServerError, match="Galera cluster node in state .*not Synced"):
                check_can_back_up(settings_of(node))
        finally:
            node.sql("SET GLOBAL wsrep_desync = OFF")
        GaleraCluster.wait_synced(node)
        assert query(settings_of(node), "SELECT 1") == [["1"]]
