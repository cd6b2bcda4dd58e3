"""CSV bookings import: read and check a bookings file, without touching the database.

A bookings file has a header row and one row per recipient. Rows that share a
booking reference form one invite with several recipients; a row without a
reference is an invite of its own. :func:`parse_bookings` turns such a file into
:class:`Booking` values (ready to become invites) and :class:`RejectedRow` values
(each with a short reason and its row number as a spreadsheet shows it).

Columns (matched case-insensitively, ignoring spaces, underscores and hyphens):

==============  ===================================================================
booking_ref     also ``booking ref``, ``reference``, ``smart_invite_id``, ``booking id``
email           also ``email address``, ``recipient``, ``attendee email`` (required)
name            also ``full name``, ``attendee name``
summary         also ``title``, ``subject``, ``appointment`` (required)
description     also ``notes``
location
start           also ``start time``, ``starts at`` (required)
end             also ``end time``; or ``duration`` (minutes): one of them required
timezone        also ``tz``, ``tzid``, ``time zone`` (IANA name; default: the user's)
==============  ===================================================================

Other columns are ignored. The file is UTF-8 (with or without BOM), else
Windows-1252 (UTF-16 with a BOM, as Excel's "Unicode text", is read too); the
delimiter (comma, semicolon or tab) is sniffed from the header.

Memory: the file is streamed (a first pass checks the encoding without keeping
the data, a second pass parses it, and only when a booking's rows disagree a
third pass fetches those rows' original cells), so what stays in memory is the
bookings themselves plus a 16-byte digest per row for duplicate detection.

A cell that :func:`csv_safe` escaped (a ``'`` before ``=``, ``+``, ``-``, ``@``,
tab or carriage return) is read back without the ``'``, so the "fix and
re-upload" file from :func:`rejected_rows_csv` round-trips.
"""
from __future__ import annotations

import codecs
import csv
import functools
import io
import re
import shutil
import sys
import tempfile
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta
from hashlib import blake2b
from typing import BinaryIO, Iterable, Iterator

from email_validator import EmailNotValidError, validate_email

from smart_invites_ui.domain import EventData, utc

__all__ = [
    "Booking",
    "BookingRecipient",
    "CsvFormatError",
    "ParseResult",
    "RejectedRow",
    "csv_safe",
    "original_rows",
    "parse_bookings",
    "rejected_rows_csv",
    "sample_csv",
]


class CsvFormatError(Exception):
    """The whole file cannot be read; ``str(error)`` is the reason, for the user."""


@dataclass(slots=True, frozen=True)
class BookingRecipient:
    email: str  # lower-cased, syntax-checked
    name: str
    row_number: int


@dataclass(slots=True)
class Booking:
    ref: str | None  # None: a row without a reference (an invite of its own)
    event: EventData
    recipients: list[BookingRecipient]  # unique e-mail addresses, in file order
    row_numbers: list[int]  # every accepted row of the booking, in file order


@dataclass(slots=True, frozen=True)
class RejectedRow:
    row_number: int  # as a spreadsheet shows it: header = 1
    reason: str
    values: tuple[str, ...]  # the original cells, in header order (padded to its width)


@dataclass(slots=True)
class ParseResult:
    header: list[str]  # the original header cells
    bookings: list[Booking]  # in order of first appearance
    rejected: list[RejectedRow]  # sorted by row number
    total_rows: int  # non-blank data rows read (header and blank rows excluded)
    duplicate_rows: int  # identical repeats of an earlier row (counted once, not rejected)
    encoding: str  # "utf-8", "utf-8-sig", "utf-16" or "windows-1252"
    delimiter: str  # ",", ";" or "\t"


# --------------------------------------------------------------------------- columns

_ALIASES: dict[str, tuple[str, ...]] = {
    "booking_ref": ("booking_ref", "reference", "smart_invite_id", "booking id"),
    "email": ("email", "email address", "recipient", "attendee email"),
    "name": ("name", "full name", "attendee name"),
    "summary": ("summary", "title", "subject", "appointment"),
    "description": ("description", "notes"),
    "location": ("location",),
    "start": ("start", "start time", "starts at"),
    "end": ("end", "end time"),
    "duration": ("duration",),
    "timezone": ("timezone", "tz", "tzid", "time zone"),
}


def _normalize_column(name: str) -> str:
    return "".join(name.replace("\ufeff", "").split()).replace("_", "").replace("-", "").lower()


_COLUMN_BY_KEY: dict[str, str] = {
    _normalize_column(alias): field for field, aliases in _ALIASES.items() for alias in aliases
}

MAX_REF_LENGTH = 256
_DELIMITERS = (",", ";", "\t")
_DELIMITER_NAMES = {",": "commas", ";": "semicolons", "\t": "tabs"}
_FORMULA_START = frozenset("=+-@\t\r")
# C0/C1 control characters and the bidirectional controls (which can disguise text).
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_DATETIME_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,6})?)?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?"
)
_DURATION_RE = re.compile(r"\d{1,9}")
_CACHE_LIMIT = 20_000  # entries per per-parse cache before it is cleared

# Bytes that Windows-1252 leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D) decode
# to the C1 control of the same number, as browsers (WHATWG) and Windows do.
_CP1252_ERRORS = "smart_invites_ui.cp1252_c1"


def _c1_fallback(exc: UnicodeError) -> tuple[str, int]:
    if isinstance(exc, UnicodeDecodeError):
        return "".join(map(chr, exc.object[exc.start : exc.end])), exc.end
    raise exc


codecs.register_error(_CP1252_ERRORS, _c1_fallback)


# --------------------------------------------------------------------------- public API


def csv_safe(value: str) -> str:
    """Neutralise spreadsheet formulas (CWE-1236): prefix ``'`` to a cell that
    starts with ``=``, ``+``, ``-``, ``@``, tab or carriage return."""
    if value and value[0] in _FORMULA_START:
        return "'" + value
    return value


def parse_bookings(stream: BinaryIO, *, default_tzid: str) -> ParseResult:
    """Read a bookings CSV from a binary ``stream`` (read from its current position).

    ``default_tzid`` is the importing user's IANA zone, used for rows without a
    time zone (``ValueError`` if it is not a known zone). Raises
    :class:`CsvFormatError` when the file as a whole cannot be read (not text,
    empty, no header, a required column missing, a broken quote).
    """
    default_zone = _lookup_zone(default_tzid.strip()) if default_tzid else None
    if default_zone is None:
        raise ValueError(f"unknown default time zone: {default_tzid!r}")

    stream = _seekable(stream)
    origin = stream.tell()
    encoding = _detect_encoding(stream, origin)
    delimiter = _sniff_delimiter(stream, origin, encoding)

    parser = _Parser(default_zone, delimiter)
    records = _read_records(stream, origin, encoding, delimiter)
    try:
        header_row = parser.read_header(records)
        for row_number, record in records:
            parser.add_row(row_number, record)
    finally:
        records.close()

    conflicting = parser.conflicting_rows()
    if conflicting:
        width = len(parser.header)
        records = _read_records(stream, origin, encoding, delimiter)
        try:
            for row_number, record in records:
                reason = conflicting.get(row_number)
                if reason is not None and row_number > header_row:
                    parser.rejected.append(RejectedRow(row_number, reason, _row_values(record, width)))
        finally:
            records.close()
    stream.seek(origin)

    return parser.result(encoding, delimiter)


def rejected_rows_csv(header: list[str], rejected: Iterable[RejectedRow]) -> bytes:
    """The rejected rows as a CSV to fix and upload again: UTF-8 with a BOM (so
    Excel reads it as UTF-8), comma-separated, CRLF, the original columns plus an
    ``error`` column; every cell is passed through :func:`csv_safe`.

    An ``error`` column already in ``header`` (from an earlier round) is replaced.
    Cells beyond the header's width (a row with too many cells) follow the
    ``error`` cell, so nothing the user typed is lost.
    """
    keep = [i for i, name in enumerate(header) if _normalize_column(name) != "error"]
    width = len(header)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([csv_safe(header[i]) for i in keep] + ["error"])
    for row in rejected:
        values = row.values
        if len(values) < width:
            values = values + ("",) * (width - len(values))
        writer.writerow(
            [csv_safe(values[i]) for i in keep]
            + [csv_safe(row.reason)]
            + [csv_safe(v) for v in values[width:]]
        )
    return codecs.BOM_UTF8 + out.getvalue().encode("utf-8")


def original_rows(stream: BinaryIO, result: ParseResult, row_numbers: Iterable[int]) -> dict[int, tuple[str, ...]]:
    """The original cells of some rows of the file ``result`` was parsed from (as
    :class:`RejectedRow` keeps them), for rows refused after parsing, by the import."""
    wanted = set(row_numbers)
    found: dict[int, tuple[str, ...]] = {}
    if not wanted:
        return found
    stream = _seekable(stream)
    origin = stream.tell()
    records = _read_records(stream, origin, result.encoding, result.delimiter)
    try:
        for row_number, record in records:
            if row_number in wanted:
                found[row_number] = _row_values(record, len(result.header))
                if len(found) == len(wanted):
                    break
    finally:
        records.close()
    stream.seek(origin)
    return found


_SAMPLE_ROWS = [
    ["booking_ref", "email", "name", "summary", "description", "location", "start", "end", "duration", "timezone"],
    ["ABC-1", "ana@example.com", "Ana Souza", "Dental check-up",
     "Please arrive 10 minutes early, and bring your \"care card\".", "Smile Clinic, 12 High Street",
     "2027-05-03 09:00", "2027-05-03 09:30", "", "Europe/London"],
    ["ABC-1", "ben@example.com", "Ben Okafor", "Dental check-up",
     "Please arrive 10 minutes early, and bring your \"care card\".", "Smile Clinic, 12 High Street",
     "2027-05-03 09:00", "2027-05-03 09:30", "", "Europe/London"],
    ["ABC-2", "chloe@example.com", "Chloé Martin", "Haircut", "", "Salon Lumière",
     "2027-05-04 14:00", "", "45", "America/New_York"],
    ["ABC-3", "dev@example.com", "Dev Patel", "Video consultation", "The link follows by email.", "Online",
     "2027-05-05T10:00:00+02:00", "2027-05-05T10:30:00+02:00", "", "Europe/Berlin"],
]


