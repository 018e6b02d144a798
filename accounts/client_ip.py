"""The address a web request comes from, as far as it can be believed.

`X-Forwarded-For` is written by whoever sends the request, so it counts only when the connection
comes from a proxy listed in STEWARD_TRUSTED_PROXIES (none by default). Then the right-most
forwarded address that is not itself a trusted proxy is the client: everything left of it was
written by the client and may be forged. Used by the login lock-out (django-axes'
AXES_CLIENT_IP_CALLABLE) and the sign-in audit, so a forged header can neither reset a lock-out
count nor put a made-up address into an organisation's audit trail.
"""

from __future__ import annotations

import functools
import ipaddress

from django.conf import settings


@functools.cache
def _trusted(networks: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n) for n in networks)


def _is_trusted(address: str, networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_ip_address(request) -> str | None:
    remote = request.META.get("REMOTE_ADDR") or None
    networks = _trusted(tuple(settings.STEWARD_TRUSTED_PROXIES))
    if remote is None or not networks or not _is_trusted(remote, networks):
        return remote
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    for address in reversed(forwarded):
        if not _is_trusted(address, networks):
            try:
                return str(ipaddress.ip_address(address))
            except ValueError:
                return remote  # garbage from the proxy chain: fall back to the proxy itself
    return remote
