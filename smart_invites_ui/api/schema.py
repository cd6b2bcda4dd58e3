"""Validation and JSON shapes for the Cronofy-compatible ``/v1/smart_invites`` API.

Pure functions, no Flask and no database: :func:`parse_api_request` turns a
decoded JSON body into an :class:`ApiRequest` or raises
:class:`ApiValidationError` listing *every* invalid field at once, in
Cronofy's 422 shape::

    {"errors": {"event.summary": [{"key": "errors.required", "description": "required"}]}}

:func:`event_time_json` and :func:`proposal_json` build the normalised
``{"time", "tzid"}`` objects used in responses and callbacks.
"""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email

from smart_invites_ui.domain import EventData, Proposal, utc

__all__ = [
    "ApiRequest",
    "ApiValidationError",
    "METHODS",
    "event_time_json",
    "parse_api_request",
    "parse_event_time",
    "proposal_json",
]

#: The values ``method`` may take; ``request`` is the default when absent.
METHODS = ("request", "cancel", "remove")

MAX_SMART_INVITE_ID = 256
MAX_URL = 2048
MAX_SUMMARY = 1024
MAX_DESCRIPTION = 65536
MAX_LOCATION = 1024
MAX_ORGANIZER_NAME = 256
MAX_REMINDER_MINUTES = 40320  # four weeks, as Cronofy

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_COLOR_RE = re.compile(r"^(#[0-9A-Fa-f]{3}|#[0-9A-Fa-f]{6}|[A-Za-z]{1,32})$")


# --------------------------------------------------------------------------- errors


class ApiValidationError(Exception):
    """A request body failed validation; ``errors`` is Cronofy's 422 shape."""

    def __init__(self, errors: dict[str, list[dict[str, str]]]):
        self.errors = errors
        super().__init__("; ".join(f"{field}: {', '.join(e['description'] for e in errs)}"
                                   for field, errs in errors.items()))

    def as_json(self) -> dict:
        """The full response body: ``{"errors": {...}}``."""
        return {"errors": self.errors}


class _Errors:
    def __init__(self) -> None:
        self.errors: dict[str, list[dict[str, str]]] = {}

    def add(self, field: str, key: str, description: str) -> None:
        self.errors.setdefault(field, []).append({"key": f"errors.{key}", "description": description})

    def required(self, field: str) -> None:
        self.add(field, "required", "required")

    def invalid(self, field: str, description: str) -> None:
        self.add(field, "invalid", description)

    def too_long(self, field: str, limit: int) -> None:
        self.add(field, "too_long", f"must be at most {limit} characters")

    def __bool__(self) -> bool:
        return bool(self.errors)


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class ApiRequest:
    method: str  # "request", "cancel" or "remove"
    smart_invite_id: str
    callback_url: str | None
    event: EventData | None  # set for "request"; None for cancel/remove
    recipients: tuple[str, ...]  # lower-cased, de-duplicated, order kept
    single: bool  # True for the ``recipient {email}`` form
    organizer_name: str


# --------------------------------------------------------------------------- time


def _zone(tzid: object) -> ZoneInfo:
    if not isinstance(tzid, str) or not tzid.strip():
        raise ValueError("must be an IANA time zone name")
    try:
        return ZoneInfo(tzid)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise ValueError(f"unknown time zone {tzid!r}") from None


class EventTimeError(ValueError):
    """Raised by :func:`parse_event_time`; ``part`` is ``"time"``/``"tzid"`` for the object form."""

    def __init__(self, reason: str, part: str = ""):
        super().__init__(reason)
        self.part = part


def _parse_time_string(value: str, zone: ZoneInfo) -> tuple[datetime, bool]:
    text = value.strip()
    if _DATE_RE.match(text):
        try:
            d = date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not a valid date: {value!r}") from None
        return datetime.combine(d, time(0), tzinfo=timezone.utc), True
    if not _DATETIME_RE.match(text):
        raise ValueError("must be an ISO 8601 time (e.g. 2024-10-14T09:30:00Z) or a date YYYY-MM-DD")
    if text.endswith("UTC"):  # pycronofy documents "2016-01-31T12:33:00UTC"
        text = text[:-3] + "Z"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a valid ISO 8601 time: {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone)
    return utc(dt), False


