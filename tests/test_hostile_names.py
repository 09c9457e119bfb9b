"""File names reach the operator's terminal as text, never as commands to it (issue 14, item 7).

Anyone who can write to the storage chooses the names there, and the appliance's own configuration
trees may hold any name too. Printed raw, an escape sequence retitles or clears the terminal, a
newline forges a line, a carriage return makes a foreign file look like a genuine backup, and a
bidi override reverses what follows. backup.humanize.printable writes every such character as an
escape; the command and the console use it wherever a name reaches the screen (`--json` escapes
them as JSON does). The console never reads a name as Rich markup either.
"""

from __future__ import annotations

import os
import shutil
import unicodedata
from datetime import datetime, timezone

import pytest

from backup.humanize import printable
from backup.journal import RunJournal
from backup.service import BackupService
from tests.common import run_cli
from tests.helpers import fails_after
from tests.tui_fixtures import FAST_KDF, fixed_clock, make_app, screen_text, settle

HOSTILE = {
    "title": "evil\x1b]0;pwned\x07.abk",  # sets the terminal's title
    "clear": "x\x1b[2J\x1b[H.abk",  # clears the screen
    "c1": "y\x9b2J.abk",  # the same, with the 8-bit CSI
    "newline": "fake.abk  1.0 MiB  2024-06-03 09:30:00 UTC\nz.abk",  # forges a line of `list`
    "return": "foreign.abk\rdemo-appliance-20240603T093000Z-abcdef.abk",  # overwrites itself with a genuine name
    "bidi": "photo\u202egpj.abk",  # shows as photo<reversed>
}
MARKUP = ["[bold red]alarm.abk", "[link=mailto:x@evil.example]click.abk"]  # no "/" in a file name: unclosed tags


def control_characters(text: str) -> list[str]:
    """Characters of `text` that a terminal acts on or that reorder it (newlines apart)."""
    return [c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]


@pytest.mark.parametrize(("name", "shown"), [
    ("demo-appliance-20240603T093000Z-abcdef.abk", "demo-appliance-20240603T093000Z-abcdef.abk"),
    ("Sicherung-März-東京.abk", "Sicherung-März-東京.abk"),  # letters of any script stay as they are
    ("a\x1b]0;t\x07b", "a\\x1b]0;t\\x07b"),
    ("a\nb\rc\td\x00", "a\\x0ab\\x0dc\\x09d\\x00"),
    ("\x7f\x9b\x85", "\\x7f\\x9b\\x85"),
    ("a\u202eb\u2066c\u200fd\u2028", "a\\u202eb\\u2066c\\u200fd\\u2028"),
    ("caf\udce9.abk", "caf\\xe9.abk"),  # a byte that is not UTF-8, as Python keeps it
    ("[red]x[/red]", "[red]x[/red]"),  # markup is the console's business: it never parses names
])
def test_printable_escapes_what_a_terminal_acts_on_and_nothing_else(name, shown):
    assert printable(name) == shown
    assert not control_characters(printable(name))


@pytest.fixture
def hostile_storage(service: BackupService) -> dict[str, str]:
    """A genuine backup and copies of it under every hostile name."""
    genuine = service.run_backup().name
    storage = service.config.storage.path
    for name in [*HOSTILE.values(), *MARKUP]:
        shutil.copyfile(storage / genuine, storage / name)
    return {"genuine": genuine, **HOSTILE}


def test_list_escapes_every_name_and_prints_one_line_per_backup(service, hostile_storage):
    result = run_cli("list", config=service.config)
    assert result.returncode == 0, result.stderr
    assert not control_characters(result.stdout)
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + len(HOSTILE) + len(MARKUP)
    for name in HOSTILE.values():
        assert sum(printable(name) in line for line in lines) == 1
    assert not any(line.startswith("demo-appliance-20240603T093000Z-abcdef") for line in lines)


def test_list_json_keeps_escaping_names_as_json_does(service, hostile_storage):
    result = run_cli("list", "--json", config=service.config)
    assert result.returncode == 0 and not control_characters(result.stdout)
    assert "\\u001b]0;pwned\\u0007" in result.stdout and "\\u202e" in result.stdout


def test_errors_naming_a_hostile_file_are_escaped(service, hostile_storage):
    result = run_cli("verify", hostile_storage["title"] + ".missing", config=service.config)
    assert result.returncode != 0
    assert "evil\\x1b]0;pwned\\x07.abk.missing" in result.stderr and not control_characters(result.stderr)


def test_run_escapes_the_names_of_skipped_appliance_files(service):
    os.mkfifo(service.config.appliance.system / "ctl\x1b]0;owned\x07.fifo")
    result = run_cli("run", config=service.config)
    assert result.returncode == 0, result.stderr
    assert "ctl\\x1b]0;owned\\x07.fifo" in result.stderr and not control_characters(result.stderr)


def test_status_escapes_a_failure_that_names_a_hostile_file(service):
    journal = RunJournal(service.state_dir)
    now = datetime.now(timezone.utc)
    run = journal.start("backup", now=now)
    journal.end(run, "failed", now=now, error=f"{service.config.appliance.system}/x\x1b[2J\r\u202e changed while it "
                                              "was being backed up: run the backup again.")
    result = run_cli("status", config=service.config)
    assert result.returncode == 0, result.stderr
    assert "x\\x1b[2J\\x0d\\u202e changed" in result.stdout and not control_characters(result.stdout)


# ---------------------------------------------------------------- the console


async def test_the_console_shows_hostile_names_escaped_and_never_as_markup(config_with_dms):
    from screens.restore import ConfirmDeleteScreen
    from screens.storage_browser import StorageBrowser, local_location
    from widgets.backup_details import BackupDetailsView
    from widgets.storage_tree import StorageTree

    service = BackupService(config_with_dms, kdf_params=FAST_KDF, clock=fixed_clock)
    storage = config_with_dms.storage.path
    genuine = storage / service.run_backup().name
    names = [*HOSTILE.values(), *MARKUP]
    for name in names:
        shutil.copyfile(genuine, storage / name)
    genuine.unlink()
    app = make_app(config_with_dms, clock=fixed_clock)

    with fails_after(120, "the console on hostile names"):
        async with app.run_test(size=(160, 40)) as pilot:
            app.push_screen(StorageBrowser(local_location(storage)))
            await settle(pilot)
            tree = app.screen.query_one(StorageTree)
            rows = [tree.render_line(y).text for y in range(tree.size.height)]
            for name in names:
                assert any(printable(name) in row for row in rows), name
            assert not any(control_characters(row) for row in rows)
            for name in (HOSTILE["title"], HOSTILE["return"], MARKUP[1]):
                tree.move_to(tree.names.index(name))
                await pilot.press("enter")
                await settle(pilot)
                details = app.screen.query_one(BackupDetailsView)
                assert details.values, app.screen.sentence
                assert details.values["Backup"] == name
                text = screen_text(app)
                assert not control_characters(text)
                assert printable(name) in " ".join(text.split()) or printable(name)[:40] in text
                await pilot.press("x")
                await settle(pilot)
                assert isinstance(app.screen, ConfirmDeleteScreen)
                text = screen_text(app)
                assert not control_characters(text) and printable(name)[:40] in text
                await pilot.press("escape")
                await settle(pilot)
