"""Invite providers (SPEC §2): who makes the ICS and tracks replies.

``local`` (default): this app builds the ICS itself, at delivery time, and reads
replies from email. ``cronofy``: a Cronofy-compatible API is told about every
change first and returns the ICS that we then email; if it refuses, the change
is not made and nothing is queued.
"""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from ..models import Invite, Recipient


class ProviderError(Exception):
    """The provider refused or failed; the message is shown to staff."""


@dataclass(frozen=True)
class ProviderResult:
    ics: bytes | None = None  # for the invited (None: build locally at delivery)
    removed_ics: bytes | None = None  # for a removed recipient


class LocalProvider:
    name = "local"

    def create(self, invite: Invite) -> ProviderResult:
        return ProviderResult()

    def update(self, invite: Invite) -> ProviderResult:
        return ProviderResult()

    def remove(self, invite: Invite, recipient: Recipient) -> ProviderResult:
        return ProviderResult()

    def cancel(self, invite: Invite) -> ProviderResult:
        return ProviderResult()


def current():
    """The provider configured by SMART_INVITES_PROVIDER."""
    if current_app.config["SMART_INVITES_PROVIDER"] == "cronofy":
        from .cronofy_provider import CronofyProvider

        return CronofyProvider.from_config(current_app.config)
    return LocalProvider()
