"""Command line (SPEC §4): ``flask --app app users create``, ``worker``, ``demo-login``."""
from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from .models import Role
from .services import users as user_service

users_cli = AppGroup("users", help="Manage staff accounts.")


@users_cli.command("create")
@click.argument("email")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--role", type=click.Choice(["admin", "staff"]), default="staff", show_default=True)
@click.option("--name", default="")
@click.option("--timezone", "tz", default="UTC", show_default=True, help="IANA zone, e.g. Europe/London")
def create_user(email: str, password: str, role: str, name: str, tz: str) -> None:
    """Create a login."""
    try:
        user = user_service.create_user(email, password, Role(role), name=name, timezone=tz)
    except user_service.UserError as exc:
        for field, message in exc.errors.items():
            click.echo(f"error: {field}: {message}", err=True)
        sys.exit(1)
    click.echo(f"created {user.role.value} {user.email}")


DEMO_EMAIL = "demo@example.org"


@click.command("demo-login")
def demo_login() -> None:
    """Create the demo login if there is no user yet, and print it."""
    from sqlalchemy import func, select

    from .extensions import db
    from .models import User

    secret_file = Path(current_app.instance_path) / "demo-login.txt"
    existing = user_service.find_by_email(DEMO_EMAIL)
    if existing is None and db.session.scalar(select(func.count()).select_from(User)):
        click.echo("Users exist already; log in with one of them.")
        return
    if existing is None:
        password = secrets.token_urlsafe(12)
        user_service.create_user(DEMO_EMAIL, password, Role.ADMIN, name="Demo Receptionist",
                                 timezone=os.environ.get("DEMO_TIMEZONE", "Europe/London"))
        secret_file.write_text(password)
        secret_file.chmod(0o600)
    password = secret_file.read_text().strip() if secret_file.exists() else "(changed since; reset it in the app)"
    click.echo("=" * 60)
    click.echo(f"  Demo login:  {DEMO_EMAIL}")
    click.echo(f"  Password:    {password}")
    click.echo("=" * 60)


@click.command("worker")
@click.option("--once", is_flag=True, help="Deliver what is due now, then exit.")
def worker(once: bool) -> None:
    """Deliver the outbox (emails, callbacks) until stopped with SIGTERM."""
    from .worker import Worker

    runner = Worker(current_app._get_current_object())
    if once:
        runner.run_until_idle()
        return
    runner.install_signal_handlers()
    runner.run()


def init_app(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(demo_login)
    app.cli.add_command(worker)
