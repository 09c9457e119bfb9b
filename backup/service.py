"""Provides BackupService: the one facade the console and the headless command call.

Every operation takes its dependencies from the configuration and the clock
passed in; long operations report through a progress callback and stop when
their cancel event is set. Errors are the typed errors of backup.errors.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import shutil
import sqlite3
import tarfile
import threading
import tomllib
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, ClassVar, Iterator

import zstandard

from backup import __version__, database
from backup.archive import (
    HEADER_LENGTH,
    TAG_LENGTH,
    ArchiveReader,
    ArchiveWriter,
    KeyEncryptionKey,
    ScryptParams,
    opens_with,
    read_header,
)
from backup.catalog import BackupFacts, Catalog
from backup.config import Config, load_config, update_config
from backup.errors import (
    BackupError,
    BackupNotFoundError,
    ConfigError,
    DatabaseLockedError,
    DmsNotSetError,
    IntegrityError,
    InterruptedRunError,
    SlotAlreadyDoneError,
    StateDirError,
    StorageFullError,
    UnfinishedRestoreError,
    WrongDmsError,
)
from backup.extract import Extractor
from backup.fsutil import atomic_write_text, ensure_private_dir, fsync_dir, remove_tree, sync_filesystem
from backup.humanize import human_bytes
from backup.inhibit import shutdown_inhibitor
from backup.hooks import HookRunner
from backup.journal import RunJournal, RunRecord, interrupted_error
from backup.lock import RECOVERY_TASK, RunLock, is_locked, pid_alive, read_holder
from backup.payload import (
    DATABASE_MEMBER,
    MANIFEST_NAME,
    ManifestFacts,
    PayloadWriter,
    build_manifest,
    database_was_in_wal_mode,
    manifest_facts,
    read_manifest,
    scan_directory,
    walk_payload,
)
from backup.notify import AlertQueue, TargetHealth
from backup.operators import Access, Login, current_login, resolve_access
from backup.progress import Progress, ProgressCallback, Tracker
from backup.reporting import edges, oldest_unverified, reported, tick
from backup.retention import Decision, plan
from backup.schedule import interval_estimate, local_now, local_timezone, next_runs, slot_already_done, slot_detail
from backup.secret import DomainMasterSecret, SecretInfo, appliance_identity
from backup.storage import PARTIAL_SUFFIX, Entry, Storage, open_storage
from backup import verifyjob
from backup.trust import check_trusted

BACKUP_SUFFIX = ".abk"
OWN_SUFFIX = r"-(\d{8}T\d{6}Z)-[0-9a-f]{6}\.abk"
"""What follows `[<prefix>-]<appliance>` in the name of a backup this appliance wrote (group 1: UTC time)."""
NAME_STAMP = re.compile(OWN_SUFFIX + "$")
STALE_PARTIAL_RUNS = 50
"""How many of the newest journalled runs recovery checks for partial files left behind."""
VERIFY_AUTHENTICATED = "authenticated"
VERIFY_DEEP = "deep"
"""The journal's detail of a verify run: which pass it was (see BackupService.verify)."""
FUTURE_SHOWN = 3
"""Backups dated later than the clock that the status names (it says how many more there are)."""
KEEP_ROLLBACKS = 2
"""Rollback copies kept after restores (older ones are removed)."""
WAL_NOTE = "DATABASE_WAL"
"""In a rollback directory: the live database was in WAL mode when the swap began (see _undo_swap)."""
TARGETS_NOTE = "TARGETS"
"""In a rollback directory: the paths the restore replaces, as it resolved them (see _recorded_paths)."""
ABSENT_NOTE = "ABSENT"
"""In a rollback directory: the components that did not exist when the swap began (see _undo_swap)."""
RECOVERY_ERROR = "RECOVERY_ERROR"
"""In a rollback directory: why the last attempt to settle it failed (shown by status)."""
COMPONENTS = ("firmware", "system", "database")
RUN_ID = r"\d{8}T\d{6}\.\d{6}-[0-9a-f]{6}"
"""A journal run id (RunJournal.start); a restore's stages, pre-restore copies and rollback directory carry it."""
LEFTOVER = re.compile(r"\.(?P<target>.+)\.(?P<kind>restore|pre-restore)-(?P<run>" + RUN_ID + r")"
                      r"(?P<partial>\.partial)?(?:-journal|-wal|-shm)?")
"""The name of a restore's staged or pre-restore copy beside its target (see _restore_paths)."""
ENDED_PHASES = ("abandoned", "undone")
"""Phases of a rollback directory whose restore left the appliance as it was (see _settle_restore)."""
LOCKED_KINDS = ("backup", "restore")
"""Runs made only under the run lock."""
RESTORE_INTERRUPTED = {
    "nothing": "The restore was interrupted (its process ended) before it changed anything on the appliance.",
    "undone": "The restore was interrupted (its process ended) while it replaced the appliance's state; the "
              "previous state was put back.",
    "finished": "The restore was interrupted (its process ended) after the backup's state was in place; the "
                "next start finished it and kept the previous state as a rollback copy.",
}
"""The journal's sentence for a restore recovery settled (see BackupService._settle_restore), by its end."""


@dataclass
class _Run:
    """A journalled run in progress (see BackupService._journalled)."""

    id: str
    size: int | None = None
    """Bytes written, journalled when the run ends well."""
    warning: str | None = None
    """Journalled with a run that ended well but not in full."""


@dataclass(frozen=True)
class BackupInfo:
    """A backup file in the storage."""

    name: str
    size: int
    created_at: datetime
    """From the file name (UTC), else the file's modification time."""


@dataclass(frozen=True)
class BackupResult:
    name: str
    size: int
    duration: float
    source_bytes: int
    pruned: list[str] = field(default_factory=list)
    """Older backups that [retention] removed after this one succeeded."""
    skipped: list[str] = field(default_factory=list)
    """Entries not backed up because no backup holds them: fifos, sockets, devices (the manifest lists them too)."""


@dataclass(frozen=True)
class VerifyResult:
    name: str
    files: int
    bytes: int
    """Deep: bytes of files checked; otherwise bytes of the backup file authenticated."""
    manifest: dict
    deep: bool = False
    recorded: bool = True
    """Journalled (Backup Details' last verification, retention's newest verified backup); not for a look-only operator."""

    NOT_RECORDED: ClassVar[str] = ("not recorded in the run journal: this operator may only look, and a recorded "
                                   "verification keeps a backup from retention.")

    def proved(self) -> str:
        """What this verification proved, in the words the command and the console both use."""
        if self.deep:
            return (f"{self.files} files, {human_bytes(self.bytes)} decrypted, decompressed and checked against "
                    "their SHA-256")
        return (f"all {human_bytes(self.bytes)} authenticated, every chunk intact and in order; "
                f"{self.files} files listed in its manifest")


@dataclass(frozen=True)
class RestoreResult:
    name: str
    rollback_dir: Path
    """Where the replaced state was kept."""
    files: int
    warnings: list[str] = field(default_factory=list)
    """Files that came back without extended attributes the filesystem or user refused: one line each."""


@dataclass(frozen=True)
class BackupDetails:
    name: str
    size: int
    cipher: str
    chunk_size: int
    opens_with_this_dms: bool
    manifest: dict | None
    """None when this appliance's DMS does not open the backup and no passphrase was given."""
    last_verification: RunRecord | None
    facts: ManifestFacts | None = None
    """What the backup says about itself (its authenticated manifest), when it was read."""
    foreign: bool = False
    """The backup's appliance identity is not this appliance's (a version 1 backup has none: False)."""
    renamed: bool = False
    """The file's name is not the one the backup was written under (its manifest says which)."""


@dataclass(frozen=True)
class StatusReport:
    running: bool
    task: str | None
    """What holds the lock: "backup" or "restore"."""
    progress: Progress | None
    """What the running backup or restore published of its progress (it may run in another process)."""
    last_success: RunRecord | None
    last_failure: RunRecord | None
    """The most recent backup run, when it did not succeed."""
    inhibitor: str | None = None
    """How the running backup or restore keeps the appliance from shutting down (a sentence), while one runs."""
    recent: list[RunRecord] = field(default_factory=list)
    """Backup runs, newest first."""
    secret: SecretInfo = field(default_factory=lambda: SecretInfo(False))
    storage: str = ""
    next_scheduled: datetime | None = None
    """None when the schedule is disabled ("Schedule Disabled")."""
    stale: str | None = None
    """A sentence when the last successful backup is too old (see BackupService._staleness)."""
    warnings: list[str] = field(default_factory=list)
    """Sentences about the appliance's own set-up, e.g. a key file others may read."""
    alerts: list[TargetHealth] = field(default_factory=list)
    """Each [notify] target's delivery health (backup/notify.py); empty when none is set."""
    last_verify: RunRecord | None = None
    """The most recent finished verify run."""
    last_verify_job: RunRecord | None = None
    """The most recent finished [verify] job run."""
    next_verify_job: datetime | None = None
    """When the [verify] job runs next; None when no job is set."""
    oldest_unverified: tuple[str, datetime] | None = None
    """The oldest backup no verify has passed (name, created at), as the last run saw the storage."""
    interrupted_restore: str | None = None
    """A sentence while a restore that was interrupted or failed is not yet finished or undone (see
    BackupService.unfinished_restore); None otherwise, and while a restore runs."""

    @property
    def state(self) -> str:
        return "In Progress" if self.running else "Not Running"


