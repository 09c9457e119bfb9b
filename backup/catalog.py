"""Provides the catalogue of backup files: what each file's authenticated bytes say, cached in the state directory.

Retention must not trust a file's name (anyone who can write the storage
chooses it) nor its modification time. What a backup is, whose it is and when
it was made come from its header and manifest, authenticated with this
appliance's key: opening a backup reads its header and its first chunk (up to
1 MiB), which adds up over a network share holding hundreds of backups. The
catalogue keeps each file's facts in `state/backups.json`, keyed by name, size
and modification time: a file is read again only when one of them changes.
The state directory is the appliance's own (mode 0700), so its cache is
trusted like the key beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Iterable

from backup.fsutil import atomic_write_text
from backup.storage import Entry

CATALOG_FILE = "backups.json"
FUTURE_TOLERANCE = timedelta(minutes=1)
"""How far past the appliance's clock a backup's creation time may be before it is suspect (clocks
disagree by a few seconds; a backup made minutes or days "later than now" was made by a wrong clock)."""


@dataclass(frozen=True)
class BackupFacts:
    """One file, as its authenticated bytes describe it."""

    name: str
    size: int
    mtime: float
    created_at: datetime | None = None
    """From the authenticated manifest; None when the file does not open as a backup."""
    appliance: str | None = None
    """The appliance the authenticated manifest names."""
    problem: str | None = None
    """Why the file does not open as a backup (a clause: "it is empty", ...); None when it does."""

    def is_backup_of(self, appliance: str) -> bool:
        return self.problem is None and self.created_at is not None and self.appliance == appliance

    def in_future(self, now: datetime) -> bool:
        return self.created_at is not None and self.created_at > now + FUTURE_TOLERANCE

    def to_json(self) -> dict:
        return {"size": self.size, "mtime": self.mtime, "appliance": self.appliance, "problem": self.problem,
                "created_at": self.created_at.isoformat() if self.created_at else None}

    @staticmethod
    def from_json(name: str, data: dict) -> "BackupFacts":
        created = data.get("created_at")
        return BackupFacts(name=name, size=int(data["size"]), mtime=float(data["mtime"]),
                           created_at=datetime.fromisoformat(created) if created else None,
                           appliance=data.get("appliance"), problem=data.get("problem"))


Reader = Callable[[Entry], "tuple[BackupFacts, bool]"]
"""Reads one file's facts from the storage; the flag says whether they may be cached (False when the
file could not be read just now: a share that did not answer, no DMS yet)."""


class Catalog:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / CATALOG_FILE

    def cached(self) -> list[BackupFacts]:
        """The facts of the last look at the storage (for `status`, which does not look itself)."""
        files = []
        for name, data in self._load().items():
            try:
                files.append(BackupFacts.from_json(name, data))
            except (KeyError, TypeError, ValueError):
                continue
        return files

    def facts(self, entries: Iterable[Entry], read: Reader) -> list[BackupFacts]:
        """The facts of each entry: from the cache when its name, size and mtime are unchanged, else read."""
        cache = self._load()
        found: list[BackupFacts] = []
        kept: dict[str, dict] = {}
        changed = False
        for entry in entries:
            hit = cache.get(entry.name)
            facts = None
            if isinstance(hit, dict) and hit.get("size") == entry.size and hit.get("mtime") == entry.mtime:
                try:
                    facts = BackupFacts.from_json(entry.name, hit)
                except (KeyError, TypeError, ValueError):
                    facts = None
            if facts is None:
                facts, durable = read(entry)
                changed = True
                if durable:
                    kept[entry.name] = facts.to_json()
            else:
                kept[entry.name] = hit
            found.append(facts)
        if changed or set(kept) != set(cache):
            self._save(kept)
        return found

    def _load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        files = data.get("files") if isinstance(data, dict) and data.get("version") == 1 else None
        return files if isinstance(files, dict) else {}

    def _save(self, files: dict[str, dict]) -> None:
        try:
            atomic_write_text(self.path, json.dumps({"version": 1, "files": files}, separators=(",", ":")),
                              mode=0o600)
        except OSError:
            pass  # only a cache: the next look reads the files again
