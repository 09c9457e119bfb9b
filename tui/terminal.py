"""Provides ConsoleDriver: Textual's Linux driver for a terminal that can hang up and a line that is slow,
and ScreenDiff, which writes only the cells that change.

An operator's terminal is an SSH session or a serial line; either can go away
in the middle of a backup. When it does, the kernel sends SIGHUP (and SIGCONT
to the session leader), reads of the terminal return end-of-file and writes
fail with EIO. Textual's driver is not made for that: its writer thread dies
on the first EIO, after which the 31st queued frame blocks the event loop for
good, so the console never learns that its backup stopped and never exits;
and SIGCONT makes it start application mode again on the dead terminal. The
App calls `hang_up()` from its SIGHUP handler; from then on the driver draws
nothing and reads nothing, and the App stops its run cleanly and exits.

A serial line at 115200 baud carries about 11 KB/s, at 9600 baud under 1 KB/s.
Textual redraws whole lines (a screen switch, a layout change: the whole
screen), each segment in full colour and reset after it. ScreenDiff keeps
what the terminal shows and writes only the cells that differ, with the
colour changes between them (see its docstring and bench/wire.py).
APPLIANCE_BACKUP_DRAW=full turns it off (everything as Textual writes it).
"""

from __future__ import annotations

import os
import re
import sys
from typing import IO, NamedTuple

from rich.cells import get_character_cell_size
from textual.drivers.linux_driver import LinuxDriver


