"""The ``cronofy`` invite provider: every change goes first to a Cronofy-compatible
``/v1/smart_invites`` API (Cronofy's data centers, or another instance of this app).

The API answers with the ICS that we then email, and later POSTs status changes
to our webhook route. When it refuses or fails, :class:`ProviderError` carries a
message for staff and the caller rolls back, so nothing is queued.
"""
from __future__ import annotations

import logging
from urllib.parse import urlsplit

import requests
from flask import has_request_context, request
from sqlalchemy import select

from ..api.schema import event_extras_json, event_time_json
from ..extensions import db
from ..models import Invite, Recipient
from .providers import ProviderError, ProviderResult

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/smart-invites"
USER_AGENT = "smart-invites-ui"
DEFAULT_TIMEOUT_SECONDS = 10.0


class CronofyProvider:
    name = "cronofy"

    def __init__(self, api_url: str, secret: str, callback_url: str | None, *,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS):
        self.api_url = api_url.rstrip("/")
        self.secret = secret
        self.callback_url = callback_url
        self.timeout = timeout

    @classmethod
    def from_config(cls, config) -> "CronofyProvider":
        secrets = config.get("CRONOFY_CLIENT_SECRETS") or ()
        if not secrets:
            raise ProviderError("CRONOFY_CLIENT_SECRET is not set, so the invite service cannot be used.")
        base = config.get("PUBLIC_BASE_URL") or (request.host_url if has_request_context() else "")
        if not base:
            raise ProviderError("PUBLIC_BASE_URL is not set, so the invite service cannot be told "
                                "where to send status updates.")
        return cls(config["CRONOFY_API_URL"], secrets[0], base.rstrip("/") + WEBHOOK_PATH,
                   timeout=float(config.get("CRONOFY_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS)))

    # --- the provider interface (services/providers.py) ---------------------------

    def create(self, invite: Invite) -> ProviderResult:
        ics = _ics(self._post(self._request_body(invite)))
        _adopt_uid(invite, ics)
        invite.provider_ics = ics
        return ProviderResult(ics=ics)

    def update(self, invite: Invite) -> ProviderResult:
        ics = _ics(self._post(self._request_body(invite)))
        invite.provider_ics = ics
        return ProviderResult(ics=ics)

    def remove(self, invite: Invite, recipient: Recipient) -> ProviderResult:
        data = self._post({"method": "remove", "smart_invite_id": invite.smart_invite_id,
                           "recipient": {"email": recipient.email}})
        ics = _ics(data)
        removed = (data.get("attachments") or {}).get("removed") or {}
        if not isinstance(removed.get("icalendar"), str):
            raise ProviderError("The invite service did not return the cancellation for the removed recipient.")
        invite.provider_ics = ics
        return ProviderResult(ics=ics, removed_ics=removed["icalendar"].encode("utf-8"))

    def cancel(self, invite: Invite) -> ProviderResult:
        data = self._post({"method": "cancel", "smart_invite_id": invite.smart_invite_id,
                           "recipients": [{"email": r.email} for r in invite.invited]})
        return ProviderResult(ics=_ics(data))

    # --- HTTP -----------------------------------------------------------------------

    def _request_body(self, invite: Invite) -> dict:
        body: dict = {
            "method": "request",
            "smart_invite_id": invite.smart_invite_id,
            "recipients": [{"email": r.email} for r in invite.invited],
            "event": event_body(invite),
        }
        if self.callback_url:
            body["callback_url"] = self.callback_url
        if invite.organizer_name:
            body["organizer"] = {"name": invite.organizer_name}
        return body

    def _post(self, body: dict) -> dict:
        url = f"{self.api_url}/v1/smart_invites"
        where = urlsplit(self.api_url).netloc or self.api_url
        try:
            response = requests.post(url, json=body, timeout=self.timeout, allow_redirects=False, headers={
                "Authorization": f"Bearer {self.secret}", "User-Agent": USER_AGENT, "Accept": "application/json"})
        except requests.Timeout:
            unit = "second" if self.timeout == 1 else "seconds"
            raise ProviderError(f"The invite service at {where} did not answer within {self.timeout:g} {unit}; "
                                "nothing was changed.") from None
        except requests.RequestException as exc:
            log.warning("invite service %s unreachable: %s", url, exc)
            raise ProviderError(f"The invite service at {where} could not be reached; nothing was changed.") from None
        code = response.status_code
        if code == 422:
            raise ProviderError(_describe_errors(response))
        if code in (401, 403):
            raise ProviderError(f"The invite service at {where} refused our API key (HTTP {code}); "
                                "check CRONOFY_CLIENT_SECRET.")
        if code >= 500:
            raise ProviderError(f"The invite service at {where} failed (HTTP {code}); nothing was changed. "
                                "Try again in a moment.")
        if code not in (200, 202):
            raise ProviderError(f"The invite service at {where} answered HTTP {code}; nothing was changed.")
        try:
            data = response.json()
        except ValueError:
            raise ProviderError(f"The invite service at {where} answered with something that is not JSON.") from None
        if not isinstance(data, dict):
            raise ProviderError(f"The invite service at {where} answered with something unexpected.")
        return data


def event_body(invite: Invite) -> dict:
    """The ``event`` object of a request (SPEC §5)."""
    if invite.all_day:  # Cronofy takes a plain date for all-day events
        start: object = invite.start.date().isoformat()
        end: object = invite.end.date().isoformat()
    else:
        start = event_time_json(invite.start, invite.tzid, False)
        end = event_time_json(invite.end, invite.tzid, False)
    event: dict = {"summary": invite.summary, "description": invite.description or "",
                   "start": start, "end": end, "tzid": invite.tzid}
    event.update(event_extras_json(invite.event))
    return event


def _ics(data: dict) -> bytes:
    ics = (data.get("attachments") or {}).get("icalendar")
    if not isinstance(ics, str) or "BEGIN:VCALENDAR" not in ics:
        raise ProviderError("The invite service did not return an ICS file.")
    return ics.encode("utf-8")


def _describe_errors(response: requests.Response) -> str:
    """Cronofy's 422 body as one line: ``event.summary: required; recipients[0].email: ...``."""
    try:
        errors = response.json().get("errors")
    except (ValueError, AttributeError):
        errors = None
    if not isinstance(errors, dict) or not errors:
        return f"The invite service refused it (HTTP 422): {response.text[:300]}"
    parts = []
    for field, items in errors.items():
        descriptions = [str(i.get("description") or i.get("key") or "") for i in items if isinstance(i, dict)] \
            if isinstance(items, list) else [str(items)]
        parts.append(f"{field}: {', '.join(d for d in descriptions if d) or 'invalid'}")
    return "The invite service refused it: " + "; ".join(parts)


def _adopt_uid(invite: Invite, ics: bytes) -> None:
    """Use the provider's UID so the ICS we build ourselves (a download, a CANCEL) is the same event."""
    from icalendar import Calendar

    try:
        calendar = Calendar.from_ical(ics)  # bytes: a str would be taken as a path
        uid = next((str(c.get("UID")) for c in calendar.walk("VEVENT") if c.get("UID")), None)
    except Exception:  # noqa: BLE001 - an odd ICS is still what we send; only the UID is lost
        log.warning("could not read the UID of the provider's ICS for %s", invite.smart_invite_id)
        return
    if not uid or len(uid) > 255 or uid == invite.uid:
        return
    if db.session.scalar(select(Invite.id).where(Invite.uid == uid, Invite.id != invite.id)) is None:
        invite.uid = uid
