"""Shared fixtures: the app on SQLite or on PostgreSQL (TEST_DATABASE_URL), a
logged-in client, a real SMTP server on loopback, and small factories."""
from __future__ import annotations

import os
import re
import shutil
import socket
import threading
from datetime import datetime, timedelta, timezone
from email import message_from_bytes
from email.policy import default as default_policy

import pytest
from sqlalchemy import text

from smart_invites_ui import create_app
from smart_invites_ui.domain import EventData, InviteSource
from smart_invites_ui.extensions import db
from smart_invites_ui.models import Role
from smart_invites_ui.plain_sql import dispose_reads, read_engine
from smart_invites_ui.services import invites as invite_service
from smart_invites_ui.services import users as user_service

PASSWORD = "a long enough password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def database_url(tmp_path_factory) -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    return "sqlite:///" + str(tmp_path_factory.mktemp("db") / "test.sqlite3")


@pytest.fixture(scope="session")
def _schema(database_url, tmp_path_factory):
    """Build the schema once per run with the real migrations (``flask db upgrade``)."""
    from flask_migrate import upgrade

    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": _driver_url(database_url)})
    with app.app_context():
        db.session.execute(text("SELECT 1"))
        db.session.remove()
        if db.engine.dialect.name == "postgresql":
            with db.engine.begin() as conn:
                conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        upgrade()
    return True


def _driver_url(url: str) -> str:
    from smart_invites_ui.config import database_url

    return database_url(url, "/tmp")


def _clear(app) -> None:
    with app.app_context():
        tables = [t.name for t in reversed(db.metadata.sorted_tables)]
        if db.engine.dialect.name == "postgresql":
            with db.engine.begin() as conn:
                conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))
        else:
            with db.engine.begin() as conn:
                for table in tables:
                    conn.execute(text(f'DELETE FROM "{table}"'))


def make_app(database_url: str, **overrides):
    config = {
        "TESTING": True,
        "SECRET_KEY": "test-secret-key",
        "SQLALCHEMY_DATABASE_URI": _driver_url(database_url),
        "RATELIMIT_ENABLED": False,
        "SMTP_URL": "",
        "CRONOFY_CLIENT_SECRETS": ("test-cronofy-secret",),
        "ALLOW_PRIVATE_CALLBACK_URLS": True,
        "WORKER_POLL_SECONDS": 0.05,
    }
    config.update(overrides)
    app = create_app(config)

    def fresh_g():
        # Tests keep an app context pushed, which requests would share; in production
        # each request has its own, so give each request a fresh ``g`` (CSRF token, user)
        # before any other hook (the login check) looks at it.
        from flask import g

        g.__dict__.clear()

    app.before_request_funcs.setdefault(None, []).insert(0, fresh_g)
    return app


@pytest.fixture
def app(database_url, _schema):
    app = make_app(database_url)
    _clear(app)
    with app.app_context():
        yield app
        db.session.remove()
    dispose_reads(app)  # its own pool on a database server


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html) or re.search(
        r'"X-CSRFToken": "([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


class Auth:
    """Log in as a user made on the fly; ``post`` sends a form with a valid CSRF token."""

    def __init__(self, client):
        self.client = client
        self.user = None

    def login(self, email="staff@example.org", role=Role.STAFF, timezone_name="Europe/London"):
        self.user = user_service.find_by_email(email) or user_service.create_user(
            email, PASSWORD, role, name="Sam Staff", timezone=timezone_name)
        page = self.client.get("/login")
        response = self.client.post("/login", data={"email": email, "password": PASSWORD,
                                                    "csrf_token": csrf_from(page.get_data(as_text=True))})
        assert response.status_code == 302, response.get_data(as_text=True)
        return self.user

    def token(self) -> str:
        return csrf_from(self.client.get("/invites/new").get_data(as_text=True))

    def post(self, url, data=None, **kwargs):
        data = dict(data or {})
        data.setdefault("csrf_token", self.token())
        return self.client.post(url, data=data, **kwargs)


@pytest.fixture
def auth(client):
    return Auth(client)


def future(days=7, hour=9, minute=0) -> datetime:
    base = datetime.now(timezone.utc).replace(hour=hour, minute=minute, second=0, microsecond=0)
    return base + timedelta(days=days)


def make_event(**overrides) -> EventData:
    start = overrides.pop("start", future())
    values = dict(summary="Dental check-up", start=start, end=start + timedelta(minutes=30),
                  tzid="Europe/London", location="Room 3", description="Bring your forms.")
    values.update(overrides)
    return EventData(**values)


def make_invite(emails=("ann@example.org", "bob@example.org"), reference=None, **event_overrides):
    return invite_service.create_invite(
        event=make_event(**event_overrides),
        recipients=[invite_service.NewRecipient(e) for e in emails],
        smart_invite_id=reference, organizer_name="Riverside Clinic", source=InviteSource.DASHBOARD)


# --- a real SMTP server on loopback ----------------------------------------------------

class SmtpSink:
    def __init__(self):
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content or envelope.content))
        return "250 OK"

    def parsed(self):
        return [message_from_bytes(raw, policy=default_policy) for _, _, raw in self.messages]


