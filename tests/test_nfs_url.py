"""Tests of NFS URL parsing: what is accepted, and the sentence for each kind of mistake."""

from __future__ import annotations

import pytest

from backup.errors import StorageError
from backup.storage.nfsurl import NfsUrl, NfsUrlError, parse_nfs_url, shown_url, validate_nfs_url


class TestAccepted:
    @pytest.mark.parametrize(("url", "expected"), [
        ("nfs://nas01/export/backups", NfsUrl("nas01", 2049, "/export/backups")),
        ("nfs://nas01.example.com:2050/export", NfsUrl("nas01.example.com", 2050, "/export")),
        ("nfs://192.0.2.10/srv/nfs/appliance-backups/", NfsUrl("192.0.2.10", 2049, "/srv/nfs/appliance-backups")),
        ("nfs://[fd00::1]:2049/export/b", NfsUrl("fd00::1", 2049, "/export/b")),
        ("nfs://[::1]/e", NfsUrl("::1", 2049, "/e")),
        ("nfs://127.0.0.1:65535/a_b-c.d~e+f,g=h:i@j", NfsUrl("127.0.0.1", 65535, "/a_b-c.d~e+f,g=h:i@j")),
    ])
    def test_parsed(self, url: str, expected: NfsUrl) -> None:
        assert parse_nfs_url(url) == expected
        assert validate_nfs_url(url) is None

    def test_str_round_trips(self) -> None:
        for url in ("nfs://nas01:2049/export/backups", "nfs://[fd00::1]:2049/export"):
            assert str(parse_nfs_url(url)) == url

    def test_error_is_a_storage_error(self) -> None:
        with pytest.raises(StorageError):
            parse_nfs_url("http://x/y")


def problem(url: str) -> str:
    with pytest.raises(NfsUrlError) as info:
        parse_nfs_url(url)
    message = str(info.value)
    assert message == validate_nfs_url(url)
    assert message.endswith(".") and "\n" not in message
    return message


class TestRefused:
    def test_empty(self) -> None:
        assert "empty" in problem("")
        assert "empty" in problem("   ")

    @pytest.mark.parametrize("url", ["http://nas/export", "smb://nas/share", "/export/backups", "nas/export"])
    def test_scheme(self, url: str) -> None:
        assert "must start with nfs://" in problem(url) or "starts with" in problem(url)

    def test_scheme_other_names_it(self) -> None:
        assert "starts with http://" in problem("http://nas/export")

    def test_scheme_upper_case(self) -> None:
        assert "lower case" in problem("NFS://nas/export")

    def test_single_slash(self) -> None:
        assert "two slashes" in problem("nfs:/nas/export")

    def test_mount_syntax_is_rewritten_for_the_user(self) -> None:
        assert "nfs://nas01/export/backups" in problem("nas01:/export/backups")

    def test_host_missing(self) -> None:
        assert "names no server" in problem("nfs:///export")
        assert "names no server" in problem("nfs://:2049/export")

    @pytest.mark.parametrize("host", ["bad_host", "-nas", "nas..lan", "999.1.1.1", "a" * 64])
    def test_host_invalid(self, host: str) -> None:
        assert "neither a host name nor an IP address" in problem(f"nfs://{host}/export")

    def test_ipv6_invalid_or_unclosed(self) -> None:
        assert "not a valid IPv6" in problem("nfs://[fd00::zz]/export")
        assert "never closes" in problem("nfs://[fd00::1/export")
        assert "in brackets" in problem("nfs://fd00::1/export")

    def test_port_not_a_number(self) -> None:
        assert "'20x9', which is not a number" in problem("nfs://nas:20x9/export")

    @pytest.mark.parametrize("port", ["0", "65536", "99999999"])
    def test_port_out_of_range(self, port: str) -> None:
        assert "out of range" in problem(f"nfs://nas:{port}/export")

    def test_port_empty(self) -> None:
        assert "no port after it" in problem("nfs://nas:/export")

    @pytest.mark.parametrize("url", ["nfs://nas", "nfs://nas/", "nfs://nas:2049"])
    def test_path_missing(self, url: str) -> None:
        assert "names no export path" in problem(url)

    def test_space(self) -> None:
        assert "contains a space" in problem("nfs://nas/export/my backups")

    @pytest.mark.parametrize(("char", "code"), [("\t", "U+0009"), ("\x00", "U+0000"), ("\x1b", "U+001B"), ("\u200b", "U+200B")])
    def test_control_characters(self, char: str, code: str) -> None:
        message = problem(f"nfs://nas/export/b{char}x")
        assert "control character" in message and code in message

    def test_query_named(self) -> None:
        message = problem("nfs://nas/export?version=4.1")
        assert "query part ('?version=4.1')" in message and "NFS version in its own field" in message

    def test_fragment_named(self) -> None:
        assert "fragment part ('#...')" in problem("nfs://nas/export#top")

    def test_percent_encoding(self) -> None:
        assert "percent-encoded" in problem("nfs://nas/export/my%20backups")

    def test_non_ascii(self) -> None:
        assert "non-ASCII character 'ü'" in problem("nfs://nas/export/sicherungen-für-a")

    @pytest.mark.parametrize("char", ["*", "'", "$", "!", "(", ";", "&", "|", "<", '"'])
    def test_characters_not_allowed_in_path(self, char: str) -> None:
        assert f"the character {char!r}" in problem(f"nfs://nas/export/a{char}b")

    def test_backslash(self) -> None:
        assert "backslash" in problem("nfs://nas/export\\backups")

    @pytest.mark.parametrize("path", ["/export/../etc", "/..", "/export/..", "/export/./b"])
    def test_dot_elements(self, path: str) -> None:
        assert "element in its path" in problem(f"nfs://nas{path}")

    def test_empty_element(self) -> None:
        assert "empty path element" in problem("nfs://nas/export//backups")

    def test_user_info(self) -> None:
        assert "user name" in problem("nfs://root@nas/export")

    @pytest.mark.parametrize("url", ["nfs://backup:S3cretPassw0rd@nas/export", "NFS://backup:S3cretPassw0rd@nas/x",
                                     "nfs://backup:S3cretPassw0rd@@nas:99999/export", "nfs://backup:S3cretPassw0rd@",
                                     "nfs://backup:S3cret?Passw0rd@nas/export", "nfs://backup:S3cret/Passw0rd@nas/export",
                                     "nfs://backup:S3cret#Passw0rd@nas/export", "nfs://backup:S3cr\u00e9tPassw0rd@nas/e"])
    def test_a_password_typed_into_the_url_is_not_repeated(self, url: str) -> None:
        for shown in (problem(url), shown_url(url)):
            assert "S3cret" not in shown and "Passw0rd" not in shown and "backup" not in shown
            assert "***@" in shown

    def test_a_valid_url_is_shown_as_typed(self) -> None:
        assert shown_url("nfs://127.0.0.1:65535/a_b-c.d~e+f,g=h:i@j") == "nfs://127.0.0.1:65535/a_b-c.d~e+f,g=h:i@j"

    def test_too_long(self) -> None:
        assert "characters long" in problem("nfs://nas/" + "a/" * 600)

    def test_long_url_is_cut_in_the_message(self) -> None:
        assert len(problem("nfs://nas/export/" + "x" * 300 + " y")) < 300
