"""Replies read from a mailbox (``IMAP_URL``) by the worker, against a real Dovecot.

The fixture starts Debian's ``/usr/sbin/dovecot`` (package ``dovecot-imapd``; ``.ci/run``
installs it) on loopback ports with a throwaway configuration: a maildir in a temporary
directory, one user in a passwd-file, IMAPS and STARTTLS with a self-signed certificate
that the tests trust through ``SSL_CERT_FILE``.
"""
from __future__ import annotations

import imaplib
import os
import pwd
import grp
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from smart_invites_ui.config import MailFrom
from smart_invites_ui.domain import RecipientStatus
from smart_invites_ui.extensions import db
from smart_invites_ui.models import InboundMessage, InboundOutcome, Invite, Reply
from smart_invites_ui.services import imap_poller, replies
from smart_invites_ui.services.invite_mail import invite_ics
from smart_invites_ui.services.itip import build_reply_email
from smart_invites_ui.worker import Worker
from tests.conftest import free_port, make_invite

DOVECOT = "/usr/sbin/dovecot"
FIXTURES = Path(__file__).parent / "fixtures" / "replies"
USER, PASSWORD = "invites@example.org", "mail box/pass%word@1;"  # no ":" (the passwd-file separator)

pytestmark = pytest.mark.skipif(not os.path.exists(DOVECOT),
                                reason=f"{DOVECOT} is missing: install Debian's dovecot-imapd (as .ci/run does)")


@dataclass
class Dovecot:
    host: str
    imap_port: int
    imaps_port: int
    cert: str
    log: Path

    def url(self, scheme: str = "imaps", password: str = PASSWORD, mailbox: str = "INBOX") -> str:
        from urllib.parse import quote

        port = self.imaps_port if scheme == "imaps" else self.imap_port
        return f"{scheme}://{quote(USER, safe='')}:{quote(password, safe='')}@{self.host}:{port}/{mailbox}"

    def connect(self) -> imaplib.IMAP4_SSL:
        conn = imaplib.IMAP4_SSL(self.host, self.imaps_port,
                                 ssl_context=ssl.create_default_context(cafile=self.cert), timeout=10)
        conn.login(USER, PASSWORD)
        return conn

    def append(self, *messages: bytes, mailbox: str = "INBOX") -> None:
        conn = self.connect()
        try:
            for raw in messages:
                assert conn.append(mailbox, None, None, raw)[0] == "OK"
        finally:
            conn.logout()

    def reset(self) -> None:
        conn = self.connect()
        try:
            for folder in ("Processed", "Failed"):
                conn.delete(f'"{folder}"')
            conn.select("INBOX")
            if conn.uid("SEARCH", None, "ALL")[1][0]:
                conn.uid("STORE", "1:*", "+FLAGS.SILENT", r"(\Deleted)")
                conn.expunge()
        finally:
            conn.logout()

    def contents(self) -> dict[str, list[bytes]]:
        """Every folder's messages (undeleted), read without marking them."""
        conn = self.connect()
        try:
            folders = {}
            for name in ("INBOX", "Processed", "Failed"):
                if conn.select(f'"{name}"', readonly=True)[0] != "OK":
                    continue
                uids = conn.uid("SEARCH", None, "UNDELETED")[1][0].split()
                folders[name] = [conn.uid("FETCH", uid, "(BODY.PEEK[])")[1][0][1] for uid in uids]
            return folders
        finally:
            conn.logout()


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def _users() -> tuple[str, str, str, int, int]:
    """(internal user, its group, login user, mail uid, mail gid) for this Dovecot.

    As root, Dovecot refuses to run its login process or mail access as root: use the
    users Debian's package creates. Otherwise everything runs as the current user."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.getuid())
        return me.pw_name, grp.getgrgid(me.pw_gid).gr_name, me.pw_name, me.pw_uid, me.pw_gid
    try:
        internal, login = pwd.getpwnam("dovecot"), pwd.getpwnam("dovenull")
    except KeyError:
        pytest.skip("running as root, Dovecot needs the users 'dovecot' and 'dovenull' (made by dovecot-core)")
    return internal.pw_name, grp.getgrgid(internal.pw_gid).gr_name, login.pw_name, internal.pw_uid, internal.pw_gid


CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
instance_name = smart-invites-test-{imap_port}
log_path = {root}/dovecot.log
ssl = yes
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
# Loopback only: LOGIN without TLS is allowed (Dovecot 2.3's name for it).
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = {internal}
default_internal_group = {internal_group}
default_login_user = {login}
first_valid_uid = {uid}
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
  # No growing delay for a client that failed to log in: a test logs in with a wrong password.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


@pytest.fixture(scope="module")
def dovecot_server():
    internal, internal_group, login, uid, gid = _users()
    root = Path(tempfile.mkdtemp(prefix="dovecot-test-"))
    root.chmod(0o755)  # the mail user must reach its maildir
    (root / "mail").mkdir()
    os.chown(root / "mail", uid, gid)
    cert, _ = _self_signed_certificate(root)
    (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
    imap_port, imaps_port = free_port(), free_port()
    (root / "dovecot.conf").write_text(CONFIG.format(root=root, internal=internal, internal_group=internal_group,
                                                     login=login, uid=uid, gid=gid, imap_port=imap_port,
                                                     imaps_port=imaps_port))
    process = subprocess.Popen([DOVECOT, "-F", "-c", str(root / "dovecot.conf")],
                               stdout=subprocess.DEVNULL, stderr=open(root / "stderr.log", "wb"))
    server = Dovecot("127.0.0.1", imap_port, imaps_port, str(cert), root / "dovecot.log")
    try:
        _wait_for(server, process, root)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dovecot(dovecot_server, monkeypatch):
    """The server with an empty mailbox, trusted by the worker's default TLS context."""
    dovecot_server.reset()
    monkeypatch.setenv("SSL_CERT_FILE", dovecot_server.cert)
    return dovecot_server


