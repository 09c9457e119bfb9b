"""Provides the alerts of [notify]: email over SMTP, a webhook, syslog; delivered off the backup's path.

An event (a backup failed, ...) is put in a delivery queue in the state
directory, one file per target, and a background thread delivers it. A
delivery that fails is retried with backoff by the next process that looks
(the daemon's tick, an open console, any command); every attempt is
journalled and the health of each target (failing since when, and why) is
kept beside the queue, so it survives restarts and `status` shows it. The
backup itself only writes the queue file: a target that hangs or refuses
never delays or fails it.

Secrets: the SMTP password and the webhook's bearer token come from files
(refused when other users may read them) and appear nowhere else: not in a
message, the journal, the health file or a sentence. URLs with a user name
or password in them are refused; where a URL is shown, its query is not.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import smtplib
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from backup.errors import BackupError, ConfigError
from backup.fsutil import atomic_write_text, ensure_private_dir

EVENTS = ("backup_failed", "backup_succeeded", "stale", "verify_failed", "restore_done", "restore_failed",
          "dms_not_set")
DEFAULT_EVENTS = ("backup_failed", "stale", "verify_failed", "restore_failed", "dms_not_set")
"""What a target is sent when it names no events: every failure."""
TEST_EVENT = "test"
TARGETS = ("email", "webhook", "syslog")
TARGET_KEYS = {
    "email": ("smtp", "from", "to", "user", "password_file", "ca_file", "events", "timeout_seconds"),
    "webhook": ("url", "token_file", "ca_file", "events", "timeout_seconds"),
    "syslog": ("address", "events", "timeout_seconds"),
}
SMTP_SCHEMES = {"smtp": 25, "smtps": 465, "smtp+starttls": 587}
DEFAULT_TIMEOUT = 10.0
"""Seconds one delivery attempt may take."""
MAX_ATTEMPTS = 10
FIRST_RETRY = 30.0
MAX_RETRY = 3600.0
"""Backoff between attempts: 30 s, doubling, at most an hour; after MAX_ATTEMPTS the alert is dropped."""
ALERTS_DIR = "alerts"
EVENT_WORDS = {
    "backup_failed": "backup failed",
    "backup_succeeded": "backup succeeded",
    "stale": "no recent successful backup",
    "verify_failed": "verify failed",
    "restore_done": "restore done",
    "restore_failed": "restore failed",
    "dms_not_set": "Domain Master Secret not set",
    TEST_EVENT: "test alert",
}
WHAT_TO_DO = {
    "backup_failed": "Fix the cause the error names, then back up now (console key b, or `appliance-backup run`) "
                     "and check that it succeeds.",
    "backup_succeeded": "Nothing.",
    "stale": "Check why scheduled backups are not succeeding: `appliance-backup status` shows the last error.",
    "verify_failed": "Do not rely on this backup: take a new backup now, and check the storage for damage.",
    "restore_done": "Check that the appliance's services work as expected.",
    "restore_failed": "The appliance's previous state was kept or put back: fix the cause the error names, then "
                      "restore again.",
    "dms_not_set": "Set the Domain Master Secret (console Settings, or `appliance-backup secret set`): no scheduled "
                   "backup can run until it is.",
    TEST_EVENT: "Nothing: this is a test sent by `appliance-backup notify test`.",
}


@dataclass(frozen=True)
class Target:
    kind: str
    """"email", "webhook" or "syslog"."""
    events: tuple[str, ...]
    timeout: float = DEFAULT_TIMEOUT
    smtp: str = ""
    sender: str = ""
    recipients: tuple[str, ...] = ()
    user: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    url: str = ""
    token_file: Path | None = None
    address: str = ""

    @property
    def where(self) -> str:
        """Where it sends to, safe to show (no credentials, no query)."""
        if self.kind == "email":
            return _smtp_endpoint(self.smtp)
        if self.kind == "webhook":
            return safe_url(self.url)
        return self.address


@dataclass(frozen=True)
class NotifyConfig:
    targets: tuple[Target, ...] = ()

    def wanting(self, event: str) -> list[Target]:
        return [t for t in self.targets if event == TEST_EVENT or event in t.events]


@dataclass(frozen=True)
class Alert:
    appliance: str
    event: str
    at: datetime
    name: str | None = None
    error: str | None = None

    @property
    def subject(self) -> str:
        return f"[appliance-backup] {self.appliance}: {EVENT_WORDS.get(self.event, self.event)}"

    def text(self) -> str:
        lines = [f"Appliance:  {self.appliance}", f"Event:      {EVENT_WORDS.get(self.event, self.event)}",
                 f"Time:       {self.at.isoformat(timespec='seconds')}"]
        if self.name:
            lines.append(f"Backup:     {self.name}")
        if self.error:
            lines.append(f"Error:      {self.error}")
        lines.append(f"What to do: {WHAT_TO_DO.get(self.event, '')}")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {"appliance": self.appliance, "event": self.event, "time": self.at.isoformat(timespec="seconds"),
                "name": self.name, "error": self.error, "summary": self.subject,
                "what_to_do": WHAT_TO_DO.get(self.event, "")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alert:
        return cls(appliance=data["appliance"], event=data["event"], at=datetime.fromisoformat(data["time"]),
                   name=data.get("name"), error=data.get("error"))


@dataclass(frozen=True)
class TargetHealth:
    target: str
    where: str
    ok: bool
    """False while the newest attempt failed."""
    last_ok_at: datetime | None = None
    failing_since: datetime | None = None
    last_error: str | None = None
    pending: int = 0
    """Alerts queued for it, not yet delivered."""

    @property
    def line(self) -> str:
        """"email failing since ...: why", or "webhook ok"."""
        if not self.ok and self.failing_since is not None:
            since = self.failing_since.astimezone().strftime("%Y-%m-%d %H:%M")
            return f"{self.target} failing since {since}: {self.last_error}"
        if self.pending:
            return f"{self.target}: {self.pending} alert(s) waiting to be sent"
        return f"{self.target} ok"


class DeliveryError(Exception):
    """One attempt failed; the message is a phrase safe to show and journal."""


# ---------------------------------------------------------------- configuration


def parse_notify(raw: dict[str, Any], path: Path) -> NotifyConfig:
    table = raw.get("notify", {})
    if not isinstance(table, dict):
        raise ConfigError(f"In {path}, notify must be a table: write its targets as [notify.email], "
                          "[notify.webhook] or [notify.syslog].")
    targets = []
    for kind, value in table.items():
        if kind not in TARGETS:
            raise ConfigError(f"In {path}, [notify.{kind}] is not an alert target: use [notify.email], "
                              "[notify.webhook] or [notify.syslog], or remove it.")
        if not isinstance(value, dict):
            raise ConfigError(f"In {path}, notify.{kind} must be a table: write it as [notify.{kind}] followed by "
                              "its keys.")
        targets.append(_parse_target(kind, value, path))
    return NotifyConfig(tuple(targets))


def _parse_target(kind: str, table: dict[str, Any], path: Path) -> Target:
    where = f"In {path}, [notify.{kind}]"
    keys = TARGET_KEYS[kind]
    for key in table:
        if key not in keys:
            raise ConfigError(f"{where} {key} is not a setting of [notify.{kind}]: use " + ", ".join(keys)
                              + ", or remove the line.")

    def optional(key: str) -> str | None:
        if key not in table:
            return None
        value = table[key]
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where} {key} must be a non-empty string in quotes, not {value!r}.")
        return value

    def string(key: str) -> str:
        value = optional(key)
        if value is None:
            raise ConfigError(f"{where} {key} is missing: add it.")
        return value

    def file(key: str) -> Path | None:
        value = optional(key)
        if value is None:
            return None
        if not os.path.isabs(value):
            raise ConfigError(f"{where} {key} is the relative path {value!r}: give an absolute path.")
        return Path(value)

    events = table.get("events", list(DEFAULT_EVENTS))
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise ConfigError(f"{where} events must be a list of event names, e.g. [\"backup_failed\", \"stale\"].")
    for event in events:
        if event not in EVENTS:
            raise ConfigError(f"{where} events names {event!r}, which is not an event: use "
                              + ", ".join(EVENTS) + ".")
    timeout = table.get("timeout_seconds", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 300:
        raise ConfigError(f"{where} timeout_seconds must be a number of seconds above 0 and at most 300 "
                          f"(without quotes), not {timeout!r}.")
    common: dict[str, Any] = {"kind": kind, "events": tuple(events), "timeout": float(timeout)}
    if kind == "email":
        smtp = string("smtp")
        problem = _smtp_problem(smtp)
        if problem:
            raise ConfigError(f"{where} smtp {problem}.")
        recipients = table.get("to")
        if isinstance(recipients, str):
            recipients = [recipients]
        if (not isinstance(recipients, list) or not recipients
                or not all(isinstance(r, str) and "@" in r and "\n" not in r for r in recipients)):
            raise ConfigError(f"{where} to must be a list of email addresses, e.g. [\"ops@example.org\"].")
        sender = string("from")
        if "@" not in sender or "\n" in sender:
            raise ConfigError(f"{where} from must be an email address, not {sender!r}.")
        user, password_file = optional("user"), file("password_file")
        if (user is None) != (password_file is None):
            raise ConfigError(f"{where}: set user and password_file together (or neither).")
        return Target(smtp=smtp, sender=sender, recipients=tuple(recipients), user=user,
                      password_file=password_file, ca_file=file("ca_file"), **common)
    if kind == "webhook":
        url = string("url")
        problem = _url_problem(url)
        if problem:
            raise ConfigError(f"{where} url {problem}.")
        return Target(url=url, token_file=file("token_file"), ca_file=file("ca_file"), **common)
    address = string("address")
    if not (address.startswith("/") or address.startswith("udp://")):
        raise ConfigError(f"{where} address must be a socket's path (\"/dev/log\") or \"udp://host:514\", "
                          f"not {address!r}.")
    if address.startswith("udp://"):
        try:
            _udp_address(address)
        except ValueError:
            raise ConfigError(f"{where} address {address!r} must be udp://host or udp://host:port.") from None
    return Target(address=address, **common)


def _smtp_problem(url: str) -> str | None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SMTP_SCHEMES:
        return (f"must start with smtp:// (plain), smtp+starttls:// or smtps:// (TLS), not {url!r}")
    if parts.username or parts.password or "@" in parts.netloc:
        return "must not hold a user name or password: set user and password_file instead"
    try:
        parts.port
    except ValueError:
        return "has a port that is not a number from 1 to 65535"
    if not parts.hostname:
        return "names no server: write smtp://host:port"
    return None


def _url_problem(url: str) -> str | None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "must start with https:// (or http://)"
    if parts.username or parts.password or "@" in parts.netloc:
        return "must not hold a user name or password: put a bearer token in a file and set token_file"
    try:
        parts.port
    except ValueError:
        return "has a port that is not a number from 1 to 65535"
    if not parts.hostname:
        return "names no server"
    return None


def safe_url(url: str) -> str:
    """The URL without credentials, query or fragment: fit to show."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _smtp_endpoint(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or SMTP_SCHEMES.get(parts.scheme, 25)}"


