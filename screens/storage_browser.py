"""Provides StorageBrowser: a lazy, paged browser of a storage, its Storage Information, and the
Backup Details, verify, restore and delete of the backups in it.

The browser works over the Storage protocol only (local directory, NFS, or a
fake in tests). It never lists a whole directory: pages of PAGE_SIZE entries
are read on a thread worker and appended as the cursor nears the end. Every
storage call runs on a worker; a failure is a sentence in the side panel and
the browser stays usable.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from backup.config import Config
from backup.errors import StorageError
from backup.progress import Progress
from backup.service import BackupDetails, BackupService, describe, foreign_note, refused_attributes_sentence
from backup.storage import Entry, Storage, Usage
from screens.restore import ConfirmDeleteScreen, ConfirmRestoreScreen, PassphraseScreen, RestoreConfirmed
from widgets.backup_details import BackupDetailsView
from widgets.console import ConsoleHandle
from widgets.format import printable
from widgets.messages import (
    BackupDetailsRead,
    BackupIdentityRead,
    BackupTaskEnded,
    BackupTaskProgressed,
    BackupTaskStarted,
    Concealed,
    DirectoryListFailed,
    DirectoryPageListed,
    SettingsSaved,
    SettingsSaveFailed,
    StorageInfoRead,
)
from widgets.run_progress import bar
from widgets.run_progress import details as progress_details
from widgets.storage_info import StorageInfo
from widgets.storage_tree import StorageTree

PAGE_SIZE = 200
READING = "Reading the backup's details..."
"""Entries listed per worker call: the first ones are on screen long before a big directory is read."""


def join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def parent_of(path: str) -> str:
    parent = str(PurePosixPath(path).parent)
    return "" if parent == "." else parent


class Subdirectory:
    """A storage seen from one of its directories, so a BackupService works on the backups there."""

    def __init__(self, base: Storage, directory: str, shown: str) -> None:
        self.base = base
        self.directory = directory
        self.description = shown

    def _p(self, path: str) -> str:
        return join(self.directory, path) if path else self.directory

    def list(self, path: str = "", *, offset: int = 0, limit: int | None = None) -> list[Entry]:
        return self.base.list(self._p(path), offset=offset, limit=limit)

    def stat(self, path: str) -> Entry:
        return self.base.stat(self._p(path))

    def usage(self, path: str = "") -> Usage:
        return self.base.usage(self._p(path))

    def access(self, path: str = "") -> tuple[bool, bool]:
        return self.base.access(self._p(path))

    def create(self, name: str) -> Any:
        raise StorageError("The storage browser does not write backups.")

    def open(self, name: str) -> BinaryIO:
        return self.base.open(self._p(name))

    def delete(self, name: str) -> None:
        self.base.delete(self._p(name))


TASK_NAMES = {
    "verify": ("verify", "Verifying"),
    "verify_deep": ("deep verify", "Deep verifying"),
    "restore": ("restore", "Restoring"),
    "delete": ("delete", "Deleting"),
}
"""The browser's tasks: how a sentence names one, and its line while it runs."""


@dataclass
class BrowseLocation:
    """What the browser browses: a storage opened on first use, where to start, and how a
    directory of it is written and saved as the storage location.
    """

    opener: Callable[[], Storage]
    """Opens the storage (on a worker: an NFS storage may connect)."""
    kind: str
    """"local" or "nfs": the [storage] type that Use This Location saves."""
    top: str
    """How the top of the storage is written: "/" for the local file system, the share's URL for NFS."""
    start: str = ""
    """The directory to open first, relative to the top."""
    version: str | None = None
    """The NFS version, saved with the URL."""
    _storage: Storage | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def storage(self) -> Storage:
        with self._lock:
            if self._storage is None:
                self._storage = self.opener()
            return self._storage

    def warm_up(self) -> None:
        """Open the storage and let it connect (an NFS storage: load the client library, connect,
        check the share) on a background thread now, so the first listing finds it ready.

        A plain daemon thread, not a Textual worker: it starts before the browser screen is
        mounted, which is the point. Failures are ignored here; the listing reports its own.
        """

        def run() -> None:
            try:
                connect = getattr(self.storage, "connect", None)
                if connect is not None:
                    connect()
            except Exception:  # noqa: BLE001 - the first listing says what is wrong
                pass

        threading.Thread(target=run, daemon=True, name="storage-warm-up").start()

    def shown(self, path: str) -> str:
        return f"{self.top.rstrip('/')}/{path}" if path else self.top

    def changes(self, path: str) -> dict[str, dict[str, Any]]:
        """The [storage] changes that make `path` the storage location."""
        if self.kind == "local":
            return {"storage": {"type": "local", "path": self.shown(path), "url": None, "version": None}}
        return {"storage": {"type": "nfs", "url": self.shown(path), "version": self.version or "4.1", "path": None}}

    def close(self) -> None:
        with self._lock:
            storage, self._storage = self._storage, None
        close = getattr(storage, "close", None)
        if close is not None:
            close()


