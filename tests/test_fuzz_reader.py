"""Fuzzing the readers: a mutated backup is accepted only when unchanged, else refused with a typed error.

A small real backup (the demo appliance, FAST_KDF) is mutated at random — byte
flips, insertions, deletions, truncations, chunk splices — and handed to
`BackupService.verify` and, for a sample, `restore`. The only outcomes allowed
are success on unchanged bytes, or a `BackupError` subclass; never another
exception, never a hang, and a refused restore leaves the appliance as it was.
The header parser and `ArchiveReader` are also fed random 162-byte headers.

Corpus: `tests/fuzz_corpus/*.json` holds small recipes (a list of mutations,
anchored to the header, a chunk boundary or the end, so they replay on a fresh
backup with fresh keys) and raw headers, each with the error it must give. They
are replayed every run. To add new finds (one per distinct error sentence,
the smallest recipe seen), run:

    FUZZ_GROW=1 FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest -q -p no:xdist tests/test_fuzz_reader.py

and commit the new files it writes (or call `add_to_corpus` yourself).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backup.archive import HEADER_LENGTH, MAGIC, ArchiveReader, parse_header, read_header
from backup.config import load_config
from backup.demo import create_demo_appliance
from backup.errors import BackupError
from backup.service import BackupService
from tests.common import FAST_KDF, PASSPHRASE
from tests.helpers import appliance_state, fails_after

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
GROW = os.environ.get("FUZZ_GROW") == "1"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "250"))
CALL_TIMEOUT = 20
"""Seconds any one reader call may take before it counts as a hang."""
RESTORE_EVERY = 8
"""One fuzz example in this many also goes through restore (restore is slower than verify)."""


# ---------------------------------------------------------------- recipes


def resolve(pos: list, length: int, sealed: int) -> int:
    """A position of a recipe, as an offset into a file of `length` bytes with sealed chunks of `sealed` bytes."""
    kind = pos[0]
    if kind == "start":
        at = pos[1]
    elif kind == "end":
        at = length - pos[1]
    else:  # ["chunk", i, d]: d bytes after the start of stored chunk i
        at = HEADER_LENGTH + pos[1] * sealed + pos[2]
    return max(0, min(length, at))


def apply(data: bytes, ops: list, sealed: int) -> bytes:
    """Apply a recipe's mutations in order."""
    out = bytearray(data)
    for op in ops:
        kind = op[0]
        if kind == "flip":
            at = resolve(op[1], len(out), sealed)
            if at < len(out):
                out[at] ^= op[2]
        elif kind == "insert":
            at = resolve(op[1], len(out), sealed)
            out[at:at] = bytes.fromhex(op[2])
        elif kind == "delete":
            at = resolve(op[1], len(out), sealed)
            del out[at:at + op[2]]
        elif kind == "truncate":
            del out[resolve(op[1], len(out), sealed):]
        elif kind == "rechecksum":  # what an attacker can do: the header checksum is unkeyed
            if len(out) >= HEADER_LENGTH:
                out[130:HEADER_LENGTH] = hashlib.sha256(bytes(out[:130])).digest()
        elif kind == "splice":  # copy n bytes (n = -1: one sealed chunk) from src over or before dst
            src, dst = resolve(op[1], len(out), sealed), resolve(op[2], len(out), sealed)
            n = sealed if op[3] == -1 else op[3]
            piece = bytes(out[src:src + n])
            if op[4] == "insert":
                out[dst:dst] = piece
            else:
                out[dst:dst + len(piece)] = piece
        else:
            raise ValueError(f"unknown mutation {kind!r}")
    return bytes(out)


def sentence(exc: BaseException) -> str:
    """The kind of message: file names and numbers taken out, so it is the same for every backup."""
    text = re.sub(r"'[^']*'", "'F'", str(exc))
    return re.sub(r"\d+", "N", text)


def outcome(exc: BaseException | None) -> dict:
    if exc is None:
        return {"expect": "ok", "sentence": ""}
    return {"expect": type(exc).__name__, "sentence": sentence(exc)}


def _corpus_entries() -> list[Path]:
    return sorted(CORPUS.glob("*.json"))


