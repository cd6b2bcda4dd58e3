"""The worker's part of inbound mail, called on every round of ``flask worker``
(registered in ``app.extensions["worker_hooks"]``): poll ``IMAP_URL`` every
``IMAP_POLL_SECONDS``, and process stored messages that nobody is processing
(too big to read inline, or left half-way by a process that died)."""
from __future__ import annotations

import logging

from flask import current_app

from ..extensions import db
from ..services import imap_poller, replies

log = logging.getLogger(__name__)

IMAP_POLL_SECONDS = 30.0
IMAP_POLL = "imap poll"  # the duty's name for ``Worker.due``


def poll_inbound(worker) -> None:
    config = current_app.config
    if config.get("IMAP_URL") and worker.due(IMAP_POLL, float(config.get("IMAP_POLL_SECONDS", IMAP_POLL_SECONDS))):
        try:
            imap_poller.poll(config["IMAP_URL"], should_stop=worker.stop_event.is_set)
        except imap_poller.ImapError as exc:
            log.warning("IMAP poll failed: %s", exc)
        except Exception:
            log.exception("IMAP poll failed")
            db.session.rollback()
    try:
        replies.process_pending(should_stop=worker.stop_event.is_set)
    except Exception:  # a database blip: the messages stay stored and are tried next round
        log.exception("processing stored inbound messages failed")
        db.session.rollback()
