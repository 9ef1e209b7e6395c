"""The errors of the preprocessing, in a module of their own so that every stage can raise them."""

from __future__ import annotations

__all__ = ["NonFiniteInputError", "PreprocessingError"]


class PreprocessingError(ValueError):
    """Input the preprocessing cannot handle (rate, channels, non-finite values, statistics)."""


class NonFiniteInputError(PreprocessingError):
    """A chunk holds NaN or Inf; the preprocessor state was left untouched."""
