"""docs/FORMAT.md as a contract for the payload layer (issue 16).

- Every payload vector (tests/vectors/payload/) is read or refused by a reader
  written from FORMAT.md alone (tests/spec_payload_reader.py, no import from
  backup/), with the reason the index gives; so are the whole backups the
  reference writer made (tests/vectors/backup/, backup-v2/) and a fresh one.
- Every invalid payload vector is refused by the real command's `verify --deep`
  and `restore` with exit code 5 and a sentence, and the restore changes nothing;
  every valid one verifies deeply.
- What a backup says about itself (name, appliance, identity, software version,
  creation time) is in its authenticated manifest; Backup Details and the
  restore confirmation name a backup of another appliance, and a renamed file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from backup.errors import ExitCode
from backup.service import BackupService, foreign_note
from tests import spec_payload_reader as spec
from tests.common import BIN, FAST_KDF, PASSPHRASE, run_cli
from tests.helpers import appliance_state

VECTORS = Path(__file__).parent / "vectors"
PAYLOAD = VECTORS / "payload"
INDEX = json.loads((PAYLOAD / "payload.json").read_text())
INVALID = {entry["name"]: entry for entry in INDEX["invalid"]}
VALID = {entry["name"]: entry for entry in INDEX["valid"]}

REFERENCE_WORDS = {
    # What the reference reader's sentence names, for each reason of the index.
    "after_end": "after the tar end-of-archive marker",
    "end_marker": "end-of-archive marker",
    "zstd_checksum": "without a content checksum",
    "zstd_trailing": "zstd frame",
    "database_member": "under database/",
    "duplicate": "twice",
    "member_type": "a type it never writes",
    "not_ustar": "not POSIX ustar",
    "name": "empty or `.` element",
    "folder_first": "without its folder before it",
    "component_order": "the order is firmware, system, database",
    "after_checksums": "after checksums.json",
    "checksum": "do not match its checksums",
}


def test_the_index_lists_every_vector_file_and_every_rule_has_one() -> None:
    files = {p.name for p in PAYLOAD.glob("*.abk")}
    assert files == {e["file"] for e in [*INDEX["valid"], *INDEX["invalid"]]}
    for entry in [*INDEX["valid"], *INDEX["invalid"]]:
        assert hashlib.sha256((PAYLOAD / entry["file"]).read_bytes()).hexdigest() == entry["file_sha256"]
    assert set(REFERENCE_WORDS) == {e["reason"] for e in INDEX["invalid"]}
    readme = (VECTORS / "README.md").read_text()
    for name in [*files, "payload/payload.json", "backup/", "backup-v2/", "expected.json"]:
        assert f"`{name.removesuffix('.abk')}`" in readme or f"`{name}`" in readme, name


# The independent reader ------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALID))
def test_the_spec_reader_reads_every_valid_payload_vector(name: str) -> None:
    entry = VALID[name]
    found = spec.read((PAYLOAD / entry["file"]).read_bytes(), INDEX["passphrase"])
    assert found["members"] == entry["members"]
    assert found["manifest"]["version"] == entry["manifest_version"]


@pytest.mark.parametrize("name", sorted(INVALID))
def test_the_spec_reader_refuses_every_invalid_payload_vector_for_its_reason(name: str) -> None:
    entry = INVALID[name]
    with pytest.raises(spec.Refusal) as refusal:
        spec.read((PAYLOAD / entry["file"]).read_bytes(), INDEX["passphrase"])
    assert refusal.value.reason == entry["reason"], str(refusal.value)


@pytest.mark.parametrize("folder", ["backup", "backup-v2"])
def test_the_spec_reader_reads_the_reference_writers_whole_backups(folder: str) -> None:
    expected = json.loads((VECTORS / folder / "expected.json").read_text())
    found = spec.read((VECTORS / folder / expected["file"]).read_bytes(), expected["passphrase"])
    files = {base64.b64decode(m["name_base64"]) if "name_base64" in m else m["name"].encode(): m["sha256"]
             for m in found["members"] if m["type"] == "file" and not m.get("name", "").startswith("database/")}
    wanted = {name.encode(): digest for name, digest in expected["files"].items()}
    wanted |= {base64.b64decode(name): digest for name, digest in expected.get("files_base64", {}).items()}
    assert files == wanted


def test_the_spec_reader_reads_a_fresh_backup_with_awkward_names(service: BackupService) -> None:
    """What the writer makes today: a name that is not UTF-8, a backslash and a newline, nested folders
    whose order is not byte order of whole paths (a/inner before a-b)."""
    firmware = service.config.appliance.firmware
    (firmware / "a").mkdir()
    (firmware / "a" / "inner").write_text("1\n")
    (firmware / "a-b").write_text("2\n")
    Path(os.fsdecode(os.fsencode(firmware) + b"/\xff\xfe.bin")).write_bytes(b"binary name\n")
    (firmware / "back\\slash\nnewline").write_text("3\n")
    os.mkfifo(os.fsencode(firmware) + b"/fifo-\xff")  # skipped: named in the manifest as text
    name = service.run_backup().name
    found = spec.read((service.config.storage.path / name).read_bytes(), PASSPHRASE)
    order = [m.get("name") for m in found["members"]]
    assert order.index("firmware/a/inner") < order.index("firmware/a-b")
    assert {"type": "file", "name_base64": base64.b64encode(b"firmware/\xff\xfe.bin").decode(),
            "sha256": hashlib.sha256(b"binary name\n").hexdigest(), "size": 12} in found["members"]
    assert "firmware/back\\slash\nnewline" in order
    assert found["manifest"]["version"] == 2 and found["manifest"]["backup"] == name
    assert found["manifest"]["components"][0]["skipped"] == ["firmware/fifo-\ufffd"]
    checksums = service.verify(name, deep=True)
    assert checksums.files == sum(1 for m in found["members"] if m["type"] == "file")


# The reference reader, through the real command --------------------------------


@pytest.fixture
def foreign(service: BackupService, tmp_path: Path) -> tuple[BackupService, Path]:
    """This appliance (its own DMS set) and a file holding the vectors' published passphrase."""
    secret = tmp_path / "vectors.txt"
    secret.write_text(INDEX["passphrase"] + "\n")
    secret.chmod(0o600)
    return service, secret