def parse_event_time(value: object, default_tzid: str) -> tuple[datetime, str, bool]:
    """Parse an event ``start``/``end`` into ``(aware UTC datetime, tzid, all_day)``.

    Accepted forms: an ISO 8601 string with ``Z`` or an offset (a naive time is
    taken in ``default_tzid``), a date ``YYYY-MM-DD`` (all-day; midnight UTC of
    that date), or an object ``{"time": <either string form>, "tzid": ...}``
    whose ``tzid`` (default ``default_tzid``) names the zone. Raises
    :class:`EventTimeError` (a ``ValueError``) with a short reason.
    """
    tzid = default_tzid
    part = ""
    if isinstance(value, dict):
        if "tzid" in value and value["tzid"] not in (None, ""):
            tzid = value["tzid"]
            try:
                _zone(tzid)
            except ValueError as exc:
                raise EventTimeError(str(exc), "tzid") from None
        value = value.get("time")
        part = "time"
        if value in (None, ""):
            raise EventTimeError("required", part)
    try:
        zone = _zone(tzid)
    except ValueError as exc:
        raise EventTimeError(str(exc), "tzid" if part else "") from None
    if not isinstance(value, str):
        raise EventTimeError(
            "must be an ISO 8601 time, a date YYYY-MM-DD or an object {time, tzid}", part
        )
    try:
        dt, all_day = _parse_time_string(value, zone)
    except ValueError as exc:
        raise EventTimeError(str(exc), part) from None
    return dt, tzid, all_day


def event_time_json(dt_utc: datetime, tzid: str, all_day: bool) -> dict:
    """``{"time": "2024-10-14T09:30:00Z", "tzid": ...}``; all-day: ``{"time": "2024-10-14", ...}``."""
    dt = utc(dt_utc)
    if all_day:
        return {"time": dt.date().isoformat(), "tzid": tzid}
    return {"time": dt.strftime("%Y-%m-%dT%H:%M:%SZ"), "tzid": tzid}


def event_extras_json(event: EventData) -> dict:
    """The optional event fields (location, url, reminders, transparency, color) as the API writes them."""
    extras: dict = {}
    if event.location or event.location_lat or event.location_long:
        location: dict = {"description": event.location}
        if event.location_lat:
            location["lat"] = event.location_lat
        if event.location_long:
            location["long"] = event.location_long
        extras["location"] = location
    if event.url:
        extras["url"] = event.url
    if event.reminders:
        extras["reminders"] = [{"minutes": minutes} for minutes in event.reminders]
    if event.transparency:
        extras["transparency"] = event.transparency
    if event.color:
        extras["color"] = event.color
    return extras


def proposal_json(p: Proposal) -> dict:
    """A reply's proposed time as ``{"start": {time, tzid}, "end": {time, tzid}}``."""
    return {
        "start": event_time_json(p.start, p.tzid, False),
        "end": event_time_json(p.end, p.tzid, False),
    }


# --------------------------------------------------------------------------- helpers


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def _http_url_problem(value: str) -> str | None:
    """None when ``value`` is an absolute http(s) URL, else a short reason."""
    if _has_control(value) or any(ch.isspace() for ch in value):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "must be an absolute http(s) URL"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "must be an absolute http(s) URL"
    return None


def _optional_string(obj: dict, key: str, field: str, errors: _Errors, limit: int) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        errors.invalid(field, "must be a string")
        return ""
    if len(value) > limit:
        errors.too_long(field, limit)
        return ""
    return value


def _coordinate(value: object, field: str, errors: _Errors, bound: float) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        errors.invalid(field, "must be a number")
        return ""
    text = value.strip() if isinstance(value, str) else repr(value)
    try:
        number = float(text)
    except ValueError:
        errors.invalid(field, "must be a number")
        return ""
    if not math.isfinite(number) or abs(number) > bound:
        errors.invalid(field, f"must be between -{bound:g} and {bound:g}")
        return ""
    return text


def _email(value: object, field: str, errors: _Errors) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        errors.required(field)
        return None
    if not isinstance(value, str):
        errors.invalid(field, "must be a string")
        return None
    try:
        result = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        errors.invalid(field, f"not a valid email address: {exc}")
        return None
    return result.normalized.lower()


# --------------------------------------------------------------------------- parts