def local_location(directory: Path) -> BrowseLocation:
    """Browse the local file system from `directory`, with `..` up to /."""
    from backup.storage.local import LocalStorage

    start = str(Path(directory)).strip("/")
    return BrowseLocation(opener=lambda: LocalStorage(Path("/")), kind="local", top="/", start=start)


def nfs_location(url: str, version: str) -> BrowseLocation:
    """Browse inside the NFS directory `url` (the top cannot be left: the share is all this appliance may see)."""
    from backup.storage.nfs import open_nfs_storage

    return BrowseLocation(opener=lambda: open_nfs_storage(url, version), kind="nfs", top=url.rstrip("/"),
                          version=version)


class BrowserCommands(Provider):
    """The browser's actions in the command palette."""

    def _commands(self) -> Iterable[tuple[str, str, str]]:
        screen = self.screen
        if not isinstance(screen, StorageBrowser):
            return
        for action, title, help_text in screen.COMMAND_LIST:
            if screen.check_action(action, ()):
                yield title, help_text, action

    async def discover(self) -> Hits:
        for title, help_text, action in self._commands():
            yield DiscoveryHit(title, self._runner(action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, action in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), self._runner(action), help=help_text)

    def _runner(self, action: str) -> Callable[[], Any]:
        screen = self.screen
        return lambda: screen.run_action(action)


