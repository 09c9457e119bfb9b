"""The core is usable without the console: importing it loads no Textual."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import backup


def test_importing_the_whole_core_loads_no_textual() -> None:
    modules = [m.name for m in pkgutil.walk_packages(backup.__path__, "backup.")]
    assert "backup.service" in modules and "backup.cli" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_check_would_notice_textual() -> None:
    """The probe above can fail: importing the console does load Textual."""
    code = "import sys, textual.app\nprint(any(m.startswith('textual') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
