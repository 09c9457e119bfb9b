"""The console on the wire: bytes written to the terminal per action and per idle minute.

    .venv/bin/python bench/wire.py [--config CFG] [--idle 60] [--size 80x24] [--term linux] [--dump DIR]

Runs the real `appliance-backup` console in a pseudo-terminal (80x24,
TERM=linux, as a VM's serial console has it), presses keys as an operator
would and counts every byte the console writes to its terminal, from the key
until the console has been quiet for QUIET seconds:

    start     the first paint (up to the filled-in Status screen)
    2         Settings           1   back to Status
    3         Storage            o   Browse Storage (the storage browser)
    escape    close the browser  1   back to Status
    2 1 3 1   the same switches again, now that each screen exists
    b         a backup: its progress, the refreshed status and the notification until it goes away
    idle      the Status screen with nothing changing, for --idle seconds (reported per minute)

For each it prints the bytes, what they are made of (text, colour/style
sequences, cursor moves, other escapes) and how long they take on a serial
line at 9600 baud (960 B/s) and 115200 baud (11,520 B/s). The targets
(issue 20): a screen switch under 4 KB, the first paint under 12 KB, an idle
console writes nothing.

Without --config it makes a demo appliance (`appliance-backup demo`, a DMS
set) in a temporary directory, so the figures do not depend on earlier runs.
"""

from __future__ import annotations

import argparse
import codecs
import fcntl
import json
import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tui.terminal import ScreenDiff  # noqa: E402 - a model of the terminal's screen, to see what is shown

BIN = Path(sys.executable).parent / "appliance-backup"
PASSPHRASE = "bench passphrase, not secret"
QUIET = 0.6
"""Seconds without output after which an action counts as drawn."""
BAUDS = {9600: 960, 115200: 11520}
"""Baud rate -> bytes per second on an 8N1 serial line (10 bits a byte)."""

SGR = re.compile(rb"\x1b\[[0-9;:]*m")
CURSOR = re.compile(rb"\x1b\[[0-9;]*[HfABCDGd]")
COMPLETE_ESCAPE = re.compile(r"\x1b(?:\[[0-9;:?<=>]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[^\[\]])")
ESCAPE = re.compile(rb"\x1b(?:\[[0-9;?<=>$:]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78c])")


def breakdown(data: bytes) -> dict[str, int]:
    """Where the bytes go: colour/style sequences, cursor moves, other escapes, and the text itself."""
    sgr = sum(len(m) for m in SGR.findall(data))
    cursor = sum(len(m) for m in CURSOR.findall(data))
    escapes = sum(len(m) for m in ESCAPE.findall(data))
    return {"style": sgr, "cursor": cursor, "other_escapes": escapes - sgr - cursor,
            "text": len(data) - escapes, "sgr_count": len(SGR.findall(data))}


@dataclass
class Console:
    """The real console on the slave side of a pty; every byte it writes is kept with its arrival time."""

    config: Path
    columns: int = 80
    lines: int = 24
    term: str = "linux"
    chunks: list[tuple[float, bytes]] = field(default_factory=list)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TMUX")}
        env["TERM"] = self.term
        argv = [str(BIN), "--config", str(self.config)]
        self.pid, self.master = pty.fork()
        if self.pid == 0:  # the child: the session leader, with the pty as its controlling terminal
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", self.lines, self.columns, 0, 0))
            os.execve(argv[0], argv, env)
        self._lock = threading.Lock()
        self._screen = ScreenDiff(self.columns, self.lines)
        self._played = 0
        self._pending = ""
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.chunks.append((time.monotonic(), data))

    def screen_text(self) -> str:
        """What the terminal shows now, line by line (the console's output played onto a model screen)."""
        with self._lock:
            fresh, self._played = self.chunks[self._played:], len(self.chunks)
        text = self._pending + "".join(self._decode(data) for _, data in fresh)
        # A read can end inside an escape sequence: keep its start for the next time.
        cut = text.rfind("\x1b")
        if cut == -1 or COMPLETE_ESCAPE.match(text, cut):
            cut = len(text)
        self._screen.write(text[:cut])
        self._pending = text[cut:]
        cells = self._screen.cells
        return "\n".join("".join(cells.get((row, col), (" ",))[0] for col in range(self.columns))
                         for row in range(self.lines))

    def output_since(self, start: float, end: float | None = None) -> bytes:
        with self._lock:
            return b"".join(d for t, d in self.chunks if t >= start and (end is None or t < end))

    def last_output(self) -> float:
        with self._lock:
            return self.chunks[-1][0] if self.chunks else 0.0

    def settle(self, since: float, quiet: float = QUIET, until: str | None = None, timeout: float = 60,
               at_least: float = 0.0) -> float:
        """Wait until the screen shows `until` (if given) and then nothing is written for `quiet` seconds."""
        deadline = since + timeout
        seen = False
        while True:
            now = time.monotonic()
            if now > deadline:
                raise SystemExit(f"the console did not settle within {timeout:.0f} s; the screen:\n{self.screen_text()}")
            seen = seen or until is None or until in self.screen_text()
            if seen and now - since >= at_least and now - max(self.last_output(), since) >= quiet:
                return max(self.last_output(), since)
            time.sleep(0.02)

    def press(self, key: bytes) -> float:
        pressed = time.monotonic()
        os.write(self.master, key)
        return pressed

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                break
            time.sleep(0.05)
        else:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.master)


