"""tui.terminal.ScreenDiff: the console writes only the cells that change, and the terminal shows the same.

The proof that matters is the last test: the real console in two tmux
terminals, one writing everything as Textual draws it
(APPLIANCE_BACKUP_DRAW=full), the other through ScreenDiff, driven through
the same keys; after each step tmux shows the same characters with the same
colours and attributes in both.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from backup.service import BackupService
from tests.common import BIN
from tests.test_e2e_tmux import Tmux
from tui.terminal import DEFAULT_PEN, FULL_DRAW_ENV, Pen, ScreenDiff

FRAME = ("\x1b[1;1H\x1b[44m \x1b[0m\x1b[1;39;44mappliance-backup | Status\x1b[0m\x1b[44m    \x1b[0m\r\n"
         "\x1b[2;1H\x1b[39;49mLast Successful Backup\x1b[0m\x1b[49m  \x1b[0m\x1b[2;25H\x1b[1;33mIn Progress\x1b[0m"
         "\x1b[1;1H")


def test_an_unchanged_frame_writes_nothing() -> None:
    diff = ScreenDiff(80, 24)
    first = diff.write(FRAME)
    assert "appliance-backup | Status" in first and "In Progress" in first
    assert diff.write(FRAME) == ""


def test_a_changed_word_writes_only_its_cells_with_one_colour_change() -> None:
    diff = ScreenDiff(80, 24)
    diff.write(FRAME)
    out = diff.write(FRAME.replace("In Progress", "Not Running"))
    assert out == "\x1b[2;25H\x1b[1;33mNot Running\x1b[0m\x1b[1H"


def test_the_pen_is_back_to_the_default_after_every_write() -> None:
    """Else leaving the console (or a dropped frame) would leave the operator's terminal coloured."""
    diff = ScreenDiff(80, 24)
    assert diff.write("\x1b[5;5H\x1b[1;7;31;44mX") == "\x1b[5;5H\x1b[1;7;31;44mX\x1b[0m"
    assert diff.write("\x1b[0m\x1b[5;7H\x1b[31mY") == "\x1b[C\x1b[31mY\x1b[39m"


def test_forget_and_the_alternate_screen_make_the_next_frame_whole() -> None:
    diff = ScreenDiff(80, 24)
    diff.write(FRAME)
    diff.forget(100, 30)  # SIGWINCH: the terminal's content is not known
    assert "appliance-backup | Status" in diff.write(FRAME)
    assert "\x1b[?1049h" in diff.write("\x1b[?1049h")
    assert "appliance-backup | Status" in diff.write(FRAME)


def test_pen_changes() -> None:
    bold_blue = DEFAULT_PEN.apply("1;34")
    assert DEFAULT_PEN.change_to(bold_blue) == "\x1b[1;34m"
    assert bold_blue.change_to(bold_blue.apply("44")) == "\x1b[44m"
    assert bold_blue.change_to(DEFAULT_PEN.apply("34")) == "\x1b[0;34m"  # bold off: from a reset
    assert DEFAULT_PEN.apply("38;5;208;48;2;1;2;3") == Pen(frozenset(), ("38", "5", "208"), ("48", "2", "1", "2", "3"))
    assert bold_blue.apply("22") == DEFAULT_PEN.apply("34")
    assert bold_blue.apply("0") == DEFAULT_PEN


def test_wide_and_combining_characters_are_written_whole() -> None:
    diff = ScreenDiff(80, 24)
    diff.write("\x1b[1;1H名前e\u0301x")
    out = diff.write("\x1b[1;1H名前e\u0301y")
    assert out == "\x1b[1;6Hy"
    out = diff.write("\x1b[1;1H名札e\u0301y")
    assert "札" in out and "\x00" not in out


def _capture(tmux: Tmux) -> list[list[tuple]]:
    """What the terminal shows, cell by cell: the character and what of its rendition can be seen.

    From tmux's capture with escapes, whose SGR state runs on across lines; a cell tmux never had
    written shows as a blank in the default colours. A blank shows only its background (and reverse,
    underline): bold or a foreground on a blank cannot be seen.
    """
    text = tmux("capture-pane", "-p", "-e", "-t", "console")
    pen = DEFAULT_PEN
    screen = []
    for line in text.split("\n")[:24]:
        cells: list[tuple] = []
        for match in re.finditer(r"\x1b\[([0-9;]*)m|([^\x1b])", line):
            if match.group(2) is None:
                pen = pen.apply(match.group(1))
            elif match.group(2) == " ":
                cells.append((" ", pen.bg, "7" in pen.attrs, "4" in pen.attrs))
            else:  # digits as one: the free disk space the two consoles read may differ by a little
                cells.append(("9" if match.group(2).isdigit() else match.group(2), pen))
        cells += [(" ", None, False, False)] * (80 - len(cells))
        screen.append(cells)
    return screen


def _text(screen: list[list[tuple]]) -> str:
    return "\n".join("".join(cell[0] for cell in row) for row in screen)


@pytest.mark.e2e
def test_the_terminal_shows_what_textual_draws(service: BackupService, tmp_path: Path) -> None:
    """Two real consoles in tmux, full drawing and ScreenDiff, through the same keys: the same screens."""
    (service.config.storage.path / "not-a-backup.abk").write_bytes(b"x" * 10)
    full, diffed = Tmux(), Tmux()
    try:
        for tmux, draw in ((full, "full"), (diffed, "diff")):
            tmux("new-session", "-d", "-s", "console", "-x", "80", "-y", "24",
                 "env", "-u", "COLUMNS", "-u", "LINES", "TERM=linux", f"{FULL_DRAW_ENV}={draw}",
                 str(BIN), "--config", str(service.config.path))
        # No typing into a field: a key typed while a loaded machine still builds the first Settings screen can
        # be lost by either console (issue 15, item 7), which says nothing about how ScreenDiff draws.
        steps = [None, "2", "Tab", "Tab", "Escape", "1", "3", "o", "Escape", "?", "Escape", "1", "2", "3", "1"]
        shown: list = []
        for key in steps:
            before = shown
            if key is not None:
                for tmux in (full, diffed):
                    tmux("send-keys", "-t", "console", key)
            deadline = time.monotonic() + 30
            while True:  # every step changes the screen: wait for the change in both, then compare
                time.sleep(0.3)
                expected, shown = _capture(full), _capture(diffed)
                if expected == shown and shown != before and "reading the status" not in _text(shown):
                    break
                if time.monotonic() > deadline:
                    differ = [(r, c, expected[r][c], shown[r][c]) for r in range(24) for c in range(80)
                              if expected[r][c] != shown[r][c]]
                    raise AssertionError(f"after {key!r} the screens differ at (row, column, full, diff) "
                                         f"{differ[:5]}:\n--- full\n{_text(expected)}\n--- diff\n{_text(shown)}")
        assert "Current Backup Status" in _text(shown)
    finally:
        full.kill()
        diffed.kill()


def test_the_bell_and_other_controls_pass_through_every_time() -> None:
    diff = ScreenDiff(80, 24)
    diff.write(FRAME)
    assert diff.write("\x07") == "\x07"
    assert diff.write("\x07") == "\x07"
    assert diff.write(FRAME) == "\x1b[1H"  # the bell changed nothing on the screen; the cursor is put back
