"""Provides SecretForm: set the Domain Master Secret once, then say when it was set and check a passphrase.

The form never keeps a secret: inputs are masked and cleared as soon as they
are read, and what leaves the widget is wrapped in Concealed.
"""

from __future__ import annotations

from datetime import datetime

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Static

from backup.secret import MIN_LENGTH, SecretInfo, validate_passphrase
from widgets.format import timestamp
from widgets.messages import Concealed, SecretCheckRequested, SecretSubmitted
from widgets.secret_input import SecretInput

REMINDER = ("Keep a copy of it in a safe place: restoring a backup on another appliance needs it, "
            "and it can never be shown or set again.")


def show_sentence(widget: Static, sentence: str) -> None:
    """Show a message line, or take no room at all when there is nothing to say."""
    widget.update(sentence)
    widget.display = bool(sentence)


class SecretForm(Vertical):
    """The Backup Protection section of the Settings screen."""

    DEFAULT_CSS = """
    SecretForm { height: auto; }
    SecretForm #set-form, SecretForm #is-set { height: auto; }
    SecretForm Input { width: 1fr; }
    SecretForm .form-row { height: auto; }
    SecretForm .form-row > .form-label { width: 22; padding: 0 1; }
    SecretForm #secret-set-on { padding: 0 1; }
    SecretForm .form-error { color: $error; padding: 0 1; }
    SecretForm .form-note { color: $text-muted; padding: 0 1; }
    SecretForm .form-result { padding: 0 1; }
    SecretForm Button { margin: 0 1; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.info: SecretInfo | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="set-form"):
            yield Static("Set Domain Master Secret: it encrypts every backup and is set once for the "
                         f"appliance's lifetime (at least {MIN_LENGTH} characters).", classes="form-note", markup=False)
            with Horizontal(classes="form-row"):
                yield Static("Secret", classes="form-label")
                yield SecretInput(id="secret", placeholder="at least 8 characters", compact=True)
            with Horizontal(classes="form-row"):
                yield Static("Repeat the secret", classes="form-label")
                yield SecretInput(id="secret-repeat", placeholder="the same again", compact=True)
            yield Static("", id="secret-error", classes="form-error", markup=False)
            yield Button("Set Secret", id="set-secret", compact=True)
        with Vertical(id="is-set"):
            yield Static("", id="secret-set-on", markup=False)
            yield Static(REMINDER, classes="form-note", markup=False)
            with Horizontal(classes="form-row"):
                yield Static("Check a passphrase", classes="form-label")
                yield SecretInput(id="check-secret", placeholder="is this the DMS?", compact=True)
            yield Button("Check", id="check", compact=True)
            yield Static("", id="check-result", classes="form-result", markup=False)

    def on_mount(self) -> None:
        self.show(None, None)
        self.show_error("")
        self.show_check_result("")

    def show(self, info: SecretInfo | None, now: datetime | None) -> None:
        """Show the set form, or, once the DMS is set, when it was set and the check."""
        self.info = info
        is_set = bool(info and info.is_set)
        self.query_one("#set-form").display = info is not None and not is_set
        self.query_one("#is-set").display = is_set
        if is_set and info is not None:
            when = timestamp(info.set_at, now) if info.set_at and now else "an earlier date"
            self.query_one("#secret-set-on", Static).update(f"The Domain Master Secret is set (set on {when}).")

    def show_error(self, sentence: str) -> None:
        show_sentence(self.query_one("#secret-error", Static), sentence)

    def show_check_result(self, sentence: str) -> None:
        show_sentence(self.query_one("#check-result", Static), sentence)

    @on(Button.Pressed, "#set-secret")
    @on(Input.Submitted, "#secret-repeat")
    def _submit(self) -> None:
        first = self.query_one("#secret", Input)
        second = self.query_one("#secret-repeat", Input)
        passphrase, repeated = first.value, second.value
        first.clear()
        second.clear()
        problem = validate_passphrase(passphrase, repeated)
        if problem:
            self.show_error(problem)
            first.focus()
            return
        self.show_error("Setting the secret (deriving its key)...")
        self.post_message(SecretSubmitted(Concealed(passphrase)))

    @on(Input.Submitted, "#secret")
    def _next_field(self) -> None:
        self.query_one("#secret-repeat", Input).focus()

    @on(Button.Pressed, "#check")
    @on(Input.Submitted, "#check-secret")
    def _check(self) -> None:
        field = self.query_one("#check-secret", Input)
        passphrase = field.value
        field.clear()
        if not passphrase:
            self.show_check_result("Type a passphrase first, then choose Check.")
            return
        self.show_check_result("Checking...")
        self.post_message(SecretCheckRequested(Concealed(passphrase)))
