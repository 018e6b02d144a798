"""The egress policy: which addresses Steward may connect to for the URLs admins configure.

Deployment `api_base`s, budget webhooks and the health check all make Steward open connections to
URLs that an organisation's admin typed in. Without a policy those reach whatever the server can:
the cloud metadata service (169.254.169.254), Redis and PostgreSQL on loopback, the private
network. So the policy refuses addresses that are not globally routable, unless
`STEWARD_EGRESS_ALLOW_PRIVATE` is on (the development default: the development upstream listens on
127.0.0.1) or the host or address is listed in `STEWARD_EGRESS_ALLOWED_HOSTS` (an operator's vLLM
on 10.0.0.5).

It is enforced when a connection is opened, on the address it is opened to: a host name is
resolved once, each address is checked and the connection goes to a checked address, never to the
name. Checking the name at save time and connecting by name later would let DNS answer with a
public address for the check and 127.0.0.1 for the connection (DNS rebinding); legacy numeric forms
(`2130706433`, `0x7f.1`) are what the resolver makes of them. Redirects are not followed by any of
the clients here, so a public URL cannot send a request on to a private one either.

The connectors for each HTTP client live here: `aresolve` for the proxy's own client
(`proxy.httpclient`), `httpx_transport` for litellm and the openai SDK, `requests_session` for
webhooks and the health check.

An HTTP proxy named in the environment (HTTPS_PROXY, ...) is the operator's choice and is trusted:
requests through it are checked only for a literal address in the URL, the proxy resolves names.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore
import httpx
import requests
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3 import connection as u3_connection
from urllib3 import connectionpool
from urllib3.util import connection as u3_util

from core.conf import hot
from core.errors import ApplicationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Not globally routable (IANA's special-purpose registries), written out rather than taken from
# `is_global`: Python 3.11 before 3.11.10 misses several of these, and multicast counts as global.
_NOT_GLOBAL: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local: cloud metadata services
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
        "::/96",  # unspecified, loopback and the deprecated IPv4-compatible addresses
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments (Teredo included)
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
        "fc00::/7",  # unique-local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class EgressDenied(ApplicationError):
    """A connection the egress policy refuses. The message names the host and the address: it is
    for the log and the request log, not for API clients (who could map the network with it)."""

    status = 502
    code = "egress_denied"

    def __init__(self, *, host: str, address: str, reason: str = "not a public address"):
        super().__init__(f"egress to {host} ({address}) refused: {reason}")
        self.host = host
        self.address = address


def address_is_private(address: IPAddress) -> bool:
    """True for an address that is not globally routable (IPv4 inside IPv6 judged as the IPv4 it carries)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return address_is_private(embedded)
    return any(address in network for network in _NOT_GLOBAL if network.version == address.version)


def _normalise_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def parse_address(host: str) -> IPAddress | None:
    """The address a host literally is, or None for a name (the numeric IPv4 forms such as
    `2130706433` and `0x7f.1` are names here: the resolver turns them into addresses)."""
    try:
        return ipaddress.ip_address(_normalise_host(host).split("%", 1)[0])
    except ValueError:
        return None


def _legacy_ipv4(host: str) -> IPAddress | None:
    # What inet_aton (and so getaddrinfo) makes of `2130706433`, `0x7f.1`, `127.1` or `0177.0.0.1`:
    # known without asking DNS, so a save can refuse it.
    host = _normalise_host(host)
    if not host or any(c not in "0123456789abcdefx." for c in host) or not host[0].isdigit():
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    allow_private: bool
    names: frozenset[str]  # host names allowed whatever they resolve to
    suffixes: tuple[str, ...]  # ".example.com" from "*.example.com"
    networks: tuple[IPNetwork, ...]  # addresses allowed although private

    @classmethod
    def build(cls, *, allow_private: bool, allowed_hosts) -> EgressPolicy:
        if isinstance(allowed_hosts, str):
            allowed_hosts = allowed_hosts.split(",")
        names, suffixes, networks = set(), [], []
        for entry in (_normalise_host(e) for e in allowed_hosts or ()):
            if not entry:
                continue
            if entry.startswith("*."):
                suffixes.append(entry[1:])
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry)
        return cls(bool(allow_private), frozenset(names), tuple(suffixes), tuple(networks))

    def host_allowed(self, host: str) -> bool:
        """The operator listed this host name (or its domain): any address it resolves to is allowed."""
        host = _normalise_host(host)
        return host in self.names or host.endswith(self.suffixes)

    def address_allowed(self, address: IPAddress) -> bool:
        if self.allow_private or not address_is_private(address):
            return True
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks if network.version == address.version)

    def filter(self, host: str, addresses: list[str]) -> list[str]:
        """The addresses of `host` that may be connected to; EgressDenied when none may."""
        if self.allow_private or self.host_allowed(host):
            return addresses
        allowed = [a for a in addresses if self.address_allowed(ipaddress.ip_address(a.split("%", 1)[0]))]
        if not allowed:
            raise EgressDenied(host=host, address=", ".join(addresses[:4]) or "no address")
        return allowed

    def refusal(self, host: str) -> str | None:
        """Why a URL with this host may not be saved, judged without DNS: a literal address, a legacy
        numeric form or `localhost` that the policy refuses. None when the host may be saved (names are
        checked when connections are opened)."""
        if self.allow_private or self.host_allowed(host):
            return None
        name = _normalise_host(host)
        if name == "localhost" or name.endswith(".localhost"):
            return f"{host} is a loopback host name"
        address = parse_address(host) or _legacy_ipv4(host)
        if address is not None and not self.address_allowed(address):
            return f"{host} is not a public address"
        return None


