"""Staff accounts: creation, roles, disabling and password resets."""
from __future__ import annotations

from sqlalchemy import func, select

from ..extensions import db
from ..models import Role, User
from .invites import check_timezone, normalise_email

MIN_PASSWORD_LENGTH = 10


class UserError(Exception):
    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


def find_by_email(email: str) -> User | None:
    return db.session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))


def _check_password(password: str) -> str | None:
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"Use at least {MIN_PASSWORD_LENGTH} characters."
    return None


def create_user(email: str, password: str, role: Role | str = Role.STAFF, *, name: str = "",
                timezone: str = "UTC") -> User:
    errors: dict[str, str] = {}
    try:
        email = normalise_email(email)
    except ValueError as exc:
        errors["email"] = str(exc)
    else:
        if find_by_email(email):
            errors["email"] = f"A user with the address {email} already exists."
    problem = _check_password(password)
    if problem:
        errors["password"] = problem
    try:
        role = Role(role)
    except ValueError:
        errors["role"] = "Choose admin or staff."
    try:
        check_timezone(timezone)
    except ValueError as exc:
        errors["timezone"] = str(exc)
    if errors:
        raise UserError(errors)
    user = User(email=email, name=name.strip(), role=role, timezone=timezone, active=True)
    user.set_password(password)
    db.session.add(user)
    db.session.commit()
    return user


def reset_password(user: User, password: str) -> None:
    problem = _check_password(password)
    if problem:
        raise UserError({"password": problem})
    user.set_password(password)
    user.session_version += 1  # signs out every existing session
    db.session.commit()


def set_active(user: User, active: bool, *, acting: User | None = None) -> None:
    if not active and acting is not None and acting.id == user.id:
        raise UserError({"": "You cannot disable your own account."})
    user.active = active
    if not active:
        user.session_version += 1
    db.session.commit()


def set_role(user: User, role: Role, *, acting: User | None = None) -> None:
    if acting is not None and acting.id == user.id and role != Role.ADMIN:
        raise UserError({"role": "You cannot remove your own admin role."})
    user.role = role
    db.session.commit()


def authenticate(email: str, password: str) -> User | None:
    user = find_by_email(email)
    if user is None:
        # Hash anyway so a missing account takes as long as a wrong password.
        User(password_hash="").set_password(password)
        return None
    if not user.check_password(password) or not user.active:
        return None
    return user
