"""Which image URLs may be fetched: http(s) to public addresses only (every redirect target
and every connection checked, so DNS answers cannot change in between); local files and private
hosts only when allowed."""

from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence


def resolve_host(host: str) -> list[str]:
    """The addresses ``host`` resolves to with the system resolver (an IP literal: itself).

    Raises:
        OSError: The name cannot be resolved (``socket.gaierror``).
    """
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public_address(address: str) -> bool:
    """Whether an IPv4/IPv6 address is a public unicast one: not loopback, private (RFC 1918,
    unique-local), link-local, multicast, reserved, unspecified or shared (CGNAT); IPv4 mapped
    into IPv6 (``::ffff:a.b.c.d``, 6to4) is judged by the IPv4 address it carries."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped if ip.ipv4_mapped is not None else ip.sixtofour
        if embedded is not None:
            return is_public_address(str(embedded))
    return ip.is_global and not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


class Refused(urllib.error.URLError):
    """A hop of a fetch that the ``UrlPolicy`` refuses (raised inside urllib, caught by the
    fetcher and counted as ``refused``)."""


class UrlPolicy:
    """Which URLs one fetch may reach, checked for the URL and again for every redirect target.

    Only http(s) URLs whose host resolves to public addresses (``is_public_address``) pass;
    with ``allow_local`` also ``file://`` URLs, bare paths and hosts on loopback, private or
    link-local addresses. The addresses each approved host resolved to are kept, and the
    connection goes to one of them (``connect``): a second DNS answer (DNS rebinding) is
    never used. Through a proxy from the environment (``http_proxy``...) the proxy resolves
    the host, so only the check applies.

    Args:
        resolver: Host name -> its addresses (``resolve_host``; tests inject a stub).
        allow_local: Also allow local files and non-public hosts.
    """

    def __init__(
        self, resolver: Callable[[str], Sequence[str]] = resolve_host, allow_local: bool = False
    ) -> None:
        self.resolver = resolver
        self.allow_local = allow_local
        self.addresses: dict[str, list[str]] = {}  # approved host -> its checked addresses
        self.proxy_hosts = {
            urllib.parse.urlsplit(p if "://" in p else f"http://{p}").hostname or ""
            for k, p in urllib.request.getproxies().items()
            if k != "no"
        }

    def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be fetched, or None (its host's addresses are then kept).

        Raises:
            OSError: The host cannot be resolved (DNS failure, offline): not a refusal.
        """
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in ("", "file"):
            return None if self.allow_local else "local file (allow_local is off)"
        if scheme not in ("http", "https"):
            return f"URL scheme {scheme!r} (only http and https are fetched)"
        host = urllib.parse.unquote(parts.hostname or "")  # as urllib connects to it
        if not host:
            return "no host in the URL"
        addresses = [str(a) for a in self.resolver(host)]
        if not addresses:
            raise OSError(f"{host} resolves to no address")
        if not self.allow_local:
            inside = [a for a in addresses if not is_public_address(a)]
            if inside:
                return (
                    f"host {host} resolves to the non-public address {inside[0]} (loopback, "
                    "private, link-local, multicast or reserved; allow_local is off)"
                )
        self.addresses[host.lower()] = addresses
        return None

    def connect(
        self,
        address: tuple[str, int],
        timeout: float | None = None,
        source_address: tuple[str, int] | None = None,
    ) -> socket.socket:
        """``socket.create_connection`` for ``http.client``: to an address checked for this
        host by ``refusal`` (or to a proxy from the environment), never a fresh DNS answer."""
        host, port = address
        checked = self.addresses.get(host.lower())
        if checked is None:
            if host.lower() in self.proxy_hosts:
                return socket.create_connection(address, timeout, source_address)
            raise Refused(f"connection to {host}, a host that was not checked")
        err: OSError = OSError(f"no address for {host}")
        for ip in checked:
            try:
                return socket.create_connection((ip, port), timeout, source_address)
            except OSError as e:
                err = e
        raise err


class _PinnedConnections:
    """Mixin for urllib's HTTP(S) handlers: connections connect through ``UrlPolicy.connect``."""

    def __init__(self, policy: UrlPolicy) -> None:
        super().__init__()
        self.policy = policy

    def do_open(self, http_class, req, **http_conn_args):  # urllib's handler API
        def connection(host: str, **kw) -> http.client.HTTPConnection:
            conn = http_class(host, **kw)
            # http.client opens its socket with this attribute (socket.create_connection)
            conn._create_connection = self.policy.connect
            return conn

        return super().do_open(connection, req, **http_conn_args)  # type: ignore[misc]


class _PinnedHTTPHandler(_PinnedConnections, urllib.request.HTTPHandler):
    pass


class _PinnedHTTPSHandler(_PinnedConnections, urllib.request.HTTPSHandler):
    pass


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL the ``UrlPolicy`` allows (each hop is checked)."""

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy

    def http_error_302(self, req, fp, code, msg, headers):  # urllib's handler API
        location = headers.get("location") or headers.get("uri")
        if location:  # urllib itself would follow ftp:// and refuse file:// as an HTTP error
            scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, location)).scheme
            if scheme.lower() not in ("http", "https"):
                fp.close()
                raise Refused(f"redirect to {location}: URL scheme {scheme!r}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # urllib's handler API
        refused = self.policy.refusal(newurl)
        if refused is not None:
            fp.close()
            raise Refused(f"redirect to {newurl}: {refused}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def opener(policy: UrlPolicy) -> urllib.request.OpenerDirector:
    """urllib's default http(s) opener (proxies from the environment, redirects, errors), with
    every hop checked and pinned by ``policy``; no ftp, file or data handlers."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        _PinnedHTTPHandler(policy),
        _PinnedHTTPSHandler(policy),
        urllib.request.HTTPDefaultErrorHandler(),
        _CheckedRedirects(policy),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener
