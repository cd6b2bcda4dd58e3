"""Importing bookings from CSV and exporting statuses (issue 5): the pages without a
browser, the worker's part, the command line and the export."""
from __future__ import annotations

import codecs
import csv
import io
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from smart_invites_ui.domain import InviteSource, RecipientStatus
from smart_invites_ui.extensions import db
from smart_invites_ui.models import BookingImport, ImportState, Invite, OutboxMessage, OutboxState, Recipient
from smart_invites_ui.services import bookings_import
from smart_invites_ui.services import invites as invite_service
from smart_invites_ui.services.bookings_csv import parse_bookings
from smart_invites_ui.worker import Worker
from tests.conftest import make_invite

HEADER = ["booking_ref", "email", "name", "summary", "location", "start", "end", "timezone"]

BOOKINGS = [
    ["A-1", "ann@example.org", "Ann", "Dental check-up", "Room 3", "2031-05-03 09:00", "2031-05-03 09:30",
     "Europe/London"],
    ["A-1", "bob@example.org", "Bob", "Dental check-up", "Room 3", "2031-05-03 09:00", "2031-05-03 09:30",
     "Europe/London"],
    ["A-2", "cat@example.org", "Cat", "Haircut", "Salon", "2031-05-04 14:00", "2031-05-04 14:45",
     "America/New_York"],
    ["A-3", "not an address", "Dan", "Massage", "Spa", "2031-05-05 10:00", "2031-05-05 11:00", "Europe/Paris"],
    ["", "eve@example.org", "Eve", "Walk-in", "Front desk", "2031-05-06 08:00", "2031-05-06 08:15", ""],
]


def csv_bytes(rows, header=HEADER) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def outbox_count() -> int:
    return db.session.scalar(select(func.count()).select_from(OutboxMessage))


def invite(reference: str) -> Invite:
    db.session.expire_all()
    return invite_service.get_by_reference(reference)


@pytest.fixture
def run_imports(app):
    """What `flask worker` does for imports: call the registered worker hooks until none is queued."""
    worker = Worker(app, worker_id="test")

    def run():
        for _ in range(20):
            worker.run_hooks()
            db.session.expire_all()
            if not db.session.scalar(select(BookingImport.id).where(BookingImport.state == ImportState.QUEUED)):
                return
        raise AssertionError("imports still queued after 20 worker rounds")

    return run


@pytest.fixture
def staff(auth, fast_passwords):
    auth.login()
    return auth


def upload(staff, content: bytes, filename="bookings.csv", tz="Europe/London"):
    return staff.post("/imports", data={"file": (io.BytesIO(content), filename), "timezone": tz},
                      content_type="multipart/form-data")


def import_id_of(response) -> int:
    assert response.status_code == 302, response.get_data(as_text=True)
    return int(response.headers["Location"].rstrip("/").rsplit("/", 1)[1])


def confirm(staff, import_id: int):
    response = staff.post(f"/imports/{import_id}/confirm")
    assert response.status_code == 302
    return response


def import_through_pages(staff, run_imports, content: bytes) -> BookingImport:
    import_id = import_id_of(upload(staff, content))
    confirm(staff, import_id)
    run_imports()
    record = db.session.get(BookingImport, import_id)
    assert record.state == ImportState.DONE, record.error
    return record


# --- who may import -------------------------------------------------------------------


def test_import_and_export_pages_need_a_login(client):
    for url in ("/imports", "/imports/sample.csv", "/invites/export.csv"):
        response = client.get(url)
        assert response.status_code == 302 and "/login" in response.headers["Location"], url


def test_an_upload_without_the_csrf_token_is_refused(staff):
    response = staff.client.post("/imports", data={"file": (io.BytesIO(csv_bytes(BOOKINGS)), "b.csv"),
                                                   "timezone": "UTC"}, content_type="multipart/form-data")
    assert response.status_code == 400
    assert db.session.scalar(select(func.count()).select_from(BookingImport)) == 0


# --- upload, preview, confirm, progress, result ---------------------------------------


