"""Smart Invites UI: trackable calendar invites for scheduling staff."""
from __future__ import annotations

import logging
import os
import sys
from functools import partial

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import config as settings


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True,
                template_folder="../templates", static_folder="../static")
    from .sessions import RememberedCookieSessions

    app.session_interface = RememberedCookieSessions()
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.from_mapping(settings.from_environment(dict(os.environ), app.instance_path))
    if test_config:
        app.config.update(test_config)
    settings.check(app.config, debug=app.debug, testing=app.config.get("TESTING", False))
    _logging(app)

    from .extensions import csrf, db, limiter, login_manager, migrate

    db.init_app(app)
    with app.app_context():
        engine = db.engine
        _tune_sqlite(engine)
    migrate.init_app(app, db, directory=os.path.join(os.path.dirname(__file__), "..", "migrations"))
    login_manager.init_app(app)
    login_manager.session_protection = "strong"
    csrf.init_app(app)
    limiter.init_app(app)
    # Every limit here decorates its view (``@limiter.limit``), and a decorated view checks
    # its limits when called. The extension's before_request check only serves default,
    # application-wide or blueprint limits, which this app has none of, and its
    # after_request hook only adds X-RateLimit headers (off) and deducts ``deduct_when``
    # limits (none here). Together they cost every request ~0.1 ms, a third of an
    # unchanged live poll, so they are taken off. (With RATELIMIT_ENABLED=false the
    # extension registers no hooks at all.)
    hooks = app.before_request_funcs[None]
    if limiter._check_request_limit in hooks:
        hooks.remove(limiter._check_request_limit)
    if not limiter._headers_enabled:
        app.after_request_funcs[None] = [hook for hook in app.after_request_funcs.get(None, [])
                                         if not (isinstance(hook, partial) and hook.args == (limiter,))]

    from . import admin, auth, health, invites, mailcatcher, security, webhooks

    security.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(invites.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(mailcatcher.bp)
    app.register_blueprint(admin.bp)
    from . import api_admin
    from .api import routes as api

    app.register_blueprint(api.bp)
    app.register_blueprint(api_admin.bp)
    from . import imports

    app.register_blueprint(imports.bp)
    from . import inbound  # reply emails: POST /inbound/email, the Inbound mail page, IMAP polling (worker hook)

    app.register_blueprint(inbound.bp)

    from . import cli, views

    cli.init_app(app)
    views.init_app(app)

    from .live_poll import UnchangedPoll
    from .plain_sql import init_reads

    init_reads(app, engine)
    # Outermost the proxy headers, so the fast paths (the unchanged poll, the usual signed
    # notification) see the client's address.
    app.wsgi_app = ProxyFix(webhooks.SignedNotifications(app, UnchangedPoll(app, app.wsgi_app)),
                            x_for=1, x_proto=1, x_host=1, x_port=1)
    return app


def _tune_sqlite(engine) -> None:
    """The embedded default is shared by the web and worker processes: WAL lets
    readers run beside the one writer, and a busy timeout waits out short locks.
    Production runs on PostgreSQL."""
    if engine.dialect.name != "sqlite":
        return
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL keeps the database consistent through crashes; a power cut
        # may lose the last commits, not corrupt anything. FULL fsyncs every commit
        # (~6 ms each on a VM disk), which halves the embedded default's write rate.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=15000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def _logging(app: Flask) -> None:
    # Heroku-style: logs go to stdout, one line each.
    if not any(isinstance(h, logging.StreamHandler) for h in logging.getLogger().handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
