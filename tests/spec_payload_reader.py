"""Provides a reader of whole backup files written from docs/FORMAT.md alone (no import from backup/).

It decrypts (sections 3-6), splits the payload into zstd frames and checks
them (section Payload, P.0), walks the tar stream block by block (P.0, P.1,
P.4) and checks checksums.json (P.3). It returns what the backup holds, or
raises Refusal with a short reason, one per rule of FORMAT.md:

    integrity        the encryption layer refuses the file (section 6)
    zstd_checksum    a zstd frame without a content checksum
    zstd_trailing    bytes after the last frame that are not a frame (or a skippable frame)
    not_ustar        a header that is not POSIX ustar, or whose checksum is wrong
    member_type      a typeflag other than 0, 2, 5 (after at most one x), or a sparse file
    end_marker       the tar stream does not end with two zero blocks
    after_end        non-zero bytes after the end-of-archive marker
    manifest         no manifest first, or one of a format or version not read
    name             a name that is absolute, has an empty, `.` or `..` element, a NUL, or an unknown first element
    duplicate        a name seen twice
    component_order  components out of the order firmware, system, database
    folder_first     a member before (or without) its folder
    database_member  a member under database/ other than the file database/internal.db
    link             a member at or below a link that came before it
    after_checksums  a member after checksums.json
    checksum         checksums.json does not match the files
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import unicodedata

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

COMPONENTS = (b"firmware", b"system", b"database")


class Refusal(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# Sections 3-6: the encryption layer ------------------------------------------


def _hkdf(ikm: bytes, info: bytes) -> bytes:
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()  # salt "" is 32 zero bytes under HMAC
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def decrypt(data: bytes, passphrase: str) -> bytes:
    if data[:8] != b"\x89ABK\r\n\x1a\n" or len(data) < 162 or data[8:10] != b"\x00\x01":
        raise Refusal("integrity", "header")
    h = data[:162]
    log2_n, r, p = h[14], h[15], h[16]
    chunk_size = int.from_bytes(h[34:38], "big")
    if not (int.from_bytes(h[10:12], "big") == 162 and h[12] in (1, 2) and h[13] == 1 and h[17] == 0
            and 10 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16 and 128 * r * 2**log2_n <= 2**28
            and log2_n < 16 * r and 4096 <= chunk_size <= 2**24 and chunk_size & (chunk_size - 1) == 0):
        raise Refusal("integrity", "limits")
    if hashlib.sha256(h[:130]).digest() != h[130:162]:
        raise Refusal("integrity", "checksum")
    aead = AESGCM if h[12] == 1 else ChaCha20Poly1305
    kek = hashlib.scrypt(unicodedata.normalize("NFC", passphrase).encode(), salt=h[18:34], n=2**log2_n, r=r, p=p,
                         maxmem=2**29, dklen=32)
    try:
        file_key = aead(kek).decrypt(h[38:50], h[50:98], h[:38])
    except InvalidTag:
        raise Refusal("wrong_dms") from None
    if not hmac.compare_digest(hmac.new(_hkdf(file_key, b"appliance-backup v1 header"), h[:98], "sha256").digest(),
                               h[98:130]):
        raise Refusal("integrity", "header mac")
    key = aead(_hkdf(file_key, b"appliance-backup v1 payload"))
    out, at, i = [], 162, 0
    while True:
        sealed = data[at:at + chunk_size + 16]
        at += len(sealed)
        final = at == len(data)
        try:
            out.append(key.decrypt(i.to_bytes(11, "big") + (b"\x01" if final else b"\x00"), sealed, b""))
        except InvalidTag:
            raise Refusal("integrity", f"chunk {i}") from None
        if final:
            if i and not out[-1]:
                raise Refusal("integrity", "empty final chunk")
            return b"".join(out)
        i += 1


# Payload: zstd frames ---------------------------------------------------------


def decompress(payload: bytes) -> bytes:
    """Each frame (RFC 8878 3.1.1) found by its headers, checked to carry a checksum, then decompressed."""
    out, at = [], 0
    if not payload:
        raise Refusal("zstd_trailing", "no frame")
    while at < len(payload):
        start = at
        if payload[at:at + 4] != b"\x28\xb5\x2f\xfd":
            raise Refusal("zstd_trailing", f"byte {at}")
        if at + 5 > len(payload):
            raise Refusal("zstd_trailing", "cut frame header")
        fhd = payload[at + 4]
        if not fhd & 0x04:
            raise Refusal("zstd_checksum", f"frame at byte {at}")
        if fhd & 0x0B:
            raise Refusal("zstd_trailing", "reserved bit or dictionary")
        single = fhd & 0x20
        at += 5 + (0 if single else 1) + [1 if single else 0, 2, 4, 8][fhd >> 6]
        while True:
            if at + 3 > len(payload):
                raise Refusal("zstd_trailing", "cut block header")
            block = int.from_bytes(payload[at:at + 3], "little")
            at += 3 + (1 if (block >> 1) & 3 == 1 else block >> 3)
            if (block >> 1) & 3 == 3:
                raise Refusal("zstd_trailing", "reserved block type")
            if block & 1:
                break
        at += 4
        if at > len(payload):
            raise Refusal("zstd_trailing", "cut frame")
        try:
            out.append(zstandard.ZstdDecompressor().decompressobj().decompress(payload[start:at]))
        except zstandard.ZstdError as exc:
            raise Refusal("zstd_checksum", str(exc)) from None
    return b"".join(out)


# Payload: the tar stream --------------------------------------------------------


def _octal(field: bytes) -> int:
    return int(field.strip(b"\0 ") or b"0", 8)


def _json(data: bytes, what: str, *, strict: bool) -> dict:
    """JSON text (RFC 8259, UTF-8); `strict`: no lone surrogate (\\udcXX), which other languages' parsers refuse."""
    value = json.loads(data.decode("utf-8"))

    def strings(v):
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            for key, item in v.items():
                yield key
                yield from strings(item)
        elif isinstance(v, list):
            for item in v:
                yield from strings(item)

    if strict and any(0xD800 <= ord(c) <= 0xDFFF for text in strings(value) for c in text):
        raise Refusal(what, "a lone surrogate in JSON text")
    if not isinstance(value, dict):
        raise Refusal(what, "not a JSON object")
    return value


