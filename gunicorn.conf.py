"""gunicorn settings for the Procfile's web process (Heroku-style)."""
import errno
import os
import socket

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Two threads per process: while one waits on the database, the other runs Python. More add
# contention for the GIL (a process runs one thread's Python at a time) and cost CPU per request.
# In `make bench` on 2 vCPUs with PostgreSQL, 2 threads served 31-38% more changed polls, 26-38%
# more list pages and 9-17% more webhooks than 4 (two runs each); on SQLite -5% to +24%; with a
# lower p99 on both (bench/results/2026-11-22-*.md, fifth round).
# Long jobs (CSV imports, email) run in the worker, not here. GUNICORN_THREADS overrides it.
threads = int(os.environ.get("GUNICORN_THREADS", "2"))
worker_class = "gthread"
timeout = 30
graceful_timeout = 20
keepalive = 5
# Each worker listens on a socket of its own (SO_REUSEPORT) and the kernel spreads new
# connections evenly over them. On one shared socket, whichever worker woke first took
# the connection, and keep-alive connections stay where they land: under load one
# worker could hold most of them, running on one core while the other idled (the
# invites list measured 138 req/s so, 440 req/s spread; bench/results/).
reuse_port = True
accesslog = "-"  # stdout
# Path without the query string: POST /inbound/email?secret=... must not leave its secret in logs.
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss "%(a)s"'
errorlog = "-"
forwarded_allow_ips = "*"  # the router is the only way in; ProxyFix trusts one hop


def on_starting(server):
    """Refuse a port that something already listens on. With SO_REUSEPORT a second copy
    of this app would otherwise bind beside the first and silently share its requests
    (an old version, say, still answering half of them)."""
    for address in server.cfg.address:
        if not isinstance(address, tuple):
            continue  # a unix socket: gunicorn reports it itself
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        probe = socket.socket(family, socket.SOCK_STREAM)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections in TIME_WAIT do not count
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SystemExit(f"Cannot listen on {address[0]}:{address[1]}: another process is already "
                                 f"listening there. Stop it, or set PORT to a free port.") from None
            raise
        finally:
            probe.close()
