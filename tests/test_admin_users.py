"""Admins manage staff accounts at /admin/users; staff cannot (issue 2 §2)."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from smart_invites_ui.extensions import db
from smart_invites_ui.models import Role, User
from smart_invites_ui.services import users as user_service
from tests.conftest import PASSWORD, Auth, csrf_from

pytestmark = pytest.mark.usefixtures("fast_passwords")


@pytest.fixture
def admin(auth):
    auth.login("boss@example.org", Role.ADMIN)
    return auth


@pytest.fixture
def staff_client(app):
    """A second browser, logged in as a staff member."""
    other = Auth(app.test_client())
    other.login("sam@example.org", Role.STAFF)
    return other


def user(email: str) -> User | None:
    db.session.expire_all()
    return user_service.find_by_email(email)


def user_count() -> int:
    return db.session.scalar(select(func.count()).select_from(User))


def field_error(html: str, field: str) -> str:
    match = re.search(rf'<p class="error" id="{field}-error">([^<]*)</p>', html)
    assert match, f"no error shown on {field}"
    return match.group(1)


def can_log_in(app, email: str, password: str = PASSWORD) -> bool:
    browser = app.test_client()
    page = browser.get("/login")
    response = browser.post("/login", data={"email": email, "password": password,
                                            "csrf_token": csrf_from(page.get_data(as_text=True))})
    return response.status_code == 302


def signed_in(client) -> bool:
    return client.get("/invites").status_code == 200


# --------------------------------------------------------------------------- staff are kept out

def test_staff_get_403_on_the_users_page(staff_client):
    response = staff_client.client.get("/admin/users")
    assert response.status_code == 403
    assert "Only an admin" in response.get_data(as_text=True)


def test_staff_cannot_add_users(staff_client):
    before = user_count()
    response = staff_client.post("/admin/users", data={
        "email": "new@example.org", "password": PASSWORD, "role": "admin", "timezone": "UTC"})
    assert response.status_code == 403
    assert user_count() == before
    assert user("new@example.org") is None


def test_staff_cannot_disable_promote_or_reset_others(app, admin, staff_client):
    boss = user("boss@example.org")
    for url, data in [(f"/admin/users/{boss.id}/active", {"active": "0"}),
                      (f"/admin/users/{staff_client.user.id}/role", {"role": "admin"}),
                      (f"/admin/users/{boss.id}/password", {"password": "taken over by staff"})]:
        assert staff_client.post(url, data=data).status_code == 403
    assert user("boss@example.org").active
    assert user("sam@example.org").role == Role.STAFF
    assert can_log_in(app, "boss@example.org")


def test_the_users_link_is_shown_to_admins_only(admin, staff_client):
    assert 'href="/admin/users"' in admin.client.get("/invites").get_data(as_text=True)
    assert 'href="/admin/users"' not in staff_client.client.get("/invites").get_data(as_text=True)


# --------------------------------------------------------------------------- adding users

def test_admin_sees_every_user(admin, staff_client):
    html = admin.client.get("/admin/users").get_data(as_text=True)
    assert "boss@example.org" in html and "sam@example.org" in html


def test_admin_adds_a_user_who_can_then_log_in(app, admin):
    response = admin.post("/admin/users", data={
        "email": "New.Person@Example.org", "name": "New Person", "password": "their own password",
        "role": "staff", "timezone": "America/New_York"})
    assert response.status_code == 302
    assert "Added new.person@example.org" in admin.client.get(response.headers["Location"]).get_data(as_text=True)
    created = user("new.person@example.org")
    assert created.role == Role.STAFF and created.timezone == "America/New_York" and created.active
    assert "their own password" not in created.password_hash
    assert can_log_in(app, "new.person@example.org", "their own password")


def test_admin_can_add_another_admin(admin):
    admin.post("/admin/users", data={"email": "second@example.org", "password": PASSWORD,
                                     "role": "admin", "timezone": "UTC"})
    assert user("second@example.org").role == Role.ADMIN


@pytest.mark.parametrize("data, field, message", [
    ({"email": "not an address", "password": PASSWORD}, "email", "email address"),
    ({"email": "", "password": PASSWORD}, "email", ""),
    ({"email": "short@example.org", "password": "short"}, "password", "at least 10 characters"),
    ({"email": "short@example.org", "password": ""}, "password", ""),
    ({"email": "BOSS@example.org", "password": PASSWORD}, "email", "already exists"),
])
def test_a_bad_new_user_is_refused_with_a_message_on_the_field(admin, data, field, message):
    before = user_count()
    response = admin.post("/admin/users", data={"role": "staff", "timezone": "UTC", **data})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert message in field_error(html, field)
    assert field_error(html, field).strip()
    assert user_count() == before
    if data["email"]:  # what was typed is kept
        assert f'value="{data["email"]}"' in html


def test_an_unknown_role_is_refused(admin):
    response = admin.post("/admin/users", data={"email": "x@example.org", "password": PASSWORD,
                                                "role": "owner", "timezone": "UTC"})
    assert response.status_code == 422
    assert user("x@example.org") is None


# --------------------------------------------------------------------------- disable and enable

def test_disabling_signs_the_user_out_and_enabling_lets_them_back(app, admin, staff_client):
    sam = staff_client.user
    assert signed_in(staff_client.client)

    response = admin.post(f"/admin/users/{sam.id}/active", data={"active": "0"})
    assert response.status_code == 302
    assert "disabled" in admin.client.get("/admin/users").get_data(as_text=True)
    assert not user("sam@example.org").active
    assert not signed_in(staff_client.client)
    assert not can_log_in(app, "sam@example.org")

    admin.post(f"/admin/users/{sam.id}/active", data={"active": "1"})
    assert user("sam@example.org").active
    assert can_log_in(app, "sam@example.org")


def test_the_disable_button_asks_for_confirmation(admin, staff_client):
    html = admin.client.get("/admin/users").get_data(as_text=True)
    form = re.search(rf'<form[^>]*action="/admin/users/{staff_client.user.id}/active"[^>]*>', html).group(0)
    assert "data-confirm=" in form


def test_an_admin_cannot_disable_themselves(admin):
    boss = admin.user
    response = admin.post(f"/admin/users/{boss.id}/active", data={"active": "0"})
    assert response.status_code == 302
    html = admin.client.get("/admin/users").get_data(as_text=True)
    assert "You cannot disable your own account." in html
    assert user("boss@example.org").active
    assert signed_in(admin.client)


def test_an_admin_cannot_drop_their_own_admin_role(admin):
    admin.post(f"/admin/users/{admin.user.id}/role", data={"role": "staff"})
    assert user("boss@example.org").role == Role.ADMIN
    assert "cannot remove your own admin role" in admin.client.get("/admin/users").get_data(as_text=True)


# --------------------------------------------------------------------------- roles

def test_make_admin_then_staff_takes_effect_at_once(admin, staff_client):
    sam = staff_client.user
    assert staff_client.client.get("/admin/users").status_code == 403

    admin.post(f"/admin/users/{sam.id}/role", data={"role": "admin"})
    assert user("sam@example.org").role == Role.ADMIN
    assert staff_client.client.get("/admin/users").status_code == 200

    admin.post(f"/admin/users/{sam.id}/role", data={"role": "staff"})
    assert user("sam@example.org").role == Role.STAFF
    assert staff_client.client.get("/admin/users").status_code == 403


def test_an_unknown_role_change_changes_nothing(admin, staff_client):
    admin.post(f"/admin/users/{staff_client.user.id}/role", data={"role": "owner"})
    assert user("sam@example.org").role == Role.STAFF


# --------------------------------------------------------------------------- password reset

def test_reset_password_signs_out_and_only_the_new_password_works(app, admin, staff_client):
    sam = staff_client.user
    response = admin.post(f"/admin/users/{sam.id}/password", data={"password": "reset by the admin"})
    assert response.status_code == 302
    assert "New password set for sam@example.org" in admin.client.get("/admin/users").get_data(as_text=True)
    assert not signed_in(staff_client.client)
    assert not can_log_in(app, "sam@example.org", PASSWORD)
    assert can_log_in(app, "sam@example.org", "reset by the admin")


def test_a_too_short_reset_password_is_refused(app, admin, staff_client):
    admin.post(f"/admin/users/{staff_client.user.id}/password", data={"password": "short"})
    assert "Password not changed" in admin.client.get("/admin/users").get_data(as_text=True)
    assert signed_in(staff_client.client)
    assert can_log_in(app, "sam@example.org", PASSWORD)


def test_actions_on_an_unknown_user_are_404(admin):
    assert admin.post("/admin/users/9999/active", data={"active": "0"}).status_code == 404
    assert admin.post("/admin/users/9999/role", data={"role": "admin"}).status_code == 404
    assert admin.post("/admin/users/9999/password", data={"password": PASSWORD}).status_code == 404
