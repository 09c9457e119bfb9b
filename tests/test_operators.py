"""Tests of backup.operators: OTP and unlisted operators may only look, and are told the appliance's guidance.

Who the login is and what `--operator` may name: tests/test_access.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backup.errors import ConfigError, ExitCode, OperatorRefusedError
from backup.operators import Login, parse_operators, resolve_access

PATH = Path("/etc/appliance-backup/config.toml")
CONFIG = {"appliance": {"name": "a1"}, "operators": {"alice": "oauth", "bob": "otp", "carol": "OAuth"}}
ROOT = Login("root", superuser=True)


def login(name: str) -> Login:
    return Login(name, superuser=False)


def test_oauth_operator_may_change():
    assert resolve_access(CONFIG, PATH, "alice", ROOT).may_change
    assert resolve_access(CONFIG, PATH, "carol", ROOT).may_change  # the value's case does not matter


def test_otp_operator_is_refused_with_the_guidance():
    access = resolve_access(CONFIG, PATH, "bob", login("alice"))
    with pytest.raises(OperatorRefusedError) as err:
        access.require("create backups")
    assert str(err.value) == (
        "Operator bob signs in with OTP, so may not create backups (OTP accounts may only look): "
        "create an OAuth account, sign in with it, and remove the OTP account."
    )
    assert err.value.exit_code == ExitCode.OPERATOR_REFUSED == 9


def test_login_name_is_used_when_no_operator_is_given():
    assert resolve_access(CONFIG, PATH, None, login("alice")).operator == "alice"
    with pytest.raises(OperatorRefusedError, match="^Operator bob signs in with OTP"):
        resolve_access(CONFIG, PATH, None, login("bob")).require("restore backups")


def test_unlisted_operator_is_refused_with_how_to_add():
    with pytest.raises(OperatorRefusedError) as err:
        resolve_access(CONFIG, PATH, "mallory", login("alice")).require("create backups")
    assert str(err.value) == (
        f"Operator mallory is not listed in [operators] of {PATH}, so may not create backups (unlisted operators "
        "may only look): add the line mallory = \"oauth\" there for an OAuth account, or sign in as a listed operator."
    )


def test_empty_table_refuses_everyone():
    with pytest.raises(OperatorRefusedError, match="not listed"):
        resolve_access({"operators": {}}, PATH, "alice", ROOT).require("create backups")


def test_no_table_means_no_account_check():
    assert resolve_access({"appliance": {}}, PATH, None, ROOT).may_change
    assert resolve_access({}, PATH, "anyone", login("bob")).may_change
    assert parse_operators({}, PATH) is None


def test_no_login_name():
    assert resolve_access({}, PATH, None, login("")).may_change
    with pytest.raises(OperatorRefusedError, match="cannot be determined"):
        resolve_access(CONFIG, PATH, None, login("")).require("create backups")


def test_an_empty_operator_option_is_a_usage_error():
    with pytest.raises(ConfigError, match="--operator needs a name"):
        resolve_access(CONFIG, PATH, " ", ROOT)


@pytest.mark.parametrize("value", ["password", 1, "", ["oauth"]])
def test_bad_method_is_a_config_error_naming_file_and_key(value):
    with pytest.raises(ConfigError) as err:
        resolve_access({"operators": {"alice": "oauth", "dave": value}}, PATH, "alice", ROOT)
    assert str(err.value).startswith(f"In {PATH}, [operators] dave is {value!r}; it must be \"oauth\" or \"otp\"")
    assert err.value.exit_code == ExitCode.USAGE


def test_operators_not_a_table():
    with pytest.raises(ConfigError, match=r"operators must be a table"):
        resolve_access({"operators": "alice"}, PATH, "alice", ROOT)


def test_parse_operators_normalises():
    assert parse_operators(CONFIG, PATH) == {"alice": "oauth", "bob": "otp", "carol": "oauth"}
