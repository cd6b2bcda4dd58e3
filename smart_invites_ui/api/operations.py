"""What ``/v1/smart_invites`` does (SPEC §5): upsert, cancel and remove through the
invite services, and an invite as Cronofy's JSON.

Nothing here commits: the route runs one request as one transaction. Changes
made through the API queue no email, because the API client sends the ICS it
gets back, as with Cronofy.
"""
from __future__ import annotations

from sqlalchemy import select

from ..domain import InviteSource, ITipMethod, RecipientStatus
from ..models import ApiClient, Invite, Recipient, Reply
from ..extensions import db
from ..services import invites as invite_service
from ..services.invite_mail import invite_ics
from ..services.notifications import recipient_json, reply_json
from .schema import MAX_SMART_INVITE_ID, ApiRequest, event_extras_json, event_time_json

# Where a service's error about a field shows in Cronofy's ``errors`` object.
_FIELDS = {
    "summary": "event.summary",
    "start": "event.start",
    "end": "event.end",
    "tzid": "event.tzid",
    "recipients": "recipients",
    "smart_invite_id": "smart_invite_id",
}


class ApiError(Exception):
    """A request that cannot be done: the HTTP status and Cronofy's ``errors`` object."""

    def __init__(self, status: int, errors: dict[str, list[dict[str, str]]]):
        self.status = status
        self.errors = errors
        super().__init__(str(errors))

    @classmethod
    def one(cls, status: int, field: str, key: str, description: str) -> "ApiError":
        return cls(status, {field: [{"key": f"errors.{key}", "description": description}]})

    def as_json(self) -> dict:
        return {"errors": self.errors}


def _from_invite_error(exc: invite_service.InviteError, recipient_field: str) -> ApiError:
    errors: dict[str, list[dict[str, str]]] = {}
    for field, message in exc.errors.items():
        name = _FIELDS.get(field, recipient_field if field == "recipient" else "smart_invite_id")
        errors.setdefault(name, []).append({"key": "errors.invalid", "description": message})
    return ApiError(422, errors)


def _recipient_field(req: ApiRequest) -> str:
    return "recipient.email" if req.single else "recipients"


def find_invite(reference: str) -> Invite:
    """The invite with this ``smart_invite_id``, or a 404 (422 for a malformed id)."""
    if not reference or not reference.strip():
        raise ApiError.one(422, "smart_invite_id", "required", "required")
    if len(reference) > MAX_SMART_INVITE_ID:
        raise ApiError.one(422, "smart_invite_id", "too_long", f"must be at most {MAX_SMART_INVITE_ID} characters")
    invite = invite_service.get_by_reference(reference)
    if invite is None:
        raise ApiError.one(404, "smart_invite_id", "not_found", "no smart invite with this id")
    return invite


def _adopt_callback(invite: Invite, req: ApiRequest, client: ApiClient) -> None:
    """A callback URL is signed with the secret of the client that gave it."""
    if not req.callback_url or req.callback_url == invite.callback_url:
        return
    if invite.api_client_id not in (None, client.id):
        raise ApiError.one(422, "callback_url", "invalid",
                           "this smart invite belongs to another API client; its callback_url cannot be changed")
    invite.callback_url = req.callback_url
    invite.api_client = client


def handle(req: ApiRequest, client: ApiClient) -> tuple[Invite, Recipient | None]:
    """Apply one POST; returns the invite and, for ``remove``, the removed recipient."""
    try:
        if req.method == "request":
            return upsert(req, client), None
        if req.method == "cancel":
            return cancel(req, client), None
        return remove(req, client)
    except invite_service.InviteError as exc:
        raise _from_invite_error(exc, _recipient_field(req)) from exc


