"""Real servers on loopback for the alert tests: SMTP (aiosmtpd), HTTP(S), syslog sockets, and bad ones.

Each server runs on 127.0.0.1 (or a socket in the test's folder) in a thread
of the test process; the program under test talks to it over real sockets.
Certificates are made here with `cryptography`: a test CA that signs a
certificate for 127.0.0.1, and a self-signed one nobody trusts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@dataclass
class Certificates:
    ca: Path
    """The test CA's certificate (what ca_file points at)."""
    cert: Path
    key: Path
    """The server's certificate for 127.0.0.1, signed by the test CA, and its key."""
    self_signed_cert: Path
    self_signed_key: Path
    """A certificate for 127.0.0.1 that no one trusts."""

    def server_context(self, trusted: bool = True) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if trusted:
            context.load_cert_chain(self.cert, self.key)
        else:
            context.load_cert_chain(self.self_signed_cert, self.self_signed_key)
        return context


def make_certificates(folder: Path) -> Certificates:
    now = dt.datetime.now(dt.timezone.utc)

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def server_cert(key, issuer_name, issuer_key) -> x509.Certificate:
        return (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(issuer_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK)),
                                                            x509.DNSName("localhost")]), critical=False)
                .sign(issuer_key, hashes.SHA256()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(name("appliance-backup test CA")).issuer_name(name("appliance-backup test CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = server_cert(key, ca_cert.subject, ca_key)
    lone_key = ec.generate_private_key(ec.SECP256R1())
    lone = server_cert(lone_key, name("127.0.0.1"), lone_key)
    return Certificates(ca=write_cert(ca_cert, folder / "ca.pem"), cert=write_cert(cert, folder / "server.pem"),
                        key=write_key(key, folder / "server.key"),
                        self_signed_cert=write_cert(lone, folder / "self-signed.pem"),
                        self_signed_key=write_key(lone_key, folder / "self-signed.key"))


# ---------------------------------------------------------------- SMTP


@dataclass
class Mailbox:
    """What an SMTP server received."""

    messages: list[dict] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    refuse_rcpt: str | None = None
    """An SMTP reply to every RCPT TO (e.g. "550 5.1.1 no such mailbox"); None accepts."""
    received = None

    def __post_init__(self) -> None:
        self.received = threading.Event()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802 (aiosmtpd's name)
        if self.refuse_rcpt:
            return self.refuse_rcpt
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                              "data": envelope.content.decode("utf-8", "replace")})
        self.received.set()
        return "250 Message accepted for delivery"

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        if isinstance(auth_data, LoginPassword):
            self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
            ok = auth_data.login == b"backup" and auth_data.password == b"s3cret-smtp-pass"
            return AuthResult(success=ok, handled=False)
        return AuthResult(success=False, handled=False)


@contextmanager
def smtp_server(*, mailbox: Mailbox | None = None, tls: ssl.SSLContext | None = None, starttls: bool = False,
                auth: bool = False, ca: Path | None = None) -> Iterator[tuple[int, Mailbox]]:
    """An aiosmtpd server on 127.0.0.1: plain, STARTTLS (`starttls` with `tls`), or implicit TLS (`tls` alone,
    with `ca`, the test CA, for the controller's own first connection)."""
    mailbox = mailbox or Mailbox()
    port = free_port()
    kwargs: dict = {}
    if starttls:
        kwargs.update(tls_context=tls, require_starttls=True)
    elif tls is not None:
        kwargs.update(ssl_context=tls)
    if auth:
        kwargs.update(authenticator=mailbox.authenticator, auth_required=True, auth_require_tls=starttls or tls is not None)
    controller = Controller(mailbox, hostname=LOOPBACK, port=port, **kwargs)
    if tls is not None and not starttls:
        def trigger() -> None:  # the controller's own first connection, which must trust the test CA
            with socket.create_connection((LOOPBACK, port), 5) as raw, \
                    ssl.create_default_context(cafile=str(ca)).wrap_socket(raw, server_hostname=LOOPBACK) as tls_sock:
                tls_sock.recv(1024)

        controller._trigger_server = trigger
    controller.start()
    try:
        yield port, mailbox
    finally:
        controller.stop()


# ---------------------------------------------------------------- a server that accepts and never answers


class HangingServer:
    """Accepts TCP connections and says nothing until released: a mail or web server that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.release = threading.Event()
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self.release.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            self.accepted.set()

    def holding(self) -> bool:
        """Whether it still holds an open connection it never answered."""
        return bool(self.connections) and not self.release.is_set()

    def close(self) -> None:
        self.release.set()
        for conn in self.connections:
            conn.close()
        self.sock.close()


@contextmanager
def hanging_server() -> Iterator[HangingServer]:
    server = HangingServer()
    try:
        yield server
    finally:
        server.close()


# ---------------------------------------------------------------- HTTP


@dataclass
class WebhookLog:
    requests: list[dict] = field(default_factory=list)
    status: int = 200
    """What the server answers."""
    redirect_to: str | None = None

    def __post_init__(self) -> None:
        self.received = threading.Event()


@contextmanager
def http_server(log: WebhookLog | None = None, tls: ssl.SSLContext | None = None) -> Iterator[tuple[int, WebhookLog]]:
    log = log or WebhookLog()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            log.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
            log.received.set()
            if log.redirect_to:
                self.send_response(307)
                self.send_header("Location", log.redirect_to)
            else:
                self.send_response(log.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], log
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- syslog


@contextmanager
def syslog_unix_socket(path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    try:
        yield sock
    finally:
        sock.close()


@contextmanager
def syslog_udp() -> Iterator[tuple[int, socket.socket]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(30)
    try:
        yield sock.getsockname()[1], sock
    finally:
        sock.close()
