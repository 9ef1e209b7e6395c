"""Feedback signals: the envelope, power or phase of a rhythm over a group of predicted MEG sensors,
estimated for the instant of the newest sample.

A closed loop turns predicted MEG into a few values (alpha power over occipital sensors, the phase
of a rhythm) many times a second, and acts on them. What it wants is the rhythm as the brain has
it *now*: the zero-phase band-passed MEG (`brainformer.evaluation.delay.zero_phase_band`), its
Hilbert envelope and phase. The usual consumer — a narrow causal Butterworth band-pass, rectify, a
moving mean — correlates best with that envelope about 300 ms late: the estimator, not the
transport, decides the delay a closed loop feels.

The estimator
-------------
One causal complex FIR filter per band: the analytic Wiener predictor. Its taps ``h`` weigh the
last `history_s` of the input (every `stride`-th sample: the input is band-limited far below its
Nyquist frequency) and minimise the mean squared error

    E | Σ_k h_k x(t − k·stride) − a(t) |²,   a = analytic signal of the zero-phase band-passed MEG

at the same instant `t`. The normal equations ``R h = r`` take the input's autocorrelation `R` and
the cross-correlation `r` between the target and the input from a prior spectrum of the MEG:

    S(f) = 1/f background × (1 + PRIOR_PEAK_GAIN · Lorentzian at the band centre,
                             half-width PRIOR_PEAK_HALF_WIDTH × band width)

and from the filter that put the input in the model's band (`InputBand`): the model's causal
target band (the default model: the predictor undoes its phase lag), or its zero-phase band
(``target_phase = "zero_phase"``, e.g. default-lowdelay). The input's prior adds the model's
error outside that band where the model's EEG filters let it through (`PRIOR_OUT_OF_BAND_ERROR`):
a model without an EEG low-pass predicts broadband error above its band, which the predictor then
rejects like a band-pass (measured on the real recording: default-lowdelay's served alpha
envelope, r at zero lag 0.21 without this term, 0.55 with it). A resonance in 1/f noise is the model a
Kalman oscillator tracker assumes, and "forecast by an AR model, then filter with zero phase" is
linear in the past samples too: the Wiener FIR is the best linear estimator of that family,
solved once, applied as one dot product per channel. The envelope is ``|â|``, the phase ``arg â``.

Which design was chosen, and how it compares with the naive chain, is measured by
``benchmarks/bench_feedback.py`` (docs/feedback.md).

Delay
-----
The filter aims at the present, but an estimate of an envelope from the past still correlates
best with the truth somewhat later (its effective delay; the phase is not late). That delay is
measured, not assumed: `measure_delay` runs the estimator on a surrogate signal drawn from the
prior (a Gaussian process with the prior spectrum, through the model's band) whose truth is known,
and finds the lag of the best correlation (`brainformer.evaluation.delay.lag_correlation`; for a
phase, the best phase locking). This is what a signal publishes as its delay; the benchmark
checks it against the physics simulator.

Signals
-------
A signal (`FeedbackSignalSettings`, from TOML) picks MEG sensors (names, patterns, types, or a
weight vector), a band and a measure; `plan_feedback` checks it against a model's channels and
band (`FeedbackError`, naming the key) and designs the estimators. Without weights a group's
envelope is the square root of the mean power over its sensors (power: that mean); with weights
the measure is that of the weighted sum (a spatial filter). A phase needs one sensor or weights.

Torch-free: numpy and scipy only.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import scipy.linalg
import scipy.signal

from brainformer.evaluation.delay import BAND_FILTER_ORDER, lag_correlation, lag_phase_locking, zero_phase_band

__all__ = [
    "FeedbackError",
    "InputBand",
    "Estimator",
    "DelayMeasurement",
    "FeedbackSignal",
    "FeedbackPlan",
    "design_estimator",
    "measure_delay",
    "plan_feedback",
    "plan_signal",
    "signal_values",
    "true_analytic",
    "MEASURE_UNITS",
]

#: The prior: a rhythm this many times the 1/f background at the band centre…
PRIOR_PEAK_GAIN = 5.0
#: …with a Lorentzian peak of this half-width, as a fraction of the band width.
PRIOR_PEAK_HALF_WIDTH = 0.25
#: The 1/f background is flat below this frequency (Hz), so that it stays finite at DC.
PRIOR_PINK_FLOOR_HZ = 0.5
#: White noise added to the input's prior, relative to its mean power: what keeps the normal
#: equations well conditioned.
PRIOR_NOISE_FLOOR = 1e-3
#: The model's error outside its target band, relative to the input's mean power, where its EEG
#: filters let it through: a model whose EEG is not low-passed (default-lowdelay) predicts
#: broadband error above its target band, which the estimator must reject as a band-pass would.
PRIOR_OUT_OF_BAND_ERROR = 1.0
#: The taps are spaced so that they sample the input at least this often (Hz)…
TAP_RATE_MIN_HZ = 150.0
#: …and at least this many times the band's upper edge.
TAP_RATE_PER_BAND_EDGE = 5.0
#: Frequency resolution (Hz) of the design grid: fine against the narrowest band's peak.
DESIGN_RESOLUTION_HZ = 0.04
#: The surrogate on which a design's delay is measured: samples and seed (deterministic).
SURROGATE_SAMPLES = 1 << 17
SURROGATE_SEED = 0
#: Lags (s) scanned on either side of zero for the measured delay.
DELAY_MAX_LAG_S = 0.3

#: The unit of each measure, by sensor unit.
MEASURE_UNITS = {"envelope": "{unit}", "power": "{unit}^2", "phase": "rad"}
SENSOR_UNITS = {"mag": "T", "grad": "T/m"}


class FeedbackError(ValueError):
    """A feedback signal a model cannot serve; the message names the signal's key."""