def add_to_corpus(kind: str, body: dict, result: dict) -> Path | None:
    """Keep a find: one file per distinct (error type, sentence), the smallest input seen for it.

    `kind` is "archive" (body = {"ops": recipe}) or "header" (body = {"hex": bytes}). Returns the
    file written, or None when the corpus already holds an input at least as small for that sentence.
    """
    CORPUS.mkdir(exist_ok=True)
    key = hashlib.sha256(f"{kind}\0{result['expect']}\0{result['sentence']}".encode()).hexdigest()[:12]
    path = CORPUS / f"{kind}-{result['expect']}-{key}.json"
    entry = {"kind": kind, **body, **result}
    size = len(json.dumps(body, separators=(",", ":")))
    if path.exists():
        old = json.loads(path.read_text())
        if len(json.dumps({k: old[k] for k in body}, separators=(",", ":"))) <= size:
            return None
    path.write_text(json.dumps(entry, indent=1) + "\n")
    return path


# ---------------------------------------------------------------- the backup under test


class Target:
    """A demo appliance with one backup, and what it looked like."""

    def __init__(self, root: Path) -> None:
        self.config = load_config(create_demo_appliance(root))
        self.service = BackupService(self.config, kdf_params=FAST_KDF)
        self.service.set_secret(PASSPHRASE)
        self.name = self.service.run_backup().name
        self.path = self.config.storage.path / self.name
        self.data = self.path.read_bytes()
        self.sealed = read_header(io.BytesIO(self.data)).chunk_size + 16
        self.state = appliance_state(self.config)
        self.calls = 0

    def check(self, mutated: bytes, *, restore: bool) -> dict:
        """Verify (and maybe restore) `mutated`; fail the test on any outcome but the allowed ones."""
        self.path.write_bytes(mutated)
        try:
            with fails_after(CALL_TIMEOUT, "a reader call"):
                result = self._call(self.service.verify)
            if restore:
                with fails_after(CALL_TIMEOUT, "a reader call"):
                    restored = self._call(self.service.restore)
                assert type(restored) is type(result), (result, restored)
                assert appliance_state(self.config) == self.state, "the appliance changed after a restore"
                parent = self.config.appliance.firmware.parent
                assert not [p for p in parent.iterdir() if ".restore-" in p.name or ".pre-restore-" in p.name]
            return outcome(result)
        finally:
            self.path.write_bytes(self.data)

    def _call(self, operation) -> BackupError | None:
        try:
            operation(self.name)
        except BackupError as exc:  # anything else propagates and fails the test with its traceback
            return exc
        return None


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Target:
    return Target(tmp_path_factory.mktemp("fuzz") / "appliance")


# ---------------------------------------------------------------- strategies

positions = st.one_of(
    st.tuples(st.just("start"), st.integers(0, 2 * HEADER_LENGTH)),
    st.tuples(st.just("end"), st.integers(0, 400)),
    st.tuples(st.just("chunk"), st.integers(0, 2), st.integers(-40, 40)),
    st.tuples(st.just("start"), st.integers(0, 2_000_000)),
).map(list)
small_bytes = st.binary(min_size=1, max_size=48).map(bytes.hex)
mutations = st.one_of(
    st.tuples(st.just("flip"), positions, st.integers(1, 255)),
    st.tuples(st.just("insert"), positions, small_bytes),
    st.tuples(st.just("delete"), positions, st.one_of(st.integers(1, 64), st.integers(1, 1 << 20))),
    st.tuples(st.just("truncate"), positions),
    st.tuples(st.just("splice"), positions, positions, st.one_of(st.just(-1), st.integers(1, 4096)),
              st.sampled_from(["replace", "insert"])),
).map(list)
header_edits = st.tuples(st.just("flip"), st.tuples(st.just("start"), st.integers(0, 129)).map(list),
                         st.integers(1, 255)).map(list)
recipes = st.one_of(
    st.lists(mutations, min_size=1, max_size=3),
    # Past the unkeyed checksum, so the key unwrap, the header MAC and the KEK match are reached.
    st.lists(st.one_of(header_edits, mutations), min_size=1, max_size=2).map(lambda ops: ops + [["rechecksum"]]),
)


