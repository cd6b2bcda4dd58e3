"""The unchanged live poll, answered before Flask dispatches the request.

Every open invite page asks ``GET /invites/<id>/live?v=<version>`` every two
seconds, all day, and nearly always nothing has changed. This WSGI layer
answers that case with one small query and a bare 204, skipping the request
context, the hooks and the ORM session a full Flask request costs (about half
of the poll's time when measured).

It only ever answers 204, and only when every check the full path makes
passes: a session cookie signed with the app's key and not older than the
session lifetime, bound to this browser as Flask-Login's session protection
requires, naming a user who is still active at the same session version, and
an invite at exactly the version the page shows. In every other case (no
cookie, a bad signature, another browser, a revoked session, an unknown
invite, a newer version, any doubt) the request goes on to the Flask view,
which answers it as every other page would.
"""
from __future__ import annotations

import re
from hashlib import sha512
from urllib.parse import parse_qsl

from flask import Flask
from sqlalchemy import bindparam, select
from sqlalchemy.engine import Engine
from werkzeug.http import parse_cookie

from .auth import CHECKED_USER, SIGNED_IN_COLUMNS, SignedInUser, parse_user_ref
from .models import Invite, User
from .plain_sql import PlainSelect, read_engine
from .security import security_headers

LIVE_PATH = re.compile(r"/invites/([0-9]{1,18})/live\Z")

# Is the session's user still signed in (same session version, still active), and
# which version is the invite at? The user's other columns come along: when the poll has
# changed, the full path takes the signed-in user from here instead of reading it again.
_POLL_CHECK = PlainSelect(select(Invite.version, *SIGNED_IN_COLUMNS).select_from(Invite)
               .join(User, User.id == bindparam("user_id")).where(Invite.id == bindparam("invite_id")))


def session_identifier(environ: dict) -> str:
    """What Flask-Login's session protection binds a session to (its
    ``_create_identifier``: the first X-Forwarded-For address, else the remote
    address, and the User-Agent), computed from the WSGI environ.
    tests/test_live_poll.py holds it equal to Flask-Login's own."""
    address = environ.get("HTTP_X_FORWARDED_FOR", environ.get("REMOTE_ADDR"))
    if address is not None:
        address = address.encode("utf-8").split(b",")[0].strip()
    user_agent = environ.get("HTTP_USER_AGENT")
    if user_agent is not None:
        user_agent = user_agent.encode("utf-8")
    return sha512(f"{address}|{user_agent}".encode("utf8")).hexdigest()


class UnchangedPoll:
    """WSGI middleware: 204 for a signed-in user's poll of an invite that has not changed."""

    def __init__(self, app: Flask, wsgi_app):
        self.app = app
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "GET":
            match = LIVE_PATH.match(environ.get("PATH_INFO", ""))
            if match is not None and self._unchanged(environ, int(match.group(1))):
                start_response("204 NO CONTENT", [*security_headers(self.app.config), ("Vary", "Cookie")])
                return []
        return self.wsgi_app(environ, start_response)

    def _unchanged(self, environ: dict, invite_id: int) -> bool:
        shown = _first_int(environ.get("QUERY_STRING", ""), "v")
        if shown is None:
            return False
        session = self._session(environ)
        if session is None:
            return False
        ref = parse_user_ref(session.get("_user_id"))
        if ref is None:
            return False
        mode = self.app.config.get("SESSION_PROTECTION", self.app.login_manager.session_protection)
        if mode in ("basic", "strong") and session.get("_id") != session_identifier(environ):
            return False  # the full path decides (strong: signs out; basic: marks not fresh)
        try:
            row = self._check(invite_id, ref[0])
        except self.engine.dialect.loaded_dbapi.Error:
            return False  # e.g. the database restarted: the full path answers (its reads try a new connection)
        if row is None:
            return False
        user = SignedInUser(*row[1:])
        if not user.active or user.session_version != ref[1]:
            return False  # the full path signs the session out
        if row.version == shown:
            return True
        environ[CHECKED_USER] = user  # changed: the full path's user loader takes it from here
        return False

    def _check(self, invite_id: int, user_id: int) -> tuple | None:
        # A PlainSelect on a pooled DBAPI connection: SQLAlchemy's execution layer costs
        # as much as the query itself here. Not PlainSelect.read: a dead connection is not
        # tried again, the full path answers instead.
        connection = self.engine.raw_connection()
        try:
            rows = _POLL_CHECK.on_dbapi(connection, self.engine.dialect, invite_id=invite_id, user_id=user_id)
        except BaseException:
            connection.invalidate()  # a connection that failed is not given out again
            raise
        finally:
            connection.close()  # back to the pool
        return rows[0] if rows else None

    @property
    def engine(self) -> Engine:
        """The read pool (``plain_sql.read_engine``): on a database server in autocommit and
        without pre-ping; a dead connection here only sends the poll down the full path,
        and is thrown away."""
        return read_engine(self.app)

    def _session(self, environ: dict) -> dict | None:
        value = parse_cookie(environ).get(self.app.config["SESSION_COOKIE_NAME"])
        return self.app.session_interface.verified(self.app, value) if value else None


def _first_int(query: str, name: str) -> int | None:
    """``request.args.get(name, type=int)``: the first value, if it is an integer."""
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == name:
            try:
                return int(value)
            except ValueError:
                return None
    return None