class TerminalOutput:
    """The driver's output file; once the terminal has gone, what is written is dropped instead of raising."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file
        self.gone = False
        """Whether the terminal has gone (a write failed, or the App was told it hung up)."""

    def write(self, text: str) -> None:
        if self.gone:
            return
        try:
            self._file.write(text)
        except (OSError, ValueError):  # EIO: hung up; ValueError: closed
            self.gone = True

    def flush(self) -> None:
        if self.gone:
            return
        try:
            self._file.flush()
        except (OSError, ValueError):
            self.gone = True

    def fileno(self) -> int:
        return self._file.fileno()

    def isatty(self) -> bool:
        return not self.gone and self._file.isatty()


FULL_DRAW_ENV = "APPLIANCE_BACKUP_DRAW"
"""Set to "full" to write everything as Textual draws it (no ScreenDiff)."""

_TOKEN = re.compile(
    r"(?P<csi>\x1b\[(?P<params>[0-9;:?<=>]*)[ -/]*(?P<final>[@-~]))"
    r"|(?P<osc>\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?)"
    r"|(?P<esc>\x1b.?)"
    r"|(?P<cr>\r)|(?P<lf>\n)"
    r"|(?P<text>[^\x00-\x1f\x7f]+)"
    r"|(?P<control>[\x00-\x1f\x7f])"
)
_RESET_ATTRS = {"22": ("1", "2"), "23": ("3",), "24": ("4",), "25": ("5", "6"), "27": ("7",), "28": ("8",),
                "29": ("9",), "55": ("53",)}
_WIDE_FOLLOWER = "\0"
"""The cell after a double-width character."""


class Pen(NamedTuple):
    """A graphic rendition: attributes (SGR codes that are on), foreground, background (None: the default)."""

    attrs: frozenset[str] = frozenset()
    fg: tuple[str, ...] | None = None
    bg: tuple[str, ...] | None = None

    def apply(self, params: str) -> Pen:
        """This pen after `ESC [ params m`."""
        codes = params.split(";") if params else ["0"]
        attrs, fg, bg = set(self.attrs), self.fg, self.bg
        i = 0
        while i < len(codes):
            code = codes[i] or "0"
            if code == "0":
                attrs, fg, bg = set(), None, None
            elif code in ("38", "48"):
                size = 3 if codes[i + 1:i + 2] == ["5"] else 5 if codes[i + 1:i + 2] == ["2"] else 1
                color = tuple(codes[i:i + size])
                i += size - 1
                if code == "38":
                    fg = color
                else:
                    bg = color
            elif code == "39":
                fg = None
            elif code == "49":
                bg = None
            elif code.isdigit() and (30 <= int(code) <= 37 or 90 <= int(code) <= 97):
                fg = (code,)
            elif code.isdigit() and (40 <= int(code) <= 47 or 100 <= int(code) <= 107):
                bg = (code,)
            elif code in _RESET_ATTRS:
                attrs = {a for a in attrs if a.split(":")[0] not in _RESET_ATTRS[code]}
            else:
                attrs.add(code)
            i += 1
        return Pen(frozenset(attrs), fg, bg)

    def change_to(self, other: Pen) -> str:
        """The shortest SGR sequence (of the simple kinds) that turns this pen into `other`; "" when equal."""
        if other == self:
            return ""
        if self.attrs <= other.attrs:
            params = sorted(other.attrs - self.attrs)
            if other.fg != self.fg:
                params += list(other.fg or ("39",))
            if other.bg != self.bg:
                params += list(other.bg or ("49",))
        else:
            params = ["0", *sorted(other.attrs), *(other.fg or ()), *(other.bg or ())]
        return f"\x1b[{';'.join(params)}m"


DEFAULT_PEN = Pen()


class ScreenDiff:
    """Turns what Textual writes into what the terminal needs: only the cells whose character or colours change.

    It follows Textual's output (absolute cursor moves, SGR colour sequences, text, CR/LF) onto a
    model of the screen, and after each write emits the changed cells row by row: a cursor move
    where a run of changes starts (or the unchanged cells between two near runs), the colour
    change from the previous cell (not a full colour plus a reset per segment), the characters.
    The pen is put back to the default at the end of each write, so the terminal is never left
    coloured. Anything else (modes, the alternate screen, erasing) passes through in order; the
    ones that change the screen behind the model's back make it forget what is shown, as does a
    new terminal size (`forget`), so the next frame is written in full.
    """

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.cells: dict[tuple[int, int], tuple[str, Pen]] = {}
        """What the terminal shows: (row, column) -> (character, pen); missing: not known."""
        self._forget = False
        self._row = self._col = 0
        self._pen = DEFAULT_PEN
        self._dirty: set[tuple[int, int]] = set()

    def forget(self, width: int | None = None, height: int | None = None) -> None:
        """The terminal's content is not known any more (resized, redrawn by someone else): write all of the next frame.

        Only sets a flag, so it is safe from a signal handler; it takes effect at the next write.
        """
        if width is not None and height is not None:
            self.width, self.height = width, height
        self._forget = True

    def write(self, data: str) -> str:
        if self._forget:
            self._forget = False
            self.cells.clear()
        out: list[str] = []
        drawn = False
        for match in _TOKEN.finditer(data):
            kind = match.lastgroup
            final = match.group("final") if kind == "csi" else ""
            params = match.group("params") if kind == "csi" else ""
            if kind == "text":
                self._put(match.group("text"))
                drawn = True
            elif kind == "cr":
                self._col = 0
            elif kind == "lf":
                self._row += 1
            elif final == "m" and "?" not in params:
                self._pen = self._pen.apply(params)
            elif final and final in "HfABCDGd" and "?" not in params:
                self._move(final, params)
                drawn = True
            else:  # modes, queries, OSC, erasing, the bell: in order, after the cells drawn before them
                out.append(self._flush())
                if kind == "esc" or (final and final in "JKLMPX@STr" and "?" not in params) or \
                        (final in ("h", "l") and any(mode in params.split(";") for mode in ("?1049", "?47", "?1047"))):
                    # A reset, erasing, scrolling, inserting, the alternate screen: the screen is not what
                    # the model says any more.
                    self.cells.clear()
                out.append(match.group(0))
                self._out_row = self._out_col = None  # some of these move the cursor
        out.append(self._flush())
        if drawn:
            # Where Textual leaves its cursor (the focused field), for terminals that show or follow it.
            out.append(self._move_cursor_to(self._row, self._col))
        return "".join(out)

    # ------------------------------------------------------------ the model

    _out_row: int | None = None
    _out_col: int | None = None
    _out_pen: Pen = DEFAULT_PEN

    def _move(self, final: str, params: str) -> None:
        numbers = [int(p) if p.isdigit() else 0 for p in params.split(";")] if params else []
        first = numbers[0] if numbers and numbers[0] else 1
        if final in "Hf":
            second = numbers[1] if len(numbers) > 1 and numbers[1] else 1
            self._row, self._col = first - 1, second - 1
        elif final == "A":
            self._row -= first
        elif final == "B":
            self._row += first
        elif final == "C":
            self._col += first
        elif final == "D":
            self._col = max(0, self._col - first)
        elif final == "G":
            self._col = first - 1
        elif final == "d":
            self._row = first - 1

    def _put(self, text: str) -> None:
        row, pen, cells, dirty = self._row, self._pen, self.cells, self._dirty
        col = self._col
        if text.isascii():
            for char in text:
                key = (row, col)
                if cells.get(key) != (char, pen):
                    cells[key] = (char, pen)
                    dirty.add(key)
                col += 1
            self._col = col
            return
        chars, i = text, 0
        while i < len(chars):
            # A character with the combining characters after it: one cell (two when wide).
            end = i + 1
            while end < len(chars) and get_character_cell_size(chars[end]) == 0:
                end += 1
            cluster, i = chars[i:end], end
            width = get_character_cell_size(cluster[0])
            if width == 0:  # combining characters at the start of a write: they belong to the cell before
                key = (row, col - 1)
                previous = cells.get(key)
                if previous is not None and previous[0] != _WIDE_FOLLOWER:
                    cells[key] = (previous[0] + cluster, previous[1])
                    dirty.add(key)
                continue
            key = (row, col)
            if cells.get(key) != (cluster, pen):
                cells[key] = (cluster, pen)
                dirty.add(key)
            if width == 2:
                follower = (row, col + 1)
                if cells.get(follower) != (_WIDE_FOLLOWER, pen):
                    cells[follower] = (_WIDE_FOLLOWER, pen)
                    dirty.add(key)
            col += width
        self._col = col

    # ------------------------------------------------------------ output

    def _move_cursor_to(self, row: int, col: int) -> str:
        if (row, col) == (self._out_row, self._out_col):
            return ""
        sequence = f"\x1b[{row + 1};{col + 1}H" if col else f"\x1b[{row + 1}H"
        if row == self._out_row and self._out_col is not None and col > self._out_col:
            forward = col - self._out_col
            shorter = "\x1b[C" if forward == 1 else f"\x1b[{forward}C"
            if len(shorter) < len(sequence):
                sequence = shorter
        self._out_row, self._out_col = row, col
        return sequence

    def _flush(self) -> str:
        if not self._dirty:
            return self._reset_pen()
        cells = self.cells
        out: list[str] = []
        for key in sorted(self._dirty):
            char, pen = cells.get(key, (" ", DEFAULT_PEN))
            row, col = key
            if char == _WIDE_FOLLOWER:
                continue  # drawn with the wide character before it
            if row == self._out_row and self._out_col is not None and 0 < col - self._out_col <= 3:
                # A short gap of cells that did not change: writing them again is shorter than a move.
                gap = [cells.get((row, c)) for c in range(self._out_col, col)]
                if all(g is not None and g[0] != _WIDE_FOLLOWER and g[1] == self._out_pen for g in gap):
                    out.extend(g[0] for g in gap)  # type: ignore[index]
                    self._out_col = col
            out.append(self._move_cursor_to(row, col))
            out.append(self._out_pen.change_to(pen))
            self._out_pen = pen
            out.append(char)
            follower = cells.get((row, col + 1))
            width = 2 if follower is not None and follower[0] == _WIDE_FOLLOWER else 1
            self._out_col = col + width
            if self._out_col >= self.width:  # no autowrap: where the cursor stays differs between terminals
                self._out_row = self._out_col = None
        self._dirty.clear()
        out.append(self._reset_pen())
        return "".join(out)

    def _reset_pen(self) -> str:
        sequence = self._out_pen.change_to(DEFAULT_PEN)
        self._out_pen = DEFAULT_PEN
        return sequence


class ConsoleDriver(LinuxDriver):
    """LinuxDriver that survives its terminal hanging up (see the module's docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # LinuxDriver hands `_file` to its writer thread when application mode starts.
        self.output = TerminalOutput(self._file or sys.stdout)  # LinuxDriver's file is stdout's or stderr's
        self._file = self.output  # type: ignore[assignment]  # a file-like wrapper where LinuxDriver writes
        self.hung_up = False
        """Whether the terminal hung up (set by `hang_up`)."""
        self.diff: ScreenDiff | None = None
        if os.environ.get(FULL_DRAW_ENV, "") != "full":
            self.diff = ScreenDiff(*self._get_terminal_size())

    def write(self, data: str) -> None:
        if self.diff is not None:
            data = self.diff.write(data)
            if not data:
                return
        super().write(data)

    def _get_terminal_size(self) -> tuple[int, int]:
        # Called at start and on SIGWINCH: after a resize the terminal's content is not known.
        size = super()._get_terminal_size()
        diff: ScreenDiff | None = getattr(self, "diff", None)  # not made yet at the first call
        if diff is not None:
            diff.forget(*size)
        return size

    def redraw(self) -> None:
        """The next frame is written in full (the operator asked: line noise on a serial line garbled the screen)."""
        if self.diff is not None:
            self.diff.forget()

    def hang_up(self) -> None:
        """The terminal has gone: stop reading it (its reads return EOF at once, forever) and drawing on it.

        Safe to call from a signal handler: it only sets flags.
        """
        self.hung_up = True
        self.output.gone = True
        self.exit_event.set()  # ends the input thread's loop

    def resume_application_mode(self) -> None:
        # The kernel sends SIGCONT with SIGHUP; on a terminal that hung up there is nothing to resume.
        if self.hung_up or not os.isatty(self.fileno):
            return
        super().resume_application_mode()
