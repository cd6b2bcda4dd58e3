"""Tests for the database-free CSV bookings import (services/bookings_csv.py)."""
from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from smart_invites_ui.domain import EventData
from smart_invites_ui.services.bookings_csv import (
    Booking,
    BookingRecipient,
    CsvFormatError,
    ParseResult,
    RejectedRow,
    _normalize_email,
    csv_safe,
    parse_bookings,
    rejected_rows_csv,
    sample_csv,
)

UTC = timezone.utc
HEADER = "booking_ref,email,name,summary,start,end,duration,timezone"


def utc_dt(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def csv_bytes(*lines: str, newline: str = "\n", encoding: str = "utf-8", bom: bool = False) -> bytes:
    data = (newline.join(lines) + newline).encode(encoding)
    return (b"\xef\xbb\xbf" + data) if bom else data


def parse(data: bytes | str, tz: str = "Europe/London") -> ParseResult:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return parse_bookings(io.BytesIO(data), default_tzid=tz)


def reasons(result: ParseResult) -> list[tuple[int, str]]:
    return [(r.row_number, r.reason) for r in result.rejected]


def only_booking(result: ParseResult) -> Booking:
    assert result.rejected == []
    assert len(result.bookings) == 1
    return result.bookings[0]


# --------------------------------------------------------------------------- the happy path


def test_sample_csv_parses_to_three_bookings():
    data = sample_csv()
    assert data.startswith(b"\xef\xbb\xbf")
    result = parse(data, tz="Asia/Tokyo")

    assert result.rejected == []
    assert result.total_rows == 4
    assert result.duplicate_rows == 0
    assert result.encoding == "utf-8-sig"
    assert result.delimiter == ","
    assert result.header[:4] == ["booking_ref", "email", "name", "summary"]
    first, second, third = result.bookings

    assert first.ref == "ABC-1"
    assert [r.email for r in first.recipients] == ["ana@example.com", "ben@example.com"]
    assert first.row_numbers == [2, 3]
    assert first.event == EventData(
        summary="Dental check-up",
        start=utc_dt(2027, 5, 3, 8, 0),  # 09:00 BST
        end=utc_dt(2027, 5, 3, 8, 30),
        tzid="Europe/London",
        description='Please arrive 10 minutes early, and bring your "care card".',
        location="Smile Clinic, 12 High Street",
    )

    assert second.ref == "ABC-2"  # duration 45
    assert second.recipients == [BookingRecipient("chloe@example.com", "Chloé Martin", 4)]
    assert (second.event.start, second.event.end) == (utc_dt(2027, 5, 4, 18, 0), utc_dt(2027, 5, 4, 18, 45))
    assert second.event.tzid == "America/New_York"

    assert third.ref == "ABC-3"  # +02:00 offsets
    assert (third.event.start, third.event.end) == (utc_dt(2027, 5, 5, 8, 0), utc_dt(2027, 5, 5, 8, 30))
    assert third.event.tzid == "Europe/Berlin"


def test_event_fields_and_recipient():
    booking = only_booking(
        parse(
            "Booking_Ref,Email,Name,Summary,Description,Location,Start,End,Timezone\n"
            "  R-1 , Bob@Example.COM ,  Bob Smith ,  Check-up , Bring ID , Room 4 ,"
            "2027-01-10 09:00,2027-01-10 09:45,Europe/Paris\n"
        )
    )
    assert booking.ref == "R-1"
    assert booking.recipients == [BookingRecipient("bob@example.com", "Bob Smith", 2)]
    assert booking.row_numbers == [2]
    assert booking.event == EventData(
        summary="Check-up",
        start=utc_dt(2027, 1, 10, 8, 0),
        end=utc_dt(2027, 1, 10, 8, 45),
        tzid="Europe/Paris",
        description="Bring ID",
        location="Room 4",
    )
    assert booking.event.start.tzinfo is UTC


# --------------------------------------------------------------------------- columns

# (field, header alias): every alias, in various spellings.
ALIASES = [
    ("booking_ref", "booking_ref"),
    ("booking_ref", "Booking Ref"),
    ("booking_ref", "REFERENCE"),
    ("booking_ref", "smart_invite_id"),
    ("booking_ref", "Smart Invite ID"),
    ("booking_ref", "booking id"),
    ("booking_ref", "Booking_ID"),
    ("email", "email"),
    ("email", "Email Address"),
    ("email", "email_address"),
    ("email", "Recipient"),
    ("email", "attendee email"),
    ("email", "AttendeeEmail"),
    ("name", "name"),
    ("name", "Full Name"),
    ("name", "attendee_name"),
    ("summary", "summary"),
    ("summary", "Title"),
    ("summary", "SUBJECT"),
    ("summary", "Appointment"),
    ("description", "description"),
    ("description", "Notes"),
    ("location", "Location"),
    ("start", "start"),
    ("start", "Start Time"),
    ("start", "start_time"),
    ("start", "Starts At"),
    ("end", "END"),
    ("end", "End Time"),
    ("end", "end_time"),
    ("timezone", "timezone"),
    ("timezone", "TZ"),
    ("timezone", "tzid"),
    ("timezone", "Time Zone"),
    ("timezone", "time_zone"),
]

BASE_COLUMNS = {
    "booking_ref": ("booking_ref", "R-9"),
    "email": ("email", "ann@example.com"),
    "name": ("name", "Ann Lee"),
    "summary": ("summary", "Physio"),
    "description": ("description", "Wear trainers"),
    "location": ("location", "Gym 2"),
    "start": ("start", "2027-03-01 10:00"),
    "end": ("end", "2027-03-01 10:30"),
    "timezone": ("timezone", "America/Chicago"),
}


@pytest.mark.parametrize("field, alias", ALIASES)
def test_column_aliases(field, alias):
    columns = dict(BASE_COLUMNS)
    columns[field] = (alias, columns[field][1])
    header = ",".join(name for name, _ in columns.values())
    row = ",".join(value for _, value in columns.values())
    booking = only_booking(parse(f"{header}\n{row}\n"))

    assert booking.ref == "R-9"
    assert booking.recipients == [BookingRecipient("ann@example.com", "Ann Lee", 2)]
    assert booking.event == EventData(
        summary="Physio",
        start=utc_dt(2027, 3, 1, 16, 0),  # CST, UTC-6
        end=utc_dt(2027, 3, 1, 16, 30),
        tzid="America/Chicago",
        description="Wear trainers",
        location="Gym 2",
    )


def test_duration_column_and_unknown_columns_are_ignored():
    result = parse(
        "Customer ID,Email,Appointment,Starts At,Duration,Staff,error\n"
        "c-77,ann@example.com,Massage,2027-03-01 10:00,90,Kim,old error text\n"
    )
    booking = only_booking(result)
    assert booking.ref is None  # "Customer ID" is not a booking ref alias
    assert (booking.event.start, booking.event.end) == (utc_dt(2027, 3, 1, 10, 0), utc_dt(2027, 3, 1, 11, 30))
    assert booking.event.tzid == "Europe/London"  # the default
    assert result.header == ["Customer ID", "Email", "Appointment", "Starts At", "Duration", "Staff", "error"]


@pytest.mark.parametrize(
    "header, message",
    [
        ("email,summary,end", "missing column: start"),
        ("email,summary,start", "missing column: end (or duration)"),
        ("email,start,end", "missing column: summary"),
        ("name,summary,start,duration", "missing column: email"),
        ("name,start,end", "missing columns: email, summary"),
        ("foo,bar", "missing columns: email, summary, start, end (or duration)"),
    ],
)
def test_missing_required_column_is_a_format_error(header, message):
    with pytest.raises(CsvFormatError) as info:
        parse(f"{header}\nx,y,z\n")
    assert str(info.value) == message


def test_two_columns_for_one_field_is_a_format_error():
    with pytest.raises(CsvFormatError) as info:
        parse("email,Email Address,summary,start,end\na@example.com,b@example.com,x,2027-01-01 10:00,2027-01-01 11:00\n")
    assert str(info.value) == "columns 'email' and 'Email Address' both mean email; keep only one"


# --------------------------------------------------------------------------- encodings

ZOE_ROWS = (HEADER, "R1,zoe@example.com,Zoë Müller,Café visit – 2€,2027-06-01 12:00,,30,")


def test_utf8_with_bom():
    result = parse(csv_bytes(*ZOE_ROWS, bom=True))
    assert result.encoding == "utf-8-sig"
    assert result.header[0] == "booking_ref"  # no BOM left on the first cell
    booking = only_booking(result)
    assert booking.ref == "R1"
    assert booking.recipients[0].name == "Zoë Müller"
    assert booking.event.summary == "Café visit – 2€"


def test_utf8_without_bom():
    result = parse(csv_bytes(*ZOE_ROWS))
    assert result.encoding == "utf-8"
    assert only_booking(result).recipients[0].name == "Zoë Müller"


def test_windows_1252():
    data = csv_bytes(*ZOE_ROWS, encoding="cp1252", newline="\r\n")
    assert b"Zo\xeb" in data and b"\x96 2\x80" in data  # ë, en dash, euro sign
    result = parse(data)
    assert result.encoding == "windows-1252"
    booking = only_booking(result)
    assert booking.recipients[0].name == "Zoë Müller"
    assert booking.event.summary == "Café visit – 2€"


def test_windows_1252_detected_even_when_the_first_non_ascii_byte_is_far_into_the_file():
    filler = [f",p{i}@example.com,Person {i},Talk,2027-06-01 12:00,,30," for i in range(3000)]
    data = csv_bytes(HEADER, *filler, ",zoe@example.com,Zoë,Talk,2027-06-01 12:00,,30,", encoding="cp1252")
    assert len(data) > 150_000
    result = parse(data)
    assert result.encoding == "windows-1252"
    assert result.rejected == []
    assert result.bookings[-1].recipients == [BookingRecipient("zoe@example.com", "Zoë", 3002)]


def test_windows_1252_undefined_bytes_do_not_crash():
    data = csv_bytes(HEADER).replace(b"\n", b"") + b"\nR1,a@example.com,A\x81B,Talk,2027-06-01 12:00,,30,\n"
    result = parse(data)
    assert result.encoding == "windows-1252"
    assert only_booking(result).recipients[0].name == "A\x81B"


def test_utf16_with_bom_is_read():
    data = ("\t".join(HEADER.split(",")) + "\r\nR1\tzoe@example.com\tZoë\tTalk\t2027-06-01 12:00\t\t30\t\r\n").encode("utf-16")
    result = parse(data)
    assert (result.encoding, result.delimiter) == ("utf-16", "\t")
    assert only_booking(result).recipients[0].name == "Zoë"


def test_invalid_utf8_after_a_utf8_bom_is_a_format_error():
    data = csv_bytes(*ZOE_ROWS, bom=True) + b"R2,\xff\xfe@example.com,x,y,2027-06-01 12:00,,30,\n"
    with pytest.raises(CsvFormatError, match="says it is UTF-8 but is not"):
        parse(data)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "the file is empty"),
        (b"\xef\xbb\xbf", "the file is empty"),
        (b"\r\n\n  \n", "the file is empty"),
        (b",,,\n,,\n", "the file is empty"),
        (b"PK\x03\x04\x14\x00\x06\x00", "this is an Excel workbook (or another zip file), not CSV; save it as CSV UTF-8"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "this is an old-style Excel workbook (.xls), not CSV; save it as CSV UTF-8"),
        (b"email,summary\x00,start,end\n", "the file contains NUL bytes, so it is not a CSV text file"),
    ],
)
def test_unreadable_files(data, message):
    with pytest.raises(CsvFormatError) as info:
        parse(data)
    assert str(info.value) == message


