"""``GET|POST /v1/smart_invites``: the Cronofy-compatible API (SPEC §4–5).

``Authorization: Bearer <API client secret>``. One request is one transaction.
"""
from __future__ import annotations

import json
import logging
import time
from datetime import timedelta

from flask import Blueprint, Response, request
from flask_limiter.util import get_remote_address
from limits import parse
from sqlalchemy.exc import IntegrityError

from ..extensions import csrf, db, limiter
from ..models import ApiClient, now_utc
from ..security import public
from ..services import api_clients
from ..services.providers import ProviderError
from . import operations
from .operations import ApiError
from .schema import ApiValidationError, parse_api_request

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/v1")

MAX_BODY_BYTES = 1024 * 1024
_TRUE = {"true", "1", "yes"}


def _json(data: dict, status: int = 200) -> Response:
    """JSON in the seeds' key order (``jsonify`` would sort the keys)."""
    return Response(json.dumps(data, ensure_ascii=False), status=status,
                    mimetype="application/json; charset=utf-8")


def _error(status: int, field: str, key: str, description: str) -> Response:
    return _json(ApiError.one(status, field, key, description).as_json(), status)


def _unauthorized() -> Response:
    response = _error(401, "authorization", "unauthorized",
                      "a valid API key is required: Authorization: Bearer <secret>")
    response.headers["WWW-Authenticate"] = 'Bearer realm="smart_invites"'
    return response


# Wrong API keys, counted per client address in the rate limiter's storage (Redis in
# production). Only refused keys count, so a booking system using its right key is never
# limited, and no hook runs on the requests that do not need it.
WRONG_KEYS_LIMIT = parse("30 per minute")
_WRONG_KEYS = "api-wrong-keys"


def _wrong_keys_wait() -> int | None:
    """Seconds before this address may try a key again, when it sent too many wrong ones."""
    if not limiter.enabled:
        return None
    address = get_remote_address()
    if limiter.limiter.test(WRONG_KEYS_LIMIT, _WRONG_KEYS, address):
        return None
    reset_at = limiter.limiter.get_window_stats(WRONG_KEYS_LIMIT, _WRONG_KEYS, address).reset_time
    return max(1, int(reset_at - time.time()) + 1)


def _count_wrong_key() -> None:
    if limiter.enabled:
        limiter.limiter.hit(WRONG_KEYS_LIMIT, _WRONG_KEYS, get_remote_address())


def _authenticated_client() -> ApiClient | None:
    scheme, _, secret = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return None
    client = api_clients.authenticate(secret.strip())
    if client is not None and (client.last_used_at is None or client.last_used_at < now_utc() - timedelta(minutes=1)):
        client.last_used_at = now_utc()  # committed with the request; at most once a minute
    return client


@bp.route("/smart_invites", methods=["GET", "POST"])
@csrf.exempt
@public("api key")
def smart_invites():
    wait = _wrong_keys_wait()
    if wait is not None:
        response = _error(429, "authorization", "too_many_attempts",
                          f"too many requests with a wrong API key from this address: try again in {wait} s")
        response.headers["Retry-After"] = str(wait)
        return response
    try:
        client = _authenticated_client()
    except RuntimeError:  # the secret matched but cannot be decrypted: SECRET_KEY changed
        log.exception("API client secret cannot be decrypted")
        return _error(500, "authorization", "server_error", "this server cannot read its API keys: "
                      "its SECRET_KEY was changed")
    if client is None:
        _count_wrong_key()
        return _unauthorized()
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _error(413, "body", "too_large", "must be at most 1 MB")
    try:
        if request.method == "GET":
            return _get()
        return _post(client)
    except ApiError as exc:
        db.session.rollback()
        return _json(exc.as_json(), exc.status)


def _get():
    # The official Python client sends a "{}" body even on GET: the body is ignored.
    invite = operations.find_invite(request.args.get("smart_invite_id", ""))
    include_ics = request.args.get("include_ics", "").strip().lower() in _TRUE
    email = request.args.get("recipient_email", "").strip()
    recipient = None
    if email:
        recipient = invite.recipient(email)
        if recipient is None:
            raise ApiError.one(404, "recipient_email", "not_found", "not a recipient of this smart invite")
    data = operations.invite_json(invite, recipient=recipient, with_replies=recipient is not None,
                                  include_ics=include_ics)
    db.session.commit()  # last_used_at
    return _json(data)


def _post(client: ApiClient):
    raw = request.get_data(cache=False)
    if len(raw) > MAX_BODY_BYTES:  # a chunked body has no Content-Length to check first
        return _error(413, "body", "too_large", "must be at most 1 MB")
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (UnicodeDecodeError, ValueError):
        return _error(400, "body", "invalid", "must be a JSON object")
    try:
        req = parse_api_request(body)
    except ApiValidationError as exc:
        return _json(exc.as_json(), 422)

    for attempt in (1, 2):
        try:
            invite, removed = operations.handle(req, client)
            db.session.commit()
            break
        except IntegrityError:
            # Two requests created the same smart_invite_id at once: the second one updates it.
            db.session.rollback()
            if attempt == 2:
                raise
        except ProviderError as exc:
            db.session.rollback()
            return _error(502, "provider", "failed", str(exc))

    if removed is not None:
        data = operations.invite_json(invite, removed=removed)
    elif req.single:
        data = operations.invite_json(invite, recipient=invite.recipient(req.recipients[0]), include_ics=True)
    else:
        data = operations.invite_json(invite, include_ics=True)
    return _json(data)
