"""Plain domain types shared by services, routes and the API.

Nothing here touches the database or Flask: these are the words of the domain
(an event, a recipient's status, a reply) as plain Python values.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone


class RecipientStatus(str, enum.Enum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    TENTATIVE = "tentative"
    DECLINED = "declined"
    REMOVED = "removed"

    @property
    def label(self) -> str:
        return self.value.capitalize()


#: Statuses a reply can set (``removed`` only comes from staff or ``method: remove``).
REPLY_STATUSES = (
    RecipientStatus.ACCEPTED,
    RecipientStatus.TENTATIVE,
    RecipientStatus.DECLINED,
    RecipientStatus.PENDING,
)


class InviteStatus(str, enum.Enum):
    ACTIVE = "active"
    CANCELLED = "cancelled"


class InviteSource(str, enum.Enum):
    DASHBOARD = "dashboard"
    API = "api"
    IMPORT = "import"


class ITipMethod(str, enum.Enum):
    REQUEST = "REQUEST"
    CANCEL = "CANCEL"
    REPLY = "REPLY"
    COUNTER = "COUNTER"


def utc(dt: datetime) -> datetime:
    """Return ``dt`` as an aware UTC datetime (naive values are taken as UTC)."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


@dataclass(frozen=True)
class Proposal:
    """A new time proposed by a recipient (iTIP COUNTER / Cronofy ``proposal``)."""

    start: datetime  # aware, UTC
    end: datetime  # aware, UTC
    tzid: str = "UTC"


@dataclass(frozen=True)
class EventData:
    """What an invite says about the event, independent of how it is stored.

    ``start`` and ``end`` are aware UTC datetimes; ``tzid`` is the IANA zone the
    event is shown in. For an all-day event ``start``/``end`` are midnight UTC of
    the first day and of the day after the last (DTEND is exclusive).
    """

    summary: str
    start: datetime
    end: datetime
    tzid: str = "UTC"
    description: str = ""
    location: str = ""
    all_day: bool = False
    url: str = ""
    location_lat: str = ""
    location_long: str = ""
    reminders: tuple[int, ...] = field(default_factory=tuple)
    transparency: str = ""  # "", "opaque" or "transparent"
    color: str = ""


@dataclass(frozen=True)
class Attendee:
    email: str  # lower-cased address
    name: str = ""
    status: RecipientStatus = RecipientStatus.PENDING
