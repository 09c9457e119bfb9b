"""Provides the Domain Master Secret (DMS): set once, kept only as a derived key.

The appliance never stores the passphrase. When the DMS is set, a random salt
is drawn and scrypt derives the key-encryption key (KEK) that wraps each
backup's file key. The KEK, its salt and parameters are kept in the state
directory (mode 0600) so scheduled backups run unattended; restoring on
another appliance needs the passphrase itself.
"""

from __future__ import annotations

import hmac
import json
import os
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from backup.archive import KeyEncryptionKey, ScryptParams, derive_kek, new_salt
from backup.errors import ConfigError, DmsAlreadySetError, DmsNotSetError
from backup.fsutil import atomic_write_text, ensure_private_dir
from backup.trust import check_trusted

MIN_LENGTH = 8
"""The shortest DMS accepted, in Unicode code points of its NFC form (not bytes, not letters on screen)."""
KEY_FILE = "dms.key"
MAX_PASSPHRASE_FILE_LINE = 4096
"""Characters read from a passphrase file's first line (its line ending included)."""
ALREADY_SET = "The Domain Master Secret is already set and can only be set once: every backup depends on it."


@dataclass(frozen=True)
class SecretInfo:
    """What may be shown about the DMS: whether and when it was set, never the secret."""

    is_set: bool
    set_at: datetime | None = None


APPLIANCE_ID_LABEL = b"appliance-backup appliance id"


def appliance_identity(kek: KeyEncryptionKey) -> str:
    """The appliance's identity in its backups' manifests (FORMAT.md P.2): 32 hex digits derived from its KEK.

    Random (the KEK derives from a random salt), fixed for the appliance's life like the DMS, with
    nothing an operator can edit, and one-way: it says nothing about the KEK. Derived rather than
    stored, so appliances whose DMS was set before identities existed have one too, with no
    migration and no second file to lose.
    """
    return hmac.new(kek.key, APPLIANCE_ID_LABEL, "sha256").digest()[:16].hex()


def normalize(passphrase: str) -> str:
    """The form every passphrase is compared and derived in (Unicode NFC)."""
    return unicodedata.normalize("NFC", passphrase)


def validate_passphrase(passphrase: str, repeated: str | None = None) -> str | None:
    """A sentence saying what is wrong with a new DMS, or None when it is acceptable."""
    text = normalize(passphrase)
    if len(text) < MIN_LENGTH:
        return f"The Domain Master Secret must be at least {MIN_LENGTH} characters long (it has {len(text)})."
    if not text.strip():
        return "The Domain Master Secret cannot be only spaces."
    if repeated is not None and normalize(repeated) != text:
        return "The two entries of the Domain Master Secret do not match: type the same secret twice."
    return None


