"""The database: typed SQLAlchemy 2 models.

Times are stored as naive UTC (``UtcDateTime`` adds and strips the zone) so that
SQLite and PostgreSQL behave the same.
"""
from __future__ import annotations

import enum
import secrets
import uuid
from datetime import datetime, timezone

from flask_login import UserMixin
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    types,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from .domain import EventData, InviteSource, InviteStatus, Proposal, RecipientStatus
from .extensions import db


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


class UtcDateTime(types.TypeDecorator):
    """Aware UTC datetimes in Python, naive UTC in the database."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc)


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Store enum *values* ("accepted"), not member names, as plain strings.
    return Enum(cls, name=name, native_enum=False, length=20, validate_strings=True,
                values_callable=lambda e: [m.value for m in e])


class Role(str, enum.Enum):
    ADMIN = "admin"
    STAFF = "staff"


class SignedInMixin(UserMixin):
    """What Flask-Login and the pages ask of a person: from ``id``, ``role``, ``active`` and
    ``session_version`` (the ``User`` row, or ``auth.SignedInUser`` read for a request)."""

    @property
    def is_active(self) -> bool:  # Flask-Login refuses inactive users
        return self.active

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def get_id(self) -> str:
        return f"{self.id}:{self.session_version}"


class User(SignedInMixin, db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(_enum(Role, "role"), default=Role.STAFF)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    # Bumped on password reset or disable: every session made before is void.
    session_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=now_utc)

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)  # scrypt by default

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)



class ApiClient(db.Model):
    """A caller of ``/v1/smart_invites``; its secret authenticates it and signs its callbacks."""

    __tablename__ = "api_clients"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # SHA-256 of the secret, for constant-time lookup of a Bearer key.
    secret_digest: Mapped[str] = mapped_column(String(64), unique=True)
    # The secret itself, Fernet-encrypted with a key derived from SECRET_KEY (needed to sign callbacks).
    secret_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=now_utc)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


def new_reply_token() -> str:
    return secrets.token_hex(16)  # 128 random bits, safe in an email local part


def new_uid() -> str:
    return f"{uuid.uuid4()}@smart-invites-ui"


class Invite(db.Model):
    __tablename__ = "invites"

    id: Mapped[int] = mapped_column(primary_key=True)
    smart_invite_id: Mapped[str] = mapped_column(String(256), unique=True)
    uid: Mapped[str] = mapped_column(String(255), unique=True, default=new_uid)
    reply_token: Mapped[str] = mapped_column(String(64), unique=True, default=new_reply_token)
    summary: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    location: Mapped[str] = mapped_column(Text, default="")
    location_lat: Mapped[str] = mapped_column(String(32), default="")
    location_long: Mapped[str] = mapped_column(String(32), default="")
    url: Mapped[str] = mapped_column(Text, default="")
    reminders: Mapped[list] = mapped_column(JSON, default=list)
    transparency: Mapped[str] = mapped_column(String(16), default="")
    color: Mapped[str] = mapped_column(String(32), default="")
    start: Mapped[datetime] = mapped_column(UtcDateTime)
    end: Mapped[datetime] = mapped_column(UtcDateTime)
    tzid: Mapped[str] = mapped_column(String(64), default="UTC")
    all_day: Mapped[bool] = mapped_column(Boolean, default=False)
    organizer_name: Mapped[str] = mapped_column(String(200), default="")
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[InviteStatus] = mapped_column(_enum(InviteStatus, "invite_status"),
                                                 default=InviteStatus.ACTIVE)
    # Bumped on every change the live page shows; the poll compares it.
    version: Mapped[int] = mapped_column(Integer, default=1)
    source: Mapped[InviteSource] = mapped_column(_enum(InviteSource, "invite_source"),
                                                 default=InviteSource.DASHBOARD)
    callback_url: Mapped[str | None] = mapped_column(Text)
    # Made through the API's single-recipient form: callbacks then use "recipient", not "recipients".
    single_recipient: Mapped[bool] = mapped_column(Boolean, default=False)
    # With the cronofy provider: the last ICS the provider returned (what we email).
    provider_ics: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    api_client_id: Mapped[int | None] = mapped_column(ForeignKey("api_clients.id"))
    import_id: Mapped[int | None] = mapped_column(ForeignKey("booking_imports.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=now_utc)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=now_utc, onupdate=now_utc)

    recipients: Mapped[list["Recipient"]] = relationship(
        back_populates="invite", order_by="Recipient.id", cascade="all, delete-orphan")
    created_by: Mapped[User | None] = relationship()
    api_client: Mapped[ApiClient | None] = relationship()

    # The invites list (services.invites.list_invites): the end filters, the start orders.
    __table_args__ = (Index("ix_invites_start_end", "start", "end"),
                      Index("ix_invites_status_end_start", "status", "end", "start"))

    @property
    def event(self) -> EventData:
        return EventData(
            summary=self.summary, start=self.start, end=self.end, tzid=self.tzid,
            description=self.description or "", location=self.location or "", all_day=self.all_day,
            url=self.url or "", location_lat=self.location_lat or "",
            location_long=self.location_long or "", reminders=tuple(self.reminders or ()),
            transparency=self.transparency or "", color=self.color or "",
        )

    @staticmethod
    def event_columns(event: EventData) -> dict:
        """The invite's columns that hold ``event`` (for set_event, and bulk inserts)."""
        return {
            "summary": event.summary, "start": event.start, "end": event.end, "tzid": event.tzid,
            "description": event.description, "location": event.location, "all_day": event.all_day,
            "url": event.url, "location_lat": event.location_lat,
            "location_long": event.location_long, "reminders": list(event.reminders),
            "transparency": event.transparency, "color": event.color,
        }

    def set_event(self, event: EventData) -> bool:
        """Copy ``event`` onto the invite; True when anything changed."""
        changed = False
        for key, value in self.event_columns(event).items():
            if getattr(self, key) != value:
                setattr(self, key, value)
                changed = True
        return changed

    @property
    def is_cancelled(self) -> bool:
        return self.status == InviteStatus.CANCELLED

    @property
    def is_past(self) -> bool:
        return self.end <= now_utc()

    @property
    def invited(self) -> list["Recipient"]:
        """Recipients still on the invite (not removed)."""
        return [r for r in self.recipients if r.status != RecipientStatus.REMOVED]

    def recipient(self, email: str) -> "Recipient | None":
        email = email.strip().lower()
        return next((r for r in self.recipients if r.email == email), None)


