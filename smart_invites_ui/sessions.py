"""Flask's signed-cookie sessions, with each verified cookie remembered.

A signed-in page sends the same session cookie with every request it makes (the
live poll every two seconds), and checking its signature and decoding it was a
sixth of a small page's time. Here a cookie whose signature verified is kept,
keyed by its exact value; its age is still checked at every request, by
itsdangerous's rule, so a session expires exactly as before. Only sessions made
of plain values are kept (a list, such as the flashed messages, could be changed
in place by the request that opened it). The live poll's fast path
(``live_poll.UnchangedPoll``) reads sessions through the same cache.
"""
from __future__ import annotations

import time

from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import BadSignature

REMEMBERED = 4096  # cookies per process (a few hundred bytes each)
_PLAIN = (str, int, float, bool, bytes, type(None))


class RememberedCookieSessions(SecureCookieSessionInterface):
    def __init__(self) -> None:
        self._verified: dict[str, tuple[dict, int]] = {}

    def open_session(self, app: Flask, request):
        if not app.secret_key:
            return None  # Flask refuses sessions without a key (the serializer is made only when needed)
        value = request.cookies.get(self.get_cookie_name(app))
        data = self.verified(app, value) if value else None
        return self.session_class(data or {})  # a copy: the request changes its own

    def save_session(self, app: Flask, session, response) -> None:
        # Most requests leave the session as it was: then Flask only marks the response
        # as varying by cookie (when the request read the session), after reading seven
        # cookie settings it does not use.
        if not session.modified:
            if not session:
                return  # as Flask: an empty session is neither saved nor varied on
            accessed = session.accessed  # before reading ``permanent``, which counts as a read
            if not (session.permanent and app.config["SESSION_REFRESH_EACH_REQUEST"]):
                if accessed:
                    response.vary.add("Cookie")
                return
            session.accessed = accessed
        super().save_session(app, session, response)

    def verified(self, app: Flask, value: str) -> dict | None:
        """The session in cookie ``value``, or None when its signature is wrong or it
        has expired. The returned dict is shared: do not change it."""
        known = self._verified.get(value)
        if known is None:
            known = self._verify(app, value)
            if known is None:
                return None
            if all(isinstance(item, _PLAIN) for item in known[0].values()):
                if len(self._verified) >= REMEMBERED:
                    self._verified.clear()
                self._verified[value] = known
        data, signed_at = known
        age = int(time.time()) - signed_at  # itsdangerous: refused when older than the lifetime, or in the future
        if age > int(app.permanent_session_lifetime.total_seconds()) or age < 0:
            return None
        return data

    def _verify(self, app: Flask, value: str) -> tuple[dict, int] | None:
        serializer = self.get_signing_serializer(app)
        if serializer is None:
            return None
        try:
            data, signed_at = serializer.loads(value, return_timestamp=True)
        except BadSignature:
            return None
        return (data, int(signed_at.timestamp())) if isinstance(data, dict) else None
