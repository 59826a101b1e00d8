"""The three ways a fine-tuning run ends early, each with its exit code."""
from __future__ import annotations

EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 1, 130


class BadInput(ValueError):
    """A flag, file or folder that cannot be used; reported with exit code 2."""


class Diverged(RuntimeError):
    """A non-finite training loss, a skipped update or non-finite parameters (exit code 1)."""


class Interrupted(RuntimeError):
    """Ctrl-C (SIGINT) during training; the message says where to resume from (exit code 130)."""
