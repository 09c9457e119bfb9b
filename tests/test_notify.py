"""Alerts by email, webhook and syslog, against real servers on loopback (tests/alert_servers.py).

Good servers (plain SMTP, STARTTLS and implicit TLS with a test CA, with
and without a login; HTTP and HTTPS; a syslog datagram socket and UDP), and
bad ones: a server that refuses (550, HTTP 500, nothing listening), one that
hangs (accepts, never answers), one with a certificate nobody trusts.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from backup.config import Config, load_config, update_config
from backup.errors import ConfigError
from backup.notify import MAX_ATTEMPTS, Alert, DeliveryError, Target, send
from backup.service import BackupService
from tests.alert_servers import (
    Mailbox,
    WebhookLog,
    free_port,
    hanging_server,
    http_server,
    make_certificates,
    smtp_server,
    syslog_udp,
    syslog_unix_socket,
)
from tests.common import FAST_KDF, PASSPHRASE, run_cli
from tests.test_hooks import service_with, with_sections

WAIT = 60
"""Seconds a test waits for a background delivery before it fails (a hang guard, not a measurement)."""
SMTP_PASSWORD = "s3cret-smtp-pass"
TOKEN = "tok-0123456789abcdef"


class Clock:
    """A clock the test moves by hand (retries are due at a time)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 3, 2, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def email_section(port: int, scheme: str = "smtp", extra: str = "") -> str:
    return (f'[notify.email]\nsmtp = "{scheme}://127.0.0.1:{port}"\nfrom = "appliance@example.org"\n'
            f'to = ["ops@example.org"]\ntimeout_seconds = 5\n{extra}')


def fail_a_backup(service: BackupService) -> str:
    """A real failed backup: the internal database is gone."""
    service.config.appliance.database.rename(service.config.appliance.database.with_suffix(".away"))
    with pytest.raises(ConfigError):
        service.run_backup()
    service.config.appliance.database.with_suffix(".away").rename(service.config.appliance.database)
    return service.journal.runs()[-1].error


@pytest.fixture
def certs(tmp_path: Path):
    folder = tmp_path / "certs"
    folder.mkdir()
    return make_certificates(folder)


