"""Provides the generator of the encryption-layer test vectors in this folder.

Every input that is random in real use (salt, file key, wrap nonce, payload)
is derived here from the vector's name, so the output is the same byte for
byte on every run. Run it from the repository root:

    .venv/bin/python tests/vectors/make_vectors.py          # rewrite the files
    .venv/bin/python tests/vectors/make_vectors.py --check  # compare, change nothing

See README.md beside this file for what each vector covers.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the repository root, for `backup`

from backup.archive import (  # noqa: E402
    HEADER_LENGTH,
    TAG_LENGTH,
    ArchiveWriter,
    ScryptParams,
    derive_kek,
)

INDEX_NAME = "vectors.json"
PARAMS = ScryptParams(log2_n=10, r=8, p=1)
"""Small scrypt parameters so the vectors open in milliseconds."""


def _stream(label: str, length: int) -> bytes:
    """Deterministic bytes: SHAKE-256 of a label (easy to reproduce in any language)."""
    return hashlib.shake_256(f"appliance-backup test vector: {label}".encode()).digest(length)


@dataclass(frozen=True)
class Spec:
    name: str
    description: str
    passphrase: str
    cipher: str
    chunk_size: int
    payload_length: int

    @property
    def salt(self) -> bytes:
        return _stream(f"{self.name} salt", 16)

    @property
    def file_key(self) -> bytes:
        return _stream(f"{self.name} file key", 32)

    @property
    def wrap_nonce(self) -> bytes:
        return _stream(f"{self.name} wrap nonce", 12)

    @property
    def payload(self) -> bytes:
        return _stream(f"{self.name} payload", self.payload_length)


VALID = [
    Spec(
        "empty",
        "Empty payload: exactly one final chunk holding only a 16-byte tag.",
        "correct horse battery staple",
        "aes-256-gcm",
        4096,
        0,
    ),
    Spec(
        "short",
        "1000-byte payload, less than one chunk: a single short final chunk.",
        "correct horse battery staple",
        "aes-256-gcm",
        4096,
        1000,
    ),
    Spec(
        "multi",
        "13522-byte payload with 4 KiB chunks: three full chunks and a short final one.",
        "correct horse battery staple",
        "aes-256-gcm",
        4096,
        3 * 4096 + 1234,
    ),
    Spec(
        "multi-chacha-exact",
        "ChaCha20-Poly1305, 8192-byte payload: two full chunks, the second full one final "
        "(the reader sees a full chunk followed by end of file).",
        "correct horse battery staple",
        "chacha20-poly1305",
        4096,
        2 * 4096,
    ),
    Spec(
        "unicode-passphrase",
        "Non-ASCII passphrase (stored NFC; its NFD spelling must open the file too), "
        "5000-byte payload.",
        "Pa\u00dfw\u00f6rter \u00e9t\u00e9 \U0001f511",
        "aes-256-gcm",
        4096,
        5000,
    ),
]


def seal(spec: Spec) -> bytes:
    """Return the backup file of a valid vector."""
    kek = derive_kek(spec.passphrase, spec.salt, PARAMS, spec.cipher)
    sink = io.BytesIO()
    writer = ArchiveWriter(
        sink, kek, chunk_size=spec.chunk_size, file_key=spec.file_key, wrap_nonce=spec.wrap_nonce
    )
    writer.write(spec.payload)
    writer.close()
    return sink.getvalue()


def _chunk_bounds(archive: bytes, chunk_size: int) -> list[tuple[int, int]]:
    sealed = chunk_size + TAG_LENGTH
    bounds = []
    start = HEADER_LENGTH
    while start < len(archive):
        bounds.append((start, min(start + sealed, len(archive))))
        start += sealed
    return bounds


def invalid_vectors(valid: dict[str, bytes]) -> list[tuple[dict, bytes]]:
    """Return (index entry, file bytes) of each vector a reader must refuse."""
    multi = valid["multi"]
    bounds = _chunk_bounds(multi, 4096)
    chunks = [multi[a:b] for a, b in bounds]
    header = multi[:HEADER_LENGTH]
    flipped_tag = bytearray(multi)
    flipped_tag[bounds[1][1] - 1] ^= 0x01
    flipped_header = bytearray(multi)
    flipped_header[20] ^= 0x01  # inside the salt
    base = {"source": "multi", "passphrase": "correct horse battery staple"}
    cases = [
        ("truncated-header", "multi cut inside the header.", multi[:100], "integrity"),
        ("truncated-after-header", "multi cut right after the header.", header, "integrity"),
        (
            "truncated-at-boundary",
            "multi without its final chunk (ends after chunk 2).",
            header + b"".join(chunks[:3]),
            "integrity",
        ),
        (
            "truncated-mid-chunk",
            "multi cut 100 bytes into chunk 1.",
            multi[: bounds[1][0] + 100],
            "integrity",
        ),
        (
            "appended",
            "multi with 7 bytes appended after its short final chunk.",
            multi + b"garbage",
            "integrity",
        ),
        (
            "appended-after-full-final",
            "multi-chacha-exact (whose final chunk is full) with 7 bytes appended.",
            valid["multi-chacha-exact"] + b"garbage",
            "integrity",
        ),
        (
            "swapped",
            "multi with chunks 0 and 1 swapped.",
            header + chunks[1] + chunks[0] + b"".join(chunks[2:]),
            "integrity",
        ),
        (
            "duplicated",
            "multi with chunk 1 stored twice.",
            header + chunks[0] + chunks[1] + chunks[1] + b"".join(chunks[2:]),
            "integrity",
        ),
        (
            "dropped",
            "multi without chunk 1.",
            header + chunks[0] + b"".join(chunks[2:]),
            "integrity",
        ),
        (
            "flipped-tag",
            "multi with one bit of chunk 1's tag flipped.",
            bytes(flipped_tag),
            "integrity",
        ),
        (
            "flipped-header",
            "multi with one bit of the salt flipped (the checksum catches it).",
            bytes(flipped_header),
            "integrity",
        ),
        (
            "not-a-backup",
            "A file that does not start with the magic.",
            b"PK\x03\x04" + multi[4:],
            "not_a_backup",
        ),
        (
            "wrong-passphrase",
            "multi opened with the wrong passphrase.",
            multi,
            "wrong_dms",
        ),
    ]
    out = []
    for name, description, data, expect in cases:
        entry = {
            "name": name,
            "description": description,
            **base,
            "file": f"{name}.abk",
            "expect": expect,
        }
        if name == "appended-after-full-final":
            entry["source"] = "multi-chacha-exact"
        if name == "wrong-passphrase":
            entry["passphrase"] = "correct horse battery stapler"
            entry["file"] = "multi.abk"
        out.append((entry, data))
    return out


def build() -> dict[str, bytes]:
    """Return every file of the vector folder (index included) by name."""
    files: dict[str, bytes] = {}
    valid_entries = []
    sealed: dict[str, bytes] = {}
    for spec in VALID:
        archive = seal(spec)
        sealed[spec.name] = archive
        payload = spec.payload
        files[f"{spec.name}.abk"] = archive
        files[f"{spec.name}.plain"] = payload
        valid_entries.append(
            {
                "name": spec.name,
                "description": spec.description,
                "file": f"{spec.name}.abk",
                "plaintext_file": f"{spec.name}.plain",
                "expect": "ok",
                "passphrase": spec.passphrase,
                "cipher": spec.cipher,
                "scrypt": {"log2_n": PARAMS.log2_n, "r": PARAMS.r, "p": PARAMS.p},
                "salt": spec.salt.hex(),
                "chunk_size": spec.chunk_size,
                "file_key": spec.file_key.hex(),
                "wrap_nonce": spec.wrap_nonce.hex(),
                "plaintext_length": len(payload),
                "plaintext_sha256": hashlib.sha256(payload).hexdigest(),
                "file_sha256": hashlib.sha256(archive).hexdigest(),
            }
        )
    invalid_entries = []
    for entry, data in invalid_vectors(sealed):
        if entry["file"] not in files:
            files[entry["file"]] = data
        entry["file_sha256"] = hashlib.sha256(data).hexdigest()
        invalid_entries.append(entry)
    index = {
        "format_version": 1,
        "generator": "tests/vectors/make_vectors.py",
        "valid": valid_entries,
        "invalid": invalid_entries,
    }
    files[INDEX_NAME] = (json.dumps(index, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return files


def check(directory: Path) -> list[str]:
    """Compare the files in `directory` with a fresh generation; return the differences."""
    problems = []
    for name, data in build().items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.read_bytes() != data:
            problems.append(f"{name} differs from what the generator produces")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    parser.add_argument(
        "--out", type=Path, default=HERE, help="folder to write (default: this one)"
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.out)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in build().items():
        (args.out / name).write_bytes(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