def read_passphrase_file(path: str | os.PathLike[str]) -> str:
    """The passphrase held on the first line of `path` (its line ending and a UTF-8 byte-order mark removed).

    Editors on Windows start UTF-8 files with a byte-order mark; kept, it would
    become an invisible first character of the DMS that no keyboard can type.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            line = f.readline(MAX_PASSPHRASE_FILE_LINE + 1)  # /dev/zero or a big file by mistake: bounded
    except FileNotFoundError:
        raise ConfigError(f"The passphrase file {path} does not exist.") from None
    except PermissionError:
        raise ConfigError(f"The passphrase file {path} cannot be read (permission denied).") from None
    except UnicodeDecodeError:
        raise ConfigError(f"The passphrase file {path} is not UTF-8 text.") from None
    except IsADirectoryError:
        raise ConfigError(f"The passphrase file {path} is a directory: give the file holding the passphrase.") from None
    if len(line) > MAX_PASSPHRASE_FILE_LINE:
        raise ConfigError(f"The first line of the passphrase file {path} is longer than {MAX_PASSPHRASE_FILE_LINE} "
                          "characters: give a file whose first line is the passphrase.")
    passphrase = line.rstrip("\r\n")
    if not passphrase:
        raise ConfigError(f"The passphrase file {path} is empty: its first line must hold the passphrase.")
    return passphrase


class DomainMasterSecret:
    """The DMS of one appliance, kept as a KEK in `state_dir`."""

    def __init__(self, state_dir: Path, *, params: ScryptParams | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / KEY_FILE
        self.params = params or ScryptParams()

    def info(self) -> SecretInfo:
        try:
            data = self._read()
        except DmsNotSetError:
            return SecretInfo(is_set=False)
        try:
            set_at = datetime.fromisoformat(data["set_at"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"The key file {self.path} is damaged (no valid set_at): restore it from a copy.") from None
        return SecretInfo(is_set=True, set_at=set_at)

    def is_set(self) -> bool:
        return self.path.exists()

    def set(self, passphrase: str, *, now: datetime) -> SecretInfo:
        """Derive and store the KEK. Refused when a DMS is already set: it is set once."""
        self.ensure_not_set()  # first: whatever was typed, it cannot be set again
        problem = validate_passphrase(passphrase)
        if problem:
            raise ConfigError(problem)
        self.check_trusted()
        ensure_private_dir(self.state_dir)
        kek = derive_kek(normalize(passphrase), new_salt(), self.params)
        data = {
            "version": 1,
            "kdf": "scrypt",
            "log2_n": kek.params.log2_n,
            "r": kek.params.r,
            "p": kek.params.p,
            "salt": kek.salt.hex(),
            "cipher": kek.cipher,
            "kek": kek.key.hex(),
            "set_at": now.isoformat(),
        }
        # O_EXCL closes the race between two processes setting it at once.
        tmp = self.path.with_name(f".{KEY_FILE}.{os.getpid()}.tmp")
        atomic_write_text(tmp, json.dumps(data), mode=0o600)
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            raise DmsAlreadySetError(ALREADY_SET) from None
        finally:
            tmp.unlink(missing_ok=True)
        return SecretInfo(is_set=True, set_at=now)

    def ensure_not_set(self) -> None:
        """Raise DmsAlreadySetError when the DMS is set (it can be set only once)."""
        if self.is_set():
            raise DmsAlreadySetError(ALREADY_SET)

    def kek(self) -> KeyEncryptionKey:
        """The stored key-encryption key; DmsNotSetError when no DMS was set."""
        data = self._read()
        try:
            return KeyEncryptionKey(
                key=bytes.fromhex(data["kek"]),
                salt=bytes.fromhex(data["salt"]),
                params=ScryptParams(log2_n=int(data["log2_n"]), r=int(data["r"]), p=int(data["p"])),
                cipher=data.get("cipher", "aes-256-gcm"),
            )
        except (KeyError, ValueError, TypeError):
            raise ConfigError(
                f"The key file {self.path} is damaged: restore it from the state directory's backup copy; "
                "without it new backups cannot be made with the existing secret."
            ) from None

    def check(self, passphrase: str) -> bool:
        """Whether `passphrase` is the DMS (slowed by the KDF on purpose; reveals nothing else)."""
        kek = self.kek()
        candidate = derive_kek(normalize(passphrase), kek.salt, kek.params, cipher=kek.cipher)
        return hmac.compare_digest(candidate.key, kek.key)

    def check_trusted(self) -> None:
        """Refuse a state directory or key file another local user could replace (backup.trust)."""
        check_trusted(self.state_dir, "The state directory", private=True)
        check_trusted(self.path, "The Domain Master Secret key file")

    def _read(self) -> dict:
        self.check_trusted()  # at every use: the key encrypts what happens next
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DmsNotSetError(
                "No Domain Master Secret is set, so no backup can be created: set it once with "
                "`appliance-backup secret set` or on the console's Settings screen."
            ) from None
        except PermissionError:
            raise ConfigError(f"The key file {self.path} cannot be read (permission denied): run as the appliance's backup user.") from None
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError
        except ValueError:
            raise ConfigError(f"The key file {self.path} is damaged: restore it from a copy.") from None
        return data
