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