_policy_cache: tuple[tuple, EgressPolicy] | None = None


def policy() -> EgressPolicy:
    """The policy the settings describe (rebuilt when a test changes them)."""
    global _policy_cache
    key = (hot.STEWARD_EGRESS_ALLOW_PRIVATE, hot.STEWARD_EGRESS_ALLOWED_HOSTS)
    cached = _policy_cache
    if cached is None or cached[0] != key:
        cached = _policy_cache = (key, EgressPolicy.build(allow_private=key[0], allowed_hosts=key[1]))
    return cached[1]


def url_refusal(url: str) -> str | None:
    """Why `url` may not be saved under the policy (see `EgressPolicy.refusal`), or None."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None  # not a URL: the caller's own validation says so
    return policy().refusal(host) if host else None


def literal_check(host: str) -> None:
    """EgressDenied for a host the policy refuses without asking DNS (see `EgressPolicy.refusal`):
    all that can be checked of a request an HTTP proxy makes for Steward."""
    reason = policy().refusal(host)
    if reason is not None:
        raise EgressDenied(host=host, address=host, reason=reason)


def _unique(infos) -> list[str]:
    return list(dict.fromkeys(info[4][0] for info in infos))


def resolve(host: str, port: int) -> list[str]:
    """The addresses to connect to for `host`, each allowed by the policy (EgressDenied if none is,
    OSError if the name does not resolve). Connect to these, not to `host`."""
    rules = policy()
    if parse_address(host) is not None:
        return rules.filter(host, [_normalise_host(host)])
    if rules.allow_private:
        return [host]  # nothing to check: let the connection resolve it, as it always did
    return rules.filter(host, _unique(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))


async def aresolve(host: str, port: int) -> list[str]:
    """`resolve` without blocking the event loop."""
    rules = policy()
    if parse_address(host) is not None:
        return rules.filter(host, [_normalise_host(host)])
    if rules.allow_private:
        return [host]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return rules.filter(host, _unique(infos))


# --- httpx (litellm, the openai SDK) ---------------------------------------------------------------


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's asyncio backend, connecting only to addresses the policy allows."""

    def __init__(self):
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            async with asyncio.timeout(timeout):
                addresses = await aresolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except (EgressDenied, OSError) as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        error = None
        for address in addresses:
            try:
                return await self._backend.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
        raise error

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError("unix sockets are not reachable under the egress policy")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with connections through the policy, and no redirects: the clients that
    litellm and the openai SDK build follow them, so the Location of a 3xx is dropped here and the
    3xx itself is the answer (each hop would be checked, but an upstream should not choose where
    Steward sends a request and its credentials)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if 300 <= response.status_code < 400 and "location" in response.headers:
            del response.headers["location"]
        return response


def httpx_transport(**kwargs) -> httpx.AsyncHTTPTransport:
    """An httpx.AsyncHTTPTransport (same arguments) whose connections go through the policy."""
    transport = CheckedTransport(**kwargs)
    pool = transport._pool
    if not hasattr(pool, "_network_backend"):
        # httpcore changed how a pool holds its backend: fail closed rather than connect unchecked.
        raise RuntimeError("httpcore's connection pool has no _network_backend: the egress check cannot be installed")
    pool._network_backend = CheckedBackend()
    return transport


# --- requests (webhooks, the health check) -------------------------------------------------------


def _new_conn(conn) -> socket.socket:
    # EgressDenied passes through urllib3 and requests unwrapped: callers tell it apart.
    try:
        addresses = resolve(conn._dns_host, conn.port)
    except socket.gaierror as exc:
        raise u3_connection.NameResolutionError(conn.host, conn, exc) from exc
    error: OSError | None = None
    for address in addresses:
        try:
            return u3_util.create_connection(
                (address, conn.port),
                conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except OSError as exc:
            error = exc
    raise u3_connection.NewConnectionError(conn, f"Failed to establish a new connection: {error}") from error


class _CheckedHTTPConnection(u3_connection.HTTPConnection):
    _new_conn = _new_conn


class _CheckedHTTPSConnection(u3_connection.HTTPSConnection):
    _new_conn = _new_conn


class _CheckedHTTPPool(connectionpool.HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(connectionpool.HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class CheckedAdapter(HTTPAdapter):
    """requests' adapter with connections that go through the policy."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedHTTPPool, "https": _CheckedHTTPSPool}

    def send(self, request, **kwargs):
        # Through an environment proxy the proxy resolves names; a literal address is still checked.
        if select_proxy(request.url, kwargs.get("proxies") or {}):
            literal_check(urlsplit(request.url).hostname or "")
        return super().send(request, **kwargs)


def requests_session() -> requests.Session:
    """A requests.Session whose connections go through the policy. Pass `allow_redirects=False`:
    a redirect is a new request the caller should decide about (these never follow one)."""
    session = requests.Session()
    adapter = CheckedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
