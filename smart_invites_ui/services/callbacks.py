"""Signing and safe delivery of Cronofy-style callbacks.

* :func:`sign` / :func:`verify` implement the ``Cronofy-HMAC-SHA256`` header:
  ``base64(HMAC-SHA256(raw body, client secret))``; the header may carry several
  comma-separated values (secret rotation) and every comparison is constant time.
* :func:`deliver_callback` POSTs a signed body and never raises: every outcome
  is a :class:`DeliveryResult` saying whether it worked and whether to retry.

Unless ``allow_private`` is set, a callback may only reach public addresses.
The check happens when the socket is opened, on the addresses actually used:
the host name is resolved once, every address is vetted (one private answer
refuses the URL), the socket connects to a vetted IP literal, and the peer
address of the new socket is checked again before a byte is sent. The ``Host``
header, TLS SNI and certificate verification still use the host name, so DNS
rebinding between a check and the connect cannot slip through. Proxies and
redirects are never used.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import os
import random
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from socket import timeout as SocketTimeout
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family, create_connection

log = logging.getLogger(__name__)

__all__ = [
    "BACKOFF_BASE_SECONDS",
    "BACKOFF_CAP_SECONDS",
    "DeliveryResult",
    "MAX_CALLBACK_AGE",
    "SIGNATURE_HEADER",
    "backoff_seconds",
    "blocked_reason",
    "deliver_callback",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "Cronofy-HMAC-SHA256"
USER_AGENT = "smart-invites-ui"

#: Retries stop once the first attempt is older than this.
MAX_CALLBACK_AGE = timedelta(hours=24)
BACKOFF_BASE_SECONDS = 30.0
BACKOFF_CAP_SECONDS = 3600.0


# --------------------------------------------------------------------------- signing


def sign(body: bytes, secret: str) -> str:
    """``base64(HMAC-SHA256(body, secret))`` as sent in ``Cronofy-HMAC-SHA256``."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify(body: bytes, header_value: str | None, secrets: Iterable[str]) -> bool:
    """True when any comma-separated value of ``header_value`` matches ``body`` signed with any secret.

    Every value is compared with every (non-empty) secret using
    :func:`hmac.compare_digest`, without stopping at the first match.
    """
    if not header_value:
        return False
    if isinstance(body, str):
        body = body.encode("utf-8")
    values = [v.strip().encode("utf-8", "replace") for v in header_value.split(",")]
    values = [v for v in values if v]
    expected = [sign(body, s).encode("ascii") for s in secrets if s]
    if not values or not expected:
        return False
    matched = False
    for value in values:
        for candidate in expected:
            matched |= hmac.compare_digest(value, candidate)
    return matched


# --------------------------------------------------------------------------- backoff


def backoff_seconds(attempt: int) -> float:
    """Wait before retry number ``attempt`` (1 = after the first failure).

    Exponential with full jitter: uniform in ``[0, min(1 h, 30 s * 2**(attempt-1))]``.
    """
    exponent = min(max(int(attempt), 1) - 1, 32)
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * (2**exponent))
    return random.uniform(0, ceiling)


# --------------------------------------------------------------------------- address policy


class CallbackRefused(Exception):
    """The callback URL points somewhere we will not connect to."""


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def blocked_reason(address: str) -> str | None:
    """Why ``address`` may not receive callbacks (e.g. ``"private"``), or None when it is public."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unparseable"
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d reaches a.b.c.d
            candidates = [ip.ipv4_mapped]
        elif ip in _NAT64:  # 64:ff9b::a.b.c.d reaches a.b.c.d through a NAT64 gateway
            candidates = [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
        else:
            if ip.sixtofour is not None:
                candidates.insert(0, ip.sixtofour)
            if ip.teredo is not None:
                candidates[:0] = list(ip.teredo)
    for c in candidates:
        if c.is_loopback:
            return "loopback"
        if c.is_unspecified:
            return "unspecified"
        if c.is_link_local:
            return "link-local"
        if c.is_multicast:
            return "multicast"
        if c.is_reserved:
            return "reserved"
        if c.is_private:
            return "private"
        if isinstance(c, ipaddress.IPv6Address) and c.is_site_local:
            return "site-local"
        if not c.is_global:
            return "non-public"
    return None


def _resolve(host: str, port: int) -> list[str]:
    """IP addresses for ``host`` in getaddrinfo order, de-duplicated (module-level for tests)."""
    infos = socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


class _GuardedConnectionMixin:
    """Replaces urllib3's ``_new_conn``: resolve once, vet, connect to the vetted IP, vet the peer."""

    def _new_conn(self) -> socket.socket:  # type: ignore[override]
        host = self._dns_host  # type: ignore[attr-defined]  # the name as given (trailing dot kept)
        try:
            addresses = _resolve(host.strip("[]"), self.port)  # type: ignore[attr-defined]
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[attr-defined,arg-type]
        if not addresses:
            raise NameResolutionError(self.host, self, socket.gaierror("no addresses"))  # type: ignore[attr-defined,arg-type]
        for address in addresses:
            reason = blocked_reason(address)
            if reason:
                raise CallbackRefused(f"resolves to {reason} address {address}")
        last_error: Exception | None = None
        for address in addresses:
            try:
                sock = create_connection(
                    (address, self.port),  # type: ignore[attr-defined]
                    self.timeout,  # type: ignore[attr-defined]
                    source_address=self.source_address,  # type: ignore[attr-defined]
                    socket_options=self.socket_options,  # type: ignore[attr-defined]
                )
            except SocketTimeout as exc:
                last_error = ConnectTimeoutError(
                    self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"  # type: ignore[attr-defined]
                )
                last_error.__cause__ = exc
                continue
            except OSError as exc:
                last_error = NewConnectionError(self, f"Failed to establish a new connection: {exc}")  # type: ignore[arg-type]
                last_error.__cause__ = exc
                continue
            try:
                peer = str(sock.getpeername()[0])
            except OSError as exc:
                sock.close()
                last_error = NewConnectionError(self, f"Failed to establish a new connection: {exc}")  # type: ignore[arg-type]
                continue
            reason = blocked_reason(peer)
            if reason:
                sock.close()
                raise CallbackRefused(f"connected to {reason} address {peer}")
            return sock
        assert last_error is not None
        raise last_error


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """A requests adapter that only opens sockets to public addresses and never uses a proxy."""

    def init_poolmanager(self, *args, **kwargs) -> None:  # type: ignore[override]
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPConnectionPool,
            "https": _GuardedHTTPSConnectionPool,
        }

    def proxy_manager_for(self, proxy, **proxy_kwargs):  # type: ignore[override]
        raise CallbackRefused("proxies are not used for callbacks")


