"""Callback signing and safe delivery (smart_invites_ui.services.callbacks)."""
from __future__ import annotations

import hmac
import shutil
import socket
import ssl
import subprocess
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pycronofy
import pytest
import requests

from smart_invites_ui.services import callbacks
from smart_invites_ui.services.callbacks import (
    MAX_CALLBACK_AGE,
    DeliveryResult,
    backoff_seconds,
    blocked_reason,
    deliver_callback,
    sign,
    verify,
)

CRONOFY_SECRET = "CRN_NggYusqPGLxwjw5FHOJYOqSrTPNXy8WQf14OID"
CRONOFY_BODY = b'{"example":"well-known"}'
CRONOFY_SIGNATURE = "5DxentQi5YSXODEzTVv06sRwJ3pULIz1KrYv20qxEK0="

BODY = b'{"notification":{"type":"smart_invite"},"smart_invite":{"smart_invite_id":"inv-1","caf\xc3\xa9":1}}'


# --------------------------------------------------------------------------- signing


def test_cronofy_test_vector():
    assert sign(CRONOFY_BODY, CRONOFY_SECRET) == CRONOFY_SIGNATURE
    assert verify(CRONOFY_BODY, CRONOFY_SIGNATURE, [CRONOFY_SECRET])


def test_pycronofy_accepts_our_signature():
    client = pycronofy.Client(client_secret=CRONOFY_SECRET)
    assert client.hmac_valid(sign(CRONOFY_BODY, CRONOFY_SECRET), CRONOFY_BODY.decode())
    body = '{"notification":{"type":"smart_invite"},"smart_invite":{"smart_invite_id":"x"}}'
    sig = sign(body.encode(), CRONOFY_SECRET)
    assert client.hmac_valid(sig, body)
    assert client.hmac_valid(f"bogus,{sig}", body)
    assert not client.hmac_valid(sign(body.encode(), "other"), body)


def test_verify_rejects():
    assert not verify(CRONOFY_BODY, None, [CRONOFY_SECRET])
    assert not verify(CRONOFY_BODY, "", [CRONOFY_SECRET])
    assert not verify(CRONOFY_BODY, CRONOFY_SIGNATURE, [])
    assert not verify(CRONOFY_BODY, CRONOFY_SIGNATURE, ["wrong"])
    assert not verify(CRONOFY_BODY + b" ", CRONOFY_SIGNATURE, [CRONOFY_SECRET])
    assert not verify(CRONOFY_BODY, "ünïcödé,\x00", [CRONOFY_SECRET])
    # an empty configured secret never validates anything
    assert not verify(CRONOFY_BODY, sign(CRONOFY_BODY, ""), [""])


def test_verify_multi_value_header_and_rotation():
    old, new = "old-secret", "new-secret"
    sig_old, sig_new = sign(BODY, old), sign(BODY, new)
    assert verify(BODY, f"{sig_old},{sig_new}", [new])
    assert verify(BODY, f"garbage, {sig_new} ", [new])
    assert verify(BODY, sig_old, [new, old])
    assert not verify(BODY, f"garbage,{sign(BODY, 'x')}", [new, old])


def test_verify_compares_every_pair_in_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(callbacks.hmac, "compare_digest", counting)
    sig = sign(BODY, "s1")
    assert verify(BODY, f"{sig},x,y", ["s1", "s2"])
    assert len(calls) == 6  # 3 values x 2 secrets, no early exit


# --------------------------------------------------------------------------- backoff


def test_backoff_full_jitter_bounds():
    for attempt in range(1, 40):
        ceiling = min(3600, 30 * 2 ** (attempt - 1))
        for _ in range(20):
            assert 0 <= backoff_seconds(attempt) <= ceiling
    assert MAX_CALLBACK_AGE == timedelta(hours=24)


def test_backoff_ceiling(monkeypatch):
    monkeypatch.setattr(callbacks.random, "uniform", lambda a, b: b)
    assert [backoff_seconds(n) for n in (1, 2, 3, 7, 8, 50, 10**6)] == [30, 60, 120, 1920, 3600, 3600, 3600]
    assert backoff_seconds(0) == 30


def test_backoff_is_jittered():
    values = {backoff_seconds(5) for _ in range(50)}
    assert len(values) > 40


# --------------------------------------------------------------------------- address policy