def test_header_only_is_an_empty_result_not_an_error():
    result = parse(HEADER + "\r\n")
    assert (result.bookings, result.rejected, result.total_rows) == ([], [], 0)
    assert result.header == HEADER.split(",")


def test_unclosed_quote_swallowing_the_file_is_a_format_error():
    data = HEADER + '\nR1,a@example.com,"Ann,Talk,2027-06-01 12:00,,30,\n' + ("x" * 100 + "\n") * 2000
    with pytest.raises(CsvFormatError) as info:
        parse(data)
    assert str(info.value).startswith("row 2 cannot be read (")
    assert "quote that is never closed" in str(info.value)


# --------------------------------------------------------------------------- delimiters, quoting, newlines

ROW_VALUES = ["R1", "ann@example.com", "Ann, Lee", 'Say "hi"', "2027-06-01 12:00", "2027-06-01 12:30", "", "UTC"]


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_delimiter_is_sniffed(delimiter, newline):
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=newline)
    writer.writerow(HEADER.split(","))
    writer.writerow(ROW_VALUES)
    result = parse(out.getvalue())
    assert result.delimiter == delimiter
    booking = only_booking(result)
    assert booking.recipients == [BookingRecipient("ann@example.com", "Ann, Lee", 2)]
    assert booking.event.summary == 'Say "hi"'
    assert booking.event.start == utc_dt(2027, 6, 1, 12, 0)


