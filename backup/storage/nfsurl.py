"""Provides parsing and validation of NFS share URLs (`nfs://server[:port]/export/path`).

Every problem is reported as one sentence that says what is wrong and how to
write it instead, so the Storage screen can show it under the field as is.
Options in the URL (`?version=4.1`) are refused: the version is its own
setting, and a URL that smuggles one in would disagree with it.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass

from backup.errors import StorageError

DEFAULT_NFS_PORT = 2049
MAX_URL_LENGTH = 1024
EXAMPLE = "nfs://server/export/backups"

_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# Characters a path element may hold besides letters and digits: the URL
# "unreserved" and "sub-delims" sets plus ':' and '@', less those a shell or
# another OS would trip over.
_PATH_PUNCTUATION = set("-._~+,=:@")


class NfsUrlError(StorageError):
    """The NFS URL is malformed; the message says how."""


@dataclass(frozen=True)
class NfsUrl:
    host: str
    """A host name, an IPv4 address, or an IPv6 address without brackets."""
    port: int
    export_path: str
    """Absolute, normalised (no trailing '/', no empty, '.' or '..' elements), never just '/'."""

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"nfs://{self.netloc}{self.export_path}"

    def with_path(self, export_path: str) -> NfsUrl:
        return NfsUrl(self.host, self.port, export_path)


def parse_nfs_url(url: str) -> NfsUrl:
    """Parse and validate `url`; raise NfsUrlError with a sentence for the first problem found."""
    problem, parsed = _parse(url)
    if problem:
        raise NfsUrlError(problem)
    assert parsed is not None
    return parsed


def validate_nfs_url(url: str) -> str | None:
    """The sentence saying what is wrong with `url`, or None if it is a usable NFS URL."""
    return _parse(url)[0]


def shown_url(url: str) -> str:
    """`url` as a screen or a sentence may show it: a refused URL holding '@' loses all before its last '@'.

    NFS URLs carry no user name, but an operator may type user:password@ into
    one, and a password may hold '/', '?' or ':', so where the user part ends
    cannot be told from a refused URL. A valid URL has no user part and is
    shown as typed.
    """
    return url if validate_nfs_url(url) is None else _hidden(url)


def _hidden(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if sep and "@" in rest else url


def _parse(url: str) -> tuple[str | None, NfsUrl | None]:
    problem, parsed = _parse_plain(url)
    if problem is not None and "@" in url.partition("://")[2]:
        # Any sentence about a part of the URL could quote a piece of a password: say only this.
        problem = (f"The NFS URL {_shown(url)} is refused: it holds '@', as a user name or password would, and NFS URLs "
                   "carry neither (what came before the last '@' is not repeated here). Write it as "
                   "nfs://server[:port]/export/path.")
    return problem, parsed


def _parse_plain(url: str) -> tuple[str | None, NfsUrl | None]:
    if not isinstance(url, str) or not url.strip():
        return f"The NFS URL is empty: give the share as nfs://server[:port]/export/path, for example {EXAMPLE}.", None
    shown = _shown(url)
    if len(url) > MAX_URL_LENGTH:
        return f"The NFS URL is {len(url)} characters long; at most {MAX_URL_LENGTH} are allowed.", None
    scheme_problem = _scheme_problem(url, shown)
    if scheme_problem:
        return scheme_problem, None
    char_problem = _character_problem(url)
    if char_problem:
        return f"The NFS URL {shown} {char_problem}", None

    rest = url[len("nfs://"):]
    authority, slash, path = rest.partition("/")
    path = slash + path
    if "@" in authority:
        return (f"The NFS URL {shown} has a user name part ('...@'): NFS URLs carry no user name; "
                f"write nfs://server/export/path."), None
    host_problem, host, port = _authority(authority, shown)
    if host_problem:
        return host_problem, None
    path_problem, export_path = _path(path, shown)
    if path_problem:
        return path_problem, None
    return None, NfsUrl(host, port, export_path)


def _shown(url: str) -> str:
    """The URL as it may be quoted in a sentence: a user part hidden, control characters made visible, long ones cut.

    NFS URLs carry no user name, but an operator may still type
    user:password@ into one; the sentence refusing it must not repeat it.
    """
    text = repr(_hidden(url))
    return text if len(text) <= 100 else text[:96] + "...'"


def _scheme_problem(url: str, shown: str) -> str | None:
    scheme, sep, _ = url.partition("://")
    if sep and scheme.lower() == "nfs" and scheme != "nfs":
        return f"The NFS URL {shown} must start with nfs:// in lower case (not {scheme}://)."
    if url.startswith("nfs://"):
        return None
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return (f"The NFS URL {shown} starts with {scheme}://; an NFS share is written nfs://server[:port]/export/path, "
                f"for example {EXAMPLE}.")
    if url.startswith("nfs:"):
        return f"The NFS URL {shown} must start with nfs:// (two slashes) followed by the server, as in {EXAMPLE}."
    if re.fullmatch(r"[^/:\s]+:/.*", url):
        # The kernel's mount syntax, "server:/export/path".
        server, _, path = url.partition(":")
        return f"The NFS URL {shown} is in mount syntax: write it as nfs://{server}{path}."
    return f"The NFS URL {shown} must start with nfs://, as in {EXAMPLE}."


def _character_problem(url: str) -> str | None:
    for ch in url:
        if ch == " ":
            return "contains a space: NFS URLs cannot hold spaces; rename the directory on the server or choose another."
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            return f"contains a control character (U+{ord(ch):04X}): retype it without it."
    if "?" in url:
        return ("has a query part ('?" + url.partition("?")[2][:40] + "'): options are not accepted in the URL; "
                "choose the NFS version in its own field and remove everything from the '?'.")
    if "#" in url:
        return "has a fragment part ('#...'): remove everything from the '#'."
    if "%" in url:
        return "contains '%' (a percent-encoded character): write the path as plain text; it may only hold letters, digits and - . _ ~ + , = : @."
    if "\\" in url:
        return "contains a backslash: separate the path's directories with '/'."
    for ch in url:
        if ord(ch) > 127:
            return f"contains the non-ASCII character {ch!r}: use only letters a-z, digits and - . _ ~ + , = : @ in the path."
    return None


def _authority(authority: str, shown: str) -> tuple[str | None, str, int]:
    if not authority:
        return f"The NFS URL {shown} names no server: write nfs://server/export/path.", "", 0
    host, port_text = authority, None
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return f"The NFS URL {shown} opens an IPv6 address with '[' but never closes it with ']'.", "", 0
        host = authority[1:end]
        after = authority[end + 1:]
        if after:
            if not after.startswith(":"):
                return f"The NFS URL {shown} has {after!r} after the IPv6 address: only ':port' may follow ']'.", "", 0
            port_text = after[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"The NFS URL {shown} has [{host}], which is not a valid IPv6 address.", "", 0
    else:
        if authority.count(":") > 1:
            return (f"The NFS URL {shown} has several ':' in the server part: write an IPv6 address in brackets, "
                    "as in nfs://[fd00::1]/export/path."), "", 0
        if ":" in authority:
            host, _, port_text = authority.partition(":")
        if not host:
            return f"The NFS URL {shown} names no server before the ':port': write nfs://server:port/export/path.", "", 0
        if not _valid_host(host):
            return (f"The NFS URL {shown} has the server {host!r}, which is neither a host name nor an IP address: "
                    "use letters, digits, '-' and '.' (for example nas01.example.com) or an address such as 192.0.2.10."), "", 0
    port = DEFAULT_NFS_PORT
    if port_text is not None:
        if port_text == "":
            return f"The NFS URL {shown} has a ':' but no port after it: give a port (such as 2049) or remove the ':'.", "", 0
        if not port_text.isdigit():
            return f"The NFS URL {shown} has the port {port_text!r}, which is not a number: give a port such as 2049.", "", 0
        port = int(port_text)
        if not 1 <= port <= 65535:
            return f"The NFS URL {shown} has the port {port}, which is out of range: a port is 1 to 65535 (NFS uses 2049).", "", 0
    return None, host, port


def _valid_host(host: str) -> bool:
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        return False
    return all(_HOST_LABEL.fullmatch(label) for label in name.split("."))


def _path(path: str, shown: str) -> tuple[str | None, str]:
    if path in ("", "/"):
        return (f"The NFS URL {shown} names no export path: add the exported directory after the server, "
                f"as in {EXAMPLE}."), ""
    if not path.startswith("/"):
        return f"The NFS URL {shown} has a relative path: the export path must start with '/'.", ""
    elements = path.rstrip("/").split("/")[1:]
    for element in elements:
        if element == "":
            return f"The NFS URL {shown} has an empty path element ('//'): write each directory once, separated by one '/'.", ""
        if element in (".", ".."):
            return (f"The NFS URL {shown} has a '{element}' element in its path: write the export path in full "
                    "without '.' or '..'."), ""
        for ch in element:
            if not (ch.isalnum() or ch in _PATH_PUNCTUATION):
                return (f"The NFS URL {shown} has the character {ch!r} in its path, which is not allowed: use letters, "
                        "digits and - . _ ~ + , = : @."), ""
    return None, "/" + "/".join(elements)
