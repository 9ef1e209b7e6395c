"""The one error of the data package."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A recording, BIDS root or dataset that cannot be used; the message names the path."""
