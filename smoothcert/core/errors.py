"""The library's error types. Each names the argument or file and the value it refused.

All derive from :class:`SmoothcertError` (a ``ValueError``), so ``except ValueError`` keeps
catching what it caught before; the command line turns exactly these (and ``OSError``) into
one line and exit status 2, and lets anything else surface as a bug.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DataFormatError", "ResultFileError", "SmoothcertError"]


class SmoothcertError(ValueError):
    """Base class of every error smoothcert raises on purpose."""


class ConfigError(SmoothcertError):
    """A setting, or a combination of settings, that cannot work."""


class DataFormatError(SmoothcertError):
    """A data file that is missing parts, truncated or corrupt."""


class CheckpointError(SmoothcertError):
    """A checkpoint that is missing, corrupt, or not in smoothcert's format."""


class ResultFileError(SmoothcertError):
    """A result file that cannot be continued as asked."""
