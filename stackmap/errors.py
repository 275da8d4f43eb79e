"""Errors an operator can act on.

Every error the CLI or a daemon may show a person derives from ``StackmapError`` so that one place
(the CLI's entry point, a daemon's loop) can print it as a single line instead of a traceback.
"""

from __future__ import annotations


class StackmapError(Exception):
    """An error whose message is meant for the operator, as one line."""

    @property
    def retryable(self) -> bool:
        """Whether the same work may succeed if tried again later (something it depends on is away
        for a while), unlike work that is wrong in itself: the event dispatcher retries the one and
        dead-letters the other."""
        return False


class ConfigError(StackmapError):
    """Settings or an environment config file are invalid."""


class StoreError(StackmapError):
    """The store cannot be opened or used."""


class StoreUnavailable(StoreError):
    """The store's server or file cannot be reached right now (may be retried)."""


class DuplicateError(StoreError):
    """A document with the same key exists already."""


class NotFound(StackmapError):
    """A named thing (environment, object, scan...) does not exist."""


class SecretsUnavailable(StackmapError):
    """Secrets cannot be decrypted: the key file is missing or is not the key they were sealed with."""
