"""Heroku-style deploy: the Procfile's own lines, configuration checks, /healthz."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from smart_invites_ui import create_app
from smart_invites_ui.config import ConfigError, database_url
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture
def scratch_database(tmp_path):
    """An empty database of the kind under test: a new PostgreSQL database, or a SQLite file."""
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        yield f"sqlite:///{tmp_path / 'deploy.sqlite3'}"
        return
    import psycopg

    name = f"deploy_{uuid.uuid4().hex[:8]}"
    admin_url = database_url(base, "/tmp").replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield admin_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_procfile_declares_release_web_and_worker():
    processes = procfile()
    assert processes["release"] == "flask --app app db upgrade"
    assert processes["web"].startswith("gunicorn app:app") and "0.0.0.0:$PORT" in processes["web"]
    assert processes["worker"] == "flask --app app worker"
    assert (ROOT / ".python-version").read_text().strip().startswith("3.")


def test_procfile_lines_boot_and_answer_healthz(scratch_database, tmp_path):
    port = free_port()
    env = dict(os.environ, DATABASE_URL=scratch_database, SECRET_KEY="deploy-test-key", PORT=str(port),
               WEB_CONCURRENCY="2", PATH=f"{BIN}:{os.environ['PATH']}")
    honcho = [str(BIN / "honcho"), "-f", str(ROOT / "Procfile"), "-d", str(ROOT)]
    # release runs the migrations; running it twice is safe.
    for _ in range(2):
        release = subprocess.run(honcho + ["start", "release"], env=env, capture_output=True, text=True, timeout=120)
        assert release.returncode == 0, release.stdout + release.stderr
    proc = subprocess.Popen(honcho + ["start", "web", "worker"], env=env, stdout=open(tmp_path / "out.log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 40
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    assert response.status == 200
                    assert response.read() == b'{"status":"ok"}\n'
                    break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "out.log").read_text()
                time.sleep(0.2)
        log = (tmp_path / "out.log").read_text()
        assert "worker" in log and "started" in log or wait_for_text(tmp_path / "out.log", "started")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def wait_for_text(path: Path, text: str, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text():
            return True
        time.sleep(0.2)
    return False


def test_web_process_refuses_to_start_without_secret_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "FLASK_DEBUG")}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    started = time.monotonic()
    result = subprocess.run([str(BIN / "gunicorn"), "app:app", "--config", "gunicorn.conf.py", "--bind",
                             f"127.0.0.1:{free_port()}"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stdout + result.stderr
    assert time.monotonic() - started < 30


def test_create_app_names_the_missing_secret_key(monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app({"TESTING": False})


def test_heroku_postgres_urls_are_accepted():
    assert database_url("postgres://u:p@db.example:5432/app", "/tmp") == "postgresql+psycopg://u:p@db.example:5432/app"
    assert database_url("postgresql://u@h/d", "/tmp") == "postgresql+psycopg://u@h/d"
    assert database_url(None, "/srv/instance") == "sqlite:////srv/instance/smart_invites.sqlite3"


def test_healthz_answers_503_while_the_database_is_unreachable():
    app = create_app({"TESTING": True, "SECRET_KEY": "k",
                      "SQLALCHEMY_DATABASE_URI": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none",
                      "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True, "connect_args": {"connect_timeout": 2}}})
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["status"] == "unavailable"


def test_https_base_url_makes_cookies_secure(monkeypatch):
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://invites.clinic.example")
    app = create_app({"TESTING": True, "SECRET_KEY": "k", "SQLALCHEMY_DATABASE_URI": "sqlite://"})
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["SESSION_COOKIE_HTTPONLY"] is True
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Lax"


def test_proxy_headers_are_honoured(app):
    app.add_url_rule("/_scheme", "scheme_probe", lambda: __import__("flask").request.url)
    app.view_functions["scheme_probe"].access = "test probe"
    response = app.test_client().get("/_scheme", headers={"X-Forwarded-Proto": "https",
                                                          "X-Forwarded-Host": "invites.clinic.example"})
    assert response.get_data(as_text=True) == "https://invites.clinic.example/_scheme"


def test_the_migrations_build_exactly_the_models(app):
    """`flask db upgrade` (which built the test database) leaves nothing for autogenerate to add."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from smart_invites_ui.extensions import db

    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), db.metadata) == []


def test_the_access_log_never_holds_the_inbound_secret(app, database_url, tmp_path):
    import requests

    from tests.conftest import start_live_server

    server = start_live_server(database_url, worker=False, log_dir=tmp_path,
                               extra_env={"INBOUND_EMAIL_SECRET": "s3cret-in-the-url"})
    try:
        response = requests.post(server.url + "/inbound/email?secret=s3cret-in-the-url", timeout=10,
                                 data=b"Subject: hi\r\n\r\nnot a reply\r\n",
                                 headers={"Content-Type": "message/rfc822"})
        assert response.status_code == 200
    finally:
        server.stop()
    log = "".join(p.read_text() for p in tmp_path.glob("web-*.log"))
    assert "POST /inbound/email" in log
    assert "s3cret-in-the-url" not in log


def test_worker_once_also_runs_the_background_duties(app, runner):
    calls = []
    app.extensions.setdefault("worker_hooks", []).append(lambda worker: calls.append(worker.worker_id))
    result = runner.invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output
    assert len(calls) == 1


def test_a_second_web_process_refuses_a_port_already_served(scratch_database, tmp_path):
    """Workers listen with SO_REUSEPORT (gunicorn.conf.py), which would let a second copy
    bind the same port and quietly take half the requests: it must refuse instead."""
    from tests.conftest import start_live_server

    first = start_live_server(scratch_database, worker=False, log_dir=tmp_path)
    try:
        port = first.url.rsplit(":", 1)[1]
        second = subprocess.run(
            [str(BIN / "gunicorn"), "app:app", "--config", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT, env=dict(first.env), capture_output=True, text=True, timeout=30)
        assert second.returncode != 0
        assert f"Cannot listen on 127.0.0.1:{port}: another process is already listening there" in second.stdout + second.stderr
        with urllib.request.urlopen(first.url + "/healthz", timeout=5) as response:
            assert response.status == 200
    finally:
        first.stop()