def _pax(data: bytes) -> dict[bytes, bytes]:
    records, at = {}, 0
    while at < len(data):
        space = data.index(b" ", at)
        length = int(data[at:space])
        key, _, value = data[space + 1:at + length - 1].partition(b"=")
        records[key] = value
        at += length
    return records


def read(data: bytes, passphrase: str) -> dict:
    """{"manifest": ..., "members": [...]} of a backup FORMAT.md accepts; Refusal otherwise."""
    tar = decompress(decrypt(data, passphrase))
    at, members, pax = 0, [], None
    names: set[bytes] = set()
    folders: set[bytes] = set()
    links: list[bytes] = []
    manifest = checksums = None
    order = 0
    digests: list[tuple[bytes, str]] = []
    while True:
        block = tar[at:at + 512]
        if len(block) < 512:
            raise Refusal("end_marker", "the stream ends without it")
        if block == bytes(512):
            second = tar[at + 512:at + 1024]
            if second != bytes(512):
                raise Refusal("end_marker" if len(second) < 512 or not second.strip(b"\0") else "after_end")
            if tar[at + 1024:].strip(b"\0"):
                raise Refusal("after_end")
            break
        if block[257:265] != b"ustar\x0000":
            raise Refusal("not_ustar", f"byte {at}")
        if _octal(block[148:156]) != sum(block[:148]) + 256 + sum(block[156:]):
            raise Refusal("not_ustar", "header checksum")
        kind, size = block[156:157], _octal(block[124:136])
        at += 512
        body = tar[at:at + size]
        if kind == b"x":
            if pax is not None:
                raise Refusal("member_type", "two pax headers")
            pax = _pax(body)
            at += -(-size // 512) * 512
            continue
        pax, records = None, pax or {}
        if kind not in (b"0", b"2", b"5") or any(key.startswith(b"GNU.sparse.") for key in records):
            raise Refusal("member_type", repr(kind))
        if b"size" in records:
            size = int(records[b"size"])
            body = tar[at:at + size]
        at += -(-size // 512) * 512 if kind == b"0" else 0
        prefix = block[345:500].split(b"\0")[0]
        name = records.get(b"path") or ((prefix + b"/" if prefix else b"") + block[:100].split(b"\0")[0])
        if kind == b"5" and name.endswith(b"/"):
            name = name[:-1]
        if manifest is None:
            if name != b"manifest.json" or kind != b"0" or size > 2**20:
                raise Refusal("manifest", "not first")
            manifest = _json(body, "manifest", strict=False)
            if manifest.get("format") != "appliance-backup manifest" or manifest.get("version") not in (1, 2):
                raise Refusal("manifest", "format or version")
            if manifest["version"] >= 2:
                _json(body, "manifest", strict=True)
            names.add(name)
            continue
        if checksums is not None:
            raise Refusal("after_checksums")
        if name in names:
            raise Refusal("duplicate", repr(name))
        names.add(name)
        if name == b"checksums.json":
            checksums = _json(body, "checksum", strict=manifest["version"] >= 2)
            continue
        parts = name.split(b"/")
        if b"\0" in name or any(part in (b"", b".", b"..") for part in parts) or parts[0] not in COMPONENTS:
            raise Refusal("name", repr(name))
        position = COMPONENTS.index(parts[0])
        if position < order:
            raise Refusal("component_order", repr(name))
        order = position
        if parts[0] == b"database":
            if name != b"database/internal.db" or kind != b"0":
                raise Refusal("database_member", repr(name))
        elif len(parts) > 1 and name.rsplit(b"/", 1)[0] not in folders:
            raise Refusal("folder_first", repr(name))
        if any(name == link or name.startswith(link + b"/") for link in links):
            raise Refusal("link", repr(name))
        entry: dict = {"type": {b"0": "file", b"2": "symlink", b"5": "directory"}[kind]}
        try:
            entry["name"] = name.decode("utf-8")
        except UnicodeDecodeError:
            entry["name_base64"] = base64.b64encode(name).decode()
        if kind == b"5":
            folders.add(name)
        elif kind == b"2":
            links.append(name)
            entry["target"] = (records.get(b"linkpath") or block[157:257].split(b"\0")[0]).decode("utf-8")
        else:
            entry["sha256"] = hashlib.sha256(body).hexdigest()
            entry["size"] = size
            digests.append((name, entry["sha256"]))
        members.append(entry)
    if checksums is None:
        raise Refusal("checksum", "no checksums.json")
    _check_sums(manifest["version"], checksums, digests)
    return {"manifest": manifest, "members": members}


def _check_sums(version: int, checksums: dict, digests: list[tuple[bytes, str]]) -> None:
    files, binary = {}, {}
    components = {c: hashlib.sha256() for c in COMPONENTS}
    for name, hexdigest in digests:
        components[name.split(b"/")[0]].update(hexdigest.encode() + b"  " + name + b"\n")
        try:
            files[name.decode("utf-8")] = hexdigest
        except UnicodeDecodeError:
            if version == 1:  # P.5: each byte that is not UTF-8 as the code point U+DC00 + byte
                files[_surrogate_escaped(name)] = hexdigest
            else:
                binary[base64.b64encode(name).decode()] = hexdigest
    if checksums.get("files") != files or (version >= 2 and checksums.get("files_base64") != binary):
        raise Refusal("checksum", "files")
    if checksums.get("components") != {c.decode(): h.hexdigest() for c, h in components.items()}:
        raise Refusal("checksum", "components")


def _surrogate_escaped(raw: bytes) -> str:
    out, at = [], 0
    while at < len(raw):
        for end in range(min(len(raw), at + 4), at, -1):
            try:
                out.append(raw[at:end].decode("utf-8"))
                at = end
                break
            except UnicodeDecodeError:
                continue
        else:
            out.append(chr(0xDC00 + raw[at]))
            at += 1
    return "".join(out)
