"""``make bench``: the speed users feel, against what this stack can do on this machine (issue 7).

    .venv/bin/python bench/run.py [--duration 10] [--import-rows 10000,100000]

One run, side by side:

1. the ceiling: a bare Flask route (``bench/ceiling_app.py``) served by gunicorn with the
   app's own ``gunicorn.conf.py`` and 2 workers, measured before the app's first HTTP measure,
   between each two and after the last; each of the app's figures is divided by the mean of
   the ceiling measured just before it and just after (a VM's speed drifts during a run);
2. to 5. the app served exactly as the Procfile says (``gunicorn app:app --config
   gunicorn.conf.py``, ``WEB_CONCURRENCY=2``) over a database seeded with 10,000 invites and
   30,000 recipients through the real import path (``flask import-bookings``): the live
   poll unchanged (204) and changed, the invites list, and signed webhook notifications,
   each a distinct one, checked afterwards in the database;
6. the CSV import (``bench/import_bench.py``'s measured process) at 10,000 and 100,000 rows;
7. ``flask worker`` delivering the seeded outbox to an aiosmtpd server on loopback;
8. reply emails in real clients' shapes, stored, parsed and applied (``replies.receive``,
   what ``POST /inbound/email`` does).

HTTP load comes from ``wrk`` on loopback, bounded in time (2 threads, 32 connections).
Each HTTP measure's notes say where the CPU time went, per request: the server's processes,
PostgreSQL's (when it runs on this machine) and wrk's (``CpuPerRequest``).
Each HTTP figure is divided by the ceiling's, so the ratios hold on any machine (SPEC §7).
The table is printed and appended to ``bench/results/<date>-<database>.md``.

The database is a fresh SQLite file, or, when ``BENCH_DATABASE_URL`` is set, scratch
PostgreSQL databases created next to the one it names and dropped at the end.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

WRK_THREADS = 2
WRK_CONNECTIONS = 32
WEB_WORKERS = "2"
SECRET = "bench-cronofy-secret"
USER_EMAIL = "bench@example.org"
USER_PASSWORD = "bench password, long enough"
USER_AGENT = "smart-invites-bench"  # the session is bound to it ("strong" session protection)
SEED_BOOKINGS = 10_000
SEED_RECIPIENTS_EACH = 3
POLLED_INVITES = 1000
WEBHOOK_RECIPIENTS = 2000  # notifications cycle over them; one recipient's are 2,000 requests apart
STATUSES = ("accepted", "tentative", "declined")
REPLIES = 1000


@dataclass
class Measure:
    key: str
    name: str
    value: float | None  # requests (or rows, emails, replies) per second
    unit: str = "req/s"
    target_ratio: float | None = None  # against the ceiling
    target_abs: str = ""  # an absolute target, said in words
    met_abs: bool | None = None
    notes: list[str] = field(default_factory=list)
    ok: bool = True  # the correctness checks that go with the figure
    ceiling: float | None = None  # the ceiling measured beside this figure (HTTP measures)

    def ratio(self, ceiling: float) -> float | None:
        """To the ceiling measured beside this figure, or else to ``ceiling``."""
        ceiling = self.ceiling or ceiling
        return None if self.value is None or not ceiling else self.value / ceiling

    def met(self, ceiling: float) -> bool | None:
        if self.value is None:
            return False
        if not self.ok:
            return False
        if self.target_ratio is not None:
            return self.ratio(ceiling) >= self.target_ratio
        return self.met_abs


# --------------------------------------------------------------------------- databases


class Database:
    """A fresh SQLite file, or a scratch PostgreSQL database (dropped by ``drop``)."""

    def __init__(self, work: Path, label: str):
        self.base = os.environ.get("BENCH_DATABASE_URL")
        self.kind = "postgresql" if self.base else "sqlite"
        self.name = f"bench_{label}_{uuid.uuid4().hex[:8]}"
        if self.base:
            from sqlalchemy.engine import make_url

            base = make_url(_driver_url(self.base))
            self._admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
            self._exec(f'CREATE DATABASE "{self.name}"')
            self.url = base.set(database=self.name).render_as_string(hide_password=False)
        else:
            self.url = "sqlite:///" + str(work / f"{self.name}.sqlite3")

    def _exec(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self._admin, autocommit=True) as conn:
            conn.execute(sql)

    def drop(self) -> None:
        if self.base:
            self._exec(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def _driver_url(url: str) -> str:
    from smart_invites_ui.config import database_url

    return database_url(url, "/tmp")


def db_on_this_machine(db: Database) -> bool:
    """Whether the PostgreSQL server runs here (loopback or a local socket), so that its
    processes' CPU time can be read."""
    from sqlalchemy.engine import make_url

    url = make_url(db.url)
    host = url.host or url.query.get("host") or ""
    return host in ("", "localhost", "127.0.0.1", "::1") or host.startswith("/")


