"""Bookings in and out: apply a parsed bookings file to the invites, and export them.

:func:`apply_bookings` takes what :func:`bookings_csv.parse_bookings` read and,
booking by booking (matched on ``smart_invite_id``):

- creates an invite when the reference is new; each recipient is emailed as if
  the invite were made by hand. A row without a reference is an invite of its
  own, whose reference is made from the row's content (``IMP-`` and a hash), so
  importing the same file again finds it instead of making it twice;
- updates an existing invite whose time, place or text changed (SEQUENCE + 1,
  everyone re-sent, exactly as an edit), and adds recipients it does not have;
- leaves it alone when nothing changed: importing the same file twice sends nothing.

The import only adds: a recipient missing from the file is not removed, and one
that staff removed is not invited again. A cancelled invite is not changed; the
rows that would change it are rejected.

Bookings are written in batches of whole bookings, one transaction each, with
the import's progress in the same transaction: a crash loses at most the batch
in hand, never half a booking, and a stopped import resumes after the last
batch written. Only rows are inserted; the worker builds the ICS and the emails.
"""
from __future__ import annotations

import csv
import enum
import io
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from hashlib import blake2b
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence
from zoneinfo import ZoneInfo

from flask import current_app
from sqlalchemy import and_, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased, selectinload

from ..domain import EventData, InviteSource
from ..extensions import db
from ..models import BookingImport, ImportState, Invite, Recipient, User, now_utc
from . import invites as invite_service
from . import outbox
from .bookings_csv import (
    Booking,
    CsvFormatError,
    ParseResult,
    RejectedRow,
    csv_safe,
    original_rows,
    parse_bookings,
    rejected_rows_csv,
)
from .providers import ProviderError

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
BATCH_ROWS = 1000  # rows written per transaction (whole bookings: a batch may run over)
_LOOKUP_CHUNK = 500  # references per "which of these exist?" query


