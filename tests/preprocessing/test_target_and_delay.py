"""The target the model learns (causal or zero phase) and the delay its filters put on the brain signal."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from brainformer.config_fields import BrainformerFields
from brainformer.preprocessing import (
    PreprocessingSpec,
    design_band,
    design_delay,
    filter_delay,
    input_band,
    meg_preprocessor,
    target_band,
    zero_phase_backward_pass,
)

SFREQ_HZ = 600.614990234375


def default_band_fields(**changes) -> BrainformerFields:
    """The bundled default model's filters: 4th-order 4–30 Hz Butterworth and a 60 Hz notch."""
    return BrainformerFields(**({"highpass_hz": 4.0, "lowpass_hz": 30.0, "filter_order": 4, "notch_hz": (60.0,)} | changes))


def test_group_and_phase_delay_of_the_default_filters_are_those_of_their_frequency_response():
    # Group delay from scipy's per-section group_delay must equal the numerical derivative of the
    # unwrapped phase of the whole cascade; phase delay = -phase / ω with the high-pass's phase
    # anchored at 4·π/2 below the band.
    sos, _ = design_band(input_band(default_band_fields()), SFREQ_HZ)
    frequencies = np.array([6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0])
    group_s, phase_s = filter_delay(sos, SFREQ_HZ, frequencies)
    grid = np.linspace(0.001, 40.0, 400001)
    _, response = scipy.signal.sosfreqz(sos, worN=grid, fs=SFREQ_HZ)
    phase = np.unwrap(np.angle(response))
    phase += 2 * np.pi * np.round((4 * np.pi / 2 - phase[0]) / (2 * np.pi))
    numeric_group_s = -np.gradient(phase, 2 * np.pi * grid)
    np.testing.assert_allclose(group_s, np.interp(frequencies, grid, numeric_group_s), rtol=1e-3)
    np.testing.assert_allclose(phase_s, -np.interp(frequencies, grid, phase) / (2 * np.pi * frequencies), atol=1e-5)
    # The figures the project publishes (ms): 74 at 6 Hz, 33 at 10 Hz, 22 at 20 Hz; the phase
    # leads at 6 Hz (negative phase delay) and lags at 25 Hz.
    np.testing.assert_allclose(1e3 * group_s[[0, 2, 5]], [74.3, 32.6, 22.4], atol=0.1)
    assert phase_s[0] < 0 < phase_s[-1]


def test_an_empty_cascade_delays_nothing_and_bad_frequencies_are_refused():
    group_s, phase_s = filter_delay(np.zeros((0, 6)), SFREQ_HZ, [10.0])
    assert group_s.tolist() == [0.0] and phase_s.tolist() == [0.0]
    with pytest.raises(ValueError, match="frequencies"):
        filter_delay(np.zeros((0, 6)), SFREQ_HZ, [0.0])


def test_design_delay_publishes_the_causal_delay_in_band_and_zero_for_a_zero_phase_target():
    causal = design_delay(default_band_fields())
    assert causal.target_phase == "causal"
    labels = [point.label for point in causal.output]
    assert labels[:3] == ["band low edge", "band centre", "band high edge"] and {"theta", "alpha", "beta"} <= set(labels)
    assert causal.centre.frequency_hz == pytest.approx(np.sqrt(4.0 * 30.0))
    assert causal.at("alpha").group_delay_ms == pytest.approx(32.6, abs=0.1)
    assert causal.output == causal.input  # the target goes through the input's filters
    assert "33 ms" not in causal.summary() and "30 ms at 11.0 Hz" in causal.summary()

    zero = design_delay(default_band_fields(target_phase="zero_phase", highpass_hz=1.0, lowpass_hz=None,
                                            filter_order=2, target_band_hz=(4.0, 30.0), target_filter_order=4))
    assert zero.target_phase == "zero_phase" and zero.band_hz == (4.0, 30.0)
    assert all(point.group_delay_ms == 0.0 and point.phase_delay_ms == 0.0 for point in zero.output)
    # Its input (a 2nd-order 1 Hz high-pass) delays the band far less than the default filters.
    input_alpha = next(point for point in zero.input if point.label == "alpha")
    assert 0 < input_alpha.group_delay_ms < 0.1 * causal.at("alpha").group_delay_ms
    assert all("forward and backward" in stage for stage in zero.target_filters)
    assert zero.to_dict()["output"][1]["group_delay_ms"] == 0.0


