"""Invite forms: field names are part of the public surface (SPEC §4, issue 2)."""
from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

from flask_wtf import FlaskForm
from wtforms import DateTimeLocalField, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional

from ..domain import EventData
from ..services.invites import NewRecipient, parse_recipient_list

DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"]


@lru_cache(maxsize=1)
def timezone_choices() -> list[tuple[str, str]]:
    zones = sorted(z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/")))
    return [("UTC", "UTC")] + [(z, z.replace("_", " ")) for z in zones]


def to_utc(local: datetime, tzid: str) -> datetime:
    """A wall-clock time in ``tzid`` as UTC; refuses times skipped by a clock change."""
    zone = ZoneInfo(tzid)
    aware = local.replace(tzinfo=zone)
    round_trip = aware.astimezone(timezone.utc).astimezone(zone).replace(tzinfo=None)
    if round_trip != local:
        raise ValueError(f"{local:%Y-%m-%d %H:%M} does not exist in {tzid} (the clocks change then).")
    return aware.astimezone(timezone.utc)


class EventForm(FlaskForm):
    summary = StringField("Title", validators=[DataRequired("Enter a title for the appointment."),
                                               Length(max=1000)])
    description = TextAreaField("Description", validators=[Optional(), Length(max=20000)])
    start = DateTimeLocalField("Starts", format=DATETIME_FORMATS,
                               validators=[DataRequired("Enter when it starts.")])
    end = DateTimeLocalField("Ends", format=DATETIME_FORMATS, validators=[DataRequired("Enter when it ends.")])
    tzid = SelectField("Time zone", choices=timezone_choices, validate_choice=True)
    location = StringField("Location", validators=[Optional(), Length(max=1000)])
    organizer_name = StringField("Organizer name (shown to recipients)", validators=[Optional(), Length(max=200)])

    def event(self, base: EventData | None = None) -> EventData | None:
        """The event the form describes, or None after adding field errors."""
        try:
            start = to_utc(self.start.data, self.tzid.data)
        except ValueError as exc:
            self.start.errors = [*self.start.errors, str(exc)]
            return None
        try:
            end = to_utc(self.end.data, self.tzid.data)
        except ValueError as exc:
            self.end.errors = [*self.end.errors, str(exc)]
            return None
        values = dict(base.__dict__) if base else {}
        # Browsers send textarea line breaks as CRLF: store "\n" so an unchanged form is unchanged.
        description = (self.description.data or "").replace("\r\n", "\n").replace("\r", "\n").strip()
        values.update(summary=self.summary.data.strip(), description=description,
                      location=(self.location.data or "").strip(), start=start, end=end,
                      tzid=self.tzid.data, all_day=False)
        return EventData(**values)


class RecipientsFieldMixin:
    """Reads the ``recipients`` textarea; bad addresses are listed under the field."""

    invalid_addresses: list[str] = []

    def recipient_list(self) -> list[NewRecipient] | None:
        valid, invalid = parse_recipient_list(self.recipients.data or "")
        if invalid:
            self.recipients.errors = [*self.recipients.errors, "These are not valid email addresses:"]
            self.invalid_addresses = invalid
            return None
        if not valid:
            self.recipients.errors = [*self.recipients.errors, "Add at least one recipient."]
            return None
        return valid


class NewInviteForm(RecipientsFieldMixin, EventForm):
    recipients = TextAreaField("Recipients", validators=[DataRequired("Add at least one recipient.")],
                               description="One address per line, or separated by commas.")
    smart_invite_id = StringField("Reference", validators=[Optional(), Length(max=256)],
                                  description="Optional: your booking or appointment number. "
                                              "Left empty, one is generated.")


class AddRecipientsForm(RecipientsFieldMixin, FlaskForm):
    recipients = TextAreaField("Add recipients", validators=[DataRequired("Enter at least one address.")])


class ActionForm(FlaskForm):
    """A button that changes something: only the CSRF token."""
