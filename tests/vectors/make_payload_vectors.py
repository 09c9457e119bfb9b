"""Provides the generator of the payload-layer test vectors in tests/vectors/payload/.

Each vector is a small whole backup file: a payload (zstd frames holding a
tar stream, docs/FORMAT.md section Payload) built here member by member,
sealed with the published passphrase below. The valid ones show what a
reader must accept (directory names ending in `/`, a name that is not UTF-8,
the writer's member order, zero padding after the end marker, several zstd
frames, a sub-second time, manifest counts that differ from the members);
each invalid one breaks exactly one rule of FORMAT.md P.4, and the index
says which. Run from the repository root:

    .venv/bin/python tests/vectors/make_payload_vectors.py

The salt, file key and wrap nonce are derived from each vector's name, as in
make_vectors.py; the zstd output depends on the zstd library's version, so the
bytes are not compared on each run: the committed files are the vectors.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import zstandard

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the repository root, for `backup`

from backup.archive import ArchiveWriter, ScryptParams, derive_kek  # noqa: E402

OUT = HERE / "payload"
INDEX = OUT / "payload.json"
PASSPHRASE = "payload vectors, a published test passphrase"
PARAMS = ScryptParams(log2_n=10, r=8, p=1)
CHUNK_SIZE = 4096
MTIME = 1767323045  # 2026-01-02T03:04:05Z
BINARY_NAME = b"firmware/caf\xe9.conf"
"""A name that is not UTF-8 (Latin-1 e-acute), as a file system may hold it."""


def _stream(label: str, length: int) -> bytes:
    return hashlib.shake_256(f"appliance-backup payload vector: {label}".encode()).digest(length)


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def header(name: bytes | str, kind: bytes = tarfile.REGTYPE, size: int = 0, *, link: str = "", mode: int = 0o644,
           pax: dict | None = None, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    info = tarfile.TarInfo(_name(name) if isinstance(name, bytes) else name)
    info.type, info.size, info.linkname, info.mode, info.mtime = kind, size, link, mode, MTIME
    if pax:
        info.pax_headers = pax
    return info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape")


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


class Payload:
    """A tar stream built member by member, with the checksums FORMAT.md P.3 asks for."""

    def __init__(self, vector: str, *, version: int = 2, files_in_manifest: int | None = None) -> None:
        self.vector = vector
        self.version = version
        self.files_in_manifest = files_in_manifest
        self.members: list[bytes] = []
        self.digests: list[tuple[bytes, str]] = []
        self.expected: list[dict] = []

    def directory(self, name: str) -> Payload:
        self.members.append(header(name, tarfile.DIRTYPE, mode=0o755))  # tarfile writes `name/`
        self.expected.append({"name": name, "type": "directory"})
        return self

    def link(self, name: str, target: str) -> Payload:
        self.members.append(header(name, tarfile.SYMTYPE, link=target))
        self.expected.append({"name": name, "type": "symlink", "target": target})
        return self

    def file(self, name: bytes | str, data: bytes, *, pax: dict | None = None, fmt: int = tarfile.PAX_FORMAT,
             listed: bool = True) -> Payload:
        raw = name if isinstance(name, bytes) else name.encode()
        self.members.append(header(name, size=len(data), pax=pax, fmt=fmt) + padded(data))
        if listed:
            self.digests.append((raw, hashlib.sha256(data).hexdigest()))
        entry = {"type": "file", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        try:
            entry["name"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            entry["name_base64"] = base64.b64encode(raw).decode()
        self.expected.append(entry)
        return self

    def raw(self, data: bytes) -> Payload:
        self.members.append(data)
        return self

    def manifest(self) -> bytes:
        manifest = {
            "format": "appliance-backup manifest", "version": self.version, "backup": f"{self.vector}.abk",
            "appliance": "vector-appliance", "appliance_id": _stream("appliance id", 16).hex(),
            "software_version": "vectors", "created_at": "2026-01-02T03:04:05+00:00",
            "components": [
                {"name": "firmware", "kind": "directory", "source": "/appliance/firmware",
                 "files": self.files_in_manifest if self.files_in_manifest is not None else 2, "bytes": 0,
                 "skipped": []},
                {"name": "system", "kind": "directory", "source": "/appliance/system", "files": 1, "bytes": 0,
                 "skipped": []},
                {"name": "database", "kind": "sqlite", "source": "/appliance/internal.db", "files": 1, "bytes": 0,
                 "skipped": []}],
            "total_bytes": 0, "excluded": ["The HSM (hardware security module) and its keys: never part of a backup."],
        }
        if self.version == 1:
            del manifest["backup"], manifest["appliance_id"]
        data = json.dumps(manifest, indent=1).encode()
        return header("manifest.json", size=len(data), mode=0o600) + padded(data)

    def checksums(self) -> dict:
        files, binary = {}, {}
        components = {c: hashlib.sha256() for c in ("firmware", "system", "database")}
        for raw, hexdigest in self.digests:
            components[raw.split(b"/", 1)[0].decode()].update(hexdigest.encode() + b"  " + raw + b"\n")
            try:
                files[raw.decode("utf-8")] = hexdigest
            except UnicodeDecodeError:
                binary[base64.b64encode(raw).decode()] = hexdigest
        out = {"files": files, "files_base64": binary, "components": {c: h.hexdigest() for c, h in components.items()}}
        if self.version == 1:
            del out["files_base64"]
        return out

    def checksums_member(self) -> bytes:
        data = json.dumps(self.checksums(), sort_keys=True).encode()
        return header("checksums.json", size=len(data), mode=0o600) + padded(data)

    def tar(self, *, end: bytes = bytes(1024), after_checksums: bytes = b"") -> bytes:
        return self.manifest() + b"".join(self.members) + self.checksums_member() + after_checksums + end


def standard(vector: str, **kwargs) -> Payload:
    """The members of a tiny appliance, before the database."""
    return (Payload(vector, **kwargs).directory("firmware").file("firmware/version.txt", b"firmware 7.4.2\n")
            .directory("system").file("system/hosts", b"127.0.0.1 localhost\n"))


def with_database(payload: Payload) -> Payload:
    return payload.file("database/internal.db", b"")  # an empty file opens as an empty SQLite database


def zstd(data: bytes, *, checksum: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_checksum=checksum).compress(data)


def seal(vector: str, payload: bytes) -> bytes:
    kek = derive_kek(PASSPHRASE, _stream(f"{vector} salt", 16), PARAMS)
    out = io.BytesIO()
    with ArchiveWriter(out, kek, chunk_size=CHUNK_SIZE, file_key=_stream(f"{vector} file key", 32),
                       wrap_nonce=_stream(f"{vector} wrap nonce", 12)) as writer:
        writer.write(payload)
    return out.getvalue()


def valid() -> list[tuple[dict, bytes, Payload]]:
    out = []
    # Everything a reader must accept at once.
    p = (Payload("features", files_in_manifest=7).directory("firmware")
         .directory("firmware/a").file("firmware/a/inner", b"in a/\n")
         .file("firmware/a-b", b"after a/ and its subtree\n")
         .file(BINARY_NAME, b"a name that is not UTF-8\n")
         .file("firmware/back\\slash and\nnewline", b"sha256sum would escape this name\n")
         .file("firmware/later.conf", b"sub-second time\n", pax={"mtime": f"{MTIME}.25"})
         .link("firmware/current", "a/inner")
         .directory("system").file("system/hosts", b"127.0.0.1 localhost\n"))
    with_database(p)
    tar = p.tar(end=bytes(10240 - 0))  # the end marker and then zero padding, as tar pads to its records
    cut = len(tar) // 2
    out.append(({"name": "features", "shows": "directories named `name/`; the writer's order (a/inner before "
                 "a-b); a name that is not UTF-8 (pax hdrcharset=BINARY, files_base64); a name with a backslash "
                 "and a newline; a sub-second pax mtime; a symlink; manifest counts that differ from the members; "
                 "zero bytes after the end marker; two zstd frames"},
                zstd(tar[:cut]) + zstd(tar[cut:]), p))
    p = with_database(standard("version-1", version=1))
    out.append(({"name": "version-1", "shows": "a version 1 payload (manifest version 1, no files_base64, "
                 "appliance_id or backup): still read"}, zstd(p.tar()), p))
    return out


def invalid() -> list[tuple[dict, bytes]]:
    cases: list[tuple[str, str, str, bytes]] = []

    def case(name: str, reason: str, rule: str, payload: bytes) -> None:
        cases.append((name, reason, rule, payload))

    tar_of = lambda vector, **kw: with_database(standard(vector)).tar(**kw)  # noqa: E731
    case("data-after-end", "after_end", "P.4 step 4: only zero bytes may follow the end-of-archive marker",
         zstd(tar_of("data-after-end", end=bytes(1024) + b"not zero" + bytes(504))))
    case("no-end-marker", "end_marker", "P.4 step 4: the tar stream ends with two zero blocks",
         zstd(tar_of("no-end-marker", end=b"")))
    case("one-zero-block", "end_marker", "P.4 step 4: the tar stream ends with two zero blocks",
         zstd(tar_of("one-zero-block", end=bytes(512))))
    tar = tar_of("final-frame-without-checksum")
    case("final-frame-without-checksum", "zstd_checksum", "Payload: every zstd frame has a content checksum",
         zstd(tar[:2048]) + zstd(tar[2048:], checksum=False))
    case("garbage-after-frames", "zstd_trailing", "Payload: nothing but zstd frames",
         zstd(tar_of("garbage-after-frames")) + b"garbage")
    case("skippable-frame", "zstd_trailing", "Payload: nothing but zstd frames (no skippable frames)",
         zstd(tar_of("skippable-frame")) + (0x184D2A50).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc")
    p = with_database(standard("database-extra-member")).file("database/other.db", b"")
    case("database-extra-member", "database_member", "P.4 step 2: the only database member is database/internal.db",
         zstd(p.tar()))
    p = with_database(standard("duplicate-member").file("system/hosts", b"again\n"))
    case("duplicate-member", "duplicate", "P.4 step 2: no name appears twice", zstd(p.tar()))
    sparse = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "firmware/sparse",
              "GNU.sparse.realsize": "1024"}
    p = with_database(standard("pax-sparse").file("firmware/GNUSparseFile.0/sparse", b"1\n0\n512\n", pax=sparse,
                                                  listed=False))
    case("pax-sparse", "member_type", "P.4 step 3: sparse files are refused", zstd(p.tar()))
    p = with_database(standard("gnu-header").file("firmware/gnu.conf", b"gnu\n", fmt=tarfile.GNU_FORMAT))
    case("gnu-header", "not_ustar", "P.4 step 2: every header is POSIX ustar (magic `ustar\\0`, version `00`)",
         zstd(p.tar()))
    p = with_database(standard("dot-prefix").file("./firmware/dot.conf", b"dot\n", listed=False))
    case("dot-prefix", "name", "P.4 step 2: no empty, `.` or `..` element (`./` prefixes included)", zstd(p.tar()))
    p = with_database(Payload("missing-folder").directory("firmware").file("firmware/nowhere/file", b"x\n")
                      .directory("system").file("system/hosts", b"h\n"))
    case("missing-folder", "folder_first", "P.1/P.4 step 2: a member's folder comes before it", zstd(p.tar()))
    p = with_database(Payload("component-order").directory("system").file("system/hosts", b"h\n")
                      .directory("firmware").file("firmware/version.txt", b"v\n"))
    case("component-order", "component_order", "P.1: components in the order firmware, system, database",
         zstd(p.tar()))
    p = with_database(standard("member-after-checksums"))
    case("member-after-checksums", "after_checksums", "P.4 step 4: nothing follows checksums.json but the end marker",
         zstd(p.tar(after_checksums=header("system/late", size=0))))
    p = with_database(standard("wrong-checksum"))
    p.digests[0] = (p.digests[0][0], "0" * 64)
    case("wrong-checksum", "checksum", "P.4 step 4: every file's digest matches", zstd(p.tar()))
    return [({"name": name, "reason": reason, "rule": rule}, payload) for name, reason, rule, payload in cases]


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*.abk"):
        old.unlink()
    index: dict = {"passphrase": PASSPHRASE, "valid": [], "invalid": []}
    for entry, payload, p in valid():
        data = seal(entry["name"], payload)
        (OUT / f"{entry['name']}.abk").write_bytes(data)
        index["valid"].append({**entry, "file": f"{entry['name']}.abk", "file_sha256": hashlib.sha256(data).hexdigest(),
                               "manifest_version": p.version, "members": p.expected})
    for entry, payload in invalid():
        data = seal(entry["name"], payload)
        (OUT / f"{entry['name']}.abk").write_bytes(data)
        index["invalid"].append({**entry, "file": f"{entry['name']}.abk",
                                 "file_sha256": hashlib.sha256(data).hexdigest()})
    INDEX.write_text(json.dumps(index, indent=1) + "\n")
    print(f"wrote {len(index['valid'])} valid and {len(index['invalid'])} invalid vectors to {OUT}")


if __name__ == "__main__":
    main()
