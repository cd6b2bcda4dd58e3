"""``POST /webhooks/smart-invites``: signed status notifications (SPEC §4).

Two ways in, one answer. ``SignedNotifications``, a WSGI layer in front of Flask, answers
the usual delivery itself: signed, JSON, a smart invite notification, applied. Everything
else (no or a wrong signature, a body that is not JSON or not a notification, too large, no
Content-Length, applying failed) goes on, body and all, to the Flask view, which answers it
as every request is answered.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging

from flask import Blueprint, Flask, current_app, jsonify, request
from werkzeug.http import HTTP_STATUS_CODES

from ..extensions import csrf, db
from ..models import Notification, NotificationOutcome, NotificationSource
from ..security import public, security_headers
from ..services.callbacks import SIGNATURE_HEADER, verify
from ..services.notifications import ApplyResult, MalformedNotification, apply_notification

bp = Blueprint("webhooks", __name__)
log = logging.getLogger(__name__)

PATH = "/webhooks/smart-invites"
_SIGNATURE_KEY = "HTTP_" + SIGNATURE_HEADER.upper().replace("-", "_")  # the header in the WSGI environ


@bp.post(PATH)
@csrf.exempt
@public("signature")
def smart_invites():
    body = request.get_data(cache=False)
    if not _signed(current_app, body, request.headers.get(SIGNATURE_HEADER)):
        return jsonify(error="invalid or missing Cronofy-HMAC-SHA256 signature"), 401
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return jsonify(error="the body is not valid JSON"), 400
    try:
        result = apply_notification(payload, source=NotificationSource.WEBHOOK, raw=body)
    except MalformedNotification as exc:
        _keep_rejected(body, str(exc))
        return jsonify(error=f"not a smart invite notification: {exc}"), 400
    return jsonify(_answer(result)), _status(result)


def _signed(app: Flask, body: bytes, signature: str | None) -> bool:
    secrets = app.config["CRONOFY_CLIENT_SECRETS"]
    return bool(secrets) and verify(body, signature, secrets)


def _answer(result: ApplyResult) -> dict:
    return {"outcome": result.outcome.value, "detail": result.detail}


def _status(result: ApplyResult) -> int:
    return 202 if result.outcome == NotificationOutcome.UNKNOWN_INVITE else 200


def _keep_rejected(body: bytes, reason: str) -> None:
    """A signed but unusable notification is still kept, with the reason."""
    key = "webhook-rejected:" + hashlib.sha256(body).hexdigest()
    if db.session.query(Notification.id).filter_by(dedupe_key=key).first() is None:
        db.session.add(Notification(source=NotificationSource.WEBHOOK, dedupe_key=key,
                                    body=body.decode("utf-8", "replace"), outcome=NotificationOutcome.IGNORED,
                                    detail=reason))
        db.session.commit()


class SignedNotifications:
    """WSGI middleware: the usual signed notification, answered before Flask dispatches it.

    Deliveries come in bursts (a clinic's morning of replies), and for one Flask's request
    machinery (the request context, the session, the hooks, the response object) cost more
    than verifying, parsing and answering it: 157 us of a webhook's 550 us on SQLite,
    against 25 us here (bench/results/, tenth round). This layer answers only when every
    step succeeds as it would in the view, with the view's status, JSON and headers. In any
    other case the request, its body put back, goes on to the view, which answers it: 401,
    400 (an unusable notification is kept with the reason), 413, or the app's 500 when
    applying failed (tried once more there: a notification is applied all or nothing).
    """

    def __init__(self, app: Flask, wsgi_app):
        self.app = app
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "POST" and environ.get("PATH_INFO") == PATH:
            answered = self._applied(environ)
            if answered is not None:
                status, body = answered
                start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                        *security_headers(self.app.config)])
                return [body]
        return self.wsgi_app(environ, start_response)

    def _applied(self, environ: dict) -> tuple[str, bytes] | None:
        """The answer to a usual delivery, applied; None for the view to answer."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return None  # none (chunked, say), or not a number
        limit = self.app.config.get("MAX_CONTENT_LENGTH")
        if length < 0 or (limit is not None and length > limit):
            return None
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)  # for the view, should it answer
        if len(body) != length or not _signed(self.app, body, environ.get(_SIGNATURE_KEY)):
            return None
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            return None
        try:
            with self.app.app_context():  # as a request would have (Flask's is not pushed here)
                result = apply_notification(payload, source=NotificationSource.WEBHOOK, raw=body)
        except MalformedNotification:
            return None  # raised before anything was written
        except Exception:
            log.warning("a webhook notification could not be applied; the view tries once more", exc_info=True)
            return None
        code = _status(result)
        # As ``jsonify`` writes it: the app's JSON provider, compact, with a final newline.
        body = self.app.json.dumps(_answer(result), separators=(",", ":")) + "\n"
        return f"{code} {HTTP_STATUS_CODES[code].upper()}", body.encode()
