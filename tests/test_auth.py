"""Logging in and out (issue 2 §2): sessions, passwords, redirects and CSRF."""
from __future__ import annotations

from urllib.parse import parse_qs, quote, urljoin, urlsplit

import pytest
from sqlalchemy import func, select

from smart_invites_ui.extensions import db
from smart_invites_ui.models import Invite, OutboxMessage, Role, User
from smart_invites_ui.services import users as user_service

from tests.conftest import PASSWORD, csrf_from



def login(client, email, password=PASSWORD, next_url=None):
    page = client.get("/login")
    url = "/login" + (f"?next={quote(next_url, safe='')}" if next_url is not None else "")
    return client.post(url, data={"email": email, "password": password,
                                  "csrf_token": csrf_from(page.get_data(as_text=True))})


def path_of(response) -> str:
    return urlsplit(response.headers["Location"]).path


def is_logged_in(client) -> bool:
    response = client.get("/invites")
    return response.status_code == 200


@pytest.fixture
def staff(app):
    return user_service.create_user("Ann@Example.org", PASSWORD, Role.STAFF, name="Ann", timezone="Europe/London")


# --------------------------------------------------------------------------- logging in

def test_login_page_has_email_and_password_fields(client):
    html = client.get("/login").get_data(as_text=True)
    assert 'name="email"' in html and 'name="password"' in html and 'type="password"' in html


def test_right_password_logs_in_and_lands_on_the_invites(client, staff):
    response = login(client, "ann@example.org")
    assert response.status_code == 302 and path_of(response) == "/invites"
    page = client.get("/invites")
    assert page.status_code == 200
    assert "ann@example.org" in page.get_data(as_text=True)


def test_email_is_matched_without_regard_to_case(client, staff):
    assert login(client, "  ANN@example.ORG ").status_code == 302
    assert is_logged_in(client)


def test_wrong_password_stays_on_login_with_a_message_and_no_session(client, staff):
    response = login(client, "ann@example.org", "not the password at all")
    assert response.status_code in (200, 401, 422)
    html = response.get_data(as_text=True)
    assert 'name="password"' in html
    assert "do not match" in html
    with client.session_transaction() as session:
        assert "_user_id" not in session
    assert not is_logged_in(client)


def test_unknown_email_gets_the_same_message(client, staff):
    wrong_password = login(client, "ann@example.org", "not the password at all").get_data(as_text=True)
    unknown = login(client, "nobody@example.org", PASSWORD)
    assert unknown.status_code in (200, 401, 422)
    assert "do not match" in unknown.get_data(as_text=True) and "do not match" in wrong_password
    assert not is_logged_in(client)


def test_login_rotates_the_session(client, staff):
    client.get("/login")
    with client.session_transaction() as session:
        session["planted_before_login"] = "fixation attempt"
    before = client.get_cookie("session").value

    assert login(client, "ann@example.org").status_code == 302

    after = client.get_cookie("session").value
    assert after != before
    with client.session_transaction() as session:
        assert "planted_before_login" not in session
        assert session.get("_user_id")


def test_passwords_are_stored_hashed(app, staff):
    stored = db.session.get(User, staff.id).password_hash
    assert PASSWORD not in stored
    assert stored.startswith(("scrypt:", "pbkdf2:"))


def test_a_disabled_user_cannot_log_in(client, staff):
    user_service.set_active(staff, False)
    response = login(client, "ann@example.org")
    assert response.status_code != 302
    assert "do not match" in response.get_data(as_text=True)
    assert not is_logged_in(client)


def test_disabling_a_user_ends_their_open_session_at_once(client, staff):
    login(client, "ann@example.org")
    assert is_logged_in(client)
    user_service.set_active(staff, False)
    response = client.get("/invites")
    assert response.status_code == 302 and path_of(response) == "/login"


