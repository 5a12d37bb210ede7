"""Where an event's `callback_url` and `source_url` may point, and reaching them without being
steered elsewhere.

The callback receives the whole batch result, so it goes only to hosts the operator listed
(`--callback-host`, `OPSFLOW_WEBHOOK_CALLBACK_HOSTS`); a download comes only from hosts listed
with `--allow-host`. An entry is a host name, an IP address or a network (`10.0.0.0/8`). Every
address the host resolves to must be public (not loopback, link-local, private, shared,
reserved, multicast or unspecified) unless it is inside a listed address or network: a listed
name that someone points at 127.0.0.1 or 169.254.169.254 is refused. The request connects to the
very address that was checked (the host name still goes in `Host` and TLS SNI/verification), so
a DNS answer that changes between check and connect leads nowhere.

Callbacks never follow redirects. Downloads follow at most `MAX_REDIRECTS`, each hop checked
like the first; they use ports 80 and 443 only, unless an entry names another port
(`files.example.com:8443`, `[::1]:8080`, `10.0.0.0/8:8080`), and a URL carrying a user name or
password (`user:pw@host`) is refused without being repeated.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flows.errors import ValidationError
from flows.files.webhook_http import Rejected

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


#: Ports a download may use without an entry naming its port.
STANDARD_PORTS = frozenset({80, 443})
MAX_REDIRECTS = 5
_BRACKETED = re.compile(r"\[([^\]]+)\](?::(\d+))?")


def _split_port(entry: str) -> tuple[str, int | None]:
    """`host:port`, `[v6]:port`, `net/len:port` -> (host, port); a bare IPv6 address has none."""
    bracketed = _BRACKETED.fullmatch(entry)
    if bracketed:
        host, port = bracketed.group(1), bracketed.group(2)
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        return entry, None
    if port is None:
        return host, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError(f"host entry {entry!r}: the port must be a number from 1 to 65535")
    return host, int(port)


@dataclass(frozen=True)
class CallbackHosts:
    """An allow-list of hosts: names, addresses and networks, each with extra ports it may use."""

    names: frozenset[str]
    networks: tuple[Network, ...]
    ports: frozenset[tuple[str, int]] = frozenset()  # (name, or network as text, port)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> CallbackHosts:
        names: set[str] = set()
        networks: list[Network] = []
        ports: set[tuple[str, int]] = set()
        for entry in entries:
            text, port = _split_port(entry.strip())
            text = text.strip("[]")
            if not text:
                continue
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                key = text.lower().rstrip(".")
                names.add(key)
            else:
                key = str(network)
                if network not in networks:
                    networks.append(network)
            if port is not None:
                ports.add((key, port))
        return cls(frozenset(names), tuple(networks), frozenset(ports))

    def listed(self, address: Address) -> bool:
        return any(address in network for network in self.networks)

    def port_listed(self, host: str, literal: Address | None, port: int) -> bool:
        if literal is None:
            return (host, port) in self.ports
        return any(
            literal in ipaddress.ip_network(key)
            for key, listed in self.ports
            if listed == port and "/" in key
        )

    def entries(self) -> list[str]:
        plain = sorted(self.names) + [str(n) for n in self.networks]
        return plain + sorted(f"[{key}]:{port}" for key, port in self.ports)


@dataclass(frozen=True)
class CheckedTarget:
    url: str
    host: str
    port: int
    addresses: tuple[str, ...]


def _public(address: Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class UrlUse:
    """How a URL of an event is checked: for a callback, or for a download."""

    field: str  # the event's field, for messages
    what: str  # "callback", "download"
    option: str  # the option that lists hosts
    status: int  # the answer when the host is refused
    restrict_ports: bool  # only STANDARD_PORTS unless an entry names the port
    refuse_userinfo: bool


CALLBACK = UrlUse("callback_url", "callback", "--callback-host", 400, False, False)
DOWNLOAD = UrlUse("source_url", "download", "--allow-host", 403, True, True)


def _resolve(host: str, port: int, use: UrlUse = CALLBACK) -> list[Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise Rejected(400, f"{use.what} host {host!r} does not resolve") from None
    found: list[Address] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in found:
            found.append(address)
    return found


def check_callback(url: Any, allowed: CallbackHosts) -> CheckedTarget:
    """The callback's host and the addresses it may be reached at, or Rejected(400) saying why."""
    return check_url(url, allowed, CALLBACK)


