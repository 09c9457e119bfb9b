"""Provides the encryption layer of a backup file: a streaming, chunked AEAD container.

The byte layout is specified in docs/FORMAT.md; this module is one
implementation of it. In short: a 162-byte header (magic, version, cipher,
scrypt parameters and salt, chunk size, the per-file key wrapped with the
key-encryption key, a keyed header MAC and an unkeyed checksum), then the
payload in fixed-size chunks, each sealed with AES-256-GCM or
ChaCha20-Poly1305 under a nonce made of the chunk counter and a last-chunk
flag, so that reordering, truncation and appended data are all detected.

`ArchiveWriter` is a write-only binary file-like object (the sink of a zstd
stream writer); `ArchiveReader` is a read-only one (the source of a zstd
stream reader or of `tarfile` in mode ``"r|"``). The reader hands out only
plaintext whose chunk has been authenticated.

Secrets (passphrase, key-encryption key, file key) never appear in an error
message or a ``repr``; functions that hold raw key bytes drop them before they
raise, so a traceback rendered with its local variables shows none either.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import secrets
import struct
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Final, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from backup.errors import BackupError, IntegrityError, NotABackupError, WrongDmsError

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "AES_256_GCM",
    "CHACHA20_POLY1305",
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "HEADER_LENGTH",
    "MAGIC",
    "ArchiveReader",
    "ArchiveWriter",
    "Header",
    "MAX_CHUNK_INDEX",
    "TAG_LENGTH",
    "chunk_nonce",
    "parse_header",
    "KeyEncryptionKey",
    "ScryptParams",
    "derive_kek",
    "new_salt",
    "opens_with",
    "read_header",
]

MAGIC: Final = b"\x89ABK\r\n\x1a\n"
FORMAT_VERSION: Final = 1
HEADER_LENGTH: Final = 162
TAG_LENGTH: Final = 16
KEY_LENGTH: Final = 32
SALT_LENGTH: Final = 16
NONCE_LENGTH: Final = 12

AES_256_GCM: Final = "aes-256-gcm"
CHACHA20_POLY1305: Final = "chacha20-poly1305"
_CIPHER_IDS: Final = {AES_256_GCM: 1, CHACHA20_POLY1305: 2}
_CIPHER_NAMES: Final = {number: name for name, number in _CIPHER_IDS.items()}
_AEAD_CLASSES: Final[dict[str, type[AESGCM] | type[ChaCha20Poly1305]]] = {AES_256_GCM: AESGCM, CHACHA20_POLY1305: ChaCha20Poly1305}
_KDF_SCRYPT: Final = 1

MIN_CHUNK_SIZE: Final = 4 * 1024
MAX_CHUNK_SIZE: Final = 16 * 1024 * 1024
DEFAULT_CHUNK_SIZE: Final = 1024 * 1024

MIN_LOG2_N: Final = 10
MAX_LOG2_N: Final = 20
MAX_R: Final = 32
MAX_P: Final = 16
MAX_SCRYPT_MEMORY: Final = 256 * 1024 * 1024
"""Largest scrypt working memory (128 * r * N bytes) a reader agrees to spend."""

MAX_CHUNK_INDEX: Final = (1 << 88) - 1
"""The chunk counter is 11 bytes: a file holds at most 2**88 chunks."""

_HEADER_MAC_INFO: Final = b"appliance-backup v1 header"
_PAYLOAD_KEY_INFO: Final = b"appliance-backup v1 payload"

# off len: magic 0 8, version 8 2, header_length 10 2, cipher 12 1, kdf 13 1,
# log2N 14 1, r 15 1, p 16 1, reserved 17 1, salt 18 16, chunk_size 34 4.
_PREFIX: Final = struct.Struct(">8sHHBBBBBB16sI")
_WRAP_AAD_END: Final = 38
_WRAP_NONCE_END: Final = 50
_WRAPPED_KEY_END: Final = 98
_MAC_END: Final = 130
_CHECKSUM_END: Final = HEADER_LENGTH
assert _PREFIX.size == _WRAP_AAD_END

_FINAL_FLAG: Final = b"\x01"
_NOT_FINAL_FLAG: Final = b"\x00"
_NO_AAD: Final = b""

_RELOCATION_WINDOW: Final = 16
"""How far (in chunks, each way) a failed chunk is looked for elsewhere, to
tell "chunks reordered, duplicated or dropped" from "chunk damaged". Only
runs after a failure, so its cost never touches a good file."""


@dataclass(frozen=True)
class ScryptParams:
    """The cost parameters of scrypt: N = 2**log2_n, block size r, parallelism p."""

    log2_n: int = 17
    """Base-2 logarithm of the CPU/memory cost N."""
    r: int = 8
    """Block size."""
    p: int = 1
    """Parallelism."""

    @property
    def memory(self) -> int:
        """Bytes of working memory scrypt needs with these parameters (128 * r * N)."""
        return 128 * self.r * (1 << self.log2_n)

    def problem(self) -> str | None:
        """Say why a reader would refuse these parameters, or None if it accepts them."""
        if not MIN_LOG2_N <= self.log2_n <= MAX_LOG2_N:
            return f"scrypt log2(N) = {self.log2_n} is outside {MIN_LOG2_N}..{MAX_LOG2_N}"
        if not 1 <= self.r <= MAX_R:
            return f"scrypt r = {self.r} is outside 1..{MAX_R}"
        if self.log2_n >= 16 * self.r:  # RFC 7914: N < 2**(128 * r / 8); OpenSSL refuses the rest
            return f"scrypt log2(N) = {self.log2_n} needs r of at least {self.log2_n // 16 + 1} (r = {self.r})"
        if not 1 <= self.p <= MAX_P:
            return f"scrypt p = {self.p} is outside 1..{MAX_P}"
        if self.memory > MAX_SCRYPT_MEMORY:
            return (
                f"scrypt would need {self.memory >> 20} MiB of memory "
                f"(log2(N) = {self.log2_n}, r = {self.r}); the limit is "
                f"{MAX_SCRYPT_MEMORY >> 20} MiB"
            )
        return None


@dataclass(frozen=True, repr=False)
class KeyEncryptionKey:
    """The key that wraps each file's random key, with the salt and parameters it came from.

    Derived once from the Domain Master Secret with `derive_kek`; the
    appliance keeps it so scheduled backups need no passphrase. The key never
    appears in ``repr`` or ``str``.
    """

    key: bytes
    """The 32 key bytes. Secret."""
    salt: bytes
    """The 16-byte scrypt salt the key was derived with."""
    params: ScryptParams
    """The scrypt parameters the key was derived with."""
    cipher: str = AES_256_GCM
    """The AEAD a writer uses with this key: "aes-256-gcm" or "chacha20-poly1305"."""

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != KEY_LENGTH:
            raise ValueError(f"a key-encryption key must be {KEY_LENGTH} bytes")
        if not isinstance(self.salt, bytes) or len(self.salt) != SALT_LENGTH:
            raise ValueError(f"a scrypt salt must be {SALT_LENGTH} bytes")
        if self.cipher not in _CIPHER_IDS:
            raise ValueError(
                f"unknown cipher {self.cipher!r}; use one of {', '.join(_CIPHER_IDS)}"
            )

    def __repr__(self) -> str:
        return (
            f"KeyEncryptionKey(key=<hidden>, salt={self.salt.hex()}, "
            f"params={self.params!r}, cipher={self.cipher!r})"
        )

    __str__ = __repr__


def new_salt() -> bytes:
    """Return a fresh random scrypt salt (16 bytes)."""
    return secrets.token_bytes(SALT_LENGTH)


def _scrypt(password: bytes, salt: bytes, params: ScryptParams) -> bytes:
    kdf = Scrypt(salt=salt, length=KEY_LENGTH, n=1 << params.log2_n, r=params.r, p=params.p)
    return kdf.derive(password)


def derive_kek(
    passphrase: str,
    salt: bytes,
    params: ScryptParams,
    cipher: str = AES_256_GCM,
) -> KeyEncryptionKey:
    """Derive the key-encryption key from a passphrase (the DMS).

    The passphrase is normalised to Unicode NFC and encoded as UTF-8, so the
    same secret typed on differently-composing keyboards gives the same key.

    Raises:
        ValueError: the salt is not 16 bytes, the parameters are outside
            what a reader accepts, or the cipher is unknown.
    """
    problem = params.problem()
    if problem is not None:
        raise ValueError(f"unusable scrypt parameters: {problem}")
    if len(salt) != SALT_LENGTH:
        raise ValueError(f"a scrypt salt must be {SALT_LENGTH} bytes")
    password = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    return KeyEncryptionKey(_scrypt(password, bytes(salt), params), bytes(salt), params, cipher)


def _hkdf(file_key: bytes, info: bytes) -> bytes:
    # An empty salt equals RFC 5869's default (HashLen zero bytes) under HMAC.
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LENGTH, salt=b"", info=info).derive(file_key)


@dataclass(frozen=True)
class Header:
    """The plaintext header of a backup file, parsed and checked but not yet authenticated.

    `read_header` returns it once the limits and the checksum hold. Only
    opening the file with its DMS (`ArchiveReader`, `opens_with`) proves the
    header authentic.
    """

    version: int
    """The format version (always 1 here)."""
    cipher: str
    """"aes-256-gcm" or "chacha20-poly1305"."""
    params: ScryptParams
    """The scrypt parameters the key-encryption key is derived with."""
    salt: bytes
    """The 16-byte scrypt salt."""
    chunk_size: int
    """Plaintext bytes per chunk (each stored chunk is 16 bytes longer)."""
    wrap_nonce: bytes = field(repr=False)
    """The 12-byte nonce the file key was wrapped with."""
    wrapped_file_key: bytes = field(repr=False)
    """The file key sealed with the key-encryption key (48 bytes)."""
    header_mac: bytes = field(repr=False)
    """HMAC-SHA256 of the first 98 header bytes, keyed from the file key."""
    raw: bytes = field(repr=False)
    """All 162 header bytes as stored."""

    @property
    def kdf(self) -> str:
        """The key-derivation function (always "scrypt" in version 1)."""
        return "scrypt"

    @property
    def length(self) -> int:
        """Bytes the header takes at the start of the file."""
        return len(self.raw)


def _source_name(source: object) -> str:
    name = getattr(source, "name", None)
    if isinstance(name, str) and name:
        return f"'{name}'"
    return "the file"


def _read_fully(source: BinaryIO, size: int) -> bytes:
    parts = []
    remaining = size
    while remaining > 0:
        part = source.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


_DAMAGED_HINT: Final = "the file is damaged or was not written by appliance-backup"


def parse_header(raw: bytes, *, name: str = "the file") -> Header:
    """Parse and check header bytes without any key derivation.

    Checks, in this order: the magic, the format version, the length, every
    field against the reader limits, then the checksum. Nothing is derived or
    allocated beyond the header itself, so a hostile header costs nothing.

    Raises:
        NotABackupError: the bytes do not start with the backup magic.
        IntegrityError: any other check fails.
    """
    raw = bytes(raw)
    if len(raw) < len(MAGIC) or raw[: len(MAGIC)] != MAGIC:
        if not raw:
            detail = "it is empty"
        else:
            detail = "it does not start with the appliance-backup magic bytes"
        raise NotABackupError(
            f"{name} is not an appliance-backup file ({detail}); "
            "choose a backup file made by appliance-backup."
        )
    if len(raw) < 10:
        raise IntegrityError(
            f"The backup header of {name} is truncated ({len(raw)} of {HEADER_LENGTH} bytes); "
            "the file was cut short: use another copy of the backup."
        )
    (version,) = struct.unpack_from(">H", raw, 8)
    if version != FORMAT_VERSION:
        raise IntegrityError(
            f"{name} is an appliance-backup file of format version {version}; this software "
            f"reads version {FORMAT_VERSION}. If a newer appliance-backup wrote it, read it "
            "with that version; otherwise the file is damaged."
        )
    if len(raw) < HEADER_LENGTH:
        raise IntegrityError(
            f"The backup header of {name} is truncated ({len(raw)} of {HEADER_LENGTH} bytes); "
            "the file was cut short: use another copy of the backup."
        )
    (
        _magic,
        _version,
        header_length,
        cipher_id,
        kdf_id,
        log2_n,
        r,
        p,
        reserved,
        salt,
        chunk_size,
    ) = _PREFIX.unpack_from(raw)
    problem: str | None = None
    if header_length != HEADER_LENGTH:
        problem = f"header length {header_length} is not {HEADER_LENGTH}"
    elif cipher_id not in _CIPHER_NAMES:
        problem = f"cipher id {cipher_id} is unknown (1 = AES-256-GCM, 2 = ChaCha20-Poly1305)"
    elif kdf_id != _KDF_SCRYPT:
        problem = f"key-derivation id {kdf_id} is unknown (1 = scrypt)"
    elif reserved != 0:
        problem = f"reserved byte is {reserved}, not 0"
    else:
        params = ScryptParams(log2_n, r, p)
        problem = params.problem()
        if problem is None and not (
            MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE and chunk_size & (chunk_size - 1) == 0
        ):
            problem = (
                f"chunk size {chunk_size} is not a power of two between "
                f"{MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
            )
    if problem is not None:
        raise IntegrityError(f"The backup header of {name} is invalid: {problem}; {_DAMAGED_HINT}.")
    checksum = hashlib.sha256(raw[:_MAC_END]).digest()
    if not hmac.compare_digest(checksum, raw[_MAC_END:_CHECKSUM_END]):
        raise IntegrityError(
            f"The backup header of {name} is damaged (its checksum does not match); "
            "use another copy of the backup."
        )
    return Header(
        version=version,
        cipher=_CIPHER_NAMES[cipher_id],
        params=params,
        salt=salt,
        chunk_size=chunk_size,
        wrap_nonce=raw[_WRAP_AAD_END:_WRAP_NONCE_END],
        wrapped_file_key=raw[_WRAP_NONCE_END:_WRAPPED_KEY_END],
        header_mac=raw[_WRAPPED_KEY_END:_MAC_END],
        raw=raw[:HEADER_LENGTH],
    )


def read_header(source: BinaryIO) -> Header:
    """Read the 162-byte header from the start of `source` and check it, without any KDF.

    The source is left positioned at the first chunk.

    Raises:
        NotABackupError: the file does not start with the backup magic.
        IntegrityError: the header is truncated, out of the reader's limits,
            of another format version, or damaged.
    """
    return parse_header(_read_fully(source, HEADER_LENGTH), name=_source_name(source))


def _unwrap_file_key(header: Header, kek: KeyEncryptionKey) -> bytes | None:
    """Return the file key, or None if this KEK cannot open the header."""
    if kek.salt != header.salt or kek.params != header.params:
        return None
    wrap = _AEAD_CLASSES[header.cipher](kek.key)
    try:
        return wrap.decrypt(header.wrap_nonce, header.wrapped_file_key, header.raw[:_WRAP_AAD_END])
    except InvalidTag:
        return None


def opens_with(header: Header, kek: KeyEncryptionKey) -> bool:
    """Say whether `kek` opens the file with this header.

    True when the key's salt and scrypt parameters are the header's and it
    unwraps the file key. No key derivation runs.
    """
    return _unwrap_file_key(header, kek) is not None


class _FileKeys:
    """The keys a file key expands to; holds no raw key bytes in its repr."""

    __slots__ = ("header_mac_key", "payload")

    def __init__(self, cipher: str, file_key: bytes) -> None:
        self.header_mac_key = _hkdf(file_key, _HEADER_MAC_INFO)
        self.payload = _AEAD_CLASSES[cipher](_hkdf(file_key, _PAYLOAD_KEY_INFO))

    def __repr__(self) -> str:
        return "_FileKeys(<hidden>)"

    def header_mac(self, header_start: bytes) -> bytes:
        return hmac.new(self.header_mac_key, header_start, hashlib.sha256).digest()


def chunk_nonce(index: int, final: bool) -> bytes:
    """Return the 12-byte nonce of chunk `index`: an 11-byte big-endian counter and a flag byte.

    Raises:
        OverflowError: the index does not fit the 11-byte counter.
    """
    if not 0 <= index <= MAX_CHUNK_INDEX:
        raise OverflowError(f"chunk index {index} does not fit the 11-byte counter")
    return index.to_bytes(11, "big") + (_FINAL_FLAG if final else _NOT_FINAL_FLAG)


class ArchiveWriter:
    """Encrypts a byte stream into a backup file: a write-only binary file-like object.

    The header goes to the sink at once. Plaintext is buffered up to one
    chunk; a chunk is sealed and written only when more data arrives after
    it, so `close()` can mark the buffered chunk as the final one without
    knowing the payload length in advance.

    This is deliberately not an `io.IOBase`: IOBase closes an object when it
    is garbage-collected, and closing seals the file as complete. A writer
    dropped after an error must leave a file that every reader rejects as
    truncated, so only an explicit `close()` (or leaving a ``with`` block
    without an exception) writes the final chunk; `abort()`, an error while
    writing, or an exception inside ``with`` never does.

    The writer does not close the sink. Give it to ``zstandard``'s
    ``stream_writer(..., closefd=False)`` and call `close()` yourself once
    the compressor is flushed, so an exception inside the compressor's
    ``with`` block cannot seal a partial backup.
    """

    def __init__(
        self,
        sink: BinaryIO,
        kek: KeyEncryptionKey,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        file_key: bytes | None = None,
        wrap_nonce: bytes | None = None,
    ) -> None:
        """Write the header of a new backup file to `sink`.

        Args:
            sink: where the ciphertext goes; any object with ``write``.
            kek: the key-encryption key, with the salt and scrypt parameters
                it was derived with; its ``cipher`` is the file's cipher.
            chunk_size: plaintext bytes per chunk, a power of two from 4 KiB
                to 16 MiB.
            file_key: the 32-byte file key; only for reproducible test
                vectors (a random one is drawn otherwise).
            wrap_nonce: the 12-byte nonce that wraps the file key; only for
                test vectors.

        Raises:
            ValueError: an argument is outside what a reader accepts.
        """
        if not (
            MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE and chunk_size & (chunk_size - 1) == 0
        ):
            raise ValueError(
                f"chunk size {chunk_size} is not a power of two between "
                f"{MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
            )
        problem = kek.params.problem()
        if problem is not None:
            raise ValueError(f"a reader would refuse this key's scrypt parameters: {problem}")
        if file_key is None:
            file_key = secrets.token_bytes(KEY_LENGTH)
        elif len(file_key) != KEY_LENGTH:
            raise ValueError(f"a file key must be {KEY_LENGTH} bytes")
        if wrap_nonce is None:
            wrap_nonce = secrets.token_bytes(NONCE_LENGTH)
        elif len(wrap_nonce) != NONCE_LENGTH:
            raise ValueError(f"a wrap nonce must be {NONCE_LENGTH} bytes")

        self._sink = sink
        self._chunk_size = chunk_size
        self._cipher = kek.cipher
        prefix = _PREFIX.pack(
            MAGIC,
            FORMAT_VERSION,
            HEADER_LENGTH,
            _CIPHER_IDS[kek.cipher],
            _KDF_SCRYPT,
            kek.params.log2_n,
            kek.params.r,
            kek.params.p,
            0,
            kek.salt,
            chunk_size,
        )
        wrap = _AEAD_CLASSES[kek.cipher](kek.key)
        wrapped = wrap.encrypt(bytes(wrap_nonce), bytes(file_key), prefix)
        keys = _FileKeys(kek.cipher, bytes(file_key))
        del file_key
        start = prefix + bytes(wrap_nonce) + wrapped
        start += keys.header_mac(start)
        header = start + hashlib.sha256(start).digest()
        assert len(header) == HEADER_LENGTH
        self._aead = keys.payload
        del keys

        self._plain = bytearray(chunk_size)
        self._plain_view = memoryview(self._plain)
        self._filled = 0
        self._sealed = bytearray(chunk_size + TAG_LENGTH)
        self._sealed_view = memoryview(self._sealed)
        self._index = 0
        self._bytes_written = 0
        self._closed = False
        self._failed = False
        self._write_to_sink(memoryview(header))
        self.header = parse_header(header)
        """The header this writer wrote."""

    @property
    def bytes_written(self) -> int:
        """Ciphertext bytes written to the sink so far, the header included."""
        return self._bytes_written

    @property
    def closed(self) -> bool:
        """True once `close()` or `abort()` ran."""
        return self._closed

    @property
    def chunk_size(self) -> int:
        """Plaintext bytes per chunk."""
        return self._chunk_size

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Take plaintext; seal and write each chunk once data after it has arrived.

        Returns:
            The number of bytes taken (always all of them).
        """
        self._check_open()
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        taken = len(view)
        size = self._chunk_size
        try:
            while view:
                if self._filled == size:
                    self._seal(self._plain_view, final=False)
                    self._filled = 0
                if self._filled == 0 and len(view) > size:
                    self._seal(view[:size], final=False)
                    view = view[size:]
                    continue
                count = min(size - self._filled, len(view))
                self._plain_view[self._filled : self._filled + count] = view[:count]
                self._filled += count
                view = view[count:]
        except BaseException:
            self._failed = True
            raise
        return taken

    def flush(self) -> None:
        """Flush the sink. The buffered chunk stays buffered: it may yet be the final one."""
        self._check_open()
        flush = getattr(self._sink, "flush", None)
        if flush is not None:
            flush()

    def close(self) -> None:
        """Seal the buffered data as the final chunk and write it. Does not close the sink.

        After an error while writing, or after `abort()`, it writes nothing:
        the file then ends without a final chunk and every reader rejects it.
        """
        if self._closed:
            return
        self._closed = True
        if self._failed:
            return
        assert self._filled > 0 or self._index == 0
        try:
            self._seal(self._plain_view[: self._filled], final=True)
        except BaseException:
            self._failed = True
            raise
        self._filled = 0
        flush = getattr(self._sink, "flush", None)
        if flush is not None:
            flush()

    def abort(self) -> None:
        """Stop without writing the final chunk, so the partial file can never pass as complete."""
        self._failed = True
        self._closed = True

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("write to a closed backup writer")
        if self._failed:
            raise ValueError("write to a backup writer that already failed")

    def _seal(self, plaintext: memoryview, *, final: bool) -> None:
        index = self._index
        if index > MAX_CHUNK_INDEX or (not final and index == MAX_CHUNK_INDEX):
            raise BackupError(
                "The backup is too large for one file: the format allows at most 2**88 chunks; "
                "use a larger chunk size."
            )
        sealed = self._sealed_view[: len(plaintext) + TAG_LENGTH]
        self._aead.encrypt_into(chunk_nonce(index, final), plaintext, _NO_AAD, sealed)
        self._write_to_sink(sealed)
        self._index = index + 1

    def _write_to_sink(self, data: memoryview) -> None:
        written = self._sink.write(data)
        # Raw (unbuffered) sinks may take less than offered; the rest is retried.
        while written is not None and written < len(data):
            if written <= 0:
                raise OSError("the backup destination accepted no bytes")
            data = data[written:]
            self._bytes_written += written
            written = self._sink.write(data)
        self._bytes_written += len(data)


