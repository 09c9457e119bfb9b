"""Provides who the operator is and what they may do: OTP and unlisted operators may only look.

Configuration (in the appliance's config.toml):

    [operators]
    alice = "oauth"     # may look and change: back up, restore, delete, prune, settings, schedule, storage, secret
    bob = "otp"         # may only look, and is told the appliance's guidance

Without an [operators] table there is no account check: whoever may run the
command may do everything. With the table, only the operators it lists as
"oauth" may change anything; an "otp" or unlisted operator may look (status,
list, details, schedule show, prune --dry-run, verify, which is then not
recorded).

The login, whose rights count, comes from the operating system, never from a
flag or an environment variable another user could set: the real uid of the
process, by its name in the user database. The one exception is a root process
that sudo started: sudo sets SUDO_USER to the user who asked, a non-root user
cannot start a root process any other way, and a root process could rewrite
the configuration anyway; so its login is that user. `--operator NAME` (the
command's, and the console's) may name an operator with no more rights than the
login; root (not through sudo) may name anyone, which is how the appliance's own
sign-in, running as root, tells the console who signed in.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backup.errors import ConfigError, OperatorRefusedError

METHODS = ("oauth", "otp")


def parse_operators(raw: dict[str, Any], path: Path | str) -> dict[str, str] | None:
    """The `[operators]` table as login name -> "oauth" or "otp"; None when the config has no such table."""
    if "operators" not in raw:
        return None
    table = raw["operators"]
    if not isinstance(table, dict):
        raise ConfigError(f"In {path}, operators must be a table: write it as [operators] followed by lines such as alice = \"oauth\".")
    operators = {}
    for name, method in table.items():
        if not isinstance(method, str) or method.strip().lower() not in METHODS:
            raise ConfigError(
                f"In {path}, [operators] {name} is {method!r}; it must be \"oauth\" or \"otp\" "
                "(the way that operator signs in): fix the value or remove the line."
            )
        operators[name] = method.strip().lower()
    return operators


@dataclass(frozen=True)
class Login:
    """The OS login a process runs under (see the module docstring)."""

    name: str
    """The login name; "" when the uid has none in the user database."""
    superuser: bool
    """root, not through sudo: may name any operator."""


def current_login(*, getuid: Callable[[], int] = os.getuid, environ: Mapping[str, str] = os.environ) -> Login:
    """The login of this process: its real uid's name, or for a root process sudo started, SUDO_USER."""
    uid = getuid()
    if uid == 0:
        sudo_user = environ.get("SUDO_USER", "")
        if sudo_user and sudo_user != "root":
            return Login(sudo_user, superuser=False)
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = ""
    return Login(name, superuser=uid == 0)


@dataclass(frozen=True)
class Access:
    """Who acts, under which login, and whether they may change anything."""

    operator: str
    login: str
    may_change: bool
    method: str | None
    """"oauth", "otp", or None: not listed (or no [operators] table)."""
    config_path: Path | str

    def refusal(self, what: str) -> str:
        """The sentence refusing `what` ("create backups", "change the schedule") to a look-only operator."""
        if not self.operator:
            return (f"The operator cannot be determined (this process's user has no login name), so may not {what}: "
                    "sign in with a named OAuth account and try again.")
        if self.method == "otp":
            return (f"Operator {self.operator} signs in with OTP, so may not {what} (OTP accounts may only look): "
                    "create an OAuth account, sign in with it, and remove the OTP account.")
        return (f"Operator {self.operator} is not listed in [operators] of {self.config_path}, so may not {what} "
                f"(unlisted operators may only look): add the line {self.operator} = \"oauth\" there for an OAuth "
                "account, or sign in as a listed operator.")

    def require(self, what: str) -> None:
        """Raise OperatorRefusedError when this operator may only look."""
        if not self.may_change:
            raise OperatorRefusedError(self.refusal(what))


def _may_change(operators: dict[str, str] | None, name: str) -> bool:
    return operators is None or (bool(name) and operators.get(name) == "oauth")


def resolve_access(raw_config: dict[str, Any], path: Path | str, requested: str | None, login: Login) -> Access:
    """What the operator `requested` (`--operator`; None: the login itself) may do, running under `login`.

    Raises:
        OperatorRefusedError: `requested` has more rights than `login` (a flag cannot raise them).
        ConfigError: the [operators] table is malformed.
    """
    operators = parse_operators(raw_config, path)
    name = login.name if requested is None else requested.strip()
    if requested is not None and not name:
        raise ConfigError("--operator needs a name: give the operator's login name, or leave the option out.")
    if name != login.name and not login.superuser and _may_change(operators, name) \
            and not _may_change(operators, login.name):
        raise OperatorRefusedError(
            f"--operator {name} is refused: {name} may change the appliance, but this command runs under the login "
            f"{login.name or '(no name)'}, which may only look, and a flag cannot raise a login's rights. "
            f"Sign in as {name} to act as {name}."
        )
    method = operators.get(name) if operators is not None else None
    return Access(operator=name, login=login.name, may_change=_may_change(operators, name), method=method,
                  config_path=path)
