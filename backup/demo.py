"""Provides a self-contained demo appliance: a plausible PKI/HSM-style service on disk.

`create_demo_appliance` lays out what a real appliance holds and a backup
takes — firmware configuration, system configuration and the internal SQLite
database — next to an empty local storage directory and a private state
directory, and writes the `config.toml` that points at them. Everything is
derived from a seed: two demo appliances made with the same seed hold the
same files, and databases with the same SQL dump.

The pieces (`write_firmware_tree`, `write_system_tree`, `create_schema`, the
row generators) are public so that the benchmark generator
(`bench/make_state.py`) can grow the same shapes to any size.

Only the standard library and tomli-w are used; no Textual import.
"""

from __future__ import annotations

import base64
import getpass
import functools
import random
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

import tomli_w

from backup.errors import ConfigError
from backup.fsutil import ensure_private_dir

__all__ = [
    "DatabaseSize",
    "DEMO_DATABASE_SIZE",
    "create_demo_appliance",
    "create_indexes",
    "create_schema",
    "iter_audit_rows",
    "iter_certificate_rows",
    "iter_key_rows",
    "iter_operator_rows",
    "populate_database",
    "settings_rows",
    "write_appliance_config",
    "write_files",
    "write_firmware_tree",
    "write_system_tree",
]

EPOCH = datetime(2023, 1, 2, 8, 0, 0, tzinfo=timezone.utc)
"""Fixed origin of every generated timestamp, so output never depends on the clock."""
_EPOCH_SECONDS = int(EPOCH.timestamp())
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DAY = 86400

T = TypeVar("T")

SOFTWARE_VERSION = "7.4.2"
BUILD_ID = "20240611.1842"

_ORG = "Example Trust Services GmbH"
_DOMAINS = ("corp.example.com", "pki.example.com", "iot.example.net", "dmz.example.org")
_HOST_WORDS = (
    "web", "api", "mail", "vpn", "edge", "db", "kube", "node", "gw", "ldap",
    "sso", "ocsp", "scep", "printer", "badge", "sensor", "camera", "router",
)
_FIRST_NAMES = (
    "anna", "ben", "chloe", "david", "eva", "felix", "greta", "hannes", "ines",
    "jonas", "katrin", "lukas", "mara", "nils", "olga", "paul", "rita", "sven",
)
_LAST_NAMES = (
    "berger", "fischer", "hoffmann", "keller", "lang", "meyer", "neumann",
    "richter", "schmidt", "vogel", "wagner", "weber", "wolf", "zimmermann",
)
_ROLES = ("administrator", "security-officer", "auditor", "operator", "ra-officer")
_PROFILES = ("tls-server", "tls-client", "code-signing", "email", "ocsp-responder", "device", "vpn-user")
_ISSUERS = (
    f"CN=Example Root CA G2,O={_ORG},C=DE",
    f"CN=Example Issuing CA 1,O={_ORG},C=DE",
    f"CN=Example Issuing CA 2,O={_ORG},C=DE",
    f"CN=Example Device CA,OU=IoT,O={_ORG},C=DE",
)
_AUDIT_ACTIONS = (
    "certificate.issue", "certificate.revoke", "certificate.renew", "crl.publish",
    "ocsp.sign", "key.generate", "key.rotate", "operator.login", "operator.logout",
    "settings.update", "profile.update", "backup.create", "cluster.sync",
)


@dataclass(frozen=True)
class DatabaseSize:
    """How many rows of each table `populate_database` writes."""

    operators: int
    keys: int
    certificates: int
    audit_events: int


DEMO_DATABASE_SIZE = DatabaseSize(operators=24, keys=60, certificates=1200, audit_events=7000)
"""Row counts of the demo database: about 5 MiB on disk."""


