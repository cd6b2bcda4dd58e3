"""Benchmark of the CSV bookings import (issue 5), not a test.

    .venv/bin/python bench/import_bench.py [--rows 10000,100000] [--keep DIR]

Generates bookings files, then measures, each in a fresh subprocess against a
fresh database (SQLite in a temporary directory; also PostgreSQL when
``BENCH_DATABASE_URL`` is set - its tables are dropped and rebuilt):

- preview: reading the file and planning the import (what the preview page does);
- import: rows per second through the real service (``apply_bookings``), then
  the same file again (nothing changes, nothing is queued);
- peak RSS of the importing process (``peak_rss_mb``: the kernel's high-water mark).

Targets (issue 5, on the 2-core reference machine): preview 10,000 rows <= 3 s,
import >= 1,000 rows/s, peak RSS importing 100,000 rows < 300 MB. As SPEC §7
asks, a bare Flask route served by the test client in the same run gives a
machine-independent ratio.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"preview_10k_s": 3.0, "import_rows_per_s": 1000.0, "peak_rss_100k_mb": 300.0}


def generate(path: Path, rows: int, summary: str = "Appointment") -> None:
    """A realistic file: bookings of 1 to 3 recipients, one row in 20 without a
    reference, one in 100 rejected (a bad address or an impossible date)."""
    zones = ["Europe/London", "America/New_York", "Europe/Berlin", "Asia/Tokyo"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(["booking_ref", "email", "name", "summary", "description", "location", "start", "end",
                         "timezone"])
        written, booking = 0, 0
        while written < rows:
            booking += 1
            size = 1 + booking % 3
            day = 1 + booking % 28
            hour = 8 + booking % 9
            ref = "" if booking % 20 == 0 else f"BK-{booking:07d}"
            for k in range(size if ref else 1):
                if written >= rows:
                    break
                written += 1
                email = f"person{written}@example{written % 97}.org"
                start = f"2031-{1 + booking % 12:02d}-{day:02d} {hour:02d}:00"
                if written % 100 == 0:
                    email = "not an address"
                if written % 100 == 50:
                    start = f"2031-02-31 {hour:02d}:00"
                writer.writerow([ref, email, f"Person {written}", f"{summary} {booking % 40}",
                                 "Please arrive ten minutes early.", f"Room {booking % 12}", start,
                                 f"2031-{1 + booking % 12:02d}-{day:02d} {hour:02d}:30", zones[booking % 4]])


# --------------------------------------------------------------------------- the measured process


def _app(database_url: str):
    sys.path.insert(0, str(ROOT))
    from smart_invites_ui import create_app

    return create_app({"TESTING": True, "SECRET_KEY": "bench", "SQLALCHEMY_DATABASE_URI": database_url,
                       "RATELIMIT_ENABLED": False})


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: Linux's high-water mark of its own memory
    (VmHWM). Not ``getrusage``'s ru_maxrss: that is kept across fork and exec, so a child
    reported the peak of the process that started it when that was larger (the benchmark
    runner, itself 330 MB by the import measures: both sizes read "330 MB")."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource  # without /proc: the kernel's own figure (kB on Linux and the BSDs)

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, file: str, database_url: str) -> dict:
    from smart_invites_ui.extensions import db
    from smart_invites_ui.models import OutboxMessage
    from smart_invites_ui.services import bookings_import
    from smart_invites_ui.services.bookings_csv import parse_bookings

    app = _app(database_url)
    out: dict = {}
    with app.app_context():
        if mode == "schema":
            from flask_migrate import upgrade
            from sqlalchemy import text

            if db.engine.dialect.name == "postgresql":
                with db.engine.begin() as conn:
                    conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
            upgrade(directory=str(ROOT / "migrations"))
            return {}
        if mode == "baseline":
            client = app.test_client()
            app.add_url_rule("/bench-bare", "bench_bare", lambda: "ok")
            from smart_invites_ui import security

            app.view_functions["bench_bare"] = security.public("benchmark")(app.view_functions["bench_bare"])
            for _ in range(50):
                client.get("/bench-bare")
            n = 1000
            started = time.perf_counter()
            for _ in range(n):
                client.get("/bench-bare")
            return {"bare_route_requests_per_s": n / (time.perf_counter() - started)}
        with open(file, "rb") as stream:
            if mode == "preview":
                started = time.perf_counter()
                result = parse_bookings(stream, default_tzid="Europe/London")
                parsed = time.perf_counter() - started
                report = bookings_import.plan_bookings(result)
                out.update(preview_s=time.perf_counter() - started, parse_s=parsed, rows=result.total_rows,
                           would_create=report.created, rejected=report.rejected_count)
            else:  # the whole import, reading the file included
                before = db.session.query(OutboxMessage).count()
                started, cpu = time.perf_counter(), time.process_time()
                report, _ = bookings_import.import_file(stream, filename=Path(file).name, tzid="Europe/London")
                elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
                out.update(import_s=elapsed, cpu_s=cpu, rows=report.total_rows, rows_per_s=report.total_rows / elapsed,
                           created=report.created, updated=report.updated, unchanged=report.unchanged,
                           rejected=report.rejected_count,
                           queued_emails=db.session.query(OutboxMessage).count() - before)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def run_child(mode: str, file: Path | str, database_url: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    completed = subprocess.run([sys.executable, __file__, "--child", mode, str(file), database_url],
                               cwd=ROOT, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def driver_url(url: str) -> str:
    sys.path.insert(0, str(ROOT))
    from smart_invites_ui.config import database_url

    return database_url(url, "/tmp")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="10000,100000")
    parser.add_argument("--keep", help="write the generated files here instead of a temporary directory")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0

    work = Path(args.keep or tempfile.mkdtemp(prefix="import-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    databases = [("sqlite", None)]
    if os.environ.get("BENCH_DATABASE_URL"):
        databases.append(("postgresql", driver_url(os.environ["BENCH_DATABASE_URL"])))
    baseline = run_child("baseline", "-", "sqlite:///" + str(work / "baseline.sqlite3"))
    print(f"bare Flask route (test client): {baseline['bare_route_requests_per_s']:.0f} requests/s")
    failures = []
    for rows in [int(n) for n in args.rows.split(",")]:
        file = work / f"bookings-{rows}.csv"
        generate(file, rows)
        print(f"\n{rows:,} rows ({file.stat().st_size / 1e6:.1f} MB)")
        for name, url in databases:
            if url is None:
                url = f"sqlite:///{work / f'bench-{rows}.sqlite3'}"
                Path(url[len("sqlite:///"):]).unlink(missing_ok=True)
            run_child("schema", "-", url)
            preview = run_child("preview", file, url)
            first = run_child("import", file, url)
            again = run_child("import", file, url)
            changed = work / f"bookings-{rows}-changed.csv"
            generate(changed, rows, summary="Follow-up")
            update = run_child("import", changed, url)
            print(f"  [{name}] preview {preview['preview_s']:.2f} s (parse {preview['parse_s']:.2f} s), "
                  f"peak RSS {preview['peak_rss_mb']:.0f} MB")
            print(f"  [{name}] import {first['import_s']:.1f} s = {first['rows_per_s']:,.0f} rows/s "
                  f"(this process's CPU {first['cpu_s']:.1f} s; "
                  f"{first['rows_per_s'] / baseline['bare_route_requests_per_s']:.2f} x bare route); "
                  f"created {first['created']:,}, rejected {first['rejected']:,}, "
                  f"{first['queued_emails']:,} emails queued; peak RSS {first['peak_rss_mb']:.0f} MB")
            print(f"  [{name}] same file again {again['import_s']:.1f} s = {again['rows_per_s']:,.0f} rows/s; "
                  f"unchanged {again['unchanged']:,}, created {again['created']}, "
                  f"{again['queued_emails']} emails queued")
            print(f"  [{name}] every booking changed {update['import_s']:.1f} s = {update['rows_per_s']:,.0f} rows/s; "
                  f"updated {update['updated']:,}, {update['queued_emails']:,} emails queued "
                  f"(with the first import's emails still queued)")
            if rows == 10000 and preview["preview_s"] > TARGETS["preview_10k_s"]:
                failures.append(f"{name}: preview of 10k rows took {preview['preview_s']:.2f} s")
            if first["rows_per_s"] < TARGETS["import_rows_per_s"]:
                failures.append(f"{name}: import {first['rows_per_s']:.0f} rows/s at {rows} rows")
            if rows >= 100000 and first["peak_rss_mb"] >= TARGETS["peak_rss_100k_mb"]:
                failures.append(f"{name}: peak RSS {first['peak_rss_mb']:.0f} MB at {rows} rows")
            if again["created"] or again["updated"] or again["queued_emails"]:
                failures.append(f"{name}: importing the same file again changed something")
    print("\n" + ("all targets met" if not failures else "MISSED:\n  " + "\n  ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
