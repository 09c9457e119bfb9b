"""Provides StorageScreen: a placeholder until storage selection comes; shows the configured storage."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Static

from backup.service import StatusReport
from screens.base import ConsoleScreen

PLACEHOLDER = ("Choosing the storage (a local directory or an NFS share) and browsing it comes in a later "
               "version. Until then the storage is set in the configuration file's [storage] section.")


class StorageScreen(ConsoleScreen):
    """Mode "storage" (key 3)."""

    SCREEN_TITLE = "Storage"

    def compose_body(self) -> ComposeResult:
        yield Static("Storage", classes="section-title")
        yield Static(PLACEHOLDER, classes="note", markup=False)
        yield Static("Configured storage: reading...", id="storage-description", classes="field", markup=False)

    def on_mount(self) -> None:
        self.watch(self.app, "report", self._show_report)

    def _show_report(self, report: StatusReport | None) -> None:
        if report is not None:
            self.query_one("#storage-description", Static).update(f"Configured storage: {report.storage or '-'}")