def create_demo_appliance(directory: Path, *, seed: int = 1) -> Path:
    """Create a demo appliance in `directory` and return the path of its config file.

    Args:
        directory: Where to create it; made if missing, refused if not empty.
        seed: Seed of every generated value; the same seed gives the same appliance.

    Returns:
        The absolute path of the written `config.toml`.

    Raises:
        ConfigError: `directory` is a file or a directory that is not empty.
    """
    directory = Path(directory).expanduser().absolute()
    if directory.exists() and not directory.is_dir():
        raise ConfigError(
            f"Cannot create the demo appliance in {directory}: it is a file, not a directory. "
            "Choose a new or empty directory."
        )
    if directory.is_dir() and any(directory.iterdir()):
        raise ConfigError(
            f"Cannot create the demo appliance in {directory}: the directory is not empty. "
            "Choose a new or empty directory."
        )
    ensure_private_dir(directory)  # it holds the state and the configuration: no one else may change it
    rng = random.Random(seed)

    firmware = directory / "firmware"
    system = directory / "system"
    database = directory / "internal.db"
    storage = directory / "backups"
    state = directory / "state"

    write_firmware_tree(firmware, rng)
    write_system_tree(system, rng)
    connection = sqlite3.connect(database)
    try:
        # A real service runs its database in WAL mode; closing the last
        # connection checkpoints and removes the -wal file again.
        connection.execute("PRAGMA journal_mode=WAL")
        create_schema(connection)
        populate_database(connection, rng, DEMO_DATABASE_SIZE)
        create_indexes(connection)
        connection.commit()
    finally:
        connection.close()
    ensure_private_dir(storage)
    ensure_private_dir(state)  # the state holds key material

    config = directory / "config.toml"
    write_appliance_config(
        config,
        name="demo-appliance",
        firmware=firmware,
        system=system,
        database=database,
        state_dir=state,
        storage_dir=storage,
        extra=demo_policies(),
    )
    return config


def demo_policies() -> dict[str, dict[str, object]]:
    """The demo's schedule (off until the operator turns it on), retention, and operator accounts:
    whoever runs the demo signs in with OAuth, and one OTP account shows the refusal."""
    try:
        login = getpass.getuser()
    except (OSError, KeyError):
        login = "operator"
    return {
        "schedule": {"enabled": False, "cron": "0 2 * * *"},
        "retention": {"keep_last": 3, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6},
        "operators": {login: "oauth", "otp-operator": "otp"},
    }


def write_appliance_config(
    path: Path,
    *,
    name: str,
    firmware: Path,
    system: Path,
    database: Path,
    state_dir: Path,
    storage_dir: Path,
    prefix: str = "",
    extra: Mapping[str, dict[str, object]] | None = None,
) -> None:
    """Write an appliance `config.toml` with absolute paths and local storage, plus the `extra` tables.

    No Domain Master Secret is set: that is the operator's first step.
    """
    document = {
        "appliance": {
            "name": name,
            "firmware": str(Path(firmware).absolute()),
            "system": str(Path(system).absolute()),
            "database": str(Path(database).absolute()),
        },
        "state": {"dir": str(Path(state_dir).absolute())},
        "storage": {"type": "local", "path": str(Path(storage_dir).absolute())},
        "backup": {"prefix": prefix},
        **(extra or {}),
    }
    Path(path).write_text(tomli_w.dumps(document), encoding="utf-8")
    Path(path).chmod(0o644)  # not the umask's: whoever may write it chooses the state, storage and operators


def write_files(root: Path, files: Mapping[str, str | bytes], *, private: Iterable[str] = ()) -> None:
    """Write `files` (relative path to content) below `root`, with fixed modes.

    Modes are set explicitly so the tree does not depend on the umask:
    directories 0755, files 0644, and the relative paths in `private` 0600.
    """
    private = set(private)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    for relative, content in files.items():
        path = root / relative
        for parent in reversed(path.relative_to(root).parents[:-1]):
            directory = root / parent
            if not directory.is_dir():
                directory.mkdir()
                directory.chmod(0o755)
        if isinstance(content, str):
            content = content.encode("utf-8")
        path.write_bytes(content)
        path.chmod(0o600 if relative in private else 0o644)


# --------------------------------------------------------------------------
# Small value generators


def _timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@functools.lru_cache(maxsize=4096)
def _date_text(day: int) -> str:
    return (_UNIX_EPOCH + timedelta(days=day)).strftime("%Y-%m-%d")


def _timestamp_at(seconds: int) -> str:
    """ISO 8601 UTC text of a Unix time; much faster than strftime for rows in bulk."""
    day, rest = divmod(seconds, 86400)
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    return f"{_date_text(day)}T{hour:02d}:{minute:02d}:{second:02d}Z"


# The row generators run millions of times for the benchmark state: these
# pick with one C call each instead of Random.choice/randrange's Python code.
def _pick(rng: random.Random, items: Sequence[T]) -> T:
    return items[int(rng.random() * len(items))]


def _below(rng: random.Random, n: int) -> int:
    return int(rng.random() * n)


def _host(rng: random.Random) -> str:
    return f"{_pick(rng, _HOST_WORDS)}-{_below(rng, 1000):03d}.{_pick(rng, _DOMAINS)}"


def _ip(rng: random.Random, prefix: str = "10") -> str:
    bits = rng.getrandbits(24)
    return f"{prefix}.{bits >> 16}.{(bits >> 8) & 255}.{(bits & 255) % 254 + 1}"