def test_semicolon_file_with_unquoted_commas_in_values():
    result = parse(
        "Reference;Email;Title;Location;Start;End\n"
        "R1;ann@example.com;Check-up, annual;12 High St, Leeds;2027-06-01 12:00;2027-06-01 12:30\n"
    )
    assert result.delimiter == ";"
    booking = only_booking(result)
    assert (booking.event.summary, booking.event.location) == ("Check-up, annual", "12 High St, Leeds")


def test_quoted_newlines_do_not_start_a_row():
    data = (
        "booking_ref,email,summary,description,start,duration\r\n"
        'R1,ann@example.com,Talk,"Line one\r\nLine ""two"", with comma\r\nLine three",2027-06-01 12:00,30\r\n'
        "R2,bob@,Talk,,2027-06-01 12:00,30\r\n"
        '"R3","cy@example.com","Multi\nline","",2027-06-01 12:00,30\r\n'
        "R4,,Talk,,2027-06-01 12:00,30\r\n"
    )
    result = parse(data)
    assert reasons(result) == [
        (3, "email: 'bob@' is not a valid email address"),
        (5, "email: required"),
    ]
    first, second = result.bookings
    assert first.event.description == 'Line one\nLine "two", with comma\nLine three'  # CRLF inside -> LF
    assert first.row_numbers == [2]
    assert second.event.summary == "Multi\nline"
    assert second.row_numbers == [4]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_line_endings_give_the_same_result(newline):
    data = newline.join(
        [
            HEADER,
            "R1,a@example.com,A,Talk,2027-06-01 12:00,,30,",
            "R1,b@example.com,B,Talk,2027-06-01 12:00,,30,",
            "R2,c@,C,Talk,2027-06-01 12:00,,30,",
        ]
    ) + newline
    result = parse(data)
    assert [(b.ref, [r.email for r in b.recipients]) for b in result.bookings] == [
        ("R1", ["a@example.com", "b@example.com"])
    ]
    assert reasons(result) == [(4, "email: 'c@' is not a valid email address")]


def test_blank_rows_are_numbered_but_not_counted():
    data = "\n".join(
        [
            HEADER,
            "R1,a@example.com,A,Talk,2027-06-01 12:00,,30,",
            "",
            ",,,,,,,",
            "R2,bad,B,Talk,2027-06-01 12:00,,30,",
        ]
    )
    result = parse(data)
    assert result.total_rows == 2
    assert reasons(result) == [(5, "email: 'bad' is not a valid email address")]


