"""Provides main(): the `appliance-backup` program, the headless command or, given no command, the console.

The command line lives in the core (backup.cli) and knows nothing of the console; this top layer hands it
the one way to open the console, and imports Textual only when the console is asked for.
"""

from __future__ import annotations

import argparse

from backup import cli
from backup.config import Config


def open_console(config: Config, args: argparse.Namespace) -> int:
    from tui.app import run_console  # Textual is imported only for the console

    return run_console(config, theme=args.theme, operator=args.operator)


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, console=open_console)
