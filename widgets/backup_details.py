"""Provides BackupDetailsView: the Backup Details table of one backup file.

Created at, appliance, software version, contents with sizes and file
counts, what a backup never holds (the HSM, external databases), encryption,
whether this appliance's DMS opens it, and the last verification.
"""

from __future__ import annotations

from datetime import datetime

from textual.widgets import Static

from backup.journal import RunRecord
from backup.service import BackupDetails
from widgets.format import human_bytes, timestamp
from widgets.storage_info import info_table

COMPONENT_LABELS = {"firmware": "Firmware config", "system": "System config", "database": "Internal database"}
NOT_INCLUDED = "the HSM and its keys, external databases: never part of a backup"
CIPHERS = {"aes-256-gcm": "AES-256-GCM", "chacha20-poly1305": "ChaCha20-Poly1305"}


def _created(manifest: dict, now: datetime) -> str:
    try:
        return timestamp(datetime.fromisoformat(str(manifest["created_at"])), now)
    except (KeyError, ValueError):
        return str(manifest.get("created_at", "unknown"))


def _files(count: int) -> str:
    return f"{count} file{'s' if count != 1 else ''}"


def _verification(run: RunRecord | None, now: datetime) -> str:
    if run is None:
        return "never"
    when = timestamp(run.ended_at or run.started_at, now)
    if run.result == "ok":
        return f"{when}: intact, every file checked" if run.detail == "deep" else f"{when}: intact"
    return f"{when}: {run.result} ({run.error})" if run.error else f"{when}: {run.result}"


def detail_rows(details: BackupDetails, now: datetime) -> list[tuple[str, str]]:
    """The table's rows, label and value."""
    rows = [("Backup", details.name), ("File size", human_bytes(details.size))]
    manifest = details.manifest
    if manifest is None:
        rows.append(("Contents", "unknown: this appliance's DMS does not open this backup"))
    else:
        appliance = str(manifest.get("appliance", "unknown"))
        if details.foreign and details.facts is not None:
            appliance += f": another appliance (identity {details.facts.appliance_id}), not this one"
        rows += [("Created at", _created(manifest, now))]
        if details.renamed and details.facts is not None:
            rows.append(("Written as", f"{details.facts.backup}: this file was renamed since"))
        rows += [("Appliance", appliance),
                 ("Software version", str(manifest.get("software_version", "unknown")))]
        for component in manifest.get("components", []):
            label = COMPONENT_LABELS.get(component.get("name"), str(component.get("name")))
            value = f"{human_bytes(component.get('bytes', 0))}, {_files(int(component.get('files', 0)))}"
            skipped = len(component.get("skipped") or [])
            if skipped:
                value += f" ({skipped} skipped)"
            rows.append((label, value))
    rows.append(("Not included", NOT_INCLUDED))
    rows.append(("Encryption", f"{CIPHERS.get(details.cipher, details.cipher)}, "
                               f"{human_bytes(details.chunk_size)} chunks"))
    rows.append(("This DMS opens it", "yes" if details.opens_with_this_dms
                 else "no: made with another DMS; restore asks for it"))
    rows.append(("Last verification", _verification(details.last_verification, now)))
    return rows


class BackupDetailsView(Static):
    """The Backup Details of the backup chosen in the storage browser."""

    DEFAULT_CSS = """
    BackupDetailsView { height: auto; padding: 0 1; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__("", markup=False, **kwargs)
        self.details: BackupDetails | None = None
        self.values: dict[str, str] = {}

    def show(self, details: BackupDetails, now: datetime) -> None:
        self.details = details
        rows = detail_rows(details, now)
        self.values = dict(rows)
        self.update(info_table(rows, 18))

    def clear(self) -> None:
        self.details = None
        self.values = {}
        self.update("")


__all__ = ["BackupDetailsView", "detail_rows", "NOT_INCLUDED"]
