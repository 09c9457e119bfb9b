"""What the console writes to its terminal (issue 20): a serial line at 115200 baud carries about 11 KB/s.

The console runs under Pilot with a driver that keeps what Textual writes
instead of dropping it (Textual's headless driver draws nothing at all), at
80x24 with TERM=linux and the serial profile. Everything else is the real
console on a real demo appliance. bench/wire.py measures the same on a real
pseudo-terminal; these tests hold the limits:

- an idle console with nothing changing writes nothing, and a relative time
  ("3 h ago") changes at most once a minute;
- a screen switch writes under 4 KB; the first paint under 12 KB.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from textual.drivers.headless_driver import HeadlessDriver
from textual.widgets import Static
from textual.worker import WorkerCancelled

from tests.tui_fixtures import FIXED_NOW, make_app, write_history
from tui.app import BackupConsole
from tui.terminal import ScreenDiff

SIZE = (80, 24)
SWITCH_LIMIT = 4096
FIRST_PAINT_LIMIT = 12 * 1024


class RecordingDriver(HeadlessDriver):
    """Textual's headless driver, except that the App draws, through the console's ScreenDiff as on a terminal,
    and what it writes is kept."""

    written: list[str]

    @property
    def is_headless(self) -> bool:
        return False

    def write(self, data: str) -> None:
        if not hasattr(self, "diff"):
            self.diff = ScreenDiff(*self._get_terminal_size())
        self.written.append(self.diff.write(data))

    def bytes_written(self) -> int:
        return sum(len(chunk.encode()) for chunk in self.written)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def linux_terminal(monkeypatch) -> None:
    """TERM=linux, as at a VM's serial console: Rich's console (Textual's renderer) then has 16 colours."""
    monkeypatch.setenv("TERM", "linux")
    monkeypatch.delenv("COLORTERM", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)


def recording_app(config, clock) -> BackupConsole:
    app = make_app(config, clock=clock, serial=True)
    RecordingDriver.written = []
    app.driver_class = RecordingDriver
    return app


async def read_status(pilot) -> None:
    """One status refresh, as the console's timer makes every 2 s, drawn."""
    pilot.app.refresh_status()
    # An exclusive refresh cancels the one before it (the start-up one, the timer's): wait until none runs.
    while pending := [w for w in pilot.app.workers if w.group == "status" and not w.is_finished]:
        for worker in pending:
            try:
                await worker.wait()
            except WorkerCancelled:
                pass
    await pilot.pause()
    await pilot.pause()


async def written_by(pilot, action) -> int:
    driver = pilot.app._driver
    before = driver.bytes_written()
    await action()
    return driver.bytes_written() - before


@pytest.fixture
def history(config_with_dms):
    write_history(config_with_dms)
    return config_with_dms


async def test_an_idle_status_screen_writes_nothing_when_nothing_changed(history, linux_terminal) -> None:
    clock = Clock(FIXED_NOW)
    app = recording_app(history, clock)
    async with app.run_test(size=SIZE, headless=False) as pilot:
        await read_status(pilot)
        assert app._driver.bytes_written() > 0
        for _ in range(5):
            clock.now += timedelta(seconds=2)
            assert await written_by(pilot, lambda: read_status(pilot)) == 0


async def test_a_relative_time_is_drawn_again_only_when_its_minute_changes(config_with_dms, linux_terminal) -> None:
    clock = Clock(FIXED_NOW)
    # write_history's last success ends 1 d 7 h 30 min - 47 s before its `now`: here 45 s before FIXED_NOW
    # ("just now"); the clock then moves in 2 s steps.
    write_history(config_with_dms, now=FIXED_NOW + timedelta(days=1, hours=7, minutes=30, seconds=-92))
    app = recording_app(config_with_dms, clock)
    async with app.run_test(size=SIZE, headless=False) as pilot:
        await read_status(pilot)
        drawn = []
        for _ in range(40):  # 80 s: "just now" until 60 s, then "1 min ago"
            clock.now += timedelta(seconds=2)
            drawn.append(await written_by(pilot, lambda: read_status(pilot)))
        # Drawn again twice: at 61 s ("1 min ago") and at 121 s ("2 min ago"), a minute apart.
        changes = [i for i, n in enumerate(drawn) if n]
        assert len(changes) == 2 and changes[1] - changes[0] == 30, drawn
        assert str(app.screen.query_one("#value-last-success", Static).content).endswith("(2 min ago)")


async def test_screen_switches_write_under_4_kb_and_the_first_paint_under_12_kb(history, linux_terminal) -> None:
    app = recording_app(history, Clock(FIXED_NOW))
    async with app.run_test(size=SIZE, headless=False) as pilot:
        await read_status(pilot)
        first = app._driver.bytes_written()
        assert first < FIRST_PAINT_LIMIT, first

        async def switch(key: str):
            async def press():
                await pilot.press(key)
                await pilot.pause()
                await pilot.pause()
            return press

        sizes = {}
        for key, name in [("2", "Settings"), ("1", "Status"), ("3", "Storage"), ("1", "Status again"),
                          ("2", "Settings again"), ("3", "Storage again")]:
            sizes[name] = await written_by(pilot, await switch(key))
        assert all(0 < n < SWITCH_LIMIT for n in sizes.values()), sizes