def _udp_address(address: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(address)
    if not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(address)
    return parts.hostname, parts.port or 514


# ---------------------------------------------------------------- sending


def read_secret_file(path: Path, what: str) -> str:
    """The first line of a credentials file that only its owner may read."""
    try:
        st = path.stat()
        if st.st_mode & 0o077:
            raise DeliveryError(f"the {what} file {path} may be read by other users (mode "
                                f"{st.st_mode & 0o777:04o}): run `chmod 600 {path}`")
        text = path.read_text(encoding="utf-8-sig")
    except DeliveryError:
        raise
    except OSError as exc:
        raise DeliveryError(f"the {what} file {path} cannot be read ({exc.strerror or exc})") from None
    line = text.splitlines()[0].strip() if text.strip() else ""
    if not line:
        raise DeliveryError(f"the {what} file {path} is empty")
    return line


def send(target: Target, alert: Alert) -> str:
    """Deliver `alert` to `target` once; return what the far end answered; raise DeliveryError."""
    try:
        if target.kind == "email":
            return _send_email(target, alert)
        if target.kind == "webhook":
            return _send_webhook(target, alert)
        return _send_syslog(target, alert)
    except DeliveryError:
        raise
    except ssl.SSLCertVerificationError as exc:
        raise DeliveryError(f"the TLS certificate of {target.where} was not accepted "
                            f"({exc.verify_message or exc.reason}): give the server a valid certificate, or set "
                            "ca_file to the CA that signed it") from None
    except ssl.SSLError as exc:
        raise DeliveryError(f"TLS with {target.where} failed ({exc.reason or exc})") from None
    except TimeoutError:
        raise DeliveryError(f"no answer from {target.where} within {target.timeout:g} s") from None
    except ConnectionRefusedError:
        raise DeliveryError(f"{target.where} refused the connection (nothing listens there)") from None
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(f"{target.where} refused the user name or password ({exc.smtp_code})") from None
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = next(iter(exc.recipients.values()))
        raise DeliveryError(f"{target.where} refused the recipients ({code} {_said(text)})") from None
    except smtplib.SMTPResponseException as exc:
        raise DeliveryError(f"{target.where} answered {exc.smtp_code} {_said(exc.smtp_error)}") from None
    except smtplib.SMTPException as exc:
        raise DeliveryError(f"SMTP with {target.where} failed ({type(exc).__name__})") from None
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"{target.where} answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise DeliveryError(f"the TLS certificate of {target.where} was not accepted "
                                f"({reason.verify_message or reason.reason}): give the server a valid certificate, "
                                "or set ca_file to the CA that signed it") from None
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise DeliveryError(f"no answer from {target.where} within {target.timeout:g} s") from None
        if isinstance(reason, ConnectionRefusedError):
            raise DeliveryError(f"{target.where} refused the connection (nothing listens there)") from None
        why = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        raise DeliveryError(f"{target.where} could not be reached ({why})") from None
    except OSError as exc:
        raise DeliveryError(f"{target.where} could not be reached ({exc.strerror or exc})") from None


