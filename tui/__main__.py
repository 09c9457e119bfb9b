"""Provides `python -m tui [--config PATH] [--theme NAME]`: opens the console."""

from __future__ import annotations

import argparse
import sys

from backup.config import load_config, resolve_config_path
from backup.errors import BackupError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tui", description="The appliance-backup console.")
    parser.add_argument("--config", metavar="PATH", help="the appliance's configuration file")
    parser.add_argument("--theme", metavar="NAME", help='a Textual theme, e.g. "ansi" for a serial console')
    args = parser.parse_args(argv)
    try:
        config = load_config(resolve_config_path(args.config))
    except BackupError as exc:
        print(f"appliance-backup: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)
    from tui.app import run_console

    return run_console(config, theme=args.theme)


if __name__ == "__main__":
    sys.exit(main())