def test_leading_blank_lines_before_the_header_count_as_rows():
    result = parse("\n\n" + HEADER + "\nR1,bad,B,Talk,2027-06-01 12:00,,30,\n")
    assert reasons(result) == [(4, "email: 'bad' is not a valid email address")]


# --------------------------------------------------------------------------- rejections

GOOD = {
    "booking_ref": "",
    "email": "ann@example.com",
    "name": "Ann",
    "summary": "Talk",
    "start": "2027-06-01 12:00",
    "end": "2027-06-01 13:00",
    "duration": "",
    "timezone": "",
}


def one_row(**changes: str) -> ParseResult:
    values = dict(GOOD, **changes)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(list(values))
    writer.writerow(["", "ok@example.com", "Ok", "Fine", "2027-01-01 09:00", "", "15", ""])
    writer.writerow(list(values.values()))
    return parse(out.getvalue())


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"email": "bob@"}, "email: 'bob@' is not a valid email address"),
        ({"email": "bob"}, "email: 'bob' is not a valid email address"),
        ({"email": "Bob <bob@example.com>"}, "email: 'Bob <bob@example.com>' is not a valid email address"),
        ({"email": "bob@example.com, cy@example.com"}, "email: 'bob@example.com, cy@example.com' is not a valid email address"),
        ({"email": ""}, "email: required"),
        ({"email": "   "}, "email: required"),
        ({"summary": ""}, "summary: required"),
        ({"start": ""}, "start: required"),
        ({"start": "next tuesday"}, "start: 'next tuesday' is not a valid date and time"),
        ({"start": "2027-02-31 09:00"}, "start: '2027-02-31 09:00' is not a valid date and time"),
        ({"start": "2027-02-29T09:00"}, "start: '2027-02-29T09:00' is not a valid date and time"),
        ({"start": "2027-06-01 25:00"}, "start: '2027-06-01 25:00' is not a valid date and time"),
        ({"start": "2027-06-01"}, "start: '2027-06-01' is not a valid date and time"),
        ({"start": "01/06/2027 12:00"}, "start: '01/06/2027 12:00' is not a valid date and time"),
        ({"end": "2027-02-31 10:00"}, "end: '2027-02-31 10:00' is not a valid date and time"),
        ({"end": "2027-06-01 11:00"}, "end: must be after start"),
        ({"end": "2027-06-01 12:00"}, "end: must be after start"),
        ({"end": "", "duration": ""}, "end: required (or duration)"),
        ({"end": "", "duration": "abc"}, "duration: 'abc' is not a whole number of minutes"),
        ({"end": "", "duration": "1.5"}, "duration: '1.5' is not a whole number of minutes"),
        ({"end": "", "duration": "-30"}, "duration: '-30' is not a whole number of minutes"),
        ({"end": "", "duration": "0"}, "duration: must be at least 1 minute"),
        ({"duration": "30"}, "duration: '30' does not match end"),
        ({"timezone": "Mars/Olympus"}, "timezone: 'Mars/Olympus' is not a known time zone"),
        ({"timezone": "Europe"}, "timezone: 'Europe' is not a known time zone"),
        ({"timezone": "../etc/passwd"}, "timezone: '../etc/passwd' is not a known time zone"),
        ({"booking_ref": "R" * 257}, "booking_ref: longer than 256 characters"),
        ({"booking_ref": "AB\x07C"}, "booking_ref: contains control characters"),
        ({"booking_ref": "AB\tC"}, "booking_ref: contains control characters"),
        ({"booking_ref": "AB\nC"}, "booking_ref: contains control characters"),
        ({"booking_ref": "AB\u202eC"}, "booking_ref: contains control characters"),
        (
            {"timezone": "Europe/London", "start": "2027-03-28 01:30", "end": "2027-03-28 03:00"},
            "start: '2027-03-28 01:30' does not exist in Europe/London (the clocks change then)",
        ),
        (
            {"email": "", "summary": "", "start": "2027-13-01 10:00", "timezone": "Nowhere"},
            "email: required; summary: required; timezone: 'Nowhere' is not a known time zone; "
            "start: '2027-13-01 10:00' is not a valid date and time",
        ),
    ],
)
def test_rejection_reasons(changes, reason):
    result = one_row(**changes)
    assert reasons(result) == [(3, reason)]
    assert result.total_rows == 2
    assert len(result.bookings) == 1  # the good row 2
    values = dict(GOOD, **changes)
    assert result.rejected[0].values == tuple(values.values())


def test_only_end_or_only_duration_column_names_that_column():
    assert reasons(parse("email,summary,start,end\na@example.com,Talk,2027-06-01 12:00,\n")) == [(2, "end: required")]
    assert reasons(parse("email,summary,start,duration\na@example.com,Talk,2027-06-01 12:00,\n")) == [
        (2, "duration: required")
    ]


def test_booking_ref_of_256_characters_is_accepted():
    ref = "R" * 256
    result = one_row(booking_ref=ref)
    assert result.rejected == []
    assert result.bookings[1].ref == ref