class BackupService:
    def __init__(self, config: Config, *, clock: Callable[[], datetime] = local_now,
                 kdf_params: ScryptParams | None = None, storage: Storage | None = None,
                 operator: str | None = None, login: Login | None = None) -> None:
        """
        Args:
            operator: `--operator`: who acts, if not the login itself (see backup.operators).
            login: the OS login; read from the process when None (tests inject a sudo'ed one).

        Raises:
            UnsafePathError: another local user could replace the configuration file, the state
                directory or the key file (backup.trust): every front end refuses to start.
        """
        self.config = config
        self.clock = clock
        self.state_dir = config.state_dir
        self.journal = RunJournal(self.state_dir)
        self.secret = DomainMasterSecret(self.state_dir, params=kdf_params)
        self.catalog = Catalog(self.state_dir)
        self._storage = storage
        self.alerts = AlertQueue(self.state_dir, config.notify, self.journal, clock)
        self.operator = operator
        self.login = login or current_login()
        # Every front end makes a service: none starts on a state another local user could replace.
        check_trusted(config.path, "The configuration file")
        self.secret.check_trusted()

    # ------------------------------------------------------------ basics

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = open_storage(self.config)
        return self._storage

    def reload(self, config: Config) -> None:
        """Use a new configuration (after Save Settings); the storage is opened anew from it when next needed."""
        self.close()
        self.config = config
        self.alerts = AlertQueue(self.state_dir, config.notify, self.journal, self.clock)

    def close(self) -> None:
        """Release the storage (an NFS connection or kernel mount). The service opens it again when needed."""
        storage, self._storage = self._storage, None
        close = getattr(storage, "close", None)
        if close is not None:
            close()

    @property
    def hooks(self) -> HookRunner:
        return HookRunner(self.config.hooks, self.journal, self.clock)

    def alert_tick(self):
        """Alert standing conditions when they begin and deliver due alerts, off the caller's thread
        (see backup.reporting.tick); returns the delivery thread, or None when no target is set."""
        return tick(self)

    def secret_info(self) -> SecretInfo:
        return self.secret.info()

    def set_secret(self, passphrase: str) -> SecretInfo:
        self.require("set the Domain Master Secret")
        return self.secret.set(passphrase, now=self.clock())

    # ------------------------------------------------------------ who may do what

    def access(self, operator: str | None = None) -> Access:
        """Who acts (`operator`, else the service's, else the login) and whether they may change anything.

        [operators] is read from the file as it is now, so a console left open sees a demotion at
        once; the table loaded at start is used only when the file cannot be read.
        """
        raw = self.config.raw
        try:
            raw = tomllib.loads(self.config.path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            pass
        return resolve_access(raw, self.config.path, operator if operator is not None else self.operator, self.login)

    def require(self, what: str, operator: str | None = None) -> Access:
        """The one check before every change: raise OperatorRefusedError for a look-only operator."""
        access = self.access(operator)
        access.require(what)
        return access

    def update_settings(self, changes: dict[str, dict[str, Any]]) -> Config:
        """Write `changes` into the configuration file (backup.config.update_config); returns the new
        configuration, for the caller to reload() with.

        The changes go into the file as it is now, not as this service loaded it: a console left
        open would otherwise write back an [operators] table from before another's demotion.
        """
        what = {frozenset({"storage"}): "change the storage", frozenset({"schedule"}): "change the schedule",
                frozenset({"operators"}): "change the operators"}.get(frozenset(changes), "change the settings")
        self.require(what)
        try:
            current = load_config(self.config.path)
        except ConfigError:  # unreadable or hand-damaged: the loaded one is the base, as before
            current = self.config
        return update_config(current, changes)

    def check_secret(self, passphrase: str) -> bool:
        return self.secret.check(passphrase)

    def recover(self) -> list[RunRecord]:
        """Close runs a dead process left open and undo what they left half done. Safe to call any time.

        Holds the run lock only for what is on the appliance; the partial files of dead runs are removed
        from the storage after it is released (no live run writes under those names), so a share that
        does not answer never keeps a backup or restore from starting.
        """
        if is_locked(self.state_dir):
            return []
        try:
            with RunLock(self.state_dir, RECOVERY_TASK, now=self.clock()):
                closed = self.recover_unlocked(storage=False)
        except BackupError:
            return []
        self._recover_storage(closed)
        return closed

    def recover_unlocked(self, *, storage: bool = True) -> list[RunRecord]:
        """recover() for a caller that already holds the lock (`storage`: the partial files too).

        Every step is idempotent, so a recovery killed at any point is simply
        run again by the next start. An interrupted restore is settled from
        what its rollback directory records (see _settle_restore) before its
        run is journalled as ended: a recovery killed in between leaves the run
        open, and the next start settles and closes it.
        """
        now = self.clock()
        # Backups and restores run only under the lock, which we hold: theirs that are open are dead,
        # whatever process now has their number (after a reboot, another one may).
        dead = [r for r in self.journal.runs()
                if r.result is None and r.pid != os.getpid() and (r.kind in LOCKED_KINDS or not pid_alive(r.pid))]
        for leftover in (self.state_dir / "tmp").glob("*"):  # no run holds them: we hold the lock
            _remove(leftover, quietly=True)  # not ours, but in our directory: gone, not fatal
        # Only runs under the lock publish progress (_progress_publisher): what a killed one left is stale.
        for leftover in [self.journal.progress_path, *self.state_dir.glob(f".{self.journal.progress_path.name}.*")]:
            _remove(leftover, quietly=True)
        settled = self._settle_restores()
        self._remove_restore_leftovers(keep={run_id for run_id, outcome in settled.items() if outcome is None})
        closed = []
        for run in dead:
            if run.kind == "restore":
                outcome = settled.get(run.id, "nothing")
                if outcome is None:
                    continue  # not settled: the run stays open, and the next start tries again
                error = RESTORE_INTERRUPTED[outcome]
            else:
                error = f"The {run.kind} was interrupted (its process ended before it finished)."
            self.journal.end(run.id, "interrupted", now=now, name=run.name, error=error)
            closed.append(replace(run, ended_at=now, result="interrupted", error=error))
        self._discard_ended_restores()
        self._prune_rollbacks()  # a restore killed after its "done" may not have pruned
        if storage:
            self._recover_storage(closed)
        return closed

    def _recover_storage(self, closed: list[RunRecord]) -> None:
        """Remove the partial files of the backups in `closed` and of recent failed ones."""
        for run in closed:
            if run.kind == "backup" and run.name:
                self._remove_partial(run.name)
        self._remove_stale_partials()

    def _remove_stale_partials(self) -> None:
        """Partials that recent failed runs left (the storage was unreachable when they failed).

        Looks at the storage only when such a run exists, so `status` does not touch a network
        share on every call.
        """
        recent = self.journal.runs()[-STALE_PARTIAL_RUNS:]
        mine = {r.name + PARTIAL_SUFFIX for r in recent
                if r.kind == "backup" and r.name and r.result in ("failed", "interrupted")}
        if not mine:
            return
        try:
            present = {e.name for e in self.storage.list("") if e.name.endswith(PARTIAL_SUFFIX)}
        except BackupError:
            return
        for name in sorted(present & mine):
            self._remove_partial(name[: -len(PARTIAL_SUFFIX)])

    def _remove_partial(self, name: str) -> None:
        try:
            self.storage.delete(name + PARTIAL_SUFFIX)
        except BackupError:
            pass

    def new_backup_name(self, now: datetime) -> str:
        stamp = now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        prefix = f"{self.config.prefix}-" if self.config.prefix else ""
        return f"{prefix}{self.config.appliance.name}-{stamp}-{secrets.token_hex(3)}{BACKUP_SUFFIX}"

    @contextmanager
    def _journalled(self, kind: str, *, name: str | None = None, detail: str | None = None,
                    now: datetime | None = None) -> Iterator[_Run]:
        """Journal the body as one run: its start, then "ok" or why it failed or was interrupted."""
        run = _Run(self.journal.start(kind, now=now or self.clock(), name=name, detail=detail))
        try:
            yield run
        except BaseException as exc:
            self.journal.end(run.id, _result_word(exc), now=self.clock(), name=name, error=describe(exc))
            raise
        self.journal.end(run.id, "ok", now=self.clock(), name=name, size=run.size, warning=run.warning)

    # ------------------------------------------------------------ status

    def status(self, *, recent: int = 20) -> StatusReport:
        """What the journal and the state directory say; changes nothing and never waits for the storage."""
        journalled = [as_seen(r) for r in self.journal.runs()]
        runs = [r for r in journalled if r.kind == "backup"]
        holder = read_holder(self.state_dir / "run.lock")
        running = is_locked(self.state_dir)
        gone = removed_backups(journalled)
        last_success = next((r for r in reversed(runs) if r.result == "ok" and r.name not in gone), None)
        finished = [r for r in runs if r.result is not None]
        last_failure = finished[-1] if finished and finished[-1].result != "ok" else None
        try:
            storage = self.storage.description
        except BackupError as exc:
            storage = str(exc)
        now = self.clock()
        schedule = self.config.schedule
        upcoming = next_runs(schedule, now, 1) if schedule.enabled else []
        published = self.journal.read_progress() if running else None
        return StatusReport(
            running=running,
            task=holder.task if running and holder else None,
            progress=Progress.from_json(published),
            inhibitor=str(published["inhibitor"]) if published and published.get("inhibitor") else None,
            last_success=last_success,
            last_failure=last_failure,
            recent=list(reversed(finished))[:recent],
            secret=self.secret.info(),
            storage=storage,
            next_scheduled=upcoming[0] if upcoming else None,
            stale=self._staleness(last_success, now),
            warnings=self.security_warnings() + self._future_warnings(now, gone),
            alerts=self.alerts.health(),
            last_verify=next((r for r in reversed(self.journal.runs()) if r.kind == "verify" and r.result), None),
            last_verify_job=next((r for r in reversed(self.journal.runs()) if r.kind == verifyjob.KIND and r.result),
                                 None),
            next_verify_job=verifyjob.next_job(self.config.verify, now),
            oldest_unverified=oldest_unverified(self.state_dir),
            interrupted_restore=None if running and holder and holder.task == "restore" else self._unfinished(),
        )

    def _future_warnings(self, now: datetime, gone: set[str]) -> list[str]:
        """A sentence naming this appliance's backups dated after its clock, as the last look at the storage
        found them (less those deleted since)."""
        now = now.astimezone()  # a clock without a zone is local time
        future = sorted((f for f in self.catalog.cached()
                         if self.is_own_backup(f.name) and f.is_backup_of(self.config.appliance.name)
                         and f.name not in gone and f.in_future(now)), key=lambda f: (f.created_at, f.name))
        if not future:
            return []
        shown = ", ".join(f"{f.name} ({_when(f.created_at)})" for f in future[:FUTURE_SHOWN])
        more = f" and {len(future) - FUTURE_SHOWN} more" if len(future) > FUTURE_SHOWN else ""
        which = "backup is" if len(future) == 1 else "backups are"
        return [f"{len(future)} {which} dated in the future for this appliance's clock: {shown}{more}. Retention keeps "
                "them and does not count them until that time. Check the clock (NTP); a backup made while it was "
                "wrong can be deleted by hand."]

    def _unfinished(self) -> str | None:
        unfinished = self.unfinished_restore()
        return unfinished[0] if unfinished else None

    def _refuse_if_mixed(self) -> None:
        """No backup of, or restore over, an appliance an unsettled restore may have left mixed."""
        unfinished = self.unfinished_restore()
        if unfinished and unfinished[1]:
            raise UnfinishedRestoreError(unfinished[0] + " Until then no backup or restore starts.")

    def security_warnings(self) -> list[str]:
        """Loosened permissions on what protects the backups (the state directory, the key file), and
        hand-damaged lines in the run journal."""
        damage = self.journal.damage()
        warnings = [damage] if damage else []
        for path, wanted, what in ((self.state_dir, 0o700, "state directory"),
                                   (self.secret.path, 0o600, "Domain Master Secret key file")):
            try:
                mode = path.stat().st_mode & 0o777
            except OSError:
                continue
            if mode & ~wanted:
                warnings.append(f"The {what} {path} has mode {mode:04o}, so other users may read it: "
                                f"run `chmod {wanted:o} {path}`.")
        return warnings

    def _staleness(self, last_success: RunRecord | None, now: datetime) -> str | None:
        """A sentence when the newest good backup is too old, even if no run reported a failure."""
        if self.config.max_age_hours is not None:
            limit = timedelta(hours=self.config.max_age_hours)
            why = f"the configured maximum age of {self.config.max_age_hours:g} h"
        elif self.config.schedule.enabled:
            limit = 2 * interval_estimate(self.config.schedule)
            why = "twice the schedule's interval"
        else:
            return None
        if last_success is None or last_success.ended_at is None:
            return f"No backup has succeeded yet, and {why} allows at most {_hours(limit)} without one."
        age = now - last_success.ended_at
        if age > limit:
            return (f"The last successful backup is {_hours(age)} old, more than {why} ({_hours(limit)}): "
                    "check why scheduled backups are not succeeding.")
        return None

    # ------------------------------------------------------------ backup

    @reported
    def run_backup(self, *, progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                   slot: datetime | None = None, catch_up: bool = False, operator: str | None = None) -> BackupResult:
        """Back up now. `slot` marks a scheduled run: it runs at most once, whoever sees it first.

        The operator (`operator`, else the service's, else the login) must be one who may change the
        appliance (see require()); scheduled runs are the appliance's own and are not tied to an operator.
        """
        if slot is None:
            # Refusals of an operator's request are answered at once, not journalled as runs;
            # a scheduled run journals them, so the status says why it did not happen.
            self.require("create backups", operator)
            self.secret.kek()
        started = self.clock()
        with RunLock(self.state_dir, "backup", now=started):
            self.recover_unlocked()
            self._refuse_if_mixed()
            if slot is not None and slot_already_done(self.journal.runs(), slot):
                raise SlotAlreadyDoneError(f"The scheduled backup of {slot.isoformat(timespec='minutes')} already ran.")
            name = self.new_backup_name(started)
            with self._journalled("backup", name=name, now=started,
                                  detail=slot_detail(slot, catch_up) if slot is not None else None) as run:
                kek = self.secret.kek()  # inside the journalled part: a scheduled run without a DMS shows why
                with edges(self, "backup", name), shutdown_inhibitor("Backup in progress") as inhibitor:
                    result = self._write_backup(name, kek, progress, cancel, started, inhibitor.status_line)
                run.size = result.size
            try:  # still under the lock, so no restore can start reading what retention removes
                pruned = [d.name for d in self._prune(new_backup=name) if not d.keep]
            except BackupError:
                pruned = []  # the backup stands; `prune --dry-run` shows what retention would do and why
        return replace(result, pruned=pruned)

    def _write_backup(self, name: str, kek: KeyEncryptionKey, progress: ProgressCallback | None,
                      cancel: threading.Event | None, started: datetime, inhibitor: str) -> BackupResult:
        appliance = self.config.appliance
        if not appliance.database.exists():
            raise ConfigError(f"The internal database {appliance.database} does not exist: "
                              f"check [appliance] database in {self.config.path}.")
        tracker = Tracker("backup", self._progress_publisher(progress, inhibitor=inhibitor), cancel)
        tracker.set_stage("Opening the internal database")
        _wait_for_database(appliance.database, self.config.database_wait)
        # Read before frozen() connects: closing another descriptor of the file would drop its locks.
        journal_mode = database.journal_mode(appliance.database)
        with ExitStack() as cleanup:
            frozen_size = cleanup.enter_context(database.frozen(appliance.database))
            if frozen_size is not None:
                # While frozen the live file is the snapshot: it is read once, straight into the backup.
                db_path, db_size, db_ready = appliance.database, frozen_size, lambda: frozen_size
            else:
                # Otherwise a copy is taken while the configuration directories are archived.
                db_path = self._reserve_snapshot_file(name)
                cleanup.callback(_unlink_later, db_path)
                tracker.set_stage("Snapshotting the internal database")
                snapshot = database.BackgroundSnapshot(appliance.database, db_path)
                cleanup.callback(snapshot.wait)
                db_size, db_ready = database.logical_size(appliance.database), snapshot.result
            scans = self._scan_components()
            manifest = build_manifest(
                appliance=appliance.name, software_version=__version__, created_at=started.isoformat(),
                scans=scans, database_bytes=db_size, database_source=str(appliance.database),
                database_journal_mode=journal_mode,
                appliance_id=appliance_identity(kek), backup=name,
            )
            tracker.total = manifest["total_bytes"]
            out = None
            free = None
            try:
                out = self.storage.create(name)
                free = self._free_space()  # after create: a share that is gone fails there, without a second wait
                tracker.written_source = lambda: out.written
                payload = None
                try:
                    archive = ArchiveWriter(out, kek)
                    payload = PayloadWriter(archive, tracker)
                    payload.add_bytes(MANIFEST_NAME, json.dumps(manifest, indent=1).encode(), mtime=started.timestamp())
                    for scan in scans:
                        tracker.set_stage(f"Archiving the {scan.name} configuration")
                        for entry in scan.entries:
                            payload.add_entry(entry)
                            tracker.check_cancel()
                    tracker.set_stage("Archiving the internal database")
                    payload.add_file(DATABASE_MEMBER, db_path, db_ready(), head=database.plain_header,
                                     like=appliance.database)
                    payload.close()
                    archive.close()
                    tracker.set_stage("Writing the backup to storage")
                    out.commit()
                except BaseException:
                    if payload is not None:
                        payload.abort()
                    out.abort()
                    raise
            except StorageFullError:
                raise self._storage_full(out.written if out is not None else 0, free, scans, db_size) from None
            except PermissionError as exc:
                unreadable = self._unreadable(exc)
                if unreadable is None:
                    raise
                raise unreadable from None
        tracker.set_stage("Done")
        return BackupResult(name=name, size=out.written, duration=(self.clock() - started).total_seconds(),
                            source_bytes=tracker.done, skipped=[n for scan in scans for n in scan.skipped])

    def _reserve_snapshot_file(self, name: str) -> Path:
        """Create the empty file the database snapshot goes into, in the state's tmp directory.

        Fails with a sentence when that directory cannot be written, or has less room than the
        snapshot's size (a lower bound: it cannot refuse a snapshot that would fit).
        """
        tmp_dir = self.state_dir / "tmp"
        db_copy = tmp_dir / f"{name}.db"
        try:
            ensure_private_dir(tmp_dir)
            os.close(os.open(db_copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            free = shutil.disk_usage(tmp_dir).free
        except OSError as exc:
            raise StateDirError(
                f"The state directory's temporary folder {tmp_dir} cannot be written ({exc.strerror or exc}): "
                f"make {self.state_dir} and everything in it writable by the user that runs backups (mode 0700), "
                "then try again."
            ) from None
        needed = database.logical_size(self.config.appliance.database)
        if needed > free:
            db_copy.unlink(missing_ok=True)
            raise StateDirError(
                f"The state directory {self.state_dir} has {human_bytes(free)} free, but the snapshot of the internal "
                f"database needs {human_bytes(needed)} there: free space on its file system, then try again."
            )
        return db_copy

    def _free_space(self) -> int | None:
        """Free bytes in the storage, for the sentence if it runs full; None when the backend cannot say."""
        try:
            return self.storage.usage("").free
        except (BackupError, OSError):
            return None

    def _storage_full(self, written: int, free: int | None, scans: list, database_bytes: int) -> StorageFullError:
        """The sentence for a storage that ran full, with what this backup needs (any backend)."""
        sources = [(e.path, e.size) for scan in scans for e in scan.entries if e.kind == "file"]
        sources.append((self.config.appliance.database, database_bytes))
        members = sum(len(scan.entries) for scan in scans) + 3  # + manifest, database, checksums
        estimate = _estimate_backup_size(sources, members)
        if estimate > written:
            need = f"this backup needs about {human_bytes(estimate)} (an estimate from compressing a sample of its data)"
        else:
            need = f"this backup needs more than {human_bytes(written)}"
        had = f" and only {human_bytes(free)} was free when it started" if free is not None else ""
        return StorageFullError(
            f"The storage ({self.storage.description}) is full: the backup stopped after {human_bytes(written)} had been "
            f"sent to it; "
            f"{need}{had}. Free space there or choose another location."
        )

    def _unreadable(self, exc: PermissionError) -> BackupError | None:
        """The sentence for a component's file this process may not read (the scan only lists directories)."""
        path = Path(exc.filename) if exc.filename else None
        appliance = self.config.appliance
        for component, root in (("firmware", appliance.firmware), ("system", appliance.system)):
            if path is not None and path.is_relative_to(root):
                return BackupError(
                    f"The {component} configuration file {path} cannot be read (permission denied), so the backup "
                    "stopped and nothing was kept: run the backup as root, or give its user read access to that "
                    "file, then try again."
                )
        return None

    def _scan_components(self) -> list:
        appliance = self.config.appliance
        scans = []
        for component, root in (("firmware", appliance.firmware), ("system", appliance.system)):
            # A backup without a component would fail the operator at restore time: refuse it now.
            if not root.is_dir():
                what = "is not a directory" if root.exists() else "does not exist"
                raise ConfigError(
                    f"The {component} configuration directory {root} {what}, so a backup would miss it: restore "
                    f"the directory, or correct [appliance] {component} in {self.config.path}, then try again."
                )
            try:
                scans.append(scan_directory(component, root))
            except PermissionError as exc:
                raise BackupError(
                    f"The {component} configuration cannot be read ({exc.filename}: permission denied), so the "
                    "backup stopped and nothing was kept: run the backup as root, or give its user read access "
                    "there, then try again."
                ) from None
        return scans

    def _progress_publisher(self, progress: ProgressCallback | None, **extra: str) -> ProgressCallback:
        """Publish each report (at most ten a second, see Tracker) for `status` in other processes, then pass it on."""

        def publish(p) -> None:
            try:
                self.journal.write_progress({**p.to_json(), **extra})
            except OSError:
                pass
            if progress is not None:
                progress(p)

        return publish

    # ------------------------------------------------------------ retention

    def is_own_backup(self, name: str) -> bool:
        """Whether `name` is a backup file this appliance writes (with its current prefix)."""
        prefix = f"{re.escape(self.config.prefix)}-" if self.config.prefix else ""
        return re.fullmatch(prefix + re.escape(self.config.appliance.name) + OWN_SUFFIX, name) is not None

    @reported
    def prune(self, *, dry_run: bool = False, new_backup: str | None = None) -> list[Decision]:
        """Apply [retention] to this appliance's backups; other files in the storage are never touched.

        Counts only files named like this appliance's backups that open with its key and whose authenticated
        manifest names this appliance; orders them by the creation time in that manifest. Never deletes
        `new_backup` (the backup the calling run has just written), the newest backup, the newest
        successfully verified one, one being written or read, one dated later than the clock, nor a file
        that does not open as this appliance's backup. A look-only operator may ask what it would do
        (`dry_run`), nothing more.

        Returns:
            The counted backups newest first, then those dated later than the clock, then the files
            not counted; the last two are always kept.
        """
        if not dry_run:
            self.require("prune backups")
        return self._prune(dry_run=dry_run, new_backup=new_backup)

    def _prune(self, *, dry_run: bool = False, new_backup: str | None = None) -> list[Decision]:
        """prune() without the operator check: also retention after a backup, which the backup's check covered."""
        now = self.clock().astimezone()  # a clock without a zone is local time
        appliance = self.config.appliance.name
        files = self.backup_facts()
        mine = [f for f in files if f.is_backup_of(appliance)]
        counted = [f for f in mine if not f.in_future(now)]
        future = sorted((f for f in mine if f.in_future(now)), key=lambda f: (f.created_at, f.name), reverse=True)
        present = {f.name for f in counted}
        runs = self.journal.runs()
        protected = {r.name for r in runs if r.kind in ("backup", "verify", "restore") and r.result is None
                     and r.name in present and pid_alive(r.pid)}
        if new_backup is not None:
            protected.add(new_backup)
        verified = [r for r in runs if r.kind == "verify" and r.result == "ok" and r.name in present]
        if verified:
            by_name = {f.name: f.created_at for f in counted}
            protected.add(max(verified, key=lambda r: by_name[r.name]).name)
        decisions = plan([(f.name, f.created_at) for f in counted], self.config.retention, protected,
                         tz=local_timezone())
        doomed = [d.name for d in decisions if not d.keep]
        kept_aside = [Decision(f.name, True, [f"not counted: dated {_when(f.created_at)}, in the future for "
                                              "this appliance's clock (kept until then; check the clock)"]) for f in future]
        kept_aside += [Decision(f.name, True, [f"not counted: {self._not_mine(f)}"])
                       for f in files if not f.is_backup_of(appliance)]
        if doomed and not dry_run:
            with self._journalled("prune", detail="delete " + " ".join(doomed)):
                for name in doomed:
                    self.storage.delete(name)
        return kept_aside[:len(future)] + decisions + kept_aside[len(future):]

    def _not_mine(self, facts: BackupFacts) -> str:
        if facts.problem is not None:
            return facts.problem
        return f"it is a backup of another appliance ({facts.appliance!r})"

    def backup_facts(self) -> list[BackupFacts]:
        """The files in the storage named like this appliance's backups, each with what its authenticated
        header and manifest say (cached in the state directory; see backup.catalog)."""
        entries = [e for e in self.storage.list("") if not e.is_dir and self.is_own_backup(e.name)]
        return self.catalog.facts(entries, self._read_facts)

    def _read_facts(self, entry: Entry) -> tuple[BackupFacts, bool]:
        """Open one file with this appliance's key; (its facts, whether they may be cached)."""
        base = BackupFacts(name=entry.name, size=entry.size, mtime=entry.mtime)
        if not entry.regular:  # never opened: a fifo would block, a link could lead anywhere
            return replace(base, problem="it is not a regular file (a link, fifo or device)"), True
        if entry.size < HEADER_LENGTH + TAG_LENGTH:  # too small to hold a header: not even opened
            problem = "it is empty" if entry.size == 0 else f"it is too small to be a backup ({entry.size} bytes)"
            return replace(base, problem=problem), True
        try:
            with self.storage.open(entry.name) as source:
                manifest = read_manifest(self._reader(source, None))
        except DmsNotSetError:
            return replace(base, problem="this appliance has no Domain Master Secret yet to open it with"), False
        except WrongDmsError:
            return replace(base, problem="it does not open with this appliance's Domain Master Secret"), True
        except IntegrityError:
            return replace(base, problem="it does not open as a backup (damaged, cut short, or not a backup)"), True
        except (BackupError, OSError) as exc:  # the storage did not answer; the file went meanwhile
            return replace(base, problem=f"it could not be read just now ({describe(exc).rstrip('.')})"), False
        appliance = manifest.get("appliance")
        created = _aware_time(manifest.get("created_at"))
        if not isinstance(appliance, str) or created is None:
            return replace(base, problem="its manifest does not say which appliance made it and when"), True
        return replace(base, appliance=appliance, created_at=created), True

    # ------------------------------------------------------------ listing and details

    def list_backups(self) -> list[BackupInfo]:
        """Backups in the storage, newest first."""
        backups = []
        for entry in self.storage.list(""):
            if not entry.regular or not entry.name.endswith(BACKUP_SUFFIX):  # a FIFO or link by that name is no backup
                continue
            backups.append(BackupInfo(name=entry.name, size=entry.size, created_at=created_at(entry.name, entry.mtime)))
        backups.sort(key=lambda b: (b.created_at, b.name), reverse=True)
        return backups

    def _open(self, name: str) -> BinaryIO:
        if "/" in name or name in ("", ".", ".."):
            raise BackupNotFoundError(f"{name!r} is not a backup name: give a name as `list` shows it.")
        return self.storage.open(name)

    def _reader(self, source: BinaryIO, passphrase: str | None) -> ArchiveReader:
        if passphrase is not None:
            return ArchiveReader(source, passphrase=passphrase)
        if not self.secret.is_set():
            raise DmsNotSetError("This appliance has no Domain Master Secret yet, so it cannot open backups by "
                                 "itself: give the DMS the backup was made with, using --passphrase-file.")
        kek = self.secret.kek()
        header = read_header(source)
        source.seek(0)
        if header.salt != kek.salt or header.params != kek.params:
            raise WrongDmsError(
                "This appliance's Domain Master Secret does not open this backup (it was made with another DMS, "
                "perhaps on another appliance): give that DMS with --passphrase-file."
            )
        try:
            return ArchiveReader(source, kek=kek)
        except WrongDmsError:
            raise WrongDmsError(
                "This appliance's Domain Master Secret does not open this backup: give the DMS it was made with, "
                "using --passphrase-file."
            ) from None

    def details(self, name: str, *, passphrase: str | None = None) -> BackupDetails:
        info = self.storage.stat(name)
        with self._open(name) as source:
            header = read_header(source)
            source.seek(0)
            try:
                kek = self.secret.kek()
                opens = opens_with(header, kek)
            except BackupError:
                opens = False
            manifest = None
            if opens or passphrase is not None:
                manifest = read_manifest(self._reader(source, passphrase))
        verifications = [r for r in self.journal.runs() if r.kind == "verify" and r.name == name and r.result]
        facts = manifest_facts(manifest) if manifest is not None else None
        return BackupDetails(name=name, size=info.size, cipher=header.cipher, chunk_size=header.chunk_size,
                             opens_with_this_dms=opens, manifest=manifest,
                             last_verification=verifications[-1] if verifications else None, facts=facts,
                             foreign=facts is not None and bool(facts.appliance_id)
                             and facts.appliance_id != self.appliance_id(),
                             renamed=facts is not None and bool(facts.backup) and facts.backup != name)

    def appliance_id(self) -> str | None:
        """This appliance's identity (FORMAT.md P.2), or None while it has no DMS."""
        try:
            return appliance_identity(self.secret.kek())
        except DmsNotSetError:
            return None

    def delete_backup(self, name: str) -> None:
        """Delete one backup file (the operator asked, after a confirmation); journalled."""
        self.require("delete backups")
        self._open(name).close()  # the same name checks as every other operation
        with self._journalled("delete", name=name):
            self.storage.delete(name)

    # ------------------------------------------------------------ verify

    @reported
    def verify(self, name: str, *, deep: bool = False, passphrase: str | None = None,
               progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> VerifyResult:
        """Prove a backup intact and openable; nothing is written.

        The default pass authenticates the header and every chunk, in order, to the final one, and reads
        the manifest: any changed, missing, reordered or added byte of the file is found, at the speed of
        reading it. `deep` also decompresses the payload and checks every file against the SHA-256 list
        the writer made, which re-proves the writer's own work (and takes several times as long).
        """
        # A look-only operator may verify (it changes nothing) but is not journalled: a recorded
        # verification keeps a backup from retention.
        recorded = self.access().may_change
        journal = (self._journalled("verify", name=name, detail=VERIFY_DEEP if deep else VERIFY_AUTHENTICATED)
                   if recorded else nullcontext())
        with journal, edges(self, "verify", name), self._open(name) as source:
            reader = self._reader(source, passphrase)
            tracker = Tracker("verify", progress, cancel, written=source.tell)
            if deep:
                tracker.set_stage("Verifying: decrypting, decompressing and checking every file")
                summary = walk_payload(reader, tracker)
                files, size, manifest = summary.files, summary.bytes, summary.manifest
            else:
                tracker.total = self.storage.stat(name).size
                tracker.set_stage("Verifying: authenticating every chunk")
                manifest = read_manifest(reader)
                reader.drain(lambda: tracker.add(done=source.tell() - tracker.done))
                files = sum(c.get("files", 0) for c in manifest.get("components", []) if isinstance(c, dict))
                size = reader.bytes_read
            tracker.set_stage("Done")
            tracker.written_source = None
        return VerifyResult(name=name, files=files, bytes=size, manifest=manifest, deep=deep, recorded=recorded)

    @reported
    def run_verify_job(self, *, slot: datetime | None = None, catch_up: bool = False,
                       cancel: threading.Event | None = None) -> verifyjob.VerifyJobResult:
        """Run the [verify] job: verify the backups it selects, under the run lock (see backup/verifyjob.py)."""
        return verifyjob.run(self, slot=slot, catch_up=catch_up, cancel=cancel)

    # ------------------------------------------------------------ restore

    @reported
    def restore(self, name: str, *, passphrase: str | None = None, progress: ProgressCallback | None = None,
                cancel: threading.Event | None = None, operator: str | None = None) -> RestoreResult:
        """Return the appliance to the backup's state; on any failure the previous state stays or comes back."""
        self.require("restore backups", operator)
        started = self.clock()
        with RunLock(self.state_dir, "restore", now=started):
            self.recover_unlocked()
            self._refuse_if_mixed()
            try:
                with self._journalled("restore", name=name, now=started) as run, edges(self, "restore", name), \
                        shutdown_inhibitor("Restore in progress") as inhibitor:
                    publish = self._progress_publisher(progress, inhibitor=inhibitor.status_line)
                    result = self._restore(name, passphrase, publish, cancel, run.id)
                    run.warning = refused_attributes_sentence(result.warnings)
                    return result
            finally:
                self._discard_ended_restores()  # a failed restore's, now that its run is journalled

    def _restore(self, name: str, passphrase: str | None, progress: ProgressCallback | None,
                 cancel: threading.Event | None, run_id: str) -> RestoreResult:
        paths = self._restore_paths(run_id)
        targets = {"firmware": paths["firmware"], "system": paths["system"]}
        stages = {c: paths[f"{c}.stage"] for c in targets}
        db_stage = paths["database.stage"]
        tracker = Tracker("restore", progress, cancel)
        swapping = False
        consumer = None
        try:
            self._begin_rollback(paths)
            try:
                with self._open(name) as source:
                    reader = self._reader(source, passphrase)
                    tracker.written_source = source.tell
                    tracker.set_stage("Decrypting and checking the backup")
                    consumer = Extractor(stages, db_stage)
                    summary = walk_payload(reader, tracker, consumer)
                    tracker.written_source = None
                consumer.finish()
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise BackupError(f"The appliance's disk is full ({paths['database'].parent}): a restore first "
                                  "writes the whole backed-up state beside the current one. Nothing was changed; "
                                  "free space there and try again.") from None
            problem = database.opens(db_stage)
            if problem:
                raise IntegrityError(f"The database in the backup does not open ({problem}); nothing was changed.")
            if database_was_in_wal_mode(summary.manifest):
                database.keep_wal_mode(db_stage)
            tracker.set_stage("Replacing the appliance's state")
            swapping = True
            rollback_dir = self._swap_in(paths)
        finally:
            if consumer is not None:
                consumer.close()
            if not swapping:  # nothing was replaced: the staged copies and the rollback directory go
                try:
                    self._settle_restore(run_id)
                except Exception as exc:  # left for the next start (status says so meanwhile)
                    self._note_recovery_error(run_id, exc)
        tracker.set_stage("Done")
        return RestoreResult(name=name, rollback_dir=rollback_dir, files=summary.files,
                             warnings=consumer.refused_attributes())

    def _restore_paths(self, run_id: str, targets: dict[str, Path] | None = None) -> dict[str, Path]:
        """Every path a restore touches; "firmware", "system" and "database" are what it replaces.

        Those are `targets` (what the restore recorded, see _recorded_paths),
        else the configured paths with links resolved: a configured
        directory or database reached through a link is restored where the
        link leads and the link itself stays (renaming the staged copy over it
        would leave the real one untouched). Stages sit beside them.
        """
        if targets is None:
            appliance = self.config.appliance
            targets = {"firmware": appliance.firmware.resolve(), "system": appliance.system.resolve(),
                       "database": appliance.database.resolve()}
        paths = {c: Path(targets[c]) for c in COMPONENTS}
        for component in ("firmware", "system"):
            target = paths[component]
            paths[f"{component}.stage"] = target.parent / f".{target.name}.restore-{run_id}"
            paths[f"{component}.old"] = target.parent / f".{target.name}.pre-restore-{run_id}"
        db = paths["database"]
        paths["database.stage"] = db.parent / f".{db.name}.restore-{run_id}"
        paths["database.old"] = db.parent / f".{db.name}.pre-restore-{run_id}"
        paths["rollback"] = self.state_dir / "rollback" / run_id
        return paths

    def _recorded_paths(self, run_id: str) -> dict[str, Path]:
        """_restore_paths() of the restore `run_id` from the targets its rollback directory records.

        So recovery finds what the restore touched even if the configuration changed since; a
        directory without the record (an earlier version's) falls back to the configured paths.
        """
        try:
            recorded = json.loads((self.state_dir / "rollback" / run_id / TARGETS_NOTE).read_text())
            targets = {c: Path(recorded[c]) for c in COMPONENTS}
            if not all(t.is_absolute() for t in targets.values()):
                raise ValueError("relative target")
        except (OSError, ValueError, KeyError, TypeError):
            return self._restore_paths(run_id)
        return self._restore_paths(run_id, targets)

    def _begin_rollback(self, paths: dict[str, Path]) -> None:
        """Create the restore's rollback directory, durably, before anything is written beside the targets.

        From then on recovery finds the restore by it (whatever the journal says) and settles it from
        its phase: "staging" (nothing replaced yet), "swapping", "committed", "done".
        """
        rollback = paths["rollback"]
        ensure_private_dir(rollback.parent)
        rollback.mkdir(mode=0o700)
        fsync_dir(rollback.parent)
        atomic_write_text(rollback / TARGETS_NOTE, json.dumps({c: str(paths[c]) for c in COMPONENTS}) + "\n",
                          mode=0o600)
        _write_phase(rollback, "staging")

    def _swap_in(self, paths: dict[str, Path]) -> Path:
        """Put the staged state in place; on a failure, put the previous state back (or say why it could not).

        The phase file in the rollback directory tells recovery, after a crash,
        whether to undo the swap ("swapping") or finish it ("committed"), see
        _settle_restore. What is replaced is first kept beside its target
        (`.pre-restore-` paths), then moved into the rollback directory.
        """
        rollback_dir = paths["rollback"]
        try:
            self._note_database_mode(paths)
            absent = [c for c in COMPONENTS if not os.path.lexists(paths[c])]
            if absent:  # undoing then removes what was renamed in where nothing was
                atomic_write_text(rollback_dir / ABSENT_NOTE, "".join(c + "\n" for c in absent), mode=0o600)
            _write_phase(rollback_dir, "swapping")
            for component in ("firmware", "system"):
                target = paths[component]
                if component not in absent:
                    os.rename(target, paths[f"{component}.old"])
                os.rename(paths[f"{component}.stage"], target)
                fsync_dir(target.parent)
            database.replace(paths["database.stage"], paths["database"], keep=paths["database.old"])
            _write_phase(rollback_dir, "committed")
        except BaseException as exc:
            try:
                outcome = self._settle_restore(rollback_dir.name)  # as recovery would: by the phase on disk
            except Exception as undo_exc:
                self._note_recovery_error(rollback_dir.name, undo_exc)
                raise BackupError(
                    f"Restoring failed while replacing the appliance's state ({describe(exc)}), and putting the "
                    f"previous state back failed too ({describe(undo_exc)}). Until it is put back the appliance "
                    "may hold a mix of both: every start of appliance-backup tries again, and `appliance-backup "
                    "status` warns until it is done. Fix the cause above (free space, for one), then run it."
                ) from None
            if isinstance(exc, (KeyboardInterrupt, InterruptedRunError)):
                raise
            if outcome == "finished":  # the commit was durable after all (only its directory's sync failed)
                return rollback_dir
            done = "the previous state was put back" if outcome == "undone" else "nothing was changed"
            raise BackupError(f"Restoring failed while replacing the appliance's state ({describe(exc)}); "
                              f"{done}.") from None
        try:
            self._keep_old_state(paths)
        except Exception as exc:
            self._note_recovery_error(rollback_dir.name, exc)
            raise BackupError(
                f"The backup's state was restored, but the previous state could not be moved into its rollback "
                f"copy {rollback_dir} ({describe(exc)}): it stays beside the appliance's folders until a start of "
                "appliance-backup moves it (`appliance-backup status` warns until then)."
            ) from None
        return rollback_dir

    @staticmethod
    def _note_database_mode(paths: dict[str, Path]) -> None:
        """Record, before a swap, that the live database is in WAL mode, for _undo_swap to put it back so."""
        if database.in_wal_mode(paths["database"]):
            atomic_write_text(paths["rollback"] / WAL_NOTE, "wal\n", mode=0o600)

    def _settle_restore(self, run_id: str) -> str:
        """Bring an unfinished restore to an end from what its rollback directory records; say which end.

        "nothing": it had replaced nothing (phase staging); its staged copies
        are removed, then the phase is "abandoned". "undone": it was replacing
        the state (swapping); the previous state is put back, the same copies
        removed, then the phase is "undone". "finished": its swap was complete
        (committed); the replaced state is moved into the rollback copy, then
        the phase is "done". Every step is idempotent and made durable before
        the next, so a kill anywhere in here is settled by running this again;
        the directory of an abandoned or undone restore is discarded only after
        its run is journalled as ended (_discard_ended_restores), so that the
        journal says which end it came to. Raises (OSError, a BackupError) when
        a step cannot be done now: the phase stays, and so does the status warning.
        """
        paths = self._recorded_paths(run_id)
        rollback = paths["rollback"]
        phase = _read_phase(rollback)
        if phase == "committed":
            self._keep_old_state(paths)
            phase = "done"
        if phase == "done":
            for leftover in rollback.glob(".*.tmp"):  # a phase write killed mid-way
                leftover.unlink(missing_ok=True)
            (rollback / RECOVERY_ERROR).unlink(missing_ok=True)
            return "finished"
        if phase not in (None, "staging", "swapping") + ENDED_PHASES:
            raise BackupError(f"The rollback directory {rollback} records an unknown phase ({phase!r}), so "
                              "recovery cannot tell whether to undo or finish that restore.")
        self._remove_stages(paths)  # first: frees the room that undoing may need
        if phase == "swapping":
            self._undo_swap(paths)
            self._remove_stages(paths)  # the restored copies _undo_swap moved aside
            phase = "undone"
            _write_phase(rollback, phase)
        elif phase in (None, "staging"):
            phase = "abandoned"
            if rollback.is_dir():
                _write_phase(rollback, phase)
        return "undone" if phase == "undone" else "nothing"

    def _discard_ended_restores(self) -> None:
        """Remove the rollback directories of abandoned or undone restores whose run the journal has closed."""
        try:
            dirs = [d for d in (self.state_dir / "rollback").iterdir() if _read_phase(d) in ENDED_PHASES]
            still_open = {r.id for r in self.journal.runs() if r.result is None} if dirs else set()
        except (OSError, BackupError):
            return
        for rollback in dirs:
            if rollback.name not in still_open:
                try:
                    self._discard(rollback)
                except OSError:  # the next start tries again
                    pass

    def _undo_swap(self, paths: dict[str, Path]) -> None:
        """Put back what a swap replaced, from wherever it stopped; again and again if need be (idempotent).

        Each replaced directory is renamed back from its `.pre-restore-` copy;
        the restored one goes aside under the stage's name first (the stages are
        removed before this runs), so no target is ever half deleted.
        """
        rollback = paths["rollback"]
        try:
            absent = set((rollback / ABSENT_NOTE).read_text().split())
        except FileNotFoundError:
            absent = set()
        for component in ("firmware", "system"):
            target, old, stage = paths[component], paths[f"{component}.old"], paths[f"{component}.stage"]
            if os.path.lexists(old) or component in absent:
                if os.path.lexists(target):
                    os.rename(target, stage)
                if os.path.lexists(old):
                    os.rename(old, target)
                fsync_dir(target.parent)
        old_db, live_db = paths["database.old"], paths["database"]
        if os.path.lexists(old_db):
            if os.path.lexists(live_db) and os.path.samefile(old_db, live_db):
                old_db.unlink()  # kept, but the swap stopped before the database was replaced
                fsync_dir(live_db.parent)
            else:
                database.replace(old_db, live_db, keep=None)
        elif "database" in absent and os.path.lexists(live_db):  # renamed in where there was none
            os.rename(live_db, paths["database.stage"])
            fsync_dir(live_db.parent)
        if (rollback / WAL_NOTE).exists():
            database.put_back_in_wal_mode(live_db)

    def _keep_old_state(self, paths: dict[str, Path]) -> None:
        """Move what a committed swap replaced into the rollback directory; then it is "done" (idempotent)."""
        rollback = paths["rollback"]
        for component, kept in (("firmware", "firmware"), ("system", "system"), ("database", "internal.db")):
            old = paths[f"{component}.old"]
            if os.path.lexists(old):
                _move_whole(old, rollback / kept)
        _write_phase(rollback, "done")
        (rollback / RECOVERY_ERROR).unlink(missing_ok=True)
        self._prune_rollbacks()

    def _remove_stages(self, paths: dict[str, Path]) -> None:
        """Remove the restore's staged copies (and a copy of the database replace() had begun), durably."""
        old_db = paths["database.old"]
        doomed = [paths["firmware.stage"], paths["system.stage"]]
        for db_file in (paths["database.stage"], old_db.with_name(old_db.name + ".partial")):
            doomed += [db_file.with_name(db_file.name + suffix) for suffix in ("", "-journal", "-wal", "-shm")]
        parents = set()
        for path in doomed:
            if os.path.lexists(path):
                _remove(path)
                parents.add(path.parent)
        for parent in parents:
            fsync_dir(parent)

    def _remove_restore_leftovers(self, keep: set[str]) -> None:
        """Staged, partial and pre-restore copies beside the targets that no unsettled restore needs.

        Those an earlier version's recovery left when it was killed, or a
        restore's whose rollback directory is gone; `keep` names the runs whose
        settling failed (their copies are still needed). A pre-restore copy
        whose target is missing stays: it may be the only copy left.
        """
        appliance = self.config.appliance
        names: dict[Path, set[str]] = {}
        for target in (appliance.firmware.resolve(), appliance.system.resolve(), appliance.database.resolve()):
            names.setdefault(target.parent, set()).add(target.name)
        for parent, targets in names.items():
            try:
                entries = [e.name for e in os.scandir(parent)]
            except OSError:
                continue
            removed = False
            for entry in entries:
                match = LEFTOVER.fullmatch(entry)
                if not match or match["target"] not in targets or match["run"] in keep:
                    continue
                if match["kind"] == "pre-restore" and not match["partial"] and not os.path.lexists(
                        parent / match["target"]):
                    continue
                removed = _remove(parent / entry, quietly=True) or removed
            if removed:
                try:
                    fsync_dir(parent)
                except OSError:
                    pass

    def _settle_restores(self) -> dict[str, str | None]:
        """Settle every restore that has a rollback directory; run id -> its end (None: not settled now)."""
        try:
            dirs = sorted(d for d in (self.state_dir / "rollback").iterdir() if d.is_dir() and not d.is_symlink())
        except OSError:
            return {}
        outcomes: dict[str, str | None] = {}
        for rollback in dirs:
            try:
                outcomes[rollback.name] = self._settle_restore(rollback.name)
            except Exception as exc:  # the next start tries again; status warns meanwhile
                self._note_recovery_error(rollback.name, exc)
                outcomes[rollback.name] = None
        return outcomes

    def _note_recovery_error(self, run_id: str, exc: BaseException) -> None:
        """Keep why a restore could not be settled, for status to say (best effort: the disk may be full)."""
        rollback = self.state_dir / "rollback" / run_id
        try:
            if rollback.is_dir():
                atomic_write_text(rollback / RECOVERY_ERROR, describe(exc) + "\n", mode=0o600)
        except OSError:
            pass

    def unfinished_restore(self) -> tuple[str, bool] | None:
        """A sentence while a restore that was interrupted (or failed) is not yet finished or undone, else None.

        With it, whether the appliance may be mixed (the swap had begun): then no backup or restore starts.
        """
        try:
            dirs = sorted(d for d in (self.state_dir / "rollback").iterdir() if d.is_dir() and not d.is_symlink())
        except OSError:
            return None
        pending = [(d, _read_phase(d)) for d in dirs]
        pending = [(d, phase) for d, phase in pending if phase != "done" and phase not in ENDED_PHASES]
        if not pending:
            return None
        rollback, phase = max(pending, key=lambda p: p[1] not in (None, "staging"))
        mixed = phase not in (None, "staging")
        if phase == "swapping":
            what = ("was interrupted while it replaced the appliance's state, and has not been undone yet: the "
                    "firmware, system configuration and database may be a mix of the previous state and the backup's")
        elif phase == "committed":
            what = ("was interrupted after it put the backup's state in place, and has not been finished yet: the "
                    "previous state still lies beside the appliance's folders, not yet in its rollback copy")
        elif mixed:
            what = (f"left its rollback directory in an unknown phase ({phase!r}): whether the appliance holds "
                    "the previous state, the backup's or a mix is unknown")
        else:
            what = ("was interrupted before it replaced anything; its staged copies beside the appliance's "
                    "folders have not been removed yet")
        sentence = (f"A restore (run {rollback.name}) {what}. Every start of appliance-backup (any command, or the "
                    "console) tries to complete this")
        try:
            error = (rollback / RECOVERY_ERROR).read_text().strip()
        except OSError:
            error = ""
        sentence += f"; the last attempt failed: {error}" if error else "."
        if len(pending) > 1:
            sentence += f" ({len(pending)} restores are unfinished, see {rollback.parent}.)"
        return sentence, mixed

    def _discard(self, directory: Path) -> None:
        """Remove a directory of ours for good, so that a kill mid-way never leaves it half there by its name.

        It is renamed into the state's tmp directory first (recovery empties
        that), then deleted. Where that rename cannot be made, its phase file goes
        first, so a half-removed copy is one recovery removes, not one it keeps.
        """
        if not os.path.lexists(directory):
            return
        trash_dir = self.state_dir / "tmp"
        ensure_private_dir(trash_dir)
        trash = trash_dir / f"discarded-{directory.name}"
        _remove(trash)
        try:
            os.rename(directory, trash)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            (directory / "PHASE").unlink(missing_ok=True)
            fsync_dir(directory)
            trash = directory
        fsync_dir(directory.parent)
        _remove(trash)

    def _prune_rollbacks(self) -> None:
        """Keep the newest KEEP_ROLLBACKS finished rollback copies; each is a whole appliance state."""
        root = self.state_dir / "rollback"
        if not root.is_dir():
            return
        try:
            finished = sorted((d for d in root.iterdir() if d.is_dir() and _read_phase(d) == "done"),
                              key=lambda d: (d / "PHASE").stat().st_mtime_ns)
        except OSError:  # tried again after the next restore
            return
        for old in finished[:-KEEP_ROLLBACKS]:
            try:
                self._discard(old)
            except OSError:  # tried again after the next restore
                pass


def _remove(path: Path, *, quietly: bool = False) -> bool:
    """Delete a file, link or whole directory if it is there; whether something was. `quietly`: errors too."""
    try:
        if path.is_dir() and not path.is_symlink():
            remove_tree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    except OSError:
        if not quietly:
            raise
        return False
    return True


def _move_whole(source: Path, dest: Path) -> None:
    """Move a file or directory to `dest` so that a kill anywhere leaves it whole in one of the two places.

    Run again after a kill, it completes the move. Across file systems the
    copy is made as `dest`.partial, synced, renamed to `dest`, and only then
    is `source` removed: a `dest` that exists is always complete.
    """
    if os.path.lexists(dest):  # an interrupted move that had already completed its copy
        _remove(source)
        fsync_dir(source.parent)
        return
    try:
        os.rename(source, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        partial = dest.with_name(dest.name + ".partial")
        _remove(partial)
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, partial, symlinks=True)
        else:
            shutil.copy2(source, partial, follow_symlinks=False)
        sync_filesystem(partial)
        os.rename(partial, dest)
        fsync_dir(dest.parent)
        _remove(source)
    fsync_dir(source.parent)
    fsync_dir(dest.parent)


REFUSED_SHOWN = 20


def refused_attributes_sentence(warnings: list[str], *, listed: bool = True) -> str | None:
    """What a restore could not set (RestoreResult.warnings) in one sentence, naming the files if `listed`."""
    if not warnings:
        return None
    sentence = (f"{len(warnings)} restored file(s) lack extended attributes that this filesystem or user could not "
                "set; everything else was restored (restore as root onto a filesystem that supports them to have "
                "them too)")
    if not listed:
        return sentence + "."
    shown = "; ".join(warnings[:REFUSED_SHOWN]) + (f"; and {len(warnings) - REFUSED_SHOWN} more"
                                                   if len(warnings) > REFUSED_SHOWN else "")
    return f"{sentence}: {shown}."


def _unlink_later(path: Path) -> None:
    """Remove a large temporary file off the caller's path (freeing its blocks takes a while).

    If the process ends first, recovery removes what is left in the state's tmp directory.
    """
    threading.Thread(target=path.unlink, kwargs={"missing_ok": True}, name="backup-cleanup", daemon=True).start()


ESTIMATE_SAMPLE = 8 << 20
"""Bytes of the appliance's data compressed to estimate a backup's size (only after a storage ran full)."""
ESTIMATE_PIECE = 64 << 10
ESTIMATE_LEVEL = 3
"""The zstd level PayloadWriter compresses with."""


def _wait_for_database(path: Path, patience: float) -> None:
    """Return once the database can be read; fail with a sentence after `patience` seconds of another's lock.

    In WAL mode (the appliance's) a writer never blocks readers, so this returns at once. In rollback-journal
    mode an EXCLUSIVE lock (a writer committing, or holding BEGIN EXCLUSIVE) blocks every reader until it ends:
    without this check the snapshot would wait SQLite's whole busy timeout, twice.
    """
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise BackupError(f"The internal database {path} cannot be read (permission denied): run the backup as "
                          "root, or as the user that owns the database, then try again.") from None
    except OSError as exc:
        raise BackupError(f"The internal database {path} cannot be opened ({exc.strerror or exc}).") from None
    try:
        con = sqlite3.connect(database.read_only(path), uri=True, timeout=patience)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in str(exc):
            raise DatabaseLockedError(
                f"The appliance database {path} is locked by another program: it held a write lock for more than "
                f"{patience:g} s, so no consistent copy could be read and the backup did not start. Try again when "
                "that write has finished (or raise [backup] database_wait_seconds)."
            ) from None
        raise BackupError(f"The internal database {path} cannot be read as an SQLite database ({exc}): check "
                          "[appliance] database in the configuration.") from None


def _estimate_backup_size(sources: list[tuple[Path, int]], members: int) -> int:
    """About how many bytes the finished backup takes: its data times the ratio zstd reaches on a sample.

    Pieces are taken from every file, spread over it, up to ESTIMATE_SAMPLE bytes in all (plus a little of
    each small file), and compressed as one stream, as the backup does. Unreadable files are left out.
    """
    total = sum(size for _, size in sources) + 2 * tarfile.BLOCKSIZE * members
    data = sum(size for _, size in sources)
    fraction = min(1.0, ESTIMATE_SAMPLE / data) if data else 1.0
    compressor = zstandard.ZstdCompressor(level=ESTIMATE_LEVEL).compressobj()
    sampled = compressed = 0
    for path, size in sources:
        want = min(size, max(math.ceil(size * fraction), 1024))
        pieces = math.ceil(want / ESTIMATE_PIECE) if want else 0
        try:
            with open(path, "rb") as f:
                for i in range(pieces):
                    f.seek(i * size // pieces)
                    block = f.read(min(ESTIMATE_PIECE, want - i * ESTIMATE_PIECE))
                    sampled += len(block)
                    compressed += len(compressor.compress(block))
        except OSError:
            continue
    compressed += len(compressor.flush())
    ratio = compressed / sampled if sampled else 1.0
    chunks = 1 + math.ceil(total * ratio / (1 << 20))
    return 162 + math.ceil(total * ratio) + 16 * chunks  # header, payload, one AEAD tag per 1 MiB chunk


def _write_phase(rollback_dir: Path, phase: str) -> None:
    atomic_write_text(rollback_dir / "PHASE", phase + "\n", mode=0o600)


def _read_phase(rollback_dir: Path) -> str | None:
    """The phase a rollback directory records; None when it has no phase file, "?" when that cannot be read."""
    try:
        return (rollback_dir / "PHASE").read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return "?"


def _aware_time(text: object) -> datetime | None:
    """A manifest's created_at, when it is an ISO 8601 time with its offset (as every writer records it)."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None or not 1970 <= moment.astimezone(timezone.utc).year <= 9000:
            return None  # no offset; or a date no clock gives, where calendar arithmetic would overflow
    except (ValueError, OverflowError):
        return None
    return moment


def _when(moment: datetime) -> str:
    try:
        return f"{moment.astimezone(local_timezone()):%Y-%m-%d %H:%M:%S %Z}"
    except (OverflowError, ValueError):  # a manifest dated at the edge of the calendar (year 1 or 9999)
        return moment.isoformat()


def as_seen(run: RunRecord) -> RunRecord:
    """`run` as recovery will close it: a run whose process is gone was interrupted (nothing is written)."""
    if run.result is None and run.pid != os.getpid() and not pid_alive(run.pid):
        return replace(run, result="interrupted", error=interrupted_error(run.kind))
    return run


def removed_backups(runs: list[RunRecord]) -> set[str]:
    """Backups the journal says were deleted: by the operator, or by retention (a prune that failed midway
    may have deleted any of its names: all count as gone)."""
    gone = {r.name for r in runs if r.kind == "delete" and r.result == "ok" and r.name}
    for r in runs:
        if r.kind == "prune" and r.result is not None and r.detail and r.detail.startswith("delete "):
            gone.update(r.detail[len("delete "):].split())
    return gone


def created_at(name: str, mtime: float) -> datetime:
    """When a backup was made: the time in its name, else (another tool's name, or no such date) its mtime."""
    match = NAME_STAMP.search(name)
    if match:
        try:
            return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        except ValueError:  # looks like ours but is no date (month 13): not one of ours
            pass
    return datetime.fromtimestamp(mtime, tz=timezone.utc)


def foreign_note(details: BackupDetails) -> str | None:
    """The sentence a restore confirmation adds when the backup is another appliance's, else None."""
    if not details.foreign or details.facts is None:
        return None
    return (f"This backup was made by another appliance: {details.facts.appliance or 'unnamed'} "
            f"(identity {details.facts.appliance_id}), not this one. Restoring it gives this appliance "
            "that appliance's configuration and database.")


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} h"


def _result_word(exc: BaseException) -> str:
    return "interrupted" if isinstance(exc, (InterruptedRunError, KeyboardInterrupt)) else "failed"


def describe(exc: BaseException) -> str:
    """The sentence an operator sees for any exception; never a traceback."""
    if isinstance(exc, BackupError):
        return exc.message
    if isinstance(exc, KeyboardInterrupt):
        return "The run was stopped (interrupted) before it finished; nothing partial was kept."
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"An I/O error stopped the run{where}: {exc.strerror or exc}."
    return f"An unexpected error stopped the run: {type(exc).__name__}: {exc}"
