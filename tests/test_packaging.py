"""The package as pip installs it: an appliance gets the wheel, not this source tree.

The editable install the tests run from finds every module in the tree; a
wheel holds only what pyproject.toml lists. It once listed no
backup.storage, and the wheel could not store or read a backup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = sorted({name.split(".")[0] for name in
                    tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]})

EVERY_MODULE = """
import importlib, pkgutil, sys
target = sys.argv[1]
for top in sys.argv[2:]:
    package = importlib.import_module(top)
    assert package.__file__.startswith(target), (top, package.__file__)
    for module in pkgutil.walk_packages(package.__path__, top + "."):
        importlib.import_module(module.name)
from backup.cli import main
main(["--help"])
"""


def test_the_wheel_holds_and_imports_every_module_of_the_tree(tmp_path: Path) -> None:
    source = tmp_path / "source"  # built from a copy: the build writes build/ and *.egg-info beside its input
    for top in TOP_LEVEL:
        shutil.copytree(ROOT / top, source / top, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("*.whl")
    held = set(zipfile.ZipFile(wheel).namelist())
    tree = {str(path.relative_to(ROOT)) for top in TOP_LEVEL for pattern in ("*.py", "*.tcss")
            for path in (ROOT / top).rglob(pattern) if "__pycache__" not in path.parts}
    assert "backup/storage/local.py" in tree
    assert sorted(tree - held) == []

    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, cwd=tmp_path)
    # The wheel's copy comes first on the path; the editable finder would only answer for what it lacks.
    run = subprocess.run([sys.executable, "-c", EVERY_MODULE, str(target), *TOP_LEVEL], capture_output=True,
                         text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)})
    assert run.returncode == 0, run.stderr
    assert "usage: appliance-backup" in run.stdout