# ----------------------------------------------------------------------------------------------
# The input: what the served model's output is
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class InputBand:
    """The band the served model's prediction lies in: its target filters (SOS), and whether they
    are applied forward and backward (zero phase) or forward only (causal).

    Attributes:
        sos: `(sections, 6)` cascade (empty: no filter).
        zero_phase: True for a model trained on the zero-phase target.
        sfreq_hz: the model rate.
        band_hz: (high-pass, low-pass) Hz, None where absent.
    """

    sos: np.ndarray
    zero_phase: bool
    sfreq_hz: float
    band_hz: tuple[float | None, float | None]
    error_sos: np.ndarray | None = None

    @classmethod
    def from_config(cls, config: Any) -> "InputBand":
        """The target band of a model config (`BrainformerConfig` or its fields)."""
        from brainformer.preprocessing import design_band, input_band, is_zero_phase_target, target_band

        band = target_band(config)
        sos, _ = design_band(band, float(config.sfreq_hz))
        error_sos, _ = design_band(input_band(config), float(config.sfreq_hz))
        return cls(sos=sos, zero_phase=is_zero_phase_target(config), sfreq_hz=float(config.sfreq_hz),
                   band_hz=(band.highpass_hz, band.lowpass_hz), error_sos=error_sos)

    def error_response(self, frequencies_hz: np.ndarray) -> np.ndarray:
        """Where the model's errors lie: the response of its EEG filters (its input's band)."""
        if self.error_sos is None or self.error_sos.shape[0] == 0:
            return np.ones(np.shape(frequencies_hz))
        _, h = scipy.signal.sosfreqz(self.error_sos, worN=np.asarray(frequencies_hz, dtype=np.float64), fs=self.sfreq_hz)
        return np.abs(h)

    def response(self, frequencies_hz: np.ndarray) -> np.ndarray:
        """Complex frequency response at `frequencies_hz` (any sign)."""
        if self.sos.shape[0] == 0:
            return np.ones(np.shape(frequencies_hz), dtype=np.complex128)
        _, h = scipy.signal.sosfreqz(self.sos, worN=np.asarray(frequencies_hz, dtype=np.float64), fs=self.sfreq_hz)
        return np.abs(h) ** 2 + 0j if self.zero_phase else h

    def response_magnitude(self, frequencies_hz: np.ndarray) -> np.ndarray:
        """|response| of the filters applied once (forward only), in [0, 1]."""
        if self.sos.shape[0] == 0:
            return np.ones(np.shape(frequencies_hz))
        _, h = scipy.signal.sosfreqz(self.sos, worN=np.asarray(frequencies_hz, dtype=np.float64), fs=self.sfreq_hz)
        return np.minimum(np.abs(h), 1.0)

    def apply(self, signal: np.ndarray) -> np.ndarray:
        """`signal (n, channels)` through this band, as a perfect model would predict it."""
        signal = np.asarray(signal, dtype=np.float64)
        if self.sos.shape[0] == 0:
            return signal.copy()
        if self.zero_phase:
            return scipy.signal.sosfiltfilt(self.sos, signal, axis=0)
        return scipy.signal.sosfilt(self.sos, signal, axis=0)

    def describe(self) -> str:
        low, high = self.band_hz
        band = f"{'' if low is None else f'{low:g}'}–{'' if high is None else f'{high:g}'} Hz"
        return f"{'zero-phase' if self.zero_phase else 'causal'} {band}"


