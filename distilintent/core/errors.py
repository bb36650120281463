"""Exception types. Each message names the value, what was expected and, where there is one, the fix."""

from __future__ import annotations


class DistilIntentError(Exception):
    """Base class of every error distilintent raises on purpose."""


class DataError(DistilIntentError, ValueError):
    """Training or evaluation data that cannot be used (message names file and line)."""


class BundleError(DistilIntentError, ValueError):
    """A model bundle that is missing, corrupt, of another format version or incomplete."""


class MissingExtraError(DistilIntentError, ImportError):
    """An optional dependency is not installed; the message gives the pip command."""
