"""gunicorn settings for the Procfile's web process (Heroku-style)."""
import os

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = "-"  # stdout
# Path without the query string: POST /inbound/email?secret=... must not leave its secret in logs.
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss "%(a)s"'
errorlog = "-"
forwarded_allow_ips = "*"  # the router is the only way in; ProxyFix trusts one hop
