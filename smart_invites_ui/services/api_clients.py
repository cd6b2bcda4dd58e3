"""API clients of ``/v1/smart_invites``.

The secret is shown once. It also signs the client's callbacks, so it must be
recoverable: it is stored Fernet-encrypted with a key derived from SECRET_KEY,
never in plain text, and looked up by its SHA-256 digest.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app
from sqlalchemy import select

from ..extensions import db
from ..models import ApiClient, User, now_utc

SECRET_PREFIX = "sik_"


def _fernet() -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"smart-invites-ui/api-client-secrets",
               info=b"fernet").derive(current_app.config["SECRET_KEY"].encode("utf-8"))
    return Fernet(base64.urlsafe_b64encode(key))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_client(name: str, created_by: User | None = None) -> tuple[ApiClient, str]:
    """A new client and its secret (the only time the secret is returned)."""
    name = " ".join(name.split())
    if not name:
        raise ValueError("Give the API client a name.")
    if len(name) > 200:
        raise ValueError("Keep the name under 200 characters.")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    client = ApiClient(name=name, secret_digest=_digest(secret),
                       secret_encrypted=_fernet().encrypt(secret.encode("utf-8")), created_by_id=created_by.id if created_by else None)
    db.session.add(client)
    db.session.commit()
    return client, secret


def decrypt_secret(client: ApiClient) -> str:
    try:
        return _fernet().decrypt(client.secret_encrypted).decode("utf-8")
    except InvalidToken as exc:
        raise RuntimeError(f"API client {client.id}'s secret cannot be decrypted: was SECRET_KEY changed?") from exc


def authenticate(secret: str | None) -> ApiClient | None:
    """The active client whose secret this is, compared in constant time."""
    if not secret:
        return None
    client = db.session.scalar(select(ApiClient).where(ApiClient.secret_digest == _digest(secret)))
    if client is None or client.revoked_at is not None:
        return None
    # The digest lookup is by an index; confirm with a constant-time comparison of the secret itself.
    if not hmac.compare_digest(decrypt_secret(client).encode("utf-8"), secret.encode("utf-8")):
        return None
    return client


def revoke(client: ApiClient) -> None:
    client.revoked_at = now_utc()
    db.session.commit()