class InviteTotal(db.Model):
    """How many invites there are: one row, kept by database triggers on ``invites`` (see the
    migration ``d7a2c5e9b013``), so the invites list need not count them all on every page
    (a full scan: 1.3-1.5 ms of PostgreSQL's time per page at 10,000 invites). When the row is
    missing (the table was emptied), ``services.invites.list_invites`` counts and stores it
    again with writers held off."""

    __tablename__ = "invite_totals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    invites: Mapped[int] = mapped_column(BigInteger)


class Recipient(db.Model):
    __tablename__ = "recipients"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Not indexed alone: uq_recipients_invite_email, which begins with it, serves reads by invite.
    invite_id: Mapped[int] = mapped_column(ForeignKey("invites.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[RecipientStatus] = mapped_column(_enum(RecipientStatus, "recipient_status"),
                                                    default=RecipientStatus.PENDING)
    comment: Mapped[str] = mapped_column(Text, default="")
    proposal_start: Mapped[datetime | None] = mapped_column(UtcDateTime)
    proposal_end: Mapped[datetime | None] = mapped_column(UtcDateTime)
    proposal_tzid: Mapped[str | None] = mapped_column(String(64))
    replied_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Ordering of replies (INTEROP §3.6): newest DTSTAMP, then SEQUENCE, wins.
    last_reply_dtstamp: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_reply_sequence: Mapped[int | None] = mapped_column(Integer)
    # A decline or a proposal that staff have not yet dealt with.
    needs_attention: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=now_utc)

    invite: Mapped[Invite] = relationship(back_populates="recipients")

    __table_args__ = (
        UniqueConstraint("invite_id", "email", name="uq_recipients_invite_email"),
        # The "Needs attention" count on every list page reads only these (few) rows.
        Index("ix_recipients_attention", "needs_attention", "invite_id"),
    )

    @property
    def proposal(self) -> Proposal | None:
        if self.proposal_start is None or self.proposal_end is None:
            return None
        return Proposal(self.proposal_start, self.proposal_end, self.proposal_tzid or "UTC")

    def set_proposal(self, proposal: Proposal | None) -> None:
        self.proposal_start = proposal.start if proposal else None
        self.proposal_end = proposal.end if proposal else None
        self.proposal_tzid = proposal.tzid if proposal else None


