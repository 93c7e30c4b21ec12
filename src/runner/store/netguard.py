"""Which addresses a pull may connect to, and HTTP clients that hold to it.

A pull reference comes from whoever can reach the API, so a URL, a Hugging Face endpoint or a
registry must not become a way into the server's own network: loopback, link-local (cloud
metadata at 169.254.169.254), private, shared (CGNAT), multicast, unspecified and reserved
addresses are refused unless the operator allowed them (`allow_private_pulls` for URL and
Hub pulls, `insecure_registries` for a registry by name).

The check runs twice, so neither a redirect nor DNS can slip past it: on every request of a
redirect chain (the URL's host, resolved), and when a connection is opened, on the addresses
the name resolves to right then; the connection then goes to one of exactly those addresses.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from .errors import PullRefused

__all__ = ["AddressPolicy", "PullRefused", "guarded_client", "is_public_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # an IPv4 address behind a NAT64 gateway

ALLOW_PRIVATE_SETTING = "RUNNER_ALLOW_PRIVATE_PULLS=1 (--allow-private-pulls)"
INSECURE_REGISTRIES_SETTING = "RUNNER_INSECURE_REGISTRIES (--insecure-registries)"


def is_public_address(address: str | IPAddress) -> bool:
    """True only for a globally routable unicast address (pure: no I/O)."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        # ::ffff:10.0.0.1 and friends reach the IPv4 address inside them.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not is_public_address(embedded):
            return False
        if ip.scope_id:
            return False
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class AddressPolicy:
    """`allow_private`: every address is fine. Otherwise only public ones, and a refusal
    names `setting`, the knob that would allow it."""

    allow_private: bool = False
    setting: str = ALLOW_PRIVATE_SETTING

    def check(self, host: str, addresses: Iterable[str]) -> None:
        """Raise PullRefused if `host` (resolving to `addresses`) is off limits."""
        if self.allow_private:
            return
        found = list(addresses)
        if not found or not all(is_public_address(a) for a in found):
            raise PullRefused(
                f"refusing to pull from {host}: it is a loopback, link-local, private, "
                f"multicast or otherwise non-public address; set {self.setting} to allow it"
            )

    def check_host(self, host: str, port: int | None = None) -> list[str]:
        """Resolve `host` and check it; returns its addresses (empty when it cannot be
        resolved, which is left to the connection to report as unreachable)."""
        bare = host.strip("[]")
        try:
            ipaddress.ip_address(bare)
            found = [bare]
        except ValueError:
            try:
                infos = socket.getaddrinfo(bare, port or 443, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError):
                return []
            found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        self.check(host, found)
        return found


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's own backend, but a TCP connection goes only to addresses the policy
    accepted at the moment of connecting (no second DNS answer in between)."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self._policy.check_host(host, port)
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host}")
        error: Exception | None = None
        for address in addresses:
            try:
                return self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for pulls")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def guarded_client(policy: AddressPolicy, **kwargs: Any) -> httpx.Client:
    """An `httpx.Client` (same arguments) that connects only where `policy` allows, on
    every request and redirect. An HTTP proxy set in the environment is still used (the
    operator chose it); the per-request check on the URL's host applies then too."""

    def check_request(request: httpx.Request) -> None:
        policy.check_host(request.url.host, request.url.port)

    hooks = dict(kwargs.pop("event_hooks", None) or {})
    hooks["request"] = [check_request, *hooks.get("request", [])]
    client = httpx.Client(event_hooks=hooks, **kwargs)
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    if not hasattr(pool, "_network_backend"):  # fail closed if httpx changes its insides
        client.close()
        raise RuntimeError("this httpx version cannot guard pull connections")
    pool._network_backend = _GuardedBackend(policy)  # type: ignore[union-attr]
    return client
