"""Who may reach what: every route needs a login unless it is marked public with
the reason (a signature, a secret, an API key), and security headers on every response."""
from __future__ import annotations

import time
from typing import Callable

from flask import Flask, abort, current_app, g, request, session
from flask_login import current_user
from flask_wtf.csrf import generate_csrf

PUBLIC_ENDPOINTS = {"static", "auth.login", "health.healthz"}

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'; frame-src 'self'"
)


def security_headers(config) -> list[tuple[str, str]]:
    """The headers every response carries (a view may set its own instead)."""
    headers = [("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
               ("X-Frame-Options", "DENY"), ("Referrer-Policy", "same-origin")]
    if config.get("SESSION_COOKIE_SECURE"):
        headers.append(("Strict-Transport-Security", "max-age=31536000"))
    return headers


# CSRF tokens. Flask-WTF signs a new token (with a timestamp) for every request that
# renders a form, and a page of small action forms asks for it in each of them. Here a
# signed token is reused for a minute, per session and key: a page within that minute
# starts with it in ``g``, where Flask-WTF's own form fields and ``csrf_token()`` find
# it. A reused token is at most a minute older, so it is still accepted for
# WTF_CSRF_TIME_LIMIT (an hour) less that minute.
CSRF_TOKEN_REUSE_SECONDS = 60
_SIGNED_CSRF_TOKENS = "signed_csrf_tokens"  # app.extensions: {(session's secret, key): (token, signed at)}


def _csrf_field(app: Flask) -> str:
    return app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token")


def _csrf_token_key(app: Flask, field: str) -> tuple:
    """The session's raw CSRF secret and the signing key: what a signed token depends on."""
    return session.get(field), app.config.get("WTF_CSRF_SECRET_KEY") or app.secret_key


def _reuse_csrf_token(app: Flask) -> None:
    field = _csrf_field(app)
    key = _csrf_token_key(app, field)
    known = app.extensions[_SIGNED_CSRF_TOKENS].get(key) if key[0] else None
    if known is not None and 0 <= time.time() - known[1] < CSRF_TOKEN_REUSE_SECONDS:
        setattr(g, field, known[0])
        g.csrf_token_reused = True


def _remember_csrf_token(app: Flask) -> None:
    # A token made by this request (not reused) is remembered. Most requests made none:
    # they leave the session untouched (reading it would mark the response "Vary: Cookie").
    field = _csrf_field(app)
    token = g.get(field)
    if token is None or g.get("csrf_token_reused"):
        return
    key = _csrf_token_key(app, field)
    if not key[0]:
        return
    signed = app.extensions[_SIGNED_CSRF_TOKENS]
    if len(signed) >= 4096:
        signed.clear()
    signed[key] = (token, time.time())


def csrf_token() -> str:
    """The request's CSRF token (templates' ``csrf_token()``): Flask-WTF's, without
    looking its settings up again for every form on the page."""
    token = g.get(_csrf_field(current_app))
    return token if token is not None else generate_csrf()


def public(reason: str) -> Callable:
    """Mark a view as reachable without a login; ``reason`` says what protects it instead."""

    def mark(view):
        view.access = reason
        return view

    return mark


def access_of(app: Flask, endpoint: str) -> str:
    """How an endpoint is protected: "public", "login", or a marked reason."""
    if endpoint in PUBLIC_ENDPOINTS:
        return "public"
    view = app.view_functions.get(endpoint)
    return getattr(view, "access", "login")


def _holds_nul(pairs: list[tuple[str, list[str]]]) -> bool:
    return any("\x00" in key or any("\x00" in value for value in values) for key, values in pairs)


def init_app(app: Flask) -> None:
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.extensions[_SIGNED_CSRF_TOKENS] = {}

    @app.before_request
    def require_login():
        endpoint = request.endpoint
        if endpoint is None:
            return None  # 404/405 are answered by Flask
        if access_of(current_app, endpoint) != "login":
            return None
        if not current_user.is_authenticated:
            return current_app.login_manager.unauthorized()
        _reuse_csrf_token(app)
        return None

    @app.before_request
    def refuse_nul_characters():
        """NUL is never text a person typed, and PostgreSQL cannot store it in a text
        column: on the pages for people, refuse it in a query string or a plain form
        with 400 up front instead of failing with 500 on the write. Machine endpoints
        (signed, secret or API key) and multipart bodies keep their own parsers: the
        API answers 422, and a raw email is stored as received."""
        if request.endpoint is None or access_of(current_app, request.endpoint) not in ("login", "public"):
            return None
        if _holds_nul(list(request.args.lists())):
            abort(400, "Text cannot contain NUL characters.")
        if request.mimetype == "application/x-www-form-urlencoded" and _holds_nul(list(request.form.lists())):
            abort(400, "Text cannot contain NUL characters.")
        return None

    @app.after_request
    def add_security_headers(response):
        _remember_csrf_token(app)
        headers = response.headers
        present = {name.lower() for name in headers.keys()}  # a view may have set its own
        for name, value in security_headers(app.config):
            if name.lower() not in present:
                headers.add(name, value)
        return response
