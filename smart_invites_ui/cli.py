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


api_keys_cli = AppGroup("api-keys", help="Manage API clients of /v1/smart_invites.")


@api_keys_cli.command("create")
@click.argument("name")
def create_api_key(name: str) -> None:
    """Create an API client; its secret is printed once, alone on the last line."""
    from .services import api_clients

    try:
        client, secret = api_clients.create_client(name)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"created API client {client.id} ({client.name}); its secret is shown only now:")
    click.echo(secret)


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
@click.option("--once", is_flag=True, help="Poll IMAP, run queued imports, deliver what is due, then exit.")
def worker(once: bool) -> None:
    """Deliver the outbox (emails, callbacks) until stopped with SIGTERM."""
    from .worker import Worker

    runner = Worker(current_app._get_current_object())
    if once:
        runner.run_everything_once()
        return
    runner.install_signal_handlers()
    runner.run()


@click.command("import-bookings")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Read the file and say what would happen; change and send nothing.")
@click.option("--timezone", "tz", default=None, metavar="ZONE",
              help="IANA zone of rows without one (default: DEFAULT_TIMEZONE, else UTC).")
def import_bookings(file: Path, dry_run: bool, tz: str | None) -> None:
    """Import bookings from a CSV file, with the Import page's rules.

    Prints the counts and each rejected row. Exit status: 0 every row imported,
    2 some rows rejected (the others imported), 1 the file cannot be read.
    """
    from .services import bookings_import
    from .services.bookings_csv import CsvFormatError
    from .services.invites import check_timezone

    tzid = tz or current_app.config.get("DEFAULT_TIMEZONE") or "UTC"
    try:
        check_timezone(tzid)
    except ValueError as exc:
        click.echo(f"error: --timezone: {exc}", err=True)
        sys.exit(1)
    try:
        with open(file, "rb") as stream:
            report, _ = bookings_import.import_file(stream, filename=file.name, tzid=tzid, dry_run=dry_run)
    except OSError as exc:
        click.echo(f"error: {file}: cannot be read ({exc.strerror or exc})", err=True)
        sys.exit(1)
    except CsvFormatError as exc:
        click.echo(f"error: {file}: {exc}", err=True)
        sys.exit(1)
    if dry_run:
        click.echo("dry run: nothing was imported or sent; an import would do this:")
    click.echo(f"{file.name}: {report.total_rows} rows")
    click.echo(f"created: {report.created}")
    click.echo(f"updated: {report.updated}")
    click.echo(f"unchanged: {report.unchanged}")
    click.echo(f"rejected: {report.rejected_count}")
    for row in report.rejected:
        click.echo(f"row {row.row_number}: {row.reason}")
    sys.exit(2 if report.rejected else 0)


def init_app(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(api_keys_cli)
    app.cli.add_command(demo_login)
    app.cli.add_command(worker)
    app.cli.add_command(import_bookings)
