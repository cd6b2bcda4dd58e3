"""Benchmark of reading attendees' reply emails (issue 4), not a test.

    .venv/bin/python bench/replies_bench.py [--messages 2000] [--invites 200] [--profile]

On a fresh SQLite database in a temporary directory (and PostgreSQL too when
``BENCH_DATABASE_URL`` is set; its tables are dropped and rebuilt), pinned to one CPU core:

- parse: ``parse_message`` alone, on real-shaped replies (Google, Outlook, Apple,
  Thunderbird; one in ten a COUNTER with a proposed time);
- store + process: ``replies.receive``, what ``POST /inbound/email``, the IMAP poller and
  the demo buttons do: store the raw message (committed), claim it, parse it, apply the
  reply through ``apply_notification`` (history, status, version, callbacks), record the outcome;
- HTTP: the same through ``POST /inbound/email`` with the test client;
- a bare Flask route served the same way, for a machine-independent ratio (SPEC §7).

Target (issue 4): store + process >= 500 reply emails per second on one core.
``--profile`` prints where store + process spends its time (pyinstrument).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGET_PER_S = 500.0
SECRET = "bench-secret"


def make_app(database_url: str):
    from smart_invites_ui import create_app
    from smart_invites_ui.config import MailFrom, database_url as driver_url

    return create_app({"TESTING": True, "SECRET_KEY": "bench", "RATELIMIT_ENABLED": False, "SMTP_URL": "",
                       "SQLALCHEMY_DATABASE_URI": driver_url(database_url, "/tmp"), "INBOUND_EMAIL_SECRET": SECRET,
                       "MAIL_FROM": MailFrom("invites", "clinic.example")})


def build_schema(app) -> None:
    from flask_migrate import upgrade
    from sqlalchemy import text

    from smart_invites_ui.extensions import db

    if db.engine.dialect.name == "postgresql":
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    upgrade(directory=str(ROOT / "migrations"))


def make_messages(invites: int, messages: int) -> list[bytes]:
    """``messages`` distinct replies to ``invites`` invites of five recipients each."""
    from smart_invites_ui.domain import EventData, Proposal
    from smart_invites_ui.services import invites as invite_service
    from smart_invites_ui.services.invite_mail import invite_ics
    from smart_invites_ui.services.itip import build_reply_email

    start = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) + timedelta(days=30)
    made = []
    for number in range(invites):
        begins = start + timedelta(hours=number)
        made.append(invite_service.create_invite(
            event=EventData(summary=f"Appointment {number}", start=begins, end=begins + timedelta(minutes=30),
                            tzid="Europe/London", location="Room 3"),
            recipients=[invite_service.NewRecipient(f"person{number}.{k}@example.org", f"Person {k}")
                        for k in range(5)],
            organizer_name="Riverside Clinic"))
    shapes = ("google", "outlook", "apple", "thunderbird")
    answers = ("ACCEPTED", "DECLINED", "TENTATIVE")
    icss = [invite_ics(invite) for invite in made]
    stamp = datetime(2030, 1, 1, tzinfo=timezone.utc)
    raws = []
    for n in range(messages):
        invite, ics = made[n % invites], icss[n % invites]
        shape = shapes[n % 4]
        proposal = None
        if n % 10 == 9:
            shape = ("google", "outlook")[n % 2]
            proposal = Proposal(invite.start + timedelta(days=1), invite.end + timedelta(days=1), "Europe/London")
        raws.append(build_reply_email(
            shape=shape, invite_ics=ics, attendee_email=f"person{n % invites}.{(n // invites) % 5}@example.org",
            partstat=answers[n % 3], to_address=f"invites+{invite.reply_token}@clinic.example",
            comment="See you then" if n % 2 else "", proposal=proposal, now=stamp + timedelta(seconds=n)))
    return raws


def measure(database_url: str, invites: int, count: int, profile: bool) -> dict:
    from sqlalchemy import func, select

    from smart_invites_ui import security
    from smart_invites_ui.extensions import db
    from smart_invites_ui.models import InboundMessage, InboundOutcome
    from smart_invites_ui.services import replies
    from smart_invites_ui.services.itip import parse_message

    app = make_app(database_url)
    app.add_url_rule("/bench-bare", "bench_bare", security.public("benchmark")(lambda: "ok"))
    out: dict = {}
    with app.app_context():
        build_schema(app)
        raws = make_messages(invites, count * 2)
        first, second = raws[:count], raws[count:]
        out["mean_kb"] = sum(map(len, raws)) / len(raws) / 1024

        started = time.perf_counter()
        for raw in first:
            parse_message(raw, "invites@clinic.example")
        out["parse_per_s"] = count / (time.perf_counter() - started)

        profiler = None
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler()
            profiler.start()
        started, cpu = time.perf_counter(), time.process_time()
        for raw in first:
            replies.receive(raw, "http")
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        if profiler:
            profiler.stop()
            out["profile"] = profiler.output_text(unicode=True, color=False, show_all=False)
        out["process_per_s"], out["process_cpu_per_s"] = count / elapsed, count / cpu
        outcomes = dict(db.session.execute(select(InboundMessage.outcome, func.count())
                                           .group_by(InboundMessage.outcome)).all())
        out["outcomes"] = {o.value: n for o, n in outcomes.items()}

        client = app.test_client()
        started = time.perf_counter()
        for raw in second:
            response = client.post(f"/inbound/email?secret={SECRET}", data=raw,
                                   headers={"Content-Type": "message/rfc822"})
            assert response.status_code == 200, response.get_data(as_text=True)
        out["http_per_s"] = count / (time.perf_counter() - started)
        applied = db.session.scalar(select(func.count()).select_from(InboundMessage)
                                    .where(InboundMessage.outcome == InboundOutcome.APPLIED))
        out["applied"] = applied

        for _ in range(100):
            client.get("/bench-bare")
        started = time.perf_counter()
        for _ in range(2000):
            client.get("/bench-bare")
        out["bare_per_s"] = 2000 / (time.perf_counter() - started)
        db.session.remove()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--invites", type=int, default=200)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the target says
    import logging

    logging.disable(logging.INFO)

    work = Path(tempfile.mkdtemp(prefix="replies-bench-"))
    databases = [("sqlite", f"sqlite:///{work / 'bench.sqlite3'}")]
    if os.environ.get("BENCH_DATABASE_URL"):
        databases.append(("postgresql", os.environ["BENCH_DATABASE_URL"]))
    failures = []
    for name, url in databases:
        r = measure(url, args.invites, args.messages, args.profile)
        print(f"[{name}] {args.messages:,} reply emails (mean {r['mean_kb']:.1f} KB; Google, Outlook, Apple, "
              f"Thunderbird; 1 in 10 a COUNTER) to {args.invites} invites, one core")
        print(f"  parse only       {r['parse_per_s']:8,.0f} /s")
        print(f"  store + process  {r['process_per_s']:8,.0f} /s  (CPU-bound rate {r['process_cpu_per_s']:,.0f} /s; "
              f"{r['process_per_s'] / r['bare_per_s']:.3f} x the bare route)  outcomes {r['outcomes']}")
        print(f"  POST /inbound/email {r['http_per_s']:5,.0f} /s  ({r['http_per_s'] / r['bare_per_s']:.3f} x the bare "
              f"route); applied in all: {r['applied']:,}")
        print(f"  bare Flask route {r['bare_per_s']:8,.0f} requests/s (test client)")
        if "profile" in r:
            print(r["profile"])
        if r["process_per_s"] < TARGET_PER_S:
            failures.append(f"{name}: store + process {r['process_per_s']:.0f}/s < {TARGET_PER_S:.0f}/s")
    print("\n" + ("target met (>= 500 reply emails/s through store + process)" if not failures
                  else "MISSED:\n  " + "\n  ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
