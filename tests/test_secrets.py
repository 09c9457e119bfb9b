"""Secrets never reach output, logs, state, storage or snapshots: one full run, then a grep of everything.

The passphrase and the key-encryption key (KEK) are looked for, as text and as
bytes, in every file the run produced and in every line it printed. The one
place the KEK may be is `state/dms.key` (it holds the KEK in hex on purpose);
the passphrase is nowhere on the appliance.
"""

from __future__ import annotations

import ast
import base64
import html
import json
import re
import unicodedata
from pathlib import Path

from backup.config import Config
from backup.errors import ExitCode
from tests.common import run_cli
from tests.helpers import mutate_appliance

HERE = Path(__file__).resolve().parent
# Distinctive (no false positives in demo data) and not NFC-invariant, so both encodings are looked for.
SECRET = "Sentinel-Pa\u0073\u0073phrase-7f3a-Cafe\u0301-\u00fcber"
WRONG = "this is not the secret, 9c2e"


def _needles(passphrase: str) -> list[bytes]:
    """Every byte form of a passphrase that could leak: NFC, NFD, as typed, UTF-16 and JSON-escaped."""
    forms = {passphrase, unicodedata.normalize("NFC", passphrase), unicodedata.normalize("NFD", passphrase)}
    out: set[bytes] = set()
    for form in forms:
        out.add(form.encode("utf-8"))
        out.add(form.encode("utf-16-le"))
        out.add(json.dumps(form).strip('"').encode("ascii"))
    return sorted(out)


def _kek_needles(kek_hex: str) -> list[bytes]:
    raw = bytes.fromhex(kek_hex)
    return [kek_hex.lower().encode(), kek_hex.upper().encode(), raw, raw.hex(" ").encode(),
            base64.b64encode(raw).rstrip(b"=")]


def _leaks(blob: bytes, needles: list[bytes]) -> list[bytes]:
    return [n for n in needles if n in blob]


def _svg_text(svg: str) -> str:
    """What an SVG screen shows, as one string: tags dropped, entities decoded, all whitespace removed.

    Rich writes each space as &#160; and splits a line into one <text> per style run, so a
    plain `in` on the file would never find a secret even if it were on screen.
    """
    text = html.unescape(re.sub(r"<[^>]*>", "", svg))
    return re.sub(r"\s+", "", text)


def _shown_in(svg: str, passphrase: str, window: int = 10) -> bool:
    """Whether any `window` consecutive non-space characters of the passphrase are on the screen."""
    squeezed = re.sub(r"\s+", "", passphrase)
    screen = _svg_text(svg)
    return any(squeezed[i:i + window] in screen for i in range(max(1, len(squeezed) - window + 1)))


def _tui_test_passphrases() -> list[str]:
    """The passphrases the console tests type: module-level *PASSPHRASE* strings of tests/common.py."""
    tree = ast.parse((HERE / "common.py").read_text())
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            if any(isinstance(t, ast.Name) and "PASSPHRASE" in t.id for t in node.targets):
                found.append(node.value.value)
    return found


def _files_below(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def test_no_secret_leaves_the_key_file(appliance: Config, tmp_path: Path) -> None:
    secret_file = tmp_path / "dms-input" / "dms.txt"
    secret_file.parent.mkdir()
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    wrong_file = secret_file.with_name("wrong.txt")
    wrong_file.write_text(WRONG + "\n")

    outputs: list[tuple[str, str]] = []

    def cli(*args, code: int = 0):
        r = run_cli(*args, config=appliance)
        outputs.append((" ".join(map(str, args)) + " stdout", r.stdout))
        outputs.append((" ".join(map(str, args)) + " stderr", r.stderr))
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr
        return r

    cli("secret", "set", "--passphrase-file", secret_file)
    name = cli("run").stdout.strip()
    assert name.endswith(".abk")
    assert [b["name"] for b in json.loads(cli("list", "--json").stdout)] == [name]
    assert json.loads(cli("status", "--json").stdout)["dms_set"] is True
    cli("verify", name)
    cli("verify", name, "--passphrase-file", secret_file)
    mutate_appliance(appliance)
    cli("restore", name, "--yes")
    cli("restore", name, "--yes", "--passphrase-file", secret_file)  # the path that derives from the passphrase
    r = cli("verify", name, "--passphrase-file", wrong_file, code=ExitCode.WRONG_DMS)
    assert "does not open" in r.stderr
    cli("schedule", "show")
    cli("schedule", "show", "--json")
    cli("status")
    cli("list")

    key_file = appliance.state_dir / "dms.key"
    kek_hex = json.loads(key_file.read_text())["kek"]
    assert len(bytes.fromhex(kek_hex)) == 32
    secret_needles = _needles(SECRET) + _needles(WRONG)
    kek_needles = _kek_needles(kek_hex)
    every_needle = secret_needles + kek_needles

    # The key file may hold the KEK (that is its job) but never the passphrase.
    assert not _leaks(key_file.read_bytes(), secret_needles)
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert appliance.state_dir.stat().st_mode & 0o777 == 0o700

    # Printed output.
    for what, text in outputs:
        assert not _leaks(text.encode(), every_needle), f"a secret in the output of `{what}`"

    # Every file the run produced (config, journal, progress, rollback copies, tmp, the appliance
    # itself and the storage), except the key file and the files this test wrote the secrets into.
    allowed = {key_file, secret_file, wrong_file}
    searched = [p for p in _files_below(tmp_path) if p not in allowed]
    names = {p.name for p in searched}
    assert "journal.jsonl" in names and appliance.path in searched and name in names
    assert any("rollback" in p.parts for p in searched), "the restores kept no rollback copy to search"
    for path in searched:
        leaked = _leaks(path.read_bytes(), every_needle)
        assert not leaked, f"{path} holds secret material ({'KEK' if leaked[0] in kek_needles else 'passphrase'})"

    # Control: the same search finds the secrets where they were put on purpose.
    assert _leaks(secret_file.read_bytes(), secret_needles)
    assert _leaks(key_file.read_bytes(), kek_needles)
    planted = tmp_path / "planted.bin"
    planted.write_bytes(b"\x00noise" + bytes.fromhex(kek_hex) + b"noise\x00")
    assert _leaks(planted.read_bytes(), kek_needles)


def test_no_console_snapshot_shows_a_test_passphrase() -> None:
    passphrases = _tui_test_passphrases()
    assert passphrases, "tests/common.py defines no PASSPHRASE any more: update this test"
    svgs = sorted((HERE / "__snapshots__").rglob("*.svg"))
    assert svgs, "no console snapshots to check"
    for svg in svgs:
        text = svg.read_text(encoding="utf-8")
        for passphrase in passphrases:
            assert not _shown_in(text, passphrase), f"{svg.name} shows a test passphrase"


def test_the_snapshot_search_sees_text_the_way_rich_writes_it() -> None:
    """Control: a passphrase split over styled runs, with &#160; for spaces, is found."""
    passphrase = _tui_test_passphrases()[0]
    words = passphrase.split(" ")
    runs = "".join(f'<text class="terminal-r{i}" x="{i}">{html.escape(w)}&#160;</text>' for i, w in enumerate(words))
    svg = f'<svg><g clip-path="url(#terminal-line-3)">{runs}</g></svg>'
    assert passphrase not in svg  # what a plain substring test would miss
    assert _shown_in(svg, passphrase)
    masked = svg
    for word in words:
        masked = masked.replace(html.escape(word), "\u2022" * len(word))
    assert not _shown_in(masked, passphrase)
