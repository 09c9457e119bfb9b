"""Tests of backup.operators: OTP operators are refused with the appliance's guidance."""

from __future__ import annotations

from pathlib import Path

import pytest

from backup.errors import ConfigError, ExitCode, OperatorRefusedError
from backup.operators import check_operator, parse_operators

PATH = Path("/etc/appliance-backup/config.toml")
CONFIG = {"appliance": {"name": "a1"}, "operators": {"alice": "oauth", "bob": "otp", "carol": "OAuth"}}


def login(name: str):
    return lambda: name


def no_login() -> str:
    raise OSError("No username set in the environment")


def test_oauth_operator_is_allowed():
    assert check_operator(CONFIG, PATH, "alice", getuser=login("root")) == "alice"
    assert check_operator(CONFIG, PATH, "carol", getuser=login("root")) == "carol"  # the value's case does not matter


def test_otp_operator_is_refused_with_the_guidance():
    with pytest.raises(OperatorRefusedError) as err:
        check_operator(CONFIG, PATH, "bob", getuser=login("alice"))
    assert str(err.value) == (
        "Operator bob signs in with OTP, and OTP accounts may not create or restore backups: "
        "create an OAuth account, sign in with it, and remove the OTP account."
    )
    assert err.value.exit_code == ExitCode.OPERATOR_REFUSED == 9


def test_login_name_is_used_when_no_operator_is_given():
    assert check_operator(CONFIG, PATH, None, getuser=login("alice")) == "alice"
    with pytest.raises(OperatorRefusedError, match="^Operator bob signs in with OTP"):
        check_operator(CONFIG, PATH, None, getuser=login("bob"))


def test_unlisted_operator_is_refused_with_how_to_add():
    with pytest.raises(OperatorRefusedError) as err:
        check_operator(CONFIG, PATH, "mallory", getuser=login("alice"))
    assert str(err.value) == (
        f"Operator mallory is not listed in [operators] of {PATH}, so may not create or restore backups: "
        "add the line mallory = \"oauth\" there for an OAuth account, or sign in as a listed operator."
    )


def test_empty_table_refuses_everyone():
    with pytest.raises(OperatorRefusedError, match="not listed"):
        check_operator({"operators": {}}, PATH, "alice")


def test_no_table_means_no_account_check():
    assert check_operator({"appliance": {}}, PATH, None, getuser=login("root")) == "root"
    assert check_operator({}, PATH, "anyone") == "anyone"
    assert parse_operators({}, PATH) is None


def test_no_login_name():
    assert check_operator({}, PATH, None, getuser=no_login) == ""
    with pytest.raises(OperatorRefusedError, match="cannot be determined"):
        check_operator(CONFIG, PATH, None, getuser=no_login)


@pytest.mark.parametrize("value", ["password", 1, "", ["oauth"]])
def test_bad_method_is_a_config_error_naming_file_and_key(value):
    with pytest.raises(ConfigError) as err:
        check_operator({"operators": {"alice": "oauth", "dave": value}}, PATH, "alice")
    assert str(err.value).startswith(f"In {PATH}, [operators] dave is {value!r}; it must be \"oauth\" or \"otp\"")
    assert err.value.exit_code == ExitCode.USAGE


def test_operators_not_a_table():
    with pytest.raises(ConfigError, match=r"operators must be a table"):
        check_operator({"operators": "alice"}, PATH, "alice")


def test_parse_operators_normalises():
    assert parse_operators(CONFIG, PATH) == {"alice": "oauth", "bob": "otp", "carol": "oauth"}
