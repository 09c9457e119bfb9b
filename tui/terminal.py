"""Provides ConsoleDriver: Textual's Linux driver for a terminal that can hang up.

An operator's terminal is an SSH session or a serial line; either can go away
in the middle of a backup. When it does, the kernel sends SIGHUP (and SIGCONT
to the session leader), reads of the terminal return end-of-file and writes
fail with EIO. Textual's driver is not made for that: its writer thread dies
on the first EIO, after which the 31st queued frame blocks the event loop for
good, so the console never learns that its backup stopped and never exits;
and SIGCONT makes it start application mode again on the dead terminal. The
App calls `hang_up()` from its SIGHUP handler; from then on the driver draws
nothing and reads nothing, and the App stops its run cleanly and exits.
"""

from __future__ import annotations

import os
from typing import IO

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


class ConsoleDriver(LinuxDriver):
    """LinuxDriver that survives its terminal hanging up (see the module's docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # LinuxDriver hands `_file` to its writer thread when application mode starts.
        self.output = TerminalOutput(self._file)
        self._file = self.output
        self.hung_up = False
        """Whether the terminal hung up (set by `hang_up`)."""

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
