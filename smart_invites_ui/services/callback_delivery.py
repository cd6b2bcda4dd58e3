"""Delivering a queued callback: sign with the API client's secret and POST it."""
from __future__ import annotations

from flask import current_app
from sqlalchemy import Row

from ..extensions import db
from ..models import ApiClient
from .callbacks import deliver_callback, sign
from .outbox import Outcome


def client_secret(client: ApiClient) -> str:
    from .api_clients import decrypt_secret

    return decrypt_secret(client)


def deliver_callback_message(message: Row) -> Outcome:
    client = db.session.get(ApiClient, message.api_client_id) if message.api_client_id else None
    if client is None:
        return Outcome(ok=False, retry=False, error="no API client to sign this callback with")
    if client.revoked_at is not None:
        return Outcome(ok=False, retry=False, error="the API client was revoked: its callbacks are no longer sent")
    body = message.payload or b""
    result = deliver_callback(message.target, body, sign(body, client_secret(client)),
                              allow_private=current_app.config["ALLOW_PRIVATE_CALLBACK_URLS"])
    return Outcome(ok=result.ok, retry=result.retry, error=result.error, status_code=result.status_code,
                   transport="http")