def check_url(url: Any, allowed: CallbackHosts, use: UrlUse) -> CheckedTarget:
    """The URL's host and the addresses it may be reached at, or Rejected saying why (never
    quoting the URL, which may carry a token)."""
    if not isinstance(url, str):
        raise Rejected(400, f"{use.field} must be an http(s) URL")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Rejected(400, f"{use.field} is not a valid URL") from None
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme not in ("http", "https") or not host:
        raise Rejected(400, f"{use.field} must be an http(s) URL")
    if use.refuse_userinfo and "@" in parts.netloc:
        raise Rejected(400, f"{use.field} must not carry a user name or password before its host")
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    listing = f"the {use.what} allow-list ({use.option})"
    if literal is None and host not in allowed.names:
        raise Rejected(use.status, f"{use.what} host {host!r} is not on {listing}")
    if literal is not None and not allowed.listed(literal):
        raise Rejected(use.status, f"{use.what} address {host} is not on {listing}")
    if use.restrict_ports and port not in STANDARD_PORTS and not allowed.port_listed(host, literal, port):
        raise Rejected(
            use.status,
            f"{use.what} port {port} of {host!r} is not on {listing}: only 80 and 443 unless listed",
        )
    addresses = [literal] if literal is not None else _resolve(host, port, use)
    for address in addresses:
        if not (_public(address) or allowed.listed(address)):
            raise Rejected(
                use.status,
                f"{use.what} host {host!r} resolves to {address}, a non-public address that is not "
                f"listed with {use.option}",
            )
    return CheckedTarget(url, host, port, tuple(str(a) for a in addresses))


def fetch_checked(
    url: str, allowed: CallbackHosts, timeout: float, sink: Callable[[bytes], None], use: UrlUse = DOWNLOAD
) -> None:
    """GET `url` into `sink`, connected to checked addresses only; each redirect (at most
    `MAX_REDIRECTS`) is checked again like the first URL. Rejected or RuntimeError on failure,
    with the host in the message, never the URL."""
    import httpx

    for _ in range(MAX_REDIRECTS + 1):
        target = check_url(url, allowed, use)
        original = httpx.URL(url)
        extensions = {"sni_hostname": target.host} if original.scheme == "https" else {}
        location = None
        last: Exception | None = None
        # trust_env=False: a proxy from the environment would connect on our behalf, unchecked.
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            for address in target.addresses:
                try:
                    with client.stream(
                        "GET",
                        original.copy_with(host=address),
                        headers={"Host": original.netloc.decode("ascii")},
                        extensions=extensions,
                    ) as response:
                        if response.is_redirect:
                            location = urllib.parse.urljoin(url, response.headers["location"])
                            break
                        if not response.is_success:
                            raise RuntimeError(
                                f"the {use.what} host {target.host!r} answered {response.status_code}"
                            )
                        for chunk in response.iter_bytes():
                            sink(chunk)
                        return
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing received: next address
                    last = exc
                    continue
                except httpx.HTTPError as exc:
                    raise RuntimeError(
                        f"the {use.what} from {target.host!r} failed: {type(exc).__name__}"
                    ) from None
        if location is None:
            raise RuntimeError(f"cannot reach the {use.what} host {target.host!r}: {last}")
        url = location
    raise Rejected(use.status, f"the {use.what} was redirected more than {MAX_REDIRECTS} times")


def post_checked(url: str, payload: dict[str, Any], allowed: CallbackHosts, timeout: float) -> int:
    """POST `payload` as JSON to `url` after checking it again, connected to a checked address."""
    import httpx

    target = check_callback(url, allowed)
    original = httpx.URL(url)
    extensions = {"sni_hostname": target.host} if original.scheme == "https" else {}
    last: Exception | None = None
    # trust_env=False: a proxy from the environment would connect on our behalf, unchecked.
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for address in target.addresses:
            try:
                response = client.post(
                    original.copy_with(host=address),
                    json=payload,
                    headers={"Host": original.netloc.decode("ascii")},
                    extensions=extensions,
                )
            except httpx.TransportError as exc:
                last = exc
                continue
            if not response.is_success:
                raise RuntimeError(
                    f"the callback answered {response.status_code} (redirects are not followed)"
                )
            return response.status_code
    raise RuntimeError(f"cannot reach the callback host {target.host!r}: {last}")
