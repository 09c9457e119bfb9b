"""Provides `python -m tui`: the same program as `appliance-backup` (the console when no command is given)."""

import sys

from tui.program import main

if __name__ == "__main__":
    sys.exit(main())
