"""End to end with two running instances of this app, each with its own database:
a dashboard (provider ``cronofy``) that uses the other one's ``/v1/smart_invites``.

dashboard → API instance → a reply applied on the API instance → its worker sends
the signed callback → the dashboard's webhook route → the dashboard shows it.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from sqlalchemy import select

from smart_invites_ui.extensions import db
from smart_invites_ui.models import OutboxKind, OutboxMessage
from smart_invites_ui.services.callbacks import sign
from tests import conftest as live

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "a long enough password"


class FlaskCommand:
    """``flask --app app ARGS`` run as an operator would, in the background; ``output()`` waits for it."""

    def __init__(self, env: dict, *args: str):
        self.process = subprocess.Popen([str(Path(sys.executable).parent / "flask"), "--app", "app", *args],
                                        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def output(self) -> str:
        stdout, stderr = self.process.communicate(timeout=120)
        assert self.process.returncode == 0, stdout + stderr
        return stdout


def stop_all(servers: list) -> None:
    """SIGTERM every process first, then wait: the servers shut down side by side."""
    import signal

    processes = [p for server in servers for p in server.processes if p.poll() is None]
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def api_database_url(database_url, tmp_path):
    """The API instance's own database: a second SQLite file, or a second PostgreSQL database."""
    if not database_url.startswith("postgres"):
        yield "sqlite:///" + str(tmp_path / "api-instance.sqlite3")
        return
    import psycopg

    parts = urlsplit(database_url.replace("postgresql+psycopg://", "postgresql://"))
    admin_url = urlunsplit(parts)
    name = parts.path.strip("/") + "_api_instance"  # "test" → "test_api_instance"
    api_url = urlunsplit(parts._replace(path="/" + name))

    def recreate(create: bool) -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            if create:
                conn.execute(f'CREATE DATABASE "{name}"')

    recreate(True)
    yield api_url
    recreate(False)


def instance_env(database_url: str, **settings: str) -> dict:
    import os

    env = dict(os.environ)
    env.pop("SMTP_URL", None)
    env.update(DATABASE_URL=database_url, **settings)
    return env


def without_dtstamp(ics: str) -> str:
    return re.sub(r"DTSTAMP:[0-9TZ]+\r\n", "", ics)


def csrf_token(html: str) -> str:
    return re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html).group(1)


