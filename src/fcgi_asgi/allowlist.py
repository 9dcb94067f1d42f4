"""Which TCP peers may connect: ``--allow`` and FCGI_WEB_SERVER_ADDRS.

FastCGI 1.0 (section 3.2) names FCGI_WEB_SERVER_ADDRS: a comma-separated list
of the web servers' IP addresses, the only peers an application accepts over
TCP. ``--allow ADDR[/PREFIX]`` adds networks. Unix-socket peers are governed by
the socket file's permissions instead and always pass.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .config import ConfigError, opt

__all__ = ["AllowList", "parse_web_server_addrs"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_web_server_addrs(value: str) -> list[str]:
    """Split FCGI_WEB_SERVER_ADDRS (commas, optional blanks) into addresses."""
    return [part.strip() for part in value.split(",") if part.strip()]


class AllowList:
    """A set of networks; an empty list allows everybody."""

    def __init__(self, entries: Iterable[str]) -> None:
        networks: list[Network] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ConfigError(
                    f"{opt('allow')} / FCGI_WEB_SERVER_ADDRS: {entry!r} "
                    "is not an IP address or network"
                ) from None
        self.networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def allows(self, host: str) -> bool:
        """True when ``host`` (a peer IP as a string) is in one of the networks."""
        if not self.networks:
            return True
        try:
            addr = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # ::ffff:127.0.0.1 on a dual-stack socket
        return any(addr in net for net in self.networks)

    def __str__(self) -> str:
        return ", ".join(str(n) for n in self.networks) or "everybody"
