"""Provides the appliance configuration: typed, validated, written back atomically.

The TOML keys under [appliance], [state], [storage] and [backup] are a contract
that outside checks rely on. Keys this module does not know are kept as they
are when the file is written back.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from backup.errors import ConfigError
from backup.fsutil import atomic_write_text
from backup.hooks import HOOK_KEYS, HooksConfig, parse_hooks
from backup.metrics import parse_metrics
from backup.notify import NotifyConfig, parse_notify
from backup.operators import parse_operators
from backup.retention import RetentionPolicy, parse_retention
from backup.schedule import Schedule, parse_schedule
from backup.storage.nfsurl import validate_nfs_url
from backup.verifyjob import VERIFY_KEYS, VerifyJobConfig, parse_verify

DEFAULT_CONFIG_PATH = Path("/etc/appliance-backup/config.toml")
CONFIG_ENV = "APPLIANCE_BACKUP_CONFIG"

STORAGE_TYPES = ("none", "local", "nfs")
NFS_VERSIONS = ("4", "4.1", "4.2")
PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
DEFAULT_DATABASE_WAIT = 30.0
"""Seconds a backup waits for another program's write lock on the internal database (SQLite's busy timeout)."""
MAX_AGE_HOURS = 87_840
"""[schedule] max_age_hours at most ten years: anything more is no warning, and inf broke the status."""
TABLE_LINE = re.compile(r"\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
POSITION = re.compile(r"^In (?P<path>.+?), (?:\[(?P<section>[^\]]+)\] (?P<key>[A-Za-z0-9_-]+)|(?P<table>[A-Za-z0-9_-]+) must be a table)")


@dataclass(frozen=True)
class ApplianceConfig:
    name: str
    """The appliance's name, written into every backup's manifest and file name."""
    firmware: Path
    """Directory holding the firmware configuration."""
    system: Path
    """Directory holding the system configuration."""
    database: Path
    """SQLite file of the internal database."""


@dataclass(frozen=True)
class StorageConfig:
    type: str = "none"
    path: Path | None = None
    """Directory of a "local" storage."""
    url: str | None = None
    """`nfs://host[:port]/export/dir` of an "nfs" storage."""
    version: str | None = None
    """NFS version: "4", "4.1" or "4.2"."""


@dataclass(frozen=True)
class Config:
    path: Path
    """The file this configuration was read from."""
    appliance: ApplianceConfig
    state_dir: Path
    storage: StorageConfig
    prefix: str = ""
    schedule: Schedule = field(default_factory=Schedule)
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    operators: dict[str, str] | None = None
    """Login name -> "oauth" or "otp"; None when the file has no [operators] table (no account check)."""
    max_age_hours: float | None = None
    """[schedule] max_age_hours: the last successful backup is stale when older (default: twice the interval)."""
    database_wait: float = DEFAULT_DATABASE_WAIT
    """[backup] database_wait_seconds: how long a backup waits for a write lock on the internal database to go."""
    hooks: HooksConfig = field(default_factory=HooksConfig)
    """[hooks]: commands run before and after backups and restores (backup/hooks.py)."""
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    """[notify.email], [notify.webhook], [notify.syslog]: where alerts go (backup/notify.py)."""
    metrics_textfile: Path | None = None
    """[metrics] textfile: the Prometheus .prom file written after every run (backup/metrics.py)."""
    verify: VerifyJobConfig | None = None
    """[verify]: the scheduled verify job, None when not set (backup/verifyjob.py)."""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The whole parsed document, unknown keys included."""


def resolve_config_path(arg: str | os.PathLike[str] | None) -> Path:
    """The config file to use: `--config`, else $APPLIANCE_BACKUP_CONFIG, else the system default."""
    if arg:
        return Path(arg)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH


def validate_prefix(prefix: str) -> str | None:
    """Return a sentence saying what is wrong with a backup filename prefix, or None if it is fine."""
    if prefix == "":
        return None
    if not PREFIX_RE.fullmatch(prefix):
        return (
            f"The filename prefix {prefix!r} is not allowed: use 1 to 32 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (or leave it empty)."
        )
    return None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the configuration file at `path`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # an editor's byte-order mark is not TOML's business
    except FileNotFoundError:
        raise ConfigError(
            f"The configuration file {path} does not exist: pass --config PATH, set ${CONFIG_ENV}, "
            "or create it (`appliance-backup demo` makes an example)."
        ) from None
    except PermissionError:
        raise ConfigError(f"The configuration file {path} cannot be read (permission denied): run as a user that may read it.") from None
    except IsADirectoryError:
        raise ConfigError(f"The configuration path {path} is a directory: pass the path of the config.toml file.") from None
    except NotADirectoryError:
        raise ConfigError(f"The configuration path {path} goes through a file as if it were a directory: "
                          "pass the path of the config.toml file.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"The configuration file {path} is not UTF-8 text: restore it from a copy or recreate it.") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = re.fullmatch(r"(?s)(.*) \(at (line \d+, column \d+|end of document)\)", str(exc))
        if where:
            what = where[1][:1].lower() + where[1][1:]
            fix = "fix that line" if where[2].startswith("line") else "complete its last entry"
            raise ConfigError(f"The configuration file {path} is not valid TOML at {where[2]} ({what}): {fix}.") from None
        raise ConfigError(f"The configuration file {path} is not valid TOML ({exc}): fix that line.") from None
    try:
        return parse_config(raw, path)
    except ConfigError as exc:
        raise ConfigError(_with_line(exc.message, text)) from None


def _with_line(message: str, text: str) -> str:
    """Add the line a validation error is about: "In F, [storage] type ..." -> "In F, line 12, [storage] type ..."."""
    match = POSITION.match(message)
    if match is None:
        return message
    section, key = (match["section"], match["key"]) if match["section"] else (None, match["table"])
    line = _line_of(text, section, key)
    if line is None:
        return message
    return f"In {match['path']}, line {line}, " + message[len(f"In {match['path']}, "):]


def _line_of(text: str, section: str | None, key: str) -> int | None:
    """The line that sets `key` in table `section` (None: the top level), else that table's header line."""
    current: str | None = None
    header = None
    for number, line in enumerate(text.splitlines(), start=1):
        table = TABLE_LINE.match(line)
        if table:
            current = table.group(1).strip('"')
            if current == section:
                header = number
            continue
        if current == section and re.match(rf"\s*(\"?){re.escape(key)}\1\s*=", line):
            return number
    return header


KNOWN_KEYS: dict[str, tuple[str, ...] | None] = {
    "appliance": ("name", "firmware", "system", "database"),
    "state": ("dir",),
    "storage": ("type", "path", "url", "version"),
    "backup": ("prefix", "database_wait_seconds"),
    "schedule": ("enabled", "cron", "max_age_hours"),
    "retention": None,  # its own parser names unknown keys (backup/retention.py)
    "operators": None,  # login names
    "hooks": HOOK_KEYS,
    "notify": None,  # its own parser names unknown targets and keys (backup/notify.py)
    "metrics": ("textfile",),
    "verify": VERIFY_KEYS,
}
"""Every table of the configuration and its keys: a mistyped key (enable = true) is named, not ignored."""


def _refuse_unknown(raw: dict[str, Any], path: Path) -> None:
    for section, value in raw.items():
        if section not in KNOWN_KEYS and not isinstance(value, dict):
            owner = next((name for name, keys in KNOWN_KEYS.items() if keys and section in keys), None)
            hint = f" (it belongs under [{owner}])" if owner else ""
            raise ConfigError(f"In {path}, {section} is set before any [section] header{hint}: "
                              "move the line under the section it belongs to, or remove it.")
        if section not in KNOWN_KEYS:
            close = difflib.get_close_matches(section, KNOWN_KEYS, n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else ""
            raise ConfigError(f"In {path}, [{section}] is not a section of this configuration{hint}: the sections are "
                              + ", ".join(f"[{name}]" for name in KNOWN_KEYS) + "; fix or remove it.")
        keys = KNOWN_KEYS[section]
        if keys is None or not isinstance(value, dict):
            continue
        for key in value:
            if key not in keys:
                close = difflib.get_close_matches(key, keys, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ConfigError(f"In {path}, [{section}] {key} is not a setting of [{section}]{hint}: use "
                                  + ", ".join(keys) + ", or remove the line.")


def parse_config(raw: dict[str, Any], path: Path) -> Config:
    """Validate a parsed document; every error names the file, the key and the fix."""
    _refuse_unknown(raw, path)
    reader = _Reader(raw, path)
    name = reader.string("appliance", "name")
    if not NAME_RE.fullmatch(name):
        reader.fail("appliance", "name", "must be 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    appliance = ApplianceConfig(
        name=name,
        firmware=reader.abs_path("appliance", "firmware"),
        system=reader.abs_path("appliance", "system"),
        database=reader.abs_path("appliance", "database"),
    )
    state_dir = reader.abs_path("state", "dir")
    if state_dir.exists() and not state_dir.is_dir():
        reader.fail("state", "dir", f"is {state_dir}, which is a file, not a folder: give a folder's path "
                                    "(it is made if missing)")

    storage_type = reader.string("storage", "type", default="none")
    if storage_type not in STORAGE_TYPES:
        reader.fail("storage", "type", f"is {storage_type!r}; it must be one of " + ", ".join(repr(t) for t in STORAGE_TYPES))
    storage = StorageConfig(type=storage_type)
    if storage_type == "local":
        storage = StorageConfig(type="local", path=reader.abs_path("storage", "path"))
    elif storage_type == "nfs":
        url = reader.string("storage", "url")
        problem = validate_nfs_url(url)
        if problem:
            raise ConfigError(f"In {path}, [storage] url: {problem}")
        version = reader.string("storage", "version", default="4.1")
        if version not in NFS_VERSIONS:
            reader.fail("storage", "version", f"is {version!r}; it must be one of \"4\", \"4.1\" or \"4.2\"")
        storage = StorageConfig(type="nfs", url=url, version=version)

    _refuse_overlaps(reader, appliance, state_dir, storage)

    prefix = reader.string("backup", "prefix", default="")
    problem = validate_prefix(prefix)
    if problem:
        raise ConfigError(f"In {path}, [backup] prefix: {problem}")
    schedule = parse_schedule(raw, path)
    max_age = raw.get("schedule", {}).get("max_age_hours") if isinstance(raw.get("schedule"), dict) else None
    if max_age is not None and not _number_in(max_age, 0, MAX_AGE_HOURS):
        reader.fail("schedule", "max_age_hours", f"must be a number of hours above 0 and at most {MAX_AGE_HOURS} "
                                                 f"(without quotes), not {max_age!r}")
    wait = reader.table("backup").get("database_wait_seconds", DEFAULT_DATABASE_WAIT)
    if not _number_in(wait, 0, 3600):
        reader.fail("backup", "database_wait_seconds", f"must be a number of seconds above 0 and at most 3600 "
                                                       f"(without quotes), not {wait!r}")
    return Config(path=path, appliance=appliance, state_dir=state_dir, storage=storage, prefix=prefix,
                  schedule=schedule, retention=parse_retention(raw, path), operators=parse_operators(raw, path),
                  max_age_hours=float(max_age) if max_age is not None else None, database_wait=float(wait),
                  hooks=parse_hooks(raw, path), notify=parse_notify(raw, path),
                  metrics_textfile=parse_metrics(raw, path), verify=parse_verify(raw, path), raw=raw)


def _refuse_overlaps(reader: "_Reader", appliance: ApplianceConfig, state_dir: Path, storage: StorageConfig) -> None:
    """Nothing the appliance's backups need may be at or inside a component folder.

    A restore replaces each component folder whole and stages the database
    beside it: a state directory, database, storage or second component at
    or inside one was carried off with it (restores failed half way, or
    emptied the storage), and backups inside a component held every earlier
    backup. Links are followed, except in the storage path.
    """
    real = [(where, path.resolve()) for where, path in (
        (("appliance", "firmware"), appliance.firmware), (("appliance", "system"), appliance.system),
        (("appliance", "database"), appliance.database), (("state", "dir"), state_dir))]
    if storage.type == "local" and storage.path is not None:
        # Compared as written, not resolved: a storage on a mounted share that stopped answering would
        # hang the lookup, and with it every command, even status.
        real.append((("storage", "path"), Path(os.path.normpath(storage.path))))
    for component_where, component in real[:2]:
        for where, path in real:
            if where != component_where and (path == component or component in path.parents):
                relation = "is the same folder as" if path == component else "is inside"
                reader.fail(*where, f"{relation} [{component_where[0]}] {component_where[1]} ({component}): "
                                    "a restore replaces that folder whole, so keep it elsewhere")


def _number_in(value: Any, low: float, high: float) -> bool:
    """Whether `value` is a TOML number (not a boolean) with low < value <= high; inf and nan are not."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and low < value <= high


def update_config(config: Config, changes: dict[str, dict[str, Any]]) -> Config:
    """Write `changes` (section -> key -> value; a value of None removes the key) into the
    config file atomically, keeping every other key, and return the new configuration.

    The result is validated as a whole before anything is written, so a bad
    change leaves the file as it was.
    """
    raw = copy.deepcopy(config.raw)
    for section, values in changes.items():
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"In {config.path}, [{section}] is not a table: fix the file by hand.")
        for key, value in values.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = str(value) if isinstance(value, Path) else value
    new = parse_config(raw, config.path)
    mode = 0o644
    try:
        mode = config.path.stat().st_mode & 0o777
    except OSError:
        pass
    try:  # through a link to the file it leads to: replacing the link would leave that file unchanged
        atomic_write_text(config.path.resolve(), tomli_w.dumps(raw), mode=mode)
    except OSError as exc:
        raise ConfigError(f"The configuration file {config.path} could not be written ({exc.strerror}): check the directory's permissions and free space.") from None
    return new


class _Reader:
    def __init__(self, raw: dict[str, Any], path: Path) -> None:
        self.raw = raw
        self.path = path

    def fail(self, section: str, key: str, problem: str) -> None:
        raise ConfigError(f"In {self.path}, [{section}] {key} {problem}.")

    def table(self, section: str) -> dict[str, Any]:
        table = self.raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"In {self.path}, {section} must be a table: write it as [{section}] followed by its keys.")
        return table

    def string(self, section: str, key: str, default: str | None = None) -> str:
        table = self.table(section)
        if key not in table:
            if default is not None:
                return default
            self.fail(section, key, "is missing: add it")
        value = table[key]
        if not isinstance(value, str):
            self.fail(section, key, f"must be a string in quotes, not {value!r}")
        return value

    def abs_path(self, section: str, key: str) -> Path:
        value = self.string(section, key)
        if not value:
            self.fail(section, key, "is empty: give an absolute path")
        path = Path(value)
        if not path.is_absolute():
            self.fail(section, key, f"is the relative path {value!r}: give an absolute path such as /var/lib/{value}")
        return path
