"""Provides the start-up check that no other local user can replace what protects the backups.

The configuration file, the state directory and the Domain Master Secret's key
file decide where backups go and what key encrypts them. Whoever may replace
one of them, or any folder on the way to it, may make the appliance encrypt to
a key of their own. So every folder looked up on the way (links followed one
by one, each link's own folder included) must belong to root or to the user
running the command, and no one else may write to it:

- a folder writable by its group or by every user is refused, except one with
  the sticky bit (like /tmp): there others may add entries but not rename or
  remove ours, and the entry below it must be ours anyway;
- the state directory itself gets no such exception: others could still add a
  key file there before the secret is set;
- the key file and the configuration file must be writable by their owner only.

A refusal is a sentence naming the path and the fix (UnsafePathError, exit
code 2). The check runs when a BackupService is made (every command, the
console, the daemon) and again whenever the key is read.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

from backup.errors import UnsafePathError

MAX_LINKS = 40
"""Links followed before giving up, as the kernel does (ELOOP)."""


def trusted_owners() -> frozenset[int]:
    """root, and the user this process runs as (the appliance's backup user)."""
    return frozenset({0, os.geteuid()})


def looked_up(path: Path) -> list[str]:
    """Every path the kernel looks at to reach `path`: each folder, each link, and where each link leads.

    Stops at the first component that does not exist (nothing below it can be reached).
    """
    text = os.fspath(path)
    if not text.startswith("/"):
        text = os.path.join(os.getcwd(), text)
    todo = [part for part in text.split("/") if part not in ("", ".")]
    current = "/"
    seen = ["/"]
    links = 0
    while todo:
        name = todo.pop(0)
        if name == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, name)
        try:
            st = os.lstat(candidate)
        except OSError:
            break
        seen.append(candidate)
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                break
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = "/"
            todo[:0] = [part for part in target.split("/") if part not in ("", ".")]
        else:
            current = candidate
    return seen


def check_trusted(path: Path, what: str, *, private: bool = False) -> None:
    """Refuse `path` (described as `what`, e.g. "The state directory") when another user could replace it.

    Args:
        private: `path` is a folder only its owner may write to, sticky bit or not (the state directory).
    """
    owners = trusted_owners()
    final = os.path.realpath(path) if os.path.lexists(path) else None
    for component in looked_up(path):
        try:
            st = os.lstat(component)
        except OSError:
            continue
        if st.st_uid not in owners:
            raise UnsafePathError(_foreign_owner(path, what, component, st.st_uid, owners))
        if stat.S_ISLNK(st.st_mode):
            continue  # a link's own mode means nothing; where it leads is looked at next
        mode = stat.S_IMODE(st.st_mode)
        writable = mode & (stat.S_IWGRP | stat.S_IWOTH)
        if not writable:
            continue
        is_final = component == final
        if stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX and not (is_final and private):
            continue
        raise UnsafePathError(_writable(path, what, component, st, is_final))


def _name_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group_of(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def _foreign_owner(path: Path, what: str, component: str, uid: int, owners: frozenset[int]) -> str:
    allowed = " or ".join(_name_of(u) for u in sorted(owners))
    head = f"{what} {path} cannot be trusted: {component} is owned by {_name_of(uid)}, not by {allowed}"
    if os.path.isfile(component) and not os.path.islink(component):
        return (f"{head}, so another user may have planted it and backups would be encrypted to their key. "
                f"Check where {component} came from: if it is not this appliance's, remove it (and set the "
                "Domain Master Secret again if it was the key file); otherwise give it to root "
                f"(`chown root: {component}`), then try again.")
    return (f"{head}, so that user could replace what is in it. Give it to root (`chown root: {component}`) "
            "after checking what it holds, or keep the state and configuration in folders only root can "
            "change, then try again.")


def _writable(path: Path, what: str, component: str, st: os.stat_result, is_final: bool) -> str:
    mode = stat.S_IMODE(st.st_mode)
    who = "every user" if mode & stat.S_IWOTH else f"its group {_group_of(st.st_gid)}"
    if stat.S_ISDIR(st.st_mode):
        risk = ("another user could add or swap files in it" if is_final
                else "another user could rename what is in it and put their own in its place")
    else:
        risk = "another user could change it"
    return (f"{what} {path} cannot be trusted: {component} is writable by {who} (mode {mode:04o}), so {risk}. "
            f"Run `chmod go-w {component}` (after checking that what is there is yours), then try again.")
