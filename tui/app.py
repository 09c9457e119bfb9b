"""Provides BackupConsole, the Textual App of appliance-backup, and `run_console`.

The App holds the modes (Status, Settings, Storage), the global plain-key
bindings, the theme, and the worker wiring: every call into the core runs on
a thread worker and comes back as a message from widgets.messages. The latest
state lives in `var`s on the App that the screens watch, so a screen that is
not shown keeps up to date without asking the core itself.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.driver import Driver
from textual.message_pump import MessagePump
from textual.reactive import var
from textual.screen import ModalScreen, Screen
from textual.scrollbar import ScrollBar, ScrollBarRender
from textual.theme import BUILTIN_THEMES

from backup import verifyjob
from backup.archive import ScryptParams
from backup.config import Config
from backup.daemon import due_now, first_baseline
from backup.errors import DmsNotSetError, LockHeldError, OperatorRefusedError, SlotAlreadyDoneError
from backup.operators import Access
from backup.progress import Progress
from backup.schedule import local_timezone, utc
from backup.secret import SecretInfo
from backup.service import BackupService, StatusReport, describe, local_now
from screens.dialogs import ConfirmQuitScreen, HelpScreen
from screens.status import StatusScreen
from widgets import profile
from widgets.messages import (
    AlertsTested,
    BackupFailed,
    BackupFinished,
    BackupProgressed,
    BackupStarted,
    BackupTaskEnded,
    BackupTaskStarted,
    Concealed,
    OperatorAccessRead,
    SecretChecked,
    SecretSet,
    SecretSetFailed,
    SettingsSaved,
    SettingsSaveFailed,
    StatusRefreshed,
    StatusUnavailable,
)

ANSI_THEME = "ansi"
"""The theme for serial lines and the Linux console: the terminal's own 16 colours."""

class AsciiScrollBarRender(ScrollBarRender):
    """Scrollbars for serial lines and the Linux console: the thumb in reverse video, no block glyphs.

    Textual draws the thumb's ends with eighth-block characters (U+2581..U+258F) that a serial
    terminal or the console's font may not have; spaces in reverse video show on any terminal.
    """

    VERTICAL_BARS = [" "] * 8
    HORIZONTAL_BARS = [" "] * 8


REFUSALS = (DmsNotSetError, LockHeldError, OperatorRefusedError)
"""Errors by which the core refuses a backup before it starts (nothing is journaled)."""


def _settings_screen() -> Screen:
    from screens.settings import SettingsScreen  # imported on first use: a faster first screen

    return SettingsScreen()


def _storage_screen() -> Screen:
    from screens.storage import StorageScreen

    return StorageScreen()


