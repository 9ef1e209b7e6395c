"""A planted non-linearity: a known term, computable from the EEG alone, added to every MEG channel.

The default simulator holds little non-linear structure a causal model could learn (see
`envelope_informed_limit`). To test whether a model *can* find such structure when it is there,
`simulate(..., planted_share=s)` adds a term of known size that no linear filter of the EEG can
predict and that a front end limited to a model's window can compute:

```
EEG (volts, as recorded) ─┬─ · alpha topography ─ band-pass 8–12 Hz ─ square ─ 40 ms mean ─ √ ─ centre, scale ─► gate g(t)
                          └─ · beta topography ─ band-pass around the beta source's peak ─ scale ─► carrier c(t)
planted source  p(t) = g(t) · c(t) / sd                            (unit variance in the 1–40 Hz band)
MEG[:, ch]     += pattern[ch] · p(t)                               (each channel's share of variance: s)
```

The gate is the envelope of an EEG-visible rhythm (the first alpha generator, seen through its
own EEG topography), the carrier is the beta band of another EEG-visible source (the first
sparse generator): an amplitude-modulated ("gain × linear filter") coupling between rhythms.
The gate is centred, so the term has no linear part: for sign-symmetric activity its correlation
with any linear function of the EEG vanishes (third moments; only the evoked responses, driven by
positive events, are not symmetric). Every filter is causal and has forgotten its start after
about 0.15 s, well inside a 128-sample (213 ms) window.

The pattern gives every MEG channel the same expected share `s` of its variance in the default
1–40 Hz band, with the signs of the beta source's MEG field: not a single dipole, but no channel
dominates and the mean R² a perfect model gains over any linear one is `s`. The realised time
course is stored in the truth, so `brainformer.simulation.planted_share` reports the exact share
for any preprocessing.

The levels (gate mean and sd, carrier sd, product sd) are calibrated once per subject on
`CALIBRATION_SECONDS` of its EEG drawn with a seed of their own, so they never depend on the
recording's seed or length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.signal

#: The gate: the alpha band of the first alpha generator's topography, squared and averaged.
GATE_BAND_HZ = (8.0, 12.0)
GATE_SMOOTHING_S = 0.040
#: The carrier: ± this around the first sparse (beta) generator's peak frequency.
CARRIER_HALF_WIDTH_HZ = 3.0
BAND_ORDER = 2
#: The band in which each channel's share is set: the default preprocessing's (1–40 Hz, 4th order).
SHARE_BAND_HZ = (1.0, 40.0)
SHARE_BAND_ORDER = 4
CALIBRATION_SECONDS = 240.0
CALIBRATION_SEED = 2**31 - 1
#: Shares allowed: a term larger than half the MEG would no longer be "planted".
MAX_SHARE = 0.5


@dataclass(frozen=True, eq=False)
class _PlantedTerm:
    """What the generator needs to compute the planted term, for one subject and share.

    Attributes:
        share: the target share of each MEG channel's variance in the share band.
        gate_weights, carrier_weights: `(n_eeg,)` spatial filters of the raw EEG (volts), each
            summing to 0 (blind to the reference).
        gate_sos, carrier_sos: band-pass cascades.
        gate_smoothing: coefficient of the first-order mean of the squared gate band.
        gate_mean, gate_sd: of the envelope (the gate is `(envelope − mean) / sd`).
        carrier_sd, source_sd: of the carrier band, and of the product in the share band.
        meg_pattern: `(n_meg,)` MEG field per unit of the planted source (T, T/m).
    """

    share: float
    gate_weights: np.ndarray
    gate_sos: np.ndarray
    gate_smoothing: float
    gate_mean: float
    gate_sd: float
    carrier_weights: np.ndarray
    carrier_sos: np.ndarray
    carrier_sd: float
    source_sd: float
    meg_pattern: np.ndarray


class _PlantedState:
    """The planted term's filter states: chunks of EEG in, chunks of the planted source out."""

    def __init__(self, term: _PlantedTerm) -> None:
        self.term = term
        self.gate_state = np.zeros((term.gate_sos.shape[0], 2))
        self.carrier_state = np.zeros((term.carrier_sos.shape[0], 2))
        self.smoothing_state = np.zeros(1)

    def source(self, eeg: np.ndarray) -> np.ndarray:
        """`(n,)` planted source for the EEG chunk `(n, n_eeg)` (volts), states carried on."""
        term = self.term
        gate_band, self.gate_state = scipy.signal.sosfilt(term.gate_sos, eeg @ term.gate_weights, zi=self.gate_state)
        a = term.gate_smoothing
        power, self.smoothing_state = scipy.signal.lfilter([1.0 - a], [1.0, -a], gate_band**2, zi=self.smoothing_state)
        gate = (np.sqrt(np.maximum(power, 0.0)) - term.gate_mean) / term.gate_sd
        carrier, self.carrier_state = scipy.signal.sosfilt(term.carrier_sos, eeg @ term.carrier_weights, zi=self.carrier_state)
        return gate * carrier / (term.carrier_sd * term.source_sd)