def sample_csv() -> bytes:
    """A small sample file showing the format: three bookings, one with two
    recipients, one using ``duration`` instead of ``end`` and one whose times
    carry a UTC offset (UTF-8 with BOM, CRLF)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(_SAMPLE_ROWS)
    return codecs.BOM_UTF8 + out.getvalue().encode("utf-8")


# --------------------------------------------------------------------------- reading


def _seekable(stream: BinaryIO) -> BinaryIO:
    try:
        if stream.seekable():
            return stream
    except (AttributeError, ValueError):
        pass
    spooled = tempfile.SpooledTemporaryFile(max_size=8 << 20)
    shutil.copyfileobj(stream, spooled, 1 << 20)
    spooled.seek(0)
    return spooled  # type: ignore[return-value]


def _detect_encoding(stream: BinaryIO, origin: int) -> str:
    """Decide the encoding from the whole stream without keeping it."""
    stream.seek(origin)
    head = stream.read(8)
    if not isinstance(head, bytes):
        raise TypeError("parse_bookings() needs a binary stream")
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise CsvFormatError("the file is UTF-32 text; save it as CSV UTF-8")
    if head.startswith(b"PK\x03\x04"):
        raise CsvFormatError("this is an Excel workbook (or another zip file), not CSV; save it as CSV UTF-8")
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        raise CsvFormatError("this is an old-style Excel workbook (.xls), not CSV; save it as CSV UTF-8")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        candidate, bom = "utf-16", True
    elif head.startswith(codecs.BOM_UTF8):
        candidate, bom = "utf-8-sig", True
    else:
        candidate, bom = "utf-8", False

    stream.seek(origin)
    decoder = codecs.getincrementaldecoder(candidate)()
    position = 0
    nul_check = candidate != "utf-16"
    try:
        while chunk := stream.read(1 << 20):
            if nul_check and b"\x00" in chunk:
                raise CsvFormatError("the file contains NUL bytes, so it is not a CSV text file")
            decoder.decode(chunk)  # the text is dropped: this pass only checks
            position += len(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        if bom:
            label = "UTF-16" if candidate == "utf-16" else "UTF-8"
            raise CsvFormatError(
                f"the file says it is {label} but is not (bad bytes near byte {position + exc.start})"
            ) from None
        return "windows-1252"
    return candidate


def _codec_errors(encoding: str) -> str:
    return _CP1252_ERRORS if encoding == "windows-1252" else "strict"


def _sniff_delimiter(stream: BinaryIO, origin: int, encoding: str) -> str:
    """Pick the delimiter under which the header names the most known columns
    (then: makes the most cells); ties, and headers naming no known column at
    all, go to comma, then semicolon."""
    stream.seek(origin)
    prefix = stream.read(1 << 16).decode(encoding, errors="ignore")
    best, best_score = ",", (-1, -1)
    for delimiter in _DELIMITERS:
        try:
            header = next(
                (r for r in csv.reader(io.StringIO(prefix, newline=""), delimiter=delimiter) if _non_blank(r)),
                [],
            )
        except csv.Error:
            continue
        known = {_COLUMN_BY_KEY.get(_normalize_column(cell)) for cell in header} - {None}
        score = (len(known), len(header) if known else 0)
        if score > best_score:
            best, best_score = delimiter, score
    return best


def _read_records(stream: BinaryIO, origin: int, encoding: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(row number, cells)`` for every record, blank ones included; the
    row number counts records (a quoted newline does not start a new one)."""
    stream.seek(origin)
    text = io.TextIOWrapper(stream, encoding=encoding, errors=_codec_errors(encoding), newline="")  # type: ignore[arg-type]
    row_number = 0
    try:
        reader = csv.reader(text, delimiter=delimiter)
        for record in reader:
            row_number += 1
            yield row_number, record
    except csv.Error as exc:
        raise CsvFormatError(
            f"row {row_number + 1} cannot be read ({exc}); check for a quote that is never closed"
        ) from None
    except UnicodeDecodeError:
        raise CsvFormatError(f"row {row_number + 1} is not valid {encoding} text") from None
    finally:
        text.detach()  # leave the caller's stream open


def _non_blank(record: list[str]) -> bool:
    for cell in record:
        if cell and not cell.isspace():
            return True
    return False


def _row_values(record: list[str], width: int) -> tuple[str, ...]:
    """The original cells padded to the header's width; cells beyond it are kept
    only when one of them is not empty."""
    n = len(record)
    if n < width:
        return tuple(record) + ("",) * (width - n)
    if n > width and not _non_blank(record[width:]):
        return tuple(record[:width])
    return tuple(record)


def _unescape(value: str) -> str:
    """Undo :func:`csv_safe` on a stripped cell."""
    if value[:1] == "'" and value[1:2] and value[1] in _FORMULA_START:
        return value[1:].strip()
    return value


# --------------------------------------------------------------------------- values


@functools.lru_cache(maxsize=512)
def _lookup_zone(name: str) -> tuple[str, zoneinfo.ZoneInfo] | None:
    """``(canonical IANA name, zone)`` or None; case-insensitive."""
    if not name or len(name) > 64:
        return None
    try:
        return name, zoneinfo.ZoneInfo(name)
    except (KeyError, ValueError, OSError):
        pass
    canonical = _zone_names_by_lower().get(name.lower())
    if canonical is None:
        return None
    try:
        return canonical, zoneinfo.ZoneInfo(canonical)
    except (KeyError, ValueError, OSError):
        return None