def test_resetting_a_password_ends_open_sessions_and_the_new_one_works(client, staff):
    login(client, "ann@example.org")
    assert is_logged_in(client)
    user_service.reset_password(staff, "a brand new password")
    response = client.get("/invites")
    assert response.status_code == 302 and path_of(response) == "/login"
    assert login(client, "ann@example.org").status_code != 302  # the old password is gone
    assert login(client, "ann@example.org", "a brand new password").status_code == 302
    assert is_logged_in(client)


# --------------------------------------------------------------------------- logging out

def test_logout_needs_post_with_a_csrf_token(client, staff):
    login(client, "ann@example.org")
    assert client.get("/logout").status_code == 405
    assert client.post("/logout").status_code == 400
    assert is_logged_in(client)

    token = csrf_from(client.get("/invites").get_data(as_text=True))
    response = client.post("/logout", data={"csrf_token": token})
    assert response.status_code == 302 and path_of(response) == "/login"
    assert not is_logged_in(client)


def test_every_page_has_a_sign_out_button(client, staff):
    login(client, "ann@example.org")
    html = client.get("/invites").get_data(as_text=True)
    assert 'action="/logout"' in html and 'method="post"' in html


# --------------------------------------------------------------------------- redirects

def test_pages_redirect_to_login_with_the_page_to_come_back_to(client):
    response = client.get("/invites/new")
    assert response.status_code == 302 and path_of(response) == "/login"
    assert parse_qs(urlsplit(response.headers["Location"]).query)["next"] == ["/invites/new"]


def test_an_htmx_request_gets_401_with_hx_redirect_to_login(client):
    response = client.get("/invites", headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert urlsplit(response.headers["HX-Redirect"]).path == "/login"


def test_after_login_the_user_lands_on_the_page_they_asked_for(client, staff):
    response = login(client, "ann@example.org", next_url="/invites/new")
    assert response.status_code == 302
    assert response.headers["Location"] == "/invites/new"


def test_next_keeps_its_query_string(client, staff):
    response = login(client, "ann@example.org", next_url="/invites?q=smith")
    assert response.headers["Location"] == "/invites?q=smith"


@pytest.mark.parametrize("target", [
    "//evil.example",
    "//evil.example/invites",
    "https://evil.example",
    "https://evil.example/invites",
    "http:evil.example",
    "\\\\evil.example",
    "/\t/evil.example",  # browsers drop tabs and newlines from URLs
    "/\n/evil.example",
    "javascript:alert(1)",
    "evil.example",
])
@pytest.mark.usefixtures("fast_passwords")
def test_open_redirects_land_on_the_invites(client, staff, target):
    response = login(client, "ann@example.org", next_url=target)
    assert response.status_code == 302
    assert response.headers["Location"] == "/invites"


@pytest.mark.parametrize("target", ["/\\evil.example", "/%5C/evil.example", "/\u3000/evil.example"])
@pytest.mark.usefixtures("fast_passwords")
def test_odd_next_values_stay_on_this_site(client, staff, target):
    location = login(client, "ann@example.org", next_url=target).headers["Location"]
    # Read it as a browser does: backslashes are slashes, tabs and newlines vanish.
    as_browser = location.replace("\\", "/").translate({9: None, 10: None, 13: None})
    assert urlsplit(urljoin("http://localhost/invites", as_browser)).netloc == "localhost"


# --------------------------------------------------------------------------- CSRF

def test_a_post_without_csrf_token_is_refused_and_writes_nothing(client, auth):
    auth.login()
    response = client.post("/invites/new", data={
        "summary": "Check-up", "start": "2030-05-03T09:00", "end": "2030-05-03T09:30",
        "tzid": "Europe/London", "recipients": "ann@example.org"})
    assert response.status_code == 400
    assert db.session.scalar(select(func.count()).select_from(Invite)) == 0
    assert db.session.scalar(select(func.count()).select_from(OutboxMessage)) == 0


def test_a_login_post_without_csrf_token_does_not_log_in(client, staff):
    response = client.post("/login", data={"email": "ann@example.org", "password": PASSWORD})
    assert response.status_code == 400
    assert not is_logged_in(client)
