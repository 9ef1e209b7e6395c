"""Band filter banks that start the gain head and the envelope features where brain rhythms are.

`training.init_filters_from_bands` sets, before training:

- the gain head's filters (`config.gain_filters`) to a bank of band-pass filters in pairs, one in
  phase and one in quadrature, with centres spread evenly over the model's band: any band-pass
  inside it, whatever its phase response, is close to a combination of the bank's outputs, so
  the gains only have to learn *which* combination and *when*;
- the envelope features' filters (`config.envelope_filters`) to quadrature pairs over the
  rhythms' range (4–30 Hz within the model's band), each feature the squared envelope of one band.

Each filter's spatial part is the first principal component of the train rows' EEG in its band
(how the strongest source in that band shows on the cap): random spatio-temporal filters see
every band and every source at once, so the gradients that would shape them start near zero and
a small amplitude-modulated term is never found (docs/transformer.md). Everything stays trainable.

With `training.gain_filters_on_components`, the last that many gain filters start instead on the
train rows' leading principal components of the whole band (one tap, on the newest sample, each
output of unit variance), with a unit gain and zero channel weights: a linear map of the EEG the
head starts from, adding nothing at first, whose channel weights get gradients from the first
step. A model without a linear path has nowhere else to learn one quickly: band filters on one
component per band cannot express it, and a gain head started at zero gains learns through a
product of three factors that all start at or near zero (docs/transformer.md).

The temporal filters are windowed-sinc low-pass prototypes (`scipy.signal.firwin`, Hamming window)
moved to each centre by a cosine and a sine, with the phase referenced to the newest tap, so
they are causal FIRs of exactly the model's tap counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.signal

logger = logging.getLogger(__name__)

#: The envelope features cover the rhythms: theta to beta, within the model's band.
ENVELOPE_RANGE_HZ = (4.0, 30.0)
#: Train rows used for the principal components (evenly spaced; covariances need no more).
MAX_ROWS = 200_000


@dataclass(frozen=True)
class BandFilters:
    """`n` spatio-temporal filters: `spatial (n, n_eeg)` unit-norm, `temporal (n, taps)` oldest tap
    first (the last multiplies the newest sample), each from the band `centres_hz ± half_width_hz`."""

    spatial: np.ndarray
    temporal: np.ndarray
    centres_hz: np.ndarray
    half_width_hz: float


def band_centres(low_hz: float, high_hz: float, count: int) -> tuple[np.ndarray, float]:
    """`count` centres evenly spaced over `[low_hz, high_hz]`, each band `± half width` tiling it."""
    if count < 1 or not high_hz > low_hz:
        raise ValueError(f"need count >= 1 and high_hz > low_hz, got {count}, {low_hz}, {high_hz}")
    spacing = (high_hz - low_hz) / count
    return low_hz + spacing * (np.arange(count) + 0.5), spacing / 2


def quadrature_pair(centre_hz: float, half_width_hz: float, taps: int, sfreq_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """Causal band-pass FIRs `(taps,)` in phase and in quadrature, oldest tap first, unit gain
    at the centre; their squared outputs summed are the band's squared envelope."""
    prototype = scipy.signal.firwin(taps, max(half_width_hz, 0.5), fs=sfreq_hz)
    age = np.arange(taps)[::-1]  # samples before the newest
    phase = 2 * np.pi * centre_hz / sfreq_hz * age
    return 2 * prototype * np.cos(phase), 2 * prototype * np.sin(phase)


def band_components(eeg: np.ndarray, centres_hz: np.ndarray, half_width_hz: float, sfreq_hz: float) -> np.ndarray:
    """`(len(centres), n_eeg)`: for each band the first principal component of `eeg`
    `(rows, n_eeg)` band-passed there (zero phase: only the covariance counts), unit norm, its
    sign fixed so its largest weight is positive."""
    components = []
    for centre in centres_hz:
        low, high = max(centre - half_width_hz, 0.1), min(centre + half_width_hz, 0.49 * sfreq_hz)
        sos = scipy.signal.butter(4, [low, high], btype="bandpass", fs=sfreq_hz, output="sos")
        banded = scipy.signal.sosfiltfilt(sos, eeg, axis=0)
        _, vectors = np.linalg.eigh(np.cov(banded, rowvar=False))
        first = vectors[:, -1]
        components.append(first * np.sign(first[np.argmax(np.abs(first))]))
    return np.array(components)


def band_filters(eeg: np.ndarray, sfreq_hz: float, low_hz: float, high_hz: float, pairs: int, taps: int) -> BandFilters:
    """`2 · pairs` filters: quadrature pairs at `pairs` centres over `[low_hz, high_hz]`, each pair
    on its band's first principal component of `eeg`, its output scaled to unit variance there."""
    centres, half_width = band_centres(low_hz, high_hz, pairs)
    spatial = band_components(eeg, centres, half_width, sfreq_hz)
    temporal = []
    for centre, component in zip(centres, spatial):
        projected = eeg @ component
        for kernel in quadrature_pair(centre, half_width, taps, sfreq_hz):
            sd = float(np.std(scipy.signal.lfilter(kernel[::-1], 1.0, projected)[taps:]))
            temporal.append(kernel / sd if sd > 0 else kernel)
    return BandFilters(np.repeat(spatial, 2, axis=0), np.array(temporal), centres, half_width)