class ArchiveReader(io.BufferedIOBase):
    """Decrypts a backup file: a read-only binary file-like object over its plaintext.

    The constructor reads and checks the header, derives the key-encryption
    key if given a passphrase, unwraps the file key and checks the header
    MAC. Reads then decrypt chunk by chunk; a chunk's plaintext is handed out
    only once its tag has verified, and the end of the stream (``b""``) is
    reported only after the final chunk verified. Any failure raises
    `IntegrityError`, and every later read raises it again.

    Closing the reader does not close the source.
    """

    def __init__(
        self,
        source: BinaryIO,
        *,
        kek: KeyEncryptionKey | None = None,
        passphrase: str | None = None,
    ) -> None:
        """Open a backup file for reading.

        Args:
            source: the backup file, positioned at its start; anything with
                ``read`` (``readinto`` is used when present).
            kek: this appliance's key-encryption key. It opens only files
                written with the same salt and scrypt parameters.
            passphrase: the DMS, when the file comes from elsewhere; it is
                stretched with the salt and parameters in the header.

        Raises:
            NotABackupError: the file is not a backup file.
            IntegrityError: the header is out of limits, damaged or tampered.
            WrongDmsError: the key or passphrase does not open this file.
            ValueError: not exactly one of `kek` and `passphrase` was given.
        """
        super().__init__()
        if (kek is None) == (passphrase is None):
            raise ValueError("give exactly one of kek and passphrase")
        self._source = source
        self._name = _source_name(source)
        self.header = read_header(source)
        """The file's header, authenticated."""
        header = self.header
        if passphrase is not None:
            kek = derive_kek(passphrase, header.salt, header.params, header.cipher)
            del passphrase
            wrong = (
                "The passphrase does not open this backup: it is not the Domain Master Secret "
                "the backup was made with. Check it, or enter the DMS of the appliance that "
                "created the backup."
            )
        elif kek is not None and (kek.salt != header.salt or kek.params != header.params):
            wrong = (
                "This appliance's Domain Master Secret does not open this backup: the backup "
                "was made with a different DMS (its key-derivation salt or parameters differ "
                "from this appliance's). Enter the DMS of the appliance that created it."
            )
        else:
            wrong = (
                "This appliance's Domain Master Secret does not open this backup: the backup "
                "was made with a different DMS. Enter the DMS of the appliance that created it."
            )
        assert kek is not None
        keys = self._open(header, kek)
        del kek
        if keys is None:
            raise WrongDmsError(wrong)
        mac = keys.header_mac(header.raw[:_WRAPPED_KEY_END])
        if not hmac.compare_digest(mac, header.header_mac):
            raise IntegrityError(
                f"The backup header of {self._name} has been tampered with (its MAC does not "
                "match although the DMS is right); do not restore this file."
            )
        self._aead = keys.payload
        del keys

        size = header.chunk_size
        self._chunk_size = size
        self._sealed_length = size + TAG_LENGTH
        # One byte more than a sealed chunk: reading it tells a full final
        # chunk (then end of file) from a full chunk with more after it.
        self._sealed = bytearray(self._sealed_length + 1)
        self._sealed_view = memoryview(self._sealed)
        self._carried = 0
        self._plain = bytearray(size)
        self._plain_view = memoryview(self._plain)
        self._start = 0
        self._end = 0
        self._index = 0
        self._chunk_offset = HEADER_LENGTH
        self._bytes_read = HEADER_LENGTH
        self._position = 0
        self._finished = False
        self._error: IntegrityError | None = None
        self._readinto = getattr(source, "readinto", None)

    @staticmethod
    def _open(header: Header, kek: KeyEncryptionKey) -> _FileKeys | None:
        file_key = _unwrap_file_key(header, kek)
        if file_key is None:
            return None
        return _FileKeys(header.cipher, file_key)

    @property
    def bytes_read(self) -> int:
        """Ciphertext bytes consumed from the source so far, the header included."""
        return self._bytes_read

    @property
    def finished(self) -> bool:
        """True once the final chunk authenticated (the whole file is proven intact)."""
        return self._finished

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        """Plaintext bytes handed out so far."""
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        """Return up to `size` bytes of authenticated plaintext (all the rest if negative).

        Fewer bytes than asked come back only at the end of the payload.
        """
        self._check_readable()
        if size is None or size < 0:
            return self.readall()
        if size == 0:
            return b""
        if self._start == self._end and not self._next_chunk():
            return b""
        available = self._end - self._start
        if size <= available:
            data = bytes(self._plain_view[self._start : self._start + size])
            self._start += size
            self._position += size
            return data
        out = bytearray(size)
        count = self.readinto(out)
        del out[count:]
        return bytes(out)

    def read1(self, size: int = -1) -> bytes:
        """Return up to `size` bytes from at most one chunk."""
        self._check_readable()
        if self._start == self._end and not self._next_chunk():
            return b""
        available = self._end - self._start
        if size < 0 or size > available:
            size = available
        data = bytes(self._plain_view[self._start : self._start + size])
        self._start += size
        self._position += size
        return data

    def readall(self) -> bytes:
        """Return all remaining authenticated plaintext."""
        self._check_readable()
        parts = []
        while self._start < self._end or self._next_chunk():
            parts.append(bytes(self._plain_view[self._start : self._end]))
            self._position += self._end - self._start
            self._start = self._end
        return b"".join(parts)

    def readinto(self, buffer: Buffer) -> int:
        """Fill `buffer` with authenticated plaintext; short only at the end of the payload."""
        self._check_readable()
        target = memoryview(buffer)
        if target.ndim != 1 or target.itemsize != 1:
            target = target.cast("B")
        done = 0
        wanted = len(target)
        while done < wanted:
            if self._start == self._end and not self._next_chunk():
                break
            count = min(self._end - self._start, wanted - done)
            target[done : done + count] = self._plain_view[self._start : self._start + count]
            self._start += count
            done += count
        self._position += done
        return done

    def readinto1(self, buffer: Buffer) -> int:
        """Fill `buffer` from at most one chunk."""
        self._check_readable()
        target = memoryview(buffer)
        if target.ndim != 1 or target.itemsize != 1:
            target = target.cast("B")
        if self._start == self._end and not self._next_chunk():
            return 0
        count = min(self._end - self._start, len(target))
        target[:count] = self._plain_view[self._start : self._start + count]
        self._start += count
        self._position += count
        return count

    def drain(self, on_chunk: Callable[[], None] | None = None) -> int:
        """Authenticate every remaining chunk without copying plaintext out.

        The fast way to prove the encryption layer of a file intact.

        Args:
            on_chunk: called after each chunk is authenticated (progress, cancellation).

        Returns:
            The number of plaintext bytes skipped.
        """
        self._check_readable()
        skipped = self._end - self._start
        self._start = self._end
        while self._next_chunk():
            skipped += self._end - self._start
            self._start = self._end
            if on_chunk is not None:
                on_chunk()
        self._position += skipped
        return skipped

    def detach(self) -> NoReturn:
        raise io.UnsupportedOperation("an ArchiveReader cannot be detached")

    def _check_readable(self) -> None:
        if self.closed:
            raise ValueError("read from a closed backup reader")
        if self._error is not None:
            raise IntegrityError(self._error.message)

    def _fill(self, start: int) -> int:
        """Read into the sealed buffer from `start` until it is full or the source ends."""
        view = self._sealed_view
        end = len(view)
        position = start
        readinto = self._readinto
        while position < end:
            if readinto is not None:
                count = readinto(view[position:])
            else:
                part = self._source.read(end - position)
                count = len(part) if part else 0
                view[position : position + count] = part
            if not count:
                break
            position += count
        return position

    def _next_chunk(self) -> bool:
        """Authenticate the next chunk into the plaintext buffer; False at the end."""
        if self._finished:
            return False
        try:
            self._decrypt_next()
        except IntegrityError as error:
            self._error = error
            raise
        return True

    def _decrypt_next(self) -> None:
        index = self._index
        length = self._fill(self._carried)
        self._bytes_read += length - self._carried
        more = length > self._sealed_length
        sealed = self._sealed_view[: min(length, self._sealed_length)]
        if index > MAX_CHUNK_INDEX or (more and index == MAX_CHUNK_INDEX):
            raise IntegrityError(
                f"The backup file {self._name} is invalid: it has more chunks than the format "
                "allows (2**88)."
            )
        plain = self._plain_view[: max(len(sealed) - TAG_LENGTH, 0)]
        if len(sealed) >= TAG_LENGTH and self._try(sealed, index, final=not more, into=plain):
            if more:
                self._sealed[0] = self._sealed[self._sealed_length]
                self._carried = 1
            else:
                self._carried = 0
                if not plain and index > 0:
                    raise IntegrityError(
                        f"The backup file {self._name} is invalid: its final chunk {index} is "
                        "empty, which a correct writer never produces; do not restore it."
                    )
                self._finished = True
            self._start = 0
            self._end = len(plain)
            self._index = index + 1
            self._chunk_offset += len(sealed)
            return
        raise self._diagnose(sealed, index, more)

    def _try(self, sealed: memoryview, index: int, *, final: bool, into: memoryview) -> bool:
        try:
            self._aead.decrypt_into(chunk_nonce(index, final), sealed, _NO_AAD, into)
        except InvalidTag:
            return False
        return True

    def _diagnose(self, sealed: memoryview, index: int, more: bool) -> IntegrityError:
        """Say as precisely as the bytes allow why chunk `index` did not authenticate."""
        name = self._name
        offset = self._chunk_offset
        scratch = self._plain_view[: max(len(sealed) - TAG_LENGTH, 0)]
        if not sealed:
            # Only possible for chunk 0: a later chunk always starts with a carried byte.
            return IntegrityError(
                f"The backup file {name} is truncated: it ends right after the header, before "
                "any data. Use another copy of the backup."
            )
        if len(sealed) < TAG_LENGTH:
            return IntegrityError(
                f"The backup file {name} is truncated: it ends inside chunk {index} "
                f"(at byte {offset + len(sealed)}). Use another copy of the backup."
            )
        full = len(sealed) == self._sealed_length
        if full and not more and self._try(sealed, index, final=False, into=scratch):
            return IntegrityError(
                f"The backup file {name} is truncated: it ends after chunk {index} (at byte "
                f"{offset + len(sealed)}) and the rest is missing. Use another copy of the backup."
            )
        if more and self._try(sealed, index, final=True, into=scratch):
            return IntegrityError(
                f"Data was appended after the end of the backup in {name} (after chunk {index}, "
                f"from byte {offset + len(sealed)}); the backup itself is intact but the file "
                "was altered: find out why before restoring it."
            )
        finals = (True, False) if full else (True,)
        low = max(0, index - _RELOCATION_WINDOW)
        high = min(MAX_CHUNK_INDEX, index + _RELOCATION_WINDOW)
        for other in range(low, high + 1):
            if other == index:
                continue
            for final in finals:
                if self._try(sealed, other, final=final, into=scratch):
                    return IntegrityError(
                        f"The backup file {name} has been rearranged: position {index} (byte "
                        f"{offset}) holds chunk {other}, so chunks were reordered, duplicated or "
                        "removed. Do not restore it; use another copy of the backup."
                    )
        if more:
            return IntegrityError(
                f"The backup file {name} is damaged: chunk {index} (bytes {offset}.."
                f"{offset + len(sealed) - 1}) failed authentication. Use another copy of the "
                "backup."
            )
        return IntegrityError(
            f"The end of the backup file {name} is damaged: its last chunk {index} (from byte "
            f"{offset}) failed authentication, so the file was cut short, altered at its end, "
            "or has data appended. Use another copy of the backup."
        )