def test_the_target_band_defaults_to_the_input_filters_and_can_differ():
    fields = default_band_fields()
    assert target_band(fields) == input_band(fields)
    other = default_band_fields(target_band_hz=(8.0, None), target_filter_order=2)
    band = target_band(other)
    assert (band.highpass_hz, band.lowpass_hz, band.order) == (8.0, None, 2)
    assert PreprocessingSpec.for_meg(other, SFREQ_HZ).stages[0] == "high-pass 8 Hz (order 2)"
    assert PreprocessingSpec.for_eeg(other, SFREQ_HZ).stages[0] == "high-pass 4 Hz (order 4)"


@pytest.mark.parametrize("fields, message", [
    (dict(target_phase="acausal"), "target_phase"),
    (dict(target_band_hz=[30.0, 4.0]), "target_band_hz"),
    (dict(target_band_hz=[4.0]), "target_band_hz"),
    (dict(target_band_hz=[4.0, 400.0]), r"target_band_hz\[1\]"),
    (dict(target_filter_order=0), "target_filter_order"),
])
def test_bad_target_settings_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        BrainformerFields(**fields)


def test_the_zero_phase_target_is_the_forward_backward_filter_chunk_by_chunk_and_scaled():
    rng = np.random.default_rng(0)
    n, channels = 9000, 3
    meg = np.cumsum(rng.standard_normal((n, channels)), axis=0) * 1e-12  # drifting, like raw MEG
    mean, std = [1e-13, -2e-13, 0.0], [2e-12, 3e-12, 4e-12]
    fields = default_band_fields(target_phase="zero_phase", meg_channel_names=["A", "B", "C"],
                                 meg_channel_types=["mag", "grad", "grad"], meg_mean=mean, meg_std=std)
    spec = PreprocessingSpec.for_meg(fields, SFREQ_HZ)
    assert spec.zero_phase and spec.stages[-1].endswith("backward")

    def target(forward_chunk: int, backward_chunk: int) -> np.ndarray:
        forward = meg_preprocessor(fields, SFREQ_HZ)
        out = np.concatenate([forward.process(meg[i:i + forward_chunk], None)[0]
                              for i in range(0, n, forward_chunk)]).astype(np.float64)
        zero_phase_backward_pass(spec, out, chunk_samples=backward_chunk)
        return out

    whole = target(n, n)
    np.testing.assert_allclose(target(37, 500), whole, rtol=1e-5, atol=1e-5)  # float32 forward pass
    sos, _ = design_band(target_band(fields), SFREQ_HZ)
    reference = (scipy.signal.sosfiltfilt(sos, meg, axis=0) - mean) / np.asarray(std)
    settled = slice(1500, n - 1500)  # the edges differ: scipy pads, we start at the steady state
    np.testing.assert_allclose(whole[settled], reference[settled], atol=1e-4 * np.abs(reference[settled]).max())
    # No delay: the target peaks in correlation with the reference at lag 0.
    lags = range(-5, 6)
    r = [np.corrcoef(np.roll(whole[settled, 0], lag), reference[settled, 0])[0, 1] for lag in lags]
    assert int(np.argmax(r)) == 5


def test_the_backward_pass_refuses_a_causal_spec():
    from brainformer.preprocessing import PreprocessingError

    spec = PreprocessingSpec.for_meg(default_band_fields(), SFREQ_HZ)
    with pytest.raises(PreprocessingError, match="zero-phase"):
        zero_phase_backward_pass(spec, np.zeros((10, 306)))
