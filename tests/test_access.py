"""Who may reach what (issue 2 §2): every route needs a login unless it is public for a
stated reason, admin pages are for admins, and every page is sent with security headers."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from smart_invites_ui.auth import admin_required
from smart_invites_ui.models import NotificationSource, Role
from smart_invites_ui.security import PUBLIC_ENDPOINTS, access_of
from smart_invites_ui.services.notifications import apply_notification
from tests.conftest import csrf_from, make_invite

pytestmark = pytest.mark.usefixtures("fast_passwords")

XSS = "<script>alert(1)</script>"


def routes(app):
    """(endpoint, method, url) for every GET and POST rule, URL parameters filled with 1."""
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        url = re.sub(r"<[^>]+>", "1", rule.rule)
        for method in sorted(rule.methods & {"GET", "POST"}):
            yield rule.endpoint, method, url


def uses_admin_required(view) -> bool:
    """Whether ``admin_required`` is among the view's decorators (found through closures)."""
    stack, seen = [view], set()
    while stack:
        fn = stack.pop()
        if id(fn) in seen or not callable(fn):
            continue
        seen.add(id(fn))
        code = getattr(fn, "__code__", None)
        if code is not None and code.co_qualname.startswith(admin_required.__qualname__ + ".<locals>"):
            return True
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                stack.append(cell.cell_contents)
            except ValueError:
                pass
        if getattr(fn, "__wrapped__", None) is not None:
            stack.append(fn.__wrapped__)
    return False


def admin_endpoints(app) -> set[str]:
    return {endpoint for endpoint, view in app.view_functions.items()
            if endpoint.startswith("admin.") or uses_admin_required(view)}


def goes_to_login(response) -> bool:
    if response.status_code == 401:
        return True
    return response.status_code == 302 and urlsplit(response.headers["Location"]).path == "/login"


# --------------------------------------------------------------------------- the map of the app

def test_only_the_login_page_health_check_and_static_files_are_open_by_name():
    assert PUBLIC_ENDPOINTS == {"auth.login", "health.healthz", "static"}


def test_every_endpoint_is_public_for_a_reason_or_needs_a_login(app):
    for endpoint, view in app.view_functions.items():
        access = access_of(app, endpoint)
        assert isinstance(access, str) and access.strip(), endpoint
        if endpoint not in PUBLIC_ENDPOINTS and access != "login":
            assert getattr(view, "access", None) == access, f"{endpoint} is public without a stated reason"


def test_the_webhook_is_public_because_it_is_signed(app):
    assert access_of(app, "webhooks.smart_invites") == "signature"


def test_logged_out_requests_to_every_private_route_go_to_login(app, client):
    token = csrf_from(client.get("/login").get_data(as_text=True))
    checked = []
    for endpoint, method, url in routes(app):
        if access_of(app, endpoint) != "login":
            continue
        if method == "GET":
            response = client.get(url)
        else:
            response = client.post(url, data={"csrf_token": token})
        assert goes_to_login(response), f"{method} {url} ({endpoint}) answered {response.status_code}"
        checked.append(endpoint)
    # The walk really covered the app, not an empty map.
    assert {"home", "invites.index", "invites.new", "invites.show", "invites.live", "invites.cancel",
            "invites.download_ics", "auth.logout", "admin.users", "mailcatcher.index"} <= set(checked)


def test_logged_out_htmx_requests_get_401_with_hx_redirect(app, client):
    for endpoint, method, url in routes(app):
        if access_of(app, endpoint) != "login" or method != "GET":
            continue
        response = client.get(url, headers={"HX-Request": "true"})
        assert response.status_code == 401, url
        assert urlsplit(response.headers["HX-Redirect"]).path == "/login", url


def test_routes_public_for_a_reason_refuse_a_request_without_it(app, client):
    marked = [(e, m, u) for e, m, u in routes(app) if e not in PUBLIC_ENDPOINTS and access_of(app, e) != "login"]
    assert ("webhooks.smart_invites", "POST", "/webhooks/smart-invites") in marked
    for endpoint, method, url in marked:
        response = client.open(url, method=method, data=b"{}", content_type="application/json")
        assert 400 <= response.status_code < 500, f"{method} {url} ({endpoint}) answered {response.status_code}"


def test_the_open_routes_answer_without_a_login(client):
    assert client.get("/login").status_code == 200
    assert client.get("/static/app.js").status_code == 200
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


# --------------------------------------------------------------------------- admins only

def test_admin_endpoints_answer_403_to_staff(app, auth):
    admin_only = admin_endpoints(app)
    assert {"admin.users", "admin.create_user", "admin.set_active", "admin.set_role",
            "admin.reset_password"} <= admin_only
    assert "invites.index" not in admin_only
    auth.login(role=Role.STAFF)
    token = auth.token()
    for endpoint, method, url in routes(app):
        if endpoint not in admin_only:
            continue
        if method == "GET":
            response = auth.client.get(url)
        else:
            response = auth.client.post(url, data={"csrf_token": token})
        assert response.status_code == 403, f"{method} {url} ({endpoint}) answered {response.status_code}"


def test_admin_pages_open_for_admins(app, auth):
    auth.login("boss@example.org", role=Role.ADMIN)
    for endpoint, method, url in routes(app):
        if endpoint in admin_endpoints(app) and method == "GET" and "/1" not in url:
            assert auth.client.get(url).status_code == 200, url


# --------------------------------------------------------------------------- headers and escaping

@pytest.mark.parametrize("logged_in", [False, True])
def test_pages_are_sent_with_security_headers(app, client, auth, logged_in):
    if logged_in:
        auth.login()
    response = client.get("/invites" if logged_in else "/login")
    assert response.status_code == 200
    csp = {d.split()[0]: d.split()[1:] for d in
           (part.strip() for part in response.headers["Content-Security-Policy"].split(";")) if d}
    scripts = csp.get("script-src", csp.get("default-src"))
    assert scripts and "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts
    assert "*" not in scripts
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] in {"same-origin", "no-referrer", "strict-origin",
                                                   "strict-origin-when-cross-origin"}


def test_pages_have_no_inline_scripts_the_csp_would_block(app, auth):
    auth.login("boss@example.org", role=Role.ADMIN)
    invite = make_invite()
    for url in ("/invites", "/invites/new", f"/invites/{invite.id}", f"/invites/{invite.id}/edit",
                "/admin/users", "/mail"):
        html = auth.client.get(url).get_data(as_text=True)
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in tag, f"inline script on {url}"
        assert not re.search(r"<[^>]+\son[a-z]+\s*=", html), f"inline event handler on {url}"
        assert "javascript:" not in html, url


def test_user_text_is_escaped_on_the_list_and_the_invite_page(app, auth):
    auth.login()
    invite = make_invite(summary=XSS, location=XSS, description=XSS, reference="REF-<b>1</b>")
    apply_notification({"smart_invite": {"smart_invite_id": invite.smart_invite_id,
                                         "reply": {"email": "ann@example.org", "status": "declined",
                                                   "comment": '<img src=x onerror="alert(2)">'}}},
                       source=NotificationSource.WEBHOOK)
    for url in ("/invites", f"/invites/{invite.id}", f"/invites/{invite.id}/live"):
        html = auth.client.get(url).get_data(as_text=True)
        assert XSS not in html and "<img src=x" not in html and "<b>1</b>" not in html, url
    listing = auth.client.get("/invites").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listing
    page = auth.client.get(f"/invites/{invite.id}").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=" in page

