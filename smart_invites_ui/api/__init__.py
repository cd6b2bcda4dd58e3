"""The Cronofy-compatible ``/v1/smart_invites`` API: ``schema`` (validation and JSON shapes),
``operations`` (what a request does) and ``routes`` (the HTTP surface)."""