@pytest.fixture
def statements_sent(app, monkeypatch):
    """On PostgreSQL, a function that runs ``action`` and returns the first word of each
    statement psycopg sent meanwhile, and "COMMIT" for each commit (round trips to the server
    are what the one-statement paths save). Skips the test on SQLite."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite statements cost no round trip")
    import psycopg

    with read_engine(app).connect():  # connected (the driver's first queries) before anything is counted
        pass

    def during(action) -> list[str]:
        sent: list[str] = []
        execute, commit = psycopg.Cursor.execute, psycopg.Connection.commit

        def recorded_execute(cursor, query, *args, **kwargs):
            sent.append(str(query).split(None, 1)[0])
            return execute(cursor, query, *args, **kwargs)

        def recorded_commit(connection):
            sent.append("COMMIT")
            return commit(connection)

        with monkeypatch.context() as patch:
            patch.setattr(psycopg.Cursor, "execute", recorded_execute)
            patch.setattr(psycopg.Connection, "commit", recorded_commit)
            action()
        return sent

    return during


def waiting_for_a_lock(connection) -> bool:
    """PostgreSQL: whether a session of the test database is waiting for a lock (read on
    ``connection``, which is then rolled back: a new snapshot each call)."""
    waiting = bool(connection.execute(text("SELECT count(*) FROM pg_stat_activity"
                                           " WHERE wait_event_type = 'Lock' AND datname = current_database()")).scalar())
    connection.rollback()
    return waiting


@pytest.fixture
def while_held(app):
    """On PostgreSQL, a function that writes ``statement`` in a transaction of its own, runs
    ``action`` in a thread, and commits that transaction once ``action`` waits for the rows it
    holds; it returns what ``action`` returned. So ``action`` has read those rows as they were
    and writes them as they are: two requests at the same moment, in a fixed order. Skips the
    test on SQLite, whose one writer never waits for a row."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no row locks to wait for")

    def run(statement, action):
        outcome: dict = {}

        def act():
            try:
                outcome["value"] = action()
            except BaseException as exc:  # raised in the test, below
                outcome["error"] = exc

        with db.engine.connect() as holder, db.engine.connect() as watcher:
            holder.begin()
            holder.execute(statement)
            thread = threading.Thread(target=act)
            thread.start()
            deadline = datetime.now() + timedelta(seconds=10)
            while not waiting_for_a_lock(watcher):
                assert thread.is_alive(), f"the action finished without waiting for the held rows: {outcome}"
                assert datetime.now() < deadline, "the action never waited for the held rows"
            holder.commit()
            thread.join(10)
            assert not thread.is_alive(), "the action did not finish once the rows were committed"
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    return run