def test_long_values_are_shortened_in_reasons():
    result = one_row(email="x" * 100)
    assert result.rejected[0].reason == "email: '" + "x" * 59 + "…' is not a valid email address"


def test_rejected_values_are_the_original_cells_padded_to_the_header():
    result = parse(HEADER + "\n  R1 , bad ,Ann\n")
    assert result.rejected == [
        RejectedRow(
            2,
            "email: 'bad' is not a valid email address; summary: required; start: required; "
            "end: required (or duration)",
            ("  R1 ", " bad ", "Ann", "", "", "", "", ""),
        )
    ]


def test_row_with_too_many_cells():
    result = parse(
        "email,summary,start,end\n"
        "a@example.com,Talk, with comma,2027-06-01 12:00,2027-06-01 13:00\n"
        "b@example.com,Talk,2027-06-01 12:00,2027-06-01 13:00,,,\n"  # trailing empty cells are fine
    )
    assert reasons(result) == [
        (2, "row has 5 cells but the header has 4; put double quotes around values that contain commas")
    ]
    assert result.rejected[0].values == ("a@example.com", "Talk", " with comma", "2027-06-01 12:00", "2027-06-01 13:00")
    assert [b.recipients[0].email for b in result.bookings] == ["b@example.com"]


# --------------------------------------------------------------------------- time zones and offsets


def test_local_time_uses_the_row_time_zone_else_the_default():
    result = parse(
        "email,summary,start,end,tz\n"
        "a@example.com,Talk,2027-01-15 09:00,2027-01-15 10:00,America/New_York\n"
        "b@example.com,Talk,2027-01-15 09:00,2027-01-15 10:00,\n"
        "c@example.com,Talk,2027-07-15 09:00,2027-07-15 10:00,europe/london\n",
        tz="Asia/Tokyo",
    )
    a, b, c = result.bookings
    assert (a.event.start, a.event.tzid) == (utc_dt(2027, 1, 15, 14, 0), "America/New_York")
    assert (b.event.start, b.event.tzid) == (utc_dt(2027, 1, 15, 0, 0), "Asia/Tokyo")
    assert (c.event.start, c.event.tzid) == (utc_dt(2027, 7, 15, 8, 0), "Europe/London")  # canonical spelling


@pytest.mark.parametrize(
    "start, expected",
    [
        ("2027-05-03T09:00+02:00", utc_dt(2027, 5, 3, 7, 0)),
        ("2027-05-03 09:00:30-05:00", utc_dt(2027, 5, 3, 14, 0, 30)),
        ("2027-05-03T09:00Z", utc_dt(2027, 5, 3, 9, 0)),
        ("2027-05-03T09:00+0530", utc_dt(2027, 5, 3, 3, 30)),
        ("2027-05-03T09:00", utc_dt(2027, 5, 3, 13, 0)),  # New York, EDT
        ("2027-05-03 09:00", utc_dt(2027, 5, 3, 13, 0)),
        ("2027-05-03t09:00:00", utc_dt(2027, 5, 3, 13, 0)),
    ],
)
def test_offsets_convert_to_utc_and_keep_the_tzid(start, expected):
    booking = only_booking(
        parse(f"email,summary,start,duration,timezone\na@example.com,Talk,{start},60,America/New_York\n")
    )
    assert booking.event.start == expected
    assert booking.event.end == expected + timedelta(minutes=60)
    assert booking.event.tzid == "America/New_York"


def test_end_with_offset_and_start_without():
    booking = only_booking(
        parse("email,summary,start,end,tz\na@example.com,Talk,2027-05-03 09:00,2027-05-03T10:00:00+01:00,Europe/Lisbon\n")
    )
    assert (booking.event.start, booking.event.end) == (utc_dt(2027, 5, 3, 8, 0), utc_dt(2027, 5, 3, 9, 0))


def test_ambiguous_local_time_takes_the_first_occurrence():
    booking = only_booking(
        parse("email,summary,start,duration,tz\na@example.com,Talk,2027-10-31 01:30,30,Europe/London\n")
    )
    assert booking.event.start == utc_dt(2027, 10, 31, 0, 30)  # 01:30 BST, not GMT


def test_duration_versus_end():
    result = parse(
        "booking_ref,email,summary,start,end,duration\n"
        "A,a@example.com,Talk,2027-06-01 12:00,,45\n"
        "B,b@example.com,Talk,2027-06-01 12:00,2027-06-01 12:45,\n"
        "C,c@example.com,Talk,2027-06-01 12:00,2027-06-01 12:45,45\n"
        "D,d@example.com,Talk,2027-06-01 23:30,,120\n",
        tz="UTC",
    )
    assert result.rejected == []
    ends = [b.event.end for b in result.bookings]
    assert ends == [utc_dt(2027, 6, 1, 12, 45)] * 3 + [utc_dt(2027, 6, 2, 1, 30)]


def test_unknown_default_time_zone_is_a_value_error():
    with pytest.raises(ValueError):
        parse(HEADER + "\n", tz="Mars/Olympus")


# --------------------------------------------------------------------------- bookings with several rows


