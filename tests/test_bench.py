"""The benchmark's own measuring (bench/): a figure it reports must be the thing it names."""
from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_an_import_reports_its_own_peak_memory_not_its_parents(tmp_path, monkeypatch):
    """bench/run.py runs each import in a child process; the child's figure once read the
    runner's own peak (330 MB for 10,000 rows and for 100,000 alike)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import import_bench

    held = bytearray(400 * 1024 * 1024)  # this process: much larger than the import will be
    held[::4096] = b"x" * len(held[::4096])  # touched, so resident
    bookings, url = tmp_path / "bookings.csv", f"sqlite:///{tmp_path / 'import.sqlite3'}"
    import_bench.generate(bookings, 200)
    import_bench.run_child("schema", "-", url)
    out = import_bench.run_child("import", bookings, url)
    del held
    assert out["rows"] == 200 and out["created"] > 0
    assert 20 < out["peak_rss_mb"] < 300, out["peak_rss_mb"]
    assert sys.modules["import_bench"].peak_rss_mb() > 400  # and this process's own figure is its own


def test_cpu_per_request_counts_the_servers_processes_and_nothing_else(tmp_path, monkeypatch):
    """The HTTP measures' notes split CPU time per request between the server under load
    (gunicorn's master and its workers), PostgreSQL and wrk. A worker that burns 0.4 s over
    100 requests is 4,000 us each; a process outside the server is not the server's."""
    import subprocess
    import time
    from types import SimpleNamespace

    monkeypatch.syspath_prepend(str(BENCH))
    import run

    def busy(name: str) -> str:  # 0.4 s of CPU time, then idle (and alive) until its parent ends
        return ("import os, pathlib, time\nparent = os.getppid()\nend = time.process_time() + 0.4\n"
                "while time.process_time() < end: pass\n"
                f"pathlib.Path({str(tmp_path / name)!r}).touch()\n"
                "while os.getppid() == parent: time.sleep(0.05)\n")

    server = SimpleNamespace()
    meter = run.CpuPerRequest(server, database=False)
    server.process = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys\n"
                                       f"subprocess.run([sys.executable, '-c', {busy('worker')!r}])\n"])
    outsider = subprocess.Popen([sys.executable, "-c", busy("outsider")])  # as busy, but not the server's
    try:
        deadline = time.monotonic() + 60
        while not ((tmp_path / "worker").exists() and (tmp_path / "outsider").exists()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        spent = meter.done(run.WrkResult(1.0, {200: 90, 204: 10}, [], False, "", "", cpu_s=0.002))
    finally:
        for process in (server.process, outsider):
            process.kill()  # the master (its worker then ends), and the outsider
            process.wait()
    assert list(spent) == ["server", "wrk"]
    assert 3_800 <= spent["server"] < 6_000, spent  # 0.4 s + start-ups, per 100 requests
    assert spent["wrk"] == 20
    assert run.cpu_note(spent).startswith("CPU per request: server ")
