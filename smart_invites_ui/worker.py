"""``flask --app app worker``: delivers the outbox (and polls IMAP when configured).

SIGTERM or SIGINT asks it to stop: the message in hand is finished, the rest of
the batch is handed back, and the process exits.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from flask import Flask, current_app

from .extensions import db
from .models import OutboxKind
from .services import outbox
from .services.delivery import email_deliverer

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, app: Flask, worker_id: str | None = None):
        self.app = app
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.stop_event = threading.Event()
        self.next_due: dict[str, float] = {}  # a periodic duty's name -> when it is due next (monotonic)

    def run_once(self) -> outbox.DeliveryStats:
        """Claim and deliver one batch; returns what happened.

        With ``OUTBOX_CONNECTIONS`` above 1, the batch is delivered in that many groups side
        by side, each on a thread with its own SMTP connection and database session
        (``outbox.split_claim`` keeps each recipient's rows in one group, in order): a relay on
        the internet takes tens of milliseconds per message, which one connection waits out
        message by message."""
        with self.app.app_context():
            config = current_app.config
            try:
                ids = outbox.claim(config["OUTBOX_BATCH_SIZE"], self.worker_id, config["OUTBOX_LEASE_SECONDS"])
                if not ids:
                    return outbox.DeliveryStats()
                groups = outbox.split_claim(ids, config["OUTBOX_CONNECTIONS"])
            finally:
                db.session.remove()
        if len(groups) == 1:
            return self._deliver(ids)
        with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="outbox") as pool:
            done = [pool.submit(self._deliver, group) for group in groups]
        stats = outbox.DeliveryStats(ids=list(ids))
        for future in done:  # (each group's outcomes are committed already; a failure is raised here)
            delivered = future.result()
            for name in ("sent", "failed", "retried", "superseded"):
                setattr(stats, name, getattr(stats, name) + getattr(delivered, name))
        return stats

    def _deliver(self, ids: list[int]) -> outbox.DeliveryStats:
        """Deliver claimed rows on an SMTP connection and a database session of their own."""
        with self.app.app_context():
            emails = email_deliverer()
            try:
                return outbox.deliver_claimed(ids, self.deliverers(emails), should_stop=self.stop_event.is_set)
            finally:
                emails.close()
                db.session.remove()

    def deliverers(self, emails) -> dict:
        from .services.callback_delivery import deliver_callback_message

        return {OutboxKind.EMAIL: emails, OutboxKind.CALLBACK: deliver_callback_message}

    def run_until_idle(self, max_batches: int = 1000) -> None:
        """Deliver everything that is due now (tests and one-off runs)."""
        for _ in range(max_batches):
            stats = self.run_once()
            if not stats.ids:
                return

    def run_everything_once(self) -> None:
        """`flask worker --once`: the background duties (IMAP poll, imports), then the outbox."""
        self.run_hooks()
        self.run_until_idle()

    def run(self) -> None:
        poll = self.app.config["WORKER_POLL_SECONDS"]
        log.info("worker %s started", self.worker_id)
        while not self.stop_event.is_set():
            try:
                stats = self.run_once()
                self.run_hooks()
            except Exception:  # keep the worker alive through a database blip
                log.exception("worker iteration failed")
                stats = outbox.DeliveryStats()
                self.stop_event.wait(5)
            if not stats.ids:
                self.stop_event.wait(poll)
        log.info("worker %s stopped", self.worker_id)

    def run_hooks(self) -> None:
        """Other background duties (IMAP polling, imports) that features register
        in ``app.extensions["worker_hooks"]``; each is called with the worker."""
        for hook in self.app.extensions.get("worker_hooks", []):
            with self.app.app_context():
                try:
                    hook(self)
                finally:
                    db.session.remove()

    def due(self, duty: str, every_seconds: float) -> bool:
        """Whether a hook's periodic ``duty`` is due (the first time it is asked, and then
        every ``every_seconds``); when it is, it counts as done from now."""
        now = time.monotonic()
        if now < self.next_due.get(duty, 0.0):
            return False
        self.next_due[duty] = now + every_seconds
        return True

    def install_signal_handlers(self) -> None:
        def stop(signum, frame):
            log.info("received signal %s, finishing the message in hand", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

