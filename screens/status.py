"""Provides StatusScreen: the Backup Status Information, the running backup, and recent runs."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Static

from backup.humanize import ago
from backup.progress import Progress
from backup.service import StatusReport
from backup.verifyjob import status_line as verify_job_line
from screens.base import ConsoleScreen
from widgets.recent_runs import RecentRuns, SizeTrend
from widgets.run_progress import RunProgress
from widgets.status_table import StatusTable


def _update(widget: Static, text: str) -> None:
    """Show `text`; an unchanged text is not drawn again (the status is read every few seconds)."""
    if widget.content != text:
        widget.update(text)


class StatusScreen(ConsoleScreen):
    """Mode "status" (key 1)."""

    SCREEN_TITLE = "Status"

    def compose_body(self) -> ComposeResult:
        glyphs = self.console.glyphs
        yield Static("Backup Status Information", classes="section-title")
        yield StatusTable(id="status-table")
        yield Static("", id="interrupted-restore", markup=False)
        yield Static("", id="stale", markup=False)
        yield Static("", id="alerts", markup=False)
        yield Static("", id="verify-job", markup=False)
        yield RunProgress(glyphs, id="run-progress")
        yield Static("", id="notice", markup=False)
        yield Static("Recent Runs", classes="section-title")
        yield SizeTrend(glyphs, id="size-trend")
        yield RecentRuns(id="recent-runs")

    def on_mount(self) -> None:
        self.query_one(RunProgress).display = False
        self.query_one("#notice").display = False
        self.query_one("#stale").display = False
        self.query_one("#alerts").display = False
        self.query_one("#verify-job").display = False
        self.query_one("#interrupted-restore").display = False
        self.watch(self.app, "report", self._show_report)
        self.watch(self.app, "progress", self._show_progress)
        self.watch(self.app, "backup_running", self._show_running)
        self.watch(self.app, "notice", self._show_notice)

    def _show_report(self, report: StatusReport | None) -> None:
        if report is None:
            return
        now = self.console.clock()
        self.query_one(StatusTable).show(report, now, running_here=self.console.backup_running)
        self.query_one(RecentRuns).show(report.recent, now)
        sizes = [r.size for r in reversed(report.recent) if r.result == "ok" and r.size is not None]
        self.query_one(SizeTrend).sizes = tuple(sizes[-30:])
        unfinished = report.interrupted_restore or ""
        _update(self.query_one("#interrupted-restore", Static), unfinished)
        self.query_one("#interrupted-restore").display = bool(unfinished)
        # The staleness, then the warnings (loosened permissions, a damaged journal, backups dated in the future).
        stale = "\n".join(line for line in (report.stale, *report.warnings) if line)
        _update(self.query_one("#stale", Static), stale)
        self.query_one("#stale").display = bool(stale)
        alerts = "\n".join(f"Alerts: {health.line}" for health in report.alerts)  # only when [notify] has targets
        _update(self.query_one("#alerts", Static), alerts)
        self.query_one("#alerts").display = bool(alerts)
        self.query_one("#alerts").set_class(any(not h.ok for h in report.alerts), "failing")
        job = ""
        if report.next_verify_job is not None or report.last_verify_job is not None:  # only with [verify]
            job = f"Verify job: {verify_job_line(report)}"
            if report.oldest_unverified is not None:
                name, created = report.oldest_unverified
                job += f"\nOldest unverified backup: {name} ({ago(created, now)})"
        _update(self.query_one("#verify-job", Static), job)
        self.query_one("#verify-job").display = bool(job)
        failed = report.last_verify_job is not None and report.last_verify_job.result != "ok"
        self.query_one("#verify-job").set_class(failed, "failing")
        self._show_notice(self.console.notice)
        if not self.console.backup_running:
            # A run of another process (the scheduler, `appliance-backup run`): its published progress.
            other = report.progress if report.running else None
            self.query_one(RunProgress).display = other is not None
            self.query_one(RunProgress).progress = other

    def _show_progress(self, progress: Progress | None) -> None:
        self.query_one(RunProgress).progress = progress

    def _show_running(self, running: bool) -> None:
        self.query_one(RunProgress).display = running
        if running:
            self.query_one(RunProgress).progress = self.console.progress
        if self.console.report is not None:
            self._show_report(self.console.report)

    def _show_notice(self, notice: str) -> None:
        # A refusal the core journaled is already the table's "could not be created" row: say it once.
        report = self.console.report
        journaled = report is not None and report.last_failure is not None and report.last_failure.error == notice
        widget = self.query_one("#notice", Static)
        _update(widget, notice)
        widget.display = bool(notice) and not journaled