class StorageBrowser(ConsoleHandle, ModalScreen[Config | None]):
    """Browse a storage; dismisses the new Config after Use This Location, else None."""

    COMMANDS = {BrowserCommands}
    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("enter", "open", "Open", show=True),
        Binding("backspace", "up", "Up (..)"),
        Binding("u", "use_location", "Use This Location"),
        Binding("v", "verify", "Verify"),
        Binding("V", "verify_deep", "Deep verify", show=False),
        Binding("r", "restore", "Restore"),
        Binding("x", "delete", "Delete"),
    ]
    COMMAND_LIST = [
        ("open", "Open", "Go into the directory, or show the backup's details (Enter)"),
        ("up", "Up one level", "Show the directory above (Backspace, or Enter on ..)"),
        ("use_location", "Use This Location", "Save the directory shown as the storage location (key u)"),
        ("verify", "Verify backup", "Authenticate every byte of the chosen backup (key v)"),
        ("verify_deep", "Deep verify backup",
         "Also decompress and check every file of the chosen backup against its SHA-256, ~10x slower (key V)"),
        ("restore", "Restore backup", "Return the appliance to the chosen backup's state (key r)"),
        ("delete", "Delete backup", "Delete the chosen backup file (key x)"),
        ("close", "Close the storage browser", "Back to the Storage screen (Esc)"),
    ]

    def __init__(self, location: BrowseLocation) -> None:
        super().__init__()
        self.location = location
        self.selected: str | None = None
        """The backup file (path from the top) whose details are asked for or shown."""
        self.details: BackupDetails | None = None
        self.sentence = ""
        """The sentence the panel shows (what failed, or the result of the last action)."""
        self.running_task: str | None = None
        """A key of TASK_NAMES while one runs."""
        self._cancel = threading.Event()
        location.warm_up()  # connects while the screen is composed and mounted

    # ------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        with Vertical(id="browser"):
            yield Static("appliance-backup | Storage Browser", id="title-bar", markup=False)
            yield Static("", id="browser-path", markup=False)
            with Horizontal(id="browser-body"):
                yield StorageTree(id="storage-tree")
                with VerticalScroll(id="browser-panel", can_focus=False):
                    yield Static("Storage Information", classes="section-title")
                    yield StorageInfo(id="storage-info")
                    yield Static("Backup Details", id="details-title", classes="section-title")
                    yield BackupDetailsView(id="backup-details")
                    yield Static("", id="browser-task", markup=False)
                    yield Static("", id="browser-message", markup=False)
        yield Footer(show_command_palette=not self.console.serial)

    @property
    def storage_tree(self) -> StorageTree:
        return self.query_one(StorageTree)

    def on_mount(self) -> None:
        # What exists now (the whole console, about 80,000 objects) lives at least as long as this
        # screen: leave it out of the cyclic collector while browsing, so a full collection looks at
        # what the browser makes, not at everything (40-50 ms each on a small appliance, several
        # times while paging through 50,000 entries). Objects still go the moment nothing refers to
        # them; only cycles among the frozen ones wait for on_unmount, which hands them back.
        gc.freeze()
        self._show_details(None)
        self._say("")
        self._task_line("")
        self.storage_tree.focus()
        self.open_directory(self.location.start)

    # ------------------------------------------------------------ directories

    def open_directory(self, path: str, *, select: str | None = None) -> None:
        self._show_details(None)
        self._say("")
        self.query_one("#browser-path", Static).update(f"Location: {printable(self.location.shown(path))}")
        self.query_one(StorageInfo).show_loading(self.location.shown(path))
        self.storage_tree.show_directory(path, at_top=path == "", select=select)
        self.load_info(path)

    @on(StorageTree.PageWanted)
    def _page_wanted(self, message: StorageTree.PageWanted) -> None:
        self.load_page(message.path, message.offset)

    @work(thread=True, exclusive=True, group="browser-list", exit_on_error=False, description="list a directory")
    def load_page(self, path: str, offset: int) -> None:
        try:
            entries = self.location.storage.list(path, offset=offset, limit=PAGE_SIZE)
        except Exception as exc:
            self.post_message(DirectoryListFailed(path, offset, describe(exc)))
            return
        self.post_message(DirectoryPageListed(path, offset, entries, len(entries) < PAGE_SIZE))

    @on(DirectoryPageListed)
    def _page_listed(self, message: DirectoryPageListed) -> None:
        self.storage_tree.add_page(message.path, message.offset, message.entries, message.complete)

    @on(DirectoryListFailed)
    def _list_failed(self, message: DirectoryListFailed) -> None:
        if message.path == self.storage_tree.path:
            self.storage_tree.page_failed(message.path, message.sentence)
            self._say(message.sentence)

    @work(thread=True, exclusive=True, group="browser-info", exit_on_error=False, description="read storage information")
    def load_info(self, path: str) -> None:
        storage = None
        try:
            storage = self.location.storage
            access = storage.access(path)
            usage = storage.usage(path)
        except Exception as exc:
            self.post_message(StorageInfoRead(path, None, None, describe(exc)))
            return
        self.post_message(StorageInfoRead(path, access, usage))

    @on(StorageInfoRead)
    def _info_read(self, message: StorageInfoRead) -> None:
        if message.path != self.storage_tree.path:
            return
        info = self.query_one(StorageInfo)
        where = self.location.shown(message.path)
        if message.access is None or message.usage is None:
            info.show_problem(where, message.sentence)
        else:
            info.show(where, message.access, message.usage)  # type: ignore[arg-type]

    @on(StorageTree.Opened)
    def _opened(self, message: StorageTree.Opened) -> None:
        row = message.row
        tree = self.storage_tree
        if row.is_up:
            self.open_directory(parent_of(tree.path), select=PurePosixPath(tree.path).name)
        elif row.is_dir:
            self.open_directory(join(tree.path, row.name))
        elif row.is_backup:
            self.select_backup(join(tree.path, row.name))
        else:
            self._say(f"{row.name} is not a backup file (backups are regular files ending in .abk).")

    @on(StorageTree.Highlighted)
    def _highlighted(self, message: StorageTree.Highlighted) -> None:
        row = message.row
        if self.running_task is None and self.selected is not None and (row is None or join(self.storage_tree.path, row.name) != self.selected):
            self._show_details(None)
            self._say("")
            self._task_line("")

    # ------------------------------------------------------------ backup details

    def _service(self, path: str) -> tuple[BackupService, str]:
        """A service on the directory holding `path`, and the backup's name there."""
        directory, name = parent_of(path), PurePosixPath(path).name
        storage = Subdirectory(self.location.storage, directory, self.location.shown(directory))
        console = self.console.service
        return BackupService(self.console.config, clock=self.console.clock, storage=storage, operator=console.operator,
                             login=console.login), name

    def select_backup(self, path: str) -> None:
        self._show_details(None)
        self.selected = path
        self._say(READING)
        self._task_line("")
        self.load_details(path)

    @work(thread=True, exclusive=True, group="browser-details", exit_on_error=False, description="read backup details")
    def load_details(self, path: str) -> None:
        try:
            service, name = self._service(path)
            details = service.details(name)
        except Exception as exc:
            self.post_message(BackupDetailsRead(path, None, describe(exc)))
            return
        self.post_message(BackupDetailsRead(path, details))

    @on(BackupDetailsRead)
    def _details_read(self, message: BackupDetailsRead) -> None:
        if message.path != self.selected:
            return
        if message.details is None:
            self._show_details(None, keep_selection=True)
            self._say(message.sentence)
            return
        self._show_details(message.details)  # type: ignore[arg-type]
        if self.sentence == READING:
            self._say("")
        elif self.sentence:  # details read again after a task: its result stays in view below them
            self._scroll_to_lines()

    def _show_details(self, details: BackupDetails | None, *, keep_selection: bool = False) -> None:
        self.details = details
        if details is None and not keep_selection:
            self.selected = None
        view = self.query_one(BackupDetailsView)
        if details is None:
            view.clear()
        else:
            view.show(details, self.console.clock())
        view.display = details is not None
        self.query_one("#details-title").display = details is not None
        self.refresh_bindings()

    def _say(self, sentence: str) -> None:
        self.sentence = sentence
        self._show_line("#browser-message", printable(sentence))  # names in the storage are anyone's

    def _task_line(self, text: str) -> None:
        self._show_line("#browser-task", text)

    def _show_line(self, selector: str, text: str) -> None:
        """Show `text` under the details, scrolled into view: on 80x24 the details fill the panel."""
        widget = self.query_one(selector, Static)
        widget.update(text)
        widget.display = bool(text)
        if text:
            self._scroll_to_lines()

    def _scroll_to_lines(self) -> None:
        """The task and message lines are the panel's last: scroll to its end once laid out."""
        panel = self.query_one("#browser-panel", VerticalScroll)
        self.call_after_refresh(panel.scroll_end, animate=False, immediate=True)

    # ------------------------------------------------------------ actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("verify", "verify_deep", "restore"):
            return self.running_task is None and self.details is not None
        if action == "delete":
            return self.running_task is None and self.selected is not None
        if action == "use_location":
            return self.running_task is None
        if action == "up":
            return not self.storage_tree.at_top
        return True

    def action_open(self) -> None:
        self.storage_tree.action_open()

    def action_up(self) -> None:
        self.storage_tree.action_up()

    def action_close(self) -> None:
        if self.running_task is not None and self.running_task != "delete":
            self._say(f"A {TASK_NAMES[self.running_task][0]} is running: wait for it to finish.")
            return
        self.dismiss(None)

    def on_unmount(self) -> None:
        gc.unfreeze()
        location = self.location
        self.app.run_worker(location.close, thread=True, group="storage-close", exit_on_error=False,
                            description="close the browsed storage")

    def _refused(self, what: str) -> bool:
        """Say why a look-only operator may not `what`, before any dialog (the core refuses it too)."""
        access = self.console.access
        if access is None or access.may_change:
            return False
        self._say(access.refusal(what))
        return True

    def action_use_location(self) -> None:
        if self._refused("change the storage"):
            return
        path = self.storage_tree.path
        self._say(f"Saving {self.location.shown(path)} as the storage location...")
        self.console.save_settings(self.location.changes(path), self)

    @on(SettingsSaved)
    def _location_saved(self, message: SettingsSaved) -> None:
        self.dismiss(message.config)

    @on(SettingsSaveFailed)
    def _location_not_saved(self, message: SettingsSaveFailed) -> None:
        message.stop()
        self._say(f"The location was not saved: {message.sentence}")

    def action_verify(self, task: str = "verify") -> None:
        if self.details is None or self.selected is None:
            return
        path = self.selected
        if self.details.opens_with_this_dms:
            self._start(task, path, None)
            return

        def answered(passphrase: Concealed | None) -> None:
            if passphrase is not None:
                self._start(task, path, passphrase)

        self.app.push_screen(PassphraseScreen(PurePosixPath(path).name), answered)

    def action_verify_deep(self) -> None:
        self.action_verify("verify_deep")

    def action_restore(self) -> None:
        if self.details is None or self.selected is None or self._refused("restore backups"):
            return
        path = self.selected

        def answered(answer: RestoreConfirmed | None) -> None:
            if answer is None:
                return
            if answer.passphrase is None:
                self._start("restore", path, None)
            else:  # only now can the manifest say whose backup it is: asked again if another appliance's
                self.read_identity(path, answer.passphrase)

        self.app.push_screen(ConfirmRestoreScreen(PurePosixPath(path).name, self.console.config,
                                                  ask_dms=not self.details.opens_with_this_dms,
                                                  foreign=foreign_note(self.details)), answered)

    @work(thread=True, exclusive=True, group="browser-identity", exit_on_error=False,
          description="read whose backup it is")
    def read_identity(self, path: str, passphrase: Concealed) -> None:
        try:
            service, name = self._service(path)
            note = foreign_note(service.details(name, passphrase=passphrase.reveal()))
        except Exception:  # a wrong DMS or a damaged file: the restore itself says so
            note = None
        self.post_message(BackupIdentityRead(path, passphrase, note))

    @on(BackupIdentityRead)
    def _identity_read(self, message: BackupIdentityRead) -> None:
        if message.foreign is None:
            self._start("restore", message.path, message.passphrase)
            return

        def answered(answer: RestoreConfirmed | None) -> None:
            if answer is not None:
                self._start("restore", message.path, message.passphrase)

        self.app.push_screen(ConfirmRestoreScreen(PurePosixPath(message.path).name, self.console.config, ask_dms=False,
                                                  foreign=message.foreign),
                             answered)

    def action_delete(self) -> None:
        if self.selected is None or self._refused("delete backups"):
            return
        path = self.selected

        def answered(delete: bool | None) -> None:
            if delete:
                self._start("delete", path, None)

        self.app.push_screen(ConfirmDeleteScreen(PurePosixPath(path).name, self.location.shown(parent_of(path))),
                             answered)

    def stop_task(self) -> None:
        """Ask the running verify or restore to stop (a restore replacing the state finishes that first)."""
        self._cancel.set()

    def _start(self, task: str, path: str, passphrase: Concealed | None) -> None:
        self.running_task = task
        self.post_message(BackupTaskStarted(task, self.stop_task))
        self._cancel = threading.Event()
        self._say("")
        self._task_line(TASK_NAMES[task][1] + "...")
        self.refresh_bindings()
        self.run_task(task, path, passphrase, self._cancel)

    @work(thread=True, exclusive=True, group="browser-task", exit_on_error=False, description="verify, restore or delete")
    def run_task(self, task: str, path: str, passphrase: Concealed | None, cancel: threading.Event) -> None:
        def report(progress: Progress) -> None:
            self.post_message(BackupTaskProgressed(progress))

        secret = passphrase.reveal() if passphrase is not None else None
        try:
            service, name = self._service(path)
            if task in ("verify", "verify_deep"):
                result = service.verify(name, deep=task == "verify_deep", passphrase=secret, progress=report,
                                        cancel=cancel)
                sentence = f"The backup {name} is intact: {result.proved()}."
                if not result.recorded:
                    sentence += f" This verification was {result.NOT_RECORDED}"
            elif task == "restore":
                restored = service.restore(name, passphrase=secret, progress=report, cancel=cancel)
                sentence = (f"The appliance was restored from {name} ({restored.files} files). "
                            f"The state before the restore is kept in {restored.rollback_dir}.")
                refused = refused_attributes_sentence(restored.warnings)
                if refused:
                    sentence += " " + refused
            else:
                service.delete_backup(name)
                sentence = f"The backup {name} was deleted."
        except Exception as exc:
            what = TASK_NAMES[task][1]
            self.post_message(BackupTaskEnded(task, path, False, f"{what} {PurePosixPath(path).name} failed: {describe(exc)}"))
            return
        self.post_message(BackupTaskEnded(task, path, True, sentence))

    @on(BackupTaskProgressed)
    def _task_progressed(self, message: BackupTaskProgressed) -> None:
        if self.running_task is None:
            return
        progress = message.progress
        width = max(10, self.query_one("#browser-task").size.width - 2)
        self._task_line(f"{progress.stage or 'Starting'}\n{bar(progress.fraction, width, self.console.glyphs)}\n"
                        f"{progress_details(progress)}")

    @on(BackupTaskEnded)
    def _task_ended(self, message: BackupTaskEnded) -> None:
        self.running_task = None
        self._task_line("")
        if message.ok and message.task == "delete":
            self.storage_tree.remove_entry(PurePosixPath(message.path).name)
            self._show_details(None)
        self._say(message.sentence)
        if message.task != "delete" and self.selected == message.path:
            self.load_details(message.path)  # the last verification changed
        if message.task == "restore" and message.ok:
            self.console.refresh_status()
        self.refresh_bindings()


__all__ = ["StorageBrowser", "BrowseLocation", "Subdirectory", "local_location", "nfs_location", "PAGE_SIZE"]