@functools.cache
def _zone_names_by_lower() -> dict[str, str]:
    return {name.lower(): name for name in zoneinfo.available_timezones()}


# A plain ASCII address: a dot-atom local part of common characters (a subset of
# what email_validator accepts as dot-atom, which it checks with no length limit
# outside strict mode) and a domain of letters, digits, dots and hyphens.
_SIMPLE_EMAIL_RE = re.compile(r"([A-Za-z0-9_+\-]+(?:\.[A-Za-z0-9_+\-]+)*)@([A-Za-z0-9.\-]+)")
_EMAIL_MAX_LENGTH = 254


def _normalize_email(raw: str) -> str | None:
    """The lower-cased, normalised address, or None if email_validator rejects it.

    Same result as ``validate_email(raw, check_deliverability=False)``, but a
    plain address only has its domain validated (once per domain, cached): the
    domain check is most of email_validator's cost, and a file repeats domains.
    """
    match = _SIMPLE_EMAIL_RE.fullmatch(raw)
    if match is not None:
        domain = _validated_domain(match[2])
        if domain is None:
            return None
        if domain.isascii() and len(match[1]) + 1 + len(domain) <= _EMAIL_MAX_LENGTH:
            return f"{match[1]}@{domain}".lower()
    try:
        return validate_email(raw, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return None


@functools.lru_cache(maxsize=4096)
def _validated_domain(domain: str) -> str | None:
    """email_validator's normalised form of an address's domain, or None if invalid."""
    try:
        return validate_email("a@" + domain, check_deliverability=False).domain
    except EmailNotValidError:
        return None


def _quote(value: str, limit: int = 60) -> str:
    shown = " ".join(_CONTROL_RE.sub(" ", value).split()) if _CONTROL_RE.search(value) else value
    if len(shown) > limit:
        shown = shown[: limit - 1] + "…"
    return f"'{shown}'"


def _join_words(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _join_rows(rows: list[int], limit: int = 10) -> str:
    text = ", ".join(map(str, rows[:limit]))
    if len(rows) > limit:
        text += f" and {len(rows) - limit} more"
    return text


# The order in which _Parser.add_row unpacks a row's values.
_ROW_FIELDS = (
    "booking_ref", "email", "name", "summary", "description", "location", "start", "end", "duration", "timezone",
)
_EVENT_FIELDS = ("summary", "start", "end", "timezone", "location", "description")


class _Parser:
    """Per-file state of :func:`parse_bookings`."""

    def __init__(self, default_zone: tuple[str, zoneinfo.ZoneInfo], delimiter: str) -> None:
        self.default_zone = default_zone
        self.delimiter = delimiter
        self.header: list[str] = []
        self.width = 0
        self.columns: dict[str, int] = {}
        self.bookings: list[Booking] = []
        self.rejected: list[RejectedRow] = []
        self.total_rows = 0
        self.duplicate_rows = 0
        self._seen: set[bytes] = set()  # digests of the rows read so far
        self._by_ref: dict[str, Booking] = {}
        self._ref_emails: dict[str, set[str]] = {}  # refs with more than one recipient
        self._conflicts: dict[str, tuple[list[int], set[str]]] = {}
        self._email_cache: dict[str, str | None] = {}
        self._datetime_cache: dict[tuple[str, str], datetime | str] = {}
        self._end_missing = "end: required"
        self._indexes: tuple[int, ...] = ()

    # -- header

    def read_header(self, records: Iterator[tuple[int, list[str]]]) -> int:
        for row_number, record in records:
            if _non_blank(record):
                break
        else:
            raise CsvFormatError("the file is empty")
        self.header = list(record)
        self.width = len(record)
        names: dict[str, str] = {}
        for index, cell in enumerate(record):
            field = _COLUMN_BY_KEY.get(_normalize_column(_unescape(cell.strip())))
            if field is None:
                continue
            if field in self.columns:
                raise CsvFormatError(
                    f"columns {_quote(names[field].strip())} and {_quote(cell.strip())} both mean {field}; "
                    "keep only one"
                )
            self.columns[field] = index
            names[field] = cell
        missing = [f for f in ("email", "summary", "start") if f not in self.columns]
        if "end" not in self.columns and "duration" not in self.columns:
            missing.append("end (or duration)")
        if missing:
            raise CsvFormatError(f"missing column{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
        if "end" not in self.columns:
            self._end_missing = "duration: required"
        elif "duration" in self.columns:
            self._end_missing = "end: required (or duration)"
        absent = 1 << 62  # an index no row reaches
        self._indexes = tuple(self.columns.get(field, absent) for field in _ROW_FIELDS)
        return row_number

    # -- rows

    def add_row(self, row_number: int, record: list[str]) -> None:
        cells = [c.strip() for c in record]
        while cells and not cells[-1]:
            cells.pop()
        if not cells:
            return  # a blank row: numbered, but not data
        self.total_rows += 1

        key = "\x00".join(cells)
        if key.count("\x00") != len(cells) - 1:  # a cell holds NUL: keep the digest unambiguous
            key = repr(cells)
        digest = blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest in self._seen:
            self.duplicate_rows += 1
            return
        self._seen.add(digest)

        width = self.width
        if len(cells) > width:
            self._reject(
                row_number,
                f"row has {len(cells)} cells but the header has {width}; put double quotes around "
                f"values that contain {_DELIMITER_NAMES[self.delimiter]}",
                record,
            )
            return

        n = len(cells)
        values = [cells[i] if i < n else "" for i in self._indexes]
        for k, value in enumerate(values):
            if value[:1] == "'":
                values[k] = _unescape(value)
        ref, raw_email, name, summary, description, location, raw_start, raw_end, raw_duration, raw_zone = values

        errors: list[str] = []
        if not ref:
            ref = None
        if ref is not None:
            if len(ref) > MAX_REF_LENGTH:
                errors.append(f"booking_ref: longer than {MAX_REF_LENGTH} characters")
            elif _CONTROL_RE.search(ref):
                errors.append("booking_ref: contains control characters")

        email = None
        if not raw_email:
            errors.append("email: required")
        else:
            email = self._email(raw_email)
            if email is None:
                errors.append(f"email: {_quote(raw_email)} is not a valid email address")

        if not summary:
            errors.append("summary: required")

        zone = _lookup_zone(raw_zone) if raw_zone else self.default_zone
        if zone is None:
            errors.append(f"timezone: {_quote(raw_zone)} is not a known time zone")

        start = self._when("start", raw_start, zone, errors)
        minutes = None
        if raw_duration:
            if not _DURATION_RE.fullmatch(raw_duration):
                errors.append(f"duration: {_quote(raw_duration)} is not a whole number of minutes")
            elif int(raw_duration) == 0:
                errors.append("duration: must be at least 1 minute")
            else:
                minutes = int(raw_duration)
        end = None
        if raw_end:
            end = self._when("end", raw_end, zone, errors)
        elif minutes is not None and start is not None:
            try:
                end = start + timedelta(minutes=minutes)
            except OverflowError:
                errors.append(f"duration: {_quote(raw_duration)} is too long")
        elif not raw_duration:
            errors.append(self._end_missing)
        if start is not None and end is not None:
            if end <= start:
                errors.append("end: must be after start")
            elif raw_end and minutes is not None and end - start != timedelta(minutes=minutes):
                errors.append(f"duration: {_quote(raw_duration)} does not match end")

        if errors:
            self._reject(row_number, "; ".join(errors), record)
            return

        assert email is not None and zone is not None and start is not None and end is not None
        location = sys.intern(location)
        if "\r" in description:
            description = description.replace("\r\n", "\n").replace("\r", "\n")
        description = sys.intern(description)
        summary = sys.intern(summary)
        tzid = zone[0]
        recipient = BookingRecipient(email, name, row_number)

        booking = self._by_ref.get(ref) if ref is not None else None
        if booking is None:
            event = EventData(
                summary=summary, start=start, end=end, tzid=tzid, description=description, location=location
            )
            booking = Booking(ref, event, [recipient], [row_number])
            self.bookings.append(booking)
            if ref is not None:
                self._by_ref[ref] = booking
            return

        assert ref is not None
        booking.row_numbers.append(row_number)
        event = booking.event
        differs = [
            field
            for field, mine, theirs in (
                ("summary", summary, event.summary),
                ("start", start, event.start),
                ("end", end, event.end),
                ("timezone", tzid, event.tzid),
                ("location", location, event.location),
                ("description", description, event.description),
            )
            if mine != theirs
        ]
        if differs:
            rows, fields = self._conflicts.setdefault(ref, ([booking.row_numbers[0]], set()))
            rows.append(row_number)
            fields.update(differs)
            return
        emails = self._ref_emails.get(ref)
        if emails is None:
            emails = self._ref_emails[ref] = {r.email for r in booking.recipients}
        if email not in emails:
            emails.add(email)
            booking.recipients.append(recipient)

    def _reject(self, row_number: int, reason: str, record: list[str]) -> None:
        self.rejected.append(RejectedRow(row_number, reason, _row_values(record, self.width)))

    def _email(self, raw: str) -> str | None:
        cache = self._email_cache
        try:
            return cache[raw]
        except KeyError:
            pass
        email = _normalize_email(raw)
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[raw] = email
        return email

    def _when(
        self, field: str, raw: str, zone: tuple[str, zoneinfo.ZoneInfo] | None, errors: list[str]
    ) -> datetime | None:
        """``raw`` as an aware UTC datetime, or None (with a reason added to
        ``errors`` unless the zone is unknown, which is reported already)."""
        if not raw:
            errors.append(f"{field}: required")
            return None
        key = (raw, zone[0] if zone is not None else "")
        cache = self._datetime_cache
        value = cache.get(key)
        if value is None:
            value = _parse_datetime(raw, zone)
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[key] = value
        if isinstance(value, datetime):
            return value
        if value:
            errors.append(f"{field}: {_quote(raw)} {value}")
        return None

    # -- result

    def conflicting_rows(self) -> dict[int, str]:
        """Row number -> reason for every accepted row of a booking whose rows disagree."""
        reasons: dict[int, str] = {}
        for ref, (rows, fields) in self._conflicts.items():
            ordered = [f for f in _EVENT_FIELDS if f in fields]
            reason = f"booking {ref}: rows {_join_rows(rows)} disagree on {_join_words(ordered)}"
            for row_number in self._by_ref[ref].row_numbers:
                reasons[row_number] = reason
        return reasons

    def result(self, encoding: str, delimiter: str) -> ParseResult:
        bookings = self.bookings
        if self._conflicts:
            bookings = [b for b in bookings if b.ref is None or b.ref not in self._conflicts]
        self.rejected.sort(key=lambda r: r.row_number)
        return ParseResult(
            header=self.header,
            bookings=bookings,
            rejected=self.rejected,
            total_rows=self.total_rows,
            duplicate_rows=self.duplicate_rows,
            encoding=encoding,
            delimiter=delimiter,
        )


def _parse_datetime(raw: str, zone: tuple[str, zoneinfo.ZoneInfo] | None) -> datetime | str:
    """An aware UTC datetime, or the rest of a reason ("" when ``zone`` is
    None and the value is a valid local time: the zone is the problem)."""
    if not _DATETIME_RE.fullmatch(raw):
        return "is not a valid date and time"
    try:
        parsed = datetime.fromisoformat(raw.upper())
    except ValueError:
        return "is not a valid date and time"
    try:
        if parsed.tzinfo is not None:
            return utc(parsed)
        if zone is None:
            return ""
        name, tz = zone
        result = utc(parsed.replace(tzinfo=tz))
        if name != "UTC" and result.astimezone(tz).replace(tzinfo=None) != parsed:
            return f"does not exist in {name} (the clocks change then)"
        return result
    except OverflowError:
        return "is not a valid date and time"
