"""Runs the real `appliance-backup` command and SIGKILLs it before a chosen file-system step.

    python tests/kill_at.py ROOT STEPS_FILE KILL -- ARGS...

A step is a call that changes files under ROOT, as Python's audit hooks report
it (sys.addaudithook): an open for writing, a rename, an unlink, a rmdir, a
mkdir, a link, a chmod or utime, a new SQLite connection. Calls made relative
to a directory descriptor (fsutil.remove_tree's unlinks) or on a descriptor count
too: this process only makes those on files under ROOT. The hook runs before
the call, so killed "at step N" means steps 1..N-1 happened and N did not.

KILL is one of:
- `0`: do not kill; write every step (event and path, one a line) to STEPS_FILE at exit;
- `N` (N > 0): SIGKILL at step N; if the command ends first, write its steps as for `0`;
- `EVENT:TEXT[:K][+D]`: SIGKILL at the K-th (default first) step of that event whose path holds TEXT,
  or D steps after it.

The command is backup.cli.main, as the installed entry point runs it: the
kills land in the real program, in any of its threads, at points the test
picks at random or by name. Nothing here is a mock: it only decides when the
process dies.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
COUNTED = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.link", "os.symlink", "os.chmod", "os.chown",
           "os.utime", "os.truncate", "sqlite3.connect"}


def main() -> None:
    root, steps_file, kill = sys.argv[1], sys.argv[2], sys.argv[3]
    assert sys.argv[4] == "--"
    args = sys.argv[5:]
    root = os.path.abspath(root) + os.sep
    steps: list[str] = []
    target_event = target_text = None
    target_n = after_n = 0
    nth = 0
    if ":" in kill:
        kill, _, after = kill.partition("+")
        target_event, target_text, *rest = kill.split(":")
        target_n = int(rest[0]) if rest else 1
        after_n = int(after or 0)
    else:
        nth = int(kill)

    def ours(path: object, relative_ok: bool) -> str | None:
        if isinstance(path, int):
            return f"<fd {path}>"
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        elif hasattr(path, "__fspath__"):
            path = os.fspath(path)
        if not isinstance(path, str):
            return None
        if path.startswith(root):
            return path
        return path if relative_ok and not os.path.isabs(path) else None

    ended = False

    def hook(event: str, args: tuple) -> None:
        nonlocal target_n, nth
        if ended:
            return
        if event == "open":
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
            if not (flags & WRITE_FLAGS or any(c in mode for c in "wax+")):
                return
        elif event not in COUNTED:
            return
        if not args:
            return
        path = ours(args[0], relative_ok=True)
        if path is None and event in ("os.rename", "os.link", "os.symlink") and len(args) > 1:
            path = ours(args[1], relative_ok=False)
        if path is None:
            return
        if event in ("os.rename", "os.link") and len(args) > 1:
            path = f"{path} -> {args[1]}"
        steps.append(f"{event}\t{path}")
        if target_event == event and target_text in path:
            target_n -= 1
            if target_n == 0:
                nth = len(steps) + after_n
        if nth and len(steps) == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    def write_steps() -> None:
        nonlocal ended
        ended = True  # the command has ended: writing this file is no step of it
        with open(steps_file, "w") as f:
            f.write("".join(s + "\n" for s in steps))

    atexit.register(write_steps)
    from backup.cli import main as cli_main  # imported before the hook: its imports are no steps

    sys.addaudithook(hook)
    sys.exit(cli_main(args))


if __name__ == "__main__":
    main()
