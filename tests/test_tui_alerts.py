"""The console and alerts: the Status screen's alert health line, and "Send a test alert" from the palette.

The webhook is a real HTTP server on loopback (tests/alert_servers.py).
"""

from __future__ import annotations

from backup.config import Config, load_config
from screens.status import StatusScreen
from tests.alert_servers import WebhookLog, http_server
from tests.tui_fixtures import make_app, settle

SIZE = (100, 30)


def with_webhook(config: Config, port: int) -> Config:
    with open(config.path, "a", encoding="utf-8") as out:
        out.write(f'\n[notify.webhook]\nurl = "http://127.0.0.1:{port}/hook?key=hidden"\ntimeout_seconds = 5\n')
    return load_config(config.path)


def alerts_line(app) -> tuple[bool, str]:
    widget = app.screen.query_one("#alerts")
    return widget.display, str(widget.render())


async def test_no_alert_line_without_targets(config: Config) -> None:
    app = make_app(config)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, StatusScreen)
        assert alerts_line(app)[0] is False


async def test_test_alert_from_the_palette_shows_what_the_target_answered(config: Config) -> None:
    with http_server(WebhookLog(status=500)) as (port, log):
        app = make_app(with_webhook(config, port))
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            shown, text = alerts_line(app)
            assert shown and text == "Alerts: webhook ok"  # nothing sent yet
            command = next(c for c in app.get_system_commands(app.screen) if c.title == "Send a test alert")
            command.callback()
            await settle(pilot)
            assert log.requests and log.requests[0]["body"]["event"] == "test"
            said = [n.message for n in app._notifications]
            assert any(f"webhook: FAILED: http://127.0.0.1:{port}/hook answered HTTP 500" in m for m in said)
            shown, text = alerts_line(app)
            assert shown and text.startswith("Alerts: webhook failing since ")
            assert text.endswith(f"http://127.0.0.1:{port}/hook answered HTTP 500 Internal Server Error")
            assert "hidden" not in text  # the URL's query is never shown
            assert app.screen.query_one("#alerts").has_class("failing")
            log.status = 200
            command.callback()
            await settle(pilot)
            assert alerts_line(app) == (True, "Alerts: webhook ok")


async def test_an_open_console_runs_a_due_verify_job_and_shows_it(config: Config) -> None:
    from datetime import datetime, timezone

    from backup.service import BackupService
    from tests.common import FAST_KDF, PASSPHRASE

    with open(config.path, "a", encoding="utf-8") as out:
        out.write('\n[verify]\ncron = "0 4 * * *"\n')
    config = load_config(config.path)
    service = BackupService(config, kdf_params=FAST_KDF)
    service.set_secret(PASSPHRASE)
    name = service.run_backup().name
    now = datetime.now(timezone.utc)
    app = make_app(config, clock=lambda: now, run_schedule=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await settle(pilot)
        jobs = [r for r in service.journal.runs() if r.kind == "verify_job"]
        assert len(jobs) == 1 and jobs[0].result == "ok"
        assert [r.name for r in service.journal.runs() if r.kind == "verify"] == [name]
        widget = app.screen.query_one("#verify-job")
        assert widget.display and str(widget.render()).startswith("Verify job: last ")
        assert "passed; next " in str(widget.render())
