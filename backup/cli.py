"""Provides the `appliance-backup` command: the console, and headless subcommands for automation.

With no subcommand it opens the console. Exit codes are those of
backup.errors.ExitCode (documented in README.md).
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import getpass
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from backup import __version__
from backup.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, Config, load_config, resolve_config_path
from backup.errors import BackupError, ConfigError, ExitCode
from backup.humanize import ago, human_bytes, printable
from backup.journal import RunRecord
from backup.progress import Progress
from backup.schedule import Schedule, local_now, next_runs, preset_cron, validate_cron
from backup.schedule import describe as describe_cron
from backup.secret import read_passphrase_file, validate_passphrase
from backup.service import (
    BackupService,
    StatusReport,
    describe,
    foreign_note,
    refused_attributes_sentence,
)
from backup.verifyjob import status_line as verify_job_line

PROG = "appliance-backup"

EPILOG = f"""\
configuration: --config PATH, else ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH}.

exit codes:
  0 success            1 failed (I/O or other)       2 usage or configuration error
  3 DMS not set        4 wrong DMS                   5 integrity failure (tampered, truncated, not a backup)
  6 lock held          7 storage unreachable/full    8 DMS already set
  9 operator refused   10 backup not found           130 interrupted (SIGINT/SIGTERM/SIGHUP)

