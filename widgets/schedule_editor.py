"""Provides ScheduleEditor: enable/disable, presets (daily/weekly/monthly at a time), a cron field with
a preview of the next runs, and the retention rules (keep last/daily/weekly/monthly).

Validation is backup.schedule's and backup.retention's; this widget only shows their sentences.
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Checkbox, Input, Static

from backup.errors import ConfigError
from backup.retention import KEYS as RETENTION_KEYS
from backup.retention import MAX_KEEP, RetentionPolicy
from backup.schedule import DEFAULT_CRON, Schedule, describe, next_runs, normalize_cron, preset_cron, validate_cron
from widgets.format import timestamp
from widgets.secret_form import show_sentence

PREVIEW_RUNS = 3
RETENTION_LABELS = {"keep_last": "last", "keep_daily": "daily", "keep_weekly": "weekly", "keep_monthly": "monthly"}


class AsciiCheckbox(Checkbox):
    """A checkbox drawn as [X] or [ ], readable on a serial line where colours may not show."""

    BUTTON_LEFT = "["
    BUTTON_INNER = " "
    BUTTON_RIGHT = "]"

    def watch_value(self) -> None:
        # The stock toggle shows its state by colour alone; here the mark itself says it.
        self.BUTTON_INNER = "X" if self.value else " "
        super().watch_value()
        self.refresh()


class ScheduleEditor(Vertical):
    """The Schedule and Retention section of the Settings screen."""

    DEFAULT_CSS = """
    ScheduleEditor { height: auto; }
    ScheduleEditor .form-row { height: auto; }
    ScheduleEditor .form-row > .form-label { width: 22; padding: 0 1; }
    ScheduleEditor #schedule-time { width: 7; }
    ScheduleEditor #schedule-cron { width: 1fr; }
    ScheduleEditor Button { margin: 0 0 0 1; min-width: 0; width: auto; }
    ScheduleEditor .keep-label { width: auto; padding: 0 1 0 1; }
    ScheduleEditor .keep { width: 7; }
    ScheduleEditor .form-error { color: $error; padding: 0 1; }
    ScheduleEditor #schedule-preview { color: $text-muted; padding: 0 1; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.now: datetime | None = None
        self.tz: tzinfo | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(classes="form-row"):
            yield Static("Scheduled backups", classes="form-label")
            yield AsciiCheckbox("Enabled", id="schedule-enabled", compact=True)
        with Horizontal(classes="form-row"):
            yield Static("Preset at (HH:MM)", classes="form-label")
            yield Input("02:00", id="schedule-time", max_length=5, compact=True)
            yield Button("Daily", id="preset-daily", compact=True)
            yield Button("Weekly (Mon)", id="preset-weekly", compact=True)
            yield Button("Monthly (1st)", id="preset-monthly", compact=True)
        with Horizontal(classes="form-row"):
            yield Static("Cron expression", classes="form-label")
            yield Input(DEFAULT_CRON, id="schedule-cron", placeholder="minute hour day month weekday", compact=True)
        yield Static("", id="schedule-error", classes="form-error", markup=False)
        yield Static("", id="schedule-preview", markup=False)
        with Horizontal(classes="form-row"):
            yield Static("Keep (0 = all)", classes="form-label")
            for key in RETENTION_KEYS:
                yield Static(RETENTION_LABELS[key], classes="keep-label")
                yield Input("0", id=key, classes="keep", max_length=6, compact=True)
        yield Static("", id="retention-error", classes="form-error", markup=False)

    def on_mount(self) -> None:
        show_sentence(self.query_one("#schedule-error", Static), "")
        show_sentence(self.query_one("#retention-error", Static), "")

    def load(self, schedule: Schedule, retention: RetentionPolicy, *, now: datetime, tz: tzinfo | None) -> None:
        """Show the saved settings; `now` and `tz` drive the preview of the next runs."""
        self.now, self.tz = now, tz
        self.query_one("#schedule-enabled", Checkbox).value = schedule.enabled
        self.query_one("#schedule-cron", Input).value = schedule.cron
        for key in RETENTION_KEYS:
            self.query_one(f"#{key}", Input).value = str(getattr(retention, key))
        self.refresh_preview()

    def show_problem(self, sentence: str) -> None:
        show_sentence(self.query_one("#schedule-error", Static), sentence)

    # ------------------------------------------------------------ preview

    @on(Input.Changed, "#schedule-cron")
    @on(Checkbox.Changed, "#schedule-enabled")
    def refresh_preview(self) -> None:
        enabled = self.query_one("#schedule-enabled", Checkbox).value
        cron = self.query_one("#schedule-cron", Input).value.strip()
        problem = validate_cron(cron) if (enabled or cron) else None
        self.show_problem(problem or "")
        preview = self.query_one("#schedule-preview", Static)
        if problem:
            show_sentence(preview, "")
        elif not enabled:
            show_sentence(preview, "Schedule Disabled: backups run only when started (b, or `appliance-backup run`).")
        elif self.now is not None:
            runs = next_runs(Schedule(True, normalize_cron(cron)), self.now, PREVIEW_RUNS, tz=self.tz)
            shown = ", ".join(timestamp(run, run) for run in runs) or "none"
            show_sentence(preview, f"{describe(cron)} Next runs: {shown}.")

    @on(Button.Pressed, "#preset-daily")
    @on(Button.Pressed, "#preset-weekly")
    @on(Button.Pressed, "#preset-monthly")
    def _preset(self, event: Button.Pressed) -> None:
        preset = (event.button.id or "").removeprefix("preset-")
        try:
            cron = preset_cron(preset, self.query_one("#schedule-time", Input).value)
        except ConfigError as exc:
            self.show_problem(exc.message)
            return
        self.query_one("#schedule-enabled", Checkbox).value = True
        self.query_one("#schedule-cron", Input).value = cron

    # ------------------------------------------------------------ save

    def changes(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """The config changes this section asks for, and the sentences of what is wrong (empty: fine)."""
        problems: list[str] = []
        enabled = self.query_one("#schedule-enabled", Checkbox).value
        cron = self.query_one("#schedule-cron", Input).value.strip()
        if enabled and not cron:
            problems.append(f"A schedule needs a cron expression, for example {DEFAULT_CRON!r} (every day at 02:00).")
        elif cron:
            problem = validate_cron(cron)
            if problem:
                problems.append(problem)
        self.show_problem(problems[0] if problems else "")
        schedule = {"enabled": enabled, "cron": normalize_cron(cron) if cron else None}
        retention: dict[str, int | None] = {}
        retention_problems = []
        for key in RETENTION_KEYS:
            text = self.query_one(f"#{key}", Input).value.strip() or "0"
            if not re.fullmatch(r"[0-9]+", text) or int(text) > MAX_KEEP:  # str.isdigit() takes '²' and '١'; int() not all
                retention_problems.append(
                    f"Keep {RETENTION_LABELS[key]} must be a whole number from 0 to {MAX_KEEP}, not {text!r}.")
                continue
            retention[key] = int(text) or None  # 0 is the default: the key is removed from the file
        show_sentence(self.query_one("#retention-error", Static), " ".join(retention_problems))
        problems += retention_problems
        return {"schedule": schedule, "retention": retention}, problems
