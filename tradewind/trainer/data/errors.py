"""The one error type of the data pipeline."""

from __future__ import annotations


class DataError(ValueError):
    """The data cannot be used as configured (missing file, unknown symbol, too few bars...).

    Retrying will not help, so the trainer maps it to its permanent-error exit code. Transient
    failures (a dropped connection to the object store) are not wrapped in it."""