def _hex(rng: random.Random, nbytes: int) -> str:
    return rng.randbytes(nbytes).hex()


def _operator_names(rng: random.Random, count: int) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = f"{rng.choice(_FIRST_NAMES)}.{rng.choice(_LAST_NAMES)}"
        if name not in names:
            names.append(name)
    return names


# --------------------------------------------------------------------------
# Firmware configuration


def write_firmware_tree(root: Path, rng: random.Random) -> None:
    """Write the firmware configuration: manifest, boot, feature flags, HSM connection."""
    components = {
        "bootloader": "2.11.4",
        "kernel": "6.1.0-21-amd64",
        "initramfs": BUILD_ID,
        "pki-core": SOFTWARE_VERSION,
        "hsm-client": "10.7.1",
        "tpm-agent": "1.4.0",
    }
    manifest_lines = [
        "{",
        '  "product": "Example PKI Appliance",',
        f'  "version": "{SOFTWARE_VERSION}",',
        f'  "build": "{BUILD_ID}",',
        '  "channel": "stable",',
        '  "components": {',
    ]
    entries = [
        f'    "{name}": {{"version": "{version}", "sha256": "{_hex(rng, 32)}"}}'
        for name, version in components.items()
    ]
    manifest_lines.append(",\n".join(entries))
    manifest_lines += ["  }", "}", ""]

    hsm_nodes = [_ip(rng, "172.16") for _ in range(2)]
    flags = {
        "acme_server": rng.choice(("true", "false")),
        "est_server": "true",
        "scep_server": "false",
        "ocsp_stapling": "true",
        "post_quantum_preview": "false",
        "cluster_auto_failover": "true",
        "audit_signing": "true",
        "legacy_sha1_profiles": "false",
    }
    files: dict[str, str] = {
        "VERSION.json": "\n".join(manifest_lines),
        "boot/params.conf": (
            "# Kernel command line of the appliance image\n"
            "console=ttyS0,115200n8 console=tty0\n"
            "quiet loglevel=4 audit=1 apparmor=1 security=apparmor\n"
            f"systemd.unit=multi-user.target appliance.build={BUILD_ID}\n"
        ),
        "boot/watchdog.conf": (
            "[watchdog]\ndevice = /dev/watchdog0\ntimeout_s = 60\nreboot_on_hang = true\n"
        ),
        "boot/slots.ini": (
            "[slot.a]\nversion = " + SOFTWARE_VERSION + "\nstate = active\nboot_attempts = 0\n\n"
            "[slot.b]\nversion = 7.3.9\nstate = fallback\nboot_attempts = 0\n"
        ),
        "features.yaml": "# Feature flags shipped with this firmware\nfeatures:\n"
        + "".join(f"  {name}: {value}\n" for name, value in flags.items()),
        "hsm/connection.conf": (
            "# Connection to the network HSM. Key material stays in the HSM and is\n"
            "# never part of the appliance state.\n"
            "[hsm]\n"
            "vendor = example-nethsm\n"
            f"servers = {hsm_nodes[0]}:1792, {hsm_nodes[1]}:1792\n"
            "partition = pki-prod\n"
            f"client_label = appliance-{rng.randrange(10_000):04d}\n"
            "client_certificate = /etc/pki-appliance/hsm/client.pem\n"
            "connect_timeout_s = 5\n"
            "receive_timeout_s = 20\n"
            "load_balancing = round-robin\n"
        ),
        "hsm/ha-group.yaml": (
            "ha_group:\n  label: pki-prod-ha\n  members:\n"
            + "".join(f"    - server: {ip}\n      slot: {n}\n" for n, ip in enumerate(hsm_nodes))
            + "  recovery:\n    auto: true\n    retry_interval_s: 60\n"
        ),
        "hsm/slots.json": (
            '{\n  "slots": [\n'
            + ",\n".join(
                f'    {{"id": {n}, "label": "pki-prod-{n}", "serial": "{rng.randrange(10**9):09d}", '
                f'"role": "{role}"}}'
                for n, role in enumerate(("ca", "ocsp", "audit"))
            )
            + "\n  ]\n}\n"
        ),
        "modules/crypto.conf": (
            "[crypto]\nfips_mode = true\nrng_source = hsm\nentropy_check = continuous\n"
            "allowed_hashes = sha256, sha384, sha512\n"
        ),
        "modules/tpm.conf": "[tpm]\nenabled = true\npcr_bank = sha256\nmeasured_boot = true\n",
        "modules/network-drivers.conf": "options ixgbe allow_unsupported_sfp=0\noptions bonding max_bonds=2\n",
        "update/channel.conf": (
            "[update]\nchannel = stable\nmirror = https://updates.example.com/pki-appliance\n"
            "verify_signatures = true\nauto_download = false\n"
        ),
        "limits.conf": (
            "# Resource limits of the service account\n"
            "pki soft nofile 65536\npki hard nofile 131072\npki soft nproc 4096\n"
        ),
        "sysctl.d/10-appliance.conf": (
            "net.ipv4.tcp_syncookies = 1\nnet.ipv4.conf.all.rp_filter = 1\n"
            "kernel.kptr_restrict = 2\nkernel.dmesg_restrict = 1\nvm.swappiness = 10\n"
        ),
    }
    write_files(root, files, private=("hsm/connection.conf",))