operators: with an [operators] table, only "oauth" operators may change anything (back up, restore,
delete, prune, settings, schedule, storage, secret); "otp" and unlisted ones may only look.
"""


OPERATOR_HELP = ("who acts (default: the login: the user running the command, or the user sudo ran it for); "
                 "may not have more rights in [operators] than the login (root may name anyone)")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own exit code 2 matches ours
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


class _CommandParser(_Parser):
    """A command's parser: it takes `--operator` after the command too, without hiding one given before it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--operator", metavar="NAME", default=argparse.SUPPRESS, help=OPERATOR_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Encrypted backups of this appliance: with no command, opens the console.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="PATH", help="the appliance's configuration file")
    parser.add_argument("--theme", metavar="NAME",
                        help='console colours: a Textual theme, e.g. "ansi" (default on TERM=linux/vt100)')
    parser.add_argument("--operator", metavar="NAME", help=OPERATOR_HELP)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)

    p = sub.add_parser("run", help="back up now; prints the new backup's name")
    p = sub.add_parser("list", help="backups in the storage, newest first")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("verify", help="authenticate every byte of a backup (--deep: and every file); changes nothing")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--deep", action="store_true",
                   help="also decompress and check every file's SHA-256 (several times slower)")
    p.add_argument("--passphrase-file", metavar="F", help="the DMS the backup was made with (another appliance's)")
    p = sub.add_parser("restore", help="return the appliance to a backup's state")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--passphrase-file", metavar="F", help="the DMS the backup was made with (another appliance's)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p = sub.add_parser("status", help="current status, last successful backup, last error")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("secret", help="the Domain Master Secret (DMS)")
    secret_sub = p.add_subparsers(dest="secret_command", metavar="ACTION", required=True, parser_class=_CommandParser)
    s = secret_sub.add_parser("set", help="set the DMS (once for the appliance's lifetime)")
    s.add_argument("--passphrase-file", metavar="F", help="read the DMS from the first line of F (UTF-8; a byte-order mark is ignored)")
    p = sub.add_parser("prune", help="apply [retention]: delete this appliance's backups it does not keep")
    p.add_argument("--dry-run", action="store_true", help="only show what would be deleted and why")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("schedule", help="show or change the backup schedule")
    schedule_sub = p.add_subparsers(dest="schedule_command", metavar="ACTION", parser_class=_CommandParser)
    s = schedule_sub.add_parser("show", help="the schedule and its next runs (the default)")
    s.add_argument("--next", type=int, default=5, metavar="N", help="how many next runs to preview (default 5)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s = schedule_sub.add_parser("set", help="enable the schedule with a cron expression or a preset")
    how = s.add_mutually_exclusive_group(required=True)
    how.add_argument("--cron", metavar="EXPR", help='five cron fields in local time, e.g. "0 2 * * *"')
    how.add_argument("--daily", metavar="HH:MM", help="every day at HH:MM")
    how.add_argument("--weekly", nargs=2, metavar=("DAY", "HH:MM"), help="every week on DAY (mon..sun) at HH:MM")
    how.add_argument("--monthly", nargs=2, metavar=("D", "HH:MM"), help="every month on day D (1-28) at HH:MM")
    schedule_sub.add_parser("disable", help="turn scheduled backups off (the cron expression is kept)")
    p = sub.add_parser("notify", help="alerts of [notify]: send a test to every target")
    notify_sub = p.add_subparsers(dest="notify_command", metavar="ACTION", required=True, parser_class=_Parser)
    test = notify_sub.add_parser("test", help="send a test alert to every target now and say what each answered "
                                              "(exit 1 when one failed)")
    test.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("daemon", help="run scheduled backups until stopped (for systemd; logs to stdout)")
    p = sub.add_parser("demo", help="create a self-contained demo appliance")
    p.add_argument("dir", metavar="DIR", nargs="?", default="demo-appliance")
    return parser


Console = Callable[[Config, argparse.Namespace], int]
"""Opens the console on a configuration (tui.program passes it: the core does not know the console)."""


def main(argv: list[str] | None = None, *, console: Console | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(dispatch(args, console) or ExitCode.OK)
    except BackupError as exc:
        print(f"{PROG}: {printable(exc.message)}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted.", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return int(ExitCode.OK)
    except Exception as exc:  # never a traceback on the operator's screen
        if os.environ.get("APPLIANCE_BACKUP_DEBUG"):
            raise
        print(f"{PROG}: {printable(describe(exc))} (set APPLIANCE_BACKUP_DEBUG=1 to see where)", file=sys.stderr)
        return int(ExitCode.FAILED)


REFUSED_LISTED = 50
"""Files named after a restore that could not set some of their extended attributes (a labelled system: all)."""
STREAMING_COMMANDS = ("run", "verify", "restore")
"""One-shot commands that stream a whole backup through megabyte-sized buffers."""
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> None:
    """Let glibc reuse freed buffers within this process instead of returning them to the kernel at once.

    A backup or restore allocates and frees a megabyte-sized buffer for every
    block it streams. By default glibc gives such memory back to the kernel
    soon after it is freed, so the next block lands on fresh pages the kernel
    must fault in and zero again (bench/backup_vs_peers.py shows the cost).
    Buffers up to 32 MiB now come from the
    heap, and up to 64 MiB of freed memory stay there for reuse until the
    command ends. Only for the one-shot commands: the console and the daemon
    keep running and should hand memory back. Elsewhere than glibc nothing
    changes.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 64 << 20)


def dispatch(args: argparse.Namespace, console: Console | None = None) -> int | None:
    if args.command == "demo":
        return cmd_demo(args)
    config = load_config(resolve_config_path(args.config))
    if args.command is None:
        if console is None:
            raise ConfigError("Give a command (see --help): this entry point has no console; "
                             "run `appliance-backup` without one to open it.")
        return console(config, args)
    service = BackupService(config, operator=args.operator)
    try:
        service.access()  # an --operator with more rights than the login is refused, whatever the command
        service.recover()
        handler = {
            "run": cmd_run, "list": cmd_list, "verify": cmd_verify, "restore": cmd_restore,
            "status": cmd_status, "secret": cmd_secret, "prune": cmd_prune, "schedule": cmd_schedule,
            "daemon": cmd_daemon, "notify": cmd_notify,
        }[args.command]
        if args.command in STREAMING_COMMANDS:
            keep_freed_memory()
        if args.command not in ("daemon", "notify"):
            service.alert_tick()  # retries due alerts on a background thread; never waited for here
        if args.command in ALERTING_COMMANDS:
            _deliver_before_exit(service)
        return handler(service, args)
    finally:
        service.close()


ALERTING_COMMANDS = ("run", "verify", "restore", "prune")
"""Commands whose runs may queue alerts: the command waits a little for their delivery after its result."""


def _deliver_before_exit(service: BackupService) -> None:
    """At exit, after the result or the error is printed, give the delivery thread one attempt's time per
    target; what is not delivered by then stays queued for the daemon, the console or the next command."""
    targets = service.config.notify.targets
    if targets:
        atexit.register(service.alerts.wait, sum(t.timeout for t in targets) + 1)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM, SIGINT and SIGHUP ask the running operation to stop cleanly instead of killing it mid-write.

    SIGHUP is the terminal hanging up (an SSH session dropped); a command started with SIGHUP ignored
    (nohup) keeps ignoring it, as its caller asked.
    """
    cancel = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        cancel.set()

    watched = [signal.SIGTERM, signal.SIGINT]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        watched.append(signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in watched}
    try:
        yield cancel
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _ProgressLine:
    """A one-line progress display on stderr when it is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        pct = f"{p.fraction * 100:5.1f}%" if p.fraction is not None else "     "
        rate = f"{human_bytes(p.throughput)}/s" if p.throughput else ""
        sys.stderr.write(f"\r{pct} {printable(p.stage)[:40]:<40} {human_bytes(p.done):>10} {rate:>12}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 79 + "\r")


SKIPPED_SHOWN = 5
"""Skipped entries `run` names on stderr (all are in the backup's manifest)."""


def cmd_run(service: BackupService, args: argparse.Namespace) -> int:
    line = _ProgressLine()
    with stop_on_signals() as cancel:
        try:
            result = service.run_backup(progress=line, cancel=cancel)
        finally:
            line.close()
    print(result.name)
    if result.skipped:
        shown = ", ".join(printable(n) for n in result.skipped[:SKIPPED_SHOWN]) + (", ..." if len(result.skipped) > SKIPPED_SHOWN else "")
        print(f"not backed up: {len(result.skipped)} fifo(s), socket(s) or device(s), which no backup holds: {shown}",
              file=sys.stderr)
    for name in result.pruned:
        print(f"retention removed {printable(name)}", file=sys.stderr)
    return ExitCode.OK


def cmd_list(service: BackupService, args: argparse.Namespace) -> int:
    backups = service.list_backups()
    if args.json:
        print(_json([{"name": b.name, "size": b.size, "created_at": b.created_at.isoformat()} for b in backups]))
        return ExitCode.OK
    if not backups:
        print(f"No backups in the {service.storage.description}.", file=sys.stderr)
    for b in backups:
        print(f"{printable(b.name)}  {human_bytes(b.size):>10}  {b.created_at.astimezone():%Y-%m-%d %H:%M:%S %Z}")
    return ExitCode.OK


def _passphrase(args: argparse.Namespace) -> str | None:
    return read_passphrase_file(args.passphrase_file) if args.passphrase_file else None


def cmd_verify(service: BackupService, args: argparse.Namespace) -> int:
    line = _ProgressLine()
    with stop_on_signals() as cancel:
        try:
            result = service.verify(args.name, deep=args.deep, passphrase=_passphrase(args), progress=line,
                                    cancel=cancel)
        finally:
            line.close()
    print(f"{printable(result.name)}: OK ({result.proved()})")
    if not result.recorded:
        print(f"{PROG}: {result.NOT_RECORDED}", file=sys.stderr)
    return ExitCode.OK


def cmd_restore(service: BackupService, args: argparse.Namespace) -> int:
    passphrase = _passphrase(args)
    appliance = service.config.appliance
    service.require("restore backups")  # before asking anything
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError("Restore replaces the appliance's state: confirm with --yes when there is no terminal to ask on.")
        service.storage.stat(args.name)  # a name that is not there is said before the question, not after
        note = foreign_note(service.details(args.name, passphrase=passphrase))
        if note:
            print(note)
        print(f"Restoring {printable(args.name)} replaces, on this appliance:\n"
              f"  the firmware configuration  {appliance.firmware}\n"
              f"  the system configuration    {appliance.system}\n"
              f"  the internal database       {appliance.database}\n"
              "The current state is kept as a rollback copy in the state directory.")
        try:
            answer = input("Type 'yes' to restore: ")
        except EOFError:  # Ctrl-D: no answer is not a yes
            answer = ""
            print()
        if answer.strip().lower() != "yes":
            print("Restore cancelled; nothing was changed.")
            return ExitCode.OK
    line = _ProgressLine()
    with stop_on_signals() as cancel:
        try:
            result = service.restore(args.name, passphrase=passphrase, progress=line, cancel=cancel)
        finally:
            line.close()
    print(f"Restored {printable(result.name)} ({result.files} files). "
          f"The previous state is kept in {printable(str(result.rollback_dir))}.")
    if result.warnings:
        print(f"Warning: {refused_attributes_sentence(result.warnings, listed=False)} They are:")
        for refused in result.warnings[:REFUSED_LISTED]:
            print(f"  {printable(refused)}")
        if len(result.warnings) > REFUSED_LISTED:
            print(f"  and {len(result.warnings) - REFUSED_LISTED} more (the journal names the first ones too)")
    return ExitCode.OK


def status_json(report: StatusReport) -> dict[str, Any]:
    def run(r: RunRecord | None) -> dict[str, Any] | None:
        if r is None:
            return None
        return {"name": r.name, "started_at": r.started_at.isoformat(),
                "ended_at": r.ended_at.isoformat() if r.ended_at else None, "result": r.result,
                "size": r.size, "duration": r.duration, "error": r.error}

    last_error = None
    if report.last_failure is not None:
        last_error = {"at": report.last_failure.ended_at.isoformat() if report.last_failure.ended_at else None,
                      "result": report.last_failure.result, "message": report.last_failure.error}
    return {
        "status": report.state,
        "task": report.task,
        "progress": ({**report.progress.to_json(), "inhibitor": report.inhibitor}
                     if report.progress is not None else None),
        "last_successful_backup": run(report.last_success),
        "last_error": last_error,
        "next_scheduled_backup": report.next_scheduled.isoformat() if report.next_scheduled else None,
        "schedule": "enabled" if report.next_scheduled else "Schedule Disabled",
        "stale": report.stale,
        "warnings": report.warnings,
        "interrupted_restore": report.interrupted_restore,
        "dms_set": report.secret.is_set,
        "dms_set_at": report.secret.set_at.isoformat() if report.secret.set_at else None,
        "storage": report.storage,
        "recent_runs": [run(r) for r in report.recent],
        "alerts": [{"target": h.target, "where": h.where, "state": "ok" if h.ok else "failing",
                    "failing_since": h.failing_since.isoformat() if h.failing_since else None,
                    "last_error": h.last_error, "last_delivered_at": h.last_ok_at.isoformat() if h.last_ok_at else None,
                    "pending": h.pending} for h in report.alerts],
        "last_verify": run(report.last_verify),
        "verify_job": {
            "last": run(report.last_verify_job),
            "next": report.next_verify_job.isoformat() if report.next_verify_job else None,
            "oldest_unverified": {"name": report.oldest_unverified[0],
                                  "created_at": report.oldest_unverified[1].isoformat()}
            if report.oldest_unverified else None,
        },
    }


def cmd_status(service: BackupService, args: argparse.Namespace) -> int:
    report = service.status()
    if args.json:
        print(_json(status_json(report)))
        return ExitCode.OK
    print(f"Current Backup Status:          {report.state}" + (f" ({report.task})" if report.task else ""))
    if report.progress is not None:
        p = report.progress
        total = f" of {human_bytes(p.total)}" if p.total else ""
        print(f"  {printable(p.stage)}: {human_bytes(p.done)}{total}")
    if report.last_success and report.last_success.ended_at:
        when = report.last_success.ended_at
        print(f"Last Successful Backup:         {when:%Y-%m-%d %H:%M:%S %Z} ({ago(when, service.clock())}) {printable(report.last_success.name or '')}")
    else:
        print("Last Successful Backup:         none yet")
    print("Next Scheduled Backup:          " + (f"{report.next_scheduled:%Y-%m-%d %H:%M %Z}" if report.next_scheduled else "Schedule Disabled"))
    if report.last_failure:
        print(f"Last backup could not be made:  {printable(report.last_failure.error or '')}")
    for warning in ([report.interrupted_restore] if report.interrupted_restore else []) + \
            ([report.stale] if report.stale else []) + report.warnings:
        print(f"Warning:                        {printable(warning)}")
    if report.inhibitor:
        print(f"Shutdown:                       {printable(report.inhibitor)}")
    if not report.secret.is_set:
        print("Domain Master Secret:           not set (no backup can be made until it is)")
    print(f"Storage:                        {printable(report.storage)}")
    if report.last_verify is not None and report.last_verify.ended_at is not None:
        verify = report.last_verify
        outcome = "passed" if verify.result == "ok" else f"{verify.result}: {verify.error}"
        print(f"Last Verify:                    {verify.ended_at:%Y-%m-%d %H:%M %Z} {printable(verify.name or '')} {printable(outcome)}")
    if report.next_verify_job is not None or report.last_verify_job is not None:
        print(f"Verify Job:                     {verify_job_line(report)}")
    if report.oldest_unverified is not None:
        name, created = report.oldest_unverified
        print(f"Oldest Unverified Backup:       {printable(name)} (made {ago(created, service.clock())})")
    for health in report.alerts:
        print(f"Alerts:                         {health.line}")
    return ExitCode.OK


def cmd_secret(service: BackupService, args: argparse.Namespace) -> int:
    service.require("set the Domain Master Secret")
    service.secret.ensure_not_set()  # say so before reading or asking for anything
    if args.passphrase_file:
        passphrase = read_passphrase_file(args.passphrase_file)
    else:
        if not sys.stdin.isatty():
            raise ConfigError("There is no terminal to type the secret on: use --passphrase-file F.")
        try:
            passphrase = getpass.getpass("New Domain Master Secret (at least 8 characters): ")
            repeated = getpass.getpass("Type it again: ")
        except EOFError:  # Ctrl-D
            raise ConfigError("No secret was typed (the input ended); nothing was set.") from None
        problem = validate_passphrase(passphrase, repeated)
        if problem:
            raise ConfigError(problem)
    info = service.set_secret(passphrase)
    print(f"The Domain Master Secret is set ({info.set_at:%Y-%m-%d %H:%M %Z}). Keep a copy in a safe place: "
          "restoring on another appliance needs it, and it cannot be shown or set again.")
    return ExitCode.OK


def cmd_prune(service: BackupService, args: argparse.Namespace) -> int:
    decisions = service.prune(dry_run=args.dry_run)
    if args.json:
        print(_json([{"name": d.name, "keep": d.keep, "reasons": d.reasons} for d in decisions]))
        return ExitCode.OK
    if service.config.retention.keeps_everything:
        print("No [retention] rule is set, so every backup is kept.")
    verb = "would delete" if args.dry_run else "deleted"
    for d in decisions:
        print(f"{'keep  ' if d.keep else verb + ' '}{printable(d.name)}  ({', '.join(d.reasons)})")
    return ExitCode.OK


def cmd_schedule(service: BackupService, args: argparse.Namespace) -> int:
    config = service.config
    action = args.schedule_command or "show"
    if action in ("set", "disable"):
        service.require("change the schedule")  # before anything is read or checked
    if action == "set":
        if args.cron is not None:  # an empty value is a mistake to name, not a missing option
            problem = validate_cron(args.cron)
            if problem:
                raise ConfigError(problem)
            cron = args.cron
        elif args.daily is not None:
            cron = preset_cron("daily", args.daily)
        elif args.weekly is not None:
            cron = preset_cron("weekly", args.weekly[1], weekday=_weekday(args.weekly[0]))
        else:
            cron = preset_cron("monthly", args.monthly[1], day=_int(args.monthly[0], "day of the month"))
        config = service.update_settings(Schedule(enabled=True, cron=cron).to_config())
    elif action == "disable":
        config = service.update_settings(Schedule(enabled=False, cron=config.schedule.cron).to_config())
    count = getattr(args, "next", 5)
    if count < 0:
        raise ConfigError("--next must be 0 or more.")
    schedule = config.schedule
    upcoming = next_runs(schedule, service.clock(), count) if schedule.enabled else []
    if getattr(args, "json", False):
        print(_json({"enabled": schedule.enabled, "cron": schedule.cron, "description": describe_cron(schedule.cron),
                     "next_runs": [t.isoformat() for t in upcoming]}))
        return ExitCode.OK
    if not schedule.enabled:
        print(f"Schedule Disabled (cron {schedule.cron!r} is kept: {describe_cron(schedule.cron)})")
        return ExitCode.OK
    print(f"Schedule: {schedule.cron}  ({describe_cron(schedule.cron)})")
    for t in upcoming:
        print(f"  next: {t:%a %Y-%m-%d %H:%M %Z}")
    return ExitCode.OK


def _json(value: Any) -> str:
    """`value` as JSON for programs: a file name that is not UTF-8 is written as its bytes' \\xNN escapes.

    Python keeps such bytes as lone surrogates, which json.dumps writes as
    \\udcNN: valid for Python, refused by strict parsers (Go, serde, jq's).
    """
    def clean(item: Any) -> Any:
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                try:
                    return item.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                except UnicodeEncodeError:  # a surrogate no file name byte makes
                    return item.encode("utf-8", "backslashreplace").decode("utf-8")
            return item
        if isinstance(item, dict):
            return {clean(k): clean(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [clean(v) for v in item]
        return item

    return json.dumps(clean(value), indent=2)


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _weekday(text: str) -> int:
    """A day's number from its name or its first three letters (mon or monday, not monkey)."""
    key = text.strip().lower()
    for number, day in enumerate(WEEKDAYS):
        if key in (day, day[:3]):
            return number
    raise ConfigError(f"{text!r} is not a day of the week: use mon, tue, wed, thu, fri, sat or sun.")


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a number ({what}).") from None


def cmd_notify(service: BackupService, args: argparse.Namespace) -> int:
    targets = service.config.notify.targets
    if not targets:
        raise ConfigError(f"No alert target is set: add [notify.email], [notify.webhook] or [notify.syslog] to "
                          f"{service.config.path} (README: Alerts).")
    results = service.alerts.test(service.config.appliance.name)
    if args.json:
        print(_json([{"target": t.kind, "where": t.where, "delivered": ok, "answer": answer}
                     for t, ok, answer in results]))
    else:
        for target, ok, answer in results:
            print(f"{target.kind:<8} {target.where}: {'sent' if ok else 'FAILED'}: {answer}")
    return ExitCode.OK if all(ok for _, ok, _ in results) else ExitCode.FAILED


def cmd_daemon(service: BackupService, args: argparse.Namespace) -> int:
    from backup.daemon import run_daemon

    path = service.config.path
    service.close()  # the daemon makes its own service, and a new one whenever the file changes
    with stop_on_signals() as stop:
        # run_backup holds the shutdown inhibitor itself, for every front end.
        return run_daemon(lambda: BackupService(load_config(path)), stop=stop, clock=local_now,
                          log=lambda line: print(line, flush=True), inhibit=None)


def cmd_demo(args: argparse.Namespace) -> int:
    from backup.demo import create_demo_appliance

    directory = Path(args.dir).resolve()
    config = create_demo_appliance(directory)
    print(f"Created a demo appliance in {directory}:\n"
          f"  configuration   {config}\n"
          f"  firmware        {directory / 'firmware'}\n"
          f"  system          {directory / 'system'}\n"
          f"  database        {directory / 'internal.db'}\n"
          f"  backups go to   {directory / 'backups'}\n"
          "Try:\n"
          f"  {PROG} --config {config}                   # the console\n"
          f"  {PROG} --config {config} secret set        # set the Domain Master Secret once\n"
          f"  {PROG} --config {config} run               # back up now\n"
          f"  {PROG} --config {config} list\n"
          f"  {PROG} --config {config} status")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
