"""The command line (SPEC §4): ``users create``, ``demo-login``, ``worker --once``."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from smart_invites_ui.extensions import db
from smart_invites_ui.models import OutboxMessage, OutboxState, Role, User
from smart_invites_ui.services import users as user_service
from tests.conftest import PASSWORD, csrf_from, make_invite

pytestmark = pytest.mark.usefixtures("fast_passwords")


def log_in(client, email, password) -> bool:
    page = client.get("/login")
    response = client.post("/login", data={"email": email, "password": password,
                                           "csrf_token": csrf_from(page.get_data(as_text=True))})
    return response.status_code == 302 and client.get("/invites").status_code == 200


def users_named(email: str) -> int:
    return db.session.scalar(select(func.count()).select_from(User).where(User.email == email))


# --------------------------------------------------------------------------- users create

@pytest.mark.parametrize("role", ["admin", "staff"])
def test_users_create_makes_a_working_login(runner, client, role):
    result = runner.invoke(args=["users", "create", "Reception@Example.org", "--password", PASSWORD,
                                 "--role", role])
    assert result.exit_code == 0, result.output
    assert "reception@example.org" in result.output
    created = user_service.find_by_email("reception@example.org")
    assert created.role == Role(role)
    assert PASSWORD not in created.password_hash
    assert log_in(client, "reception@example.org", PASSWORD)
    assert client.get("/admin/users").status_code == (200 if role == "admin" else 403)


def test_users_create_refuses_an_unknown_role(runner):
    result = runner.invoke(args=["users", "create", "x@example.org", "--password", PASSWORD, "--role", "owner"])
    assert result.exit_code != 0
    assert "--role" in result.output and "owner" in result.output
    assert users_named("x@example.org") == 0


def test_users_create_refuses_a_duplicate(runner, client):
    assert runner.invoke(args=["users", "create", "x@example.org", "--password", PASSWORD]).exit_code == 0
    result = runner.invoke(args=["users", "create", "X@example.org", "--password", "another long password",
                                 "--role", "admin"])
    assert result.exit_code != 0
    assert "already exists" in result.output
    assert users_named("x@example.org") == 1
    assert user_service.find_by_email("x@example.org").role == Role.STAFF
    assert log_in(client, "x@example.org", PASSWORD)  # the first account is untouched


@pytest.mark.parametrize("args, message", [
    (["bad-address", "--password", PASSWORD], "email"),
    (["x@example.org", "--password", "short"], "at least 10"),
])
def test_users_create_refuses_bad_input(runner, args, message):
    result = runner.invoke(args=["users", "create", *args])
    assert result.exit_code != 0
    assert message in result.output
    assert db.session.scalar(select(func.count()).select_from(User)) == 0


# --------------------------------------------------------------------------- demo-login

@pytest.fixture
def instance_dir(app, tmp_path):
    """Keep the demo password file away from the developer's real instance/ folder."""
    app.instance_path = str(tmp_path)
    return tmp_path


def printed_login(output: str) -> tuple[str, str]:
    email = re.search(r"Demo login:\s+(\S+)", output).group(1)
    password = re.search(r"Password:\s+(\S+)", output).group(1)
    return email, password


def test_demo_login_creates_the_demo_user_once_and_prints_it(runner, client, instance_dir):
    first = runner.invoke(args=["demo-login"])
    assert first.exit_code == 0, first.output
    email, password = printed_login(first.output)
    assert email == "demo@example.org"
    assert users_named("demo@example.org") == 1

    second = runner.invoke(args=["demo-login"])
    assert second.exit_code == 0, second.output
    assert printed_login(second.output) == (email, password)
    assert users_named("demo@example.org") == 1

    assert log_in(client, email, password)


def test_demo_login_leaves_an_instance_with_users_alone(runner, instance_dir):
    user_service.create_user("owner@example.org", PASSWORD, Role.ADMIN)
    result = runner.invoke(args=["demo-login"])
    assert result.exit_code == 0
    assert users_named("demo@example.org") == 0


# --------------------------------------------------------------------------- worker

def test_worker_once_delivers_queued_emails_to_the_mail_catcher(runner, auth):
    invite = make_invite(emails=("ann@example.org", "bob@example.org"))
    assert {m.state for m in db.session.scalars(select(OutboxMessage))} == {OutboxState.QUEUED}

    result = runner.invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output

    db.session.expire_all()
    messages = db.session.scalars(select(OutboxMessage).where(OutboxMessage.invite_id == invite.id)).all()
    assert sorted(m.target for m in messages) == ["ann@example.org", "bob@example.org"]
    assert all(m.state == OutboxState.SENT and m.transport == "catcher" for m in messages)

    auth.login()
    catcher = auth.client.get("/mail").get_data(as_text=True)
    assert "ann@example.org" in catcher and "bob@example.org" in catcher
    assert "Dental check-up" in catcher
    assert auth.client.get("/mail?page=99999999999999999999").status_code == 200
