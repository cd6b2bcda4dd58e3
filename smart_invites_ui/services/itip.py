"""Attendees' calendar replies: reading them from email, and writing realistic ones.

``parse_message`` turns one raw inbound email into the iTIP replies it carries, following
INTEROP.md §3. It is pure (no database, no Flask) and, whatever the bytes, it returns a
``ParsedMessage`` or raises ``ParseError`` with a reason staff can read.

``build_reply_email`` writes the reply a real client would send (INTEROP.md §2: Google,
Outlook, Apple, Thunderbird), for the mail catcher's "Reply as attendee" demo and for tests.
"""
from __future__ import annotations

import binascii
import calendar as _calendar
import functools
import html
import re
import secrets
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from email.header import decode_header, make_header
from email.message import Message, MIMEPart
from email.policy import SMTP
from email.utils import format_datetime, formataddr, getaddresses, make_msgid, parseaddr
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from icalendar import Calendar, Event, Timezone, TimezoneDaylight, TimezoneStandard, vCalAddress
from icalendar.parser.ical.calendar import CalendarIcalParser
from icalendar.prop import vDDDTypes
from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

from ..domain import Proposal, RecipientStatus, utc
from .ics import vtimezone

__all__ = [
    "CLIENT_SHAPES",
    "ParseError",
    "ParsedMessage",
    "ParsedReply",
    "build_reply_email",
    "parse_message",
]


class ParseError(Exception):
    """The message carries no usable calendar reply; ``str(err)`` is a short reason for staff."""


@dataclass(frozen=True)
class ParsedReply:
    """One attendee's answer about one event, as read from a calendar part."""

    method: str  # the calendar's METHOD upper-cased ("REPLY", "COUNTER", "REQUEST", ...; "" if missing)
    uid: str
    attendee_email: str  # lower-cased, without mailto:; the EMAIL= parameter wins (iCloud relay)
    attendee_name: str  # CN, may be ""
    partstat: str  # raw PARTSTAT upper-cased ("" if missing)
    status: RecipientStatus | None  # None: PARTSTAT unknown (e.g. Google's DELETED) or missing
    comment: str
    proposal: Proposal | None  # COUNTER only
    dtstamp: datetime | None  # aware UTC
    sequence: int
    recurrence_id: str | None  # ISO 8601: UTC date-time, or a date for all-day occurrences


@dataclass(frozen=True)
class ParsedMessage:
    message_id: str
    from_address: str  # lower-cased bare address
    subject: str
    tokens: tuple[str, ...]  # per-invite tokens from plus-addresses of the reply mailbox, as written
    replies: tuple[ParsedReply, ...]  # never empty


# Bounds on the work one message can cause. Real replies are a few KB with at most a handful of
# MIME parts three levels deep; the limits leave room for big attachments and forwards-of-forwards.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 256 * 1024
MAX_MIME_DEPTH = 20
MAX_MIME_PARTS = 500
MAX_CALENDAR_BYTES = 2 * 1024 * 1024
# icalendar reads roughly 12,000 content lines a second. These bound what one message may hand
# it, summed over its calendar parts, to a fraction of a second; a reply has about ten such lines
# and a forwarded invite one per attendee.
MAX_ICS_LINES = 2000
MAX_ICS_CHARS = 256 * 1024

_STATUS_BY_PARTSTAT = {
    "ACCEPTED": RecipientStatus.ACCEPTED,
    "DECLINED": RecipientStatus.DECLINED,
    "TENTATIVE": RecipientStatus.TENTATIVE,
    "NEEDS-ACTION": RecipientStatus.PENDING,
}


def parse_message(raw: bytes, mail_from: str) -> ParsedMessage:
    """Read the calendar replies in one raw RFC 822 message (INTEROP.md §3).

    ``mail_from`` is the reply mailbox (``invites@clinic.example``); plus-addresses of it in
    To/Cc/Delivered-To/X-Original-To give the per-invite tokens. Raises ``ParseError`` when
    the message has no calendar part, when no calendar part can be read, or when none names
    an attendee; never anything else.
    """
    if isinstance(raw, (bytearray, memoryview)):
        raw = bytes(raw)
    if not isinstance(raw, bytes):
        raise ParseError(f"message must be bytes, not {type(raw).__name__}")
    try:
        return _parse_message(raw, mail_from)
    except ParseError:
        raise
    except Exception as exc:  # the contract is "a result or ParseError", even for inputs no one foresaw
        raise ParseError(f"unreadable message ({type(exc).__name__})") from exc


def _parse_message(raw: bytes, mail_from: str) -> ParsedMessage:
    if not raw.strip():
        raise ParseError("empty message")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ParseError(f"message is larger than {MAX_MESSAGE_BYTES // 2**20} MB")

    walk = _MimeWalk(raw)
    replies: dict[ParsedReply, None] = {}  # an ordered set
    failures: list[str] = []
    seen: set[str] = set()  # Google and Thunderbird send the same calendar inline and attached
    budget = _Budget()
    calendar_parts = 0
    readable = False
    for part in walk.leaves():
        if not _is_calendar_part(part.headers):
            continue
        calendar_parts += 1
        try:
            text = _calendar_text(part)
            if text in seen:
                continue
            seen.add(text)
            ics = _relevant_ics(text)
            budget.spend(ics)
            found = _replies_in_ics(ics)
        except _PartError as exc:
            failures.append(str(exc))
            continue
        readable = True
        for reply in found:
            replies.setdefault(reply, None)

    if replies:
        top = walk.top_headers
        return ParsedMessage(
            message_id=_clean(" ".join(_raw_values(top, "Message-ID")[:1]))[:998],
            from_address=_bare_address(" ".join(_raw_values(top, "From")[:1])),
            subject=_decoded_header(" ".join(_raw_values(top, "Subject")[:1])),
            tokens=_tokens(top, mail_from),
            replies=tuple(replies),
        )
    if calendar_parts == 0:
        reason = "no calendar part"
    elif readable:
        reason = "calendar has no VEVENT with an ATTENDEE"
    else:
        reason = failures[0] + (f" (and {len(failures) - 1} more calendar parts failed)" if len(failures) > 1 else "")
    raise ParseError(reason + walk.note())


@dataclass
class _Budget:
    """What is left of the iCalendar lines and characters one message may have parsed."""

    lines: int = MAX_ICS_LINES
    chars: int = MAX_ICS_CHARS

    def spend(self, ics: _Ics) -> None:
        self.lines -= ics.lines
        self.chars -= len(ics.events) + len(ics.zones)
        if self.lines < 0 or self.chars < 0:
            raise _PartError(
                f"calendar parts hold more than {MAX_ICS_LINES} lines or {MAX_ICS_CHARS // 1024} KB "
                "of the properties a reply is read for"
            )


class _PartError(Exception):
    """One calendar part could not be read; other parts may still succeed."""


# --- MIME ---------------------------------------------------------------------------------


_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # printable ASCII but ":" (RFC 5322 §2.2)


def _header_block(block: bytes) -> tuple[Message, bytes]:
    """Parse a header block into a compat32 ``Message``; also return the lines that are not headers.

    The same reading as the stdlib's header parsing (values kept raw, folds included), without
    the cost of a FeedParser per MIME part, which was a third of the time of a typical reply.
    """
    headers = Message()
    lines = block.decode("ascii", "surrogateescape").split("\n")
    name: str | None = None
    value: list[str] = []
    leftover = b""
    for index, line in enumerate(lines):
        if not line:
            continue
        if line[0] in " \t":
            if name is not None:  # a fold; one with nothing to continue is dropped
                value.append("\n" + line)
            continue
        if index == 0 and line.startswith("From "):
            continue  # an mbox separator line
        field, colon, rest = line.partition(":")
        if name is not None:
            headers.set_raw(name, "".join(value).rstrip())
            name = None
        if not colon or not _FIELD_NAME.fullmatch(field):
            leftover = "\n".join(lines[index:]).encode("ascii", "surrogateescape")
            break
        name, value = field, [rest.lstrip(" \t")]
    if name is not None:
        headers.set_raw(name, "".join(value).rstrip())
    return headers, leftover


