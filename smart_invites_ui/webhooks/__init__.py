"""``POST /webhooks/smart-invites``: signed status notifications (SPEC §4)."""
from __future__ import annotations

import hashlib
import json

from flask import Blueprint, current_app, jsonify, request

from ..extensions import csrf, db
from ..models import Notification, NotificationOutcome, NotificationSource
from ..security import public
from ..services.callbacks import SIGNATURE_HEADER, verify
from ..services.notifications import MalformedNotification, apply_notification

bp = Blueprint("webhooks", __name__)


@bp.post("/webhooks/smart-invites")
@csrf.exempt
@public("signature")
def smart_invites():
    body = request.get_data(cache=False)
    secrets = current_app.config["CRONOFY_CLIENT_SECRETS"]
    if not secrets or not verify(body, request.headers.get(SIGNATURE_HEADER), secrets):
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
    status = 202 if result.outcome == NotificationOutcome.UNKNOWN_INVITE else 200
    return jsonify(outcome=result.outcome.value, detail=result.detail), status


def _keep_rejected(body: bytes, reason: str) -> None:
    """A signed but unusable notification is still kept, with the reason."""
    key = "webhook-rejected:" + hashlib.sha256(body).hexdigest()
    if db.session.query(Notification.id).filter_by(dedupe_key=key).first() is None:
        db.session.add(Notification(source=NotificationSource.WEBHOOK, dedupe_key=key,
                                    body=body.decode("utf-8", "replace"), outcome=NotificationOutcome.IGNORED,
                                    detail=reason))
        db.session.commit()