# --------------------------------------------------------------------------
# System configuration


def write_system_tree(root: Path, rng: random.Random) -> None:
    """Write the system configuration: cluster, network, database, TLS, syslog, users, PKI."""
    files: dict[str, str] = {}
    private: list[str] = []

    # Cluster
    node_ips = [_ip(rng, "10.20") for _ in range(3)]
    files["cluster/cluster.yaml"] = (
        "cluster:\n  name: pki-prod\n  id: " + _hex(rng, 8) + "\n"
        "  quorum:\n    type: majority\n    votes: 3\n    witness: none\n"
        "  heartbeat_ms: 500\n  failover_timeout_s: 15\n  nodes:\n"
        + "".join(f"    - node-{n + 1}\n" for n in range(3))
    )
    for n, ip in enumerate(node_ips, start=1):
        files[f"cluster/nodes/node-{n}.yaml"] = (
            f"node:\n  name: node-{n}\n  address: {ip}\n  port: 7400\n"
            f"  priority: {100 - n * 10}\n  role: {'primary' if n == 1 else 'replica'}\n"
            f"  fingerprint: {_hex(rng, 32)}\n"
        )
    files["cluster/quorum.conf"] = "[quorum]\nexpected_votes = 3\ntwo_node = false\nwait_for_all = true\n"
    files["cluster/replication.ini"] = (
        "[replication]\nmode = synchronous\nmax_lag_ms = 250\ncompression = zstd\n"
        "batch_size = 512\nresync_on_start = true\n"
    )

    # Network
    interfaces = {"eth0": "mgmt", "eth1": "service", "eth2": "cluster", "eth3": "hsm"}
    for interface, purpose in interfaces.items():
        files[f"network/interfaces/{interface}.conf"] = (
            f"[Match]\nName={interface}\n\n[Network]\nDescription={purpose} network\n"
            f"Address={_ip(rng)}/24\nGateway={_ip(rng)}\nIPv6AcceptRA=no\n\n[Link]\nMTUBytes={rng.choice((1500, 9000))}\n"
        )
    files["network/interfaces/bond0.conf"] = (
        "[NetDev]\nName=bond0\nKind=bond\n\n[Bond]\nMode=active-backup\nMIIMonitorSec=0.1\n"
    )
    files["network/routes.conf"] = "".join(
        f"{_ip(rng)}/{rng.choice((16, 24, 28))} via {_ip(rng)} dev eth{rng.randrange(4)} metric {rng.randrange(10, 500)}\n"
        for _ in range(8)
    )
    files["network/dns.conf"] = (
        f"nameserver {_ip(rng)}\nnameserver {_ip(rng)}\nsearch {' '.join(_DOMAINS[:2])}\n"
        "options timeout:2 attempts:3 rotate\n"
    )
    files["network/ntp.conf"] = (
        "[Time]\nNTP=" + " ".join(f"ntp{n}.example.com" for n in range(1, 4))
        + "\nFallbackNTP=0.debian.pool.ntp.org 1.debian.pool.ntp.org\nPollIntervalMaxSec=1024\n"
    )
    files["network/hosts"] = "127.0.0.1 localhost\n" + "".join(
        f"{ip} node-{n}.cluster.local node-{n}\n" for n, ip in enumerate(node_ips, start=1)
    )
    files["network/proxy.ini"] = (
        "[proxy]\nenabled = false\nurl = http://proxy.corp.example.com:3128\n"
        "no_proxy = localhost,127.0.0.1,.cluster.local\n"
    )
    for order, (name, port) in enumerate(
        (("base", None), ("mgmt", 22), ("api", 443), ("ocsp", 80), ("cluster", 7400)), start=1
    ):
        rules = ["*filter", ":INPUT DROP [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]"]
        if port is None:
            rules += ["-A INPUT -i lo -j ACCEPT", "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"]
        else:
            for _ in range(rng.randrange(2, 6)):
                rules.append(f"-A INPUT -p tcp -s {_ip(rng)}/24 --dport {port} -j ACCEPT")
        rules.append("COMMIT")
        files[f"network/firewall/{order * 10:02d}-{name}.rules"] = "\n".join(rules) + "\n"

    # Database settings
    files["database/internal.ini"] = (
        "[database]\npath = /var/lib/pki-appliance/internal.db\njournal_mode = wal\n"
        "synchronous = full\nbusy_timeout_ms = 5000\ncache_size_kib = 65536\n"
        "wal_autocheckpoint = 1000\n"
    )
    files["database/maintenance.yaml"] = (
        "maintenance:\n  vacuum: weekly\n  analyze: daily\n  integrity_check: daily\n"
        "  audit_retention_days: 2555\n  expired_certificate_retention_days: 730\n"
    )
    files["database/replication.conf"] = "[replication]\nenabled = true\nsnapshot_interval_s = 300\n"
    for name in ("reporting", "archive"):
        files[f"database/external/{name}.ini"] = (
            f"# External {name} database: its contents are never part of a backup.\n"
            f"[{name}]\ndriver = postgresql\nhost = {_host(rng)}\nport = 5432\n"
            f"database = pki_{name}\nuser = pki_{name}\nsslmode = verify-full\n"
            f"password_file = /etc/pki-appliance/secrets/{name}.pass\n"
        )

    # TLS
    files["tls/server.ini"] = (
        "[tls]\nmin_version = TLSv1.2\nmax_version = TLSv1.3\nprefer_server_ciphers = true\n"
        "session_tickets = false\nocsp_stapling = true\nhsts_max_age = 31536000\n"
        "certificate = /etc/pki-appliance/tls/server.pem\nkey_label = tls-server-2024\n"
    )
    files["tls/ciphers.conf"] = "\n".join(
        (
            "TLS_AES_256_GCM_SHA384",
            "TLS_CHACHA20_POLY1305_SHA256",
            "TLS_AES_128_GCM_SHA256",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-RSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-CHACHA20-POLY1305",
        )
    ) + "\n"
    files["tls/client-auth.yaml"] = (
        "client_auth:\n  mode: optional\n  trusted_cas:\n"
        + "".join(f"    - \"{issuer}\"\n" for issuer in _ISSUERS[:3])
        + "  crl_check: leaf\n"
    )
    for n, issuer in enumerate(_ISSUERS[:3], start=1):
        files[f"tls/trust/ca-{n}.pem"] = _pem(rng, issuer, issuer, 1300)
    files["tls/ocsp.conf"] = (
        "[ocsp]\nresponder_url = http://ocsp.pki.example.com\nnext_update_h = 24\n"
        "nonce = required\nsigning_key_label = ocsp-2024\n"
    )
    files["tls/crl.conf"] = "[crl]\nvalidity_h = 168\noverlap_h = 24\npublish_to = /srv/crl\ndelta_crl = true\n"

    # Syslog
    files["syslog/rsyslog.conf"] = (
        "module(load=\"imuxsock\")\nmodule(load=\"imjournal\")\n"
        "$FileCreateMode 0640\n*.info;mail.none;authpriv.none /var/log/messages\n"
        "authpriv.* /var/log/secure\nlocal4.* /var/log/pki/audit.log\n"
        "$IncludeConfig /etc/rsyslog.d/*.conf\n"
    )
    for name in ("siem", "archive"):
        files[f"syslog/remote/{name}.conf"] = (
            f'action(type="omfwd" target="{_host(rng)}" port="6514" protocol="tcp"\n'
            '       StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode="x509/name"\n'
            f'       queue.type="LinkedList" queue.size="{rng.choice((10000, 50000))}")\n'
        )
    for name in ("audit", "service", "system"):
        files[f"syslog/logrotate/{name}.conf"] = (
            f"/var/log/pki/{name}.log {{\n    daily\n    rotate {rng.choice((30, 90, 365))}\n"
            "    compress\n    delaycompress\n    missingok\n    notifempty\n}\n"
        )

    # Users and roles
    files["users/roles.yaml"] = "roles:\n" + "".join(
        f"  {role}:\n    permissions: [{', '.join(rng.sample(_AUDIT_ACTIONS, 4))}]\n" for role in _ROLES
    )
    files["users/policy.ini"] = (
        "[password]\nmin_length = 14\nhistory = 12\nmax_age_days = 180\n\n"
        "[session]\nidle_timeout_min = 15\nmax_sessions = 3\n\n[lockout]\nattempts = 5\nduration_min = 30\n"
    )
    files["users/oauth.json"] = (
        '{\n  "issuer": "https://sso.corp.example.com/realms/pki",\n'
        '  "client_id": "pki-appliance",\n  "scopes": ["openid", "profile", "pki-roles"],\n'
        '  "role_claim": "pki_roles",\n  "client_secret_file": "/etc/pki-appliance/secrets/oauth"\n}\n'
    )
    for name in _operator_names(rng, 12):
        files[f"users/operators/{name}.json"] = (
            f'{{\n  "username": "{name}",\n  "role": "{rng.choice(_ROLES)}",\n'
            f'  "auth": "{rng.choice(("oauth", "oauth", "oauth", "otp"))}",\n'
            f'  "email": "{name}@corp.example.com",\n  "ssh_keys": {rng.randrange(0, 3)}\n}}\n'
        )

    # PKI
    for profile in _PROFILES:
        files[f"pki/profiles/{profile}.yaml"] = (
            f"profile:\n  name: {profile}\n  validity_days: {rng.choice((90, 365, 397, 730))}\n"
            f"  key:\n    algorithms: [{rng.choice(('rsa-3072', 'ec-p256', 'ec-p384'))}]\n"
            f"  extensions:\n    key_usage: [digitalSignature{', keyEncipherment' if 'tls' in profile else ''}]\n"
            f"    extended_key_usage: [{profile.replace('-', '_')}]\n"
            f"  issuer: \"{rng.choice(_ISSUERS[1:])}\"\n"
        )
    for name, issuer in zip(("root", "issuing-1", "issuing-2", "device"), _ISSUERS):
        files[f"pki/ca/{name}.json"] = (
            f'{{\n  "name": "{name}",\n  "subject": "{issuer}",\n  "key_label": "ca-{name}",\n'
            f'  "serial_bits": 128,\n  "crl_distribution": "http://crl.pki.example.com/{name}.crl"\n}}\n'
        )
    files["pki/crl-schedule.conf"] = "[schedule]\nfull = 0 */6 * * *\ndelta = */30 * * * *\n"

    # Services
    for service, port in (("api", 8443), ("ocsp", 8080), ("crl", 8081), ("est", 8444), ("acme", 8445), ("web", 443)):
        files[f"services/{service}.ini"] = (
            f"[{service}]\nenabled = {rng.choice(('true', 'true', 'false'))}\nlisten = 0.0.0.0:{port}\n"
            f"workers = {rng.choice((2, 4, 8))}\nrequest_timeout_s = 30\nrate_limit_per_min = {rng.choice((600, 1200, 6000))}\n"
        )

    # Monitoring and locale
    files["monitoring/snmp.conf"] = (
        "agentAddress udp:161\nsysLocation DC-1 rack 12\nsysContact pki-ops@corp.example.com\n"
        "rouser monitor authPriv\n"
    )
    files["monitoring/prometheus.yaml"] = "exporter:\n  listen: 127.0.0.1:9100\n  collectors: [cpu, disk, pki, hsm]\n"
    files["monitoring/alerts.yaml"] = "alerts:\n" + "".join(
        f"  - name: {name}\n    threshold: {threshold}\n"
        for name, threshold in (("cert_expiry_days", 30), ("crl_age_hours", 12), ("disk_used_pct", 85), ("hsm_latency_ms", 200))
    )
    files["locale.conf"] = "LANG=en_US.UTF-8\nLC_TIME=en_GB.UTF-8\n"
    files["timezone"] = "Europe/Berlin\n"
    files["motd"] = "Example PKI Appliance - authorised use only. All sessions are recorded.\n"
    private += ["database/external/reporting.ini", "database/external/archive.ini", "users/oauth.json"]

    write_files(root, files, private=private)