# ----------------------------------------------------------------------------------------------
# The estimator
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Estimator:
    """A designed analytic Wiener predictor for one band.

    Attributes:
        band_hz: (low, high) Hz of the rhythm.
        sfreq_hz: the input rate.
        history_s: the span of input it weighs.
        stride: samples between two taps.
        taps: `(n_taps,)` complex; ``taps[k]`` multiplies ``x(t − k·stride)``.
        input_band: the band of the input it was designed for.
    """

    band_hz: tuple[float, float]
    sfreq_hz: float
    history_s: float
    stride: int
    taps: np.ndarray
    input_band: InputBand

    @property
    def n_taps(self) -> int:
        return int(self.taps.size)

    @property
    def span_samples(self) -> int:
        """Input samples the newest estimate depends on (the newest one included)."""
        return (self.n_taps - 1) * self.stride + 1

    def impulse_response(self) -> np.ndarray:
        """`(span_samples,)` complex: the taps at every input sample (zeros between them)."""
        dense = np.zeros(self.span_samples, dtype=np.complex128)
        dense[:: self.stride] = self.taps
        return dense

    def apply(self, signal: np.ndarray) -> np.ndarray:
        """The estimate at every sample of `signal (n, channels)` (offline; the first
        `span_samples - 1` rows lack history and are built from zeros before the start).
        Returns `(n, channels)` complex128."""
        return scipy.signal.lfilter(self.impulse_response(), [1.0], np.asarray(signal, dtype=np.float64), axis=0)

    def describe(self) -> str:
        low, high = self.band_hz
        return (f"analytic Wiener FIR {low:g}–{high:g} Hz, {self.n_taps} taps every {self.stride} samples "
                f"({1e3 * (self.span_samples - 1) / self.sfreq_hz:.0f} ms), for a {self.input_band.describe()} input")


def tap_stride(sfreq_hz: float, band_hz: tuple[float, float]) -> int:
    """Samples between two taps: the input sampled at ≥ `TAP_RATE_MIN_HZ` and ≥
    `TAP_RATE_PER_BAND_EDGE` × the band's upper edge."""
    tap_rate = max(TAP_RATE_MIN_HZ, TAP_RATE_PER_BAND_EDGE * band_hz[1])
    return max(1, int(math.floor(sfreq_hz / tap_rate)))


def prior_spectrum(frequencies_hz: np.ndarray, band_hz: tuple[float, float]) -> np.ndarray:
    """The MEG power spectrum the design assumes (arbitrary scale): 1/f with a rhythm in the band."""
    f = np.abs(np.asarray(frequencies_hz, dtype=np.float64))
    low, high = band_hz
    centre = math.sqrt(low * high)
    half_width = PRIOR_PEAK_HALF_WIDTH * (high - low)
    pink = 1.0 / np.maximum(f, PRIOR_PINK_FLOOR_HZ)
    return pink * (1.0 + PRIOR_PEAK_GAIN / (1.0 + ((f - centre) / half_width) ** 2))


