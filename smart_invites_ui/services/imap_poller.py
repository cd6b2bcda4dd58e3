"""Reading reply emails from a mailbox (``IMAP_URL``), for deploys without an inbound-parse service.

Each new message is fetched, stored (committed), processed, and only then moved out of the
polled mailbox, to ``Processed`` (applied, duplicate, stale, ignored) or ``Failed`` (unmatched,
error). So nothing is lost if the worker dies midway: a message stored but not yet moved is
still in the mailbox, and the next poll recognises it by its SHA-256 instead of storing it twice.

``imaps://user:pass@host:993/INBOX`` uses TLS from the first byte; ``imap://`` upgrades with
STARTTLS, and logs in without it only to a loopback address (development, tests).
"""
from __future__ import annotations

import hashlib
import imaplib
import ipaddress
import logging
import re
import ssl
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from sqlalchemy import select, text

from ..extensions import db
from ..models import InboundMessage, InboundOutcome
from . import replies

log = logging.getLogger(__name__)

PROCESSED = "Processed"
FAILED = "Failed"
#: Messages read per poll; the rest wait for the next one.
MAX_PER_POLL = 200
_FAILED_OUTCOMES = (InboundOutcome.UNMATCHED, InboundOutcome.ERROR)
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")


class ImapError(Exception):
    """The mailbox could not be reached or read; the message says why."""


@dataclass(frozen=True)
class ImapSettings:
    host: str
    port: int
    username: str
    password: str
    mailbox: str
    implicit_tls: bool

    @classmethod
    def from_url(cls, url: str) -> "ImapSettings":
        parts = urlsplit(url)
        if parts.scheme not in ("imap", "imaps"):
            raise ImapError("IMAP_URL must start with imaps:// or imap://")
        implicit_tls = parts.scheme == "imaps"
        try:
            port = parts.port or (993 if implicit_tls else 143)
        except ValueError as exc:
            raise ImapError(f"IMAP_URL has a bad port: {exc}") from None
        mailbox = unquote(parts.path.lstrip("/")) or "INBOX"
        if not parts.hostname or not parts.username:
            raise ImapError("IMAP_URL needs a user and a host: imaps://user:password@host/INBOX")
        return cls(host=parts.hostname, port=port, username=unquote(parts.username),
                   password=unquote(parts.password or ""), mailbox=mailbox, implicit_tls=implicit_tls)


@dataclass
class PollStats:
    seen: int = 0  # messages in the mailbox when the poll began
    stored: int = 0  # new messages kept
    already_stored: int = 0  # kept by an earlier poll that died before moving them
    moved: dict[str, int] = field(default_factory=dict)  # folder -> count
    skipped: bool = False  # another worker was polling this mailbox


def poll(url: str, *, ssl_context: ssl.SSLContext | None = None, should_stop=lambda: False,
         limit: int = MAX_PER_POLL, timeout: float = 30.0) -> PollStats:
    """Read the new messages of the mailbox once; raises ImapError when it cannot be reached.

    With several workers, one polls a mailbox at a time (the others skip that round)."""
    settings = ImapSettings.from_url(url)
    with _one_poller_at_a_time(settings) as ours:
        if not ours:
            return PollStats(skipped=True)
        try:
            conn = _connect(settings, ssl_context or ssl.create_default_context(), timeout)
        except (OSError, imaplib.IMAP4.error, ssl.SSLError) as exc:
            raise ImapError(f"cannot log in to {settings.host}:{settings.port}: {exc}") from exc
        try:
            return _poll(conn, settings, should_stop, limit)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ImapError(f"IMAP error on {settings.host}: {exc}") from exc
        finally:
            try:
                conn.logout()
            except Exception:  # the connection is going away either way
                pass


@contextmanager
def _one_poller_at_a_time(settings: ImapSettings) -> Iterator[bool]:
    """On PostgreSQL, a session advisory lock per mailbox, held for the whole poll on a connection
    of its own: two workers reading one mailbox would both fetch each new message. (With SQLite
    there is one worker.)"""
    if db.engine.dialect.name != "postgresql":
        yield True
        return
    key = zlib.crc32(f"imap-poll:{settings.host}:{settings.port}:{settings.username}:{settings.mailbox}".encode())
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock:
        ours = bool(lock.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
        try:
            yield ours
        finally:
            if ours:
                lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})


def _connect(settings: ImapSettings, context: ssl.SSLContext, timeout: float) -> imaplib.IMAP4:
    if settings.implicit_tls:
        conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(settings.host, settings.port, ssl_context=context, timeout=timeout)
    else:
        conn = imaplib.IMAP4(settings.host, settings.port, timeout=timeout)
        if "STARTTLS" in conn.capabilities:
            conn.starttls(ssl_context=context)
        elif not _is_loopback(settings.host):
            conn.shutdown()
            raise ImapError(f"{settings.host} does not offer STARTTLS; the password would travel in clear text "
                            "(use imaps://)")
    conn.login(settings.username, settings.password)
    # Servers announce more (MOVE, UIDPLUS) once logged in.
    data = _ok(conn.capability(), "CAPABILITY")
    conn.capabilities = tuple(data[-1].decode("ascii", "replace").upper().split())
    return conn


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _quote(mailbox: str) -> str:
    if not mailbox.isascii():
        raise ImapError(f"mailbox names must be ASCII, got {mailbox!r}")
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ok(response: tuple, what: str) -> list:
    typ, data = response
    if typ != "OK":
        detail = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
        raise ImapError(f"{what}: {typ} {detail}".strip())
    return data


