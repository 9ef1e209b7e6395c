"""The simulator as an endless live EEG source, for `brainformer-rt simulate --synthetic`.

Torch-free (as the whole simulator is): the real-time daemon's player imports it without the
model library.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from brainformer.simulation.generator import _ActivityGenerator
from brainformer.simulation.layouts import (
    DEFAULT_SPACING_MM,
    _check_layout,
    _check_nonnegative_int,
    _check_sfreq,
    _check_spacing,
)
from brainformer.simulation.plan import _plan


class SyntheticSource:
    """The simulator as an endless live EEG source (for `brainformer-rt simulate --synthetic`).

    Consecutive `read_eeg` calls continue one recording seamlessly: the result does not depend
    on how the samples are split into calls, and equals the EEG `simulate` gives for the same
    layout, rate, seed, subject and spacing.

    Attributes:
        layout, sfreq_hz, eeg_channel_names, meg_channel_names, meg_channel_types, truth.
        samples_generated: samples returned so far.
    """

    def __init__(
        self,
        layout: str,
        seed: int = 0,
        sfreq_hz: float | None = None,
        *,
        subject: int = 0,
        spacing_mm: float = DEFAULT_SPACING_MM,
        with_meg: bool = False,
    ) -> None:
        self.layout = _check_layout(layout)
        self.sfreq_hz = _check_sfreq(sfreq_hz, layout)
        seed = _check_nonnegative_int("seed", seed)
        plan = _plan(layout, self.sfreq_hz, _check_nonnegative_int("subject", subject), _check_spacing(spacing_mm))
        self.truth = dataclasses.replace(plan.truth, seed=seed)
        self.eeg_channel_names = list(plan.truth.eeg_channel_names)
        self.meg_channel_names = list(plan.truth.meg_channel_names)
        self.meg_channel_types = list(plan.truth.meg_channel_types)
        self._generator = _ActivityGenerator(plan, seed, with_meg=with_meg)

    @property
    def samples_generated(self) -> int:
        return self._generator.samples_generated

    def _check_count(self, n_samples: Any) -> int:
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 0:
            raise ValueError(f"n_samples must be a non-negative integer, got {n_samples!r}")
        return int(n_samples)

    def read_eeg(self, n_samples: int) -> np.ndarray:
        """The next `n_samples` of EEG, `(n_samples, n_eeg)` float32 volts."""
        n = self._check_count(n_samples)
        if n == 0:
            return np.empty((0, len(self.eeg_channel_names)), np.float32)
        eeg, _ = self._generator.generate(n)
        return eeg.astype(np.float32)

    def read_eeg_meg(self, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `n_samples` of EEG `(n, n_eeg)` and MEG `(n, n_meg)`, float32 (needs `with_meg=True`)."""
        if not self._generator.with_meg:
            raise RuntimeError("this SyntheticSource was made with with_meg=False; it only produces EEG")
        n = self._check_count(n_samples)
        if n == 0:
            return (np.empty((0, len(self.eeg_channel_names)), np.float32),
                    np.empty((0, len(self.meg_channel_names)), np.float32))
        eeg, meg = self._generator.generate(n)
        return eeg.astype(np.float32), meg.astype(np.float32)