class Action(str, enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"
    REJECT = "reject"


@dataclass
class Decision:
    """What importing one booking does to the invites."""

    booking: Booking
    reference: str  # the booking's, or the one made for a row without
    action: Action
    invite: Invite | None = None
    event: EventData | None = None  # the invite's event after an update
    event_changed: bool = False
    new_recipients: list[invite_service.NewRecipient] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # email -> name from the file
    reason: str = ""  # why it is rejected


@dataclass
class _Counts:
    """Bookings created, updated and left unchanged."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def add(self, action: Action) -> None:
        if action == Action.CREATE:
            self.created += 1
        elif action == Action.UPDATE:
            self.updated += 1
        elif action == Action.UNCHANGED:
            self.unchanged += 1


@dataclass
class ImportReport(_Counts):
    """Bookings created, updated and left unchanged, and the rows rejected."""

    rejected: list[RejectedRow] = field(default_factory=list)
    total_rows: int = 0
    duplicate_rows: int = 0
    first: list[Decision] = field(default_factory=list)  # a plan's first bookings, for the preview

    @property
    def rejected_count(self) -> int:
        return len(self.rejected)



# --------------------------------------------------------------------------- deciding


def _existing(refs: Sequence[str]) -> dict[str, Invite]:
    """The invites with these references, recipients loaded, in a few queries."""
    found: dict[str, Invite] = {}
    for start in range(0, len(refs), _LOOKUP_CHUNK):
        chunk = refs[start:start + _LOOKUP_CHUNK]
        query = select(Invite).where(Invite.smart_invite_id.in_(chunk)).options(selectinload(Invite.recipients))
        for invite in db.session.scalars(query):
            found[invite.smart_invite_id] = invite
    return found


def reference_for(booking: Booking) -> str:
    """The booking's reference; for a row without one, a reference made from its content."""
    if booking.ref is not None:
        return booking.ref
    event, person = booking.event, booking.recipients[0]
    key = "\x1f".join([event.summary, event.start.isoformat(), event.end.isoformat(), event.tzid, event.location,
                       event.description, person.email, person.name])
    return "IMP-" + blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest().upper()


def decide(booking: Booking, reference: str, invite: Invite | None) -> Decision:
    """Compare a booking with the invite of the same reference (None: there is none)."""
    if invite is None:
        return Decision(booking, reference, Action.CREATE)
    wanted = booking.event
    current = invite.event
    # Only what a file can say is taken from it; reminders, URL, colour... stay.
    event = replace(current, summary=wanted.summary, start=wanted.start, end=wanted.end, tzid=wanted.tzid,
                    location=wanted.location, description=wanted.description, all_day=False)
    new_recipients: list[invite_service.NewRecipient] = []
    renamed: dict[str, str] = {}
    for person in booking.recipients:
        recipient = invite.recipient(person.email)
        if recipient is None:
            new_recipients.append(invite_service.NewRecipient(person.email, person.name))
        elif person.name and person.name != recipient.name:
            renamed[person.email] = person.name
    event_changed = event != current
    if not (event_changed or new_recipients or renamed):
        return Decision(booking, reference, Action.UNCHANGED, invite)
    if invite.is_cancelled:
        return Decision(booking, reference, Action.REJECT, invite,
                        reason=f"booking {reference}: the invite is cancelled, so the file cannot change it")
    return Decision(booking, reference, Action.UPDATE, invite, event, event_changed, new_recipients, renamed)


def _decisions(batch: Sequence[Booking]) -> list[Decision]:
    references = [reference_for(b) for b in batch]
    existing = _existing(references)
    decisions = []
    seen: set[str] = set()
    for booking, reference in zip(batch, references):
        if reference in seen:  # rows without a reference that say the same (one with end, one with duration)
            decisions.append(Decision(booking, reference, Action.UNCHANGED))
            continue
        seen.add(reference)
        decisions.append(decide(booking, reference, existing.get(reference)))
    return decisions


def _batches(bookings: Iterable[Booking], rows: int) -> Iterator[list[Booking]]:
    batch: list[Booking] = []
    size = 0
    for booking in bookings:
        batch.append(booking)
        size += len(booking.row_numbers)
        if size >= rows:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _rows_of(booking: Booking, reason: str) -> list[RejectedRow]:
    return [RejectedRow(n, reason, ()) for n in booking.row_numbers]


def plan_bookings(result: ParseResult, *, first: int = 20) -> ImportReport:
    """What :func:`apply_bookings` would do, without writing anything (preview, dry run)."""
    report = ImportReport(rejected=list(result.rejected), total_rows=result.total_rows,
                          duplicate_rows=result.duplicate_rows)
    for batch in _batches(result.bookings, BATCH_ROWS):
        for decision in _decisions(batch):
            if decision.action == Action.REJECT:
                report.rejected += _rows_of(decision.booking, decision.reason)
            else:
                problem = _refusal(decision)
                if problem:
                    report.rejected += _rows_of(decision.booking, problem)
                    decision = replace(decision, action=Action.REJECT, reason=problem)
            report.add(decision.action)
            if len(report.first) < first:
                report.first.append(decision)
    report.rejected.sort(key=lambda r: r.row_number)
    return report


def _refusal(decision: Decision) -> str:
    """Why the invite service would refuse this booking ("" if it would not)."""
    if decision.action == Action.CREATE:
        event = decision.booking.event
    elif decision.action == Action.UPDATE and decision.event_changed:
        event = decision.event
    else:
        return ""
    errors = invite_service.validate_event(event)
    if not errors:
        return ""
    return f"booking {decision.reference}: " + "; ".join(
        f"{name}: {message}" for name, message in errors.items())


# --------------------------------------------------------------------------- writing


class _BookingFailed(Exception):
    def __init__(self, booking: Booking, reason: str):
        super().__init__(reason)
        self.booking = booking
        self.reason = reason


def _new_invite(decision: Decision) -> invite_service.NewInvite:
    booking = decision.booking
    return invite_service.NewInvite(
        booking.event, [invite_service.NewRecipient(r.email, r.name) for r in booking.recipients], decision.reference)


def _write(decision: Decision, created_by: User | None) -> Invite | None:
    """Apply one decision in the current transaction; returns the invite made, if any."""
    try:
        if decision.action == Action.CREATE:
            new = _new_invite(decision)
            return invite_service.create_invite(
                event=new.event, recipients=new.recipients, smart_invite_id=new.smart_invite_id,
                source=InviteSource.IMPORT, created_by=created_by, organizer_name=_organizer(created_by),
                commit=False)
        if decision.action == Action.UPDATE:
            invite = decision.invite
            assert invite is not None and decision.event is not None
            for email, name in decision.renamed.items():
                invite.recipient(email).name = name
            # The batch superseded the invite's queued emails already (_supersede_queued).
            if decision.new_recipients:  # with a new time too, one REQUEST each (below) says both
                invite_service.add_recipients(invite, decision.new_recipients, commit=False,
                                              send_emails=not decision.event_changed, supersede_queued=False)
            if decision.event_changed:
                invite_service.update_event(invite, decision.event, commit=False, supersede_queued=False)
            elif not decision.new_recipients:
                invite.version = Invite.version + 1  # only names changed: nothing to send; the page shows it
    except invite_service.InviteError as exc:
        raise _BookingFailed(decision.booking, f"booking {decision.reference}: {exc}") from None
    except ProviderError as exc:
        raise _BookingFailed(decision.booking,
                             f"booking {decision.reference}: the invite provider refused it: {exc}") from None
    return None


def _organizer(user: User | None) -> str:
    return user.name if user is not None else ""


@dataclass
class _Progress(_Counts):
    """Where an import stands; saved with each batch."""

    processed_rows: int = 0

    def plus(self, other: "_Progress") -> "_Progress":
        return _Progress(processed_rows=self.processed_rows + other.processed_rows,
                         created=self.created + other.created, updated=self.updated + other.updated,
                         unchanged=self.unchanged + other.unchanged)



def apply_bookings(
    result: ParseResult,
    *,
    created_by: User | None = None,
    booking_import: BookingImport | None = None,
    batch_rows: int = BATCH_ROWS,
    should_stop: Callable[[], bool] = lambda: False,
    between_batches: Callable[[], None] = lambda: None,
) -> ImportReport | None:
    """Create, update or leave alone each booking, one transaction per batch.

    With ``booking_import``, its counts and progress are saved with every batch,
    and an import that was stopped resumes after its last batch written. Returns
    None when ``should_stop`` turned true before the end (what is written stays).
    Rows rejected here (not by the parser) carry no cells: see :func:`with_original_cells`.
    """
    user_id = created_by.id if created_by is not None else None
    import_id = booking_import.id if booking_import is not None else None
    not_bookings = len(result.rejected) + result.duplicate_rows  # rows the parser already dealt with
    progress = _Progress(processed_rows=not_bookings)
    skip_rows = 0
    if booking_import is not None and booking_import.processed_rows > 0:  # resuming
        progress = _Progress(processed_rows=booking_import.processed_rows, created=booking_import.created_count,
                             updated=booking_import.updated_count, unchanged=booking_import.unchanged_count)
        skip_rows = booking_import.processed_rows - not_bookings
    if import_id is not None:
        _save_progress(import_id, progress)
        db.session.commit()

    late: list[RejectedRow] = []
    written = 0
    for batch in _batches(result.bookings, batch_rows):
        if should_stop():
            return None
        rows = sum(len(b.row_numbers) for b in batch)
        if skip_rows >= rows:  # written by an earlier run: only find its rejections again
            skip_rows -= rows
            for decision in _decisions(batch):
                reason = decision.reason or _refusal(decision)
                if reason:
                    late += _rows_of(decision.booking, reason)
            db.session.rollback()
            continue
        skip_rows = 0
        user = db.session.get(User, user_id) if user_id is not None else None
        late += _write_batch(batch, user, import_id, progress)
        if written == 0:
            _refresh_statistics()
        written += 1
        between_batches()

    return ImportReport(created=progress.created, updated=progress.updated, unchanged=progress.unchanged,
                        rejected=sorted([*result.rejected, *late], key=lambda r: r.row_number),
                        total_rows=result.total_rows, duplicate_rows=result.duplicate_rows)


def _write_batch(batch: list[Booking], user: User | None, import_id: int | None,
                 progress: _Progress) -> list[RejectedRow]:
    """Write one batch and the progress in one transaction; returns the rows refused.

    New invites are made together (:func:`invites.create_invites`). If that
    refuses, the batch is written again one booking at a time to find which one,
    and a booking the invite service refuses is left out. A clash with an invite
    made meanwhile (same reference) is retried once: the lookup then finds it.
    """
    refused: dict[int, tuple[Booking, str]] = {}  # id(booking) -> (booking, reason)
    together = True
    clashes = 0
    while True:
        step = _Progress(processed_rows=sum(len(b.row_numbers) for b in batch))
        created: list[int] = []
        creates: list[Decision] = []
        try:
            decisions = []
            for decision in _decisions([b for b in batch if id(b) not in refused]):
                reason = decision.reason or _refusal(decision)
                if reason:
                    refused[id(decision.booking)] = (decision.booking, reason)
                else:
                    decisions.append(decision)
            _supersede_queued(decisions)
            for decision in decisions:
                if decision.action == Action.CREATE and together:
                    creates.append(decision)
                else:
                    invite = _write(decision, user)
                    if invite is not None:
                        created.append(invite.id)
                step.add(decision.action)
            if creates:
                try:
                    invite_service.create_invites(
                        [_new_invite(d) for d in creates], source=InviteSource.IMPORT, created_by=user,
                        organizer_name=_organizer(user), import_id=import_id, commit=False)
                except (invite_service.InviteError, ProviderError):
                    db.session.rollback()
                    together = False
                    continue
            if import_id is not None:
                if created:  # made one by one
                    db.session.execute(update(Invite).where(Invite.id.in_(created)).values(import_id=import_id)
                                       .execution_options(synchronize_session=False))
                _save_progress(import_id, progress.plus(step))
            db.session.commit()
        except _BookingFailed as exc:
            db.session.rollback()
            refused[id(exc.booking)] = (exc.booking, exc.reason)
            continue
        except IntegrityError:
            db.session.rollback()
            clashes += 1
            if clashes > 1:
                raise
            continue
        progress.__dict__.update(progress.plus(step).__dict__)
        return [row for booking, reason in refused.values() for row in _rows_of(booking, reason)]


def _supersede_queued(decisions: list[Decision]) -> None:
    """Updates re-send to everyone invited: supersede what is still queued to them, in one query."""
    invite_ids = [d.invite.id for d in decisions
                  if d.action == Action.UPDATE and (d.event_changed or d.new_recipients)]
    if invite_ids:
        with db.session.no_autoflush:  # nothing of this batch is written yet
            outbox.supersede_queued_to_invited(invite_ids)


def _refresh_statistics() -> None:
    """PostgreSQL plans each batch's lookups (by reference, by invite) from table
    statistics. Tables that were empty when last analyzed (or never: a new install, or
    a server without autovacuum) look tiny to it, and the lookups then scan the whole
    table, batch after batch. Once the first batch is in, the statistics say how rows
    spread, and the planner scales them as the tables grow."""
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(text("ANALYZE invites, recipients, outbox_messages"))
        db.session.commit()


def _batch_rows() -> int:
    return int(current_app.config.get("IMPORT_BATCH_ROWS", BATCH_ROWS))


def _save_progress(import_id: int, progress: _Progress) -> None:
    db.session.execute(
        update(BookingImport).where(BookingImport.id == import_id)
        .values(processed_rows=progress.processed_rows, created_count=progress.created,
                updated_count=progress.updated, unchanged_count=progress.unchanged)
        .execution_options(synchronize_session=False)
    )


def with_original_cells(report: ImportReport, stream: BinaryIO, result: ParseResult) -> None:
    """Fill in the cells of rows rejected while writing, for the "fix and upload again" file."""
    missing = [r.row_number for r in report.rejected if not r.values]
    if not missing:
        return
    cells = original_rows(stream, result, missing)
    report.rejected = [RejectedRow(r.row_number, r.reason, cells.get(r.row_number, ())) if not r.values else r
                       for r in report.rejected]


# --------------------------------------------------------------------------- imports (the records)


def record_upload(*, filename: str, content: bytes, tzid: str, user: User | None,
                  result: ParseResult) -> BookingImport:
    """Keep an uploaded file, read and previewed, until it is confirmed."""
    record = BookingImport(user_id=user.id if user is not None else None, filename=filename[:500],
                           content=content, timezone=tzid, state=ImportState.PREVIEWED,
                           total_rows=result.total_rows, rejected_count=len(result.rejected))
    db.session.add(record)
    db.session.commit()
    return record


def parse_upload(record: BookingImport) -> ParseResult:
    """Read an import's file again (raises :class:`CsvFormatError`)."""
    return parse_bookings(io.BytesIO(record.content or b""), default_tzid=record.timezone)


def queue_import(import_id: int) -> bool:
    """Confirm a previewed import (or retry a failed one): the worker runs it. False if it was not waiting."""
    taken = db.session.execute(
        update(BookingImport)
        .where(BookingImport.id == import_id, BookingImport.content.is_not(None),
               BookingImport.state.in_([ImportState.PREVIEWED, ImportState.FAILED]))
        .values(state=ImportState.QUEUED, error="")
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    return bool(taken)


def expire_previews(older_than: timedelta) -> int:
    """Discard the files of previews nobody confirmed within ``older_than`` (an upload may be
    tens of megabytes, kept in the database): they become EXPIRED, with their counts kept.
    How many expired."""
    expired = db.session.execute(
        update(BookingImport)
        .where(BookingImport.state == ImportState.PREVIEWED, BookingImport.created_at < now_utc() - older_than)
        .values(state=ImportState.EXPIRED, content=None, finished_at=now_utc())
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    return expired


IMPORT_LEASE = timedelta(minutes=2)


def _claimable(now: datetime):
    # Queued, or running under a lease that ran out (its worker died: kill -9, out of memory).
    return or_(BookingImport.state == ImportState.QUEUED,
               and_(BookingImport.state == ImportState.RUNNING, BookingImport.lease_until < now))


def claim_next_import() -> int | None:
    """Take the oldest claimable import for this worker (several workers never take the same one)."""
    now = now_utc()
    candidate = db.session.scalar(
        select(BookingImport.id).where(_claimable(now))
        .order_by(BookingImport.id).limit(1).with_for_update(skip_locked=True)
    )
    if candidate is None:
        db.session.rollback()
        return None
    taken = db.session.execute(
        update(BookingImport).where(BookingImport.id == candidate, _claimable(now))
        .values(state=ImportState.RUNNING, lease_until=now + IMPORT_LEASE)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    return candidate if taken else None


def renew_lease(import_id: int) -> None:
    """Called between batches: the import is still in hand."""
    db.session.execute(update(BookingImport).where(BookingImport.id == import_id)
                       .values(lease_until=now_utc() + IMPORT_LEASE)
                       .execution_options(synchronize_session=False))
    db.session.commit()


def run_import(import_id: int, *, should_stop: Callable[[], bool] = lambda: False,
               between_batches: Callable[[], None] = lambda: None) -> ImportState:
    """Run a claimed import to the end; stopped early, it is queued again to resume."""
    record = db.session.get(BookingImport, import_id)
    try:
        result = parse_upload(record)
    except (CsvFormatError, ValueError) as exc:
        return _finish(record, ImportState.FAILED, error=f"the file cannot be read: {exc}")
    user = record.user
    try:
        report = apply_bookings(result, created_by=user, booking_import=record, batch_rows=_batch_rows(),
                                should_stop=should_stop, between_batches=between_batches)
    except Exception as exc:  # the batches written stay; a retry resumes after them
        log.exception("booking import %s failed", import_id)
        db.session.rollback()
        record = db.session.get(BookingImport, import_id)
        return _finish(record, ImportState.FAILED, error=f"the import stopped on an internal error ({exc!r}); "
                                                          "what was imported before stays, and a retry resumes")
    record = db.session.get(BookingImport, import_id)
    if report is None:
        record.state = ImportState.QUEUED
        db.session.commit()
        return ImportState.QUEUED
    with_original_cells(report, io.BytesIO(record.content or b""), result)
    return _finish(record, ImportState.DONE, report=report, header=result.header)


def _finish(record: BookingImport, state: ImportState, *, report: ImportReport | None = None,
            header: list[str] | None = None, error: str = "") -> ImportState:
    record.state = state
    record.error = error
    record.finished_at = now_utc()
    if report is not None:
        record.total_rows = report.total_rows
        record.processed_rows = report.total_rows
        record.created_count = report.created
        record.updated_count = report.updated
        record.unchanged_count = report.unchanged
        record.rejected_count = report.rejected_count
        record.rejected_csv = rejected_rows_csv(header or [], report.rejected) if report.rejected else None
        record.content = None  # done: the counts, the invites and the rejected rows are what is kept
    db.session.commit()
    return state


def import_file(stream: BinaryIO, *, filename: str, tzid: str, user: User | None = None,
                dry_run: bool = False) -> tuple[ImportReport, ParseResult]:
    """The whole import at once, as the command line does it (raises :class:`CsvFormatError`)."""
    result = parse_bookings(stream, default_tzid=tzid)
    if dry_run:
        report = plan_bookings(result, first=0)
        db.session.rollback()
        return report, result
    record = BookingImport(user_id=user.id if user is not None else None, filename=filename[:500], content=None,
                           timezone=tzid, state=ImportState.RUNNING, total_rows=result.total_rows)
    db.session.add(record)
    db.session.commit()
    report = apply_bookings(result, created_by=user, booking_import=record, batch_rows=_batch_rows())
    assert report is not None
    with_original_cells(report, stream, result)
    _finish(db.session.get(BookingImport, record.id), ImportState.DONE, report=report, header=result.header)
    return report, result


# --------------------------------------------------------------------------- export

EXPORT_HEADER = ["booking_ref", "summary", "start", "end", "timezone", "location", "email", "name", "status",
                 "comment", "proposed_start", "replied_at"]


def _local(value: datetime | None, zone: ZoneInfo) -> str:
    if value is None:
        return ""
    local = value.astimezone(zone)
    return local.strftime("%Y-%m-%d %H:%M:%S" if local.second else "%Y-%m-%d %H:%M")


def export_rows(q: str = "", status: str = "", *, chunk: int = 1000) -> Iterator[list[str]]:
    """One row per recipient of the invites the list shows for ``q`` and ``status``,
    times in the invite's zone (so the file imports again unchanged); not yet CSV-escaped."""
    recipient = aliased(Recipient)  # the list's filters use Recipient in their own subqueries
    query = (
        select(Invite.smart_invite_id, Invite.summary, Invite.start, Invite.end, Invite.tzid, Invite.location,
               recipient.email, recipient.name, recipient.status, recipient.comment, recipient.proposal_start,
               recipient.replied_at)
        .join(recipient, recipient.invite_id == Invite.id)
        .where(*invite_service.search_filters(q, status))
        .order_by(Invite.start, Invite.id, recipient.id)
        .execution_options(yield_per=chunk)
    )
    yield EXPORT_HEADER
    zones: dict[str, ZoneInfo] = {}
    for (ref, summary, start, end, tzid, location, email, name, recipient_status, comment, proposed,
         replied) in db.session.execute(query):
        zone = zones.get(tzid) or zones.setdefault(tzid, ZoneInfo(tzid))
        yield [ref, summary, _local(start, zone), _local(end, zone), tzid, location or "", email, name or "",
               recipient_status.value, comment or "", _local(proposed, zone), _local(replied, zone)]


def export_csv(q: str = "", status: str = "") -> Iterator[bytes]:
    """:func:`export_rows` as CSV chunks: UTF-8 with a BOM (for Excel), every cell through :func:`csv_safe`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    yield b"\xef\xbb\xbf"
    for number, row in enumerate(export_rows(q, status), 1):
        writer.writerow([csv_safe(cell) for cell in row])
        if number % 500 == 0:
            yield out.getvalue().encode("utf-8")
            out.seek(0)
            out.truncate()
    yield out.getvalue().encode("utf-8")