def _poll(conn: imaplib.IMAP4, settings: ImapSettings, should_stop, limit: int) -> PollStats:
    for folder in (PROCESSED, FAILED):
        _ensure_folder(conn, folder)
    _ok(conn.select(_quote(settings.mailbox)), f"SELECT {settings.mailbox}")
    uids = _ok(conn.uid("SEARCH", None, "UNDELETED"), "SEARCH")[0].split()
    stats = PollStats(seen=len(uids))
    for uid in uids[:limit]:
        if should_stop():
            break
        folder = _take(conn, uid.decode("ascii"), stats)
        if folder is not None:
            _move(conn, uid.decode("ascii"), folder)
            stats.moved[folder] = stats.moved.get(folder, 0) + 1
    if stats.seen:
        log.info("IMAP %s: %d message(s), %d stored, %d already stored, moved %s", settings.mailbox, stats.seen,
                 stats.stored, stats.already_stored, stats.moved)
    return stats


def _ensure_folder(conn: imaplib.IMAP4, folder: str) -> None:
    found = _ok(conn.list('""', _quote(folder)), f"LIST {folder}")
    if any(item for item in found):
        return
    typ, data = conn.create(_quote(folder))
    if typ != "OK" and b"ALREADYEXISTS" not in b" ".join(d for d in data if isinstance(d, bytes)).upper():
        raise ImapError(f"cannot create the folder {folder}: {data!r}")


def _take(conn: imaplib.IMAP4, uid: str, stats: PollStats) -> str | None:
    """Store and process one message; the folder it goes to, or None to leave it for later."""
    size_data = _ok(conn.uid("FETCH", uid, "(RFC822.SIZE)"), "FETCH size")
    size_match = _SIZE.search(b" ".join(d if isinstance(d, bytes) else d[0] for d in size_data if d))
    if size_match is None:
        return None  # gone meanwhile (another client expunged it)
    size = int(size_match.group(1))
    if size > replies.MAX_INBOUND_BYTES:
        raw = _fetch(conn, uid, "BODY.PEEK[HEADER]")
        reason = (f"the message is {size / 2**20:.1f} MB, over the {replies.MAX_INBOUND_BYTES // 2**20} MB limit: "
                  f"only its headers are kept here; the message is in the {FAILED} folder")
    else:
        raw = _fetch(conn, uid, "BODY.PEEK[]")
        reason = ""
    if raw is None:
        return None
    message = _already_stored(raw)
    if message is not None:
        stats.already_stored += 1
        outcome = message.outcome
        if outcome == InboundOutcome.RECEIVED and replies.is_orphaned(message):
            outcome = replies.process_inbound(message)  # its reader died; else it is being read now
    elif reason:
        outcome = replies.store_refused(raw, "imap", reason).outcome
        stats.stored += 1
    else:
        outcome = replies.receive_claimed(raw, "imap")  # committed before the move
        stats.stored += 1
    if outcome == InboundOutcome.RECEIVED:
        return None  # another process holds it; the next poll moves it
    return FAILED if outcome in _FAILED_OUTCOMES else PROCESSED


def _fetch(conn: imaplib.IMAP4, uid: str, item: str) -> bytes | None:
    for part in _ok(conn.uid("FETCH", uid, f"({item})"), f"FETCH {item}"):
        if isinstance(part, tuple) and len(part) == 2 and isinstance(part[1], bytes):
            return part[1]
    return None


def _already_stored(raw: bytes) -> InboundMessage | None:
    digest = hashlib.sha256(raw).hexdigest()
    return db.session.scalars(
        select(InboundMessage).where(InboundMessage.raw_sha256 == digest, InboundMessage.source == "imap")
        .order_by(InboundMessage.id.desc()).limit(1)
    ).first()


def _move(conn: imaplib.IMAP4, uid: str, folder: str) -> None:
    """MOVE when the server has it; else COPY, flag \\Deleted and expunge that message."""
    if "MOVE" in conn.capabilities:
        _ok(conn.uid("MOVE", uid, _quote(folder)), f"MOVE to {folder}")
        return
    _ok(conn.uid("COPY", uid, _quote(folder)), f"COPY to {folder}")
    _ok(conn.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)"), "STORE \\Deleted")
    if "UIDPLUS" in conn.capabilities:
        _ok(conn.uid("EXPUNGE", uid), "UID EXPUNGE")
    else:
        _ok(conn.expunge(), "EXPUNGE")