def title(screen: str) -> dict:
    """Settle on the screen's title line (written whole when the screen is drawn), then quiet."""
    return {"until": f" appliance-backup | {screen} "}


ACTIONS: list[tuple[str, str, bytes, dict]] = [
    ("2", "Settings", b"2", title("Settings")),
    ("1", "Status", b"1", title("Status")),
    ("3", "Storage", b"3", title("Storage")),
    ("o", "Browse Storage", b"o", title("Storage Browser")),
    ("escape", "close the browser", b"\x1b", title("Storage")),
    ("1", "Status", b"1", title("Status")),
    ("2", "Settings again", b"2", title("Settings")),
    ("1", "Status again", b"1", title("Status")),
    ("3", "Storage again", b"3", title("Storage")),
    ("1", "Status again", b"1", title("Status")),
    # The notification stays 5 s (Textual's default), then the screen under it is drawn again.
    ("b", "back up now, until its notification has gone", b"b", {"until": "Backup created", "at_least": 7.0,
                                                                  "timeout": 120}),
]


def make_appliance(directory: Path) -> Path:
    env = {**os.environ, "APPLIANCE_BACKUP_DEBUG": ""}
    subprocess.run([str(BIN), "demo", str(directory / "appliance")], check=True, capture_output=True, env=env)
    config = directory / "appliance" / "config.toml"
    secret = directory / "dms.txt"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)
    subprocess.run([str(BIN), "--config", str(config), "secret", "set", "--passphrase-file", str(secret)],
                   check=True, capture_output=True, env=env)
    return config


def measure(config: Path, idle: float, columns: int, lines: int, term: str, dump: Path | None) -> list[dict]:
    console = Console(config, columns, lines, term)
    rows = []

    def record(key: str, what: str, start: float, end: float) -> None:
        data = console.output_since(start, end + 1e-9)
        rows.append({"key": key, "action": what, "bytes": len(data), **breakdown(data)})
        if dump is not None:
            (dump / f"{len(rows):02d}-{key}.bin").write_bytes(data)

    started = time.monotonic()
    console.start()
    try:
        # The first paint: until the Status table has its values, then quiet.
        end = console.settle(started, until="Current Backup Status", timeout=30, at_least=1.0)
        record("start", "first paint (Status)", started, end)
        for key, what, keys, options in ACTIONS:
            time.sleep(0.2)
            pressed = console.press(keys)
            end = console.settle(pressed, **options)
            record(key, what, pressed, end)
        time.sleep(0.5)
        idle_start = time.monotonic()
        time.sleep(idle)
        data = console.output_since(idle_start)
        per_minute = len(data) * 60 / idle
        rows.append({"key": "idle", "action": f"Status, nothing changing (per minute, over {idle:.0f} s)",
                     "bytes": round(per_minute), **{k: round(v * 60 / idle) for k, v in breakdown(data).items()}})
        if dump is not None:
            (dump / "idle.bin").write_bytes(data)
    finally:
        console.stop()
    return rows


def report(rows: list[dict], columns: int, lines: int, term: str) -> None:
    print(f"bytes the console writes to its terminal ({columns}x{lines}, TERM={term})")
    print(f"{'key':<7} {'action':<46} {'bytes':>7} {'text':>6} {'style':>6} {'cursor':>6} {'other':>6}"
          f" {'9600 bd':>8} {'115200 bd':>9}")
    for row in rows:
        seconds = {baud: row["bytes"] / rate for baud, rate in BAUDS.items()}
        print(f"{row['key']:<7} {row['action'][:46]:<46} {row['bytes']:>7} {row['text']:>6} {row['style']:>6}"
              f" {row['cursor']:>6} {row['other_escapes']:>6} {seconds[9600]:>7.2f}s {seconds[115200]:>8.2f}s")
    switches = [r for r in rows if r["key"] in ("1", "2", "3")]
    first = rows[0]
    idle = rows[-1]
    print(f"targets: screen switch < 4096 B (largest {max(r['bytes'] for r in switches)}), "
          f"first paint < 12288 B ({first['bytes']}), idle 0 B/min ({idle['bytes']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="an appliance's config.toml (default: a fresh demo appliance)")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle Status screen to count (default 60)")
    parser.add_argument("--size", default="80x24", help="terminal size COLUMNSxLINES (default 80x24)")
    parser.add_argument("--term", default="linux", help="TERM (default linux)")
    parser.add_argument("--dump", type=Path, help="write each action's raw bytes into this directory")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    columns, lines = (int(n) for n in args.size.lower().split("x"))
    if args.dump is not None:
        args.dump.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="abk-wire-"))
    try:
        config = args.config or make_appliance(scratch)
        rows = measure(config, args.idle, columns, lines, args.term, args.dump)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        report(rows, columns, lines, args.term)
    return 0


if __name__ == "__main__":
    sys.exit(main())
