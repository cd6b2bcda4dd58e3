"""Settings read from the environment (SPEC §3), validated at start-up."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from email.utils import parseaddr


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


def _bool(value: str | None, default: bool = False) -> bool:
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def database_url(raw: str | None, instance_path: str) -> str:
    """Heroku still hands out ``postgres://`` URLs, which SQLAlchemy 2 refuses."""
    if not raw:
        return "sqlite:///" + str(Path(instance_path) / "smart_invites.sqlite3")
    if raw.startswith("postgres://"):
        raw = "postgresql://" + raw[len("postgres://"):]
    if raw.startswith("postgresql://"):
        # psycopg 3 is the driver we ship.
        raw = "postgresql+psycopg://" + raw[len("postgresql://"):]
    return raw


def split_secrets(raw: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (raw or "").split(",") if part.strip())


@dataclass(frozen=True)
class MailFrom:
    """``MAIL_FROM`` split so the reply mailbox can be plus-addressed per invite."""

    local: str
    domain: str

    @classmethod
    def parse(cls, raw: str) -> "MailFrom":
        _, address = parseaddr(raw)
        if "@" not in address:
            raise ConfigError(f"MAIL_FROM must be an email address, got {raw!r}")
        local, domain = address.rsplit("@", 1)
        local = local.split("+", 1)[0]
        return cls(local=local, domain=domain)

    @property
    def address(self) -> str:
        return f"{self.local}@{self.domain}"

    def for_token(self, token: str) -> str:
        return f"{self.local}+{token}@{self.domain}"


def from_environment(environ: dict[str, str], instance_path: str) -> dict:
    """Build the Flask config mapping from environment variables."""
    public_base_url = environ.get("PUBLIC_BASE_URL", "").rstrip("/")
    provider = environ.get("SMART_INVITES_PROVIDER", "local").strip().lower() or "local"
    if provider not in {"local", "cronofy"}:
        raise ConfigError(f"SMART_INVITES_PROVIDER must be 'local' or 'cronofy', got {provider!r}")
    smtp_url = environ.get("SMTP_URL", "").strip()
    if smtp_url and urlsplit(smtp_url).scheme not in {"smtp", "smtps"}:
        raise ConfigError("SMTP_URL must start with smtp:// or smtps://")
    imap_url = environ.get("IMAP_URL", "").strip()
    if imap_url and urlsplit(imap_url).scheme not in {"imap", "imaps"}:
        raise ConfigError("IMAP_URL must start with imaps:// or imap://")
    mail_from = MailFrom.parse(environ.get("MAIL_FROM", "invites@localhost"))
    secure = public_base_url.startswith("https://")
    uri = database_url(environ.get("DATABASE_URL"), instance_path)
    return {
        "SECRET_KEY": environ.get("SECRET_KEY") or None,
        "SQLALCHEMY_DATABASE_URI": uri,
        # Pre-ping survives a PostgreSQL restart; an embedded SQLite file needs none.
        "SQLALCHEMY_ENGINE_OPTIONS": {} if uri.startswith("sqlite") else {"pool_pre_ping": True},
        "SMART_INVITES_PROVIDER": provider,
        "CRONOFY_API_URL": environ.get("CRONOFY_API_URL", "https://api.cronofy.com").rstrip("/"),
        "CRONOFY_CLIENT_SECRETS": split_secrets(environ.get("CRONOFY_CLIENT_SECRET")),
        "PUBLIC_BASE_URL": public_base_url,
        "MAIL_FROM": mail_from,
        "SMTP_URL": smtp_url,
        "INBOUND_EMAIL_SECRET": environ.get("INBOUND_EMAIL_SECRET") or None,
        "IMAP_URL": imap_url or None,
        "IMAP_POLL_SECONDS": float(environ.get("IMAP_POLL_SECONDS", "30")),
        "ALLOW_PRIVATE_CALLBACK_URLS": _bool(environ.get("ALLOW_PRIVATE_CALLBACK_URLS")),
        "DEMO_MODE": _bool(environ.get("DEMO_MODE")),
        "DEFAULT_TIMEZONE": environ.get("DEFAULT_TIMEZONE", "UTC"),
        "RATELIMIT_STORAGE_URI": environ.get("RATELIMIT_STORAGE_URI", "memory://"),
        "RATELIMIT_ENABLED": _bool(environ.get("RATELIMIT_ENABLED"), default=True),
        "WTF_CSRF_TIME_LIMIT": None,  # tokens live as long as the session
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": secure,
        "REMEMBER_COOKIE_SECURE": secure,
        "REMEMBER_COOKIE_HTTPONLY": True,
        "MAX_CONTENT_LENGTH": 30 * 1024 * 1024,
        "OUTBOX_BATCH_SIZE": int(environ.get("OUTBOX_BATCH_SIZE", "50")),
        "OUTBOX_LEASE_SECONDS": int(environ.get("OUTBOX_LEASE_SECONDS", "300")),
        # SMTP connections a worker delivers a batch on, side by side (threads): for a relay far
        # away, where each message waits tens of milliseconds. One by default: against a server
        # on loopback, threads only contend for the GIL (bench/results/2026-11-22-postgresql.md).
        "OUTBOX_CONNECTIONS": max(int(environ.get("OUTBOX_CONNECTIONS", "1")), 1),
        # First wait before an email is retried; it doubles with each attempt, up to 4 h.
        "OUTBOX_RETRY_BASE_SECONDS": float(environ.get("OUTBOX_RETRY_BASE_SECONDS", "30")),
        "WORKER_POLL_SECONDS": float(environ.get("WORKER_POLL_SECONDS", "1")),
        "INVITES_PER_PAGE": 25,
    }


def check(config: dict, *, debug: bool, testing: bool) -> None:
    """Fail fast on what would make the app unsafe or useless."""
    if not config.get("SECRET_KEY"):
        if debug or testing:
            config["SECRET_KEY"] = "dev-only-insecure-key"
        else:
            raise ConfigError(
                "SECRET_KEY is not set. Set the SECRET_KEY environment variable to a long random "
                "string (for example: python -c 'import secrets; print(secrets.token_hex(32))')."
            )
    if config["SMART_INVITES_PROVIDER"] == "cronofy" and not config["CRONOFY_CLIENT_SECRETS"]:
        raise ConfigError("SMART_INVITES_PROVIDER=cronofy needs CRONOFY_CLIENT_SECRET")