def test_rows_sharing_a_ref_form_one_booking():
    result = parse(
        "\n".join(
            [
                HEADER,
                "R1,a@example.com,A,Talk,2027-06-01 12:00,,30,",
                ",x@example.com,X,Talk,2027-06-01 12:00,,30,",
                "R2,b@example.com,B,Other,2027-06-02 12:00,,30,",
                "R1,C@Example.com,C,Talk,2027-06-01T12:00,2027-06-01 12:30,,Europe/London",
                ",y@example.com,Y,Talk,2027-06-01 12:00,,30,",
                "R1,c@example.com,C again,Talk,2027-06-01 12:00,,30,",
            ]
        )
    )
    assert result.rejected == []
    assert [(b.ref, [r.email for r in b.recipients], b.row_numbers) for b in result.bookings] == [
        ("R1", ["a@example.com", "c@example.com"], [2, 5, 7]),
        (None, ["x@example.com"], [3]),
        ("R2", ["b@example.com"], [4]),
        (None, ["y@example.com"], [6]),
    ]
    assert result.bookings[0].recipients[1] == BookingRecipient("c@example.com", "C", 5)


def test_rows_of_a_booking_that_disagree_are_all_rejected():
    lines = [
        HEADER,
        "ABC-1,a@example.com,A,Talk,2027-06-01 12:00,,30,",
        "ABC-2,b@example.com,B,Talk,2027-06-01 12:00,,30,",
        "ABC-1,c@example.com,C,Talk,2027-06-01 12:00,,30,",
        "ABC-1,bad-email,D,Talk,2027-06-01 12:00,,30,",
        "ABC-1,e@example.com,E,Talk,2027-06-01 13:00,,30,",
        "ABC-1,f@example.com,F,Talk,2027-06-01 12:00,,30,",
    ]
    result = parse("\n".join(lines))
    reason = "booking ABC-1: rows 2, 6 disagree on start and end"
    assert reasons(result) == [
        (2, reason),
        (4, reason),
        (5, "email: 'bad-email' is not a valid email address"),
        (6, reason),
        (7, reason),
    ]
    assert result.rejected[0].values == tuple(lines[1].split(","))
    assert result.rejected[3].values == tuple(lines[5].split(","))
    assert [b.ref for b in result.bookings] == ["ABC-2"]
    assert result.total_rows == 6


@pytest.mark.parametrize(
    "column, other, word",
    [
        ("summary", "Other talk", "summary"),
        ("location", "Room 2", "location"),
        ("description", "Bring ID", "description"),
        ("timezone", "Europe/Dublin", "timezone"),  # same wall-clock UTC offset in summer, still a different zone
    ],
)
def test_each_event_field_must_agree(column, other, word):
    header = "reference,email,summary,location,description,start,duration,timezone"
    base = {"reference": "B7", "email": "", "summary": "Talk", "location": "Room 1", "description": "",
            "start": "2027-06-01 12:00", "duration": "30", "timezone": "Europe/London"}
    rows = []
    for i, email in enumerate(["a@example.com", "b@example.com", "c@example.com"]):
        row = dict(base, email=email)
        if i == 2:
            row[column] = other
        rows.append(",".join(row.values()))
    result = parse("\n".join([header, *rows]))
    assert reasons(result) == [(n, f"booking B7: rows 2, 4 disagree on {word}") for n in (2, 3, 4)]
    assert result.bookings == []


def test_several_disagreements_are_summarised():
    result = parse(
        "\n".join(
            [HEADER]
            + [f"Z,p{i}@example.com,P,Talk {i % 2},2027-06-01 12:00,,30," for i in range(15)]
        )
    )
    reason = "booking Z: rows 2, 3, 5, 7, 9, 11, 13, 15 disagree on summary"
    assert {r.reason for r in result.rejected} == {reason}
    assert [r.row_number for r in result.rejected] == list(range(2, 17))
    result = parse(
        "\n".join(
            [HEADER]
            + [f"Z,p{i}@example.com,P,Talk,2027-06-01 12:{i:02d},,30," for i in range(14)]
        )
    )
    assert result.rejected[0].reason == (
        "booking Z: rows 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 and 4 more disagree on start and end"
    )


def test_equivalent_values_agree():
    result = parse(
        "booking_ref,email,summary,start,end,duration,timezone\n"
        "R,a@example.com,Talk,2027-06-01 12:00,2027-06-01 12:30,,\n"
        "R,b@example.com, Talk ,2027-06-01T12:00:00,,30,Europe/London\n"
        "R,c@example.com,Talk,2027-06-01T11:00Z,2027-06-01T13:30+02:00,,europe/london\n"
    )
    booking = only_booking(result)
    assert [r.email for r in booking.recipients] == ["a@example.com", "b@example.com", "c@example.com"]


# --------------------------------------------------------------------------- duplicates