class NotificationOutcome(str, enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    UNKNOWN_INVITE = "unknown_invite"
    UNKNOWN_RECIPIENT = "unknown_recipient"
    IGNORED = "ignored"


class NotificationSource(str, enum.Enum):
    WEBHOOK = "webhook"
    EMAIL = "email"
    API = "api"
    STAFF = "staff"


class Notification(db.Model):
    """Every status notification received, kept whatever its outcome."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[NotificationSource] = mapped_column(_enum(NotificationSource, "notification_source"))
    # Identifies a repeated delivery of the same notification.
    dedupe_key: Mapped[str] = mapped_column(String(128), unique=True)
    body: Mapped[str] = mapped_column(Text)
    smart_invite_id: Mapped[str | None] = mapped_column(String(256))
    invite_id: Mapped[int | None] = mapped_column(ForeignKey("invites.id", ondelete="SET NULL"))
    outcome: Mapped[NotificationOutcome] = mapped_column(_enum(NotificationOutcome, "notification_outcome"))
    detail: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=now_utc)


class Reply(db.Model):
    """Append-only history of answers to an invite."""

    __tablename__ = "replies"

    id: Mapped[int] = mapped_column(primary_key=True)
    invite_id: Mapped[int] = mapped_column(ForeignKey("invites.id", ondelete="CASCADE"), index=True)
    recipient_id: Mapped[int | None] = mapped_column(ForeignKey("recipients.id", ondelete="SET NULL"))
    notification_id: Mapped[int | None] = mapped_column(ForeignKey("notifications.id", ondelete="SET NULL"))
    email: Mapped[str] = mapped_column(String(320))
    status: Mapped[RecipientStatus] = mapped_column(_enum(RecipientStatus, "reply_status"))
    comment: Mapped[str] = mapped_column(Text, default="")
    proposal_start: Mapped[datetime | None] = mapped_column(UtcDateTime)
    proposal_end: Mapped[datetime | None] = mapped_column(UtcDateTime)
    proposal_tzid: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[NotificationSource] = mapped_column(_enum(NotificationSource, "reply_source"))
    dtstamp: Mapped[datetime | None] = mapped_column(UtcDateTime)
    sequence: Mapped[int | None] = mapped_column(Integer)
    # False when the reply was recorded but did not change a status (stale, uninvited responder).
    applied: Mapped[bool] = mapped_column(Boolean, default=True)
    note: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=now_utc)

    @property
    def proposal(self) -> Proposal | None:
        if self.proposal_start is None or self.proposal_end is None:
            return None
        return Proposal(self.proposal_start, self.proposal_end, self.proposal_tzid or "UTC")


class OutboxKind(str, enum.Enum):
    EMAIL = "email"
    CALLBACK = "callback"


class OutboxState(str, enum.Enum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"  # gave up, or refused for good; last_error says why
    SUPERSEDED = "superseded"  # a newer message to the same recipient replaced it before it went


class OutboxMessage(db.Model):
    """Durable outbox: written in the same transaction as the change that caused it."""

    __tablename__ = "outbox_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[OutboxKind] = mapped_column(_enum(OutboxKind, "outbox_kind"))
    state: Mapped[OutboxState] = mapped_column(_enum(OutboxState, "outbox_state"), default=OutboxState.QUEUED)
    invite_id: Mapped[int | None] = mapped_column(ForeignKey("invites.id", ondelete="CASCADE"), index=True)
    recipient_id: Mapped[int | None] = mapped_column(ForeignKey("recipients.id", ondelete="SET NULL"))
    # Email: the recipient's address; callback: the URL.
    target: Mapped[str] = mapped_column(Text)
    # Email: iTIP method (REQUEST / CANCEL); callback: "callback".
    method: Mapped[str] = mapped_column(String(16))
    # Email: the ICS to send when an external provider produced it (else built at delivery).
    # Callback: the exact JSON body that is signed.
    payload: Mapped[bytes | None] = mapped_column(LargeBinary)
    api_client_id: Mapped[int | None] = mapped_column(ForeignKey("api_clients.id"))
    # What was actually delivered (the RFC 822 message), for the mail catcher and audits.
    rendered: Mapped[bytes | None] = mapped_column(LargeBinary)
    subject: Mapped[str] = mapped_column(Text, default="")
    sequence: Mapped[int | None] = mapped_column(Integer)
    transport: Mapped[str] = mapped_column(String(16), default="")  # smtp | catcher | http
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime, default=now_utc)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=now_utc)

    # The claim reads due rows in this order (longest due first, then by id).
    __table_args__ = (Index("ix_outbox_due", "state", "next_attempt_at", "id"),)


class InboundOutcome(str, enum.Enum):
    RECEIVED = "received"  # stored, not yet processed
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    IGNORED = "ignored"
    UNMATCHED = "unmatched"
    ERROR = "error"


class InboundMessage(db.Model):
    """A reply email as received (HTTP or IMAP), stored whatever comes of reading it."""

    __tablename__ = "inbound_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    raw_sha256: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(16))  # http | imap | demo
    message_id: Mapped[str] = mapped_column(Text, default="")
    from_address: Mapped[str] = mapped_column(Text, default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    invite_id: Mapped[int | None] = mapped_column(ForeignKey("invites.id", ondelete="SET NULL"))
    outcome: Mapped[InboundOutcome] = mapped_column(_enum(InboundOutcome, "inbound_outcome"),
                                                    default=InboundOutcome.RECEIVED)
    reason: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=now_utc)
    processed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_inbound_outcome", "outcome"),)


class ImportState(str, enum.Enum):
    PREVIEWED = "previewed"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"  # previewed and never confirmed: its file was discarded (imports.jobs)


class BookingImport(db.Model):
    """One CSV upload: who, when, which file, and what came of it."""

    __tablename__ = "booking_imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    filename: Mapped[str] = mapped_column(Text)
    content: Mapped[bytes | None] = mapped_column(LargeBinary)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    state: Mapped[ImportState] = mapped_column(_enum(ImportState, "import_state"), default=ImportState.PREVIEWED)
    total_rows: Mapped[int] = mapped_column(Integer, default=0)
    processed_rows: Mapped[int] = mapped_column(Integer, default=0)
    created_count: Mapped[int] = mapped_column(Integer, default=0)
    updated_count: Mapped[int] = mapped_column(Integer, default=0)
    unchanged_count: Mapped[int] = mapped_column(Integer, default=0)
    rejected_count: Mapped[int] = mapped_column(Integer, default=0)
    rejected_csv: Mapped[bytes | None] = mapped_column(LargeBinary)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=now_utc)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # A running import is leased to its worker; one whose worker died is taken again after it.
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)

    user: Mapped[User | None] = relationship()