def truth_response(frequencies_hz: np.ndarray, band_hz: tuple[float, float], sfreq_hz: float) -> np.ndarray:
    """Frequency response from the MEG to the analytic signal of its zero-phase band-pass (the
    truth): the band-pass forward and backward, doubled at positive and removed at negative
    frequencies."""
    f = np.asarray(frequencies_hz, dtype=np.float64)
    sos = scipy.signal.butter(BAND_FILTER_ORDER, band_hz, btype="bandpass", fs=sfreq_hz, output="sos")
    _, h = scipy.signal.sosfreqz(sos, worN=f, fs=sfreq_hz)
    return np.where(f > 0, 2.0 * np.abs(h) ** 2, 0.0).astype(np.complex128)


def _design_grid(sfreq_hz: float, span_samples: int) -> np.ndarray:
    n_fft = 1 << int(math.ceil(math.log2(max(16 * span_samples, sfreq_hz / DESIGN_RESOLUTION_HZ))))
    return np.fft.fftfreq(n_fft, 1.0 / sfreq_hz)


def design_estimator(band_hz: Sequence[float], input_band: InputBand, history_s: float = 0.4) -> Estimator:
    """The analytic Wiener predictor of `band_hz` for an input in `input_band` (module docstring).

    Raises FeedbackError when the band does not fit below the Nyquist frequency."""
    low, high = float(band_hz[0]), float(band_hz[1])
    sfreq_hz = input_band.sfreq_hz
    if not 0 < low < high < sfreq_hz / 2:
        raise FeedbackError(f"band {low:g}–{high:g} Hz does not fit below the Nyquist frequency {sfreq_hz / 2:g} Hz")
    stride = tap_stride(sfreq_hz, (low, high))
    n_taps = int(round(history_s * sfreq_hz / stride)) + 1
    span = (n_taps - 1) * stride + 1
    f = _design_grid(sfreq_hz, span)
    prior = prior_spectrum(f, (low, high))
    response = input_band.response(f)
    input_power = prior * np.abs(response) ** 2
    outside = np.abs(input_band.error_response(f)) ** 2 * (1.0 - input_band.response_magnitude(f) ** 2)
    input_power = input_power + PRIOR_NOISE_FLOOR * input_power.mean() + PRIOR_OUT_OF_BAND_ERROR * input_power.mean() * outside
    # Autocorrelation of the input and E[a(t) x(t − τ)], τ ≥ 0, on the taps' lags.
    autocorrelation = np.fft.ifft(input_power).real[:span:stride]
    cross = np.fft.ifft(truth_response(f, (low, high), sfreq_hz) * np.conj(response) * prior)[:span:stride]
    taps = (scipy.linalg.solve_toeplitz(autocorrelation, cross.real)
            + 1j * scipy.linalg.solve_toeplitz(autocorrelation, cross.imag))
    # Scaled (a complex number) so that a pure rhythm at the band centre reads its true amplitude
    # and phase: the Wiener solution shrinks its estimate; r and the locking value do not change.
    centre = math.sqrt(low * high)
    lags = np.arange(taps.size) * stride
    gain = (taps @ np.exp(-2j * math.pi * centre * lags / sfreq_hz)) * input_band.response(np.array([centre]))[0]
    taps = taps * (truth_response(np.array([centre]), (low, high), sfreq_hz)[0] / gain)
    return Estimator(band_hz=(low, high), sfreq_hz=sfreq_hz, history_s=float(history_s), stride=stride, taps=taps,
                     input_band=input_band)


# ----------------------------------------------------------------------------------------------
# Its delay, measured on a surrogate whose truth is known
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DelayMeasurement:
    """How late a measure's estimate is against its truth.

    Attributes:
        measure: envelope, power or phase.
        delay_ms: the lag of the best correlation (phase: of the best phase locking).
        score_at_zero, score_at_delay: r (phase: the locking's real part) at zero lag and there.
    """

    measure: str
    delay_ms: float
    score_at_zero: float
    score_at_delay: float

    def to_dict(self) -> dict[str, Any]:
        return {"measure": self.measure, "delay_ms": round(self.delay_ms, 2),
                "score_at_zero": round(self.score_at_zero, 4), "score_at_delay": round(self.score_at_delay, 4)}


