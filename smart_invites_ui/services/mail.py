"""The one place an invite email is built (SPEC §6), and the SMTP transport."""
from __future__ import annotations

import functools
import secrets
import smtplib
import ssl
from dataclasses import dataclass
from email import message_from_bytes
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from email.policy import SMTP, default
from email.utils import format_datetime, make_msgid
from datetime import datetime, timezone
from urllib.parse import unquote, urlsplit

import idna

from ..domain import ITipMethod


class _HeaderRegistry(HeaderRegistry):
    """The email package's header factory, making each header class once.

    ``HeaderRegistry`` creates a new class with ``type()`` for every header it
    parses (CPython 3.11 to 3.13), about half the cost of building and flattening
    an invite email. The class depends only on the registered class for the
    header's name, so it is made once per registered class; the headers, their
    parsing and folding are exactly the library's.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._classes: dict[type, type] = {}
        self._parsed = functools.lru_cache(maxsize=256)(super().__call__)

    def __call__(self, name, value):
        # Every invite email sets the same few dozen MIME header fields (Content-Type:
        # text/plain; charset="utf-8", MIME-Version: 1.0, ...), each parsed anew by the
        # email package. A header object is immutable (a str with its parse tree, which
        # folding only reads), so one parsed from the same name and text is used again.
        if type(value) is str:
            return self._parsed(name, value)
        return super().__call__(name, value)

    def __getitem__(self, name):
        specialised = self.registry.get(name.lower(), self.default_class)
        made = self._classes.get(specialised)
        if made is None:
            made = self._classes[specialised] = super().__getitem__(name)
        return made


# email.policy.SMTP (CRLF line ends, the modern header API) with the header factory above,
# and 7-bit bodies: plain SMTP (no 8BITMIME, which smtplib's sendmail does not ask for)
# carries 7-bit data only, and SMTP's default lets a text part whose lines are all short
# go out as raw 8-bit UTF-8 (the email package then picks quoted-printable or base64).
POLICY = SMTP.clone(header_factory=_HeaderRegistry(), cte_type="7bit")


def single_line(text: str) -> str:
    """Header values are one line: CR/LF in user text must never start a new header."""
    return " ".join(text.split())


def ascii_address(address: str) -> str:
    """The address as plain SMTP carries it: an internationalised domain in its
    ASCII (punycode) form. A non-ASCII mailbox name would need SMTPUTF8, so that
    message fails for good with a clear reason instead of garbling the headers."""
    if address.isascii():
        return address
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        raise DeliveryError(f"{address}: a mailbox name with non-ASCII letters cannot be sent without SMTPUTF8",
                            permanent=True)
    try:
        return f"{local}@{_ascii_domain(domain)}"
    except idna.IDNAError as exc:
        raise DeliveryError(f"{address}: the domain cannot be written in ASCII ({exc})", permanent=True) from exc


@functools.lru_cache(maxsize=256)
def _ascii_domain(domain: str) -> str:
    """A domain as plain SMTP and a Message-ID carry it: an internationalised one in its ASCII
    (punycode) form. Raises ``idna.IDNAError`` for one that has none."""
    return domain if domain.isascii() else idna.encode(domain, uts46=True).decode("ascii")


def mailbox(header: str, name: str, address: str) -> Address:
    """A From or To mailbox whose header reads back as exactly this one address.

    Python's email package (3.11, 3.12) can drop the quotes of a long display name
    when it folds the line, so a name holding "," or "<evil@example.org>" would read
    as further addresses. Each candidate is folded and parsed back; a name that does
    not survive is shortened, and failing that left out (the address is what counts).
    """
    addr_spec = ascii_address(address)
    name = single_line(name)
    for candidate in (name, name[:40].rstrip() + "…") if len(name) > 40 else (name,):
        named = Address(display_name=candidate, addr_spec=addr_spec)
        if _reads_back(header, named):
            return named
    return Address(addr_spec=addr_spec)


_ADDRESS_SPECIALS = frozenset('()<>@,:;."[]\\')


def _reads_back(header: str, mailbox: Address) -> bool:
    name = mailbox.display_name
    if not _ADDRESS_SPECIALS.intersection(name) or (name.isascii() and len(header) + len(str(mailbox)) <= 74):
        return True  # nothing to misread, or a line short enough not to be folded
    probe = EmailMessage(policy=POLICY)
    probe[header] = mailbox
    parsed = message_from_bytes(probe.as_bytes(), policy=default)[header].addresses
    # Folding may add or move whitespace inside the name; that is harmless.
    return (len(parsed) == 1 and parsed[0].addr_spec == mailbox.addr_spec
            and "".join(parsed[0].display_name.split()) == "".join(name.split()))


def build_invite_email(
    *,
    ics: bytes,
    method: ITipMethod,
    from_email: str,
    from_name: str,
    subject: str,
    text: str,
    html: str,
) -> EmailMessage:
    """An invite email but for what is each recipient's own (see :func:`address`):
    multipart/mixed > multipart/alternative [text, html, text/calendar] + invite.ics."""
    msg = EmailMessage(policy=POLICY)
    msg["From"] = mailbox("From", from_name, from_email)
    msg["Subject"] = single_line(subject)

    msg.set_content(text, subtype="plain", charset="utf-8")
    msg.add_alternative(html, subtype="html", charset="utf-8")
    calendar_text = ics.decode("utf-8")
    # The email package refuses 7bit for non-ASCII text (INTEROP §1.10).
    cte = "7bit" if calendar_text.isascii() else "quoted-printable"
    msg.add_alternative(
        calendar_text, subtype="calendar", charset="utf-8", cte=cte, params={"method": method.value}
    )
    msg.add_attachment(
        ics, maintype="application", subtype="ics", filename="invite.ics", params={"method": method.value}
    )
    # Each multipart's boundary: 128 random bits, drawn after every text in the message was
    # written, so none of them can hold it. Left unset, flattening draws one and compiles a
    # regular expression for it to search the texts with: about a quarter of building and
    # flattening an invite email, and each pattern pushes another out of the re module's cache.
    for part in msg.walk():
        if part.is_multipart():
            part.set_boundary("=_" + secrets.token_hex(16))
    return msg


def as_bytes(msg: EmailMessage) -> bytes:
    """The message as SMTP carries it (CRLF line ends)."""
    return msg.as_bytes(policy=POLICY)


def address(shared: bytes, *, to_email: str, to_name: str, message_id_domain: str) -> bytes:
    """One recipient's email: their To, a Date and a new Message-ID, then ``shared``, a
    :func:`build_invite_email` message flattened with :func:`as_bytes`, so the email
    package builds and flattens the rest once for every recipient it is the same for."""
    # The To field folded by the policy, as flattening a message writes each field; then the
    # Date (RFC 5322's format, as the email package writes it) and the Message-ID, short ASCII
    # lines made by the email package's own functions (as header objects, the package parsed
    # both again: a third of what each recipient's part of the email cost). ``shared`` begins
    # with the other header fields.
    to = POLICY.fold_binary(*POLICY.header_store_parse("To", mailbox("To", to_name, to_email)))
    own_lines = (f"Date: {format_datetime(datetime.now(timezone.utc))}\r\n"
                 f"Message-ID: {make_msgid(domain=_ascii_domain(message_id_domain))}\r\n").encode("ascii")
    return to + own_lines + shared


class DeliveryError(Exception):
    """A message could not be delivered. ``permanent`` means retrying will not help."""

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    username: str | None
    password: str | None
    implicit_tls: bool

    @classmethod
    def from_url(cls, url: str) -> "SmtpSettings":
        parts = urlsplit(url)
        implicit_tls = parts.scheme == "smtps"
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or (465 if implicit_tls else 587),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=implicit_tls,
        )


class SmtpTransport:
    """Sends many messages over one SMTP connection, reconnecting when it drops.

    ``smtp://`` upgrades with STARTTLS whenever the server offers it; ``smtps://``
    uses TLS from the first byte.
    """

    def __init__(self, settings: SmtpSettings, *, timeout: float = 30.0, ssl_context: ssl.SSLContext | None = None):
        self.settings = settings
        self.timeout = timeout
        self._ssl_context = ssl_context
        self._conn: smtplib.SMTP | None = None

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """Made when TLS is first used: loading the system's CA certificates takes milliseconds."""
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        if s.implicit_tls:
            conn: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=self.timeout, context=self.ssl_context)
        else:
            conn = smtplib.SMTP(s.host, s.port, timeout=self.timeout)
            conn.ehlo()
            if conn.has_extn("starttls"):
                conn.starttls(context=self.ssl_context)
                conn.ehlo()
        if s.username:
            conn.login(s.username, s.password or "")
        return conn

    def send(self, msg: EmailMessage | bytes, *, from_addr: str, to_addrs: list[str]) -> None:
        data = msg if isinstance(msg, bytes) else as_bytes(msg)
        for attempt in (1, 2):
            try:
                if self._conn is None:
                    self._conn = self._connect()
                refused = self._conn.sendmail(from_addr, to_addrs, data)
                if refused:
                    code, reason = next(iter(refused.values()))
                    raise DeliveryError(f"SMTP {code}: {reason.decode(errors='replace')}", permanent=code >= 500)
                return
            except smtplib.SMTPServerDisconnected as exc:
                self._conn = None
                if attempt == 2:
                    raise DeliveryError(f"SMTP server disconnected: {exc}") from exc
            except smtplib.SMTPRecipientsRefused as exc:
                code, reason = next(iter(exc.recipients.values()))
                raise DeliveryError(f"SMTP {code}: {reason.decode(errors='replace')}", permanent=code >= 500) from exc
            except smtplib.SMTPResponseException as exc:
                self.close()
                message = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
                # Bad credentials are fixed by the operator, so keep retrying those.
                permanent = 500 <= exc.smtp_code < 600 and not isinstance(exc, smtplib.SMTPAuthenticationError)
                raise DeliveryError(f"SMTP {exc.smtp_code}: {message}", permanent=permanent) from exc
            except (OSError, smtplib.SMTPException) as exc:
                self.close()
                raise DeliveryError(f"cannot reach SMTP server {self.settings.host}:{self.settings.port}: {exc}") from exc
            except Exception:
                self.close()  # a transaction left half-way would make the next message fail too
                raise

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.quit()
            except (OSError, smtplib.SMTPException):
                pass  # the connection is going away either way
            self._conn = None

    def __enter__(self) -> "SmtpTransport":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