def _said(text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(text.split())[:200]


def _tls_context(target: Target) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(target.ca_file) if target.ca_file else None)


def _send_email(target: Target, alert: Alert) -> str:
    parts = urllib.parse.urlsplit(target.smtp)
    host, port = parts.hostname or "", parts.port or SMTP_SCHEMES[parts.scheme]
    password = read_secret_file(target.password_file, "SMTP password") if target.password_file else None
    message = EmailMessage()
    message["Subject"] = alert.subject
    message["From"] = target.sender
    message["To"] = ", ".join(target.recipients)
    message["Date"] = formatdate(alert.at.timestamp(), localtime=True)
    message["Message-ID"] = make_msgid(domain=target.sender.rsplit("@", 1)[-1])
    message.set_content(alert.text())
    if parts.scheme == "smtps":
        client: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=target.timeout, context=_tls_context(target))
    else:
        client = smtplib.SMTP(host, port, timeout=target.timeout)
    with client:
        if parts.scheme == "smtp+starttls":
            client.starttls(context=_tls_context(target))
        if target.user and password is not None:
            client.login(target.user, password)
        refused = client.send_message(message)
    accepted = len(target.recipients) - len(refused)
    return f"{_smtp_endpoint(target.smtp)} accepted the message for {accepted} recipient(s)"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a new place to send the token to."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


