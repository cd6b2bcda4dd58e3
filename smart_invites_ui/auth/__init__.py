"""Logging in and out; the login requirement for every page."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import (Blueprint, abort, current_app, flash, redirect, render_template, request, session,
                   url_for)
from flask_login import current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from sqlalchemy import bindparam, select
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired

from ..extensions import limiter, login_manager
from ..models import Role, SignedInMixin, User
from ..plain_sql import PlainSelect
from ..services import users

bp = Blueprint("auth", __name__)


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired()])


def parse_user_ref(user_ref: str | None) -> tuple[int, int] | None:
    """(user id, session version) from what ``User.get_id()`` wrote into the session."""
    ident, _, version = (user_ref or "").partition(":")
    if not ident.isdigit() or not version.isdigit():
        return None
    return int(ident), int(version)


@dataclass(frozen=True, eq=False)
class SignedInUser(SignedInMixin):
    """The signed-in person of a request: what pages show of them and what actions
    record (``id``). Read on every request with one plain query rather than loaded as
    an ORM ``User``: that load was a third of a small page's time. A view that
    changes the user itself loads the ``User``."""

    id: int
    email: str
    name: str
    role: Role
    active: bool
    timezone: str
    session_version: int


_users = User.__table__.c
#: What a ``SignedInUser`` is made of, in its fields' order.
SIGNED_IN_COLUMNS = (_users.id, _users.email, _users.name, _users.role, _users.active, _users.timezone,
                     _users.session_version)
_SIGNED_IN = PlainSelect(select(*SIGNED_IN_COLUMNS).where(_users.id == bindparam("user_id")))
#: Where the live poll's fast path (``live_poll.UnchangedPoll``), which read the signed-in user
#: to check the session, leaves it for the full path when the poll has changed.
CHECKED_USER = "smart_invites.checked_user"


@login_manager.user_loader
def load_user(user_id: str) -> SignedInUser | None:
    ref = parse_user_ref(user_id)
    if ref is None:
        return None
    checked = request.environ.get(CHECKED_USER)  # read and checked by this request, a moment ago
    if checked is not None and (checked.id, checked.session_version) == ref:
        return checked
    # On the read pool: a page that only reads then never opens the ORM session.
    row = _SIGNED_IN.read_first(user_id=ref[0])
    if row is None or row.session_version != ref[1] or not row.active:
        return None
    return SignedInUser(*row)


@login_manager.unauthorized_handler
def unauthorized():
    target = url_for("auth.login", next=request.full_path.rstrip("?") if request.method == "GET" else None)
    if request.headers.get("HX-Request"):
        # htmx would swap the login page into a fragment; send the whole window there.
        response = current_app.response_class(status=401)
        response.headers["HX-Redirect"] = target
        return response
    return redirect(target)


def _safe_next(target: str | None) -> str:
    if not target:
        return url_for("invites.index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("invites.index")
    return target.rstrip("?")


def _login_account_key() -> str:
    return "account:" + (request.form.get("email") or "").strip().lower()


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit("10 per minute", methods=["POST"])
@limiter.limit("20 per 10 minutes", methods=["POST"], key_func=_login_account_key)
def login():
    if current_user.is_authenticated:
        return redirect(url_for("invites.index"))
    form = LoginForm()
    status = 200
    if form.validate_on_submit():
        user = users.authenticate(form.email.data, form.password.data)
        if user is not None:
            session.clear()  # a fresh session at login: no fixation
            login_user(user)
            return redirect(_safe_next(request.args.get("next")))
        form.password.errors.append("That email and password do not match an active account.")
        status = 401
    elif request.method == "POST":
        status = 422
    return render_template("auth/login.html", form=form), status


@bp.post("/logout")
@login_required
def logout():
    logout_user()
    session.clear()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


def admin_required(view):
    """Staff get 403 from admin pages."""
    from functools import wraps

    @wraps(view)
    @login_required
    def wrapper(*args, **kwargs):
        if not current_user.is_admin:
            abort(403)
        return view(*args, **kwargs)

    return wrapper
