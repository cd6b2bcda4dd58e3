"""Staff actions on invites (SPEC §6): each one is one transaction and queues its emails.

Every function takes plain values, raises domain errors, and commits its own
work; routes, the API and the CSV import all call these.
"""
from __future__ import annotations

import functools
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, NamedTuple, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import and_, bindparam, case, exists, func, insert, or_, select, text, true
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import selectinload

from ..domain import EventData, InviteSource, InviteStatus, ITipMethod, RecipientStatus
from ..extensions import db
from ..models import ApiClient, Invite, InviteTotal, Recipient, User, UtcDateTime, now_utc
from ..plain_sql import PlainSelect, read_together
from . import outbox, providers

MAX_REFERENCE_LENGTH = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InviteError(Exception):
    """An action cannot be done; ``errors`` maps a field (or "") to a message."""

    def __init__(self, errors: dict[str, str] | str):
        self.errors = errors if isinstance(errors, dict) else {"": errors}
        super().__init__("; ".join(f"{k}: {v}" if k else v for k, v in self.errors.items()))


@dataclass(frozen=True)
class NewRecipient:
    email: str
    name: str = ""


def normalise_email(raw: str) -> str:
    """Lower-cased, syntax-checked address; raises ValueError with a reason."""
    try:
        return validate_email(raw.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from exc


def parse_recipient_list(text: str) -> tuple[list[NewRecipient], list[str]]:
    """Split "one per line or comma-separated" addresses; returns (valid, invalid)."""
    valid: list[NewRecipient] = []
    invalid: list[str] = []
    seen: set[str] = set()
    # Separators are commas, semicolons and line breaks, except inside "a quoted, name" or <...>.
    for chunk in re.findall(r'(?:"[^"]*"|<[^>]*>|[^,;\n\r"<])+', text or ""):
        chunk = chunk.strip()
        if not chunk:
            continue
        name, address = "", chunk
        match = re.fullmatch(r"(.*?)\s*<([^<>]+)>", chunk)
        if match:  # "Ann Example <ann@example.org>"
            name, address = match.group(1).strip().strip('"'), match.group(2)
        try:
            email = normalise_email(address)
        except ValueError:
            invalid.append(chunk)
            continue
        if email not in seen:
            seen.add(email)
            valid.append(NewRecipient(email=email, name=name))
    return valid, invalid


def check_timezone(tzid: str) -> str:
    try:
        ZoneInfo(tzid)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{tzid!r} is not a known time zone") from None
    return tzid


def validate_event(event: EventData) -> dict[str, str]:
    errors: dict[str, str] = {}
    if not event.summary.strip():
        errors["summary"] = "Enter a title for the appointment."
    elif len(event.summary) > 1000:
        errors["summary"] = "Keep the title under 1,000 characters."
    if event.end <= event.start:
        errors["end"] = "The end must be after the start."
    try:
        check_timezone(event.tzid)
    except ValueError as exc:
        errors["tzid"] = str(exc)
    return errors


def validate_reference(reference: str) -> str | None:
    if not reference:
        return "The reference cannot be empty."
    if len(reference) > MAX_REFERENCE_LENGTH:
        return f"The reference must be at most {MAX_REFERENCE_LENGTH} characters."
    if _CONTROL.search(reference):
        return "The reference cannot contain control characters."
    return None


def new_reference() -> str:
    return "INV-" + secrets.token_hex(5).upper()


def _bump(invite: Invite, *, sequence: bool) -> None:
    if sequence:
        invite.sequence += 1
    invite.version = Invite.version + 1  # in SQL: concurrent changes never lose a bump
    invite.updated_at = now_utc()


def _commit(reference_field: str = "smart_invite_id") -> None:
    try:
        db.session.commit()
    except IntegrityError as exc:
        db.session.rollback()
        raise InviteError({reference_field: "This reference is already used by another invite."}) from exc


def _reset_replies(invite: Invite) -> None:
    """A new time voids earlier answers: nobody has said yes to it yet."""
    for recipient in invite.invited:
        recipient.status = RecipientStatus.PENDING
        recipient.set_proposal(None)
        recipient.needs_attention = False


def create_invite(
    *,
    event: EventData,
    recipients: Sequence[NewRecipient],
    smart_invite_id: str | None = None,
    organizer_name: str = "",
    source: InviteSource = InviteSource.DASHBOARD,
    created_by: User | None = None,
    api_client: ApiClient | None = None,
    callback_url: str | None = None,
    commit: bool = True,
    send_emails: bool = True,
) -> Invite:
    errors = validate_event(event)
    if not recipients:
        errors["recipients"] = "Add at least one recipient."
    reference = (smart_invite_id or "").strip() or None
    if reference is not None:
        problem = validate_reference(reference)
        if problem:
            errors["smart_invite_id"] = problem
        elif db.session.scalar(select(Invite.id).where(Invite.smart_invite_id == reference)):
            errors["smart_invite_id"] = "This reference is already used by another invite."
    if errors:
        raise InviteError(errors)
    while reference is None:
        candidate = new_reference()
        if not db.session.scalar(select(Invite.id).where(Invite.smart_invite_id == candidate)):
            reference = candidate

    invite = Invite(smart_invite_id=reference, organizer_name=organizer_name.strip(), source=source,
                    created_by_id=created_by.id if created_by is not None else None, api_client=api_client,
                    callback_url=callback_url,
                    sequence=0, version=1, status=InviteStatus.ACTIVE)
    invite.set_event(event)
    invite.recipients = [Recipient(email=r.email, name=r.name.strip()) for r in recipients]
    db.session.add(invite)
    db.session.flush()
    _send(invite, providers.current().create(invite), send_emails=send_emails, fresh=True)
    if commit:
        _commit()
    return invite


@dataclass(frozen=True)
class NewInvite:
    """One invite of :func:`create_invites`."""

    event: EventData
    recipients: Sequence[NewRecipient]
    smart_invite_id: str | None = None


def _references_taken(references: Sequence[str]) -> set[str]:
    taken: set[str] = set()
    for start in range(0, len(references), 500):
        taken.update(db.session.scalars(
            select(Invite.smart_invite_id).where(Invite.smart_invite_id.in_(references[start:start + 500]))))
    return taken


def _insert_all(model, rows: list[dict]) -> list[int]:
    """Insert many rows at once; returns their new ids, in order.

    PostgreSQL: the ids are taken from the table's sequence first, in one query, so
    the rows go in with the driver's pipelined executemany (RETURNING them instead
    makes one huge statement, several times slower there). SQLite: RETURNING is cheap.
    """
    if db.session.get_bind().dialect.name == "postgresql":
        ids = list(db.session.scalars(
            text("SELECT nextval(pg_get_serial_sequence(:table, 'id')) FROM generate_series(1, :count)"),
            {"table": model.__tablename__, "count": len(rows)}))
        db.session.execute(insert(model), [{**row, "id": new_id} for row, new_id in zip(rows, ids)])
        return ids
    return list(db.session.scalars(insert(model).returning(model.id, sort_by_parameter_order=True), rows))


def create_invites(new: Sequence[NewInvite], *, organizer_name: str = "",
                   source: InviteSource = InviteSource.DASHBOARD, created_by: User | None = None,
                   import_id: int | None = None, commit: bool = True) -> list[int]:
    """Several invites at once (the CSV import): the checks and emails of :func:`create_invite`,
    written with a few multi-row INSERTs for the lot (no ORM objects: thousands at a time).
    Returns the new invites' ids, in order. Raises InviteError if any one cannot be made
    (nothing is then written)."""
    if not new:
        return []
    references: list[str | None] = []
    for item in new:
        errors = validate_event(item.event)
        if not item.recipients:
            errors["recipients"] = "Add at least one recipient."
        reference = (item.smart_invite_id or "").strip() or None
        if reference is not None and (problem := validate_reference(reference)):
            errors["smart_invite_id"] = problem
        if errors:
            raise InviteError(errors)
        references.append(reference)
    given = [r for r in references if r is not None]
    if len(set(given)) != len(given) or _references_taken(given):
        raise InviteError({"smart_invite_id": "This reference is already used by another invite."})
    while None in references:
        candidates = {i: new_reference() for i, r in enumerate(references) if r is None}
        taken = _references_taken(list(candidates.values())) | set(given)
        for i, candidate in candidates.items():
            if candidate not in taken:
                references[i] = candidate
                taken.add(candidate)

    invite_ids = _insert_all(Invite, [
        {**Invite.event_columns(item.event), "smart_invite_id": reference, "organizer_name": organizer_name.strip(),
         "source": source, "created_by_id": created_by.id if created_by is not None else None,
         "import_id": import_id, "sequence": 0, "version": 1, "status": InviteStatus.ACTIVE}
        for item, reference in zip(new, references)])
    people = [(invite_id, r.email, r.name.strip()) for invite_id, item in zip(invite_ids, new) for r in item.recipients]
    recipient_ids = _insert_all(Recipient, [{"invite_id": invite_id, "email": email, "name": name}
                                            for invite_id, email, name in people])
    provider = providers.current()
    ics: dict[int, bytes | None] = {}
    if not isinstance(provider, providers.LocalProvider):  # the local one builds the ICS at delivery
        for invite in db.session.scalars(select(Invite).where(Invite.id.in_(invite_ids))
                                         .options(selectinload(Invite.recipients))):
            ics[invite.id] = provider.create(invite).ics
    # SPEC §6, create: a REQUEST to everyone.
    outbox.queue_new_emails([(invite_id, recipient_id, email, ITipMethod.REQUEST, ics.get(invite_id))
                             for (invite_id, email, _), recipient_id in zip(people, recipient_ids)])
    if commit:
        _commit()
    return invite_ids


def _send(invite: Invite, result: providers.ProviderResult, removed: Iterable[Recipient] = (),
          send_emails: bool = True, fresh: bool = False) -> None:
    """Queue what SPEC §6 says a change sends: REQUEST to the invited, CANCEL to ``removed``.

    ``send_emails=False``: the caller sends the ICS itself (changes made through the API, SPEC §5).
    ``fresh``: no earlier email to the invited can be waiting to be superseded (a new
    invite, or the caller superseded them already: ``outbox.supersede_queued_to_invited``).
    """
    if not send_emails:
        return
    removed = list(removed)
    if invite.is_cancelled:
        for recipient in invite.invited:
            outbox.queue_email(invite, recipient, ITipMethod.CANCEL, result.ics)
        return
    for recipient in removed:
        outbox.queue_email(invite, recipient, ITipMethod.CANCEL, result.removed_ics)
    for recipient in invite.invited:
        outbox.queue_email(invite, recipient, ITipMethod.REQUEST, result.ics, supersede=not fresh)


def _require_active(invite: Invite) -> None:
    if invite.is_cancelled:
        raise InviteError("This invite is cancelled; it cannot be changed.")


def update_event(invite: Invite, event: EventData, *, organizer_name: str | None = None,
                 commit: bool = True, send_emails: bool = True, supersede_queued: bool = True) -> bool:
    """Edit time, place or text. Returns False (and sends nothing) when nothing changed.

    ``supersede_queued=False``: the caller already superseded the emails queued to
    the invited (the CSV import does it for a batch of invites in one query).
    """
    _require_active(invite)
    errors = validate_event(event)
    if errors:
        raise InviteError(errors)
    time_changed = (event.start, event.end, event.all_day) != (invite.start, invite.end, invite.all_day)
    organizer_changed = organizer_name is not None and organizer_name.strip() != invite.organizer_name
    if organizer_changed:
        invite.organizer_name = organizer_name.strip()
    if not invite.set_event(event) and not organizer_changed:
        return False
    if time_changed:
        _reset_replies(invite)
    _bump(invite, sequence=True)
    _send(invite, providers.current().update(invite), send_emails=send_emails, fresh=not supersede_queued)
    if commit:
        _commit()
    return True


def add_recipients(invite: Invite, new: Sequence[NewRecipient], *, commit: bool = True,
                   send_emails: bool = True, supersede_queued: bool = True) -> list[Recipient]:
    _require_active(invite)
    added: list[Recipient] = []
    for item in new:
        existing = invite.recipient(item.email)
        if existing is not None and existing.status != RecipientStatus.REMOVED:
            continue  # already invited: adding again changes nothing
        if existing is not None:  # invited again after removal
            existing.status = RecipientStatus.PENDING
            existing.comment = ""
            existing.set_proposal(None)
            existing.needs_attention = False
            if item.name:
                existing.name = item.name
            added.append(existing)
        else:
            recipient = Recipient(email=item.email, name=item.name.strip())
            invite.recipients.append(recipient)
            added.append(recipient)
    if not added:
        raise InviteError({"recipients": "Everyone listed is already invited."})
    _bump(invite, sequence=False)
    db.session.flush()
    _send(invite, providers.current().update(invite), send_emails=send_emails, fresh=not supersede_queued)
    if commit:
        _commit()
    return added


def remove_recipient(invite: Invite, recipient: Recipient, *, commit: bool = True,
                     send_emails: bool = True) -> None:
    _require_active(invite)
    if recipient.status == RecipientStatus.REMOVED:
        raise InviteError(f"{recipient.email} was already removed.")
    if len(invite.invited) == 1:
        raise InviteError("This is the last recipient: cancel the invite instead.")
    recipient.status = RecipientStatus.REMOVED
    recipient.needs_attention = False
    _bump(invite, sequence=True)
    _send(invite, providers.current().remove(invite, recipient), removed=[recipient], send_emails=send_emails)
    if commit:
        _commit()


def cancel_invite(invite: Invite, *, commit: bool = True, send_emails: bool = True) -> None:
    _require_active(invite)
    invite.status = InviteStatus.CANCELLED
    for recipient in invite.invited:
        recipient.needs_attention = False
    _bump(invite, sequence=True)
    _send(invite, providers.current().cancel(invite), send_emails=send_emails)
    if commit:
        _commit()


def accept_proposal(invite: Invite, recipient: Recipient, *, commit: bool = True) -> None:
    """Move the event to the time the recipient proposed; they have in effect accepted it."""
    _require_active(invite)
    proposal = recipient.proposal
    if proposal is None:
        raise InviteError(f"{recipient.email} has not proposed a new time.")
    event = invite.event
    moved = EventData(**{**event.__dict__, "start": proposal.start, "end": proposal.end, "all_day": False})
    invite.set_event(moved)
    _reset_replies(invite)
    recipient.status = RecipientStatus.ACCEPTED
    _bump(invite, sequence=True)
    _send(invite, providers.current().update(invite))
    if commit:
        _commit()


def dismiss_attention(invite: Invite, recipient: Recipient, *, commit: bool = True) -> None:
    recipient.needs_attention = False
    _bump(invite, sequence=False)
    if commit:
        _commit()


def resend(invite: Invite, recipient: Recipient, *, commit: bool = True) -> None:
    """Send the current ICS again to one person, with the same SEQUENCE."""
    if invite.is_cancelled or recipient.status == RecipientStatus.REMOVED:
        method = ITipMethod.CANCEL
    else:
        method = ITipMethod.REQUEST
    outbox.queue_email(invite, recipient, method, invite.provider_ics if method == ITipMethod.REQUEST else None)
    _bump(invite, sequence=False)
    if commit:
        _commit()


# --- finding invites -------------------------------------------------------------

class ListFilter:
    ALL = ""
    UPCOMING = "upcoming"
    PAST = "past"
    CANCELLED = "cancelled"
    ATTENTION = "attention"
    CHOICES = (
        (ALL, "All"),
        (UPCOMING, "Upcoming"),
        (PAST, "Past"),
        (CANCELLED, "Cancelled"),
        (ATTENTION, "Needs attention"),
    )


@dataclass(slots=True)
class InviteRow:
    """One line of the invites list: what it shows of an invite, and its recipients' answers."""

    id: int
    smart_invite_id: str
    summary: str
    start: datetime
    tzid: str
    cancelled: bool
    past: bool
    api_client: str | None  # the name of the API client that made it
    accepted: int
    declined: int
    tentative: int
    pending: int
    attention: int


def _status_count(status: RecipientStatus):
    return func.coalesce(func.sum(case((Recipient.status == status, 1), else_=0)), 0)


def _search_match(q: str):
    recipient_match = exists().where(Recipient.invite_id == Invite.id, Recipient.email.icontains(q, autoescape=True))
    return or_(Invite.summary.icontains(q, autoescape=True), Invite.smart_invite_id.icontains(q, autoescape=True),
               recipient_match)


def _status_filters(status: str, now) -> list:
    if status == ListFilter.UPCOMING:
        return [Invite.status == InviteStatus.ACTIVE, Invite.end > now]
    if status == ListFilter.PAST:
        return [Invite.status == InviteStatus.ACTIVE, Invite.end <= now]
    if status == ListFilter.CANCELLED:
        return [Invite.status == InviteStatus.CANCELLED]
    if status == ListFilter.ATTENTION:
        # The few invites with such a recipient, found through ix_recipients_attention ("= true":
        # "IS true" cannot use it), rather than a look at the recipients of every invite.
        return [Invite.status == InviteStatus.ACTIVE,
                Invite.id.in_(select(Recipient.invite_id).where(Recipient.needs_attention == true(),
                                                                Recipient.status != RecipientStatus.REMOVED))]
    return []


def search_filters(q: str = "", status: str = "") -> list:
    q = (q or "").strip()
    return [*([_search_match(q)] if q else []), *_status_filters(status, now_utc())]


# The list's queries are built once (per status tab) with these parameters: building
# and caching a statement costs more than running these on an index.
_NOW = bindparam("now", type_=UtcDateTime())


def _list_order(now) -> tuple:
    """The list's order: upcoming first (soonest first), then past (latest first); ties by id."""
    return (case((Invite.end <= now, 1), else_=0), case((Invite.end > now, Invite.start)).asc(),
            Invite.start.desc(), Invite.id)


def _list_key(now: datetime):
    """:func:`_list_order` for rows already read."""
    def key(row) -> tuple:
        invite_id, _, _, start, end = row[:5]  # _LIST_COLUMNS' first five (unpacked: cheaper than a Row's fields)
        if end > now:
            return 0, start, invite_id
        return 1, -start.timestamp(), invite_id
    return key


_LIST_COLUMNS = (Invite.id, Invite.smart_invite_id, Invite.summary, Invite.start, Invite.end, Invite.tzid,
                 Invite.status, ApiClient.name.label("api_client"))
_ANSWER_COUNTS = (
    _status_count(RecipientStatus.ACCEPTED).label("accepted"),
    _status_count(RecipientStatus.DECLINED).label("declined"),
    _status_count(RecipientStatus.TENTATIVE).label("tentative"),
    _status_count(RecipientStatus.PENDING).label("pending"),
    func.coalesce(func.sum(case((and_(Recipient.needs_attention.is_(True),
                                      Recipient.status != RecipientStatus.REMOVED), 1), else_=0)), 0)
    .label("attention"),
)


def _page(where: list, order_by: tuple):
    """The invites at :offset in ``order_by``, :limit of them, with their recipients'
    answers counted, in no particular order. Their ids are picked first (from an index
    where one holds the order, so skipped rows are never read)."""
    ids = select(Invite.id).where(*where).order_by(*order_by).offset(bindparam("offset")).limit(bindparam("limit"))
    return (select(*_LIST_COLUMNS, *_ANSWER_COUNTS)
            .outerjoin(ApiClient, ApiClient.id == Invite.api_client_id)
            .outerjoin(Recipient, Recipient.invite_id == Invite.id)
            .where(Invite.id.in_(ids.scalar_subquery()))
            .group_by(*_LIST_COLUMNS))


@dataclass(frozen=True)
class _ListQueries:
    count: PlainSelect
    upcoming_count: PlainSelect
    upcoming: PlainSelect  # a page of the upcoming ones, soonest first
    past: PlainSelect  # a page of the past ones, latest first
    ordered: PlainSelect  # a page of the whole list's order, sorted at once


def _list_queries(where: list) -> _ListQueries:
    return _ListQueries(
        count=PlainSelect(select(func.count()).select_from(Invite).where(*where)),
        upcoming_count=PlainSelect(select(func.count()).select_from(Invite).where(*where, Invite.end > _NOW)),
        upcoming=PlainSelect(_page([*where, Invite.end > _NOW], (Invite.start, Invite.id))),
        past=PlainSelect(_page([*where, Invite.end <= _NOW], (Invite.start.desc(), Invite.id))),
        ordered=PlainSelect(_page(where, _list_order(_NOW))),
    )


@functools.cache
def _status_tab_queries(status: str) -> _ListQueries:
    return _list_queries(_status_filters(status, _NOW))


class InviteList(NamedTuple):
    rows: list[InviteRow]
    total: int  # invites matching, on every page
    attention: int  # invites needing attention, whatever the search (the list's banner)


def list_invites(q: str = "", status: str = "", page: int = 1, per_page: int = 25) -> InviteList:
    """Invites matching the search, upcoming first (soonest first), then past (latest first),
    as committed (read on the read pool). The count, the page and the attention count are
    read together: one round trip on PostgreSQL, and a second only for the page where the
    upcoming invites end."""
    q = (q or "").strip()
    if status not in dict(ListFilter.CHOICES):
        status = ListFilter.ALL
    now = now_utc()
    offset = (max(page, 1) - 1) * per_page
    params = {"now": now, "offset": offset, "limit": per_page}
    if q:
        queries = _list_queries([_search_match(q), *_status_filters(status, _NOW)])
        # A search reads every invite whatever the order: one sorted pass over the matches.
        first = queries.ordered
    else:
        queries = _status_tab_queries(status)
        # The upcoming and the past ones are read separately, each in the order of the index
        # ix_invites_start_end: sorting on "is it past?" first would sort every invite.
        first = queries.past if status == ListFilter.PAST else queries.upcoming
    # Every invite, the page most opened: the total the triggers keep (one row), not a count.
    everything = not q and status == ListFilter.ALL
    counted, rows, attention = read_together((_TOTAL if everything else queries.count, params), (first, params),
                                             (_ATTENTION_COUNT, {}))
    total = counted[0][0] if counted else _count_invites_again()
    if not q and status not in (ListFilter.UPCOMING, ListFilter.PAST) and len(rows) < per_page:
        if rows:  # the upcoming ones end on this page
            past_offset = 0
        else:  # this page comes after all the upcoming ones
            past_offset = offset - (queries.upcoming_count.read_scalar(**params) or 0)
        rows += queries.past.read(**{**params, "offset": past_offset, "limit": per_page - len(rows)})
    rows.sort(key=_list_key(now))
    return InviteList(
        [InviteRow(invite_id, reference, summary, start, tzid, status == InviteStatus.CANCELLED, end <= now,
                   api_client, int(accepted), int(declined), int(tentative), int(pending), int(needing))
         for (invite_id, reference, summary, start, end, tzid, status, api_client, accepted, declined, tentative,
              pending, needing) in rows],
        total or 0, attention[0][0] or 0)


_TOTAL = PlainSelect(select(InviteTotal.invites).where(InviteTotal.id == 1))


def _count_invites_again() -> int:
    """Count the invites and store the total (its row was missing: the table was emptied).

    With writers held off while counting: on PostgreSQL a SHARE lock on ``invites`` (it waits
    for transactions adding or deleting invites, whose triggers found no row to update, to
    commit, and keeps new ones out until this commits); on SQLite the INSERT's write lock.
    Should the lock not come within two seconds, the count is returned and not stored."""
    with db.engine.connect() as connection:
        try:
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SET LOCAL lock_timeout = '2s'"))
                    connection.execute(text("LOCK TABLE invites IN SHARE MODE"))
                # "WHERE true": SQLite's parser needs it before ON CONFLICT in INSERT ... SELECT.
                connection.execute(text("INSERT INTO invite_totals (id, invites) SELECT 1, count(*) FROM invites "
                                        "WHERE true ON CONFLICT (id) DO NOTHING"))
                return connection.scalar(_TOTAL.statement)
        except OperationalError:  # the lock did not come (e.g. a long import still running)
            return connection.scalar(_status_tab_queries(ListFilter.ALL).count.statement)


def get_by_reference(reference: str) -> Invite | None:
    return db.session.scalar(select(Invite).where(Invite.smart_invite_id == reference))


_ATTENTION_COUNT = PlainSelect(
    select(func.count(func.distinct(Recipient.invite_id)))
    .join(Invite, Invite.id == Recipient.invite_id)
    # "= true" rather than "IS true": an equality can use ix_recipients_attention.
    .where(Invite.status == InviteStatus.ACTIVE, Recipient.needs_attention == true(),
           Recipient.status != RecipientStatus.REMOVED)
)


def local_datetime(value: datetime, tzid: str) -> datetime:
    return value.astimezone(ZoneInfo(tzid))
