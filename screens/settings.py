"""Provides SettingsScreen: Backup Protection (the DMS), the backup filename prefix, and Save Settings."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Input, Static

from backup.config import Config, validate_prefix
from backup.errors import ConfigError
from backup.retention import RetentionPolicy, parse_retention
from backup.schedule import Schedule, parse_schedule
from backup.secret import SecretInfo
from screens.base import FormScreen
from widgets.messages import (
    SecretChecked,
    SecretCheckRequested,
    SecretSet,
    SecretSetFailed,
    SecretSubmitted,
    SettingsSaved,
    SettingsSaveFailed,
)
from widgets.schedule_editor import ScheduleEditor
from widgets.secret_form import SecretForm, show_sentence


class SettingsScreen(FormScreen):
    """Mode "settings" (key 2). Nothing is focused on arrival, so the plain keys 1/2/3/b/q work;
    Tab enters the fields and Esc leaves them.
    """

    SCREEN_TITLE = "Settings"

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="settings-body", can_focus=False):
            yield self.access_note()
            yield Static("Backup Protection", classes="section-title")
            yield SecretForm(id="secret-form")
            yield Static("Backup Filename", classes="section-title")
            with Horizontal(classes="form-row"):
                yield Static("Filename prefix", classes="form-label")
                yield Input(self.console.config.prefix, id="prefix", placeholder="optional, e.g. site-a",
                            max_length=32, compact=True)
            yield Static("", id="prefix-error", classes="form-error", markup=False)
            yield Static("Schedule and Retention", classes="section-title")
            yield ScheduleEditor(id="schedule-editor")
            yield Button("Save Settings", id="save", variant="primary", compact=True)
            yield Static("", id="save-result", classes="form-result", markup=False)

    def on_mount(self) -> None:
        for selector in ("#prefix-error", "#save-result"):
            show_sentence(self.query_one(selector, Static), "")
        self.watch(self.app, "secret", self._show_secret)
        self.watch_access()
        self._load_schedule(self.console.config)

    def _load_schedule(self, config: Config) -> None:
        editor = self.query_one(ScheduleEditor)
        problem = ""
        try:
            schedule = parse_schedule(config.raw, config.path)
        except ConfigError as exc:
            schedule, problem = Schedule(), exc.message
        try:
            retention = parse_retention(config.raw, config.path)
        except ConfigError as exc:
            retention, problem = RetentionPolicy(), problem or exc.message
        editor.load(schedule, retention, now=self.console.clock(), tz=self.console.schedule_tz)
        if problem:
            editor.show_problem(problem)

    def _show_secret(self, info: SecretInfo | None) -> None:
        self.query_one(SecretForm).show(info, self.console.clock())

    # ------------------------------------------------------------ the secret

    @on(SecretSubmitted)
    def _set_secret(self, message: SecretSubmitted) -> None:
        message.stop()
        self.console.set_secret(message.passphrase, self)

    @on(SecretSet)
    def _secret_set(self, message: SecretSet) -> None:
        form = self.query_one(SecretForm)
        form.show_error("")
        form.show(message.info, self.console.clock())
        self.set_focus(None)

    @on(SecretSetFailed)
    def _secret_failed(self, message: SecretSetFailed) -> None:
        self.query_one(SecretForm).show_error(message.sentence)

    @on(SecretCheckRequested)
    def _check_secret(self, message: SecretCheckRequested) -> None:
        message.stop()
        self.console.check_secret(message.passphrase, self)

    @on(SecretChecked)
    def _checked(self, message: SecretChecked) -> None:
        if message.matches is None:
            sentence = message.sentence
        elif message.matches:
            sentence = "Yes: that is the Domain Master Secret."
        else:
            sentence = "No: that is not the Domain Master Secret."
        self.query_one(SecretForm).show_check_result(sentence)

    # ------------------------------------------------------------ save

    @on(Input.Changed, "#prefix")
    def _prefix_changed(self, event: Input.Changed) -> None:
        show_sentence(self.query_one("#prefix-error", Static), validate_prefix(event.value.strip()) or "")

    @on(Button.Pressed, "#save")
    @on(Input.Submitted, "#prefix")
    @on(Input.Submitted, "#schedule-cron")
    def _save(self) -> None:
        prefix = self.query_one("#prefix", Input).value.strip()
        prefix_problem = validate_prefix(prefix)
        show_sentence(self.query_one("#prefix-error", Static), prefix_problem or "")
        changes, schedule_problems = self.query_one(ScheduleEditor).changes()
        result = self.query_one("#save-result", Static)
        if prefix_problem or schedule_problems:
            show_sentence(result, "Nothing was saved: correct the fields marked above.")
            return
        show_sentence(result, "Saving...")
        self.console.save_settings({"backup": {"prefix": prefix}, **changes}, self)

    @on(SettingsSaved)
    def _saved(self, message: SettingsSaved) -> None:
        show_sentence(self.query_one("#save-result", Static), f"Saved to {message.config.path.name}.")

    @on(SettingsSaveFailed)
    def _save_failed(self, message: SettingsSaveFailed) -> None:
        show_sentence(self.query_one("#save-result", Static), f"Nothing was saved: {message.sentence}")