def component_filters(eeg: np.ndarray, count: int) -> np.ndarray:
    """`(count, n_eeg)`: the leading principal components of `eeg` `(rows, n_eeg)`, each scaled so
    its output has unit variance there, the sign fixed so its largest weight is positive."""
    if not 1 <= count <= eeg.shape[1]:
        raise ValueError(f"{count} principal components asked of {eeg.shape[1]} EEG channels")
    values, vectors = np.linalg.eigh(np.cov(eeg, rowvar=False))
    order = np.argsort(values)[::-1][:count]
    leading = vectors[:, order] * np.sign(vectors[np.argmax(np.abs(vectors[:, order]), axis=0), order])
    return (leading / np.sqrt(np.maximum(values[order], 1e-12))).T


def train_eeg(data: Any) -> np.ndarray:
    """The train rows' EEG of every prepared recording (scaled units), at most `MAX_ROWS` of
    them, in stretches whole enough for the filters (every recording's rows evenly thinned by
    whole blocks, never one row in k)."""
    parts = [r.eeg[r.parts["train"][0]:r.parts["train"][1]] for r in data.prepared.recordings]
    parts = [p for p in parts if len(p)]
    total = sum(len(p) for p in parts)
    if total == 0:
        raise ValueError("no train rows to fit the band filters on")
    keep = min(1.0, MAX_ROWS / total)
    block = 20_000
    stretches = []
    for part in parts:
        starts = np.arange(0, len(part), block)
        chosen = starts[np.linspace(0, len(starts) - 1, max(1, int(round(keep * len(starts))))).astype(int)]
        stretches.extend(np.asarray(part[s:s + block], dtype=np.float64) for s in np.unique(chosen))
    return np.concatenate(stretches)


def init_filters_from_bands(model: Any, data: Any, components: int = 0) -> None:
    """Set `model`'s gain head filters and envelope features (those it has) to band filter banks
    of the train rows of `data` (`brainformer.training.TrainingData`), the last `components` gain
    filters to principal components of the EEG; see the module docstring."""
    import torch

    config = model.config
    trunk = model.brainformer
    gain_head = getattr(model, "gain_head", None)
    if gain_head is None and trunk.envelope is None:
        raise ValueError("training.init_filters_from_bands needs model.gain_filters > 0 or model.envelope_filters > 0")
    if components > config.gain_filters:
        raise ValueError(f"training.gain_filters_on_components = {components} exceeds model.gain_filters = "
                         f"{config.gain_filters}")
    if components > config.n_eeg_channels:
        raise ValueError(f"training.gain_filters_on_components = {components} exceeds the model's "
                         f"{config.n_eeg_channels} EEG channels")
    eeg = train_eeg(data)
    sfreq_hz = data.config.sfreq_hz
    low = config.highpass_hz or 1.0
    high = min(config.lowpass_hz or 0.45 * sfreq_hz, 0.45 * sfreq_hz)
    with torch.no_grad():
        if gain_head is not None:
            banded = config.gain_filters - components
            kernels = np.zeros((config.gain_filters, config.n_eeg_channels, gain_head.past + gain_head.future))
            if banded:
                pairs = -(-banded // 2)
                bank = band_filters(eeg, sfreq_hz, low, high, pairs, gain_head.past)
                # The bank's taps are causal: the lookahead taps (after the current sample) start at zero.
                kernels[:banded, :, :gain_head.past] = (bank.spatial[:, :, None] * bank.temporal[:, None, :])[:banded]
                logger.info("gain filters: %d band-pass pairs, centres %s Hz (± %.1f)", pairs,
                            np.round(bank.centres_hz, 1), bank.half_width_hz)
            if components:
                kernels[banded:, :, gain_head.past - 1] = component_filters(eeg, components)
                # Unit gains, zero channel weights: the head still adds nothing, and the channel
                # weights of the linear map get gradients at once.
                gain_head.gain_projection.bias.view(config.patch_len, config.gain_filters)[:, banded:] = 1.0
                gain_head.channel_scale[:, banded:] = 0.0
                logger.info("gain filters: %d on the EEG's leading principal components", components)
            gain_head.filters.copy_(torch.as_tensor(kernels, dtype=gain_head.filters.dtype))
        if trunk.envelope is not None:
            features = trunk.envelope
            env_low, env_high = max(low, ENVELOPE_RANGE_HZ[0]), min(high, ENVELOPE_RANGE_HZ[1])
            if not env_high > env_low:
                env_low, env_high = low, high
            bank = band_filters(eeg, sfreq_hz, env_low, env_high, config.envelope_filters, features.taps)
            features.spatial.copy_(torch.as_tensor(bank.spatial[0::2], dtype=features.spatial.dtype))
            pairs = np.stack([bank.temporal[0::2], bank.temporal[1::2]], axis=1)  # (filters, 2, taps)
            features.temporal.copy_(torch.as_tensor(pairs, dtype=features.temporal.dtype))
            logger.info("envelope features: %d quadrature pairs, centres %s Hz (± %.1f)", config.envelope_filters,
                        np.round(bank.centres_hz, 1), bank.half_width_hz)
