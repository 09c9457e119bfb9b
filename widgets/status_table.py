"""Provides StatusTable: the Backup Status Information table of the Status screen."""

from __future__ import annotations

from datetime import datetime

from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Static

from backup.service import StatusReport
from widgets.format import printable, timestamp, when_and_ago

ROWS = (
    ("state", "Current Backup Status"),
    ("last-success", "Last Successful Backup"),
    ("next-scheduled", "Next Scheduled Backup Execution"),
    ("last-failure", "Last Backup Could Not Be Created"),
    ("secret", "Domain Master Secret"),
    ("storage", "Storage"),
)
"""(id, label) of each row, top to bottom."""

PENDING = "reading the status..."


class StatusTable(Grid):
    """Two columns: what, and its value. Values are plain text (never markup: sentences hold brackets)."""

    DEFAULT_CSS = """
    StatusTable {
        grid-size: 2;
        grid-columns: 34 1fr;
        grid-rows: auto;
        height: auto;
        padding: 0 1;
    }
    StatusTable > .status-label { color: $text-muted; }
    StatusTable > .status-value { width: 1fr; }
    StatusTable > #value-state.running { color: $warning; text-style: bold; }
    StatusTable > #value-last-failure.failed { color: $error; }
    """

    def compose(self) -> ComposeResult:
        for key, label in ROWS:
            yield Static(label, classes="status-label", markup=False)
            yield Static(PENDING if key == "state" else "", id=f"value-{key}", classes="status-value", markup=False)

    def _set(self, key: str, text: str) -> Static:
        cell = self.query_one(f"#value-{key}", Static)
        shown = printable(text)  # errors and the storage's description hold names from the storage
        if cell.content != shown:  # an unchanged value is not drawn again (a serial line pays for every byte)
            cell.update(shown)
        return cell

    def show(self, report: StatusReport, now: datetime, *, running_here: bool = False) -> None:
        """Render `report` as of `now`."""
        running = report.running or running_here
        state = "In Progress" if running else "Not Running"
        if report.running and report.task and report.task != "backup":
            state += f" (a {report.task} holds the appliance)"
        self._set("state", state).set_class(running, "running")
        success = report.last_success
        if success is not None and success.ended_at is not None:
            self._set("last-success", when_and_ago(success.ended_at, now))
        else:
            self._set("last-success", "None yet")
        self._set("next-scheduled", timestamp(report.next_scheduled, now) if report.next_scheduled else "Schedule Disabled")
        failure = report.last_failure
        if failure is not None:
            when = failure.ended_at or failure.started_at
            text = f"{failure.error or 'The backup did not finish.'} ({timestamp(when, now)})"
            self._set("last-failure", text).add_class("failed")
        else:
            self._set("last-failure", "-").remove_class("failed")
        secret = report.secret
        if secret.is_set:
            self._set("secret", f"Set on {timestamp(secret.set_at, now)}" if secret.set_at else "Set")
        else:
            self._set("secret", "Not set: no backup can be created until it is (Settings, key 2).")
        self._set("storage", report.storage or "-")