def test_upload_previews_without_writing_anything(staff):
    response = upload(staff, csv_bytes(BOOKINGS))
    page = staff.client.get(response.headers["Location"])
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert 'id="count-rows">5' in html
    assert 'id="count-create">3<' in html  # A-1 (two recipients), A-2, and the row without a reference
    assert 'id="count-rejected">1<' in html
    assert '<tr data-row="5">' in html and "not a valid email address" in html  # header is row 1
    assert "ann@example.org" in html and "bob@example.org" in html and "Haircut" in html
    assert db.session.scalar(select(func.count()).select_from(Invite)) == 0
    assert outbox_count() == 0
    record = db.session.scalars(select(BookingImport)).one()
    assert record.state == ImportState.PREVIEWED and record.filename == "bookings.csv"
    assert record.user_id == staff.user.id


def test_confirmed_import_runs_in_the_worker_with_live_progress(staff, run_imports, deliver):
    import_id = import_id_of(upload(staff, csv_bytes(BOOKINGS)))
    confirm(staff, import_id)
    confirm(staff, import_id)  # a second click changes nothing

    waiting = staff.client.get(f"/imports/{import_id}").get_data(as_text=True)
    assert 'data-state="queued"' in waiting
    assert f'hx-get="/imports/{import_id}/progress?v=queued.0"' in waiting and "<progress" in waiting
    assert staff.client.get(f"/imports/{import_id}/progress?v=queued.0").status_code == 204  # nothing new

    run_imports()
    fragment = staff.client.get(f"/imports/{import_id}/progress?v=queued.0")
    html = fragment.get_data(as_text=True)
    assert fragment.status_code == 200
    assert 'data-state="done"' in html and "hx-get" not in html  # polling stops
    assert '<progress value="5" max="5">' in html
    assert 'id="count-create">3<' in html and 'id="count-rejected">1<' in html
    a1 = invite("A-1")
    assert f'href="/invites/{a1.id}"' in html  # the result links the invites created
    assert f"/imports/{import_id}/rejected.csv" in html

    record = db.session.get(BookingImport, import_id)
    assert (record.created_count, record.updated_count, record.unchanged_count, record.rejected_count) == (3, 0, 0, 1)
    assert record.processed_rows == record.total_rows == 5 and record.finished_at is not None
    assert [r.email for r in a1.recipients] == ["ann@example.org", "bob@example.org"]
    assert a1.source == InviteSource.IMPORT and a1.import_id == import_id and a1.created_by_id == staff.user.id
    assert a1.start == datetime(2031, 5, 3, 8, 0, tzinfo=timezone.utc) and a1.tzid == "Europe/London"
    walk_in = db.session.scalars(select(Invite).where(Invite.summary == "Walk-in")).one()
    assert walk_in.smart_invite_id.startswith("IMP-") and walk_in.tzid == "Europe/London"  # the chosen default

    # Each recipient gets the invite email, as if the invite were made by hand.
    messages = db.session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
    assert sorted(m.target for m in messages) == ["ann@example.org", "bob@example.org", "cat@example.org",
                                                  "eve@example.org"]
    assert {m.method for m in messages} == {"REQUEST"}
    deliver()
    assert {m.state for m in db.session.scalars(select(OutboxMessage))} == {OutboxState.SENT}

    history = staff.client.get("/imports").get_data(as_text=True)
    assert "bookings.csv" in history and staff.user.email in history and 'data-state="done"' in history


