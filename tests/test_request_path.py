"""What every signed-in request goes through, made cheaper for speed (issue 7): the
remembered session cookies, the reused CSRF token and the action buttons made in Python.
Each keeps the behaviour of what it replaced."""
from __future__ import annotations

import re
import time

import pytest

from smart_invites_ui.domain import RecipientStatus
from smart_invites_ui.views import button_form, path_for, status_badge
from tests.conftest import csrf_from, make_app

pytestmark = pytest.mark.usefixtures("fast_passwords")


@pytest.fixture
def staff(auth):
    auth.login()
    return auth


def later(monkeypatch, seconds: float) -> None:
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + seconds)


def test_a_remembered_session_cookie_still_expires(staff, app, monkeypatch):
    assert staff.client.get("/invites").status_code == 200  # the cookie is verified and remembered
    later(monkeypatch, app.permanent_session_lifetime.total_seconds() + 5)
    response = staff.client.get("/invites")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")


def test_a_session_holding_a_list_is_not_shared_between_requests(app):
    """Flashed messages are a list in the session: each request must get its own."""
    interface = app.session_interface
    with app.test_request_context():
        cookie = interface.get_signing_serializer(app).dumps({"_flashes": [["info", "Saved."]], "_user_id": "1:0"})
    name = app.config["SESSION_COOKIE_NAME"]
    with app.test_request_context(headers={"Cookie": f"{name}={cookie}"}) as first:
        opened = interface.open_session(app, first.request)
        opened["_flashes"].append(["info", "Another."])
    with app.test_request_context(headers={"Cookie": f"{name}={cookie}"}) as second:
        assert interface.open_session(app, second.request)["_flashes"] == [["info", "Saved."]]


def test_a_cookie_signed_with_another_key_opens_no_session_after_the_real_one_was_seen(staff, app):
    real = staff.client.get_cookie(app.config["SESSION_COOKIE_NAME"]).value
    assert staff.client.get("/invites").status_code == 200
    other = make_app(app.config["SQLALCHEMY_DATABASE_URI"], SECRET_KEY="another key")
    with app.test_request_context():
        payload = app.session_interface.get_signing_serializer(app).loads(real)
    with other.test_request_context():
        forged = other.session_interface.get_signing_serializer(other).dumps(payload)
    forger = app.test_client()
    forger.set_cookie(app.config["SESSION_COOKIE_NAME"], forged)
    assert forger.get("/invites").status_code == 302


def test_the_csrf_token_is_reused_for_a_minute_per_session_and_old_ones_still_work(staff, app, monkeypatch):
    first = staff.token()
    later(monkeypatch, 30)
    assert staff.token() == first  # a page within the minute carries the same signed token
    other = app.test_client()
    other_page = other.get("/login").get_data(as_text=True)
    assert csrf_from(other_page) != first  # another browser has its own

    later(monkeypatch, 61)
    fresh = staff.token()
    assert fresh != first
    # The older token is still accepted (a form left open on a page): the form's own
    # check answers, not the CSRF check (400).
    response = staff.client.post("/invites/new", data={"csrf_token": first, "summary": ""})
    assert response.status_code == 422
    response = staff.client.post("/invites/new", data={"csrf_token": "not a token", "summary": ""})
    assert response.status_code == 400


def test_action_buttons_escape_everything_they_are_given(staff, app):
    with app.test_request_context():
        html = str(button_form('/x?a=1&b="2"', "<b>Go</b>", confirm='Remove "ann"<script>?', cls='danger" onclick="x',
                               extra={'role"': '"admin"<'}))
        badge = str(status_badge(RecipientStatus.ACCEPTED))
    assert "<script>" not in html and "<b>" not in html
    assert 'action="/x?a=1&amp;b=&#34;2&#34;"' in html
    assert 'data-confirm="Remove &#34;ann&#34;&lt;script&gt;?"' in html
    assert 'class="danger&#34; onclick=&#34;x"' in html
    assert '<input type="hidden" name="role&#34;" value="&#34;admin&#34;&lt;">' in html
    assert re.search(r'name="csrf_token" value="[^"]+"', html)
    assert badge == '<span class="badge badge-accepted">Accepted</span>'


def test_path_for_builds_what_url_for_builds(app):
    from flask import url_for

    cases = [("invites.show", {"invite_id": 7}), ("invites.live", {"invite_id": 7, "v": 3}),
             ("invites.resend", {"invite_id": 7, "recipient_id": 9}),
             ("invites.index", {"q": "Dr Ann & co", "status": None}), ("invites.index", {}),
             ("imports.export_invites", {"q": None, "status": "past"}), ("static", {"filename": "app.css"})]
    with app.test_request_context("/invites", base_url="http://localhost/clinic"):  # mounted under a prefix
        for endpoint, values in cases:
            assert path_for(endpoint, **values) == url_for(endpoint, **values), endpoint
        assert path_for("invites.show", invite_id=7).startswith("/clinic/invites/")
