"""Provides StorageScreen: the storage type (None, NFS, local directory), the NFS URL and version or the
local directory, the storage in use, Browse Storage and Save.

Validation is the core's (validate_nfs_url, transport_for, update_config); this screen shows its
sentences inline. Saving writes [storage] atomically and the App reloads the service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Input, Select, Static

from backup.config import NFS_VERSIONS, Config
from backup.errors import BackupError
from backup.service import StatusReport
from backup.storage.nfsurl import EXAMPLE, shown_url, validate_nfs_url
from screens.base import FormScreen
from screens.storage_browser import BrowseLocation, StorageBrowser, local_location, nfs_location
from widgets.messages import SettingsSaved, SettingsSaveFailed
from widgets.secret_form import show_sentence

STORAGE_TYPES = [("None", "none"), ("Network File System (NFS)", "nfs"), ("Local directory", "local")]
TYPE_NAMES = dict((value, label) for label, value in STORAGE_TYPES)


def transport_sentence(version: str) -> str:
    """Which NFS client this appliance uses for `version`, or why it has none."""
    from backup.storage.nfs import transport_for

    try:
        transport = transport_for(version)
    except BackupError as exc:
        return exc.message
    if transport == "kernel":
        return f"NFS {version} goes through the kernel's NFS client (a private mount)."
    return f"NFS {version} goes through the userspace NFS client (no kernel NFS here)."


def directory_problem(value: str) -> str | None:
    if not value:
        return "Give the directory that holds the backups, e.g. /srv/appliance-backups."
    if not value.startswith("/"):
        return f"The directory {value!r} is a relative path: give an absolute path such as /{value}."
    return None


class StorageCommands(Provider):
    """Browse Storage and Save Storage in the command palette."""

    COMMANDS = [("browse", "Browse Storage", "Open the storage browser on the location in the form (key o)"),
                ("save", "Save Storage", "Write the storage settings to the configuration (key s)")]

    async def discover(self) -> Hits:
        screen = self.screen
        for action, title, help_text in self.COMMANDS:
            yield DiscoveryHit(title, lambda a=action: screen.run_action(a), help=help_text)

    async def search(self, query: str) -> Hits:
        screen = self.screen
        matcher = self.matcher(query)
        for action, title, help_text in self.COMMANDS:
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), lambda a=action: screen.run_action(a), help=help_text)


class StorageScreen(FormScreen):
    """Mode "storage" (key 3). Nothing is focused on arrival, so the plain keys work; Tab enters the fields."""

    SCREEN_TITLE = "Storage"
    COMMANDS = {StorageCommands}
    BINDINGS = [
        Binding("o", "browse", "Browse Storage"),
        Binding("s", "save", "Save"),
    ]

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="storage-body", can_focus=False):
            yield self.access_note()
            yield Static("Storage", classes="section-title")
            with Horizontal(classes="form-row"):
                yield Static("Storage Type", classes="form-label")
                yield Select(STORAGE_TYPES, value="none", allow_blank=False, id="storage-type", compact=True)
            with Vertical(id="nfs-fields", classes="form-group"):
                with Horizontal(classes="form-row"):
                    yield Static("NFS URL", classes="form-label")
                    yield Input(id="nfs-url", placeholder=EXAMPLE, compact=True)
                yield Static("", id="nfs-url-error", classes="form-error", markup=False)
                with Horizontal(classes="form-row"):
                    yield Static("NFS version", classes="form-label")
                    yield Select([(v, v) for v in NFS_VERSIONS], value="4.1", allow_blank=False,
                                 id="nfs-version", compact=True)
                yield Static("", id="nfs-transport", classes="note", markup=False)
            with Vertical(id="local-fields", classes="form-group"):
                with Horizontal(classes="form-row"):
                    yield Static("Directory", classes="form-label")
                    yield Input(id="local-path", placeholder="/srv/appliance-backups", compact=True)
                yield Static("", id="local-path-error", classes="form-error", markup=False)
            with Horizontal(classes="form-row"):
                yield Static("Chosen location", classes="form-label")
                yield Static("", id="chosen-location", markup=False)
            yield Static("Configured storage: reading...", id="storage-description", classes="field", markup=False)
            with Horizontal(classes="buttons", id="storage-buttons"):
                yield Button("Browse Storage", id="browse", compact=True)
                yield Button("Save", id="save", variant="primary", compact=True)
            yield Static("", id="storage-result", classes="form-result", markup=False)

    def on_mount(self) -> None:
        show_sentence(self.query_one("#storage-result", Static), "")
        self.load(self.console.config)
        self.watch(self.app, "report", self._show_report)
        self.watch_access()

    # ------------------------------------------------------------ the form

    def load(self, config: Config) -> None:
        """Fill the form from the configuration."""
        storage = config.storage
        self.query_one("#storage-type", Select).value = storage.type
        self.query_one("#nfs-url", Input).value = storage.url or ""
        self.query_one("#nfs-version", Select).value = storage.version or "4.1"
        self.query_one("#local-path", Input).value = str(storage.path) if storage.path else ""
        self._refresh_form()

    @property
    def storage_type(self) -> str:
        value = self.query_one("#storage-type", Select).value
        return value if isinstance(value, str) else "none"

    @property
    def nfs_version(self) -> str:
        value = self.query_one("#nfs-version", Select).value
        return value if isinstance(value, str) else "4.1"

    def _values(self) -> tuple[str, str, str]:
        return (self.storage_type, self.query_one("#nfs-url", Input).value.strip(),
                self.query_one("#local-path", Input).value.strip())

    def _problems(self) -> dict[str, str]:
        kind, url, path = self._values()
        problems = {}
        if kind == "nfs":
            problem = validate_nfs_url(url) if url else f"Give the share's URL, e.g. {EXAMPLE}."
            if problem:
                problems["#nfs-url-error"] = problem
        elif kind == "local":
            problem = directory_problem(path)
            if problem:
                problems["#local-path-error"] = problem
        return problems

    def _refresh_form(self, *, show_empty: bool = False) -> None:
        kind, url, path = self._values()
        self.query_one("#nfs-fields").display = kind == "nfs"
        self.query_one("#local-fields").display = kind == "local"
        problems = self._problems()
        for selector, empty in (("#nfs-url-error", not url), ("#local-path-error", not path)):
            sentence = problems.get(selector, "")
            show_sentence(self.query_one(selector, Static), "" if empty and not show_empty else sentence)
        if kind == "nfs":
            self.query_one("#nfs-transport", Static).update(transport_sentence(self.nfs_version))
        chosen = {"none": "None: no backups can be written until a storage is chosen.",
                  "nfs": f"{shown_url(url) if url else '(no URL yet)'}, NFS {self.nfs_version}",
                  "local": path or "(no directory yet)"}[kind]
        self.query_one("#chosen-location", Static).update(chosen)

    @on(Select.Changed)
    @on(Input.Changed)
    def _changed(self) -> None:
        self._refresh_form()

    def _show_report(self, report: StatusReport | None) -> None:
        if report is not None:
            self.query_one("#storage-description", Static).update(f"Configured storage: {report.storage or '-'}")

    # ------------------------------------------------------------ save and browse

    def changes(self) -> dict[str, dict[str, Any]]:
        kind, url, path = self._values()
        if kind == "nfs":
            return {"storage": {"type": "nfs", "url": url, "version": self.nfs_version, "path": None}}
        if kind == "local":
            return {"storage": {"type": "local", "path": path, "url": None, "version": None}}
        return {"storage": {"type": "none", "path": None, "url": None, "version": None}}

    @on(Button.Pressed, "#save")
    @on(Input.Submitted, "#nfs-url")
    @on(Input.Submitted, "#local-path")
    def action_save(self) -> None:
        result = self.query_one("#storage-result", Static)
        self._refresh_form(show_empty=True)
        if self._problems():
            show_sentence(result, "Nothing was saved: correct the fields marked above.")
            return
        show_sentence(result, "Saving...")
        self.console.save_settings(self.changes(), self)

    @on(SettingsSaved)
    def _saved(self, message: SettingsSaved) -> None:
        show_sentence(self.query_one("#storage-result", Static),
                      f"Saved to {message.config.path.name}: the storage is now "
                      f"{self._location_text(message.config)}.")

    @on(SettingsSaveFailed)
    def _save_failed(self, message: SettingsSaveFailed) -> None:
        show_sentence(self.query_one("#storage-result", Static), f"Nothing was saved: {message.sentence}")

    @staticmethod
    def _location_text(config: Config) -> str:
        storage = config.storage
        if storage.type == "local":
            return f"the local directory {storage.path}"
        if storage.type == "nfs":
            return f"the NFS {storage.version} share {storage.url}"
        return "none"

    def location(self) -> BrowseLocation | None:
        """What Browse Storage opens: the location in the form (saved or not)."""
        kind, url, path = self._values()
        if kind == "nfs":
            return nfs_location(url, self.nfs_version)
        if kind == "local":
            return local_location(Path(path))
        return None

    @on(Button.Pressed, "#browse")
    def action_browse(self) -> None:
        result = self.query_one("#storage-result", Static)
        self._refresh_form(show_empty=True)
        if self.storage_type == "none":
            show_sentence(result, "Choose a storage type (NFS or a local directory) to browse it.")
            return
        if self._problems():
            show_sentence(result, "Correct the fields marked above to browse the storage.")
            return
        location = self.location()
        assert location is not None
        show_sentence(result, "")
        self.app.push_screen(StorageBrowser(location), self._browser_closed)

    def _browser_closed(self, config: Config | None) -> None:
        if config is not None:
            self.load(config)
            show_sentence(self.query_one("#storage-result", Static),
                          f"Saved to {config.path.name}: the storage is now {self._location_text(config)}.")


__all__ = ["StorageScreen", "STORAGE_TYPES", "transport_sentence"]