@pytest.mark.parametrize("name", sorted(INVALID))
def test_verify_deep_and_restore_refuse_every_invalid_payload_vector_with_exit_5_and_a_sentence(
        foreign, name: str) -> None:
    service, secret = foreign
    entry = INVALID[name]
    shutil.copy(PAYLOAD / entry["file"], service.config.storage.path / entry["file"])
    before = appliance_state(service.config)
    for command in (["verify", "--deep"], ["restore", "--yes"]):
        r = run_cli(*command, entry["file"], "--passphrase-file", secret, config=service.config)
        assert r.returncode == ExitCode.INTEGRITY, (command, r.stdout, r.stderr)
        message = r.stderr.strip()
        assert "Traceback" not in r.stderr and message.count("\n") == 0, r.stderr
        assert REFERENCE_WORDS[entry["reason"]] in message, (entry["rule"], message)
        assert message.endswith("."), message
    assert appliance_state(service.config) == before


@pytest.mark.parametrize("name", sorted(VALID))
def test_verify_deep_and_restore_accept_every_valid_payload_vector(foreign, name: str) -> None:
    service, secret = foreign
    entry = VALID[name]
    shutil.copy(PAYLOAD / entry["file"], service.config.storage.path / entry["file"])
    r = run_cli("verify", "--deep", entry["file"], "--passphrase-file", secret, config=service.config)
    assert r.returncode == 0, r.stderr
    files = sum(1 for m in entry["members"] if m["type"] == "file")
    assert service.verify(entry["file"], deep=True, passphrase=INDEX["passphrase"]).files == files
    r = run_cli("restore", "--yes", entry["file"], "--passphrase-file", secret, config=service.config)
    assert r.returncode == 0, r.stderr
    a = service.config.appliance
    for member in entry["members"]:
        if member["type"] != "file" or member.get("name", "").startswith("database/"):
            continue
        raw = base64.b64decode(member["name_base64"]) if "name_base64" in member else member["name"].encode()
        component, rest = raw.split(b"/", 1)
        path = os.fsencode(getattr(a, component.decode())) + b"/" + rest
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == member["sha256"], raw