# ---------------------------------------------------------------- tests


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=recipes)
def test_mutated_backups_are_refused_with_a_typed_error(target: Target, ops: list) -> None:
    mutated = apply(target.data, ops, target.sealed)
    target.calls += 1
    result = target.check(mutated, restore=target.calls % RESTORE_EVERY == 0)
    if mutated == target.data:
        assert result["expect"] == "ok", result
    else:
        assert result["expect"] != "ok", "a changed backup was accepted"
    if GROW and result["expect"] != "ok":
        add_to_corpus("archive", {"ops": ops}, result)


def _replay_cases() -> list:
    return [pytest.param(p, id=p.stem) for p in _corpus_entries()]


@pytest.mark.parametrize("entry", _replay_cases())
def test_corpus_replays(target: Target, entry: Path) -> None:
    case = json.loads(entry.read_text())
    if case["kind"] == "header":
        try:
            with fails_after(CALL_TIMEOUT, "a reader call"):
                read_header(io.BytesIO(bytes.fromhex(case["hex"])))
        except BackupError as exc:
            got = outcome(exc)
        else:
            got = outcome(None)
    else:
        got = target.check(apply(target.data, case["ops"], target.sealed), restore=True)
    assert (got["expect"], got["sentence"]) == (case["expect"], case["sentence"])


def test_the_corpus_is_there_and_small() -> None:
    entries = _corpus_entries()
    assert len(entries) >= 5
    assert {json.loads(p.read_text())["kind"] for p in entries} == {"archive", "header"}
    assert all(p.stat().st_size < 4096 for p in entries)


def test_recipes_do_what_they_say() -> None:
    data = bytes(range(256)) * 4
    assert apply(data, [["flip", ["start", 0], 1]], 100)[0] == 1
    assert apply(data, [["truncate", ["end", 10]]], 100) == data[:-10]
    assert apply(data, [["delete", ["chunk", 1, 0], 5]], 100) == data[:262] + data[267:]
    assert apply(data, [["splice", ["chunk", 0, 0], ["chunk", 1, 0], -1, "replace"]], 100)[262:362] == data[162:262]


def _with_checksum(prefix: bytes, rest: bytes) -> bytes:
    """A header whose unkeyed checksum is right, so the reader gets past step 5."""
    body = (prefix + rest)[:130]
    return body + hashlib.sha256(body).digest()


headers_random = st.binary(min_size=0, max_size=HEADER_LENGTH + 40)
headers_magic = st.binary(min_size=HEADER_LENGTH - 8, max_size=HEADER_LENGTH - 8).map(lambda b: MAGIC + b)
headers_checksummed = st.builds(
    lambda cipher, kdf, log2_n, r, p, reserved, salt, chunk_log, rest: _with_checksum(
        MAGIC + struct.pack(">HHBBBBBB16sI", 1, HEADER_LENGTH, cipher, kdf, log2_n, r, p, reserved, salt,
                            1 << chunk_log), rest),
    st.integers(0, 3), st.sampled_from([1, 1, 1, 0, 2]), st.integers(8, 22), st.integers(0, 40),
    st.integers(0, 20), st.sampled_from([0, 0, 0, 1]), st.binary(min_size=16, max_size=16),
    st.integers(10, 26), st.binary(min_size=92, max_size=92),
)


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(headers_random, headers_magic, headers_checksummed), tail=st.binary(max_size=64))
def test_random_headers_are_refused_quickly(target: Target, raw: bytes, tail: bytes) -> None:
    header = None
    try:
        with fails_after(CALL_TIMEOUT, "a reader call"):
            header = parse_header(raw)
    except BackupError as exc:
        result = outcome(exc)
        if GROW and len(raw) <= HEADER_LENGTH:
            add_to_corpus("header", {"hex": raw.hex()}, result)
    kek = target.service.secret.kek()
    with fails_after(CALL_TIMEOUT, "a reader call"), pytest.raises(BackupError):
        ArchiveReader(io.BytesIO(raw + tail), kek=kek).read()
    if header is not None and header.params.memory <= 8 << 20:  # a passphrase is stretched: keep it cheap
        with fails_after(CALL_TIMEOUT, "a reader call"), pytest.raises(BackupError):
            ArchiveReader(io.BytesIO(raw + tail), passphrase=PASSPHRASE).read()