def _wait_for(server: Dovecot, process: subprocess.Popen, root: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            server.connect().logout()
            return
        except (OSError, imaplib.IMAP4.error):
            time.sleep(0.05)
    logs = "".join(p.read_text(errors="replace") for p in (root / "stderr.log", root / "dovecot.log") if p.exists())
    pytest.fail(f"Dovecot did not start:\n{logs}")


@pytest.fixture
def mailbox_app(app, dovecot):
    app.config.update(MAIL_FROM=MailFrom("invites", "example.org"), IMAP_URL=dovecot.url())
    return app


def reply_to(invite: Invite, email: str = "ann@example.org", partstat: str = "ACCEPTED", **kwargs) -> bytes:
    return build_reply_email(shape=kwargs.pop("shape", "google"), invite_ics=invite_ics(invite),
                             attendee_email=email, partstat=partstat,
                             to_address=f"invites+{invite.reply_token}@example.org", **kwargs)


def run_worker_round(app) -> None:
    """One round of `flask worker`'s background duties (the IMAP poll among them)."""
    Worker(app, worker_id="test").run_hooks()
    db.session.expire_all()


def kept() -> list[InboundMessage]:
    db.session.expire_all()
    return db.session.scalars(select(InboundMessage).order_by(InboundMessage.id)).all()


def test_the_worker_applies_replies_from_the_mailbox_and_files_every_message(mailbox_app, dovecot):
    invite = make_invite()
    accepted = reply_to(invite)
    forwarded = (FIXTURES / "forwarded_request.eml").read_bytes()
    garbage = b"Subject: not a reply\r\n\r\nJust some words.\r\n"
    dovecot.append(accepted, forwarded, garbage)

    run_worker_round(mailbox_app)

    assert db.session.get(Invite, invite.id).recipient("ann@example.org").status == RecipientStatus.ACCEPTED
    assert [(m.source, m.outcome) for m in kept()] == [
        ("imap", InboundOutcome.APPLIED), ("imap", InboundOutcome.IGNORED), ("imap", InboundOutcome.ERROR)]
    folders = dovecot.contents()
    assert folders["INBOX"] == []
    assert [raw.replace(b"\r\n", b"\n") for raw in folders["Processed"]] == [
        accepted.replace(b"\r\n", b"\n"), forwarded.replace(b"\r\n", b"\n")]
    assert len(folders["Failed"]) == 1 and b"Just some words." in folders["Failed"][0]


def test_nothing_is_read_twice(mailbox_app, dovecot):
    invite = make_invite()
    dovecot.append(reply_to(invite))
    run_worker_round(mailbox_app)

    imap_poller.poll(dovecot.url())  # a later poll finds nothing new
    dovecot.append(reply_to(invite, "bob@example.org", "DECLINED"))
    stats = imap_poller.poll(dovecot.url())

    assert (stats.seen, stats.stored) == (1, 1)
    assert [m.outcome for m in kept()] == [InboundOutcome.APPLIED, InboundOutcome.APPLIED]
    assert len(dovecot.contents()["Processed"]) == 2


def test_starttls_is_used_on_imap_urls(mailbox_app, dovecot):
    invite = make_invite()
    dovecot.append(reply_to(invite, partstat="TENTATIVE"))
    mailbox_app.config["IMAP_URL"] = dovecot.url("imap")

    run_worker_round(mailbox_app)

    assert db.session.get(Invite, invite.id).recipient("ann@example.org").status == RecipientStatus.TENTATIVE
    logins = [line for line in dovecot.log.read_text().splitlines() if "Login: user=<invites@example.org>" in line]
    assert logins and all(", TLS," in line for line in logins)


class _ImapWithoutStartTls:
    """A pretend IMAP server on loopback that offers no STARTTLS and records what it is sent."""

    def __init__(self):
        self.received: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
            for line in lines:
                self.received.append(line)
                tag, _, command = line.decode().partition(" ")
                if command.upper().startswith("CAPABILITY"):
                    conn.sendall(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag.encode() + b" OK done\r\n")
                elif command.upper().startswith("LOGOUT"):
                    conn.sendall(b"* BYE\r\n" + tag.encode() + b" OK bye\r\n")
                    return
                else:
                    conn.sendall(tag.encode() + b" NO not here\r\n")


def test_no_password_travels_in_clear_text_to_another_host(app, monkeypatch):
    server = _ImapWithoutStartTls()
    monkeypatch.setattr(imap_poller, "_is_loopback", lambda host: False)  # as if it were across a network

    with pytest.raises(imap_poller.ImapError, match="does not offer STARTTLS"):
        imap_poller.poll(f"imap://{USER}:secret@127.0.0.1:{server.port}/INBOX")

    assert not any(b"LOGIN" in line.upper() for line in server.received)


def test_a_message_stored_but_not_moved_is_not_stored_again(mailbox_app, dovecot, monkeypatch):
    """The worker dies between committing the message and moving it out of the mailbox."""
    invite = make_invite()
    dovecot.append(reply_to(invite, partstat="DECLINED"))

    def killed(*args):
        raise SystemExit("worker killed")

    monkeypatch.setattr(imap_poller, "_move", killed)
    with pytest.raises(SystemExit):
        imap_poller.poll(dovecot.url())
    assert [m.outcome for m in kept()] == [InboundOutcome.APPLIED]
    assert len(dovecot.contents()["INBOX"]) == 1  # still there: nothing lost

    monkeypatch.undo()
    monkeypatch.setenv("SSL_CERT_FILE", dovecot.cert)
    stats = imap_poller.poll(dovecot.url())

    assert (stats.stored, stats.already_stored) == (0, 1)
    assert [m.outcome for m in kept()] == [InboundOutcome.APPLIED]
    assert db.session.scalar(select(func.count()).select_from(Reply)) == 1
    folders = dovecot.contents()
    assert (len(folders["INBOX"]), len(folders["Processed"])) == (0, 1)


def test_a_message_stored_but_not_processed_is_processed_by_the_next_poll(mailbox_app, dovecot, monkeypatch):
    """The worker dies after committing the message, while reading it."""
    invite = make_invite()
    dovecot.append(reply_to(invite))

    def killed(*args, **kwargs):
        raise SystemExit("worker killed")

    monkeypatch.setattr(replies, "parse_message", killed)
    with pytest.raises(SystemExit):
        imap_poller.poll(dovecot.url())
    assert [m.outcome for m in kept()] == [InboundOutcome.RECEIVED]

    monkeypatch.undo()
    monkeypatch.setenv("SSL_CERT_FILE", dovecot.cert)
    imap_poller.poll(dovecot.url())  # soon after: its reader may still be at work, so it waits
    assert [m.outcome for m in kept()] == [InboundOutcome.RECEIVED]
    assert len(dovecot.contents()["INBOX"]) == 1

    [message] = kept()
    message.processed_at -= replies.ORPHAN_AFTER  # time passes: that reader is gone
    db.session.commit()
    stats = imap_poller.poll(dovecot.url())

    assert (stats.stored, stats.already_stored) == (0, 1)
    assert [m.outcome for m in kept()] == [InboundOutcome.APPLIED]
    assert db.session.get(Invite, invite.id).recipient("ann@example.org").status == RecipientStatus.ACCEPTED
    assert len(dovecot.contents()["Processed"]) == 1


def test_one_worker_polls_a_mailbox_at_a_time(mailbox_app, dovecot):
    """Several workers on PostgreSQL: the one that finds another polling skips its round."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("the poll lock is PostgreSQL's (with SQLite there is one worker)")
    dovecot.append(reply_to(make_invite()))
    settings = imap_poller.ImapSettings.from_url(dovecot.url())

    with imap_poller._one_poller_at_a_time(settings) as first:  # another worker, mid-poll
        assert first
        assert imap_poller.poll(dovecot.url()).skipped

    assert not imap_poller.poll(dovecot.url()).skipped
    assert [m.outcome for m in kept()] == [InboundOutcome.APPLIED]


def test_servers_without_move_get_copy_delete_expunge(mailbox_app, dovecot, monkeypatch):
    invite = make_invite()
    dovecot.append(reply_to(invite), b"Subject: junk\r\n\r\njunk\r\n")
    connect = imap_poller._connect

    def without_move(*args):
        conn = connect(*args)
        conn.capabilities = tuple(c for c in conn.capabilities if c != "MOVE")
        return conn

    monkeypatch.setattr(imap_poller, "_connect", without_move)
    stats = imap_poller.poll(dovecot.url())

    assert stats.moved == {"Processed": 1, "Failed": 1}
    folders = dovecot.contents()
    assert (len(folders["INBOX"]), len(folders["Processed"]), len(folders["Failed"])) == (0, 1, 1)


def test_folders_that_exist_are_reused(mailbox_app, dovecot):
    conn = dovecot.connect()
    assert conn.create('"Processed"')[0] == "OK"
    conn.logout()
    dovecot.append(b"Subject: x\r\n\r\ny\r\n")

    imap_poller.poll(dovecot.url())
    dovecot.append(b"Subject: x2\r\n\r\ny\r\n")
    imap_poller.poll(dovecot.url())

    assert len(dovecot.contents()["Failed"]) == 2


def test_a_message_over_the_limit_keeps_its_headers_and_goes_to_failed(mailbox_app, dovecot, monkeypatch):
    monkeypatch.setattr(replies, "MAX_INBOUND_BYTES", 50_000)
    dovecot.append(b"From: ann@example.org\r\nSubject: huge\r\n\r\n" + b"x" * 60_000 + b"\r\n")

    imap_poller.poll(dovecot.url())

    [message] = kept()
    assert message.outcome == InboundOutcome.ERROR
    assert "MB limit: only its headers are kept here" in message.reason
    assert message.raw.startswith(b"From: ann@example.org") and len(message.raw) < 1000
    assert len(dovecot.contents()["Failed"]) == 1


def test_a_wrong_password_is_logged_and_the_worker_carries_on(mailbox_app, dovecot):
    dovecot.append(reply_to(make_invite()))
    mailbox_app.config["IMAP_URL"] = dovecot.url(password="wrong")

    run_worker_round(mailbox_app)  # does not raise

    assert kept() == []  # and the message waits in the mailbox for a fixed IMAP_URL


def test_the_worker_polls_at_its_interval(mailbox_app, dovecot):
    mailbox_app.config["IMAP_POLL_SECONDS"] = 3600
    worker = Worker(mailbox_app, worker_id="test")
    worker.run_hooks()  # the first round polls
    dovecot.append(reply_to(make_invite()))

    worker.run_hooks()  # too soon for the next poll

    assert kept() == []
    worker.next_due.clear()  # the interval has passed
    worker.run_hooks()
    assert [m.outcome for m in kept()] == [InboundOutcome.APPLIED]