def check_planted_share(value: object) -> float:
    """`planted_share` as a float in [0, MAX_SHARE); `ValueError` naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value < MAX_SHARE:
        raise ValueError(f"planted_share must be a fraction in [0, {MAX_SHARE:g}), got {value!r}")
    return float(value)


def _band_sos(low_hz: float, high_hz: float, order: int, sfreq_hz: float) -> np.ndarray:
    return scipy.signal.butter(order, [low_hz, high_hz], btype="bandpass", fs=sfreq_hz, output="sos")


def _peak_hz(a: np.ndarray, sfreq_hz: float) -> float:
    """Resonance frequency of an AR(2) denominator `[1, −φ1, −φ2]` = `[1, −2r·cos ω, r²]`."""
    radius = math.sqrt(a[2])
    return math.acos(-a[1] / (2 * radius)) * sfreq_hz / (2 * math.pi)


def _topography(leads_eeg: np.ndarray, index: int) -> np.ndarray:
    """The component's average-referenced EEG topography, unit norm (a spatial filter summing to 0)."""
    weights = leads_eeg[:, index] - leads_eeg[:, index].mean()
    return weights / np.linalg.norm(weights)


def calibrated_term(plan: Any, eeg: np.ndarray, share: float) -> _PlantedTerm:
    """The planted term of `plan`'s subject (`plan._Plan`), its levels measured on `eeg`
    `(n, n_eeg)`, EEG of that subject drawn with `CALIBRATION_SEED` (`offline` draws it)."""
    sfreq_hz = plan.truth.sfreq_hz
    kinds = plan.truth.component_kinds
    alpha, sparse = kinds.index("alpha"), kinds.index("sparse")
    carrier_peak_hz = _peak_hz(plan.sparse[0].carrier_a, sfreq_hz)
    carrier_band = (max(1.0, carrier_peak_hz - CARRIER_HALF_WIDTH_HZ), carrier_peak_hz + CARRIER_HALF_WIDTH_HZ)
    gate_weights, carrier_weights = _topography(plan.leads_eeg, alpha), _topography(plan.leads_eeg, sparse)
    gate_sos = _band_sos(*GATE_BAND_HZ, BAND_ORDER, sfreq_hz)
    carrier_sos = _band_sos(*carrier_band, BAND_ORDER, sfreq_hz)
    smoothing = math.exp(-1.0 / (GATE_SMOOTHING_S * sfreq_hz))
    # The envelope, the carrier and their product, once the filters have forgotten their start.
    gate_band = scipy.signal.sosfilt(gate_sos, eeg @ gate_weights)
    envelope = np.sqrt(np.maximum(scipy.signal.lfilter([1.0 - smoothing], [1.0, -smoothing], gate_band**2), 0.0))
    carrier = scipy.signal.sosfilt(carrier_sos, eeg @ carrier_weights)
    settled = int(1.0 * sfreq_hz)
    envelope, carrier = envelope[settled:], carrier[settled:]
    gate = (envelope - envelope.mean()) / envelope.std()
    share_sos = _band_sos(*SHARE_BAND_HZ, SHARE_BAND_ORDER, sfreq_hz)
    product = scipy.signal.sosfilt(share_sos, gate * carrier / carrier.std())[settled:]
    # Each MEG channel's expected variance in the share band, without the planted term.
    meg_variance = np.diag(plan.truth.sensor_covariance(plan.truth.filter_power_response(share_sos)))[plan.truth.n_eeg:]
    signs = np.sign(plan.leads_meg[:, sparse])
    signs[signs == 0] = 1.0
    return _PlantedTerm(
        share=share,
        gate_weights=gate_weights, gate_sos=gate_sos, gate_smoothing=smoothing,
        gate_mean=float(envelope.mean()), gate_sd=float(envelope.std()),
        carrier_weights=carrier_weights, carrier_sos=carrier_sos,
        carrier_sd=float(carrier.std()), source_sd=float(product.std()),
        meg_pattern=signs * np.sqrt(share / (1.0 - share) * meg_variance),
    )
