"""App-wide pages and handlers: the home redirect and friendly error pages."""
from __future__ import annotations

from flask import Flask, current_app, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from markupsafe import Markup, escape

from .security import csrf_token

# The top navigation: (endpoint, label, admins only). Features that are not
# registered in this app are left out.
NAVIGATION = (
    ("invites.index", "Invites", False),
    ("invites.new", "New invite", False),
    ("imports.index", "Import", False),
    ("mailcatcher.index", "Mail catcher", False),
    ("inbound.index", "Inbound mail", True),
    ("api_admin.clients", "API clients", True),
    ("api_admin.deliveries", "Callbacks", True),
    ("admin.users", "Users", True),
)


MAX_PAGE = 100_000  # a bigger OFFSET is a database error (an integer out of range)


def requested_page() -> int:
    """The list page asked for (``?page=``): at least 1, and small enough for an OFFSET."""
    return min(max(request.args.get("page", 1, type=int) or 1, 1), MAX_PAGE)


def page_count(total: int, per_page: int) -> int:
    """How many pages ``total`` rows make (one, when there are none)."""
    return max((total + per_page - 1) // per_page, 1)


def nav_links() -> list[tuple[str, str]]:
    if not current_user.is_authenticated:
        return []
    return [(endpoint, label) for endpoint, label, admin_only in NAVIGATION
            if endpoint in current_app.view_functions and (current_user.is_admin or not admin_only)]


def path_for(endpoint: str, **values) -> str:
    """``url_for(endpoint, **values)`` for a page's own links, built by the route's rule
    directly: a list of rows links each row, and Flask's url_for (which looks the rule
    up among all of them, for every link) was a fifth of such a page. Only for
    endpoints with one route and no URL defaults; anything else goes to url_for."""
    rule = _single_rules().get(endpoint)
    if rule is None:
        return url_for(endpoint, **values)
    built = rule.build({key: value for key, value in values.items() if value is not None})
    if built is None:  # values the route does not accept: let url_for say so
        return url_for(endpoint, **values)
    return request.script_root + built[1]


def _single_rules() -> dict:
    app = current_app._get_current_object()
    rules = app.extensions.get("single_rules")
    if rules is None:
        by_endpoint: dict = {}
        for rule in app.url_map.iter_rules():
            by_endpoint.setdefault(rule.endpoint, []).append(rule)
        rules = {endpoint: found[0] for endpoint, found in by_endpoint.items()
                 if len(found) == 1 and not found[0].defaults and not found[0].host and not found[0].subdomain
                 and "." in endpoint and not app.url_default_functions.get(endpoint.rsplit(".", 1)[0])
                 and not app.url_default_functions.get(None)}
        app.extensions["single_rules"] = rules
    return rules


# Small pieces of markup that pages repeat in loops (a row's actions, a status), made in
# Python: as Jinja macros their calls were a third of the live fragment's rendering.
def button_form(action: str, label: str, confirm: str | None = None, cls: str = "",
                extra: dict[str, str] | None = None) -> Markup:
    """A one-button POST form with the CSRF token (``extra``: more hidden fields);
    ``confirm`` is asked first (static/app.js)."""
    confirm_attr = f' data-confirm="{escape(confirm)}"' if confirm else ""
    hidden = "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
                     for k, v in extra.items()) if extra else ""
    return Markup(f'<form method="post" action="{escape(action)}" class="inline"{confirm_attr}>\n'
                  f'  <input type="hidden" name="csrf_token" value="{escape(csrf_token())}">\n'
                  f'  {hidden}\n'
                  f'  <button type="submit" class="{escape(cls)}">{escape(label)}</button>\n'
                  f'</form>')


def status_badge(status) -> Markup:
    return Markup(f'<span class="badge badge-{escape(status.value)}">{escape(status.label)}</span>')


def _wants_json() -> bool:
    return request.path.startswith(("/v1/", "/webhooks/", "/inbound/", "/healthz"))


def init_app(app: Flask) -> None:
    app.jinja_env.globals.update(nav_links=nav_links, path_for=path_for, button_form=button_form,
                                 status_badge=status_badge)

    @app.get("/")
    def home():
        return redirect(url_for("invites.index"))

    def error_page(status: int, title: str, message: str):
        if _wants_json():
            return jsonify(error=message), status
        return render_template("error.html", status=status, title=title, message=message), status

    @app.errorhandler(CSRFError)
    def csrf_error(exc):
        return error_page(400, "Form expired", "This form has expired or was not sent by this site. "
                                               "Go back, reload the page and try again.")

    @app.errorhandler(400)
    def bad_request(exc):
        return error_page(400, "Bad request", getattr(exc, "description", "The request was not understood."))

    @app.errorhandler(403)
    def forbidden(exc):
        return error_page(403, "Not allowed", "Only an admin can open this page.")

    @app.errorhandler(404)
    def not_found(exc):
        return error_page(404, "Not found", "There is nothing at this address.")

    @app.errorhandler(413)
    def too_large(exc):
        return error_page(413, "Too large", "What was sent is larger than this app accepts.")

    @app.errorhandler(429)
    def too_many(exc):
        return error_page(429, "Too many attempts", "Too many attempts: wait a minute and try again.")