def surrogate(estimator: Estimator, n_samples: int = SURROGATE_SAMPLES, seed: int = SURROGATE_SEED
              ) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian MEG signal with the prior spectrum: ``(input (n,), true analytic signal (n,))``,
    the input through the estimator's input band, the truth through the zero-phase band and
    Hilbert transform (both circular: the edges are left out by the caller)."""
    sfreq_hz = estimator.sfreq_hz
    f = np.fft.fftfreq(n_samples, 1.0 / sfreq_hz)
    rng = np.random.default_rng(seed)
    spectrum = np.fft.fft(rng.standard_normal(n_samples)) * np.sqrt(prior_spectrum(f, estimator.band_hz))
    x = np.fft.ifft(spectrum * estimator.input_band.response(f)).real
    truth = np.fft.ifft(spectrum * truth_response(f, estimator.band_hz, sfreq_hz))
    return x, truth


def measure_delay(estimator: Estimator, measure: str) -> DelayMeasurement:
    """The effective delay of `measure` ("envelope", "power", "phase") of `estimator`'s output on
    its surrogate (module docstring)."""
    x, truth = surrogate(estimator)
    estimate = estimator.apply(x[:, None])[:, 0]
    edge = max(estimator.span_samples, int(2 * estimator.sfreq_hz))
    estimate, truth = estimate[edge:-edge, None], truth[edge:-edge, None]
    sfreq_hz = estimator.sfreq_hz
    if measure == "phase":
        # Only within half a cycle of the band centre: a rhythm's phase repeats every cycle.
        half_cycle_s = 0.5 / math.sqrt(estimator.band_hz[0] * estimator.band_hz[1])
        lags, locking = lag_phase_locking(np.angle(truth), np.angle(estimate), sfreq_hz, half_cycle_s)
        score = locking.real
    else:
        power = measure == "power"
        lags, score = lag_correlation(_measure_of(truth, power), _measure_of(estimate, power), sfreq_hz, DELAY_MAX_LAG_S)
    best = int(np.nanargmax(score))
    zero = int(np.flatnonzero(lags == 0)[0])
    return DelayMeasurement(measure, float(1e3 * lags[best] / sfreq_hz), float(score[zero]), float(score[best]))


def _measure_of(analytic: np.ndarray, power: bool) -> np.ndarray:
    magnitude = np.abs(analytic)
    return magnitude * magnitude if power else magnitude


# ----------------------------------------------------------------------------------------------
# Signals: sensors, band, measure
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class FeedbackSignal:
    """One planned signal.

    Attributes:
        name: its channel label.
        measure: envelope, power or phase.
        band_hz: (low, high) Hz.
        history_s: the estimator's span.
        channels: `(k,)` indices of its sensors among the model's MEG channels (model order).
        sensor_names: their names.
        weights: `(k,)` float64 spatial filter, or None (the group's mean power).
        unit: of its values (``T``, ``T/m^2``, ``rad``, …).
        where: the table it came from, for messages.
    """

    name: str
    measure: str
    band_hz: tuple[float, float]
    history_s: float
    channels: np.ndarray
    sensor_names: tuple[str, ...]
    weights: np.ndarray | None
    unit: str
    where: str

    @property
    def estimator_key(self) -> tuple[float, float, float]:
        return (self.band_hz[0], self.band_hz[1], self.history_s)

    def describe(self) -> str:
        low, high = self.band_hz
        n = len(self.channels)
        how = "the weighted sum of " if self.weights is not None else ("the mean power of " if n > 1 else "")
        return (f"{self.name}: {self.measure} {low:g}–{high:g} Hz of {how}{n} sensor{'s' if n != 1 else ''} "
                f"({_name_list(self.sensor_names)}), {self.unit}")


def _name_list(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … {len(names)} in all" if len(names) > limit else "")


def plan_signal(settings: Any, meg_names: Sequence[str], meg_types: Sequence[str],
                model_band_hz: tuple[float | None, float | None] | None = None, sfreq_hz: float | None = None
                ) -> FeedbackSignal:
    """A `FeedbackSignalSettings` checked against a model's MEG channels (and band and rate, when
    given). Raises FeedbackError naming the key at fault."""
    where = settings.where or f"feedback.{settings.name}"
    names = list(meg_names)
    types = list(meg_types)
    selected = np.ones(len(names), dtype=bool)
    if settings.sensors is not None:
        matched = np.zeros(len(names), dtype=bool)
        for pattern in settings.sensors:
            hits = np.array([_sensor_matches(name, pattern) for name in names], dtype=bool)
            if not hits.any():
                raise FeedbackError(f"{where}.sensors: {pattern!r} matches no MEG sensor of the model "
                                    f"({names[0]!r} … {names[-1]!r})")
            matched |= hits
        selected &= matched
    if settings.types is not None:
        selected &= np.isin(np.asarray(types), list(settings.types))
        if not selected.any():
            raise FeedbackError(f"{where}: no sensor is both in sensors and of types {list(settings.types)}")
    weights = None
    if settings.weights is not None:
        weights = np.asarray(settings.weights, dtype=np.float64)
        if settings.sensors is None and settings.types is None and weights.size == len(names):
            pass  # one weight per MEG channel: every channel selected
        elif weights.size == len(names) and int(selected.sum()) != len(names):
            weights = weights[selected]
        elif weights.size != int(selected.sum()):
            raise FeedbackError(f"{where}.weights: {weights.size} weights for {int(selected.sum())} selected sensors; "
                                f"give one per selected sensor (model order) or one per MEG channel ({len(names)})")
        keep = weights != 0
        if not keep.any():
            raise FeedbackError(f"{where}.weights: every selected sensor has weight 0")
        channels = np.flatnonzero(selected)[keep]
        weights = weights[keep]
    else:
        channels = np.flatnonzero(selected)
    chosen_types = sorted({types[i] for i in channels})
    if settings.measure == "phase" and weights is None and channels.size > 1:
        raise FeedbackError(f"{where}: a phase is measured on one signal: select one sensor, or give weights "
                            f"(a spatial filter) for the {channels.size} selected")
    if len(chosen_types) > 1 and weights is None and settings.measure != "phase":
        raise FeedbackError(f"{where}: mixes magnetometers and gradiometers, whose powers have different units; "
                            f"set types = [\"mag\"] or [\"grad\"], or give weights")
    sensor_unit = SENSOR_UNITS[chosen_types[0]] if len(chosen_types) == 1 else "a.u."
    unit = MEASURE_UNITS[settings.measure].format(unit=sensor_unit if settings.measure != "power" or "/" not in sensor_unit
                                                  else f"({sensor_unit})")
    band_hz = (float(settings.band_hz[0]), float(settings.band_hz[1]))
    if sfreq_hz is not None and band_hz[1] >= sfreq_hz / 2:
        raise FeedbackError(f"{where}.band_hz = {list(band_hz)} does not fit below the model's Nyquist frequency "
                            f"{sfreq_hz / 2:g} Hz")
    if model_band_hz is not None:
        low, high = model_band_hz
        if (low is not None and band_hz[0] < low) or (high is not None and band_hz[1] > high):
            raise FeedbackError(f"{where}.band_hz = {list(band_hz)} reaches outside the model's band "
                                f"{'' if low is None else f'{low:g}'}–{'' if high is None else f'{high:g}'} Hz: "
                                "its prediction holds nothing there")
    return FeedbackSignal(name=settings.name, measure=settings.measure, band_hz=band_hz, history_s=float(settings.history_s),
                          channels=channels, sensor_names=tuple(names[i] for i in channels), weights=weights, unit=unit,
                          where=where)


def _sensor_matches(name: str, pattern: str) -> bool:
    """Exact names first; shell patterns (``*``, ``?``, ``[...]``) otherwise; spaces and case as MNE
    and amplifiers spell them vary (``MEG 2011`` = ``MEG2011`` = ``meg 2011``)."""
    squeeze = lambda text: text.replace(" ", "").lower()  # noqa: E731
    return fnmatch.fnmatchcase(squeeze(name), squeeze(pattern))


@dataclass(frozen=True, eq=False)
class FeedbackPlan:
    """Every signal of one served model, with its estimator and measured delay.

    Attributes:
        signals: in the order of the settings (the channel order of the feedback stream).
        estimators: by `FeedbackSignal.estimator_key`.
        delays: one `DelayMeasurement` per signal.
        input_band: the model's output band.
        sfreq_hz: the model rate.
    """

    signals: tuple[FeedbackSignal, ...]
    estimators: Mapping[tuple[float, float, float], Estimator]
    delays: tuple[DelayMeasurement, ...]
    input_band: InputBand
    sfreq_hz: float
    model: str = ""
    extra: dict = field(default_factory=dict)

    def estimator(self, signal: FeedbackSignal) -> Estimator:
        return self.estimators[signal.estimator_key]

    def describe(self) -> list[str]:
        """One line per signal, for logs and people."""
        return [f"{signal.describe()}; {self.estimator(signal).describe()}; delay {delay.delay_ms:.0f} ms"
                for signal, delay in zip(self.signals, self.delays)]


def plan_feedback(signal_settings: Iterable[Any], config: Any, model: str = "") -> FeedbackPlan:
    """Plan every signal for a model (config or fields): sensors, estimators and their measured
    delays (each distinct band, span and measure designed and measured once). Raises FeedbackError."""
    input_band = InputBand.from_config(config)
    names, types = list(config.meg_channel_names), list(config.meg_channel_types)
    signals = tuple(plan_signal(s, names, types, input_band.band_hz, input_band.sfreq_hz) for s in signal_settings)
    estimators: dict[tuple[float, float, float], Estimator] = {}
    measured: dict[tuple[tuple[float, float, float], str], DelayMeasurement] = {}
    for signal in signals:
        key = signal.estimator_key
        if key not in estimators:
            try:
                estimators[key] = design_estimator(signal.band_hz, input_band, signal.history_s)
            except FeedbackError as err:
                raise FeedbackError(f"{signal.where}.band_hz: {err}") from None
        if (key, signal.measure) not in measured:
            measured[(key, signal.measure)] = measure_delay(estimators[key], signal.measure)
    delays = tuple(measured[(s.estimator_key, s.measure)] for s in signals)
    return FeedbackPlan(signals=signals, estimators=estimators, delays=delays, input_band=input_band,
                        sfreq_hz=input_band.sfreq_hz, model=model)


# ----------------------------------------------------------------------------------------------
# Offline: values from analytic signals, and the truth
# ----------------------------------------------------------------------------------------------
def signal_values(signal: FeedbackSignal, analytic: np.ndarray) -> np.ndarray:
    """`(n,)` values of `signal` from the analytic signals of its sensors, `(n, k)` complex (in
    the order of `signal.channels`): what the stage publishes, and its truth from the true ones."""
    analytic = np.asarray(analytic)
    if signal.weights is not None:
        combined = analytic @ signal.weights
        if signal.measure == "phase":
            return np.angle(combined)
        power = np.abs(combined) ** 2
    elif signal.measure == "phase":
        return np.angle(analytic[:, 0])
    else:
        power = (np.abs(analytic) ** 2).mean(axis=1)
    return np.sqrt(power) if signal.measure == "envelope" else power


def true_analytic(meg: np.ndarray, sfreq_hz: float, band_hz: Sequence[float]) -> np.ndarray:
    """The truth a feedback signal aims at: the analytic signal of the zero-phase band-passed
    `meg (n, channels)` (`zero_phase_band`, then the Hilbert transform)."""
    band = zero_phase_band(meg, sfreq_hz, (float(band_hz[0]), float(band_hz[1])))
    return scipy.signal.hilbert(band, axis=0)

