"""Where an event's `callback_url` may point, and posting to it without being steered elsewhere.

The callback receives the whole batch result, so it goes only to hosts the operator listed
(`--callback-host`, `OPSFLOW_WEBHOOK_CALLBACK_HOSTS`). An entry is a host name, an IP address or
a network (`10.0.0.0/8`). Every address the host resolves to must be public (not loopback,
link-local, private, shared, reserved, multicast or unspecified) unless it is inside a listed
address or network: a listed name that someone points at 127.0.0.1 or 169.254.169.254 is
refused. The POST connects to the very address that was checked (the host name still goes in
`Host` and TLS SNI/verification), and redirects are not followed, so a DNS answer that changes
between check and connect, or a 30x to an internal host, leads nowhere.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flows.files.webhook_http import Rejected

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class CallbackHosts:
    names: frozenset[str]
    networks: tuple[Network, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> CallbackHosts:
        names: set[str] = set()
        networks: list[Network] = []
        for entry in entries:
            text = entry.strip().strip("[]")
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                names.add(text.lower().rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def listed(self, address: Address) -> bool:
        return any(address in network for network in self.networks)

    def entries(self) -> list[str]:
        return sorted(self.names) + [str(n) for n in self.networks]


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


def _resolve(host: str, port: int) -> list[Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise Rejected(400, f"callback host {host!r} does not resolve") from None
    found: list[Address] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in found:
            found.append(address)
    return found


def check_callback(url: Any, allowed: CallbackHosts) -> CheckedTarget:
    """The callback's host and the addresses it may be reached at, or Rejected(400) saying why."""
    if not isinstance(url, str):
        raise Rejected(400, "callback_url must be an http(s) URL")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Rejected(400, "callback_url is not a valid URL") from None
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme not in ("http", "https") or not host:
        raise Rejected(400, "callback_url must be an http(s) URL")
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is None and host not in allowed.names:
        raise Rejected(400, f"callback host {host!r} is not on the callback allow-list (--callback-host)")
    if literal is not None and not allowed.listed(literal):
        raise Rejected(400, f"callback address {host} is not on the callback allow-list (--callback-host)")
    addresses = [literal] if literal is not None else _resolve(host, port)
    for address in addresses:
        if not (_public(address) or allowed.listed(address)):
            raise Rejected(
                400,
                f"callback host {host!r} resolves to {address}, a non-public address that is not "
                "listed with --callback-host",
            )
    return CheckedTarget(url, host, port, tuple(str(a) for a in addresses))


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