def _send_webhook(target: Target, alert: Alert) -> str:
    headers = {"Content-Type": "application/json", "User-Agent": "appliance-backup"}
    if target.token_file is not None:
        headers["Authorization"] = "Bearer " + read_secret_file(target.token_file, "bearer token")
    body = json.dumps(alert.to_json()).encode()
    request = urllib.request.Request(target.url, data=body, headers=headers, method="POST")
    handlers: list[Any] = [_NoRedirect()]
    if target.url.startswith("https:"):
        handlers.append(urllib.request.HTTPSHandler(context=_tls_context(target)))
    opener = urllib.request.build_opener(*handlers)
    with opener.open(request, timeout=target.timeout) as response:
        status = response.status
        reason = response.reason
    if not 200 <= status < 300:
        raise DeliveryError(f"{target.where} answered HTTP {status} {reason}")
    return f"{target.where} answered HTTP {status} {reason}"


SYSLOG_FACILITY_DAEMON = 3
SEVERITY = {"backup_succeeded": 6, "restore_done": 6, TEST_EVENT: 6}
"""Syslog severities: informational for good news, else error (3)."""


def syslog_message(alert: Alert) -> bytes:
    """The RFC 5424 message: <PRI>1 TIMESTAMP HOST APP PROCID MSGID - MSG."""
    pri = SYSLOG_FACILITY_DAEMON * 8 + SEVERITY.get(alert.event, 3)
    stamp = alert.at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    host = (socket.gethostname() or "-").split()[0][:255] or "-"
    text = f"{alert.subject}: " + " ".join(alert.text().split("\n")[2:]).strip()
    text = " ".join(text.split())
    return f"<{pri}>1 {stamp} {host} appliance-backup {os.getpid()} {alert.event} - ".encode() + text.encode()