@pytest.mark.parametrize("address, reason", [
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.5", "private"),
    ("172.16.3.4", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("240.0.0.1", "reserved"),
    ("fc00::1", "private"),
    ("100.64.0.1", "non-public"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.5", "private"),
    ("::ffff:169.254.169.254", "link-local"),
    ("2002:0a00:0005::1", "private"),  # 6to4 wrapping 10.0.0.5
    ("64:ff9b::a00:5", "private"),  # NAT64 wrapping 10.0.0.5
    ("not-an-ip", "unparseable"),
])
def test_blocked_addresses(address, reason):
    assert blocked_reason(address) == reason


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_allowed(address):
    assert blocked_reason(address) is None


# --------------------------------------------------------------------------- a real local server


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        self.server.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if self.path == "/slow":
            time.sleep(1.5)
            code = 200
        elif self.path.startswith("/status/"):
            code = int(self.path.rsplit("/", 1)[1])
        else:
            code = 200
        payload = b'{"ok":true}'
        self.send_response(code)
        if 300 <= code < 400:
            self.send_header("Location", "/ok")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received: list[dict] = []
        self.connections = 0

    def handle_error(self, request, client_address):  # a client that timed out and left: not a failure
        pass

    def verify_request(self, request, client_address):
        self.connections += 1
        return True


def _start(server):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    _start(srv)
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def test_delivers_exact_body_and_headers(server):
    sig = sign(BODY, "secret")
    result = deliver_callback(server.base + "/cb?x=1", BODY, sig, allow_private=True)
    assert result == DeliveryResult(ok=True, retry=False, status_code=200, error="")
    [req] = server.received
    assert req["path"] == "/cb?x=1"
    assert req["body"] == BODY
    assert req["headers"]["Cronofy-HMAC-SHA256"] == sig
    assert req["headers"]["Content-Type"] == "application/json; charset=utf-8"
    assert req["headers"]["User-Agent"] == "smart-invites-ui"
    assert verify(req["body"], req["headers"]["Cronofy-HMAC-SHA256"], ["secret"])
    assert pycronofy.Client(client_secret="secret").hmac_valid(
        req["headers"]["Cronofy-HMAC-SHA256"], req["body"].decode())


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
def test_private_refused_without_reaching_server(server, host):
    port = server.server_address[1]
    result = deliver_callback(f"http://{host}:{port}/cb", BODY, "sig", allow_private=False)
    assert result.ok is False and result.retry is False and result.status_code is None
    assert result.error.startswith("refused: ")
    assert "loopback" in result.error
    # prove nothing arrived: a later allowed delivery is the server's first connection
    assert deliver_callback(server.base + "/after", BODY, "sig", allow_private=True).ok
    assert server.connections == 1
    assert [r["path"] for r in server.received] == ["/after"]


def test_private_refused_with_given_session(server):
    with requests.Session() as session:
        result = deliver_callback(server.base + "/cb", BODY, "sig", allow_private=False, session=session)
    assert result.error.startswith("refused: ") and not result.retry
    assert server.received == []


def test_guarded_path_keeps_host_header(server, monkeypatch):
    """A 'public' name (resolver faked) is connected to by vetted IP, with Host kept."""
    port = server.server_address[1]
    real = blocked_reason
    monkeypatch.setattr(callbacks, "_resolve", lambda host, p: ["127.0.0.1"] if host == "callbacks.test" else [])
    monkeypatch.setattr(callbacks, "blocked_reason", lambda a: None if a == "127.0.0.1" else real(a))
    result = deliver_callback(f"http://callbacks.test:{port}/cb", BODY, "sig", allow_private=False)
    assert result.ok, result
    assert server.received[0]["headers"]["Host"] == f"callbacks.test:{port}"


def test_any_private_answer_refuses_before_connecting(monkeypatch):
    def no_connect(*a, **k):
        raise AssertionError("must not connect")

    monkeypatch.setattr(callbacks, "_resolve", lambda host, p: ["93.184.216.34", "10.0.0.5"])
    monkeypatch.setattr(callbacks, "create_connection", no_connect)
    result = deliver_callback("https://rebind.test/cb", BODY, "sig", allow_private=False)
    assert result == DeliveryResult(False, False, None, "refused: resolves to private address 10.0.0.5")


def test_peer_address_checked_before_any_byte(server, monkeypatch):
    """If the socket ends up connected to a private peer anyway, nothing is sent."""
    port = server.server_address[1]
    real_create = callbacks.create_connection
    monkeypatch.setattr(callbacks, "_resolve", lambda host, p: ["93.184.216.34"])
    monkeypatch.setattr(callbacks, "create_connection",
                        lambda addr, *a, **k: real_create(("127.0.0.1", port), *a, **k))
    result = deliver_callback(f"http://rebind.test:{port}/cb", BODY, "sig", allow_private=False)
    assert result == DeliveryResult(False, False, None, "refused: connected to loopback address 127.0.0.1")
    time.sleep(0.2)
    assert server.received == []


@pytest.mark.parametrize("code", [500, 502, 503, 429])
def test_retryable_statuses(server, code):
    result = deliver_callback(f"{server.base}/status/{code}", BODY, "sig", allow_private=True)
    assert result == DeliveryResult(False, True, code, f"HTTP {code}")


@pytest.mark.parametrize("code", [400, 401, 404, 410])
def test_permanent_statuses(server, code):
    result = deliver_callback(f"{server.base}/status/{code}", BODY, "sig", allow_private=True)
    assert result == DeliveryResult(False, False, code, f"HTTP {code}")


@pytest.mark.parametrize("code", [200, 201, 202, 204])
def test_success_statuses(server, code):
    result = deliver_callback(f"{server.base}/status/{code}", BODY, "sig", allow_private=True)
    assert result.ok and result.status_code == code and not result.retry and result.error == ""


def test_redirect_not_followed(server):
    result = deliver_callback(f"{server.base}/status/302", BODY, "sig", allow_private=True)
    assert (result.ok, result.retry, result.status_code) == (False, False, 302)
    assert "HTTP 302" in result.error
    assert [r["path"] for r in server.received] == ["/status/302"]


def test_timeout_is_retryable(server):
    started = time.monotonic()
    result = deliver_callback(f"{server.base}/slow", BODY, "sig", allow_private=True, timeout=0.3)
    assert time.monotonic() - started < 1.4
    assert result == DeliveryResult(False, True, None, "timeout after 0.3s")


def test_connection_refused_is_retryable():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    result = deliver_callback(f"http://127.0.0.1:{port}/cb", BODY, "sig", allow_private=True, timeout=2)
    assert (result.ok, result.retry, result.status_code) == (False, True, None)
    assert result.error == "connection refused"


def test_environment_proxy_is_ignored(server, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with requests.Session() as session:  # trust_env left on
        assert deliver_callback(server.base + "/p", BODY, "sig", allow_private=True, session=session).ok
    assert [r["path"] for r in server.received] == ["/p"]


@pytest.mark.parametrize("url", ["ftp://example.com/x", "/relative", "", "http://", "http://exa mple.com:99999/", None])
def test_bad_urls_refused_never_raise(url):
    result = deliver_callback(url, BODY, "sig", allow_private=False)
    assert not result.ok and not result.retry and result.error.startswith("refused")


def test_header_injection_never_raises(server):
    result = deliver_callback(server.base + "/cb", BODY, "abc\r\nX-Evil: 1", allow_private=True)
    assert not result.ok and not result.retry
    assert server.received == []


def test_unresolvable_host_is_retryable():
    result = deliver_callback("http://no-such-host.invalid/cb", BODY, "sig", allow_private=False, timeout=2)
    assert (result.ok, result.retry) == (False, True)


# --------------------------------------------------------------------------- TLS keeps the host name


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not available")
def test_https_keeps_sni_and_certificate_check(tmp_path, monkeypatch):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=callbacks.test", "-addext", "subjectAltName=DNS:callbacks.test"],
        check=True, capture_output=True,
    )
    server_names = []
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.sni_callback = lambda sock, name, c: server_names.append(name)
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    _start(srv)
    port = srv.server_address[1]
    real = blocked_reason
    monkeypatch.setattr(callbacks, "_resolve", lambda host, p: ["127.0.0.1"])
    monkeypatch.setattr(callbacks, "blocked_reason", lambda a: None if a == "127.0.0.1" else real(a))
    try:
        with requests.Session() as session:
            session.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment overrides verify
            session.verify = str(cert)
            ok = deliver_callback(f"https://callbacks.test:{port}/tls", BODY, "sig",
                                  allow_private=False, session=session)
            # the same server under another name fails certificate verification
            bad = deliver_callback(f"https://other.test:{port}/tls", BODY, "sig",
                                   allow_private=False, session=session)
    finally:
        srv.shutdown()
        srv.server_close()
    assert ok.ok, ok
    assert server_names[0] == "callbacks.test"
    assert srv.received[0]["headers"]["Host"] == f"callbacks.test:{port}"
    assert (bad.ok, bad.retry) == (False, True) and bad.error == "TLS error"
    assert len(srv.received) == 1
