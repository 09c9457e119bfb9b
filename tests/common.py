"""Constants and helpers every kind of test uses: the test passphrase, small KDF parameters, the real command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from backup.archive import ScryptParams
from backup.config import Config

# Small scrypt parameters keep tests fast; the format and code path are the same.
FAST_KDF = ScryptParams(log2_n=10, r=8, p=1)
PASSPHRASE = "correct horse battery staple"
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "appliance-backup"


def run_cli(*args: str | os.PathLike[str], config: Config | Path | None = None, input: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real `appliance-backup` command."""
    argv = [str(BIN)]
    if config is not None:
        argv += ["--config", str(config.path if isinstance(config, Config) else config)]
    argv += [str(a) for a in args]
    return subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout,
                          env={**os.environ, "APPLIANCE_BACKUP_DEBUG": ""})