def test_identical_duplicate_rows_count_once():
    row = "R1,a@example.com,A,Talk,2027-06-01 12:00,,30,"
    result = parse(
        "\n".join(
            [
                HEADER,
                row,
                ",solo@example.com,S,Talk,2027-06-01 12:00,,30,",
                row,
                " R1 , a@example.com ,A,Talk,2027-06-01 12:00,,30,,,",  # same cells once trimmed
                ",solo@example.com,S,Talk,2027-06-01 12:00,,30,",
                "R1,b@,B,Talk,2027-06-01 12:00,,30,",
                "R1,b@,B,Talk,2027-06-01 12:00,,30,",
            ]
        )
    )
    assert result.total_rows == 7
    assert result.duplicate_rows == 4
    assert reasons(result) == [(7, "email: 'b@' is not a valid email address")]
    assert [(b.ref, b.row_numbers) for b in result.bookings] == [("R1", [2]), (None, [3])]


def test_same_recipient_with_different_case_is_not_a_duplicate_row_but_one_recipient():
    result = parse(
        HEADER + "\nR1,a@example.com,A,Talk,2027-06-01 12:00,,30,\nR1,A@EXAMPLE.COM,A,Talk,2027-06-01 12:00,,30,\n"
    )
    booking = only_booking(result)
    assert result.duplicate_rows == 0
    assert booking.row_numbers == [2, 3]
    assert booking.recipients == [BookingRecipient("a@example.com", "A", 2)]


# --------------------------------------------------------------------------- e-mail addresses


@pytest.mark.parametrize(
    "raw",
    [
        "Bob@Example.COM",
        "first.last+tag@sub.example.co.uk",
        "a_b-c@example-site.org",
        "a..b@example.com",
        ".a@example.com",
        "a.@example.com",
        "a@-example.com",
        "a@example-.com",
        "a@example..com",
        "a@example",
        "a@example.test",
        "a@localhost",
        "a@b@example.com",
        "a@xn--bcher-kva.example",
        "a@XN--BCHER-KVA.example",
        "zoë@example.com",
        "a@bücher.example",
        '"quoted"@example.com',
        "o'brien@example.com",
        "x" * 70 + "@example.com",
        "x" * 64 + "@" + "d" * 63 + "." + "e" * 63 + "." + "f" * 60 + ".com",
        "a@" + "d" * 64 + ".com",
        "postmaster@example.com",
        "a@[127.0.0.1]",
    ],
)
def test_email_normalisation_matches_email_validator(raw):
    try:
        expected = validate_email(raw, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        expected = None
    assert _normalize_email(raw) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(alphabet="aZ09._+-@'\"ë .x", min_size=1, max_size=24),
        st.builds(
            "{}@{}".format,
            st.text(alphabet="aZ09._+-'ë", min_size=0, max_size=12),
            st.text(alphabet="aZ09.-ëx", min_size=0, max_size=16),
        ),
        st.builds("{}@example.com".format, st.text(alphabet="aZ._+-", min_size=1, max_size=8)),
        st.builds("a@{}.com".format, st.text(alphabet="aZ.-", min_size=1, max_size=8)),
    )
)
def test_email_fast_path_agrees_with_email_validator(raw):
    try:
        expected = validate_email(raw, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        expected = None
    assert _normalize_email(raw) == expected


def test_emails_are_lower_cased_and_idna_decoded():
    assert _normalize_email("Bob@Example.COM") == "bob@example.com"
    assert _normalize_email("a@xn--bcher-kva.example") == "a@bücher.example"
    assert _normalize_email("ZOË@Example.com") == "zoë@example.com"
    assert _normalize_email("a@example.test") is None


# --------------------------------------------------------------------------- the "fix and re-upload" file


def test_csv_safe():
    assert csv_safe("=1+1") == "'=1+1"
    assert csv_safe("+44 20 7946 0000") == "'+44 20 7946 0000"
    assert csv_safe("-5") == "'-5"
    assert csv_safe("@SUM(A1)") == "'@SUM(A1)"
    assert csv_safe("\t=cmd") == "'\t=cmd"
    assert csv_safe("\r=cmd") == "'\r=cmd"
    assert csv_safe("") == ""
    assert csv_safe("Dental check-up") == "Dental check-up"
    assert csv_safe("a=b") == "a=b"
    assert csv_safe("'=already") == "'=already"
    assert csv_safe(" =1") == " =1"


def test_rejected_rows_csv_round_trip():
    source = (
        "Reference,Email,Name,Title,Start,Duration,Notes\r\n"
        "R1,ok@example.com,Ok,Talk,2027-06-01 12:00,30,\r\n"
        'R2,bad@,"=HYPERLINK(""http://evil.example"")",+1 call,2027-06-01 12:00,30,"Line 1\nLine 2, with comma"\r\n'
        "R3,c@example.com,@admin,-Talk,2027-02-31 12:00,30,Zoë\r\n"
    )
    first = parse(source)
    assert reasons(first) == [
        (3, "email: 'bad@' is not a valid email address"),
        (4, "start: '2027-02-31 12:00' is not a valid date and time"),
    ]
    out = rejected_rows_csv(first.header, first.rejected)
    assert out.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(out[3:].decode("utf-8"), newline="")))
    assert rows == [
        ["Reference", "Email", "Name", "Title", "Start", "Duration", "Notes", "error"],
        ["R2", "bad@", "'=HYPERLINK(\"http://evil.example\")", "'+1 call", "2027-06-01 12:00", "30",
         "Line 1\nLine 2, with comma", "email: 'bad@' is not a valid email address"],
        ["R3", "c@example.com", "'@admin", "'-Talk", "2027-02-31 12:00", "30", "Zoë",
         "start: '2027-02-31 12:00' is not a valid date and time"],
    ]
    assert out.count(b"\r\n") == 3  # header and two rows; the quoted newline stays LF

    # Uploaded again unchanged: the same rejections, row numbers of the new file.
    second = parse(out)
    assert second.header[-1] == "error"
    assert reasons(second) == [(2, first.rejected[0].reason), (3, first.rejected[1].reason)]

    # Fixed and uploaded again: the "'" escapes are undone, the error column is ignored.
    fixed = out.replace(b"bad@,", b"bad@example.com,").replace(b"2027-02-31", b"2027-02-28")
    third = parse(fixed)
    assert third.rejected == []
    r2, r3 = third.bookings
    assert r2.recipients[0] == BookingRecipient("bad@example.com", '=HYPERLINK("http://evil.example")', 2)
    assert r2.event.summary == "+1 call"
    assert r2.event.description == "Line 1\nLine 2, with comma"
    assert (r3.recipients[0].name, r3.event.summary) == ("@admin", "-Talk")

    # A second round replaces the error column instead of adding another.
    again = rejected_rows_csv(second.header, second.rejected)
    assert next(csv.reader(io.StringIO(again[3:].decode("utf-8")))) == first.header + ["error"]


