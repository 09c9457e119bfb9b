"""Tests of `backup.demo`: the demo appliance is complete, valid, bounded and reproducible."""

from __future__ import annotations

import hashlib
import sqlite3
import stat
import time
import tomllib
from pathlib import Path

import pytest

from backup.database import read_only
from backup.demo import create_demo_appliance
from backup.errors import ConfigError

TABLES = ("certificates", "audit_log", "keys_metadata", "operators", "settings")


def tree_digest(root: Path, *, exclude: set[str]) -> str:
    """sha256 over the relative path, type, mode and bytes of everything below `root`."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if relative in exclude:
            continue
        mode = path.lstat().st_mode
        digest.update(f"{relative}\0{stat.S_IFMT(mode)}\0{stat.S_IMODE(mode):o}\0".encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def dump_digest(database: Path) -> str:
    connection = sqlite3.connect(read_only(database), uri=True)
    try:
        digest = hashlib.sha256()
        for line in connection.iterdump():
            digest.update(line.encode())
            digest.update(b"\n")
        return digest.hexdigest()
    finally:
        connection.close()


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    return create_demo_appliance(tmp_path / "appliance")


def test_config_has_the_contract_keys_with_absolute_existing_paths(demo: Path) -> None:
    assert demo.is_absolute() and demo.name == "config.toml"
    config = tomllib.loads(demo.read_text(encoding="utf-8"))
    assert config["appliance"]["name"] == "demo-appliance"
    assert config["storage"]["type"] == "local"
    assert config["backup"]["prefix"] == ""
    paths = {
        "firmware": Path(config["appliance"]["firmware"]),
        "system": Path(config["appliance"]["system"]),
        "database": Path(config["appliance"]["database"]),
        "state": Path(config["state"]["dir"]),
        "storage": Path(config["storage"]["path"]),
    }
    for name, path in paths.items():
        assert path.is_absolute(), name
        assert path.exists(), name
        assert path.parent == demo.parent, name
    assert paths["database"].is_file()
    assert not any(paths["storage"].iterdir())
    assert not any(paths["state"].iterdir())
    assert stat.S_IMODE(paths["state"].stat().st_mode) == 0o700
    # No Domain Master Secret: the operator sets it first.
    assert set(config) == {"appliance", "state", "storage", "backup", "schedule", "retention", "operators"}
    assert config["schedule"]["enabled"] is False
    assert sorted(config["operators"].values()) == ["oauth", "otp"]


def test_trees_have_the_expected_shape(demo: Path) -> None:
    firmware = [p for p in (demo.parent / "firmware").rglob("*") if p.is_file()]
    system = [p for p in (demo.parent / "system").rglob("*") if p.is_file()]
    assert 10 <= len(firmware) <= 20
    assert 50 <= len(system) <= 100
    assert any(len(p.relative_to(demo.parent / "system").parts) >= 3 for p in system)
    suffixes = {p.suffix for p in system}
    assert {".ini", ".yaml", ".json", ".conf"} <= suffixes


def test_database_is_sound_and_every_table_has_rows(demo: Path) -> None:
    database = demo.parent / "internal.db"
    connection = sqlite3.connect(database)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        for table in TABLES:
            (count,) = connection.execute(f"SELECT count(*) FROM {table}").fetchone()
            assert count > 0, table
        indexes = connection.execute("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        assert indexes.fetchone()[0] >= 4
        pem = connection.execute("SELECT pem FROM certificates LIMIT 1").fetchone()[0]
        assert pem.startswith(b"-----BEGIN CERTIFICATE-----")
    finally:
        connection.close()
    # Closing the last connection checkpoints the WAL: no side files are left.
    assert not (demo.parent / "internal.db-wal").exists()


def test_same_seed_gives_the_same_appliance(tmp_path: Path) -> None:
    first = create_demo_appliance(tmp_path / "one", seed=7).parent
    second = create_demo_appliance(tmp_path / "two", seed=7).parent
    other = create_demo_appliance(tmp_path / "three", seed=8).parent
    skip = {"config.toml", "internal.db"}  # the config holds absolute paths
    assert tree_digest(first, exclude=skip) == tree_digest(second, exclude=skip)
    assert dump_digest(first / "internal.db") == dump_digest(second / "internal.db")
    assert tree_digest(first, exclude=skip) != tree_digest(other, exclude=skip)
    assert dump_digest(first / "internal.db") != dump_digest(other / "internal.db")


def test_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("operator data")
    with pytest.raises(ConfigError, match="not empty"):
        create_demo_appliance(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_refuses_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        create_demo_appliance(target)


def test_accepts_an_existing_empty_directory(tmp_path: Path) -> None:
    assert create_demo_appliance(tmp_path).parent == tmp_path


def test_size_and_speed_are_within_bounds(tmp_path: Path) -> None:
    started = time.perf_counter()
    config = create_demo_appliance(tmp_path / "appliance")
    elapsed = time.perf_counter() - started
    root = config.parent
    database = (root / "internal.db").stat().st_size
    assert 3 << 20 <= database <= 6 << 20
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total <= 7 << 20
    # The budget is 1 s; a loaded CI machine gets some slack.
    assert elapsed < 3.0