class BackupConsole(App[int]):
    """The appliance-backup console."""

    CSS_PATH = Path(__file__).with_name("app.tcss")
    """Absolute, so that subclasses in other modules (tests, benchmarks) find it too."""
    TITLE = "appliance-backup"
    MODES = {"status": StatusScreen, "settings": _settings_screen, "storage": _storage_screen}
    DEFAULT_MODE = "status"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [
        Binding("1", "show_mode('status')", "Status", id="status"),
        Binding("2", "show_mode('settings')", "Settings", id="settings"),
        Binding("3", "show_mode('storage')", "Storage", id="storage"),
        Binding("b", "back_up_now", "Back up now", id="back-up-now"),
        Binding("question_mark", "help", "Help", key_display="?", id="help"),
        Binding("q", "quit", "Quit", id="quit"),
        # ctrl+q is XON on a serial line; it stays as a second key but must ask like q.
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
        # The console writes only what changes (tui.terminal.ScreenDiff); line noise stays until redrawn.
        Binding("ctrl+l", "redraw", "Redraw the screen", show=False),
    ]

    report: var[StatusReport | None] = var(None, always_update=True)
    """The latest status report from the core."""
    secret: var[SecretInfo | None] = var(None, always_update=True)
    """Whether and when the Domain Master Secret was set (never the secret)."""
    progress: var[Progress | None] = var(None, always_update=True)
    """Progress of the backup this console runs, None when it runs none."""
    backup_running: var[bool] = var(False)
    """Whether this console runs a backup right now."""
    notice: var[str] = var("")
    """The last sentence about a refused or failed "back up now", shown on the Status screen."""
    access: var[Access | None] = var(None)
    """Who the operator is and whether they may change anything (None until first read); the core checks
    every change again, this only lets the screens say so before the operator tries."""

    def __init__(
        self,
        config: Config,
        *,
        service: BackupService | None = None,
        clock: Callable[[], datetime] | None = None,
        serial: bool | None = None,
        theme: str | None = None,
        refresh_interval: float | None = 2.0,
        run_schedule: bool = True,
        operator: str | None = None,
    ) -> None:
        """
        Args:
            config: The appliance's configuration.
            service: The core facade; made from `config` and `clock` when not given.
            clock: Time source for what is shown; the service's clock when not given.
            serial: Serial-console profile (ANSI theme, ASCII glyphs); from $TERM when None.
            theme: A theme name to start with; "ansi" on a serial console, else Textual's default.
            refresh_interval: Seconds between status refreshes; None turns the timer off (tests).
            run_schedule: Also run scheduled backups that fall due while the console is open.
            operator: `--operator`, when the service is made here (see backup.operators: the
                operator is the login unless a login with at least their rights names them).
        """
        self.serial = profile.is_serial_terminal() if serial is None else serial
        super().__init__()
        self.config = config
        self.service = service or BackupService(config, clock=clock or local_now, operator=operator)
        self.clock: Callable[[], datetime] = clock or self.service.clock
        self.schedule_tz: tzinfo | None = None if clock is not None else local_timezone()
        """Zone of schedule times (with DST rules); None follows the injected clock's zone (tests)."""
        self.glyphs = profile.glyphs_for(self.serial)
        self.refresh_interval = refresh_interval
        self._cancel = threading.Event()
        self._job_cancel = threading.Event()
        """Stops a scheduled verify job this console runs (on quit)."""
        self.verify_job_running = False
        """Whether this console runs a scheduled [verify] job right now."""
        self._browser_task: BackupTaskStarted | None = None
        """The verify, restore or delete the storage browser runs (it says when one starts and ends)."""
        self._quit_when_stopped = False
        self.run_schedule = run_schedule
        """Run due scheduled backups from the console too (off in tests that do not test it)."""
        self._started_at = self.clock()
        self._schedule_changed_at: datetime | None = None
        """When this console saved a changed schedule: its past slots are not caught up."""
        self.set_class(self.serial, "-serial")
        self.register_theme(replace(BUILTIN_THEMES["ansi-dark"], name=ANSI_THEME))
        if theme is not None:
            self.theme = theme
        elif self.serial:
            self.theme = ANSI_THEME

    # ------------------------------------------------------------ start

    def on_mount(self) -> None:
        if self.serial:
            ScrollBar.renderer = AsciiScrollBarRender
        self._watch_sigterm()
        self.start_up()
        if self.refresh_interval:
            self.set_interval(self.refresh_interval, self._periodic_refresh, name="status refresh")

    def _periodic_refresh(self) -> None:
        # While this console's own backup runs, its progress arrives as messages and the status is
        # read again when it ends; reading and redrawing the whole status meanwhile would cost the
        # event loop its longest stalls (bench/console.py measures them).
        if not self.backup_running:
            self.refresh_status()

    @work(thread=True, exclusive=True, group="status", exit_on_error=False, description="recover and read the status")
    def start_up(self) -> None:
        """Close what a crashed run left behind, then read the first status."""
        try:
            self.service.recover()
        except Exception:  # recovery is best effort; the status below says what is wrong
            pass
        self._read_status()

    @work(thread=True, exclusive=True, group="status", exit_on_error=False, description="read the status")
    def refresh_status(self) -> None:
        self._read_status()

    def _read_status(self) -> None:
        try:
            report = self.service.status()
            access = self.service.access()
        except Exception as exc:
            self.post_message(StatusUnavailable(describe(exc)))
            return
        self.post_message(OperatorAccessRead(access))
        self.post_message(StatusRefreshed(report))
        try:
            self.service.alert_tick()  # standing conditions and due alert retries, on their own thread
        except Exception:  # alerts never take the console down; their health is in the report
            pass
        if self.run_schedule and not report.running:
            try:
                self._check_schedule()
            except Exception as exc:  # the schedule never takes the console down
                self.post_message(StatusUnavailable(describe(exc)))

    def on_status_refreshed(self, message: StatusRefreshed) -> None:
        self.report = message.report
        self.secret = message.report.secret

    def on_operator_access_read(self, message: OperatorAccessRead) -> None:
        self.access = message.access

    def on_status_unavailable(self, message: StatusUnavailable) -> None:
        self.notify(message.sentence, title="Status unavailable", severity="error", markup=False)

    # ------------------------------------------------------------ modes, help, palette

    def action_show_mode(self, mode: str) -> None:
        self.switch_mode(mode)

    def action_redraw(self) -> None:
        """Write the whole screen again (ctrl+l): a serial line's noise can garble what the terminal shows."""
        redraw = getattr(self._driver, "redraw", None)  # tui.terminal.ConsoleDriver
        if redraw is not None:
            redraw()
        self.screen.refresh(repaint=True)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Behind a dialog the global keys stay quiet; the dialog has its own.
        if isinstance(self.screen, ModalScreen) and action in ("show_mode", "back_up_now", "help"):
            return False
        return True

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield SystemCommand("Status", "Show the backup status (key 1)", lambda: self.action_show_mode("status"))
        yield SystemCommand("Settings", "Domain Master Secret, filename prefix, schedule (key 2)",
                            lambda: self.action_show_mode("settings"))
        yield SystemCommand("Storage", "Where backups are kept (key 3)", lambda: self.action_show_mode("storage"))
        yield SystemCommand("Back up now", "Create a backup of this appliance now (key b)", self.action_back_up_now)
        yield SystemCommand("Send a test alert", "Send a test to every [notify] target and show what each answered",
                            self.action_notify_test)
        yield SystemCommand("Help", "Keys and what each screen does (key ?)", self.action_help)
        yield SystemCommand("Redraw the screen", "Write the whole screen again, when line noise garbled it (ctrl+l)",
                            self.action_redraw)
        for command in super().get_system_commands(screen):
            if command.title != "Quit":
                yield command
        yield SystemCommand("Quit", "Leave the console (key q); asks first while a backup runs", self.action_quit)

    # ------------------------------------------------------------ alerts

    def action_notify_test(self) -> None:
        if not self.config.notify.targets:
            self.notify("No alert target is set: add [notify.email], [notify.webhook] or [notify.syslog] to "
                        f"{self.config.path}.", title="No alert target", severity="warning", timeout=8, markup=False)
            return
        self.notify("Sending a test alert to every target...", title="Alerts", markup=False)
        self.notify_test()

    @work(thread=True, exclusive=True, group="notify", exit_on_error=False, description="send a test alert")
    def notify_test(self) -> None:
        try:
            results = self.service.alerts.test(self.config.appliance.name)
        except Exception as exc:
            self.post_message(AlertsTested([describe(exc)], all_sent=False))
            return
        lines = [f"{t.kind}: {'sent' if ok else 'FAILED'}: {answer}" for t, ok, answer in results]
        self.post_message(AlertsTested(lines, all_sent=all(ok for _, ok, _ in results)))

    def on_alerts_tested(self, message: AlertsTested) -> None:
        self.notify("\n".join(message.lines), title="Test alert", severity="information" if message.all_sent else "error",
                    timeout=15, markup=False)
        self.refresh_status()

    # ------------------------------------------------------------ back up now

    def action_back_up_now(self) -> None:
        if self.backup_running:
            self._refuse("A backup started from this console is already running: wait for it to finish.")
            return
        self._start_backup()

    def _start_backup(self, slot: datetime | None = None, catch_up: bool = False) -> None:
        self._cancel = threading.Event()
        self.backup_running = True
        self.notice = ""
        self.post_message(BackupStarted())
        self.run_backup(self._cancel, slot, catch_up)

    @work(thread=True, exclusive=True, group="backup", exit_on_error=False, description="back up now")
    def run_backup(self, cancel: threading.Event, slot: datetime | None = None, catch_up: bool = False) -> None:
        def report(progress: Progress) -> None:
            self.post_message(BackupProgressed(progress))

        try:
            result = self.service.run_backup(progress=report, cancel=cancel, slot=slot, catch_up=catch_up)
        except (*REFUSALS, SlotAlreadyDoneError) as exc:
            # For a scheduled slot, a held lock or a journalled slot means the daemon took it: say nothing.
            quiet = slot is not None and isinstance(exc, (SlotAlreadyDoneError, LockHeldError))
            self.post_message(BackupFailed(exc.message, refused=True, quiet=quiet))
        except Exception as exc:
            self.post_message(BackupFailed(describe(exc), refused=False))
        else:
            self.post_message(BackupFinished(result))

    def _check_schedule(self) -> None:
        """On the status worker: start the scheduled backup that is due, as the daemon would.

        Whichever of this console and the daemon sees a slot first runs it; the journal,
        written under the run lock, keeps it from running twice.
        """
        if self.backup_running:
            return
        runs = self.service.journal.runs()
        baseline = max((t for t in (first_baseline(runs), self._schedule_changed_at) if t is not None),
                       key=utc, default=None)
        due = due_now(self.config.schedule, runs, self.clock(), started=self._started_at, baseline=baseline)
        if due is not None:
            self.call_from_thread(self._start_scheduled, *due)
            return
        job_due = verifyjob.due(self.config.verify, runs, self.clock(), started=self._started_at)
        if job_due is not None:
            self.call_from_thread(self._start_verify_job, *job_due)

    def _start_verify_job(self, slot: datetime, catch_up: bool) -> None:
        if not self.backup_running and not self.verify_job_running:
            self.verify_job_running = True
            self.run_verify_job(slot, catch_up)

    @work(thread=True, exclusive=True, group="verify-job", exit_on_error=False, description="scheduled verify job")
    def run_verify_job(self, slot: datetime, catch_up: bool) -> None:
        """A [verify] slot, as the daemon runs it; whoever sees the slot first runs it (journal, run lock)."""
        try:
            self.service.run_verify_job(slot=slot, catch_up=catch_up, cancel=self._job_cancel)
        except Exception:  # journalled (and alerted) by the core; the Status screen shows it
            pass
        self.call_from_thread(self._verify_job_ended)

    def _verify_job_ended(self) -> None:
        self.verify_job_running = False
        if self._quit_when_stopped and self.running_run() is None:
            self.exit(0)
            return
        self.refresh_status()

    def _start_scheduled(self, slot: datetime, catch_up: bool) -> None:
        if not self.backup_running:
            self._start_backup(slot, catch_up)

    def on_backup_progressed(self, message: BackupProgressed) -> None:
        if self.backup_running:
            self.progress = message.progress

    def on_backup_finished(self, message: BackupFinished) -> None:
        self._backup_ended()
        pruned = message.result.pruned
        removed = f" Retention removed {len(pruned)} older backup{'s' if len(pruned) != 1 else ''}." if pruned else ""
        self.notify(f"The backup {message.result.name} was created.{removed}", title="Backup created", markup=False)
        self._after_backup()

    def on_backup_failed(self, message: BackupFailed) -> None:
        self._backup_ended()
        if message.quiet:
            self._after_backup()
            return
        if message.refused:
            self._refuse(message.sentence)
        else:
            self.notice = message.sentence
            self.notify(message.sentence, title="The backup could not be created", severity="error", timeout=10, markup=False)
        self._after_backup()

    def _refuse(self, sentence: str) -> None:
        self.notice = sentence
        self.notify(sentence, title="Back up now refused", severity="warning", timeout=8, markup=False)

    def _backup_ended(self) -> None:
        self.backup_running = False
        self.progress = None

    def _after_backup(self) -> None:
        if self._quit_when_stopped:
            if self.running_run() is None:
                self.exit(0)
            return
        self.refresh_status()

    # ------------------------------------------------------------ quit

    def running_run(self) -> str | None:
        """The run that quitting would stop: "backup", or "restore" or "verify" in the storage browser."""
        if self.backup_running:
            return "backup"
        if self.verify_job_running:
            return "verify"
        task = self._browser_task.task if self._browser_task is not None else None
        if task in ("restore", "verify", "verify_deep"):
            return "verify" if task == "verify_deep" else task
        return None

    async def action_quit(self) -> None:
        """Quit; while a run is in progress, ask first (the appliance must not restart during one)."""
        run = self.running_run()
        if run is None:
            self.exit(0)
            return
        if isinstance(self.screen, ConfirmQuitScreen):
            return
        self.push_screen(ConfirmQuitScreen(run), self._quit_answered)

    def _quit_answered(self, stop: bool | None) -> None:
        if not stop:
            return
        run = self.running_run()
        self.stop_and_exit()
        if run is not None:
            self.notify(f"Stopping the {run}; the console closes when it has cleaned up.", title="Stopping",
                        markup=False)

    def _watch_sigterm(self) -> None:
        """SIGTERM (shutdown, `systemctl stop`) stops a running backup cleanly, then the console exits.

        SIGHUP (the SSH connection dropped, the serial line hung up) does the same, unless the console
        was started with SIGHUP ignored (nohup): its caller asked it to outlive the terminal.
        """
        self._watched_signals = [signal.SIGTERM]
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
            self._watched_signals.append(signal.SIGHUP)
        handlers = {signal.SIGTERM: self.stop_and_exit, signal.SIGHUP: self._hung_up}
        try:
            for signum in self._watched_signals:
                asyncio.get_running_loop().add_signal_handler(signum, handlers[signum])
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            self._watched_signals = []

    def _hung_up(self) -> None:
        """The terminal hung up: draw and read nothing more, stop the run cleanly (journalled), exit."""
        hang_up = getattr(self._driver, "hang_up", None)  # tui.terminal.ConsoleDriver; not under Pilot
        if hang_up is not None:
            hang_up()
        self.stop_and_exit()

    def get_driver_class(self) -> type[Driver]:
        driver = super().get_driver_class()
        from textual.drivers.linux_driver import LinuxDriver

        if driver is LinuxDriver:
            from tui.terminal import ConsoleDriver

            return ConsoleDriver
        return driver

    def on_unmount(self) -> None:
        ScrollBar.renderer = ScrollBarRender  # a class-wide setting: put Textual's back
        for signum in getattr(self, "_watched_signals", ()):
            try:
                asyncio.get_running_loop().remove_signal_handler(signum)
            except (NotImplementedError, RuntimeError, ValueError):
                pass

    def stop_and_exit(self) -> None:
        """Stop the running backup, restore or verify (nothing partial is kept) and exit once it has cleaned up."""
        if self.running_run() is None:
            self.exit(0)
            return
        self._quit_when_stopped = True
        self._cancel.set()
        self._job_cancel.set()
        if self._browser_task is not None:
            self._browser_task.stop_task()

    @on(BackupTaskStarted)
    def _browser_run_started(self, message: BackupTaskStarted) -> None:
        self._browser_task = message

    @on(BackupTaskEnded)
    def _browser_run_ended(self) -> None:
        self._browser_task = None
        if self._quit_when_stopped and self.running_run() is None:
            self.exit(0)

    # ------------------------------------------------------------ settings

    @work(thread=True, exclusive=True, group="secret", exit_on_error=False, description="set the Domain Master Secret")
    def set_secret(self, passphrase: Concealed, reply_to: MessagePump) -> None:
        """Set the DMS; the answer goes to `reply_to` (and bubbles up to the App)."""
        try:
            info = self.service.set_secret(passphrase.reveal())
        except Exception as exc:
            reply_to.post_message(SecretSetFailed(describe(exc)))
            return
        reply_to.post_message(SecretSet(info))

    @work(thread=True, exclusive=True, group="secret", exit_on_error=False, description="check a passphrase")
    def check_secret(self, passphrase: Concealed, reply_to: MessagePump) -> None:
        """Whether `passphrase` is the DMS (runs the KDF); the answer goes to `reply_to`."""
        try:
            matches = self.service.check_secret(passphrase.reveal())
        except Exception as exc:
            reply_to.post_message(SecretChecked(None, describe(exc)))
            return
        reply_to.post_message(SecretChecked(matches))

    @on(SecretSet)
    def _secret_set(self, message: SecretSet) -> None:
        self.secret = message.info
        self.notify("The Domain Master Secret is set. Keep a copy in a safe place.", title="Secret set", markup=False)
        self.refresh_status()

    @work(thread=True, exclusive=True, group="settings", exit_on_error=False, description="save the settings")
    def save_settings(self, changes: dict[str, dict[str, Any]], reply_to: MessagePump) -> None:
        """Validate and write `changes` atomically; the answer goes to `reply_to`."""
        try:
            config = self.service.update_settings(changes)  # the core refuses a look-only operator
        except Exception as exc:
            reply_to.post_message(SettingsSaveFailed(describe(exc)))
            return
        reply_to.post_message(SettingsSaved(config))

    @on(SettingsSaved)
    def _settings_saved(self, message: SettingsSaved) -> None:
        if message.config.schedule != self.config.schedule:
            self._schedule_changed_at = self.clock()
        self.config = message.config
        # The service reads the prefix from its config when it names the next backup.
        self.service.reload(message.config)
        self.notify("The settings were saved.", title="Settings saved", markup=False)
        self.refresh_status()


def run_console(config: Config, *, theme: str | None = None, kdf_params: ScryptParams | None = None,
                operator: str | None = None) -> int:
    """Open the console on `config` for `operator` (None: the login); returns the exit code.

    Refuses before the screen opens, as every command does, when the state cannot be trusted
    (UnsafePathError) or `operator` has more rights than the login (OperatorRefusedError).
    """
    profile.ensure_terminal_size()
    service = BackupService(config, kdf_params=kdf_params, operator=operator)
    service.access()
    app = BackupConsole(config, service=service, theme=theme)
    result = app.run()
    if app.return_code not in (None, 0):
        return int(app.return_code)
    return int(result or 0)


__all__ = ["BackupConsole", "Concealed", "run_console", "ANSI_THEME"]