def secret_file(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


# ---------------------------------------------------------------- email


def test_a_failed_backup_is_mailed_short_and_complete(appliance: Config) -> None:
    with smtp_server() as (port, mailbox):
        service = service_with(appliance, email_section(port))
        error = fail_a_backup(service)
        assert mailbox.received.wait(WAIT)
        service.alerts.wait(WAIT)
    mail = mailbox.messages[0]
    assert mail["to"] == ["ops@example.org"] and mail["from"] == "appliance@example.org"
    parsed = email.message_from_string(mail["data"], policy=email.policy.default)
    assert parsed["Subject"] == "[appliance-backup] demo-appliance: backup failed"
    body = parsed.get_content()
    assert "Appliance:  demo-appliance" in body and "Event:      backup failed" in body
    assert re.search(r"Time:       \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", body)
    assert f"Backup:     {service.journal.runs()[-1].name}" in body
    assert f"Error:      {error}" in body
    assert "What to do: Fix the cause" in body
    health = service.status().alerts[0]
    assert health.ok and health.target == "email" and health.last_ok_at is not None


def test_success_is_sent_only_to_targets_that_ask(appliance: Config) -> None:
    with smtp_server() as (port, mailbox), http_server() as (web, log):
        service = service_with(appliance, email_section(port) +
                               f'[notify.webhook]\nurl = "http://127.0.0.1:{web}/hook"\n'
                               'events = ["backup_succeeded"]\n')
        service.run_backup()
        assert log.received.wait(WAIT)
        service.alerts.wait(WAIT)
    assert log.requests[0]["body"]["event"] == "backup_succeeded"
    assert mailbox.messages == []  # email wants failures only (the default)


def test_starttls_with_a_login_and_the_password_stays_secret(appliance: Config, certs, tmp_path: Path) -> None:
    password = secret_file(tmp_path / "smtp.pass", SMTP_PASSWORD)
    with smtp_server(tls=certs.server_context(), starttls=True, auth=True) as (port, mailbox):
        service = service_with(appliance, email_section(
            port, "smtp+starttls", f'user = "backup"\npassword_file = "{password}"\nca_file = "{certs.ca}"\n'))
        fail_a_backup(service)
        assert mailbox.received.wait(WAIT)
        service.alerts.wait(WAIT)
    assert mailbox.logins == [("backup", SMTP_PASSWORD)]
    state = service.config.state_dir
    for path in state.rglob("*"):
        if path.is_file():
            assert SMTP_PASSWORD.encode() not in path.read_bytes(), path
    assert SMTP_PASSWORD not in run_cli("status", "--json", config=service.config).stdout


def test_implicit_tls(appliance: Config, certs) -> None:
    with smtp_server(tls=certs.server_context(), ca=certs.ca) as (port, mailbox):
        service = service_with(appliance, email_section(port, "smtps", f'ca_file = "{certs.ca}"\n'))
        results = service.alerts.test("demo-appliance")
    assert [(t.kind, ok) for t, ok, _ in results] == [("email", True)]
    assert "accepted the message for 1 recipient(s)" in results[0][2]
    assert "Subject: [appliance-backup] demo-appliance: test alert" in mailbox.messages[0]["data"]


def test_a_bad_certificate_is_refused(appliance: Config, certs) -> None:
    with smtp_server(tls=certs.server_context(trusted=False), starttls=True) as (port, mailbox):
        service = service_with(appliance, email_section(port, "smtp+starttls", f'ca_file = "{certs.ca}"\n'))
        (_, ok, answer), = service.alerts.test("demo-appliance")
    assert not ok and mailbox.messages == []
    assert f"the TLS certificate of smtp+starttls://127.0.0.1:{port} was not accepted" in answer
    assert "certificate verify failed" in answer or "self" in answer


def test_a_wrong_password_is_named_without_the_password(appliance: Config, certs, tmp_path: Path) -> None:
    password = secret_file(tmp_path / "smtp.pass", "wrong-password-xyz")
    with smtp_server(tls=certs.server_context(), starttls=True, auth=True) as (port, _):
        service = service_with(appliance, email_section(
            port, "smtp+starttls", f'user = "backup"\npassword_file = "{password}"\nca_file = "{certs.ca}"\n'))
        (_, ok, answer), = service.alerts.test("demo-appliance")
    assert not ok and "refused the user name or password (535)" in answer
    assert "wrong-password-xyz" not in answer


def test_a_password_file_others_may_read_is_refused(appliance: Config, tmp_path: Path) -> None:
    password = secret_file(tmp_path / "smtp.pass", SMTP_PASSWORD)
    password.chmod(0o644)
    with smtp_server() as (port, mailbox):
        service = service_with(appliance, email_section(port, extra=f'user = "backup"\npassword_file = "{password}"\n'))
        (_, ok, answer), = service.alerts.test("demo-appliance")
    assert not ok and mailbox.messages == []
    assert f"may be read by other users (mode 0644): run `chmod 600 {password}`" in answer


def test_a_refusing_server_is_retried_with_backoff_and_shown_failing(appliance: Config) -> None:
    clock = Clock()
    mailbox = Mailbox(refuse_rcpt="550 5.1.1 no such mailbox here")
    with smtp_server(mailbox=mailbox) as (port, _):
        config = with_sections(appliance, email_section(port))
        service = BackupService(config, clock=clock, kdf_params=FAST_KDF)
        service.set_secret(PASSPHRASE)
        fail_a_backup(service)
        service.alerts.wait(WAIT)
        health = service.status().alerts[0]
        assert not health.ok and health.failing_since == clock.now and health.pending == 1
        assert "refused the recipients (550 5.1.1 no such mailbox here)" in health.last_error
        assert health.line.startswith("email failing since ")
        item = json.loads(next((config.state_dir / "alerts" / "queue").glob("*.json")).read_text())
        assert item["attempts"] == 1
        assert datetime.fromisoformat(item["next_at"]) == clock.now + timedelta(seconds=30)
        service.alerts.deliver_due()  # not due yet: no second attempt
        assert len(service.journal.events("alert")) == 1
        clock.now += timedelta(seconds=31)
        service.alerts.deliver_due()
        item = json.loads(next((config.state_dir / "alerts" / "queue").glob("*.json")).read_text())
        assert item["attempts"] == 2
        assert datetime.fromisoformat(item["next_at"]) == clock.now + timedelta(seconds=60)
        mailbox.refuse_rcpt = None  # the mail server is fixed
        clock.now += timedelta(seconds=61)
        service.alerts.deliver_due()
    assert len(mailbox.messages) == 1 and "backup failed" in mailbox.messages[0]["data"]
    health = service.status().alerts[0]
    assert health.ok and health.pending == 0 and health.last_ok_at == clock.now
    outcomes = [e["outcome"] for e in service.journal.events("alert")]
    assert outcomes == ["failed", "failed", "delivered"]


def test_an_alert_is_dropped_after_its_last_attempt(appliance: Config) -> None:
    clock = Clock()
    port = free_port()  # nothing listens
    config = with_sections(appliance, email_section(port))
    service = BackupService(config, clock=clock, kdf_params=FAST_KDF)
    service.alerts.enqueue(Alert(appliance="demo-appliance", event="backup_failed", at=clock.now))
    for _ in range(MAX_ATTEMPTS):
        service.alerts.deliver_due()
        clock.now += timedelta(hours=2)
    events = service.journal.events("alert")
    assert [e["outcome"] for e in events] == ["failed"] * (MAX_ATTEMPTS - 1) + ["given up"]
    assert "refused the connection (nothing listens there)" in events[-1]["answer"]
    assert service.status().alerts[0].pending == 0 and not service.status().alerts[0].ok


# ---------------------------------------------------------------- a hanging target never delays a backup


@pytest.mark.parametrize("kind", ["email", "webhook"])
def test_a_hanging_target_does_not_delay_the_backup(appliance: Config, kind: str) -> None:
    with hanging_server() as server:
        section = (email_section(server.port) if kind == "email" else
                   f'[notify.webhook]\nurl = "http://127.0.0.1:{server.port}/hook"\n')
        section = section.replace("timeout_seconds = 5\n", "") + "timeout_seconds = 300\n"
        service = service_with(appliance, section + 'events = ["backup_succeeded"]\n'
                               if kind == "webhook" else section.replace("[notify.email]\n", "[notify.email]\n"
                                                                         'events = ["backup_succeeded"]\n'))
        done = threading.Event()
        result = {}

        def back_up() -> None:
            result["backup"] = service.run_backup()
            done.set()

        threading.Thread(target=back_up, daemon=True).start()
        assert done.wait(WAIT), "the backup did not return while the alert target hung"
        assert server.accepted.wait(WAIT)  # the alert is being delivered to the hanging server...
        assert server.holding()  # ...which still holds the connection: the backup returned regardless
        assert service.journal.runs()[-1].result == "ok"
        assert [b.name for b in service.list_backups()] == [result["backup"].name]


def test_the_headless_run_prints_its_result_while_the_target_hangs(appliance: Config) -> None:
    """The real command: the backup's name is printed and journalled although the webhook never answers;
    the command then waits at most one attempt's timeout for delivery before it exits."""
    with hanging_server() as server:
        service = service_with(appliance, f'[notify.webhook]\nurl = "http://127.0.0.1:{server.port}/x"\n'
                                          'events = ["backup_succeeded"]\ntimeout_seconds = 2\n')
        result = run_cli("run", config=service.config)
        assert server.accepted.is_set()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == service.journal.runs()[-1].name
    status = json.loads(run_cli("status", "--json", config=service.config).stdout)
    webhook = status["alerts"][0]
    assert webhook["state"] == "failing" and "no answer from http://127.0.0.1" in webhook["last_error"]
    assert webhook["pending"] == 1


# ---------------------------------------------------------------- webhook


def test_webhook_posts_json_with_a_bearer_token_from_a_file(appliance: Config, tmp_path: Path) -> None:
    token = secret_file(tmp_path / "token", TOKEN)
    with http_server() as (port, log):
        service = service_with(appliance, f'[notify.webhook]\nurl = "http://127.0.0.1:{port}/backup?key=q"\n'
                                          f'token_file = "{token}"\n')
        error = fail_a_backup(service)
        assert log.received.wait(WAIT)
        service.alerts.wait(WAIT)
    request = log.requests[0]
    assert request["path"] == "/backup?key=q"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["Content-Type"] == "application/json"
    body = request["body"]
    assert body["appliance"] == "demo-appliance" and body["event"] == "backup_failed"
    assert body["error"] == error and body["name"] == service.journal.runs()[-1].name
    assert body["summary"] == "[appliance-backup] demo-appliance: backup failed"
    assert body["what_to_do"].startswith("Fix the cause")
    health = service.status().alerts[0]
    assert health.where == f"http://127.0.0.1:{port}/backup"  # the query (which may hold a key) is not shown
    for path in service.config.state_dir.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes()


def test_webhook_errors_are_sentences(appliance: Config) -> None:
    with http_server(WebhookLog(status=500)) as (port, _):
        service = service_with(appliance, f'[notify.webhook]\nurl = "http://127.0.0.1:{port}/h"\n')
        (_, ok, answer), = service.alerts.test("demo-appliance")
    assert not ok and answer == f"http://127.0.0.1:{port}/h answered HTTP 500 Internal Server Error"


def test_https_needs_a_certificate_it_can_check(certs) -> None:
    alert = Alert(appliance="a", event="test", at=datetime.now(timezone.utc))
    with http_server(tls=certs.server_context(trusted=False)) as (port, log):
        for ca_file in (None, certs.ca):  # the self-signed certificate is not signed by our CA either
            target = Target(kind="webhook", events=(), url=f"https://127.0.0.1:{port}/h", timeout=5, ca_file=ca_file)
            with pytest.raises(DeliveryError, match=f"the TLS certificate of https://127.0.0.1:{port}/h was not "
                                                    "accepted"):
                send(target, alert)
        assert log.requests == []
    with http_server(tls=certs.server_context()) as (port, log):
        target = Target(kind="webhook", events=(), url=f"https://127.0.0.1:{port}/h", timeout=5, ca_file=certs.ca)
        assert send(target, alert) == f"https://127.0.0.1:{port}/h answered HTTP 200 OK"
        assert log.requests[0]["body"]["event"] == "test"


def test_a_redirect_is_not_followed_with_the_token(appliance: Config, tmp_path: Path) -> None:
    token = secret_file(tmp_path / "token", TOKEN)
    with http_server() as (elsewhere, other), http_server(WebhookLog(redirect_to="")) as (port, log):
        log.redirect_to = f"http://127.0.0.1:{elsewhere}/steal"
        service = service_with(appliance, f'[notify.webhook]\nurl = "http://127.0.0.1:{port}/h"\n'
                                          f'token_file = "{token}"\n')
        (_, ok, answer), = service.alerts.test("demo-appliance")
    assert not ok and "answered HTTP 307" in answer
    assert other.requests == []


@pytest.mark.parametrize("section, says", [
    ('[notify.webhook]\nurl = "https://user:pw@hooks.example.org/x"\n', "must not hold a user name or password"),
    ('[notify.email]\nsmtp = "smtp://u:pw@127.0.0.1"\nfrom = "a@b.c"\nto = ["o@b.c"]\n',
     "must not hold a user name or password"),
    ('[notify.email]\nsmtp = "imap://127.0.0.1"\nfrom = "a@b.c"\nto = ["o@b.c"]\n', "must start with smtp://"),
    ('[notify.email]\nsmtp = "smtp://127.0.0.1"\nfrom = "a@b.c"\nto = []\n', "to must be a list of email addresses"),
    ('[notify.email]\nsmtp = "smtp://127.0.0.1"\nfrom = "a@b.c"\nto = ["o@b.c"]\nuser = "u"\n',
     "set user and password_file together"),
    ('[notify.webhook]\nurl = "https://h/x"\nevents = ["backup_faild"]\n', "'backup_faild', which is not an event"),
    ('[notify.webhook]\nurl = "https://h/x"\ntoken = "abc"\n', "token is not a setting of [notify.webhook]"),
    ('[notify.pager]\nurl = "https://h/x"\n', "[notify.pager] is not an alert target"),
    ('[notify.syslog]\naddress = "tcp://h:514"\n', "address must be a socket's path"),
])
def test_bad_targets_are_named(appliance: Config, section: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        with_sections(appliance, section)
    assert says in caught.value.message
    assert "pw@" not in caught.value.message


# ---------------------------------------------------------------- syslog


RFC5424 = re.compile(rb"^<(?P<pri>\d+)>1 (?P<time>\S+Z) (?P<host>\S+) appliance-backup (?P<pid>\d+) "
                     rb"(?P<msgid>\S+) - (?P<msg>.+)$")


def test_syslog_to_a_socket_and_over_udp(appliance: Config, tmp_path: Path) -> None:
    with syslog_unix_socket(tmp_path / "log") as unix, syslog_udp() as (port, udp):
        service = service_with(appliance, f'[notify.syslog]\naddress = "{tmp_path}/log"\n')
        fail_a_backup(service)
        message = RFC5424.match(unix.recv(65536))
        assert message and message["msgid"] == b"backup_failed"
        assert int(message["pri"]) == 3 * 8 + 3  # daemon.err
        assert b"[appliance-backup] demo-appliance: backup failed" in message["msg"]
        assert b"What to do:" in message["msg"]
        datetime.fromisoformat(message["time"].decode().replace("Z", "+00:00"))
        service.alerts.wait(WAIT)
        appliance.path.write_text(appliance.path.read_text().replace(f'address = "{tmp_path}/log"',
                                                                     f'address = "udp://127.0.0.1:{port}"'))
        service = BackupService(load_config(appliance.path), kdf_params=FAST_KDF)
        (_, ok, answer), = service.alerts.test("demo-appliance")
        assert ok and answer == f"sent to udp://127.0.0.1:{port} (UDP has no answer)"
        message = RFC5424.match(udp.recv(65536))
        assert message and message["msgid"] == b"test" and int(message["pri"]) == 3 * 8 + 6  # daemon.info


def test_no_syslog_daemon_listening_is_said(appliance: Config, tmp_path: Path) -> None:
    service = service_with(appliance, f'[notify.syslog]\naddress = "{tmp_path}/no-such-socket"\n')
    (_, ok, answer), = service.alerts.test("demo-appliance")
    assert not ok and answer == f"no syslog daemon listens on {tmp_path}/no-such-socket"


# ---------------------------------------------------------------- notify test, standing conditions


def test_notify_test_says_what_each_target_answered(appliance: Config, tmp_path: Path) -> None:
    with smtp_server() as (port, mailbox), http_server(WebhookLog(status=503)) as (web, _), \
            syslog_unix_socket(tmp_path / "log") as unix:
        service = service_with(appliance, email_section(port) +
                               f'[notify.webhook]\nurl = "http://127.0.0.1:{web}/h"\n'
                               f'[notify.syslog]\naddress = "{tmp_path}/log"\n')
        result = run_cli("notify", "test", config=service.config)
        assert unix.recv(65536)
    assert result.returncode == 1  # one target failed
    lines = result.stdout.splitlines()
    assert lines[0] == (f"email    smtp://127.0.0.1:{port}: sent: smtp://127.0.0.1:{port} accepted the message "
                        "for 1 recipient(s)")
    assert lines[1] == (f"webhook  http://127.0.0.1:{web}/h: FAILED: http://127.0.0.1:{web}/h answered HTTP 503 "
                        "Service Unavailable")
    assert lines[2] == f"syslog   {tmp_path}/log: sent: the syslog socket {tmp_path}/log took the message"
    assert "test alert" in mailbox.messages[0]["data"]
    status = json.loads(run_cli("status", "--json", config=service.config).stdout)
    assert [(a["target"], a["state"]) for a in status["alerts"]] == [("email", "ok"), ("webhook", "failing"),
                                                                     ("syslog", "ok")]
    text = run_cli("status", config=service.config).stdout
    assert "Alerts:                         webhook failing since " in text


def test_notify_test_without_targets_says_how_to_add_one(appliance: Config) -> None:
    result = run_cli("notify", "test", config=appliance)
    assert result.returncode == 2 and "No alert target is set: add [notify.email]" in result.stderr


def test_stale_and_missing_dms_alert_once_when_they_begin(appliance: Config) -> None:
    clock = Clock()
    with http_server() as (port, log):
        config = update_config(with_sections(appliance, f'[notify.webhook]\nurl = "http://127.0.0.1:{port}/h"\n'
                                                        'events = ["stale", "dms_not_set"]\n'),
                               {"schedule": {"enabled": True, "cron": "0 2 * * *"}})
        service = BackupService(config, clock=clock, kdf_params=FAST_KDF)
        for _ in range(3):
            service.alert_tick().join(WAIT)
        assert sorted(r["body"]["event"] for r in log.requests) == ["dms_not_set", "stale"]
        service.set_secret(PASSPHRASE)
        service.run_backup()
        service.alerts.wait(WAIT)
        clock.now += timedelta(days=3)
        for _ in range(2):
            service.alert_tick().join(WAIT)
    events = [r["body"]["event"] for r in log.requests]
    assert events.count("stale") == 2  # a new episode: the backup of 3 days ago is now too old
    assert events.count("dms_not_set") == 1


def test_a_retry_planned_under_a_wrong_clock_is_not_postponed_for_a_year(appliance: Config) -> None:
    clock = Clock()
    with smtp_server(mailbox=Mailbox(refuse_rcpt="451 4.3.0 try again later")) as (port, mailbox):
        config = with_sections(appliance, email_section(port))
        service = BackupService(config, clock=clock, kdf_params=FAST_KDF)
        clock.now += timedelta(days=365)  # the clock was a year ahead when the first attempt failed...
        service.alerts.enqueue(Alert(appliance="demo-appliance", event="backup_failed", at=clock.now))
        service.alerts.deliver_due()
        clock.now -= timedelta(days=365)  # ...and is put right
        mailbox.refuse_rcpt = None
        service.alerts.deliver_due()
    assert len(mailbox.messages) == 1


def test_the_failing_headless_run_has_mailed_before_it_exits(appliance: Config) -> None:
    """The real command: the failure's sentence is printed, and the mail has been accepted when it exits."""
    with smtp_server() as (port, mailbox):
        service = service_with(appliance, email_section(port))
        service.config.appliance.database.unlink()
        result = run_cli("run", config=service.config)
        assert result.returncode == 2 and "does not exist" in result.stderr
        assert len(mailbox.messages) == 1  # no waiting here: delivered before the command exited
    assert "backup failed" in mailbox.messages[0]["data"]
    assert service.status().alerts[0].ok
