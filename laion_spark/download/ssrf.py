"""SSRF guard: which IP addresses the downloader may connect to.

A crawler running on a cloud executor must never be steered (by a candidate URL or a
redirect) to the instance metadata service (169.254.169.254), the cluster's private
network or the machine itself. Every hop resolves the host, checks EVERY resolved address,
and then connects to a checked address (not the name again), so DNS rebinding between the
check and the connect cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(allow: Iterable[str] | None) -> list[IPNetwork]:
    """CIDRs from config (`download.allow_networks`); a bare address means /32 or /128."""
    return [ipaddress.ip_network(a.strip(), strict=False) for a in (allow or []) if a.strip()]


def _reason(addr: IPAddress) -> str | None:
    # order matters only for the message: the most telling reason first
    if addr.is_unspecified:
        return "unspecified address"
    if addr.is_loopback:
        return "loopback address"
    if addr.is_link_local:
        return "link-local address (cloud metadata range)"
    if addr.is_multicast:
        return "multicast address"
    if addr.is_reserved:
        return "reserved address"
    if addr.is_private:
        return "private address"
    if not addr.is_global:
        # shared address space 100.64/10, documentation ranges, ...
        return "non-global address"
    return None


def check_address(
    ip: str | IPAddress, allow_networks: Sequence[str | IPNetwork] = ()
) -> str | None:
    """Why connecting to `ip` is refused, or None when it is allowed.

    Refuses loopback, private (RFC 1918, fc00::/7), link-local (169.254/16 incl. the cloud
    metadata address, fe80::/10), multicast, reserved, unspecified and other non-global
    addresses, for IPv4 and IPv6 alike. IPv4-mapped (::ffff:a.b.c.d), 6to4 and Teredo IPv6
    addresses are judged by the IPv4 address they carry. `allow_networks` lists CIDRs that
    are allowed anyway (tests and the local demo allow 127.0.0.1/32).
    """
    try:
        addr = ipaddress.ip_address(str(ip).split("%", 1)[0])
    except ValueError:
        return f"not an IP address: {ip!r}"
    nets = [
        n if not isinstance(n, str) else ipaddress.ip_network(n, strict=False)
        for n in allow_networks
    ]
    candidates: list[IPAddress] = [addr]
    if isinstance(addr, ipaddress.IPv6Address):
        for inner in (addr.ipv4_mapped, addr.sixtofour, addr.teredo[1] if addr.teredo else None):
            if inner is not None:
                candidates.append(inner)
    for a in candidates:
        if any(a.version == n.version and a in n for n in nets):
            return None
    # an address wrapped in IPv6 is judged by the IPv4 it carries first (the telling reason)
    for a in candidates[1:] + candidates[:1]:
        r = _reason(a)
        if r:
            return f"{r} {a}" if a is addr else f"{r} {a} (inside {addr})"
    return None


def resolve(host: str, port: int) -> list[str]:
    """All addresses `host` resolves to (an IP literal resolves to itself)."""
    host = host.strip("[]")
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        ip = str(info[4][0])
        if ip not in seen:
            seen.append(ip)
    return seen


def check_host(
    host: str, port: int, allow_networks: Sequence[IPNetwork]
) -> tuple[list[str], str | None]:
    """(addresses, refusal reason or None). Any refused address refuses the host."""
    ips = resolve(host, port)
    if not ips:
        return [], "host resolves to no address"
    for ip in ips:
        r = check_address(ip, allow_networks)
        if r:
            return ips, r
    return ips, None
