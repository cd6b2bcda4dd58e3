"""The worker's part of the import: run the imports staff confirmed, and discard the
files of previews nobody confirmed.

Registered in ``app.extensions["worker_hooks"]``, so ``flask worker`` calls them on
every round. A long import keeps the outbox moving between its batches; asked to
stop (SIGTERM), it stops after the batch in hand and is queued again, to resume.
The import is leased to the worker, renewed after every batch: if the worker dies
(kill -9, out of memory), another takes it over once the lease runs out and
resumes after the last batch written.
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta

from flask import current_app

from ..services import bookings_import as service

log = logging.getLogger(__name__)

OUTBOX_EVERY_SECONDS = 2.0  # how often a long import lets the outbox deliver
PREVIEW_HOURS = 24  # an unconfirmed preview's file is kept this long (IMPORT_PREVIEW_HOURS)
EXPIRE_EVERY_SECONDS = 600.0  # how often the worker looks for them


def run_queued_imports(worker) -> None:
    """Run the oldest confirmed import, if any (one per call)."""
    import_id = service.claim_next_import()
    if import_id is None:
        return
    last_delivery = time.monotonic()

    def between_batches() -> None:
        nonlocal last_delivery
        service.renew_lease(import_id)
        if time.monotonic() - last_delivery >= current_app.config.get("IMPORT_OUTBOX_EVERY_SECONDS",
                                                                      OUTBOX_EVERY_SECONDS):
            worker.run_once()  # emails of the bookings written so far start going out
            last_delivery = time.monotonic()

    service.run_import(import_id, should_stop=worker.stop_event.is_set, between_batches=between_batches)


def expire_previews(worker) -> None:
    """Every ten minutes: discard the files of previews older than IMPORT_PREVIEW_HOURS."""
    if not worker.due("expire import previews", EXPIRE_EVERY_SECONDS):
        return
    hours = current_app.config.get("IMPORT_PREVIEW_HOURS", PREVIEW_HOURS)
    expired = service.expire_previews(timedelta(hours=hours))
    if expired:
        log.info("discarded the files of %d import preview(s) not confirmed within %s h", expired, hours)
