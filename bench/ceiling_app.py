"""The ceiling of the benchmarks: a bare Flask route, served by gunicorn exactly as
the app is (same gunicorn.conf.py, same worker count). Every HTTP figure of
``bench/run.py`` is divided by this one, so the ratios hold on any machine."""
from flask import Flask

app = Flask(__name__)


@app.get("/")
def ok():
    return "ok"
