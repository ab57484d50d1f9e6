"""The one error type users see: a sentence that names the file or key and what to do."""

from __future__ import annotations


class EdgeDistillError(Exception):
    """An expected failure with a message a user can act on (no traceback is shown for it)."""


class ConfigError(EdgeDistillError):
    """A recipe, target or other configuration value is wrong."""


class DataError(EdgeDistillError):
    """Input data is missing, malformed or inconsistent."""


class StageError(EdgeDistillError):
    """A pipeline stage ran but its own check failed (parity, accuracy, NaN loss...)."""


class BudgetMissed(EdgeDistillError):
    """The run finished, but the deliverable misses one of the target's budgets (exit code 3)."""