def _send_syslog(target: Target, alert: Alert) -> str:
    data = syslog_message(alert)
    if target.address.startswith("udp://"):
        host, port = _udp_address(target.address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(target.timeout)
            sock.sendto(data, (host, port))
        return f"sent to {target.address} (UDP has no answer)"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(target.timeout)
            sock.connect(target.address)
            sock.send(data)
    except OSError as exc:
        if exc.errno != errno.EPROTOTYPE:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
                raise DeliveryError(f"no syslog daemon listens on {target.address}") from None
            raise
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # RFC 6587 octet counting
            sock.settimeout(target.timeout)
            sock.connect(target.address)
            sock.sendall(f"{len(data)} ".encode() + data)
    return f"the syslog socket {target.address} took the message"


# ---------------------------------------------------------------- the queue


class AlertQueue:
    """The alerts waiting in the state directory, and each target's health."""

    def __init__(self, state_dir: Path, config: NotifyConfig, journal: Any, clock: Callable[[], datetime]) -> None:
        self.dir = Path(state_dir) / ALERTS_DIR
        self.queue_dir = self.dir / "queue"
        self.health_path = self.dir / "health.json"
        self.conditions_path = self.dir / "conditions.json"
        self.config = config
        self.journal = journal
        self.clock = clock
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()
        self._again = False
        self._running = False

    def enqueue(self, alert: Alert) -> int:
        """Queue `alert` for every target that wants its event; return how many. Never raises."""
        count = 0
        for target in self.config.wanting(alert.event):
            item = {"target": target.kind, "alert": alert.to_json(), "attempts": 0,
                    "next_at": self.clock().isoformat()}
            stamp = alert.at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%f")
            try:
                ensure_private_dir(self.queue_dir)
                atomic_write_text(self.queue_dir / f"{stamp}-{secrets.token_hex(3)}-{target.kind}.json",
                                  json.dumps(item), mode=0o600)
                count += 1
            except (OSError, BackupError):
                continue  # the backup's result stands; the journal has it, and the next status shows it
        return count

    def kick(self) -> threading.Thread | None:
        """Deliver what is due on a background thread (one at a time in this process); return it."""
        if not self.config.targets:
            return None
        with self._guard:
            self._again = True  # a pass already running may have looked at the queue before the newest alert
            if not self._running:
                self._running = True
                self._thread = threading.Thread(target=self._deliver_loop, name="alert-delivery", daemon=True)
                self._thread.start()
            return self._thread

    def _deliver_loop(self) -> None:
        while True:
            with self._guard:
                if not self._again:
                    self._running = False
                    return
                self._again = False
            try:
                self.deliver_due()
            except Exception:  # a delivery bug must not end the loop with _running still set
                with self._guard:
                    self._running = False
                raise

    def wait(self, timeout: float) -> None:
        """Wait at most `timeout` seconds for the background delivery to end."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def deliver_due(self) -> None:
        """One pass over the queue: try each due alert once; a target that fails is left for its next retry."""
        try:
            ensure_private_dir(self.dir)
            lock = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except (OSError, BackupError):
            return
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # another process delivers right now
            targets = {t.kind: t for t in self.config.targets}
            failed: set[str] = set()
            for path in sorted(self.queue_dir.glob("*.json")):
                try:
                    item = json.loads(path.read_text())
                    alert = Alert.from_json(item["alert"])
                    due = datetime.fromisoformat(item["next_at"])
                except (OSError, ValueError, KeyError, TypeError):
                    path.unlink(missing_ok=True)  # damaged: nothing to deliver
                    continue
                target = targets.get(item.get("target"))
                if target is None:
                    path.unlink(missing_ok=True)  # the target was removed from [notify]
                    continue
                now = self.clock()
                if due > now + timedelta(seconds=MAX_RETRY):
                    due = now  # the clock went back (it was set wrong when the retry was planned): retry now
                if target.kind in failed or due > now:
                    continue
                try:
                    answer = send(target, alert)
                except DeliveryError as exc:
                    failed.add(target.kind)
                    self._failed(path, item, target, alert, str(exc))
                else:
                    path.unlink(missing_ok=True)
                    self._record(target, alert, True, answer)
        finally:
            os.close(lock)

    def _failed(self, path: Path, item: dict[str, Any], target: Target, alert: Alert, error: str) -> None:
        item["attempts"] = int(item.get("attempts", 0)) + 1
        if item["attempts"] >= MAX_ATTEMPTS:
            path.unlink(missing_ok=True)
            self._record(target, alert, False, error, gave_up=True)
            return
        delay = min(FIRST_RETRY * 2 ** (item["attempts"] - 1), MAX_RETRY)
        item["next_at"] = (self.clock() + timedelta(seconds=delay)).isoformat()
        item["last_error"] = error
        try:
            atomic_write_text(path, json.dumps(item), mode=0o600)
        except OSError:
            pass
        self._record(target, alert, False, error)

    def _record(self, target: Target, alert: Alert, ok: bool, said: str, gave_up: bool = False) -> None:
        now = self.clock()
        health = self._read_json(self.health_path)
        entry: dict = health.get(target.kind) or {}
        if not isinstance(entry, dict):
            entry = {}
        if ok:
            entry = {"last_ok_at": now.isoformat(), "failing_since": None, "last_error": None}
        else:
            entry = {**entry, "failing_since": entry.get("failing_since") or now.isoformat(), "last_error": said}
        health[target.kind] = entry
        try:
            ensure_private_dir(self.dir)
            atomic_write_text(self.health_path, json.dumps(health), mode=0o600)
        except (OSError, BackupError):
            pass
        outcome = "delivered" if ok else ("given up" if gave_up else "failed")
        try:
            self.journal.event("alert", now=now, target=target.kind, where=target.where, alert=alert.event,
                               name=alert.name, outcome=outcome, answer=said)
        except BackupError:
            pass

    def test(self, appliance: str) -> list[tuple[Target, bool, str]]:
        """Send a test alert to every target now, in turn; (target, delivered, what it answered)."""
        alert = Alert(appliance=appliance, event=TEST_EVENT, at=self.clock())
        results = []
        for target in self.config.targets:
            try:
                answer = send(target, alert)
                ok = True
            except DeliveryError as exc:
                answer, ok = str(exc), False
            self._record(target, alert, ok, answer)
            results.append((target, ok, answer))
        return results

    def health(self) -> list[TargetHealth]:
        data = self._read_json(self.health_path)
        pending: dict[str, int] = {}
        try:
            for path in self.queue_dir.glob("*.json"):
                kind = path.stem.rsplit("-", 1)[-1]
                pending[kind] = pending.get(kind, 0) + 1
        except OSError:
            pass
        result = []
        for target in self.config.targets:
            entry: dict = data.get(target.kind) or {}
            if not isinstance(entry, dict):
                entry = {}
            failing = _time(entry.get("failing_since"))
            result.append(TargetHealth(target=target.kind, where=target.where, ok=failing is None,
                                       last_ok_at=_time(entry.get("last_ok_at")), failing_since=failing,
                                       last_error=entry.get("last_error") if failing else None,
                                       pending=pending.get(target.kind, 0)))
        return result

    def condition(self, key: str, value: str | None) -> bool:
        """Remember a standing condition (e.g. "stale" with what it is about); True when it is new.

        A condition alerts once when it begins, not on every look while it lasts.
        """
        data = self._read_json(self.conditions_path)
        if data.get(key) == value:
            return False
        data[key] = value
        try:
            ensure_private_dir(self.dir)
            atomic_write_text(self.conditions_path, json.dumps(data), mode=0o600)
        except (OSError, BackupError):
            return False  # cannot remember it: better silent than an alert on every look
        return value is not None

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