def _parse_smart_invite_id(body: dict, errors: _Errors) -> str:
    value = body.get("smart_invite_id")
    if value is None or (isinstance(value, str) and not value.strip()):
        errors.required("smart_invite_id")
        return ""
    if not isinstance(value, str):
        errors.invalid("smart_invite_id", "must be a string")
        return ""
    if len(value) > MAX_SMART_INVITE_ID:
        errors.too_long("smart_invite_id", MAX_SMART_INVITE_ID)
        return ""
    if _has_control(value):
        errors.invalid("smart_invite_id", "must not contain control characters")
        return ""
    return value


def _parse_callback_url(body: dict, errors: _Errors) -> str | None:
    value = body.get("callback_url")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        errors.invalid("callback_url", "must be a string")
        return None
    if len(value) > MAX_URL:
        errors.too_long("callback_url", MAX_URL)
        return None
    problem = _http_url_problem(value)
    if problem:
        errors.invalid("callback_url", problem)
        return None
    return value


def _parse_recipients(body: dict, method: str, errors: _Errors) -> tuple[tuple[str, ...], bool]:
    single_value = body.get("recipient")
    many_value = body.get("recipients")
    if single_value is not None and many_value is not None:
        errors.invalid("recipients", "give either recipient or recipients, not both")
        return (), False
    emails: list[str | None] = []
    if many_value is None:
        single = True
        if single_value is None:
            errors.required("recipient")
            return (), True
        if not isinstance(single_value, dict):
            errors.invalid("recipient", "must be an object with an email")
            return (), True
        emails.append(_email(single_value.get("email"), "recipient.email", errors))
    else:
        single = False
        if not isinstance(many_value, list):
            errors.invalid("recipients", "must be a list of objects with an email")
            return (), False
        if not many_value:
            errors.required("recipients")
            return (), False
        for index, item in enumerate(many_value):
            if not isinstance(item, dict):
                errors.invalid(f"recipients[{index}]", "must be an object with an email")
                continue
            emails.append(_email(item.get("email"), f"recipients[{index}].email", errors))
    seen: dict[str, None] = {}
    for email in emails:
        if email is not None:
            seen.setdefault(email, None)
    result = tuple(seen)
    if method == "remove" and not single and len(result) > 1:
        errors.invalid("recipients", "remove takes a single recipient")
    return result, single


def _parse_location(event: dict, errors: _Errors) -> tuple[str, str, str]:
    value = event.get("location")
    if value is None:
        return "", "", ""
    if isinstance(value, str):  # lenient: a bare string is the description
        if len(value) > MAX_LOCATION:
            errors.too_long("event.location", MAX_LOCATION)
            return "", "", ""
        return value, "", ""
    if not isinstance(value, dict):
        errors.invalid("event.location", "must be an object {description, lat, long}")
        return "", "", ""
    description = _optional_string(value, "description", "event.location.description", errors, MAX_LOCATION)
    lat = _coordinate(value.get("lat"), "event.location.lat", errors, 90)
    long = _coordinate(value.get("long"), "event.location.long", errors, 180)
    return description, lat, long


def _parse_reminders(event: dict, errors: _Errors) -> tuple[int, ...]:
    value = event.get("reminders")
    if value is None:
        return ()
    if not isinstance(value, list):
        errors.invalid("event.reminders", "must be a list of objects {minutes}")
        return ()
    minutes: list[int] = []
    for index, item in enumerate(value):
        field = f"event.reminders[{index}].minutes"
        if not isinstance(item, dict):
            errors.invalid(f"event.reminders[{index}]", "must be an object {minutes}")
            continue
        m = item.get("minutes")
        if m is None:
            errors.required(field)
            continue
        if isinstance(m, float) and m.is_integer():
            m = int(m)
        if isinstance(m, bool) or not isinstance(m, int):
            errors.invalid(field, "must be a whole number of minutes")
            continue
        if not 0 <= m <= MAX_REMINDER_MINUTES:
            errors.invalid(field, f"must be between 0 and {MAX_REMINDER_MINUTES}")
            continue
        minutes.append(m)
    return tuple(minutes)