def upsert(req: ApiRequest, client: ApiClient) -> Invite:
    """Create the invite, or update it: new event details, new recipients (never fewer)."""
    assert req.event is not None
    invite = invite_service.get_by_reference(req.smart_invite_id)
    if invite is None:
        invite = invite_service.create_invite(
            event=req.event, recipients=[invite_service.NewRecipient(email) for email in req.recipients],
            smart_invite_id=req.smart_invite_id, organizer_name=req.organizer_name, source=InviteSource.API,
            api_client=client, callback_url=req.callback_url, commit=False, send_emails=False)
        invite.single_recipient = req.single
        return invite
    if invite.is_cancelled:
        raise ApiError.one(422, "smart_invite_id", "invalid",
                           "this smart invite is cancelled; use a new smart_invite_id")
    _adopt_callback(invite, req, client)
    invite_service.update_event(invite, req.event, organizer_name=req.organizer_name or None,
                                commit=False, send_emails=False)
    new = [invite_service.NewRecipient(email) for email in req.recipients
           if (r := invite.recipient(email)) is None or r.status == RecipientStatus.REMOVED]
    if new:
        invite_service.add_recipients(invite, new, commit=False, send_emails=False)
    return invite


def cancel(req: ApiRequest, client: ApiClient) -> Invite:
    """Cancel the whole invite; cancelling it again changes nothing."""
    invite = find_invite(req.smart_invite_id)
    _adopt_callback(invite, req, client)
    if not invite.is_cancelled:
        invite_service.cancel_invite(invite, commit=False, send_emails=False)
    return invite


def remove(req: ApiRequest, client: ApiClient) -> tuple[Invite, Recipient]:
    """Take one recipient off the invite; removing them again changes nothing."""
    invite = find_invite(req.smart_invite_id)
    _adopt_callback(invite, req, client)
    recipient = invite.recipient(req.recipients[0])
    if recipient is None:
        raise ApiError.one(422, _recipient_field(req), "invalid", "is not a recipient of this smart invite")
    if recipient.status != RecipientStatus.REMOVED:
        invite_service.remove_recipient(invite, recipient, commit=False, send_emails=False)
    return invite, recipient


# --------------------------------------------------------------------------- responses


def current_ics(invite: Invite, recipient: Recipient | None = None) -> str:
    """The ICS as it stands: the cancellation once cancelled (or for a removed recipient)."""
    if invite.is_cancelled:
        ics = invite_ics(invite, ITipMethod.CANCEL)
    elif recipient is not None and recipient.status == RecipientStatus.REMOVED:
        ics = invite_ics(invite, ITipMethod.CANCEL, [recipient])
    else:
        ics = invite.provider_ics or invite_ics(invite, ITipMethod.REQUEST)
    return ics.decode("utf-8")


def event_json(invite: Invite) -> dict:
    event: dict = {"summary": invite.summary}
    if invite.description:
        event["description"] = invite.description
    event["start"] = event_time_json(invite.start, invite.tzid, invite.all_day)
    event["end"] = event_time_json(invite.end, invite.tzid, invite.all_day)
    event.update(event_extras_json(invite.event))
    return event


def replies_json(invite: Invite) -> list[dict]:
    """Everyone who answered, with their latest answer (the one applied, when any was)."""
    latest: dict[str, Reply] = {}
    rows = db.session.scalars(select(Reply).where(Reply.invite_id == invite.id).order_by(Reply.id))
    for reply in rows:
        kept = latest.get(reply.email)
        if kept is None or reply.applied or not kept.applied:
            latest[reply.email] = reply
    return [reply_json(r.email, r.status, r.comment, r.proposal) for r in latest.values()]


def invite_json(invite: Invite, *, recipient: Recipient | None = None, with_replies: bool = False,
                include_ics: bool = False, removed: Recipient | None = None) -> dict:
    """Cronofy's shape: ``recipient`` (single form, with ``replies`` when asked) or ``recipients``."""
    data: dict = {}
    if recipient is not None:
        data["recipient"] = recipient_json(recipient)
        if with_replies:
            data["replies"] = replies_json(invite)
    else:
        data["recipients"] = [recipient_json(r) for r in invite.recipients]
    data["smart_invite_id"] = invite.smart_invite_id
    if invite.callback_url:
        data["callback_url"] = invite.callback_url
    data["event"] = event_json(invite)
    if invite.organizer_name:
        data["organizer"] = {"name": invite.organizer_name}
    if include_ics or removed is not None:
        attachments: dict = {"icalendar": current_ics(invite, recipient)}
        if removed is not None:
            attachments["removed"] = {"recipient": {"email": removed.email},
                                      "icalendar": current_ics(invite, removed)}
        data["attachments"] = attachments
    return data
