"""Pages of the bookings import (issue 5): upload, preview, confirm, watch it run, result;
the sample file; and the invites export, ``/invites/export.csv``.

The import itself runs in the worker (``jobs.run_queued_imports``); the decisions
are in ``services/bookings_import.py``.
"""
from __future__ import annotations

import io
import posixpath
from datetime import date

from flask import (Blueprint, Response, abort, current_app, flash, redirect, render_template, request,
                   stream_with_context, url_for)
from flask_login import current_user
from sqlalchemy import func, select

from ..extensions import db
from ..models import BookingImport, ImportState, Invite
from ..services import bookings_import as service
from ..services.bookings_csv import CsvFormatError, parse_bookings, rejected_rows_csv, sample_csv
from ..services.invites import ListFilter
from .forms import UploadForm
from .jobs import PREVIEW_HOURS, expire_previews, run_queued_imports

bp = Blueprint("imports", __name__)

HISTORY_LENGTH = 50
PREVIEW_BOOKINGS = 20
PREVIEW_REJECTED = 2000  # more than this: the rest are in the downloadable file
RESULT_INVITES = 100


@bp.record_once
def _register_worker_hook(state) -> None:
    state.app.extensions.setdefault("worker_hooks", []).extend((run_queued_imports, expire_previews))


def _import_or_404(import_id: int) -> BookingImport:
    record = db.session.get(BookingImport, import_id)
    if record is None:
        abort(404)
    return record


def _index_page(form: UploadForm, status: int = 200):
    history = db.session.scalars(
        select(BookingImport).order_by(BookingImport.created_at.desc(), BookingImport.id.desc()).limit(HISTORY_LENGTH)
    ).all()
    return render_template("imports/index.html", form=form, history=history,
                           limit_mb=service.MAX_UPLOAD_BYTES // (1024 * 1024)), status


def _too_large(size: int | None = None) -> str:
    limit = service.MAX_UPLOAD_BYTES // (1024 * 1024)
    shown = f"This file is {size / (1024 * 1024):.1f} MB" if size else "This file is too large"
    return f"{shown}: files over {limit} MB are refused. Split it into smaller files and import each."


@bp.get("/imports")
def index():
    form = UploadForm()
    form.timezone.data = current_user.timezone or "UTC"
    return _index_page(form)


@bp.post("/imports")
def upload():
    form = UploadForm()
    if not form.validate_on_submit():
        return _index_page(form, 422)
    storage = form.file.data
    storage.stream.seek(0, io.SEEK_END)
    size = storage.stream.tell()
    storage.stream.seek(0)
    if size > service.MAX_UPLOAD_BYTES:
        form.file.errors = [_too_large(size)]
        return _index_page(form, 413)
    content = storage.read()
    try:
        result = parse_bookings(io.BytesIO(content), default_tzid=form.timezone.data)
    except CsvFormatError as exc:
        form.file.errors = [f"This file cannot be read: {exc}."]
        return _index_page(form, 422)
    filename = posixpath.basename((storage.filename or "bookings.csv").replace("\\", "/")) or "bookings.csv"
    record = service.record_upload(filename=filename, content=content, tzid=form.timezone.data,
                                   user=current_user, result=result)
    return redirect(url_for(".show", import_id=record.id))


@bp.errorhandler(413)
def request_too_large(exc):
    """Beyond MAX_CONTENT_LENGTH the request is refused before the view; say why on the page."""
    if request.endpoint != "imports.upload":
        return render_template("error.html", status=413, title="Too large",
                               message="What was sent is larger than this app accepts."), 413
    form = UploadForm(formdata=None)
    form.timezone.data = current_user.timezone or "UTC"
    form.file.errors = [_too_large(request.content_length)]
    return _index_page(form, 413)


@bp.get("/imports/sample.csv")
def sample():
    return Response(sample_csv(), mimetype="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="bookings-sample.csv"'})


def _preview(record: BookingImport):
    try:
        result = service.parse_upload(record)
    except CsvFormatError as exc:  # it was read at upload; only a changed parser could get here
        flash(f"This file cannot be read any more: {exc}.", "error")
        return redirect(url_for(".index"))
    plan = service.plan_bookings(result, first=PREVIEW_BOOKINGS)
    db.session.rollback()  # the plan only read
    return render_template("imports/preview.html", record=record, plan=plan, duplicates=result.duplicate_rows,
                           rejected=plan.rejected[:PREVIEW_REJECTED], Action=service.Action)


@bp.get("/imports/<int:import_id>")
def show(import_id: int):
    record = _import_or_404(import_id)
    if record.state == ImportState.PREVIEWED:
        return _preview(record)
    return render_template("imports/show.html", record=record, **_progress_context(record))


def _version(record: BookingImport) -> str:
    return f"{record.state.value}.{record.processed_rows}"


def _progress_context(record: BookingImport) -> dict:
    context: dict = {"version": _version(record),
                     "live": record.state in (ImportState.QUEUED, ImportState.RUNNING),
                     "preview_hours": current_app.config.get("IMPORT_PREVIEW_HOURS", PREVIEW_HOURS)}
    if record.state == ImportState.DONE:
        context["created_invites"] = db.session.scalars(
            select(Invite).where(Invite.import_id == record.id).order_by(Invite.start, Invite.id)
            .limit(RESULT_INVITES)
        ).all()
        context["created_total"] = db.session.scalar(
            select(func.count()).select_from(Invite).where(Invite.import_id == record.id))
    return context


@bp.get("/imports/<int:import_id>/progress")
def progress(import_id: int):
    """The polled fragment: 204 while the page already shows this state."""
    record = _import_or_404(import_id)
    if request.args.get("v") == _version(record):
        return Response(status=204)
    return render_template("imports/_progress.html", record=record, **_progress_context(record))


@bp.post("/imports/<int:import_id>/confirm")
def confirm(import_id: int):
    record = _import_or_404(import_id)
    if service.queue_import(record.id):
        flash(f"Import of {record.filename} confirmed: it runs in the background, you can leave this page.", "success")
    return redirect(url_for(".show", import_id=record.id))


@bp.post("/imports/<int:import_id>/retry")
def retry(import_id: int):
    record = _import_or_404(import_id)
    if record.state != ImportState.FAILED or not service.queue_import(record.id):
        flash("Only a failed import whose file is kept can be tried again.", "error")
    return redirect(url_for(".show", import_id=record.id))


@bp.get("/imports/<int:import_id>/rejected.csv")
def rejected(import_id: int):
    record = _import_or_404(import_id)
    if record.state == ImportState.PREVIEWED:
        result = service.parse_upload(record)
        plan = service.plan_bookings(result, first=0)
        db.session.rollback()
        report = service.ImportReport(rejected=plan.rejected)
        service.with_original_cells(report, io.BytesIO(record.content or b""), result)
        body = rejected_rows_csv(result.header, report.rejected)
    elif record.rejected_csv:
        body = record.rejected_csv
    else:
        abort(404)
    stem = posixpath.splitext(record.filename)[0] or "bookings"
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80]
    return Response(body, mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}-rejected.csv"'})


@bp.get("/invites/export.csv")
def export_invites():
    """One row per recipient of the invites the list shows for the same ``q`` and ``status``."""
    q = request.args.get("q", "").strip()
    status = request.args.get("status", "")
    if status not in dict(ListFilter.CHOICES):
        status = ""
    return Response(stream_with_context(service.export_csv(q, status)), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="invites-{date.today():%Y-%m-%d}.csv"'})