class RoundTripProxy:
    """A TCP proxy on loopback before the database server that counts round trips: the times
    a client sends after the server has answered (or first, on a new connection). What a
    page costs on PostgreSQL is mostly its round trips, and pipelined queries are one."""

    def __init__(self, host: str, port: int):
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.count = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            answered = [True]  # has the server spoken since the client last did?
            threading.Thread(target=self._pump, args=(client, server, answered, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, answered, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, answered: list, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                # Noted before passing the bytes on: the other side cannot answer them sooner.
                with self._lock:
                    if from_client and answered[0]:
                        self.count += 1
                    answered[0] = not from_client
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def during(self, action) -> int:
        """The round trips ``action`` took."""
        with self._lock:
            before = self.count
        action()
        with self._lock:
            return self.count - before

    def close(self) -> None:
        self.listener.close()
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def round_trips(app, database_url):
    """On PostgreSQL: ``(proxy, browser)``. ``browser(client)`` is a client of the app again, with
    ``client``'s session cookie (the same signed-in browser), whose every connection to the server
    passes the :class:`RoundTripProxy`. Skips on SQLite."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if db.engine.dialect.name != "postgresql" or not url.host:
        pytest.skip("round trips to a database server over TCP")
    proxy = RoundTripProxy(url.host, url.port or 5432)
    proxied = make_app(url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False))
    name = app.config["SESSION_COOKIE_NAME"]

    def browser(client):
        proxied_client = proxied.test_client()
        proxied_client.set_cookie(name, client.get_cookie(name).value)
        return proxied_client

    try:
        yield proxy, browser
    finally:
        dispose_reads(proxied)
        with proxied.app_context():
            db.engine.dispose()
        proxy.close()


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller

    sink = SmtpSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    sink.url = f"smtp://127.0.0.1:{controller.port}"
    sink.controller = controller
    yield sink
    controller.stop()


@pytest.fixture
def deliver(app):
    """Run the worker until nothing is due (what `flask worker` does in a loop)."""
    from smart_invites_ui.worker import Worker

    def run():
        Worker(app, worker_id="test").run_until_idle()
        db.session.expire_all()

    return run


# --- the app served for real: gunicorn (and the worker) in subprocesses ----------------

class LiveServer:
    """A gunicorn process serving the app, optionally with a `flask worker` beside it."""

    def __init__(self, url: str, env: dict, processes: list):
        self.url = url
        self.env = env
        self.processes = processes

    def stop(self) -> None:
        import signal

        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=15)
            except Exception:
                proc.kill()


def start_live_server(database_url: str, *, worker: bool = True, extra_env: dict | None = None,
                      log_dir=None) -> LiveServer:
    """Start gunicorn as the Procfile does (and the worker), wait until /healthz answers."""
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    port = free_port()
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": database_url,
        "SECRET_KEY": "live-test-secret-key",
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "ALLOW_PRIVATE_CALLBACK_URLS": "true",
        "CRONOFY_CLIENT_SECRET": "test-cronofy-secret",
        "WORKER_POLL_SECONDS": "0.2",
        "RATELIMIT_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("SMTP_URL", None)
    env.update(extra_env or {})
    bin_dir = Path(sys.executable).parent
    log_dir = Path(log_dir or root / "instance")
    log_dir.mkdir(parents=True, exist_ok=True)
    processes = [subprocess.Popen(
        [str(bin_dir / "gunicorn"), "app:app", "--config", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}"],
        cwd=root, env=env, stdout=open(log_dir / f"web-{port}.log", "wb"), stderr=subprocess.STDOUT)]
    if worker:
        processes.append(subprocess.Popen(
            [str(bin_dir / "flask"), "--app", "app", "worker"], cwd=root, env=env,
            stdout=open(log_dir / f"worker-{port}.log", "wb"), stderr=subprocess.STDOUT))
    server = LiveServer(f"http://127.0.0.1:{port}", env, processes)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(server.url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline or processes[0].poll() is not None:
            server.stop()
            raise RuntimeError(f"gunicorn did not start; see {log_dir}/web-{port}.log")
        time.sleep(0.1)


@pytest.fixture
def live_server(app, database_url):
    """The app served by gunicorn + worker against the test database (cleared per test)."""
    server = start_live_server(database_url)
    yield server
    server.stop()


@pytest.fixture
def fast_passwords(monkeypatch):
    """For tests about something other than passwords: a cheap (still salted) hash
    instead of scrypt's deliberate ~0.15 s, so logging in costs almost nothing."""
    from functools import partial

    from werkzeug.security import generate_password_hash

    from smart_invites_ui import models

    monkeypatch.setattr(models, "generate_password_hash", partial(generate_password_hash, method="pbkdf2:sha256:1"))


# --- a recording HTTP server on loopback (callback receivers, a fake provider API) -----

class RecordingServer:
    """Answers every request with ``respond(request) -> (status, body)`` (default 200 ``{}``)
    and keeps what it received: ``requests`` is a list of dicts (method, path, headers, body)."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        recorder = self
        self.requests: list[dict] = []
        self.respond = lambda request: (200, b"{}")

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                request = {"method": self.command, "path": self.path, "headers": dict(self.headers),
                           "body": self.rfile.read(length)}
                recorder.requests.append(request)
                status, body = recorder.respond(request)
                if isinstance(body, (dict, list)):
                    import json

                    body = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a client that gave up: not our failure
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def wait(self, count: int = 1, timeout: float = 15.0) -> list[dict]:
        """Block until ``count`` requests have arrived (bounded), then return them all."""
        import time

        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.requests) >= count, f"{len(self.requests)} of {count} requests arrived in {timeout}s"
        return self.requests

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_recorder():
    server = RecordingServer()
    yield server
    server.stop()


# --- a real browser: Debian's chromium driven by Playwright ------------------------------

CHROMIUM = "/usr/bin/chromium"

#: Marks for a test module that drives the browser.
BROWSER_TESTS = [
    pytest.mark.browser,
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is not installed"),
]


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            # Without the background-networking flags chromium keeps dialling out of this closed network.
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield browser
        browser.close()


def new_page(context):
    """A page of ``context`` that records console errors in ``page.console_errors`` (CSP violations show there)."""
    page = context.new_page()
    page.set_default_timeout(15000)
    page.console_errors = []
    page.on("console", lambda msg: page.console_errors.append(msg.text) if msg.type == "error" else None)
    return page


def log_in(page, email: str, next_path: str = "/invites") -> None:
    page.goto(next_path)  # every page sends a stranger to /login first
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**" + next_path)