# What a backup says about itself ------------------------------------------------


def test_the_manifest_carries_what_the_backup_says_about_itself(service: BackupService) -> None:
    name = service.run_backup().name
    details = service.details(name)
    facts = details.facts
    assert facts.backup == name and facts.appliance == service.config.appliance.name
    assert facts.appliance_id == service.appliance_id() and len(facts.appliance_id) == 32
    assert facts.created_at is not None and facts.created_at.utcoffset() is not None
    assert facts.software_version and facts.version == 2
    assert not details.foreign and not details.renamed and foreign_note(details) is None


def test_the_identity_is_the_appliances_own_and_not_its_name(tmp_path: Path) -> None:
    """Two appliances with the same name and the same DMS still have different identities (random salts);
    one appliance keeps its identity across service instances and a change of its name."""
    from tests.test_hostile_backup import tiny_service
    first, second = tiny_service(tmp_path / "one"), tiny_service(tmp_path / "two")
    assert first.appliance_id() != second.appliance_id()
    again = BackupService(first.config, kdf_params=FAST_KDF)
    assert again.appliance_id() == first.appliance_id()


def test_a_renamed_backup_shows_its_real_time_and_is_flagged(service: BackupService) -> None:
    """An older authentic backup renamed to look like the newest: Details shows the time and name its
    manifest holds, and says it was renamed."""
    from widgets.backup_details import detail_rows
    old = service.run_backup().name
    newer_looking = old.replace(old.split("-")[-2], "20991231T235959Z")
    storage = service.config.storage.path
    os.rename(storage / old, storage / newer_looking)
    details = service.details(newer_looking)
    assert details.renamed and details.facts.backup == old
    rows = dict(detail_rows(details, service.clock()))
    assert rows["Written as"] == f"{old}: this file was renamed since"
    assert "2099" not in rows["Created at"]


def test_a_backup_of_another_appliance_is_named_in_details_and_the_restore_confirmation(
        service: BackupService, tmp_path: Path) -> None:
    from tests.test_hostile_backup import tiny_service
    from widgets.backup_details import detail_rows
    other = tiny_service(tmp_path / "other", name="other-appliance", passphrase=PASSPHRASE)
    name = other.run_backup().name
    shutil.copy(other.config.storage.path / name, service.config.storage.path / name)
    secret = tmp_path / "dms.txt"
    secret.write_text(PASSPHRASE + "\n")
    details = service.details(name, passphrase=PASSPHRASE)
    assert details.foreign and details.facts.appliance_id == other.appliance_id()
    note = foreign_note(details)
    assert note is not None and other.appliance_id() in note and "other-appliance" in note
    assert dict(detail_rows(details, service.clock()))["Appliance"] == \
        f"other-appliance: another appliance (identity {other.appliance_id()}), not this one"
    # The command asks on a terminal only; `script` gives it one, and "no" keeps the current state.
    if shutil.which("script") is None:
        pytest.fail("the `script` command (util-linux) is needed to give the restore a terminal")
    command = f"{BIN} --config {service.config.path} restore {name} --passphrase-file {secret}"
    r = subprocess.run(["script", "-qec", command, "/dev/null"], input="no\n", capture_output=True, text=True,
                       timeout=120)
    assert "made by another appliance: other-appliance" in r.stdout, r.stdout
    assert "Restore cancelled; nothing was changed." in r.stdout
