"""MEGQuantizer: scaled MEG ↔ token ids for the tokens head.

Levels are spread uniformly over `[-clip, clip]` and occupy token ids `3 … n_levels + 2`; ids
0/1/2 are pad/bos/eos. Values outside `±clip` are clipped to the outermost level.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

    from brainformer.config_fields import BrainformerFields
    from brainformer.configuration_brainformer import BrainformerConfig

__all__ = ["MEGQuantizer", "FIRST_LEVEL_TOKEN_ID"]

# Token ids below this are the special tokens pad (0), bos (1), eos (2).
FIRST_LEVEL_TOKEN_ID = 3

ArrayLike = TypeVar("ArrayLike", np.ndarray, "torch.Tensor")


def _is_tensor(values: Any) -> bool:
    # A tensor exists only once torch is imported: numpy callers (the data package's Hugging Face
    # view) never pay for importing it.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(values, torch.Tensor)


class MEGQuantizer:
    """Uniform quantizer between scaled MEG values and token ids.

    Args:
        n_levels: number of quantization levels (≥ 2).
        clip: half-range in scaled units; levels span `[-clip, clip]`.

    Inside `±clip` the round-trip error `|decode(encode(x)) - x|` is at most `step / 2`, where
    `step = 2 * clip / (n_levels - 1)`.
    """

    def __init__(self, n_levels: int = 255, clip: float = 4.0):
        if isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 2:
            raise ValueError(f"MEGQuantizer n_levels = {n_levels!r} is invalid: expected an integer >= 2")
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip) or clip <= 0:
            raise ValueError(f"MEGQuantizer clip = {clip!r} is invalid: expected a finite number > 0")
        self.n_levels = n_levels
        self.clip = float(clip)
        self.step = 2.0 * self.clip / (n_levels - 1)

    @classmethod
    def from_config(cls, config: BrainformerConfig | BrainformerFields) -> MEGQuantizer:
        return cls(n_levels=config.n_quantization_levels, clip=config.quantization_clip)

    @property
    def vocab_size(self) -> int:
        return self.n_levels + FIRST_LEVEL_TOKEN_ID

    def encode(self, values: ArrayLike) -> ArrayLike:
        """Scaled values `(...)` (numpy or torch, float) → token ids `(...)` int64, same library.

        NaN is refused (it has no level); ±inf clip to the outermost levels.
        """
        if _is_tensor(values):
            import torch

            if torch.isnan(values).any():
                raise ValueError("MEGQuantizer.encode got NaN values; expected finite scaled MEG")
            clipped = values.to(torch.float64).clamp(-self.clip, self.clip)
            levels = torch.round((clipped + self.clip) / self.step).long()
            return levels.clamp(0, self.n_levels - 1) + FIRST_LEVEL_TOKEN_ID
        values = np.asarray(values)
        if np.isnan(values).any():
            raise ValueError("MEGQuantizer.encode got NaN values; expected finite scaled MEG")
        clipped = np.clip(values.astype(np.float64), -self.clip, self.clip)
        levels = np.rint((clipped + self.clip) / self.step).astype(np.int64)
        return np.clip(levels, 0, self.n_levels - 1) + FIRST_LEVEL_TOKEN_ID

    def decode(self, tokens: ArrayLike) -> ArrayLike:
        """Token ids `(...)` → scaled values `(...)` float32, same library.

        Special tokens (pad/bos/eos) or ids beyond the vocabulary raise `ValueError`.
        """
        if _is_tensor(tokens):
            import torch

            levels = tokens.long() - FIRST_LEVEL_TOKEN_ID
            if levels.numel() and (levels.min() < 0 or levels.max() >= self.n_levels):
                raise ValueError(self._range_message(int(tokens.min()), int(tokens.max())))
            return (levels.to(torch.float64) * self.step - self.clip).to(torch.float32)
        tokens = np.asarray(tokens)
        if tokens.dtype.kind not in "iu":
            raise ValueError(f"MEGQuantizer.decode got dtype {tokens.dtype}; expected integer token ids")
        levels = tokens.astype(np.int64) - FIRST_LEVEL_TOKEN_ID
        if levels.size and (levels.min() < 0 or levels.max() >= self.n_levels):
            raise ValueError(self._range_message(int(tokens.min()), int(tokens.max())))
        return (levels * self.step - self.clip).astype(np.float32)

    def _range_message(self, low: int, high: int) -> str:
        return (
            f"MEGQuantizer.decode got token ids in [{low}, {high}]; expected level ids "
            f"{FIRST_LEVEL_TOKEN_ID}..{self.n_levels + FIRST_LEVEL_TOKEN_ID - 1} (0/1/2 are pad/bos/eos)"
        )
