"""The builder's user errors: each message is one sentence naming the flag that fixes it (the CLI prints it)."""

from __future__ import annotations


class BuildError(ValueError):
    """A build that cannot start or finish; the message names the flag that fixes it."""


class SourceError(ValueError):
    """A source that cannot be read; the message names the flag that fixes it."""