def _pem(rng: random.Random, subject: str, issuer: str, size: int) -> str:
    """A PEM block shaped like a certificate: readable names inside random key and signature bytes."""
    der = b"".join(
        (
            b"0\x82\x05\x1e0\x82\x04\x06\xa0\x03\x02\x01\x02\x02\x10",
            rng.randbytes(16),
            b"0\r\x06\t*\x86H\x86\xf7\r\x01\x01\x0b\x05\x00",
            issuer.encode(),
            subject.encode(),
            b"0\x82\x01\"0\r\x06\t*\x86H\x86\xf7\r\x01\x01\x01\x05\x00\x03\x82\x01\x0f\x00",
            rng.randbytes(max(0, size - 300 - len(issuer) - len(subject))),
        )
    )
    body = base64.b64encode(der)
    lines = [body[i : i + 64].decode() for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


# --------------------------------------------------------------------------
# Internal database

_SCHEMA = """
CREATE TABLE operators (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    email TEXT NOT NULL,
    role TEXT NOT NULL,
    auth_method TEXT NOT NULL CHECK (auth_method IN ('oauth', 'otp')),
    created_at TEXT NOT NULL,
    last_login TEXT,
    enabled INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE keys_metadata (
    id INTEGER PRIMARY KEY,
    label TEXT NOT NULL UNIQUE,
    algorithm TEXT NOT NULL,
    key_size INTEGER NOT NULL,
    usage TEXT NOT NULL,
    hsm_slot INTEGER NOT NULL,
    hsm_handle TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    state TEXT NOT NULL CHECK (state IN ('active', 'retired', 'pending'))
);
CREATE TABLE certificates (
    id INTEGER PRIMARY KEY,
    serial TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    issuer TEXT NOT NULL,
    san TEXT,
    profile TEXT NOT NULL,
    key_id INTEGER REFERENCES keys_metadata (id),
    not_before TEXT NOT NULL,
    not_after TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('valid', 'revoked', 'expired')),
    revoked_at TEXT,
    revocation_reason TEXT,
    requested_by TEXT,
    pem BLOB NOT NULL
);
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    operator TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    result TEXT NOT NULL,
    source_ip TEXT,
    details TEXT
);
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL
) WITHOUT ROWID;
"""

_INDEXES = """
CREATE INDEX certificates_subject ON certificates (subject);
CREATE INDEX certificates_not_after ON certificates (not_after);
CREATE INDEX certificates_status ON certificates (status, not_after);
CREATE INDEX audit_log_ts ON audit_log (ts);
CREATE INDEX audit_log_operator ON audit_log (operator, ts);
CREATE INDEX keys_metadata_state ON keys_metadata (state);
"""


def create_schema(connection: sqlite3.Connection) -> None:
    """Create the tables of the internal database (indexes come later, see `create_indexes`)."""
    connection.executescript(_SCHEMA)


def create_indexes(connection: sqlite3.Connection) -> None:
    """Create the indexes; done after the rows are in, as a bulk load would."""
    connection.executescript(_INDEXES)


def populate_database(
    connection: sqlite3.Connection, rng: random.Random, size: DatabaseSize, *, batch: int = 5000
) -> None:
    """Insert `size` rows of each table, in one transaction per batch.

    The caller chooses journal mode and synchronous level, and commits.
    """
    operators = list(iter_operator_rows(rng, size.operators))
    connection.executemany("INSERT INTO operators VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", operators)
    connection.executemany("INSERT INTO keys_metadata VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", iter_key_rows(rng, size.keys))
    connection.executemany("INSERT INTO settings VALUES (?, ?, ?)", settings_rows(rng))
    usernames = [row[1] for row in operators]
    _insert_batched(
        connection,
        "INSERT INTO certificates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        iter_certificate_rows(rng, size.certificates, keys=size.keys, operators=usernames),
        batch,
    )
    _insert_batched(
        connection,
        "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        iter_audit_rows(rng, size.audit_events, operators=usernames),
        batch,
    )


def _insert_batched(connection: sqlite3.Connection, sql: str, rows: Iterator[tuple], batch: int) -> None:
    while True:
        chunk = [row for _, row in zip(range(batch), rows)]
        if not chunk:
            return
        connection.executemany(sql, chunk)


def iter_operator_rows(rng: random.Random, count: int) -> Iterator[tuple]:
    """Rows of `operators`: a few accounts, most OAuth, some still on OTP."""
    for number, name in enumerate(_operator_names(rng, count), start=1):
        first, last = name.split(".")
        created = EPOCH + timedelta(days=rng.randrange(0, 200))
        yield (
            number,
            name,
            f"{first.title()} {last.title()}",
            f"{name}@corp.example.com",
            _ROLES[0] if number == 1 else rng.choice(_ROLES),
            "otp" if rng.random() < 0.2 else "oauth",
            _timestamp(created),
            _timestamp(created + timedelta(days=rng.randrange(1, 500), seconds=rng.randrange(86400))),
            0 if rng.random() < 0.1 else 1,
        )


def iter_key_rows(rng: random.Random, count: int) -> Iterator[tuple]:
    """Rows of `keys_metadata`: labels and algorithms of HSM keys, never key material."""
    algorithms = (("RSA", 3072), ("RSA", 4096), ("EC-P256", 256), ("EC-P384", 384), ("Ed25519", 256))
    usages = ("ca-signing", "ocsp-signing", "tls-server", "audit-signing", "crl-signing", "end-entity")
    for number in range(1, count + 1):
        algorithm, key_size = rng.choice(algorithms)
        usage = rng.choice(usages)
        created = EPOCH + timedelta(days=rng.randrange(0, 600))
        yield (
            number,
            f"{usage}-{created.year}-{number:04d}",
            algorithm,
            key_size,
            usage,
            rng.randrange(3),
            f"0x{rng.getrandbits(32):08x}",
            _timestamp(created),
            _timestamp(created + timedelta(days=rng.choice((365, 730, 1825, 3650)))),
            rng.choice(("active", "active", "active", "retired", "pending")),
        )


def iter_certificate_rows(
    rng: random.Random, count: int, *, keys: int, operators: Sequence[str], first_id: int = 1
) -> Iterator[tuple]:
    """Rows of `certificates`, each with a PEM blob of about 1.3 KiB."""
    reasons = ("keyCompromise", "superseded", "cessationOfOperation", "affiliationChanged")
    validities = (90, 365, 397, 730)
    span = 700 * _DAY
    now = _EPOCH_SECONDS + span
    for number in range(first_id, first_id + count):
        host = _host(rng)
        profile = _pick(rng, _PROFILES)
        subject = f"CN={host},OU={profile},O={_ORG},C=DE"
        issuer = _pick(rng, _ISSUERS[1:])
        not_before = _EPOCH_SECONDS + _below(rng, span)
        not_after = not_before + _pick(rng, validities) * _DAY
        revoked = rng.random() < 0.04
        if revoked:
            status = "revoked"
        elif not_after < now:
            status = "expired"
        else:
            status = "valid"
        yield (
            number,
            f"{number:08X}{rng.getrandbits(96):024X}",
            subject,
            issuer,
            f"DNS:{host},DNS:{host.split('.')[0]}.internal,IP:{_ip(rng)}",
            profile,
            1 + _below(rng, keys) if keys else None,
            _timestamp_at(not_before),
            _timestamp_at(not_after),
            status,
            _timestamp_at(not_before + (1 + _below(rng, 60)) * _DAY) if revoked else None,
            _pick(rng, reasons) if revoked else None,
            _pick(rng, operators) if operators else None,
            _pem(rng, subject, issuer, 900 + _below(rng, 200)).encode("ascii"),
        )


def iter_audit_rows(
    rng: random.Random, count: int, *, operators: Sequence[str], first_id: int = 1
) -> Iterator[tuple]:
    """Rows of `audit_log` in time order over about 700 days, with a JSON detail record each."""
    moment = _EPOCH_SECONDS
    step = 2 * max(1, 700 * _DAY // max(count, 1))
    users = operators or ("system",)
    clients = ("console", "api", "est", "acme", "scheduler")
    for number in range(first_id, first_id + count):
        moment += 1 + _below(rng, step)
        action = _pick(rng, _AUDIT_ACTIONS)
        result = "success" if rng.random() < 0.96 else _pick(rng, ("denied", "failed"))
        if action.startswith("certificate"):
            target = f"{number:08X}{rng.getrandbits(64):016X}"
        else:
            target = _host(rng)
        details = (
            f'{{"request_id": "{rng.getrandbits(128):032x}", "duration_ms": {1 + _below(rng, 900)}, '
            f'"client": "{_pick(rng, clients)}", "node": "node-{1 + _below(rng, 3)}", '
            f'"session": "{rng.getrandbits(64):016x}"}}'
        )
        yield (number, _timestamp_at(moment), _pick(rng, users), action, target, result, _ip(rng), details)


def settings_rows(rng: random.Random) -> list[tuple[str, str, str]]:
    """Rows of `settings`: the service's own key/value configuration."""
    values = {
        "instance.id": _hex(rng, 16),
        "instance.name": "pki-prod",
        "ca.default_profile": "tls-server",
        "ca.serial_bits": "128",
        "crl.next_number": str(rng.randrange(1000, 9000)),
        "ocsp.cache_seconds": "300",
        "audit.signing_key": "audit-signing-2024-0001",
        "audit.hash_chain_head": _hex(rng, 32),
        "api.rate_limit": "1200",
        "schema.version": "42",
    }
    updated = _timestamp(EPOCH + timedelta(days=rng.randrange(300, 700)))
    return [(key, value, updated) for key, value in sorted(values.items())]