def server_version(db: Database) -> str:
    if db.kind == "sqlite":
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version}"
    import psycopg

    with psycopg.connect(db._admin) as conn:
        return "PostgreSQL " + conn.execute("SHOW server_version").fetchone()[0]


# --------------------------------------------------------------------------- processes


def app_env(db: Database, **extra: str) -> dict:
    env = dict(os.environ)
    for name in ("SMTP_URL", "IMAP_URL", "DEMO_MODE", "PUBLIC_BASE_URL"):
        env.pop(name, None)
    env.update({
        "DATABASE_URL": db.url,
        "SECRET_KEY": "bench-secret-key",
        "CRONOFY_CLIENT_SECRET": SECRET,
        "WEB_CONCURRENCY": WEB_WORKERS,
        "PYTHONUNBUFFERED": "1",
        "MAIL_FROM": "invites@clinic.example",
    })
    env.update(extra)
    return env


def flask(env: dict, *args: str, log: Path) -> float:
    started = time.perf_counter()
    with log.open("ab") as out:
        code = subprocess.call([str(BIN / "flask"), "--app", "app", *args], cwd=ROOT, env=env, stdout=out,
                               stderr=subprocess.STDOUT)
    if code not in (0, 2):  # import-bookings: 2 = some rows rejected
        raise RuntimeError(f"flask {' '.join(args)} exited {code}; see {log}")
    return time.perf_counter() - started


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gunicorn:
    def __init__(self, target: list[str], env: dict, log: Path, ready_path: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(env, PORT=str(self.port))
        # Exactly the Procfile's command line, on loopback.
        self.process = subprocess.Popen(
            [str(BIN / "gunicorn"), *target, "--config", "gunicorn.conf.py", "--bind", f"127.0.0.1:{self.port}"],
            cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + ready_path, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"gunicorn did not start; see {log}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    rps: float
    codes: dict[int, int]
    issued: list[int]
    wrapped: bool
    socket_errors: str
    output: str
    cpu_s: float = 0.0  # wrk's own CPU time (user + system)
    cpu_per_request: dict[str, float] = field(default_factory=dict)  # by side, when measured (``CpuPerRequest``)

    @property
    def non_2xx(self) -> int:
        return sum(n for code, n in self.codes.items() if not 200 <= code < 300)


def wrk(url: str, lines: Path, seconds: int, headers: dict[str, str]) -> WrkResult:
    command = ["wrk", "-t", str(WRK_THREADS), "-c", str(WRK_CONNECTIONS), "-d", f"{seconds}s", "--latency",
               "-s", str(BENCH / "requests.lua")]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    command += [url, "--", str(lines), str(WRK_THREADS)]
    before = _children_cpu_s()
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    cpu_s = _children_cpu_s() - before  # wrk is the only child that ends meanwhile
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    threads = json.loads(re.search(r"BENCH-THREADS (.*)", output).group(1))
    codes: dict[int, int] = {}
    for thread in threads:
        for code, n in thread["codes"].items():
            codes[int(code)] = codes.get(int(code), 0) + n
    errors = re.search(r"Socket errors: (.*)", output)
    return WrkResult(rps, codes, [t["issued"] for t in sorted(threads, key=lambda t: t["tid"])],
                     any(t["wrapped"] for t in threads), errors.group(1) if errors else "", output, cpu_s)


def _children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- CPU per request


def _process_cpu() -> dict[int, tuple[str, int, int]]:
    """Every process this machine shows: pid -> (command name, parent pid, CPU clock ticks)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # ended meanwhile
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        found[int(entry)] = (name, int(rest[1]), int(rest[11]) + int(rest[12]))  # ppid, utime + stime
    return found


class CpuPerRequest:
    """Where an HTTP measure's CPU time went, per request answered: the server under load
    (gunicorn's master and workers), the database server when it runs on this machine (every
    PostgreSQL process: the connections' backends, the WAL writer and the rest), and wrk.
    Two vCPUs run all three at once, so the ratio to the ceiling is close to the ceiling's
    CPU per request over the app's, and PostgreSQL's share is in the app's."""

    def __init__(self, server: "Gunicorn", database: bool):
        self.server, self.database = server, database
        self.before = _process_cpu() if os.path.isdir("/proc") else None

    def _ticks(self, processes: dict) -> tuple[int, int]:
        master = self.server.process.pid
        server = sum(t for pid, (_, ppid, t) in processes.items() if pid == master or ppid == master)
        database = sum(t for name, _, t in processes.values() if name.startswith("postgres")) if self.database else 0
        return server, database

    def done(self, result: WrkResult) -> dict[str, float]:
        """Microseconds of CPU time per request answered, by side (nothing without /proc)."""
        answered = sum(result.codes.values())
        if self.before is None or not answered:
            return {}
        after = _process_cpu()
        # A process that ended meanwhile is left out of both; one that started counts from 0.
        server, database = (b - a for b, a in zip(self._ticks(after), self._ticks(
            {pid: found for pid, found in self.before.items() if pid in after})))
        per = 1e6 / os.sysconf("SC_CLK_TCK") / answered
        spent = {"server": server * per}
        if self.database:
            spent["PostgreSQL"] = database * per
        spent["wrk"] = result.cpu_s * 1e6 / answered
        return spent


def mean_cpu(results: list[WrkResult]) -> dict[str, float]:
    """The mean of several measures' CPU per request, side by side."""
    return {side: sum(r.cpu_per_request.get(side, 0) for r in results) / len(results)
            for side in results[0].cpu_per_request}


def cpu_note(spent: dict[str, float], prefix: str = "CPU per request") -> str:
    return f"{prefix}: " + ", ".join(f"{side} {us:,.0f} us" for side, us in spent.items()) if spent else ""


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def latency(output: str, percentile: str = "99%") -> str:
    match = re.search(rf"^\s+{re.escape(percentile)}\s+(\S+)", output, re.M)
    return match.group(1) if match else "?"


# --------------------------------------------------------------------------- the seeded app


def seed_csv(path: Path) -> None:
    """10,000 bookings of 3 recipients each, upcoming, in four time zones."""
    zones = ["Europe/London", "America/New_York", "Europe/Berlin", "Asia/Tokyo"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(["booking_ref", "email", "name", "summary", "description", "location", "start", "end",
                         "timezone"])
        for b in range(1, SEED_BOOKINGS + 1):
            day, month, hour = 1 + b % 28, 1 + b % 12, 8 + b % 9
            for k in range(SEED_RECIPIENTS_EACH):
                writer.writerow([f"BENCH-{b:06d}", f"patient{b}-{k}@example{b % 97}.org", f"Patient {b}-{k}",
                                 f"Check-up {b % 40}", "Please arrive ten minutes early.", f"Room {b % 12}",
                                 f"2031-{month:02d}-{day:02d} {hour:02d}:00",
                                 f"2031-{month:02d}-{day:02d} {hour:02d}:30", zones[b % 4]])


def bench_app(db: Database):
    """The app in this process, for reading the database (not for serving)."""
    from smart_invites_ui import create_app

    return create_app({"TESTING": True, "SECRET_KEY": "bench", "SQLALCHEMY_DATABASE_URI": _driver_url(db.url),
                       "RATELIMIT_ENABLED": False})


def login(base_url: str) -> str:
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    page = session.get(base_url + "/login").text
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
    response = session.post(base_url + "/login", data={"email": USER_EMAIL, "password": USER_PASSWORD,
                                                         "csrf_token": token}, allow_redirects=False)
    if response.status_code != 302:
        raise RuntimeError(f"logging in failed: {response.status_code}")
    # As a browser does: open the first page, and keep the cookie it answers with. The
    # session made at login holds no CSRF token yet; the first page that renders a form
    # adds one, and a client that kept sending the login's cookie would have a new
    # session cookie signed and set on every request.
    check = session.get(base_url + "/invites", allow_redirects=False)
    if check.status_code != 200:  # wrk counts a redirect to the login page as a success: make sure
        raise RuntimeError(f"the session cookie does not open /invites ({check.status_code})")
    cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    return cookie


# --------------------------------------------------------------------------- measures


def http_measures(db: Database, work: Path, seconds: int, log) -> tuple[float, list[Measure]]:
    """Measures 1 to 5. The ceiling's server and the app's are both up, and the ceiling is
    measured before the first of the app's measures, between each two, and after the last:
    each of the app's figures is divided by the mean of the ceiling measured just before it and
    just after. A VM's speed drifts over a run (by a quarter within minutes on a shared host),
    and a ratio should compare the app with the stack at the same moment. Each server is idle
    while the other is measured."""
    from sqlalchemy import select

    from smart_invites_ui.extensions import db as sa
    from smart_invites_ui.models import Invite, Recipient
    from smart_invites_ui.services.callbacks import sign

    measures: list[Measure] = []
    warmup = max(2, seconds // 5)

    app = bench_app(db)
    with app.app_context():
        invites = sa.session.execute(select(Invite.id, Invite.version).order_by(Invite.id)).all()
        step = max(len(invites) // POLLED_INVITES, 1)
        polled = invites[::step][:POLLED_INVITES]
        targets = sa.session.execute(
            select(Invite.smart_invite_id, Recipient.email, Recipient.id).join(Recipient.invite)
            .order_by(Recipient.id).limit(WEBHOOK_RECIPIENTS)).all()
        sa.session.remove()

    bare = Gunicorn(["--pythonpath", str(BENCH), "ceiling_app:app"], app_env(db), work / "ceiling.log", "/")
    server = None
    ceilings: list[WrkResult] = []
    ceiling_lines = write_lines(work / "ceiling.txt", ["GET\t/"])

    database_here = db.kind == "postgresql" and db_on_this_machine(db)

    def measure_load(gunicorn: Gunicorn, lines: Path, headers: dict[str, str]) -> WrkResult:
        """``seconds`` of load on ``gunicorn``, with where its CPU time went, per request."""
        meter = CpuPerRequest(gunicorn, database_here)
        result = wrk(gunicorn.url, lines, seconds, headers)
        result.cpu_per_request = meter.done(result)
        return result

    def ceiling_now() -> float:
        wrk(bare.url, ceiling_lines, warmup, {})
        ceilings.append(measure_load(bare, ceiling_lines, {}))
        return ceilings[-1].rps

    try:
        server = Gunicorn(["app:app"], app_env(db), work / "web.log", "/healthz")
        before = ceiling_now()
        log(f"1 ceiling: {before:,.0f} req/s; {cpu_note(ceilings[-1].cpu_per_request)}")
        cookie = login(server.url)
        headers = {"Cookie": cookie, "User-Agent": USER_AGENT}

        def measured(m: Measure, result: WrkResult) -> None:
            """``m``'s ratio is to the ceiling measured right before it and right after."""
            nonlocal before
            after = ceiling_now()
            m.ceiling = (before + after) / 2
            m.notes.insert(0, f"ceiling beside it {m.ceiling:,.0f} req/s ({before:,.0f} before, {after:,.0f} after)")
            log(f"{m.key} {m.name}: {result.rps:,.0f} req/s = {m.ratio(m.ceiling):.2f} x the ceiling beside it; "
                f"{result.codes}; {cpu_note(result.cpu_per_request)}")
            before = after

        def run(key, name, lines, target, expect):
            wrk(server.url, lines, warmup, headers)
            result = measure_load(server, lines, headers)
            m = Measure(key, name, result.rps, target_ratio=target,
                        notes=[f"p99 {latency(result.output)}", cpu_note(result.cpu_per_request)])
            unexpected = {c: n for c, n in result.codes.items() if c != expect}
            if unexpected or result.socket_errors:
                m.ok = False
                m.notes.append(f"unexpected answers {unexpected} {result.socket_errors}".strip())
            measures.append(m)
            measured(m, result)

        run("2", "live poll, nothing changed (204)",
            write_lines(work / "poll-same.txt", [f"GET\t/invites/{i}/live?v={v}" for i, v in polled]), 0.5, 204)
        run("3", "live poll, something changed (fragment)",
            write_lines(work / "poll-changed.txt", [f"GET\t/invites/{i}/live?v=0" for i, _ in polled]), 0.25, 200)
        run("4", "invites list, first page of 10,000", write_lines(work / "list.txt", ["GET\t/invites"]), 0.1, 200)

        # Webhooks: every request a distinct signed notification, made beforehand (wrk cannot sign).
        count = max(20_000, int(max(c.rps for c in ceilings) * seconds * 2.5))
        bodies = []
        for k in range(count):
            reference, email, _ = targets[k % len(targets)]
            status = STATUSES[(k // len(targets)) % len(STATUSES)]
            body = json.dumps({"notification": {"type": "smart_invite"},
                               "smart_invite": {"smart_invite_id": reference,
                                                "recipient": {"email": email, "status": status},
                                                "reply": {"email": email, "status": status,
                                                          "comment": f"bench notification {k}"}}},
                              separators=(",", ":"))
            bodies.append(f"POST\t/webhooks/smart-invites\t{sign(body.encode(), SECRET)}\t{body}")
        lines = write_lines(work / "webhooks.txt", bodies)
        result = measure_load(server, lines, {"User-Agent": USER_AGENT})
        m = Measure("5", "signed webhook, distinct notifications", result.rps, target_ratio=0.25,
                    notes=[f"p99 {latency(result.output)}", cpu_note(result.cpu_per_request)])
        if result.non_2xx or result.socket_errors:
            m.ok = False
            m.notes.append(f"non-2xx {result.non_2xx} {result.codes} {result.socket_errors}".strip())
        if result.wrapped:
            m.ok = False
            m.notes.append(f"ran out of the {count:,} prepared notifications (repeats were sent)")
        measured(m, result)
    finally:
        for gunicorn in (server, bare):
            if gunicorn is not None:
                gunicorn.stop()
    check_webhooks(db, m, result, targets)
    measures.append(m)
    ceiling = sum(c.rps for c in ceilings) / len(ceilings)
    measures.insert(0, Measure("1", "bare Flask route (the ceiling)", ceiling, ceiling=ceiling,
                               notes=[f"mean of {len(ceilings)} measures, one before, between and after the "
                                      f"app's: {', '.join(f'{c.rps:,.0f}' for c in ceilings)} req/s",
                                      f"p99 {' / '.join(latency(c.output) for c in ceilings)}",
                                      cpu_note(mean_cpu(ceilings), f"CPU per request, mean of the {len(ceilings)}")],
                               ok=all(c.non_2xx == 0 and not c.socket_errors for c in ceilings)))
    log(f"1 ceiling, mean of {len(ceilings)} measures: {ceiling:,.0f} req/s "
        f"({min(c.rps for c in ceilings):,.0f}-{max(c.rps for c in ceilings):,.0f})")
    return ceiling, measures


def check_webhooks(db: Database, m: Measure, result: WrkResult, targets) -> None:
    """Afterwards, in the database: every notification sent was recorded and applied, and every
    recipient's status is the one of the last notification sent for it."""
    from sqlalchemy import select

    from smart_invites_ui.extensions import db as sa
    from smart_invites_ui.models import Notification, NotificationOutcome, NotificationSource, Recipient

    app = bench_app(db)
    with app.app_context():
        rows = sa.session.execute(select(Notification.body, Notification.outcome)
                                  .where(Notification.source == NotificationSource.WEBHOOK)).all()
        statuses = dict(sa.session.execute(select(Recipient.id, Recipient.status)
                                           .where(Recipient.id.in_([t[2] for t in targets]))).all())
        sa.session.remove()
    recorded = sorted(int(json.loads(body)["smart_invite"]["reply"]["comment"].rsplit(" ", 1)[1])
                      for body, _ in rows)
    not_applied = sum(1 for _, outcome in rows if outcome != NotificationOutcome.APPLIED)
    # Thread t sent notifications t, t + n, t + 2n, ... (bench/requests.lua).
    sent = sorted(t + i * WRK_THREADS for t, issued in enumerate(result.issued) for i in range(issued))
    answered = sum(result.codes.values())
    last: dict[int, int] = {}
    for k in recorded:
        last[k % len(targets)] = k
    wrong = sum(1 for index, k in last.items()
                if statuses[targets[index][2]].value != STATUSES[(k // len(targets)) % len(STATUSES)])
    missing = len(set(sent) - set(recorded))
    m.notes.append(f"{len(recorded):,} recorded of {len(sent):,} sent ({answered:,} answered before wrk stopped); "
                   f"{len(last):,} recipients checked, {wrong} wrong status")
    # Requests still in flight when wrk stops (at most one per connection) may or may not arrive.
    if wrong or not_applied or missing > WRK_CONNECTIONS or len(recorded) < answered:
        m.ok = False
        m.notes.append(f"{not_applied} not applied, {missing} sent but not recorded")


def import_measures(rows_list: list[int], work: Path, log) -> list[Measure]:
    """Measure 6 with issue 5's benchmark process (bench/import_bench.py): a fresh database
    per size, the whole import through ``bookings_import.import_file``."""
    import import_bench

    measures = []
    for rows in rows_list:
        file = work / f"bookings-{rows}.csv"
        import_bench.generate(file, rows)
        db = Database(work, f"import{rows}")
        try:
            url = _driver_url(db.url)
            import_bench.run_child("schema", "-", url)
            out = import_bench.run_child("import", file, url)
        finally:
            db.drop()
        rss = out["peak_rss_mb"]
        m = Measure("6", f"CSV import, {rows:,} rows", out["rows_per_s"], unit="rows/s",
                    target_abs=">= 1,000 rows/s, peak RSS < 300 MB",
                    met_abs=out["rows_per_s"] >= 1000 and rss < 300,
                    notes=[f"peak RSS {rss:.0f} MB", f"{out['created']:,} invites, {out['rejected']} rows rejected, "
                                                     f"{out['queued_emails']:,} emails queued"])
        measures.append(m)
        log(f"6 import {rows:,} rows: {out['rows_per_s']:,.0f} rows/s, peak RSS {rss:.0f} MB")
    return measures


class SmtpSink:
    """aiosmtpd handler: counts messages, their arrival times and the connections they came on."""

    def __init__(self):
        self.times: list[float] = []
        self.peers: set = set()
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.times.append(time.perf_counter())
            self.peers.add(session.peer)
        return "250 OK"


def outbox_measure(db: Database, work: Path, seconds: int, log) -> Measure:
    """``flask worker`` delivering the 30,000 emails the seed import queued, to aiosmtpd on loopback."""
    from aiosmtpd.controller import Controller

    import logging

    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every SMTP command
    sink = SmtpSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    env = app_env(db, SMTP_URL=f"smtp://127.0.0.1:{controller.port}", WORKER_POLL_SECONDS="0.2")
    worker = subprocess.Popen([str(BIN / "flask"), "--app", "app", "worker"], cwd=ROOT, env=env,
                              stdout=(work / "worker.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not sink.times and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.05)
        time.sleep(seconds)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        controller.stop()
    times = sink.times
    if len(times) < 2:
        return Measure("7", "outbox emails over SMTP", None, unit="emails/s", target_abs=">= 200 emails/s",
                       met_abs=False, notes=[f"only {len(times)} emails arrived; see {work / 'worker.log'}"])
    rate = (len(times) - 1) / (times[-1] - times[0])
    log(f"7 outbox: {rate:,.0f} emails/s ({len(times):,} emails on {len(sink.peers)} connections)")
    return Measure("7", "outbox emails over SMTP", rate, unit="emails/s", target_abs=">= 200 emails/s",
                   met_abs=rate >= 200,
                   notes=[f"{len(times):,} emails on {len(sink.peers)} SMTP connections"])


def replies_measure(db: Database, log) -> Measure:
    """Reply emails stored, parsed and applied, in a separate process (as the web one would)."""
    completed = subprocess.run([sys.executable, __file__, "--child-replies", db.url], cwd=ROOT,
                               env=app_env(db), capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"the replies measure failed:\n{completed.stderr[-4000:]}")
    out = json.loads(completed.stdout.strip().splitlines()[-1])
    log(f"8 replies: {out['per_s']:,.0f}/s ({out['applied']} of {out['count']} applied)")
    return Measure("8", "reply emails parsed and applied", out["per_s"], unit="replies/s",
                   target_abs=">= 500/s", met_abs=out["per_s"] >= 500, ok=out["applied"] == out["count"],
                   notes=[f"{out['count']:,} replies in {len(out['shapes'])} client shapes, "
                          f"{out['applied']:,} applied; parsing alone {out['parse_per_s']:,.0f}/s"])


def child_replies(url: str) -> dict:
    """Measure 8's process: build replies in real clients' shapes (not timed), then time
    ``replies.receive`` (store, parse, apply: what ``POST /inbound/email`` does) on each."""
    from sqlalchemy import select

    from smart_invites_ui import create_app
    from smart_invites_ui.extensions import db as sa
    from smart_invites_ui.models import InboundOutcome, Recipient
    from smart_invites_ui.services import replies
    from smart_invites_ui.services.invite_mail import invite_ics, organizer_address
    from smart_invites_ui.services.itip import CLIENT_SHAPES, build_reply_email, parse_message

    app = create_app({"SECRET_KEY": "bench", "SQLALCHEMY_DATABASE_URI": _driver_url(url), "RATELIMIT_ENABLED": False})
    with app.app_context():
        recipients = sa.session.scalars(select(Recipient).order_by(Recipient.id.desc()).limit(REPLIES)).all()
        raws = []
        for i, recipient in enumerate(recipients):
            invite = recipient.invite
            raws.append(build_reply_email(shape=CLIENT_SHAPES[i % len(CLIENT_SHAPES)], invite_ics=invite_ics(invite),
                                          attendee_email=recipient.email, partstat=STATUSES[i % 3].upper(),
                                          to_address=organizer_address(invite)))
        sa.session.remove()
        mail_from = app.config["MAIL_FROM"]
        started = time.perf_counter()
        for raw in raws:
            parse_message(raw, mail_from)
        parse_s = time.perf_counter() - started
        started = time.perf_counter()
        outcomes = [replies.receive(raw, "http").outcome for raw in raws]
        elapsed = time.perf_counter() - started
    return {"count": len(raws), "per_s": len(raws) / elapsed, "parse_per_s": len(raws) / parse_s,
            "applied": sum(1 for o in outcomes if o == InboundOutcome.APPLIED), "shapes": list(CLIENT_SHAPES)}


# --------------------------------------------------------------------------- report


def gunicorn_threads() -> int:
    """The threads per web process, as gunicorn.conf.py sets them (GUNICORN_THREADS, or its default)."""
    import runpy

    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))["threads"]


_ECHO = ("import socket, sys\n"
         "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
         "s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
         "while data := s.recv(64):\n"
         "    s.sendall(data)\n")


def round_trips_us(db: Database, count: int = 2000) -> dict[str, float]:
    """Mean round trips on this idle machine, in microseconds: a few bytes to another process
    on loopback and back, and, on PostgreSQL, a ``SELECT 1``. Every SMTP command and database
    query the outbox and replies measures send one after another costs at least that: on a VM
    whose idle CPUs sleep, most of it is waking them."""
    import socket
    import statistics

    def mean_of(exchange) -> float:
        for _ in range(100):
            exchange()
        times = []
        for _ in range(count):
            started = time.perf_counter()
            exchange()
            times.append(time.perf_counter() - started)
        return statistics.mean(times) * 1e6

    found = {}
    with socket.create_server(("127.0.0.1", 0)) as server:
        child = subprocess.Popen([sys.executable, "-c", _ECHO, str(server.getsockname()[1])])
        try:
            peer, _ = server.accept()
            with peer:
                peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                found["loopback"] = mean_of(lambda: (peer.sendall(b"ping"), peer.recv(64)))
        finally:
            child.wait(timeout=10)
    if db.kind == "postgresql":
        import psycopg

        with psycopg.connect(db._admin, autocommit=True) as conn:
            found["SELECT 1"] = mean_of(lambda: conn.execute("SELECT 1").fetchone())
    return found


def machine(db_version: str) -> list[str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
    return [f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}",
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, {db_version}",
            f"gunicorn gthread, WEB_CONCURRENCY={WEB_WORKERS}, {gunicorn_threads()} threads each; "
            f"{wrk_version[0] if wrk_version else 'wrk'} "
            f"-t{WRK_THREADS} -c{WRK_CONNECTIONS} on loopback, on the same machine"]


def table(ceiling: float, measures: list[Measure]) -> list[str]:
    lines = ["| # | measure | figure | ratio to ceiling | target | met? | notes |",
             "|---|---|---:|---:|---|---|---|"]
    for m in measures:
        ratio = m.ratio(ceiling)
        target = (f">= {m.target_ratio:g} x ceiling" if m.target_ratio is not None
                  else m.target_abs or "(the reference)")
        met = m.met(ceiling)
        verdict = "-" if m.key == "1" and m.ok else ("yes" if met else "NO")
        figure = "failed" if m.value is None else f"{m.value:,.0f} {m.unit}"
        lines.append(f"| {m.key} | {m.name} | {figure} | {'' if ratio is None else f'{ratio:.2f}'} | {target} | "
                     f"{verdict} | {'; '.join(note for note in m.notes if note)} |")
    return lines


def write_results(db_kind: str, header: list[str], body: list[str]) -> Path:
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    path = results / f"{datetime.now():%Y-%m-%d}-{db_kind}.md"
    if not path.exists():
        path.write_text(f"# Benchmarks, {datetime.now():%Y-%m-%d}, {db_kind}\n\n"
                        "Written by `make bench` (bench/run.py); each run is appended.\n", encoding="utf-8")
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n" + "\n".join(header + [""] + body) + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=int(os.environ.get("BENCH_DURATION", "10")),
                        help="seconds of load per HTTP measure (default 10)")
    parser.add_argument("--import-rows", default="10000,100000")
    parser.add_argument("--note", default="", help="a line saying what this run is (e.g. after a fix)")
    parser.add_argument("--child-replies", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_replies:
        print(json.dumps(child_replies(args.child_replies)))
        return 0
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed. It generates the HTTP load: `sudo apt-get install wrk` "
              "(Debian/Ubuntu package wrk), then run `make bench` again.", file=sys.stderr)
        return 2

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="smart-invites-bench-"))
    say = lambda text: print(f"[{time.monotonic() - started:6.1f}s] {text}", flush=True)  # noqa: E731
    db = Database(work, "app")
    say(f"work files in {work}; database {db.kind}")
    try:
        env = app_env(db)
        log = work / "setup.log"
        flask(env, "db", "upgrade", log=log)
        flask(env, "users", "create", USER_EMAIL, "--password", USER_PASSWORD, "--role", "staff", log=log)
        seed = work / "seed.csv"
        seed_csv(seed)
        seconds = flask(env, "import-bookings", str(seed), "--timezone", "Europe/London", log=log)
        rows = SEED_BOOKINGS * SEED_RECIPIENTS_EACH
        say(f"seeded {SEED_BOOKINGS:,} invites, {rows:,} recipients through `flask import-bookings` "
            f"in {seconds:.1f} s ({rows / seconds:,.0f} rows/s, process start included)")
        ceiling, measures = http_measures(db, work, args.duration, say)
        measures += import_measures([int(n) for n in args.import_rows.split(",") if n], work, say)
        measures.append(outbox_measure(db, work, args.duration, say))
        measures.append(replies_measure(db, say))
        header = [f"## Run at {datetime.now():%H:%M} ({db.kind})" + (f": {args.note}" if args.note else ""), ""]
        header += [f"- {line}" for line in machine(server_version(db))]
        trips = round_trips_us(db)
        header += ["- round trips on the idle machine (mean): " + ", ".join(f"{name} {us:,.0f} us" for name, us
                                                                           in trips.items())]
        header += [f"- seed: {SEED_BOOKINGS:,} invites, {rows:,} recipients via `flask import-bookings` "
                   f"({rows / seconds:,.0f} rows/s); {args.duration} s of load per HTTP measure after a warm-up"]
        body = table(ceiling, measures)
        print("\n" + "\n".join(header + [""] + body))
        path = write_results(db.kind, header, body)
        print(f"\nwritten to {path.relative_to(ROOT)} ({time.monotonic() - started:.0f} s)")
        missed = [m for m in measures if m.key != "1" and not m.met(ceiling)]
        if missed:
            print("targets missed: " + ", ".join(f"{m.key} ({m.name})" for m in missed))
        return 1 if missed else 0
    finally:
        db.drop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    sys.exit(main())
