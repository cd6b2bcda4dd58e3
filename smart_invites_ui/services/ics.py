"""The one place an invite's ICS is built (INTEROP.md §1), with the icalendar library."""
from __future__ import annotations

import functools
from datetime import date, datetime, timedelta, timezone
from typing import Iterable
from zoneinfo import ZoneInfo

from icalendar import Alarm, Calendar, Event, Timezone, vCalAddress, vText

from ..domain import Attendee, EventData, ITipMethod, RecipientStatus

PRODID = "-//Smart Invites UI//smart-invites-ui//EN"

_PARTSTAT = {
    RecipientStatus.PENDING: "NEEDS-ACTION",
    RecipientStatus.ACCEPTED: "ACCEPTED",
    RecipientStatus.TENTATIVE: "TENTATIVE",
    RecipientStatus.DECLINED: "DECLINED",
    RecipientStatus.REMOVED: "NEEDS-ACTION",
}


@functools.lru_cache(maxsize=512)
def vtimezone(tzid: str, first_year: int, last_year: int) -> Timezone:
    """A VTIMEZONE covering the years ``first_year`` to ``last_year``.

    Without a window icalendar emits every transition from 1970 to 2038 (kilobytes
    per invite); a narrow one keeps each email small, and the cache makes building
    it a one-off cost per zone and year.
    """
    return Timezone.from_tzid(tzid, first_date=date(first_year, 1, 1), last_date=date(last_year + 1, 1, 1))


def _calendar_address(email: str, name: str, **params: str) -> vCalAddress:
    address = vCalAddress(f"mailto:{email}")
    if name:
        address.params["CN"] = vText(name)
    for key, value in params.items():
        address.params[key.replace("_", "-").upper()] = value
    return address


def _when(value: datetime, event: EventData) -> datetime | date:
    if event.all_day:
        return value.astimezone(timezone.utc).date()
    if event.tzid in ("UTC", "Etc/UTC"):
        return value.astimezone(timezone.utc)
    return value.astimezone(ZoneInfo(event.tzid))


def build_ics(
    *,
    uid: str,
    sequence: int,
    event: EventData,
    method: ITipMethod,
    organizer_email: str,
    organizer_name: str,
    attendees: Iterable[Attendee],
    cancelled: bool = False,
    dtstamp: datetime | None = None,
) -> bytes:
    """Return the iCalendar bytes of one invite for ``method``.

    ``attendees`` are those the message is about: everyone still invited for a
    REQUEST, the cancelled people for a CANCEL.
    """
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("method", method.value)

    vevent = Event()
    vevent.add("uid", uid)
    vevent.add("dtstamp", (dtstamp or datetime.now(timezone.utc)).astimezone(timezone.utc))
    vevent.add("sequence", sequence)
    vevent.add("dtstart", _when(event.start, event))
    vevent.add("dtend", _when(event.end, event))
    vevent.add("summary", event.summary)
    if event.description:
        vevent.add("description", event.description)
    if event.location:
        vevent.add("location", event.location)
    if event.location_lat and event.location_long:
        try:
            vevent.add("geo", (float(event.location_lat), float(event.location_long)))
        except ValueError:
            pass  # coordinates are optional; unparseable ones are left out rather than sent broken
    if event.url:
        vevent.add("url", event.url)
    if event.transparency:
        vevent.add("transp", event.transparency.upper())
    if event.color:
        vevent.add("color", event.color)
    vevent.add("status", "CANCELLED" if cancelled else "CONFIRMED")
    vevent.add("organizer", _calendar_address(organizer_email, organizer_name))
    for attendee in attendees:
        vevent.add(
            "attendee",
            _calendar_address(
                attendee.email,
                attendee.name,
                cutype="INDIVIDUAL",
                role="REQ-PARTICIPANT",
                partstat=_PARTSTAT[attendee.status],
                rsvp="TRUE",
            ),
        )
    if not cancelled:
        for minutes in event.reminders:
            alarm = Alarm()
            alarm.add("action", "DISPLAY")
            alarm.add("description", event.summary)
            alarm.add("trigger", timedelta(minutes=-int(minutes)))
            vevent.add_component(alarm)

    if not event.all_day and event.tzid not in ("UTC", "Etc/UTC"):
        cal.add_component(vtimezone(event.tzid, event.start.year, event.end.year))
    cal.add_component(vevent)
    return cal.to_ical()
