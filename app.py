"""WSGI entry point: ``gunicorn app:app`` and ``flask --app app ...``."""
from smart_invites_ui import create_app

app = create_app()