@dataclass(frozen=True)
class _Part:
    """A leaf MIME part: its headers and where its (still transfer-encoded) body lies."""

    headers: Message
    buffer: bytes
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def body(self) -> bytes:
        return self.buffer[self.start : self.end]


class _MimeWalk:
    """Finds the leaf parts of a message without parsing the bodies it does not need.

    The stdlib parser reads every line of every part in Python; a 20 MB attachment, or a
    message of a million empty lines, then costs seconds. Here bodies are located with
    ``bytes.find`` on boundaries and only header blocks are parsed, so the cost follows the
    number of parts, which is capped, as is the nesting depth.
    Parts are spans of one line-ending-normalised buffer, so nothing is copied until a
    calendar part's body is read.
    """

    def __init__(self, raw: bytes) -> None:
        # One line-ending convention keeps boundary and header scanning simple. Calendar text is
        # line-normalised later anyway, and no other part is ever decoded.
        data = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        self._notes: dict[str, None] = {}
        self._parts = 1
        root = self._read(data, 0, len(data))
        self._root = root
        self.top_headers: Message = root[0] if root else Message()

    def note(self) -> str:
        """Why parts may have been left unsearched, for the ParseError reason ("" if none)."""
        return f" (not searched: {'; '.join(self._notes)})" if self._notes else ""

    def leaves(self) -> Iterator[_Part]:
        if self._root is None:
            return
        stack = [(*self._root, 0)]
        while stack:
            headers, buffer, start, end, depth = stack.pop()
            content_type = _content_type(headers)
            spans: list[tuple[int, int]] | None = None
            if content_type == "message/rfc822":
                spans = [(start, end)]
            elif content_type.startswith("multipart/"):
                spans = self._split_multipart(headers, buffer, start, end)
            if spans is None:
                yield _Part(headers, buffer, start, end)
                continue
            if depth >= MAX_MIME_DEPTH:
                self._notes[f"MIME nesting deeper than {MAX_MIME_DEPTH} levels"] = None
                continue
            children = [child for s, e in spans if (child := self._read(buffer, s, e)) is not None]
            stack.extend((*child, depth + 1) for child in reversed(children))

    def _read(self, buffer: bytes, start: int, end: int) -> tuple[Message, bytes, int, int] | None:
        """Parse the header block of the entity in ``buffer[start:end]``; locate its body."""
        if buffer.startswith(b"\n", start, end):
            return Message(), buffer, start + 1, end
        separator = buffer.find(b"\n\n", start, end)
        head_end = end if separator < 0 else separator + 1
        body_start = end if separator < 0 else separator + 2
        if head_end - start > MAX_HEADER_BYTES:
            self._notes[f"a header block larger than {MAX_HEADER_BYTES // 1024} KB"] = None
            return None
        headers, leftover = _header_block(buffer[start:head_end])
        if leftover:
            # A line that is not a header ended the header block early (no blank line after the
            # headers): like the stdlib parser, treat it and what follows as the body.
            body = leftover + b"\n" + buffer[body_start:end] if separator >= 0 else leftover
            return headers, body, 0, len(body)
        return headers, buffer, body_start, end

    def _split_multipart(self, headers: Message, buffer: bytes, start: int, end: int) -> list[tuple[int, int]] | None:
        try:
            boundary = headers.get_boundary()
        except Exception:  # malformed RFC 2231 parameters
            boundary = None
        if not boundary:
            return None  # a multipart without a boundary is opaque, as for the stdlib parser
        try:
            # The header text is the raw bytes decoded as ASCII with surrogate escapes; undo that.
            delimiter = b"--" + boundary.encode("ascii", "surrogateescape")
        except UnicodeError:  # an RFC 2231-decoded boundary outside ASCII; no body can match it
            return None
        spans: list[tuple[int, int]] = []
        part_start: int | None = None
        position = start
        while (found := buffer.find(delimiter, position, end)) >= 0:
            position = found + 1
            if found > start and buffer[found - 1] != 0x0A:
                continue  # not at the start of a line
            after = found + len(delimiter)
            closing = buffer.startswith(b"--", after, end)
            line_end = buffer.find(b"\n", after, end)
            line_end = end if line_end < 0 else line_end
            if buffer[after + 2 if closing else after : line_end].strip(b" \t"):
                continue  # a longer boundary that merely starts with this one
            if part_start is not None:
                # The line break before a delimiter belongs to the delimiter (RFC 2046 §5.1.1).
                spans.append((part_start, max(part_start, found - 1)))
                if not self._count_part():
                    return spans
            if closing:
                return spans
            part_start = position = min(line_end + 1, end)
        if part_start is not None and part_start < end and self._count_part():
            spans.append((part_start, end))  # no closing delimiter: a truncated message
        return spans

    def _count_part(self) -> bool:
        self._parts += 1
        if self._parts > MAX_MIME_PARTS:
            self._notes[f"parts after the first {MAX_MIME_PARTS}"] = None
            return False
        return True


def _content_type(headers: Message) -> str:
    try:
        return headers.get_content_type()
    except Exception:
        return "application/octet-stream"


def _is_calendar_part(headers: Message) -> bool:
    if _content_type(headers) in ("text/calendar", "application/ics"):
        return True
    described = " ".join(_raw_values(headers, "Content-Type") + _raw_values(headers, "Content-Disposition"))
    if "ics" not in described.lower() and "*" not in described:  # cheap test before parsing parameters
        return False
    try:
        filename = headers.get_filename() or ""
    except Exception:
        return False
    return isinstance(filename, str) and filename.strip().strip('"').lower().endswith(".ics")


_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")


