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


# Refused blocks, from IANA's IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890 and
# the RFCs that added to it up to 2024), every block there that is not globally reachable,
# plus multicast, broadcast and the deprecated site-local range, which the registries keep
# elsewhere. A few anycast service addresses IANA marks reachable sit inside refused blocks
# (192.0.0.9/10, 2001:1::1-3, AS112 is not refused): no web server lives there. First match
# names the reason. Wrapped IPv4 (IPv4-mapped, NAT64 64:ff9b::/96, 6to4, Teredo) is judged by
# the IPv4 address it carries (check_address).
_V4_REFUSED = [
    ("0.0.0.0/32", "unspecified address"),
    ("0.0.0.0/8", "'this network' address (RFC 791)"),
    ("10.0.0.0/8", "private address (RFC 1918)"),
    ("100.64.0.0/10", "non-global shared address space (carrier-grade NAT, RFC 6598)"),
    ("127.0.0.0/8", "loopback address"),
    ("169.254.0.0/16", "link-local address (cloud metadata range)"),
    ("172.16.0.0/12", "private address (RFC 1918)"),
    ("192.0.0.0/24", "non-global IETF protocol assignment (RFC 6890)"),
    ("192.0.2.0/24", "documentation address (TEST-NET-1, RFC 5737)"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast (RFC 7526)"),
    ("192.168.0.0/16", "private address (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking address (RFC 2544)"),
    ("198.51.100.0/24", "documentation address (TEST-NET-2, RFC 5737)"),
    ("203.0.113.0/24", "documentation address (TEST-NET-3, RFC 5737)"),
    ("224.0.0.0/4", "multicast address"),
    ("255.255.255.255/32", "limited broadcast address"),
    ("240.0.0.0/4", "reserved address (RFC 1112)"),
]
_V6_REFUSED = [
    ("::/128", "unspecified address"),
    ("::1/128", "loopback address"),
    ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation address (RFC 8215)"),
    ("100::/64", "discard-only address (RFC 6666)"),
    ("100:0:0:1::/64", "dummy IPv6 prefix (RFC 9780)"),
    ("2001::/32", "Teredo address (RFC 4380)"),
    ("2001:db8::/32", "documentation address (RFC 3849)"),
    ("2001::/23", "non-global IETF protocol assignment (RFC 2928)"),
    ("3fff::/20", "documentation address (RFC 9637)"),
    ("5f00::/16", "segment routing SID (RFC 9602)"),
    ("fc00::/7", "private address (unique local, RFC 4193)"),
    ("fe80::/10", "link-local address"),
    ("fec0::/10", "site-local address (deprecated, RFC 3879)"),
    ("ff00::/8", "multicast address"),
]
_REFUSED: dict[int, list[tuple[IPNetwork, str]]] = {
    4: [(ipaddress.ip_network(n), why) for n, why in _V4_REFUSED],
    6: [(ipaddress.ip_network(n), why) for n, why in _V6_REFUSED],
}
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _reason(addr: IPAddress) -> str | None:
    for net, why in _REFUSED[addr.version]:
        if addr in net:
            return why
    if addr.version == 6 and addr not in _GLOBAL_UNICAST_V6:
        return "reserved address (outside 2000::/3, IPv6's global unicast space)"
    # Python's own tables, for what a newer registry entry adds
    if addr.is_reserved:
        return "reserved address"
    if not addr.is_global:
        return "non-global address"
    return None


def _carried_ipv4(addr: IPAddress) -> tuple[ipaddress.IPv4Address | None, bool]:
    """(the IPv4 address an IPv6 address carries, whether it stands for that address alone):
    IPv4-mapped and NAT64 (64:ff9b::/96, how DNS64 gives IPv6-only hosts IPv4 sites) are
    only that IPv4 address; 6to4 and Teredo are IPv6 addresses of their own too."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None, False
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped, True
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF), True
    if addr.sixtofour is not None:
        return addr.sixtofour, False
    if addr.teredo is not None:
        return addr.teredo[1], False
    return None, False


def check_address(
    ip: str | IPAddress, allow_networks: Sequence[str | IPNetwork] = ()
) -> str | None:
    """Why connecting to `ip` is refused, or None when it is allowed.

    Refuses every block of IANA's special-purpose registries that is not globally
    reachable (loopback, private RFC 1918 and fc00::/7, link-local 169.254/16 with the
    cloud metadata address and fe80::/10, shared 100.64/10, documentation, benchmarking,
    6to4 relay, discard, Teredo, ...), multicast, broadcast, reserved, unspecified, the
    deprecated site-local fec0::/10 and IPv6 outside 2000::/3, for IPv4 and IPv6 alike;
    then anything Python's `ipaddress` does not call global. IPv4-mapped (::ffff:a.b.c.d),
    NAT64 (64:ff9b::a.b.c.d), 6to4 and Teredo IPv6 addresses are judged by the IPv4
    address they carry. `allow_networks` lists CIDRs that are allowed anyway (tests and
    the local demo allow 127.0.0.1/32).
    """
    try:
        addr = ipaddress.ip_address(str(ip).split("%", 1)[0])
    except ValueError:
        return f"not an IP address: {ip!r}"
    nets = [
        n if not isinstance(n, str) else ipaddress.ip_network(n, strict=False)
        for n in allow_networks
    ]
    inner, only = _carried_ipv4(addr)
    candidates: list[IPAddress] = [addr] if inner is None else [addr, inner]
    for a in candidates:
        if any(a.version == n.version and a in n for n in nets):
            return None
    # an address wrapped in IPv6 is judged by the IPv4 it carries first (the telling
    # reason), but a Teredo address by its own block first
    if inner is None:
        judged: list[IPAddress] = [addr]
    elif only:
        judged = [inner]
    else:
        judged = (
            [addr, inner]
            if isinstance(addr, ipaddress.IPv6Address) and addr.teredo
            else [inner, addr]
        )
    for a in judged:
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
