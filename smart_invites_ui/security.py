"""Who may reach what: every route needs a login unless it is marked public with
the reason (a signature, a secret, an API key), and security headers on every response."""
from __future__ import annotations

from typing import Callable

from flask import Flask, current_app, request
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


def access_of(app: Flask, endpoint: str) -> str:
    """How an endpoint is protected: "public", "login", or a marked reason."""
    if endpoint in PUBLIC_ENDPOINTS:
        return "public"
    view = app.view_functions.get(endpoint)
    return getattr(view, "access", "login")


def init_app(app: Flask) -> None:
    @app.before_request
    def require_login():
        endpoint = request.endpoint
        if endpoint is None:
            return None  # 404/405 are answered by Flask
        if access_of(current_app, endpoint) != "login":
            return None
        if not current_user.is_authenticated:
            return current_app.login_manager.unauthorized()
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