def _calendar_text(part: _Part) -> str:
    """The part's body with its transfer encoding and charset undone, with LF line ends."""
    # base64 inflates by 4/3; this bounds the work before decoding.
    if part.size > MAX_CALENDAR_BYTES * 4 // 3 + 65536:
        raise _PartError(f"calendar part is larger than {MAX_CALENDAR_BYTES // 2**20} MB")
    body = part.body
    encoding = _clean(" ".join(_raw_values(part.headers, "Content-Transfer-Encoding")[:1])).strip('"').lower()
    if encoding == "base64":
        # Lenient like mail clients: ignore stray characters, tolerate missing padding.
        letters = _NOT_BASE64.sub(b"", body.split(b"=", 1)[0])
        if len(letters) % 4 == 1:  # a lone trailing character cannot encode a byte
            letters = letters[:-1]
        body = binascii.a2b_base64(letters + b"=" * (-len(letters) % 4))
    elif encoding == "quoted-printable":
        body = binascii.a2b_qp(body)
    if len(body) > MAX_CALENDAR_BYTES:
        raise _PartError(f"calendar part is larger than {MAX_CALENDAR_BYTES // 2**20} MB")
    try:
        charset = part.headers.get_content_charset()
    except Exception:
        charset = None
    text = _decode_bytes(body, charset).lstrip("\ufeff")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset, else UTF-8, else Windows-1252 (never fails)."""
    for candidate in (charset, "utf-8"):
        if candidate:
            try:
                return data.decode(candidate)
            except Exception:  # unknown or non-text codec names, or bytes that do not fit
                continue
    return data.decode("windows-1252", "replace")


def _raw_values(headers: Message, name: str) -> list[str]:
    """Header values as received (``raw_items`` skips compat32's Header objects for 8-bit text)."""
    wanted = name.lower()
    return [str(value) for key, value in headers.raw_items() if key.lower() == wanted]


def _clean(text: str) -> str:
    """Undo surrogate escapes of raw 8-bit bytes and fold whitespace runs into one space."""
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return " ".join(text.split())


def _decoded_header(value: str) -> str:
    """A header's text with RFC 2047 encoded words decoded."""
    try:
        return _clean(str(make_header(decode_header(value))))
    except Exception:  # unknown charsets and broken encoded words: show it as received
        return _clean(value)


def _bare_address(value: str) -> str:
    _, address = parseaddr(_clean(value))
    return address.strip().lower()


@functools.lru_cache(maxsize=16)
def _mailbox(mail_from: str) -> tuple[str, str] | None:
    """(local part without any +tag, domain) of the reply mailbox, lower-cased."""
    local, at, domain = _bare_address(mail_from).rpartition("@")
    if not at or not local or not domain:
        return None
    return local.split("+", 1)[0], domain


def _tokens(headers: Message, mail_from: str) -> tuple[str, ...]:
    """Tokens of ``local+token@domain`` addresses of the reply mailbox ``local@domain``."""
    mailbox = _mailbox(mail_from) if isinstance(mail_from, str) else None
    if mailbox is None:
        return ()
    base, domain = mailbox
    tokens: dict[str, None] = {}
    for name in ("To", "Cc", "Delivered-To", "X-Original-To"):
        for value in _raw_values(headers, name):
            if f"{base}+" not in value.lower():
                continue  # not addressed to a plus-address of ours; skip parsing it
            for address in _addresses(value):
                their_local, _, their_domain = address.rpartition("@")
                their_base, plus, token = their_local.strip('"').partition("+")
                if plus and token and their_base.lower() == base and their_domain.lower() == domain:
                    tokens.setdefault(token, None)
    return tuple(tokens)


def _addresses(value: str) -> list[str]:
    try:
        return [address for _, address in getaddresses([_clean(value)]) if "@" in address]
    except Exception:
        return []


# --- iCalendar ----------------------------------------------------------------------------


class _Zones(Protocol):
    """VTIMEZONE components by TZID: a dict, or the lazily parsed zones of a reply."""

    def get(self, tzid: str) -> Timezone | None: ...


class _IsolatedParser(CalendarIcalParser):
    """icalendar's parser, adjusted to read untrusted calendars one message at a time.

    - Date-times keep their wall time and TZID parameter: ``_utc_time`` resolves the TZID
      against the message's own VTIMEZONEs. icalendar would resolve it through a
      process-wide cache that the first VTIMEZONE seen for a name fills for good, so one
      stranger's email could change how every later message's times are read.
    - Malformed lines and values are skipped in every component (icalendar only forgives
      them inside a VEVENT), so one broken line does not cost the whole reply.
    """

    def parse_and_add_property(self, name: str, params: Any, val: str, tzid: str | None, line: Any) -> None:
        super().parse_and_add_property(name, params, val, None, line)

    def handle_end_component(self, vals: str) -> None:
        # icalendar's, minus caching VTIMEZONEs globally; a stray END is ignored.
        if not self._stack:
            return
        component = self._stack.pop()
        if self._stack:
            self._stack[-1].add_component(component)
        else:
            self._components.append(component)

    def prepare_components(self) -> None:
        """icalendar re-parses here to fix VTIMEZONE forward references through its cache; not needed."""

    def handle_line_parse_error(self, exception: Exception) -> None:
        if self.component is not None:
            self.component.errors.append((None, str(exception)))

    def handle_property(self, name: str, params: Any, vals: str, line: Any) -> None:
        if self.component is not None:  # text outside any component is ignored
            super().handle_property(name, params, vals, line)

    def handle_property_parse_error(self, exception: Exception, name: str, params: Any, val: str, line: Any) -> None:
        if self.component is not None:
            self.component.errors.append((name, str(exception)))  # the property counts as absent


class _IsolatedCalendar(Calendar):
    @classmethod
    def _get_ical_parser(cls, st: str | bytes) -> _IsolatedParser:
        return _IsolatedParser(st, cls._get_component_factory(), cls.types_factory)


def _parse_ics(data: bytes) -> list[Calendar]:
    if not isinstance(data, bytes):  # a one-line str is read as a file path by icalendar
        raise TypeError("iCalendar data must be bytes")
    return [c for c in _IsolatedCalendar.from_ical(data, multiple=True) if c.name == "VCALENDAR"]


# The only properties a reply is read for (plus BEGIN/END). Handing icalendar just these lines
# makes a typical reply parse several times faster, and a malformed DESCRIPTION or X- line
# cannot spoil an otherwise good reply.
_REPLY_PROPERTIES = frozenset(
    {
        "BEGIN", "END", "METHOD", "UID", "ATTENDEE", "COMMENT", "DTSTART", "DTEND", "DURATION",
        "DTSTAMP", "SEQUENCE", "RECURRENCE-ID", "TZID", "TZOFFSETFROM", "TZOFFSETTO", "RRULE", "RDATE",
    }
)
_UNFOLD = re.compile(r"\n[ \t]")
_RELEVANT_LINE = re.compile(  # one of those names, then its parameters or value
    r"^[ \t]*(" + "|".join(map(re.escape, sorted(_REPLY_PROPERTIES))) + r")[ \t]*[;:].*$",
    re.MULTILINE | re.IGNORECASE,
)
# An event's times are only read for the time a COUNTER proposes; a calendar none of whose METHOD
# lines says COUNTER (whatever its case: the method is compared upper-cased) need not parse them.
_PROPOSAL_PROPERTIES = frozenset({"DTSTART", "DTEND", "DURATION"})
_COUNTER_METHOD = re.compile(r"^[ \t]*METHOD[ \t]*[;:].*COUNTER", re.MULTILINE | re.IGNORECASE)
_VTIMEZONE_EDGE = re.compile(r"[ \t]*(BEGIN|END)[ \t]*:[ \t]*VTIMEZONE[ \t]*$", re.IGNORECASE)
_BEGIN_VCALENDAR = re.compile(r"BEGIN[ \t]*:[ \t]*VCALENDAR", re.IGNORECASE)


@dataclass(frozen=True)
class _Ics:
    """A calendar part reduced to what a reply is read for.

    VTIMEZONEs are kept apart and parsed only when a TZID needs one (a COUNTER in a
    Windows zone, say): most replies never do, and their lines are a third of Outlook's.
    """

    events: bytes
    zones: bytes
    lines: int


def _relevant_ics(text: str) -> _Ics:
    """Unfold the part's text and keep the lines a reply is read for, VTIMEZONEs apart."""
    text = _UNFOLD.sub("", text)
    begin = _BEGIN_VCALENDAR.search(text)
    if begin is None:
        raise _PartError("calendar part has no BEGIN:VCALENDAR")
    text = text[begin.start() :]
    proposing = _COUNTER_METHOD.search(text) is not None
    events: list[str] = []
    zones: list[str] = []
    in_zone = False
    for match in _RELEVANT_LINE.finditer(text):
        line = match.group(0)
        edge = _VTIMEZONE_EDGE.match(line)
        if edge is not None:
            in_zone = edge.group(1).upper() == "BEGIN"
            zones.append(line)
        elif in_zone:
            zones.append(line)
        elif proposing or match.group(1).upper() not in _PROPOSAL_PROPERTIES:
            events.append(line)
    return _Ics(
        events=_ics_bytes(events),
        zones=_ics_bytes(["BEGIN:VCALENDAR", *zones, "END:VCALENDAR"]) if zones else b"",
        lines=len(events) + len(zones),
    )


def _ics_bytes(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


class _LazyZones:
    """The part's VTIMEZONEs by TZID, parsed on first use."""

    def __init__(self, ics: bytes) -> None:
        self._ics = ics
        self._zones: dict[str, Timezone] | None = None

    def get(self, tzid: str) -> Timezone | None:
        if self._zones is None:
            self._zones = {}
            try:
                calendars = _parse_ics(self._ics) if self._ics else []
            except Exception:  # a broken VTIMEZONE only costs the times that needed it
                calendars = []
            for cal in calendars:
                self._zones.update(_zones_of(cal))
        return self._zones.get(tzid)


def _zones_of(cal: Calendar) -> dict[str, Timezone]:
    zones: dict[str, Timezone] = {}
    for component in cal.subcomponents:
        if isinstance(component, Timezone) and (tzid := _text(component.get("TZID")).strip()):
            zones.setdefault(tzid, component)
    return zones


def _replies_in_ics(ics: _Ics) -> list[ParsedReply]:
    try:
        calendars = _parse_ics(ics.events)
    except Exception as exc:
        raise _PartError(f"calendar part is not valid iCalendar: {_short(exc)}") from exc
    if not calendars:
        raise _PartError("calendar part is not valid iCalendar: no complete VCALENDAR")
    zones = _LazyZones(ics.zones)
    replies: list[ParsedReply] = []
    for cal in calendars:
        method = _text(cal.get("METHOD")).strip().strip('"').strip().upper()
        for event in cal.subcomponents:
            if event.name == "VEVENT":
                replies.extend(_replies_in_event(event, method, zones))
    return replies


def _replies_in_event(event: Any, method: str, zones: _Zones) -> Iterator[ParsedReply]:
    uid = _text(event.get("UID")).strip()
    stamp = _utc_time(event.get("DTSTAMP"), zones)
    sequence = _integer(event.get("SEQUENCE"))
    recurrence_id = _recurrence_id(event.get("RECURRENCE-ID"), zones)
    comment = "\n".join(text for c in _as_list(event.get("COMMENT")) if (text := _text(c).strip()))
    proposal = _proposal(event, zones) if method == "COUNTER" else None
    for attendee in _as_list(event.get("ATTENDEE")):
        email = _attendee_email(attendee)
        if not email:
            continue
        params = getattr(attendee, "params", {})
        partstat = _param(params, "PARTSTAT").upper()
        yield ParsedReply(
            method=method,
            uid=uid,
            attendee_email=email,
            attendee_name=_param(params, "CN"),
            partstat=partstat,
            # Proposing a time is a maybe, not a decline, whatever PARTSTAT says (INTEROP.md §3.8).
            status=RecipientStatus.TENTATIVE if method == "COUNTER" else _STATUS_BY_PARTSTAT.get(partstat),
            comment=comment or _response_comment(params),
            proposal=proposal,
            dtstamp=stamp[0] if stamp else None,
            sequence=sequence,
            recurrence_id=recurrence_id,
        )


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def _text(value: Any) -> str:
    value = _first(value)
    return "" if value is None or isinstance(value, list) else str(value)


_INTEGER = re.compile(r"[+-]?[0-9]{1,12}")


def _integer(value: Any) -> int:
    """SEQUENCE as an int within RFC 5545's range (a database column will hold it); 0 if absent."""
    text = _text(value).strip()
    return min(max(int(text), 0), 2**31 - 1) if _INTEGER.fullmatch(text) else 0


def _param(params: Any, name: str) -> str:
    value = params.get(name) if hasattr(params, "get") else None
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):  # an unquoted comma makes icalendar split the value
        value = ", ".join(str(v) for v in value)
    return str(value).strip().strip('"').strip()


_MAILTO = re.compile(r"^\s*mailto\s*:\s*", re.IGNORECASE)


def _attendee_email(attendee: Any) -> str:
    """The responder's address: EMAIL= first (iCloud puts a relay address in the value).

    "" when neither is an email address (a urn:uuid: principal, say): such an attendee
    cannot be matched to anyone invited.
    """
    for candidate in (_param(getattr(attendee, "params", {}), "EMAIL"), str(attendee)):
        address = _MAILTO.sub("", candidate.strip().strip('"<>')).strip().strip("<>").strip().lower()
        if "@" in address:
            return address
    return ""


_PARAM_ESCAPE = re.compile(r"\\([\\;,nN])")


def _response_comment(params: Any) -> str:
    """Google's X-RESPONSE-COMMENT: HTML-escaped, with iCalendar backslash escapes."""
    raw = _param(params, "X-RESPONSE-COMMENT")
    text = _PARAM_ESCAPE.sub(lambda m: "\n" if m.group(1) in "nN" else m.group(1), raw)
    return html.unescape(text).strip()


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160] or type(exc).__name__


