"""Who may reach what: every route needs a login unless it is marked public with
the reason (a signature, a secret, an API key), and security headers on every response."""
from __future__ import annotations

from typing import Callable

from flask import Flask, abort, current_app, request
from flask_login import current_user

PUBLIC_ENDPOINTS = {"static", "auth.login", "health.healthz"}

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'; frame-src 'self'"
)


def public(reason: str) -> Callable:
    """Mark a view as reachable without a login; ``reason`` says what protects it instead."""

    def mark(view):
        view.access = reason
        return view

    return mark


def login_checked_in_view(view: Callable) -> Callable:
    """The view needs a login but checks it itself (the live poll folds the check
    into the query it makes anyway); it must answer ``unauthorized()`` when not."""
    view.login_checked_in_view = True
    return view


def access_of(app: Flask, endpoint: str) -> str:
    """How an endpoint is protected: "public", "login", or a marked reason."""
    if endpoint in PUBLIC_ENDPOINTS:
        return "public"
    view = app.view_functions.get(endpoint)
    return getattr(view, "access", "login")


def _holds_nul(pairs: list[tuple[str, list[str]]]) -> bool:
    return any("\x00" in key or any("\x00" in value for value in values) for key, values in pairs)


def init_app(app: Flask) -> None:
    @app.before_request
    def require_login():
        endpoint = request.endpoint
        if endpoint is None:
            return None  # 404/405 are answered by Flask
        if access_of(current_app, endpoint) != "login":
            return None
        if getattr(current_app.view_functions[endpoint], "login_checked_in_view", False):
            return None
        if not current_user.is_authenticated:
            return current_app.login_manager.unauthorized()
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
    def security_headers(response):
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if app.config.get("SESSION_COOKIE_SECURE"):
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response
