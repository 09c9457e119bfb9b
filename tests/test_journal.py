"""The run journal survives a crash mid-append and hand damage; interrupted runs are closed once."""

from __future__ import annotations

import os
from datetime import datetime, timezone

from backup.journal import RunJournal

NOW = datetime(2026, 11, 26, 2, 0, tzinfo=timezone.utc)


def test_a_torn_last_record_is_skipped_and_the_next_append_starts_clean(tmp_path) -> None:
    journal = RunJournal(tmp_path)
    run = journal.start("backup", now=NOW, name="a.abk")
    journal.end(run, "ok", now=NOW, name="a.abk", size=10)
    with open(journal.path, "ab") as f:
        f.write(b'{"type":"start","id":"torn","ki')  # the crash cut this append short
    assert [r.result for r in journal.runs()] == ["ok"]
    second = journal.start("backup", now=NOW, name="b.abk")
    journal.end(second, "failed", now=NOW, name="b.abk", error="disk full")
    runs = journal.runs()
    assert [(r.name, r.result) for r in runs] == [("a.abk", "ok"), ("b.abk", "failed")]
    assert runs[-1].error == "disk full"


def test_hand_damaged_lines_are_skipped_the_rest_is_kept(tmp_path) -> None:
    journal = RunJournal(tmp_path)
    for name in ("a", "b", "c"):
        run = journal.start("backup", now=NOW, name=name)
        journal.end(run, "ok", now=NOW, name=name)
    lines = journal.path.read_bytes().splitlines(keepends=True)
    lines[2] = b"this line was edited by hand\n"  # b's start
    lines[4] = b"\xff\xfe not even text\n"
    journal.path.write_bytes(b"".join(lines))
    assert [r.name for r in journal.runs()] == ["a"]


def test_an_interrupted_run_is_closed_once(tmp_path) -> None:
    journal = RunJournal(tmp_path)
    journal.start("backup", now=NOW, name="x.abk")
    text = journal.path.read_text().replace(f'"pid":{os.getpid()}', '"pid":999999999')
    journal.path.write_text(text)
    closed = journal.recover(now=NOW, alive=lambda pid: False)
    assert [(r.name, r.result) for r in closed] == [("x.abk", "interrupted")]
    assert journal.recover(now=NOW, alive=lambda pid: False) == []
    assert journal.runs()[-1].error.startswith("The backup was interrupted")