# --- time ---------------------------------------------------------------------------------


def _utc_time(prop: Any, zones: _Zones) -> tuple[datetime, str] | None:
    """A DATE or DATE-TIME property as (aware UTC datetime, IANA zone name or "UTC")."""
    prop = _first(prop)
    value = getattr(prop, "dt", None)
    try:
        if isinstance(value, datetime):
            if value.tzinfo is not None:
                return value.astimezone(timezone.utc), "UTC"
            tzid = _param(getattr(prop, "params", {}), "TZID")
            if tzid:
                return _resolve_wall_time(value, tzid, zones)
            return value.replace(tzinfo=timezone.utc), "UTC"  # floating time: read as UTC, as domain.utc() does
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day, tzinfo=timezone.utc), "UTC"
    except (OverflowError, ValueError):  # year 1 or 9999 pushed past the calendar's edge
        return None
    return None


def _resolve_wall_time(wall: datetime, tzid: str, zones: _Zones) -> tuple[datetime, str]:
    """Resolve a TZID: an IANA name; else the message's VTIMEZONE (Windows names included);
    else the Windows->IANA map; else UTC. The name returned is IANA when one is known."""
    zone = _zoneinfo(tzid)
    if zone is not None:
        return wall.replace(tzinfo=zone).astimezone(timezone.utc), tzid
    iana = WINDOWS_TO_OLSON.get(tzid) or _iana_suffix(tzid)
    definition = zones.get(tzid)
    if definition is not None:
        offset = _vtimezone_offset(definition, wall)
        if offset is not None:
            return (wall - offset).replace(tzinfo=timezone.utc), iana or "UTC"
    if iana and (zone := _zoneinfo(iana)) is not None:
        return wall.replace(tzinfo=zone).astimezone(timezone.utc), iana
    return wall.replace(tzinfo=timezone.utc), "UTC"


_TZ_KEY = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+){0,3}")  # no dots: never a path outside tzdata


@functools.lru_cache(maxsize=1024)
def _zoneinfo(name: str) -> ZoneInfo | None:
    if len(name) > 64 or not _TZ_KEY.fullmatch(name):
        return None
    try:
        return ZoneInfo(name)
    except Exception:
        return None


def _iana_suffix(tzid: str) -> str | None:
    """The Olson name inside a "globally unique" TZID like /freeassociation.sourceforge.net/Europe/Berlin."""
    parts = tzid.strip("/").split("/")
    for start in range(1, min(len(parts), 8)):
        candidate = "/".join(parts[start:])
        if _zoneinfo(candidate) is not None:
            return candidate
    return None