# --------------------------------------------------------------------------- delivery


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool  # 2xx
    retry: bool  # worth trying again later
    status_code: int | None
    error: str  # "" when ok


_NO_PROXIES = {"http": None, "https": None, "all": None}


def _find_refusal(exc: BaseException | None) -> CallbackRefused | None:
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, CallbackRefused):
            return e
        related = [e.__cause__, e.__context__, getattr(e, "reason", None), *getattr(e, "args", ())]
        stack.extend(r for r in related if isinstance(r, BaseException))
    return None


def _connection_reason(exc: BaseException) -> str:
    text = str(exc)
    lowered = text.lower()
    if "name or service not known" in lowered or "nameresolution" in lowered or "failed to resolve" in lowered:
        return "could not resolve host"
    if "connection refused" in lowered:
        return "connection refused"
    if "connection reset" in lowered or "connection aborted" in lowered:
        return "connection reset"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error"
    return f"connection error: {text[:200]}"


def _fmt_seconds(value: float) -> str:
    return f"{value:g}s"


def deliver_callback(
    url: str,
    body: bytes,
    signature: str,
    *,
    allow_private: bool,
    timeout: float = 10.0,
    session: requests.Session | None = None,
) -> DeliveryResult:
    """POST a signed callback; never raises.

    ``retry`` is True for network errors, timeouts, 5xx and 429; False for other
    4xx, any 3xx (redirects are not followed) and refused URLs. Unless
    ``allow_private``, only public addresses are contacted (see module doc). A
    given ``session`` gets the guarded adapter mounted for ``http://`` and
    ``https://`` when ``allow_private`` is False.
    """
    try:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            return DeliveryResult(False, False, None, "refused: not an absolute http(s) URL")
        parts.port  # noqa: B018 - ValueError on a bad port
    except (ValueError, TypeError, AttributeError):
        return DeliveryResult(False, False, None, "refused: invalid URL")

    own_session = session is None
    try:
        if own_session:
            session = requests.Session()
            # No environment proxies or .netrc; a CA bundle named in the environment still counts.
            session.trust_env = False
            session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        assert session is not None
        if not allow_private:
            if not isinstance(session.get_adapter(url), GuardedAdapter):
                session.mount("http://", GuardedAdapter())
                session.mount("https://", GuardedAdapter())
            if not isinstance(session.get_adapter(url), GuardedAdapter):
                return DeliveryResult(False, False, None, "refused: session adapter is not guarded")
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            SIGNATURE_HEADER: signature,
            "User-Agent": USER_AGENT,
        }
        response = session.post(
            url,
            data=body,
            headers=headers,
            timeout=timeout,
            allow_redirects=False,
            stream=True,  # the body is never read: a huge or endless one costs nothing
            proxies=dict(_NO_PROXIES),
        )
        try:
            code = response.status_code
        finally:
            response.close()
    except requests.exceptions.Timeout:
        return DeliveryResult(False, True, None, f"timeout after {_fmt_seconds(timeout)}")
    except BaseException as exc:  # noqa: BLE001 - never raise, but let interpreter exits through
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        refusal = _find_refusal(exc)
        if refusal is not None:
            return DeliveryResult(False, False, None, f"refused: {refusal}")
        if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                            requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader)):
            return DeliveryResult(False, False, None, f"refused: invalid request: {str(exc)[:200]}")
        if isinstance(exc, requests.exceptions.ConnectionError):
            return DeliveryResult(False, True, None, _connection_reason(exc))
        if isinstance(exc, requests.exceptions.RequestException):
            return DeliveryResult(False, True, None, f"request failed: {str(exc)[:200]}")
        log.exception("unexpected error delivering callback to %s", url)
        return DeliveryResult(False, True, None, f"unexpected error: {type(exc).__name__}")
    finally:
        if own_session and session is not None:
            session.close()

    if 200 <= code < 300:
        return DeliveryResult(True, False, code, "")
    if 300 <= code < 400:
        return DeliveryResult(False, False, code, f"HTTP {code} (redirects are not followed)")
    if code == 429 or code >= 500:
        return DeliveryResult(False, True, code, f"HTTP {code}")
    return DeliveryResult(False, False, code, f"HTTP {code}")
