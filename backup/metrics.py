"""Provides the Prometheus metrics of [metrics] textfile, for node_exporter's textfile collector.

The file is written whole to a temporary name in the same directory and
renamed over the old one, so the collector never reads half a file. Every
sample carries the label appliance="<name>". A figure that is not known
(no backup has succeeded yet, the storage does not answer) is left out
rather than written as 0, so alert rules can tell "never" from "at 1970".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from backup.errors import ConfigError

PREFIX = "appliance_backup_"


@dataclass(frozen=True)
class Facts:
    """What the metrics say; None for what is not known."""

    appliance: str
    last_success: float | None = None
    last_failure: float | None = None
    last_size: int | None = None
    last_duration: float | None = None
    backups: int | None = None
    backups_bytes: int | None = None
    storage_free: int | None = None
    oldest_unverified_age: float | None = None
    schedule_enabled: bool = False
    next_run: float | None = None
    in_progress: bool = False
    last_verify_job: float | None = None
    """When the last verify run ended (any result)."""


METRICS = (
    ("last_success_timestamp_seconds", "last_success",
     "When the last successful backup ended (Unix time)."),
    ("last_failure_timestamp_seconds", "last_failure",
     "When the last failed or interrupted backup ended (Unix time)."),
    ("last_size_bytes", "last_size", "Size of the last successful backup file."),
    ("last_duration_seconds", "last_duration", "How long the last successful backup took."),
    ("backups", "backups", "Backup files of this appliance in the storage."),
    ("backups_size_bytes", "backups_bytes", "Total size of this appliance's backup files in the storage."),
    ("storage_free_bytes", "storage_free", "Free bytes in the storage."),
    ("oldest_unverified_age_seconds", "oldest_unverified_age",
     "Age of the oldest backup in the storage that no verify has passed (0 when every backup is verified)."),
    ("schedule_enabled", "schedule_enabled", "1 when scheduled backups are enabled."),
    ("next_run_timestamp_seconds", "next_run", "When the next scheduled backup is due (Unix time)."),
    ("in_progress", "in_progress", "1 while a backup or restore runs."),
    ("last_verify_timestamp_seconds", "last_verify_job", "When the last verify ended (Unix time)."),
)
"""(name after the prefix, Facts field, help text); every one is a gauge."""


def parse_metrics(raw: dict[str, Any], path: Path) -> Path | None:
    """[metrics] textfile: the absolute path of the .prom file, or None when not set."""
    table = raw.get("metrics", {})
    if not isinstance(table, dict):
        raise ConfigError(f"In {path}, metrics must be a table: write it as [metrics] followed by textfile = \"...\".")
    value = table.get("textfile")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"In {path}, [metrics] textfile must be a path in quotes, not {value!r}.")
    if not os.path.isabs(value):
        raise ConfigError(f"In {path}, [metrics] textfile is the relative path {value!r}: give an absolute path, "
                          "e.g. /var/lib/prometheus/node-exporter/appliance_backup.prom.")
    if not value.endswith(".prom"):
        raise ConfigError(f"In {path}, [metrics] textfile {value!r} must end in .prom: node_exporter's textfile "
                          "collector reads only those files.")
    return Path(value)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float | int | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def render(facts: Facts) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    labels = f'{{appliance="{_label(facts.appliance)}"}}'
    lines = []
    for name, attribute, help_text in METRICS:
        value = getattr(facts, attribute)
        if value is None:
            continue
        lines.append(f"# HELP {PREFIX}{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}{name} gauge")
        lines.append(f"{PREFIX}{name}{labels} {_number(value)}")
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, facts: Facts) -> None:
    """Write the metrics to `path` by rename (readable by node_exporter: mode 0644)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # not *.prom: the collector skips it
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(render(facts))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def timestamp(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None