def _parse_event(body: dict, errors: _Errors) -> EventData | None:
    event = body.get("event")
    if event is None:
        errors.required("event")
        return None
    if not isinstance(event, dict):
        errors.invalid("event", "must be an object")
        return None
    count_before = len(errors.errors)

    summary = event.get("summary")
    if summary is None or (isinstance(summary, str) and not summary.strip()):
        errors.required("event.summary")
    elif not isinstance(summary, str):
        errors.invalid("event.summary", "must be a string")
    elif len(summary) > MAX_SUMMARY:
        errors.too_long("event.summary", MAX_SUMMARY)

    # The event's zone: event.tzid, else the tzid of a start object, else UTC.
    tzid_value = event.get("tzid")
    explicit_tzid = tzid_value not in (None, "")
    default_tzid = "UTC"
    if explicit_tzid:
        try:
            _zone(tzid_value)
            default_tzid = tzid_value
        except ValueError as exc:
            errors.invalid("event.tzid", str(exc))

    times: dict[str, tuple[datetime, str, bool]] = {}
    for key in ("start", "end"):
        value = event.get(key)
        field = f"event.{key}"
        if value is None or value == "":
            errors.required(field)
            continue
        try:
            times[key] = parse_event_time(value, default_tzid)
        except EventTimeError as exc:
            sub = f"{field}.{exc.part}" if exc.part else field
            if str(exc) == "required":
                errors.required(sub)
            else:
                errors.invalid(sub, str(exc))

    if "start" in times and "end" in times:
        start, start_tzid, start_all_day = times["start"]
        end, _end_tzid, end_all_day = times["end"]
        if start_all_day != end_all_day:
            errors.invalid(
                "event.end",
                "must be a date when start is a date" if start_all_day else "must be a time when start is a time",
            )
        elif end <= start:
            errors.invalid("event.end", "must be after start")

    description = _optional_string(event, "description", "event.description", errors, MAX_DESCRIPTION)
    url = _optional_string(event, "url", "event.url", errors, MAX_URL)
    if url:
        problem = _http_url_problem(url)
        if problem:
            errors.invalid("event.url", problem)
    location, lat, long = _parse_location(event, errors)
    reminders = _parse_reminders(event, errors)

    transparency = event.get("transparency")
    if transparency in (None, ""):
        transparency = ""
    elif transparency not in ("opaque", "transparent"):
        errors.invalid("event.transparency", "must be opaque or transparent")
        transparency = ""

    color = event.get("color")
    if color in (None, ""):
        color = ""
    elif not isinstance(color, str) or not _COLOR_RE.match(color):
        errors.invalid("event.color", "must be a hex colour like #49BED8 or a colour name")
        color = ""

    if len(errors.errors) > count_before or "start" not in times or "end" not in times:
        return None
    start, start_tzid, all_day = times["start"]
    end = times["end"][0]
    tzid = default_tzid if explicit_tzid else start_tzid
    return EventData(
        summary=summary,
        start=start,
        end=end,
        tzid=tzid,
        description=description,
        location=location,
        all_day=all_day,
        url=url,
        location_lat=lat,
        location_long=long,
        reminders=reminders,
        transparency=transparency,
        color=color,
    )


def _parse_organizer(body: dict, errors: _Errors) -> str:
    value = body.get("organizer")
    if value is None:
        return ""
    if not isinstance(value, dict):
        errors.invalid("organizer", "must be an object {name}")
        return ""
    return _optional_string(value, "name", "organizer.name", errors, MAX_ORGANIZER_NAME)


# --------------------------------------------------------------------------- entry point


def parse_api_request(body: object) -> ApiRequest:
    """Validate a decoded ``POST /v1/smart_invites`` body.

    Raises :class:`ApiValidationError` naming every invalid field.
    """
    errors = _Errors()
    if not isinstance(body, dict):
        errors.invalid("body", "must be a JSON object")
        raise ApiValidationError(errors.errors)

    method = body.get("method")
    if method is None or method == "":
        method = "request"
    elif method not in METHODS:
        errors.invalid("method", "must be one of request, cancel, remove")
        method = None

    smart_invite_id = _parse_smart_invite_id(body, errors)
    callback_url = _parse_callback_url(body, errors)
    recipients, single = _parse_recipients(body, method or "request", errors)
    event = _parse_event(body, errors) if method == "request" else None
    organizer_name = _parse_organizer(body, errors)

    if errors:
        raise ApiValidationError(errors.errors)
    assert method is not None
    return ApiRequest(
        method=method,
        smart_invite_id=smart_invite_id,
        callback_url=callback_url,
        event=event,
        recipients=recipients,
        single=single,
        organizer_name=organizer_name,
    )