def _naive(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    return None


def _vtimezone_offset(definition: Timezone, wall: datetime) -> timedelta | None:
    """The UTC offset a VTIMEZONE gives the wall-clock time ``wall``: that of the latest onset."""
    latest: tuple[datetime, timedelta] | None = None
    earliest: tuple[datetime, timedelta] | None = None
    for observance in definition.subcomponents:
        if observance.name not in ("STANDARD", "DAYLIGHT"):
            continue
        start = _naive(getattr(_first(observance.get("DTSTART")), "dt", None))
        offset_to = getattr(_first(observance.get("TZOFFSETTO")), "td", None)
        if start is None or not isinstance(offset_to, timedelta):
            continue
        offset_from = getattr(_first(observance.get("TZOFFSETFROM")), "td", None)
        if earliest is None or start < earliest[0]:
            earliest = (start, offset_from if isinstance(offset_from, timedelta) else offset_to)
        onset = _latest_onset(observance, start, wall)
        if onset is not None and (latest is None or onset > latest[0]):
            latest = (onset, offset_to)
    if latest is not None:
        return latest[1]
    return earliest[1] if earliest is not None else None  # before the first onset


def _latest_onset(observance: Any, start: datetime, wall: datetime) -> datetime | None:
    if start > wall:
        return None
    latest = start
    for rdate in _as_list(observance.get("RDATE")):
        for item in getattr(rdate, "dts", []):
            moment = _naive(getattr(item, "dt", None))
            if moment is not None and latest < moment <= wall:
                latest = moment
    rule = _first(observance.get("RRULE"))
    if rule is not None:
        occurrence = _yearly_rule_latest(rule, start, wall)
        if occurrence is not None and occurrence > latest:
            latest = occurrence
    return latest


_WEEKDAYS = {"MO": 0, "TU": 1, "WE": 2, "TH": 3, "FR": 4, "SA": 5, "SU": 6}
_BYDAY = re.compile(r"([+-]?\d{1,2})?(MO|TU|WE|TH|FR|SA|SU)")
_RULE_PARTS = frozenset({"FREQ", "INTERVAL", "UNTIL", "BYMONTH", "BYDAY", "BYMONTHDAY", "WKST"})


def _yearly_rule_latest(rule: Any, start: datetime, wall: datetime) -> datetime | None:
    """The rule's last onset at or before ``wall``, for the yearly rules time zones use.

    Evaluated directly for the year of ``wall`` and the one before, not by iterating from
    DTSTART (Outlook writes 1601); other rule shapes are ignored, which also bounds the work
    an untrusted rule can cause.
    """
    try:
        parts = {str(key).upper(): [str(v).upper() for v in _as_list(value)] for key, value in rule.items()}
        if parts.get("FREQ") != ["YEARLY"] or not set(parts) <= _RULE_PARTS:
            return None
        interval = int(parts.get("INTERVAL", ["1"])[0])
        months = [int(m) for m in parts.get("BYMONTH", [])] or [start.month]
        month_days = [int(d) for d in parts.get("BYMONTHDAY", [])]
        weekdays = [_BYDAY.fullmatch(d) for d in parts.get("BYDAY", [])]
        until = _naive(_first(rule.get("UNTIL")))
    except (TypeError, ValueError):
        return None
    if interval < 1 or any(m is None for m in weekdays) or not all(1 <= m <= 12 for m in months):
        return None
    horizon = min(wall, until) if until is not None else wall
    for year in (horizon.year, horizon.year - 1):
        if year < start.year or (year - start.year) % interval:
            continue
        onsets = [
            datetime(year, month, day, start.hour, start.minute, start.second)
            for month in months
            for day in _rule_days(year, month, weekdays, month_days, start.day)
        ]
        onsets = [onset for onset in onsets if start <= onset <= horizon]
        if onsets:
            return max(onsets)
    return None


def _rule_days(year: int, month: int, weekdays: list[Any], month_days: list[int], default_day: int) -> list[int]:
    length = _calendar.monthrange(year, month)[1]
    by_month_day = {d if d > 0 else length + 1 + d for d in month_days}
    if not weekdays:
        return sorted(d for d in by_month_day if 1 <= d <= length) if month_days else (
            [default_day] if default_day <= length else []
        )
    days: set[int] = set()
    for match in weekdays:
        weekday = _WEEKDAYS[match.group(2)]
        matching = [d for d in range(1, length + 1) if _calendar.weekday(year, month, d) == weekday]
        ordinal = int(match.group(1)) if match.group(1) not in (None, "+", "-") else 0
        if ordinal == 0:
            days.update(matching)
        elif -len(matching) <= ordinal <= len(matching):
            days.add(matching[ordinal - 1 if ordinal > 0 else ordinal])
    return sorted(days & by_month_day if month_days else days)


def _proposal(event: Any, zones: _Zones) -> Proposal | None:
    start = _utc_time(event.get("DTSTART"), zones)
    if start is None:
        return None
    end = _utc_time(event.get("DTEND"), zones)
    if end is None:
        duration = getattr(_first(event.get("DURATION")), "dt", None)
        try:
            end = (start[0] + duration, start[1]) if isinstance(duration, timedelta) else start
        except OverflowError:
            return None
    if end[0] < start[0]:
        return None
    return Proposal(start=start[0], end=end[0], tzid=start[1])


def _recurrence_id(prop: Any, zones: _Zones) -> str | None:
    value = getattr(_first(prop), "dt", None)
    if isinstance(value, date) and not isinstance(value, datetime):
        return value.isoformat()
    moment = _utc_time(prop, zones)
    return moment[0].isoformat() if moment else None


# --- building replies ---------------------------------------------------------------------

CLIENT_SHAPES = ("google", "outlook", "apple", "thunderbird")
_PROPOSING_SHAPES = ("google", "outlook")
_PARTSTAT_TOKEN = re.compile(r"[A-Z][A-Z0-9-]{0,40}")


@dataclass(frozen=True)
class _Invite:
    """What a reply echoes from the invite."""

    uid: str
    sequence: int
    summary: str
    organizer_email: str
    organizer_name: str
    start: datetime | date  # aware UTC, or a date for an all-day event
    end: datetime | date
    tzid: str  # IANA zone the event is shown in; "UTC" when the invite says none
    attendee_names: dict[str, str]


@dataclass(frozen=True)
class _Reply:
    invite: _Invite
    email: str
    name: str
    partstat: str
    comment: str
    proposal: Proposal | None
    now: datetime
    to_address: str

    @property
    def method(self) -> str:
        return "COUNTER" if self.proposal else "REPLY"

    @property
    def display_name(self) -> str:
        return self.name or self.email

    def times(self) -> tuple[datetime | date, datetime | date]:
        """The times the reply's VEVENT carries: the proposal's for a COUNTER, else the invite's."""
        if self.proposal:
            return utc(self.proposal.start), utc(self.proposal.end)
        return self.invite.start, self.invite.end

    def zone(self) -> str:
        return self.proposal.tzid if self.proposal else self.invite.tzid


def build_reply_email(
    *,
    shape: str,
    invite_ics: bytes,
    attendee_email: str,
    partstat: str,
    to_address: str,
    comment: str = "",
    proposal: Proposal | None = None,
    now: datetime | None = None,
) -> bytes:
    """A complete RFC 822 reply to ``invite_ics`` in the shape a real client sends (INTEROP.md §2).

    ``shape`` is one of ``CLIENT_SHAPES``. A ``proposal`` makes it a COUNTER with
    PARTSTAT=TENTATIVE, which only Google and Outlook send. Apple and Thunderbird send no
    note, so ``comment`` is left out of their shapes, as the real clients do.
    """
    if shape not in CLIENT_SHAPES:
        raise ValueError(f"unknown client shape {shape!r}; expected one of {', '.join(CLIENT_SHAPES)}")
    if proposal is not None and shape not in _PROPOSING_SHAPES:
        raise ValueError(f"{shape} does not propose new times")
    partstat = "TENTATIVE" if proposal is not None else partstat.strip().upper()
    if not _PARTSTAT_TOKEN.fullmatch(partstat):
        raise ValueError(f"PARTSTAT must be a token like ACCEPTED, got {partstat!r}")
    email = attendee_email.strip().lower()
    if "@" not in email or any(c.isspace() or c in '<>",;:' for c in email):
        raise ValueError(f"not an email address: {attendee_email!r}")
    if not isinstance(invite_ics, bytes):
        raise TypeError("invite_ics must be bytes")
    invite = _read_invite(invite_ics)
    reply = _Reply(
        invite=invite,
        email=email,
        name=invite.attendee_names.get(email, ""),
        partstat=partstat,
        comment=" ".join(comment.split()) if shape in _PROPOSING_SHAPES else "",
        proposal=proposal,
        now=utc(now or datetime.now(timezone.utc)).replace(microsecond=0),
        to_address=to_address.strip(),
    )
    message = _SHAPES[shape](reply)
    return message.as_bytes(policy=SMTP)


def _read_invite(invite_ics: bytes) -> _Invite:
    try:
        calendars = _parse_ics(invite_ics)
    except Exception as exc:
        raise ValueError(f"invite_ics is not valid iCalendar: {_short(exc)}") from exc
    for cal in calendars:
        zones = _zones_of(cal)
        for event in cal.subcomponents:
            if event.name != "VEVENT":
                continue
            start, zone = _invite_time(event.get("DTSTART"), zones)
            end, _ = _invite_time(event.get("DTEND"), zones)
            if start is None:
                raise ValueError("invite_ics has a VEVENT without DTSTART")
            if zone == "UTC" and _zoneinfo(_text(cal.get("X-WR-TIMEZONE")).strip()) is not None:
                zone = _text(cal.get("X-WR-TIMEZONE")).strip()
            organizer = _first(event.get("ORGANIZER"))
            names = {
                _attendee_email(a): _param(getattr(a, "params", {}), "CN") for a in _as_list(event.get("ATTENDEE"))
            }
            return _Invite(
                uid=_text(event.get("UID")).strip(),
                sequence=_integer(event.get("SEQUENCE")),
                summary=_text(event.get("SUMMARY")).strip(),
                organizer_email=_attendee_email(organizer) if organizer is not None else "",
                organizer_name=_param(getattr(organizer, "params", {}), "CN"),
                start=start,
                end=end if end is not None else start,
                tzid=zone,
                attendee_names=names,
            )
    raise ValueError("invite_ics has no VEVENT")


def _invite_time(prop: Any, zones: _Zones) -> tuple[datetime | date | None, str]:
    value = getattr(_first(prop), "dt", None)
    if isinstance(value, date) and not isinstance(value, datetime):
        return value, "UTC"
    moment = _utc_time(prop, zones)
    return (moment[0], moment[1]) if moment else (None, "UTC")


def _in_zone(value: datetime | date, tzid: str) -> datetime | date:
    """``value`` as an aware datetime in ``tzid`` (icalendar then writes TZID=); dates stay dates."""
    if not isinstance(value, datetime):
        return value
    zone = _zoneinfo(tzid) if tzid not in ("UTC", "Etc/UTC") else None
    return value.astimezone(zone) if zone is not None else value.astimezone(timezone.utc)


def _windows_time(value: datetime | date, windows_name: str) -> vDDDTypes:
    """A wall time in a Windows zone, written ``;TZID=W. Europe Standard Time:...`` as Outlook does."""
    if not isinstance(value, datetime):
        return vDDDTypes(value)
    wall = value.astimezone(ZoneInfo(WINDOWS_TO_OLSON[windows_name])).replace(tzinfo=None)
    prop = vDDDTypes(wall)
    prop.params["TZID"] = windows_name
    return prop


_WINDOWS_BY_IANA = {iana: windows for windows, iana in WINDOWS_TO_OLSON.items()}


def _windows_zone(tzid: str) -> str:
    """Outlook's name for an IANA zone; "UTC" when Windows has none for it."""
    if tzid in ("UTC", "Etc/UTC", "GMT"):
        return "UTC"
    return _WINDOWS_BY_IANA.get(tzid, "UTC")


@functools.lru_cache(maxsize=64)
def _windows_vtimezone(windows_name: str, year: int) -> Timezone:
    """A VTIMEZONE in Outlook's shape: DTSTART in 1601 and a yearly rule per observance.

    Shared between calls through the cache: only ever serialised, never changed.
    """
    zone = ZoneInfo(WINDOWS_TO_OLSON[windows_name])
    definition = Timezone()
    definition.add("tzid", windows_name)
    changes = _offset_changes(zone, year)
    if not changes:
        offset = datetime(year, 1, 1, tzinfo=zone).utcoffset() or timedelta(0)
        standard = TimezoneStandard()
        standard.add("dtstart", datetime(1601, 1, 1))
        standard.add("tzoffsetfrom", offset)
        standard.add("tzoffsetto", offset)
        definition.add_component(standard)
    for onset, before, after in sorted(changes, key=lambda change: change[2] > change[1]):  # STANDARD first
        observance = TimezoneDaylight() if after > before else TimezoneStandard()
        observance.add("dtstart", datetime(1601, 1, 1, onset.hour, onset.minute, onset.second))
        observance.add("rrule", {"FREQ": "YEARLY", "INTERVAL": 1, "BYDAY": _nth_weekday(onset), "BYMONTH": onset.month})
        observance.add("tzoffsetfrom", before)
        observance.add("tzoffsetto", after)
        definition.add_component(observance)
    return definition


def _offset_changes(zone: ZoneInfo, year: int) -> list[tuple[datetime, timedelta, timedelta]]:
    """(wall time of the change in the old offset, old offset, new offset) for each change in ``year``."""
    changes = []
    day = datetime(year, 1, 1, tzinfo=timezone.utc)
    previous = day.astimezone(zone).utcoffset() or timedelta(0)
    for _ in range(366):
        following = day + timedelta(days=1)
        offset = following.astimezone(zone).utcoffset() or timedelta(0)
        if offset != previous:
            instant = day
            while (instant.astimezone(zone).utcoffset() or timedelta(0)) == previous:
                instant += timedelta(minutes=15)
            changes.append(((instant + previous).replace(tzinfo=None), previous, offset))
            previous = offset
        day = following
    return changes


def _nth_weekday(moment: datetime) -> str:
    code = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")[moment.weekday()]
    length = _calendar.monthrange(moment.year, moment.month)[1]
    return f"-1{code}" if moment.day + 7 > length else f"{(moment.day - 1) // 7 + 1}{code}"


def _calendar_address(mailbox: str, name: str = "", **params: str) -> vCalAddress:
    address = vCalAddress(f"mailto:{mailbox}")
    if name:
        address.params["CN"] = name
    for key, value in params.items():
        address.params[key.replace("_", "-").upper()] = value
    return address


def _new_calendar(prodid: str, method: str, *, calscale: bool = True) -> Calendar:
    cal = Calendar()
    cal.add("prodid", prodid)
    cal.add("version", "2.0")
    if calscale:
        cal.add("calscale", "GREGORIAN")
    cal.add("method", method)
    return cal


def _olson_zones(cal: Calendar, tzid: str, *values: datetime | date) -> None:
    """Add the VTIMEZONE an Olson TZID needs (Apple, Thunderbird)."""
    if tzid in ("UTC", "Etc/UTC") or _zoneinfo(tzid) is None:
        return
    years = [v.year for v in values]
    cal.add_component(vtimezone(tzid, min(years), max(years)))


# --- MIME for the builder -----------------------------------------------------------------


def _leaf(content: str | bytes, subtype: str, *, maintype: str = "text", cte: str, **options: Any) -> MIMEPart:
    part = MIMEPart(policy=SMTP)
    if isinstance(content, bytes):
        part.set_content(content, maintype=maintype, subtype=subtype, cte=cte, **options)
    else:
        part.set_content(content, subtype=subtype, charset="utf-8", cte=cte, **options)
    # Clients write Content-Type first; set_content writes it last.
    headers = part.items()
    for name in {name for name, _ in headers}:
        del part[name]
    for name, value in sorted(headers, key=lambda item: item[0].lower() != "content-type"):
        part[name] = value
    return part


def _multipart(
    subtype: str, parts: list[MIMEPart], boundary: str, headers: Sequence[tuple[str, str]] = ()
) -> MIMEPart:
    # MIMEPart, not EmailMessage: the latter adds MIME-Version by itself, and each shape writes
    # its own (Apple's with a comment) where its client does.
    message = MIMEPart(policy=SMTP)
    for name, value in headers:
        message[name] = value
    message["Content-Type"] = f'multipart/{subtype}; boundary="{boundary}"'
    for part in parts:
        message.attach(part)
    return message


def _text_cte(text: str) -> str:
    return "7bit" if text.isascii() else "quoted-printable"


def _ics_text(cal: Calendar) -> str:
    return cal.to_ical().decode("utf-8")


_VERBS = {"ACCEPTED": "accepted", "DECLINED": "declined", "TENTATIVE": "tentatively accepted"}


def _bodies(reply: _Reply) -> tuple[str, str]:
    invite = reply.invite
    if reply.proposal:
        line = f"{reply.display_name} has proposed a new time: {_when(*reply.times())}."
    else:
        line = f"{reply.display_name} has {_VERBS.get(reply.partstat, 'replied to')} this invitation."
    text = f"{line}\n\n{invite.summary}\n{_when(invite.start, invite.end)}\n"
    if reply.comment:
        text += f"\n{reply.comment}\n"
    body = "".join(f"<p>{html.escape(paragraph)}</p>" for paragraph in text.strip().split("\n") if paragraph)
    return text, f"<html><body>{body}</body></html>\n"


def _when(start: datetime | date, end: datetime | date) -> str:
    if not isinstance(start, datetime) or not isinstance(end, datetime):
        return f"{start:%a %d %b %Y} (all day)"
    return f"{start:%a %d %b %Y %H:%M} - {end:%H:%M} (UTC)"


def _subject(prefix: str, reply: _Reply) -> str:
    return " ".join(f"{prefix}: {reply.invite.summary}".split())


def _from(reply: _Reply) -> str:
    return formataddr((reply.name, reply.email)) if reply.name else reply.email


def _domain(address: str) -> str:
    return address.rpartition("@")[2] or "example.org"


def _google(reply: _Reply) -> MIMEPart:
    invite = reply.invite
    cal = _new_calendar("-//Google Inc//Google Calendar 70.9054//EN", reply.method)
    event = Event()
    start, end = reply.times()
    event.add("dtstart", _in_zone(start, "UTC"))  # Google writes UTC and no VTIMEZONE
    event.add("dtend", _in_zone(end, "UTC"))
    event.add("dtstamp", reply.now)
    event.add("organizer", _calendar_address(invite.organizer_email, invite.organizer_name))
    event.add("uid", invite.uid)
    attendee = _calendar_address(
        reply.email,
        reply.display_name,
        cutype="INDIVIDUAL",
        role="REQ-PARTICIPANT",
        partstat=reply.partstat,
        x_num_guests="0",
    )
    if reply.comment:
        # Google HTML-escapes the note and backslash-escapes its semicolons (entities' too).
        attendee.params["X-RESPONSE-COMMENT"] = html.escape(reply.comment).replace(";", "\\;")
    event.add("attendee", attendee)
    event.add("created", reply.now)
    event.add("last-modified", reply.now)
    event.add("sequence", invite.sequence)
    event.add("status", "CONFIRMED")
    event.add("summary", invite.summary)
    event.add("transp", "OPAQUE")
    cal.add_component(event)
    ics = _ics_text(cal)

    prefix = {"ACCEPTED": "Accepted", "DECLINED": "Declined", "TENTATIVE": "Tentatively Accepted"}
    subject = _subject("New time proposed" if reply.proposal else prefix.get(reply.partstat, "Updated"), reply)
    text, html_body = _bodies(reply)
    alternative = _multipart(
        "alternative",
        [
            _leaf(text, "plain", cte=_text_cte(text), params={"format": "flowed", "delsp": "yes"}),
            _leaf(html_body, "html", cte=_text_cte(html_body)),
            _leaf(ics, "calendar", cte="7bit" if ics.isascii() else "base64", params={"method": reply.method}),
        ],
        boundary=f"000000000000{secrets.token_hex(11)}",
    )
    attachment = _leaf(
        ics.encode("utf-8"), "ics", maintype="application", cte="base64",
        disposition="attachment", filename="invite.ics", params={"name": "invite.ics"},
    )
    return _multipart(
        "mixed",
        [alternative, attachment],
        boundary=f"000000000000{secrets.token_hex(11)}",
        headers=[
            ("MIME-Version", "1.0"),
            ("Reply-To", _from(reply)),
            ("Sender", "Google Calendar <calendar-notification@google.com>"),
            ("Date", format_datetime(reply.now)),
            ("Message-ID", make_msgid(domain="google.com")),
            ("Subject", f"{subject} @ {_when(*reply.times())} ({reply.email})"),
            ("From", _from(reply)),
            ("To", reply.to_address),
        ],
    )


def _outlook(reply: _Reply) -> MIMEPart:
    invite = reply.invite
    prefix = {"ACCEPTED": "Accepted", "DECLINED": "Declined", "TENTATIVE": "Tentative"}
    verb = "New Time Proposed" if reply.proposal else prefix.get(reply.partstat, "Reply")
    cal = _new_calendar("Microsoft Exchange Server 2010", reply.method, calscale=False)
    start, end = reply.times()
    zone = _windows_zone(reply.zone())
    original_zone = _windows_zone(invite.tzid)
    years = sorted({v.year for v in (start, end, invite.start, invite.end)})
    for name in dict.fromkeys((zone, original_zone)):
        if any(isinstance(v, datetime) for v in (start, end)):
            cal.add_component(_windows_vtimezone(name, years[0]))

    event = Event()
    # No ORGANIZER: Outlook leaves it out of replies (INTEROP.md §2).
    event.add("attendee", _calendar_address(reply.email, reply.display_name, partstat=reply.partstat))
    if reply.comment:
        event.add("comment", reply.comment + "\n", parameters={"LANGUAGE": "en-US"})
    event.add("summary", f"{verb}: {invite.summary}", parameters={"LANGUAGE": "en-US"})
    event.add("dtstart", _windows_time(start, zone))
    event.add("dtend", _windows_time(end, zone))
    event.add("uid", invite.uid)
    event.add("class", "PUBLIC")
    event.add("priority", 5)
    event.add("dtstamp", reply.now)
    event.add("transp", "OPAQUE")
    event.add("status", "CONFIRMED")
    event.add("sequence", invite.sequence)
    event.add("location", "", parameters={"LANGUAGE": "en-US"})
    if reply.proposal:
        event.add("x-ms-olk-originalstart", _windows_time(invite.start, original_zone))
        event.add("x-ms-olk-originalend", _windows_time(invite.end, original_zone))
    event.add("x-microsoft-cdo-appt-sequence", str(invite.sequence))
    event.add("x-microsoft-cdo-ownerapptid", "-1")
    event.add("x-microsoft-cdo-busystatus", "TENTATIVE" if reply.partstat == "TENTATIVE" else "BUSY")
    event.add("x-microsoft-cdo-intendedstatus", "BUSY")
    event.add("x-microsoft-cdo-alldayevent", "FALSE" if isinstance(start, datetime) else "TRUE")
    event.add("x-microsoft-cdo-importance", "1")
    event.add("x-microsoft-cdo-insttype", "0")
    event.add("x-microsoft-donotforwardmeeting", "FALSE")
    event.add("x-microsoft-disallow-counter", "FALSE")
    cal.add_component(event)
    ics = _ics_text(cal)

    text, html_body = _bodies(reply)
    subject = _subject(verb, reply)
    return _multipart(
        "alternative",
        [
            _leaf(text, "plain", cte="quoted-printable"),
            _leaf(html_body, "html", cte="quoted-printable"),
            _leaf(ics, "calendar", cte="base64", params={"method": reply.method}),
        ],
        boundary=f"_000_{secrets.token_hex(16)}_",
        headers=[
            ("From", _from(reply)),
            ("To", reply.to_address),
            ("Subject", subject),
            ("Thread-Topic", invite.summary or subject),
            ("Thread-Index", binascii.b2a_base64(secrets.token_bytes(22), newline=False).decode()),
            ("Date", format_datetime(reply.now)),
            ("Message-ID", make_msgid(domain=f"{_domain(reply.email)}.prod.outlook.com")),
            ("Accept-Language", "en-US"),
            ("Content-Language", "en-US"),
            ("X-MS-Has-Attach", ""),
            ("X-MS-TNEF-Correlator", ""),
            ("MIME-Version", "1.0"),
        ],
    )


def _apple(reply: _Reply) -> MIMEPart:
    invite = reply.invite
    cal = _new_calendar("-//Apple Inc.//macOS 14.4//EN", reply.method)
    start, end = reply.times()
    _olson_zones(cal, invite.tzid, start, end)
    event = Event()
    # Apple writes the address in EMAIL= too (iCloud puts a relay address in the value).
    event.add("attendee", _calendar_address(
        reply.email, reply.display_name, cutype="INDIVIDUAL", email=reply.email, partstat=reply.partstat,
    ))
    event.add("created", reply.now)
    event.add("dtend", _in_zone(end, invite.tzid))
    event.add("dtstamp", reply.now)
    event.add("dtstart", _in_zone(start, invite.tzid))
    event.add("last-modified", reply.now)
    event.add("organizer", _calendar_address(invite.organizer_email, invite.organizer_name))
    event.add("sequence", invite.sequence)
    event.add("summary", invite.summary)
    event.add("transp", "OPAQUE")
    event.add("uid", invite.uid)
    event.add("x-apple-travel-advisory-behavior", "AUTOMATIC")
    cal.add_component(event)
    ics = _ics_text(cal)

    text, html_body = _bodies(reply)
    filename = f"iCal-{reply.now:%Y%m%d-%H%M%S}.ics"
    prefix = {"ACCEPTED": "Accepted", "DECLINED": "Declined", "TENTATIVE": "Maybe"}
    mixed = _multipart(
        "mixed",
        [
            _leaf(html_body, "html", cte=_text_cte(html_body)),
            # No method= parameter on Apple's calendar part (INTEROP.md §2).
            _leaf(ics, "calendar", cte="quoted-printable", disposition="inline", filename=filename,
                  params={"x-unix-mode": "0644", "name": filename}),
            _leaf("<html><body></body></html>\n", "html", cte="7bit"),
        ],
        boundary=f"Apple-Mail=_{str(uuid.uuid4()).upper()}",
    )
    return _multipart(
        "alternative",
        [_leaf(text, "plain", cte=_text_cte(text)), mixed],
        boundary=f"Apple-Mail=_{str(uuid.uuid4()).upper()}",
        headers=[
            ("From", _from(reply)),
            ("Mime-Version", "1.0 (Mac OS X Mail 16.0 \\(3774.500.171.1.1\\))"),
            ("Subject", _subject(prefix.get(reply.partstat, "Reply"), reply)),
            ("Message-Id", make_msgid(idstring=str(uuid.uuid4()).upper(), domain=_domain(reply.email))),
            ("Date", format_datetime(reply.now)),
            ("To", reply.to_address),
            ("X-Mailer", "Apple Mail (2.3774.500.171.1.1)"),
        ],
    )


def _thunderbird(reply: _Reply) -> MIMEPart:
    invite = reply.invite
    cal = _new_calendar("-//Mozilla.org/NONSGML Mozilla Calendar V1.1//EN", reply.method, calscale=False)
    start, end = reply.times()
    _olson_zones(cal, invite.tzid, start, end)  # Thunderbird echoes the event's own times
    event = Event()
    event.add("created", reply.now)
    event.add("last-modified", reply.now)
    event.add("dtstamp", reply.now)
    event.add("uid", invite.uid)
    event.add("summary", invite.summary)
    event.add("organizer", _calendar_address(invite.organizer_email, invite.organizer_name))
    event.add("attendee", _calendar_address(
        reply.email, reply.name, rsvp="TRUE", partstat=reply.partstat, role="REQ-PARTICIPANT",
    ))
    event.add("dtstart", _in_zone(start, invite.tzid))
    event.add("dtend", _in_zone(end, invite.tzid))
    event.add("sequence", invite.sequence)
    event.add("transp", "OPAQUE")
    event.add("x-moz-received-sequence", str(invite.sequence))
    event.add("x-moz-received-dtstamp", f"{reply.now:%Y%m%dT%H%M%SZ}")
    cal.add_component(event)
    ics = _ics_text(cal)

    text, _ = _bodies(reply)
    prefix = {"ACCEPTED": "Accepted", "DECLINED": "Declined", "TENTATIVE": "Tentative"}
    alternative = _multipart(
        "alternative",
        [
            _leaf(text, "plain", cte="8bit", params={"format": "flowed"}),
            _leaf(ics, "calendar", cte="8bit", params={"method": reply.method}),
        ],
        boundary=f"------------{secrets.token_hex(12)}",
    )
    attachment = _leaf(
        ics.encode("utf-8"), "ics", maintype="application", cte="8bit",
        disposition="attachment", filename="invite.ics", params={"name": "invite.ics"},
    )
    return _multipart(
        "mixed",
        [alternative, attachment],
        boundary=f"------------{secrets.token_hex(12)}",
        headers=[
            ("Message-ID", make_msgid(domain=_domain(reply.email))),
            ("Date", format_datetime(reply.now)),
            ("MIME-Version", "1.0"),
            ("User-Agent", "Mozilla Thunderbird"),
            ("Content-Language", "en-US"),
            ("To", reply.to_address),
            ("From", _from(reply)),
            ("Subject", _subject(prefix.get(reply.partstat, "Reply"), reply)),
        ],
    )


_SHAPES = {"google": _google, "outlook": _outlook, "apple": _apple, "thunderbird": _thunderbird}
