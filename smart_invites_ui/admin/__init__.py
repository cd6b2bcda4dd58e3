"""Admin pages: staff accounts (and, as features arrive, API clients and deliveries)."""
from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import EmailField, PasswordField, SelectField, StringField
from wtforms.validators import DataRequired, Length, Optional

from ..auth import admin_required
from ..extensions import db
from ..invites.forms import ActionForm, timezone_choices
from ..models import Role, User
from ..services import users as service

bp = Blueprint("admin", __name__, url_prefix="/admin")


class UserForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired()])
    name = StringField("Name", validators=[Optional(), Length(max=200)])
    password = PasswordField("Password", validators=[DataRequired()])
    role = SelectField("Role", choices=[("staff", "Staff"), ("admin", "Admin")])
    timezone = SelectField("Time zone", choices=timezone_choices, default="UTC")


class ResetForm(FlaskForm):
    password = PasswordField("New password", validators=[DataRequired()])


def _user_or_404(user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None:
        abort(404)
    return user


def _render_users(form: UserForm, status: int = 200):
    all_users = db.session.scalars(select(User).order_by(User.email)).all()
    return render_template("admin/users.html", users=all_users, form=form, action_form=ActionForm(),
                           reset_form=ResetForm()), status


@bp.get("/users")
@admin_required
def users():
    return _render_users(UserForm())


@bp.post("/users")
@admin_required
def create_user():
    form = UserForm()
    if form.validate_on_submit():
        try:
            user = service.create_user(form.email.data, form.password.data, form.role.data,
                                       name=form.name.data or "", timezone=form.timezone.data)
        except service.UserError as exc:
            for name, message in exc.errors.items():
                getattr(form, name).errors = [*getattr(form, name).errors, message]
        else:
            flash(f"Added {user.email} ({user.role.value}).", "success")
            return redirect(url_for(".users"))
    return _render_users(form, 422)


@bp.post("/users/<int:user_id>/active")
@admin_required
def set_active(user_id: int):
    user = _user_or_404(user_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    active = request.form.get("active") == "1"
    try:
        service.set_active(user, active, acting=current_user)
    except service.UserError as exc:
        flash(str(exc).lstrip(": "), "error")
    else:
        flash(f"{user.email} is {'enabled' if active else 'disabled and signed out'}.", "success")
    return redirect(url_for(".users"))


@bp.post("/users/<int:user_id>/role")
@admin_required
def set_role(user_id: int):
    user = _user_or_404(user_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    try:
        service.set_role(user, Role(request.form.get("role", "staff")), acting=current_user)
    except (service.UserError, ValueError) as exc:
        flash(str(exc), "error")
    else:
        flash(f"{user.email} is now {user.role.value}.", "success")
    return redirect(url_for(".users"))


@bp.post("/users/<int:user_id>/password")
@admin_required
def reset_password(user_id: int):
    user = _user_or_404(user_id)
    form = ResetForm()
    if not form.validate_on_submit():
        flash("Enter a new password.", "error")
        return redirect(url_for(".users"))
    try:
        service.reset_password(user, form.password.data)
    except service.UserError as exc:
        flash(f"Password not changed: {exc.errors['password']}", "error")
    else:
        flash(f"New password set for {user.email}; their sessions are signed out.", "success")
    return redirect(url_for(".users"))