def test_rejected_rows_csv_keeps_cells_beyond_the_header_after_the_error():
    header = ["email", "summary", "start", "end"]
    rows = [RejectedRow(2, "row has 5 cells but the header has 4", ("a@example.com", "Talk", "x", "y", "=z"))]
    rows.append(RejectedRow(3, "summary: required", ("b@example.com",)))
    out = rejected_rows_csv(header, rows)
    assert list(csv.reader(io.StringIO(out[3:].decode("utf-8")))) == [
        ["email", "summary", "start", "end", "error"],
        ["a@example.com", "Talk", "x", "y", "row has 5 cells but the header has 4", "'=z"],
        ["b@example.com", "", "", "", "summary: required"],
    ]


def test_rejected_rows_csv_with_no_rows_is_just_the_header():
    assert rejected_rows_csv(["Email", "=Title"], []) == b"\xef\xbb\xbfEmail,'=Title,error\r\n"


# --------------------------------------------------------------------------- streams and size


class NonSeekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer) -> int:
        chunk = self._inner.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_stream_is_left_open_and_rewound():
    stream = io.BytesIO(sample_csv())
    parse_bookings(stream, default_tzid="UTC")
    assert not stream.closed
    assert stream.tell() == 0
    assert len(parse_bookings(stream, default_tzid="UTC").bookings) == 3


def test_stream_read_from_its_current_position():
    stream = io.BytesIO(b"garbage that is not part of the file\n" + sample_csv())
    stream.seek(len(b"garbage that is not part of the file\n"))
    assert len(parse_bookings(stream, default_tzid="UTC").bookings) == 3


def test_non_seekable_stream():
    result = parse_bookings(NonSeekable(sample_csv()), default_tzid="UTC")
    assert len(result.bookings) == 3


def test_disagreeing_rows_in_a_non_seekable_stream():
    data = csv_bytes(HEADER, "R,a@example.com,A,Talk,2027-06-01 12:00,,30,", "R,b@example.com,B,Talk,2027-06-01 12:00,,45,")
    result = parse_bookings(NonSeekable(data), default_tzid="UTC")
    assert reasons(result) == [(2, "booking R: rows 2, 3 disagree on end"), (3, "booking R: rows 2, 3 disagree on end")]
    assert result.rejected[1].values == ("R", "b@example.com", "B", "Talk", "2027-06-01 12:00", "", "45", "")


def test_two_thousand_rows():
    lines = [HEADER]
    for i in range(2000):
        group = i // 4  # four recipients per booking, every tenth row without a ref
        ref = f"BK-{group}" if i % 10 else ""
        email = "broken@" if i % 97 == 0 else f"user{i}@example{i % 7}.com"
        lines.append(f"{ref},{email},User {i},Session {group},2027-06-{1 + group // 25:02d} 09:{group % 4 * 15:02d},,30,")
        if i % 250 == 0:
            lines.append(lines[-1])  # an exact duplicate
    result = parse("\n".join(lines), tz="America/Los_Angeles")

    assert result.total_rows == 2008
    assert result.duplicate_rows == 8
    assert [r.row_number for r in result.rejected][:3] == [2, 100, 197]  # i = 0, 97, 194 (after duplicates)
    assert len(result.rejected) == 21  # i = 0, 97, ..., 1940
    assert {r.reason for r in result.rejected} == {"email: 'broken@' is not a valid email address"}
    assert sum(len(b.recipients) for b in result.bookings) == 2000 - 21
    assert len([b for b in result.bookings if b.ref is None]) == 200 - 3  # i = 0, 970, 1940 are rejected
    assert len({b.ref for b in result.bookings if b.ref}) == 500
    first = result.bookings[0]
    assert (first.ref, first.event.start, first.event.tzid) == ("BK-0", utc_dt(2027, 6, 1, 16, 0), "America/Los_Angeles")