def test_rejected_rows_download_has_the_original_columns_and_the_reason(staff, run_imports):
    rows = BOOKINGS + [["A-4", "=cmd|' /C calc'!A0", "Mallory", "Hack", "", "2031-05-07 09:00",
                        "2031-05-07 09:30", "UTC"]]
    import_id = import_id_of(upload(staff, csv_bytes(rows)))
    preview_file = staff.client.get(f"/imports/{import_id}/rejected.csv")  # from the preview already
    confirm(staff, import_id)
    run_imports()
    response = staff.client.get(f"/imports/{import_id}/rejected.csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    body = response.data
    assert body == preview_file.data
    assert body.startswith(codecs.BOM_UTF8)
    table = list(csv.reader(io.StringIO(body[3:].decode("utf-8"))))
    assert table[0] == HEADER + ["error"]
    assert table[1][:4] == ["A-3", "not an address", "Dan", "Massage"] and "email" in table[1][-1]
    assert table[2][1] == "'=cmd|' /C calc'!A0"  # a formula is neutralised (CWE-1236)
    # Fixed and uploaded again, the rows import.
    fixed = body.replace(b"not an address", b"dan@example.org").replace(b"'=cmd|' /C calc'!A0", b"mal@example.org")
    record = import_through_pages(staff, run_imports, fixed)
    assert (record.created_count, record.rejected_count) == (2, 0)


def test_a_file_that_cannot_be_read_is_refused_on_the_form(staff):
    response = upload(staff, b"PK\x03\x04 an Excel workbook", filename="bookings.xlsx")
    assert response.status_code == 422
    assert "This file cannot be read" in response.get_data(as_text=True)
    assert db.session.scalar(select(func.count()).select_from(BookingImport)) == 0


@pytest.mark.parametrize("megabytes", [20.01, 31])
def test_files_over_20_mb_are_refused_with_a_message(staff, megabytes):
    content = csv_bytes(BOOKINGS[:1]) + b"x" * int(megabytes * 1024 * 1024)
    response = upload(staff, content)
    html = response.get_data(as_text=True)
    assert response.status_code == 413
    assert "files over 20 MB are refused" in html and 'type="file"' in html  # the upload form, to try again
    assert db.session.scalar(select(func.count()).select_from(BookingImport)) == 0


def test_the_sample_file_imports_cleanly(staff):
    response = staff.client.get("/imports/sample.csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    result = parse_bookings(io.BytesIO(response.data), default_tzid="UTC")
    assert result.rejected == [] and len(result.bookings) == 3
    assert "Download a sample file" in staff.client.get("/imports").get_data(as_text=True)


# --- what an import does to existing invites -------------------------------------------


def test_importing_the_same_file_again_changes_and_sends_nothing(staff, run_imports, deliver):
    content = csv_bytes(BOOKINGS)
    import_through_pages(staff, run_imports, content)
    deliver()
    before = outbox_count()
    versions = {i.smart_invite_id: (i.sequence, i.version) for i in db.session.scalars(select(Invite))}

    import_id = import_id_of(upload(staff, content))
    html = staff.client.get(f"/imports/{import_id}").get_data(as_text=True)
    assert 'id="count-create">0<' in html and 'id="count-unchanged">3<' in html
    confirm(staff, import_id)
    run_imports()
    record = db.session.get(BookingImport, import_id)
    assert (record.created_count, record.updated_count, record.unchanged_count, record.rejected_count) == (0, 0, 3, 1)
    assert outbox_count() == before
    db.session.expire_all()
    assert {i.smart_invite_id: (i.sequence, i.version) for i in db.session.scalars(select(Invite))} == versions


def test_a_changed_row_updates_the_booking_and_resends_like_an_edit(staff, run_imports, deliver):
    import_through_pages(staff, run_imports, csv_bytes(BOOKINGS))
    deliver()
    a1 = invite("A-1")
    a1.recipients[0].status = RecipientStatus.ACCEPTED  # Ann had accepted the old time
    db.session.commit()
    before = outbox_count()

    changed = [list(r) for r in BOOKINGS]
    changed[0][5] = changed[1][5] = "2031-05-03 10:00"  # A-1 moves an hour later
    changed[0][6] = changed[1][6] = "2031-05-03 10:30"
    changed.append(["A-2", "dee@example.org", "Dee", "Haircut", "Salon", "2031-05-04 14:00", "2031-05-04 14:45",
                    "America/New_York"])  # a new recipient on A-2
    record = import_through_pages(staff, run_imports, csv_bytes(changed))
    assert (record.created_count, record.updated_count, record.unchanged_count) == (0, 2, 1)

    a1 = invite("A-1")
    assert a1.sequence == 1 and a1.start == datetime(2031, 5, 3, 9, 0, tzinfo=timezone.utc)
    assert {r.status for r in a1.recipients} == {RecipientStatus.PENDING}  # nobody has said yes to the new time
    a2 = invite("A-2")
    assert a2.sequence == 0 and [r.email for r in a2.recipients] == ["cat@example.org", "dee@example.org"]
    new = db.session.scalars(select(OutboxMessage).where(OutboxMessage.id > 0).order_by(OutboxMessage.id)
                             .offset(before)).all()
    assert sorted((m.target, m.method) for m in new if m.state == OutboxState.QUEUED) == [
        ("ann@example.org", "REQUEST"), ("bob@example.org", "REQUEST"),
        ("cat@example.org", "REQUEST"), ("dee@example.org", "REQUEST")]
    deliver()
    sent = db.session.scalars(select(OutboxMessage).where(OutboxMessage.target == "ann@example.org",
                                                          OutboxMessage.state == OutboxState.SENT)
                              .order_by(OutboxMessage.id)).all()
    assert [m.sequence for m in sent] == [0, 1]


def test_a_corrected_name_is_kept_without_sending_anything(staff, run_imports):
    import_through_pages(staff, run_imports, csv_bytes(BOOKINGS))
    before, version = outbox_count(), invite("A-1").version
    renamed = [list(r) for r in BOOKINGS]
    renamed[1][2] = "Robert"
    record = import_through_pages(staff, run_imports, csv_bytes(renamed))
    assert (record.updated_count, record.unchanged_count) == (1, 2)
    a1 = invite("A-1")
    assert a1.recipient("bob@example.org").name == "Robert" and a1.sequence == 0 and a1.version == version + 1
    assert outbox_count() == before


def test_rows_that_would_change_a_cancelled_invite_are_rejected(staff, run_imports):
    import_through_pages(staff, run_imports, csv_bytes(BOOKINGS))
    invite_service.cancel_invite(invite("A-2"))
    changed = [list(r) for r in BOOKINGS]
    changed[2][4] = "Another salon"
    record = import_through_pages(staff, run_imports, csv_bytes(changed))
    assert (record.updated_count, record.unchanged_count, record.rejected_count) == (0, 2, 2)
    table = list(csv.reader(io.StringIO(record.rejected_csv[3:].decode("utf-8"))))
    assert table[1][:5] == changed[2][:5] and "cancelled" in table[1][-1]
    assert invite("A-2").location == "Salon"


def test_an_existing_invite_made_on_the_dashboard_is_matched_by_its_reference(staff, run_imports):
    make_invite(emails=("ann@example.org",), reference="A-1", summary="Dental check-up", location="Room 3",
                start=datetime(2031, 5, 3, 8, 0, tzinfo=timezone.utc), description="Bring your forms.")
    record = import_through_pages(staff, run_imports, csv_bytes(BOOKINGS[:2]))
    assert (record.created_count, record.updated_count) == (0, 1)
    a1 = invite("A-1")
    assert a1.description == "" and a1.sequence == 1  # the file's (empty) notes win, as in an edit
    assert [r.email for r in a1.recipients] == ["ann@example.org", "bob@example.org"]
    assert a1.source == InviteSource.DASHBOARD


@pytest.fixture
def cronofy_api(app, http_recorder):
    from tests.test_cronofy_provider import FakeApi

    app.config.update(SMART_INVITES_PROVIDER="cronofy", CRONOFY_API_URL=http_recorder.url,
                      CRONOFY_CLIENT_SECRETS=("first-key",), PUBLIC_BASE_URL="https://dash.example.org",
                      CRONOFY_TIMEOUT_SECONDS=1)
    return FakeApi(http_recorder)


def test_with_the_cronofy_provider_the_api_is_told_and_its_ics_is_emailed(runner, tmp_path, cronofy_api):
    result = runner.invoke(args=["import-bookings", write(tmp_path, BOOKINGS[:3])])
    assert result.exit_code == 0, result.output
    assert sorted(body["smart_invite_id"] for body in cronofy_api.bodies()) == ["A-1", "A-2"]
    payloads = db.session.scalars(select(OutboxMessage.payload)).all()
    assert len(payloads) == 3 and all(b"SUMMARY:call-" in payload for payload in payloads)


def test_bookings_the_provider_refuses_are_rejected_and_the_rest_imported(runner, tmp_path, cronofy_api):
    real = cronofy_api.respond

    def refuse_a2(request):
        if b'"A-2"' in request["body"]:
            return 422, {"errors": {"summary": [{"key": "errors.invalid", "description": "not allowed"}]}}
        return real(request)

    cronofy_api.recorder.respond = refuse_a2
    result = runner.invoke(args=["import-bookings", write(tmp_path, BOOKINGS[:3])])
    assert result.exit_code == 2, result.output
    assert "created: 1\n" in result.output and "rejected: 1\n" in result.output
    assert "row 4: booking A-2: the invite provider refused it" in result.output
    assert invite("A-1") is not None and invite("A-2") is None


# --- the worker: batches, stopping and crashing ------------------------------------------


def many_bookings(count: int) -> bytes:
    rows = []
    for n in range(count):
        start = datetime(2031, 6, 1, 9, 0) + timedelta(hours=n)
        for who in ("x", "y"):
            rows.append([f"M-{n}", f"{who}{n}@example.org", "", "Appointment", "", f"{start:%Y-%m-%d %H:%M}",
                         f"{start + timedelta(minutes=30):%Y-%m-%d %H:%M}", "UTC"])
    return csv_bytes(rows)


def queued_import(staff, content: bytes) -> int:
    import_id = import_id_of(upload(staff, content))
    confirm(staff, import_id)
    return import_id


def whole_bookings() -> bool:
    counts = db.session.execute(select(Recipient.invite_id, func.count()).group_by(Recipient.invite_id)).all()
    return all(n == 2 for _, n in counts)


def test_a_stopped_import_resumes_after_the_last_batch_written(app, staff):
    app.config["IMPORT_BATCH_ROWS"] = 10
    import_id = queued_import(staff, many_bookings(25))  # 50 rows: 5 batches of 5 bookings
    batches = iter(range(100))
    assert bookings_import.claim_next_import() == import_id
    state = bookings_import.run_import(import_id, should_stop=lambda: next(batches) >= 2)
    assert state == ImportState.QUEUED
    record = db.session.get(BookingImport, import_id)
    assert (record.processed_rows, record.created_count) == (20, 10)
    assert db.session.scalar(select(func.count()).select_from(Invite)) == 10 and whole_bookings()

    assert bookings_import.claim_next_import() == import_id
    assert bookings_import.run_import(import_id) == ImportState.DONE
    db.session.expire_all()
    record = db.session.get(BookingImport, import_id)
    assert (record.processed_rows, record.created_count, record.unchanged_count) == (50, 25, 0)
    assert db.session.scalar(select(func.count()).select_from(Invite)) == 25 and whole_bookings()
    assert outbox_count() == 50


def test_a_crash_mid_import_never_leaves_half_a_booking(app, staff, monkeypatch, run_imports):
    app.config["IMPORT_BATCH_ROWS"] = 10
    import_id = queued_import(staff, many_bookings(25))
    real = invite_service.create_invites
    calls = iter(range(100))

    def crash_on_the_third_batch(*args, **kwargs):
        invites = real(*args, **kwargs)  # written, then the process "dies" before the commit
        if next(calls) == 2:
            raise RuntimeError("power cut")
        return invites

    monkeypatch.setattr(invite_service, "create_invites", crash_on_the_third_batch)
    run_imports()
    record = db.session.get(BookingImport, import_id)
    assert record.state == ImportState.FAILED and "power cut" in record.error
    assert db.session.scalar(select(func.count()).select_from(Invite)) == 10 and whole_bookings()
    assert outbox_count() == 20  # only the emails of what was written
    page = staff.client.get(f"/imports/{import_id}").get_data(as_text=True)
    assert "The import stopped" in page and "Try again" in page

    monkeypatch.setattr(invite_service, "create_invites", real)
    assert staff.post(f"/imports/{import_id}/retry").status_code == 302
    run_imports()
    record = db.session.get(BookingImport, import_id)
    assert record.state == ImportState.DONE and (record.created_count, record.rejected_count) == (25, 0)
    assert db.session.scalar(select(func.count()).select_from(Invite)) == 25 and whole_bookings()
    assert outbox_count() == 50


def test_a_long_import_lets_the_outbox_deliver_between_its_batches(app, staff, run_imports):
    app.config.update(IMPORT_BATCH_ROWS=10, IMPORT_OUTBOX_EVERY_SECONDS=0)
    queued_import(staff, many_bookings(25))
    run_imports()  # no deliver(): the import's own pauses sent what earlier batches queued
    sent = db.session.scalar(select(func.count()).select_from(OutboxMessage)
                             .where(OutboxMessage.state == OutboxState.SENT))
    assert sent >= 40 and outbox_count() == 50


# --- the command line --------------------------------------------------------------------


def write(tmp_path, rows, name="bookings.csv"):
    path = tmp_path / name
    path.write_bytes(csv_bytes(rows))
    return str(path)


def test_cli_imports_every_row_and_exits_0(runner, tmp_path):
    result = runner.invoke(args=["import-bookings", write(tmp_path, BOOKINGS[:3])])
    assert result.exit_code == 0, result.output
    assert "created: 2\nupdated: 0\nunchanged: 0\nrejected: 0\n" in result.output
    assert invite("A-1") is not None and outbox_count() == 3
    record = db.session.scalars(select(BookingImport)).one()
    assert record.user_id is None and record.filename == "bookings.csv" and record.created_count == 2

    again = runner.invoke(args=["import-bookings", write(tmp_path, BOOKINGS[:3])])
    assert again.exit_code == 0 and "created: 0\nupdated: 0\nunchanged: 2\n" in again.output
    assert outbox_count() == 3  # nothing sent again


def test_cli_reports_rejected_rows_imports_the_rest_and_exits_2(runner, tmp_path):
    rows = BOOKINGS + [["A-5", "fay@example.org", "", "Scan", "", "2027-02-31 09:00", "2027-02-31 10:00", "UTC"],
                       ["A-6", "gus@example.org", "", "Scan", "", "2031-01-01 10:00", "2031-01-01 09:00", "UTC"]]
    result = runner.invoke(args=["import-bookings", write(tmp_path, rows), "--timezone", "Asia/Tokyo"])
    assert result.exit_code == 2, result.output
    assert "created: 3\n" in result.output and "rejected: 3\n" in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("row ")]
    assert [line.split(":")[0] for line in lines] == ["row 5", "row 7", "row 8"]
    assert "not a valid email address" in lines[0]
    assert "2027-02-31" in lines[1] and "end: must be after start" in lines[2]
    walk_in = db.session.scalars(select(Invite).where(Invite.summary == "Walk-in")).one()
    assert walk_in.tzid == "Asia/Tokyo"


def test_cli_reads_a_spreadsheet_export_with_its_quirks(runner, tmp_path):
    """Windows-1252, semicolons, CRLF, a quoted line break, an identical repeat, and a booking
    whose rows disagree: row numbers are the spreadsheet's (a quoted newline is no new row)."""
    text = ("Booking Ref;E-mail Address;Full Name;Title;Notes;Start Time;Duration;TZ\r\n"
            "R-1;zoe@example.org;Zoé;Café visit;\"Bring:\r\n- the form\";2031-05-03 09:00;30;Europe/Paris\r\n"
            "R-1;zoe@example.org;Zoé;Café visit;\"Bring:\r\n- the form\";2031-05-03 09:00;30;Europe/Paris\r\n"
            "R-2;ann@example.org;Ann;Check;;2031-05-04 09:00;30;UTC\r\n"
            "R-2;bob@example.org;Bob;Check;;2031-05-04 10:00;30;UTC\r\n")
    path = tmp_path / "export.csv"
    path.write_bytes(text.replace("E-mail Address", "Email Address").encode("windows-1252"))
    result = runner.invoke(args=["import-bookings", str(path)])
    assert result.exit_code == 2, result.output
    assert "created: 1\n" in result.output and "rejected: 2\n" in result.output
    assert "row 4: booking R-2: rows 4, 5 disagree on start and end\nrow 5: booking R-2" in result.output
    r1 = invite("R-1")
    assert r1.summary == "Café visit" and r1.description == "Bring:\n- the form" and len(r1.recipients) == 1
    assert r1.recipients[0].name == "Zoé" and r1.end - r1.start == timedelta(minutes=30)


def test_cli_dry_run_changes_nothing(runner, tmp_path):
    result = runner.invoke(args=["import-bookings", write(tmp_path, BOOKINGS), "--dry-run"])
    assert result.exit_code == 2
    assert "dry run" in result.output and "created: 3\n" in result.output and "row 5: email" in result.output
    assert db.session.scalar(select(func.count()).select_from(Invite)) == 0 and outbox_count() == 0
    assert db.session.scalar(select(func.count()).select_from(BookingImport)) == 0


@pytest.mark.parametrize("content", [None, b"\x00\x01\x02 binary", b"PK\x03\x04zip", b"", b"email,name\na@b.org,A\n"])
def test_cli_exits_1_when_the_file_cannot_be_read(runner, tmp_path, content):
    path = tmp_path / "bookings.csv"
    if content is not None:
        path.write_bytes(content)
    result = runner.invoke(args=["import-bookings", str(path)])
    assert result.exit_code == 1, result.output
    assert "error:" in result.output
    assert db.session.scalar(select(func.count()).select_from(Invite)) == 0


def test_cli_refuses_an_unknown_time_zone(runner, tmp_path):
    result = runner.invoke(args=["import-bookings", write(tmp_path, BOOKINGS), "--timezone", "Mars/Olympus"])
    assert result.exit_code == 1 and "--timezone" in result.output


# --- the export -------------------------------------------------------------------------


def export(staff, **params):
    response = staff.client.get("/invites/export.csv", query_string=params)
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    body = response.data
    assert body.startswith(codecs.BOM_UTF8)  # Excel reads it as UTF-8
    return list(csv.reader(io.StringIO(body[3:].decode("utf-8"))))


def test_export_has_one_row_per_recipient_with_their_status(staff, run_imports):
    import_through_pages(staff, run_imports, csv_bytes(BOOKINGS[:3]))
    a1 = invite("A-1")
    bob = a1.recipient("bob@example.org")
    bob.status = RecipientStatus.DECLINED
    bob.comment = "Can we do later?"
    bob.proposal_start = datetime(2031, 5, 3, 15, 0, tzinfo=timezone.utc)
    bob.proposal_end = datetime(2031, 5, 3, 15, 30, tzinfo=timezone.utc)
    bob.replied_at = datetime(2031, 4, 1, 12, 5, tzinfo=timezone.utc)
    db.session.commit()

    table = export(staff)
    assert table[0] == ["booking_ref", "summary", "start", "end", "timezone", "location", "email", "name", "status",
                        "comment", "proposed_start", "replied_at"]
    assert table[1:] == [
        ["A-1", "Dental check-up", "2031-05-03 09:00", "2031-05-03 09:30", "Europe/London", "Room 3",
         "ann@example.org", "Ann", "pending", "", "", ""],
        ["A-1", "Dental check-up", "2031-05-03 09:00", "2031-05-03 09:30", "Europe/London", "Room 3",
         "bob@example.org", "Bob", "declined", "Can we do later?", "2031-05-03 16:00", "2031-04-01 13:05"],
        ["A-2", "Haircut", "2031-05-04 14:00", "2031-05-04 14:45", "America/New_York", "Salon",
         "cat@example.org", "Cat", "pending", "", "", ""],
    ]


def test_export_honours_the_lists_search_and_filter(staff):
    make_invite(emails=("ann@example.org", "zed@example.org"), reference="KEEP-1", summary="Physio")
    make_invite(emails=("bob@example.org",), reference="OTHER-2", summary="Dentist")
    gone = make_invite(emails=("cat@example.org",), reference="GONE-3", summary="Physio follow-up")
    invite_service.cancel_invite(gone)

    assert {row[0] for row in export(staff)[1:]} == {"KEEP-1", "OTHER-2", "GONE-3"}
    assert [row[6] for row in export(staff, q="zed@")[1:]] == ["ann@example.org", "zed@example.org"]  # whole invite
    assert {row[0] for row in export(staff, q="physio")[1:]} == {"KEEP-1", "GONE-3"}
    assert {row[0] for row in export(staff, q="physio", status="cancelled")[1:]} == {"GONE-3"}
    assert {row[0] for row in export(staff, status="upcoming")[1:]} == {"KEEP-1", "OTHER-2"}
    html = staff.client.get("/invites?q=physio&status=cancelled").get_data(as_text=True)
    assert 'href="/invites/export.csv?q=physio&amp;status=cancelled"' in html  # the list links its own export


def test_export_cells_cannot_run_as_formulas(staff):
    make_invite(emails=("ann@example.org",), reference="=1+1", summary="+SUM(A1:A9)", location="@evil",
                description="")
    recipient = invite("=1+1").recipients[0]
    recipient.name = "-2+3"
    recipient.comment = "\tcmd"
    db.session.commit()
    row = export(staff)[1]
    assert row[0] == "'=1+1" and row[1] == "'+SUM(A1:A9)" and row[5] == "'@evil"
    assert row[7] == "'-2+3" and row[9] == "'\tcmd"


def test_an_exported_file_imports_back_unchanged(staff, run_imports):
    import_through_pages(staff, run_imports, csv_bytes(BOOKINGS))
    body = staff.client.get("/invites/export.csv").data
    before = outbox_count()
    record = import_through_pages(staff, run_imports, body)
    assert (record.created_count, record.updated_count, record.unchanged_count, record.rejected_count) == (0, 0, 3, 0)
    assert outbox_count() == before


def test_an_import_whose_worker_died_is_taken_over_after_its_lease(app, staff):
    """kill -9 mid-import: the import stays 'running', leased; once the lease runs out
    another worker claims it and resumes after the last batch written."""
    app.config["IMPORT_BATCH_ROWS"] = 10
    import_id = queued_import(staff, many_bookings(25))
    batches = iter(range(100))
    assert bookings_import.claim_next_import() == import_id

    class WorkerDied(BaseException):  # not an Exception: nothing in the import may catch it
        pass

    def die_after_two_batches():
        if next(batches) >= 2:
            raise WorkerDied()
        bookings_import.renew_lease(import_id)

    with pytest.raises(WorkerDied):
        bookings_import.run_import(import_id, between_batches=die_after_two_batches)
    db.session.rollback()
    record = db.session.get(BookingImport, import_id)
    assert record.state == ImportState.RUNNING and record.processed_rows == 30
    assert bookings_import.claim_next_import() is None  # the lease still holds

    record.lease_until = datetime.now(timezone.utc) - timedelta(seconds=1)
    db.session.commit()
    assert bookings_import.claim_next_import() == import_id
    assert bookings_import.run_import(import_id) == ImportState.DONE
    db.session.expire_all()
    record = db.session.get(BookingImport, import_id)
    assert (record.processed_rows, record.created_count) == (50, 25)
    assert db.session.scalar(select(func.count()).select_from(Invite)) == 25 and whole_bookings()
    assert outbox_count() == 50


# --- previews nobody confirmed ----------------------------------------------------------


def test_a_preview_not_confirmed_within_a_day_loses_its_file_and_says_so(staff, run_imports):
    old_id = import_id_of(upload(staff, csv_bytes(BOOKINGS), filename="monday.csv"))
    fresh_id = import_id_of(upload(staff, csv_bytes(BOOKINGS), filename="tuesday.csv"))
    done = import_through_pages(staff, run_imports, csv_bytes(BOOKINGS))
    for record_id in (old_id, done.id):  # uploaded 25 hours ago
        db.session.get(BookingImport, record_id).created_at = datetime.now(timezone.utc) - timedelta(hours=25)
    db.session.commit()

    Worker(staff.client.application, worker_id="test").run_hooks()
    db.session.expire_all()
    old, fresh, done = (db.session.get(BookingImport, i) for i in (old_id, fresh_id, done.id))
    assert (old.state, old.content, old.total_rows) == (ImportState.EXPIRED, None, len(BOOKINGS))
    assert fresh.state == ImportState.PREVIEWED and fresh.content  # still within the day
    assert done.state == ImportState.DONE  # only previews expire

    page = staff.client.get(f"/imports/{old_id}").get_data(as_text=True)
    assert "was not confirmed within 24 hours" in page and "Upload the file again" in page
    invites = db.session.scalar(select(func.count()).select_from(Invite))
    confirm(staff, old_id)  # too late: nothing is queued
    run_imports()
    assert db.session.get(BookingImport, old_id).state == ImportState.EXPIRED
    assert db.session.scalar(select(func.count()).select_from(Invite)) == invites
    listing = staff.client.get("/imports").get_data(as_text=True)
    assert 'data-state="expired"' in listing and 'data-state="previewed"' in listing
