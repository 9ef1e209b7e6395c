"""The one error of source adaptation."""

from __future__ import annotations

__all__ = ["AdaptationError"]


class AdaptationError(ValueError):
    """A source the model cannot be served from, as planned: the message is one line naming the
    problem (no EEG channel, non-float format, unknown unit, too many missing electrodes, unknown
    montage, …). The daemon turns it into exit code 2."""