def test_dashboard_on_top_of_another_instance(app, database_url, api_database_url, monkeypatch):
    servers: list[live.LiveServer] = []
    browser = requests.Session()
    try:
        # --- the API instance: migrated, an API key for the dashboard, then served with its worker.
        api_settings = {"SECRET_KEY": "api-instance-secret-key", "MAIL_FROM": "invites@api.example.org"}
        api_env = instance_env(api_database_url, **api_settings)
        FlaskCommand(api_env, "db", "upgrade").output()
        new_key = FlaskCommand(api_env, "api-keys", "create", "Riverside dashboard")
        # The dashboard's database is the test database, migrated already: its staff login.
        new_user = FlaskCommand(instance_env(database_url, SECRET_KEY="any"), "users", "create",
                                "reception@example.org", "--password", PASSWORD, "--role", "staff")
        api = live.start_live_server(api_database_url, extra_env=api_settings)
        servers.append(api)
        key = new_key.output().strip().splitlines()[-1]
        new_user.output()

        # --- the dashboard: provider cronofy pointed at the API instance (its URL is known before it starts).
        port = live.free_port()
        monkeypatch.setattr(live, "free_port", lambda: port)
        dashboard_url = f"http://127.0.0.1:{port}"
        dashboard = live.start_live_server(database_url, extra_env={
            "SMART_INVITES_PROVIDER": "cronofy", "CRONOFY_API_URL": api.url, "CRONOFY_CLIENT_SECRET": key,
            "PUBLIC_BASE_URL": dashboard_url, "MAIL_FROM": "invites@dash.example.org"})
        servers.append(dashboard)
        assert dashboard.url == dashboard_url

        # --- staff create an invite on the dashboard.
        page = browser.get(dashboard.url + "/login", timeout=10).text
        response = browser.post(dashboard.url + "/login", timeout=10, allow_redirects=False, data={
            "email": "reception@example.org", "password": PASSWORD, "csrf_token": csrf_token(page)})
        assert response.status_code == 302
        page = browser.get(dashboard.url + "/invites/new", timeout=10).text
        response = browser.post(dashboard.url + "/invites/new", timeout=20, allow_redirects=False, data={
            "csrf_token": csrf_token(page), "summary": "Physio assessment", "start": "2031-03-04T10:00",
            "end": "2031-03-04T10:45", "tzid": "Europe/London", "location": "Room 2",
            "recipients": "ann@example.org\nbob@example.org", "smart_invite_id": "PHYSIO-77",
            "organizer_name": "Riverside Clinic"})
        assert response.status_code == 302, response.text
        invite_page = dashboard.url + response.headers["Location"]

        # The API instance has it, made by the dashboard's API client, calling back to the dashboard.
        remote = requests.get(api.url + "/v1/smart_invites", timeout=10,
                              params={"smart_invite_id": "PHYSIO-77", "include_ics": "true"},
                              headers={"Authorization": f"Bearer {key}"}).json()
        assert remote["recipients"] == [{"email": "ann@example.org", "status": "pending"},
                                        {"email": "bob@example.org", "status": "pending"}]
        assert remote["callback_url"] == dashboard_url + "/webhooks/smart-invites"
        assert remote["event"]["start"] == {"time": "2031-03-04T10:00:00Z", "tzid": "Europe/London"}
        # What the dashboard emails is the ICS the API instance made (built again for this GET: a new DTSTAMP).
        emailed = db.session.scalars(select(OutboxMessage.payload)
                                     .where(OutboxMessage.kind == OutboxKind.EMAIL)).all()
        assert len(emailed) == 2
        remote_ics = remote["attachments"]["icalendar"]
        assert {without_dtstamp(ics.decode()) for ics in emailed} == {without_dtstamp(remote_ics)}
        assert "@api.example.org" in remote_ics.replace("\r\n ", "")  # ORGANIZER: replies go to the API instance

        # --- a reply is applied on the API instance (here: a signed notification at its webhook route).
        notification = json.dumps({"notification": {"type": "smart_invite"}, "smart_invite": {
            "smart_invite_id": "PHYSIO-77",
            "recipient": {"email": "ann@example.org", "status": "declined", "comment": "Away that week"}}}).encode()
        applied = requests.post(api.url + "/webhooks/smart-invites", data=notification, timeout=10, headers={
            "Content-Type": "application/json", "Cronofy-HMAC-SHA256": sign(notification, "test-cronofy-secret")})
        assert applied.status_code == 200 and applied.json()["outcome"] == "applied"

        # --- its worker calls the dashboard back; the dashboard's page shows the new status.
        deadline = time.monotonic() + 30
        while True:
            html = browser.get(invite_page, timeout=10).text
            if 'data-email="ann@example.org" data-status="declined"' in html:
                break
            assert time.monotonic() < deadline, "the dashboard never showed the reply"
            time.sleep(0.25)
        assert "Away that week" in html
        assert 'data-email="bob@example.org" data-status="pending"' in html

        # --- cancelling on the dashboard cancels on the API instance too.
        response = browser.post(invite_page + "/cancel", timeout=20, allow_redirects=False,
                                data={"csrf_token": csrf_token(html)})
        assert response.status_code == 302
        remote = requests.get(api.url + "/v1/smart_invites", timeout=10,
                              params={"smart_invite_id": "PHYSIO-77", "include_ics": "true"},
                              headers={"Authorization": f"Bearer {key}"}).json()
        assert "METHOD:CANCEL" in remote["attachments"]["icalendar"]
    finally:
        browser.close()
        stop_all(servers)
