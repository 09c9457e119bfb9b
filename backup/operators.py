"""Provides the operator check: OTP accounts may not create or restore backups.

Configuration (in the appliance's config.toml):

    [operators]
    alice = "oauth"     # may create and restore backups
    bob = "otp"         # refused, with the appliance's guidance

Without an [operators] table there is no account check: whoever may run the
command may back up. With the table, only the operators it lists as "oauth"
may; a name it does not list is refused. The operator in effect is the one
given (the console's signed-in operator, `--operator`), else the OS login name.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any, Callable

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


def check_operator(raw_config: dict[str, Any], path: Path | str, operator: str | None, *,
                   getuser: Callable[[], str] = getpass.getuser) -> str:
    """Return the operator in effect when they may create or restore backups; raise when not.

    Raises:
        OperatorRefusedError: an OTP operator, or one the [operators] table does not list.
        ConfigError: the [operators] table is malformed.
    """
    operators = parse_operators(raw_config, path)
    name = operator
    if not name:
        try:
            name = getuser()
        except (OSError, KeyError, ImportError):
            name = ""
    if not name:
        if operators is None:
            return ""
        raise OperatorRefusedError(
            "The operator cannot be determined (no login name): sign in with a named OAuth account and try again."
        )
    if operators is None:
        return name
    method = operators.get(name)
    if method is None:
        raise OperatorRefusedError(
            f"Operator {name} is not listed in [operators] of {path}, so may not create or restore backups: "
            f"add the line {name} = \"oauth\" there for an OAuth account, or sign in as a listed operator."
        )
    if method == "otp":
        raise OperatorRefusedError(
            f"Operator {name} signs in with OTP, and OTP accounts may not create or restore backups: "
            "create an OAuth account, sign in with it, and remove the OTP account."
        )
    return name
