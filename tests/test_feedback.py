"""brainformer.feedback: the estimator on signals whose truth is known, its measured delay, and
the planning of signals against a model (errors name the key)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brainformer.feedback import (
    FeedbackError,
    InputBand,
    design_estimator,
    measure_delay,
    plan_feedback,
    plan_signal,
    signal_values,
    true_analytic,
)
from brainformer.model_dir import load_fields
from brainformer.settings import FeedbackSignalSettings

MODELS = ("default", "default-lowdelay")


@pytest.fixture(scope="module", params=MODELS)
def input_band(request) -> InputBand:
    return InputBand.from_config(load_fields(request.param))


def _rhythm(frequency_hz: float, sfreq_hz: float, seconds: float, amplitude=1.0, phase=0.3) -> np.ndarray:
    t = np.arange(int(seconds * sfreq_hz)) / sfreq_hz
    return (np.asarray(amplitude) * np.cos(2 * math.pi * frequency_hz * t + phase))[:, None]


@pytest.mark.parametrize("band", [(8.0, 12.0), (15.0, 25.0)])
def test_a_rhythm_at_the_band_centre_reads_its_amplitude_and_phase(input_band, band):
    """A pure rhythm at the centre of the band, through the model's band as a perfect model
    would predict it: once the estimator's span is full, its envelope is the rhythm's amplitude
    and its phase the true phase, at every sample (not on average)."""
    sfreq_hz = input_band.sfreq_hz
    estimator = design_estimator(band, input_band)
    centre = math.sqrt(band[0] * band[1])
    x = 3e-13 * _rhythm(centre, sfreq_hz, 12.0)
    truth = true_analytic(x, sfreq_hz, band)[:, 0]
    estimate = estimator.apply(input_band.apply(x))[:, 0]
    rows = slice(int(5 * sfreq_hz), int(8 * sfreq_hz))  # past the filters' settling, before the truth's end effects
    np.testing.assert_allclose(np.abs(estimate[rows]), np.abs(truth[rows]), rtol=0.08)
    phase_error = np.angle(estimate[rows] / truth[rows])
    assert np.max(np.abs(np.degrees(phase_error))) < 8.0


def test_off_centre_rhythms_keep_their_amplitude_and_lag_in_phase_by_the_group_delay(input_band):
    """Across the band the amplitude stays within 20 %; the phase leads below the centre and
    lags above it (the estimator's group delay), by less than 40° inside the band's inner half."""
    band = (8.0, 12.0)
    sfreq_hz = input_band.sfreq_hz
    estimator = design_estimator(band, input_band)
    rows = slice(int(5 * sfreq_hz), int(8 * sfreq_hz))
    errors = {}
    for frequency_hz in (9.0, 11.0):
        x = _rhythm(frequency_hz, sfreq_hz, 12.0)
        truth = true_analytic(x, sfreq_hz, band)[rows, 0]
        estimate = estimator.apply(input_band.apply(x))[rows, 0]
        np.testing.assert_allclose(np.abs(estimate), np.abs(truth), rtol=0.2)
        errors[frequency_hz] = float(np.degrees(np.angle(np.mean(estimate / truth))))
    assert 0 < errors[9.0] < 40 and -40 < errors[11.0] < 0


def test_an_amplitude_step_is_followed_within_the_history(input_band):
    """A rhythm whose amplitude doubles: the envelope doubles too, and is there within the
    estimator's history span."""
    band = (8.0, 12.0)
    sfreq_hz = input_band.sfreq_hz
    estimator = design_estimator(band, input_band)
    n = int(12 * sfreq_hz)
    amplitude = np.where(np.arange(n) < n // 2, 1.0, 2.0)
    estimate = np.abs(estimator.apply(input_band.apply(_rhythm(math.sqrt(96.0), sfreq_hz, 12.0, amplitude)))[:, 0])
    before = estimate[n // 2 - int(sfreq_hz): n // 2].mean()
    after = estimate[n // 2 + int((estimator.history_s + 0.1) * sfreq_hz): n // 2 + int(2 * sfreq_hz)]
    assert after.mean() / before == pytest.approx(2.0, rel=0.05)
    assert np.all(np.abs(after / before - 2.0) < 0.3)


def test_the_estimate_depends_only_on_the_past():
    """Changing the input after a sample leaves every estimate up to it unchanged."""
    band_input = InputBand.from_config(load_fields("default"))
    estimator = design_estimator((8.0, 12.0), band_input)
    x = np.random.default_rng(0).standard_normal((4000, 2))
    changed = x.copy()
    changed[3000:] += 5.0
    np.testing.assert_array_equal(estimator.apply(x)[:3000], estimator.apply(changed)[:3000])
    assert not np.allclose(estimator.apply(x)[3000:], estimator.apply(changed)[3000:])


def test_measured_delays_the_band_pass_and_the_measure():
    """Measured on the surrogate: the phase is not late (within half a sample period… a few ms);
    an envelope is, more behind a causal band than behind a zero-phase one, and more in a narrow
    low band than in a wide high one."""
    causal = InputBand.from_config(load_fields("default"))
    zero_phase = InputBand.from_config(load_fields("default-lowdelay"))
    alpha_causal = design_estimator((8.0, 12.0), causal)
    assert abs(measure_delay(alpha_causal, "phase").delay_ms) <= 5.0
    envelope_causal = measure_delay(alpha_causal, "envelope")
    envelope_zero_phase = measure_delay(design_estimator((8.0, 12.0), zero_phase), "envelope")
    beta_causal = measure_delay(design_estimator((15.0, 25.0), causal), "envelope")
    assert envelope_causal.delay_ms > envelope_zero_phase.delay_ms > 0
    assert envelope_causal.delay_ms > beta_causal.delay_ms > 0
    for measured in (envelope_causal, envelope_zero_phase, beta_causal):
        assert measured.score_at_delay >= measured.score_at_zero


def test_signal_values_of_a_group_a_weighted_sum_and_a_phase():
    analytic = np.array([[3 + 4j, 0 + 1j], [1 + 0j, 0 - 1j]])  # (n=2, 2 sensors)
    settings = FeedbackSignalSettings("s", (8, 12), "envelope", sensors=("MEG 0111", "MEG 0121"))
    names, types = ["MEG 0111", "MEG 0121"], ["mag", "mag"]
    envelope = plan_signal(settings, names, types)
    np.testing.assert_allclose(signal_values(envelope, analytic), np.sqrt([(25 + 1) / 2, (1 + 1) / 2]))
    power = plan_signal(FeedbackSignalSettings("p", (8, 12), "power", types=("mag",)), names, types)
    np.testing.assert_allclose(signal_values(power, analytic), [(25 + 1) / 2, (1 + 1) / 2])
    weighted = plan_signal(FeedbackSignalSettings("w", (8, 12), "phase", types=("mag",), weights=(1.0, -1.0)), names,
                           types)
    np.testing.assert_allclose(signal_values(weighted, analytic), np.angle([3 + 3j, 1 + 1j]))
    assert envelope.unit == "T" and power.unit == "T^2" and weighted.unit == "rad"


@pytest.fixture(scope="module")
def default_fields():
    return load_fields("default")


def _plan_one(fields, **keys):
    settings = FeedbackSignalSettings("sig", where="feedback.sig", **keys)
    return plan_signal(settings, fields.meg_channel_names, fields.meg_channel_types, (4.0, 30.0), fields.sfreq_hz)


@pytest.mark.parametrize("keys, needle", [
    ({"band_hz": (8, 12), "measure": "envelope", "sensors": ("MEG 99*",)}, "feedback.sig.sensors: 'MEG 99*' matches no"),
    ({"band_hz": (8, 12), "measure": "envelope", "sensors": ("MEG 21*",)}, "feedback.sig: mixes magnetometers"),
    ({"band_hz": (8, 12), "measure": "phase", "types": ("mag",)}, "feedback.sig: a phase is measured on one signal"),
    ({"band_hz": (1, 3), "measure": "envelope", "types": ("mag",)}, "feedback.sig.band_hz = [1.0, 3.0] reaches outside"),
    ({"band_hz": (8, 12), "measure": "envelope", "types": ("mag",), "weights": (1.0, 2.0)},
     "feedback.sig.weights: 2 weights for 102 selected sensors"),
    ({"band_hz": (8, 12), "measure": "power", "sensors": ("MEG 2111",), "types": ("grad",)},
     "feedback.sig: no sensor is both"),
])
def test_a_signal_the_model_cannot_serve_names_its_key(default_fields, keys, needle):
    with pytest.raises(FeedbackError) as raised:
        _plan_one(default_fields, **keys)
    assert needle in str(raised.value)


def test_sensors_match_by_name_and_pattern_whatever_the_spacing(default_fields):
    signal = _plan_one(default_fields, band_hz=(8, 12), measure="envelope", sensors=("meg2111", "MEG 211[2-3]"),
                       types=("grad",))
    assert signal.sensor_names == ("MEG 2113", "MEG 2112")  # the model's channel order
    weights_for_all = np.zeros(len(default_fields.meg_channel_names))
    weights_for_all[[10, 20]] = [1.0, -2.0]
    weighted = _plan_one(default_fields, band_hz=(8, 12), measure="phase", weights=tuple(weights_for_all))
    assert list(weighted.channels) == [10, 20] and list(weighted.weights) == [1.0, -2.0]


def test_plan_designs_each_estimator_once_and_publishes_measured_delays(default_fields):
    plan = plan_feedback([
        FeedbackSignalSettings("a", (8, 12), "envelope", types=("mag",)),
        FeedbackSignalSettings("b", (8, 12), "power", types=("grad",)),
        FeedbackSignalSettings("c", (8, 12), "phase", sensors=("MEG 2111",)),
    ], default_fields)
    assert len(plan.estimators) == 1
    estimator = plan.estimator(plan.signals[0])
    assert [d.delay_ms for d in plan.delays] == [measure_delay(estimator, m).delay_ms for m in ("envelope", "power", "phase")]
    assert len(plan.describe()) == 3 and "delay" in plan.describe()[0]
