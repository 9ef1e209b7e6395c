"""The plan: what it decides, how it reads, and its one-line errors; the adapter's hot path."""

from __future__ import annotations

import sys
import subprocess

import numpy as np
import pytest

from brainformer.adaptation import (
    AdaptationError, AdaptationOptions, Adapter, ModelEEG, SourceDescription, channel_position, plan_adaptation,
)
from brainformer.preprocessing import NonFiniteInputError

HZ = 600.614990234375


def _source(fields, n=60, **kw):
    values = dict(name="amp", labels=tuple(fields.eeg_channel_names[:n]), units=("uV",) * n, sfreq_hz=HZ)
    values.update(kw)
    return SourceDescription(**values)


def _one_line(error):
    message = str(error.value)
    assert "\n" not in message and message
    return message


def test_import_is_torch_free():
    code = "import sys, brainformer.adaptation; print(sorted(m for m in ('torch', 'transformers', 'mne') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_reordered_units_extra_channels(default_fields):
    names = list(default_fields.eeg_channel_names)
    labels = ["TRIG"] + [n.lower().replace(" ", "") for n in reversed(names)] + ["EOG 061", "AUX 1"]
    types = ["stim"] + ["EEG"] * 60 + ["EOG", "misc"]
    units = [""] + ["microvolts"] * 60 + ["uV", "mmHg"]  # the unit of an ignored channel does not matter
    plan = plan_adaptation(default_fields, SourceDescription("amp", tuple(labels), HZ, tuple(types), tuple(units)))
    assert plan.is_selection and plan.ignored == (("TRIG", "type stim"), ("EOG 061", "type eog"), ("AUX 1", "type misc"))
    chunk = np.arange(7 * 63, dtype=np.float32).reshape(7, 63)
    out, ts = Adapter(plan).apply(chunk, np.arange(7.0))
    np.testing.assert_allclose(out, 1e-6 * chunk[:, 60:0:-1], rtol=1e-6)
    assert out.dtype == np.float32 and np.array_equal(ts, np.arange(7.0))
    text = plan.describe()
    assert "'microvolts' → µV ×1e-06 (60)" in text and "type stim: 'TRIG'" in text and "(the model rate)" in text


def test_amplitude_check_names_the_likely_unit(default_fields, eeg_raw):
    # Real EEG in microvolts, declared as volts: values around 50 "V".
    plan = plan_adaptation(default_fields, _source(default_fields, units=("V",) * 60, channel_format="double64"))
    out, _ = Adapter(plan, max_chunk_samples=3000).apply(eeg_raw.get_data().T[:3000] * 1e6)
    assert "look like µV" in plan.amplitude_warning(out)
    honest = plan_adaptation(default_fields, _source(default_fields, channel_format="double64"))
    out, _ = Adapter(honest, max_chunk_samples=3000).apply(eeg_raw.get_data().T[:3000] * 1e6)
    assert honest.amplitude_warning(out) is None


def test_unit_override_and_missing_unit(default_fields):
    plan = plan_adaptation(default_fields, _source(default_fields, units=("",) * 60))
    assert {f for _, _, f in plan.units} == {1.0} and "taken as volts" in plan.warnings[0]
    plan = plan_adaptation(default_fields, _source(default_fields, units=("mmHg",) * 60), AdaptationOptions(input_unit="-6"))
    assert {f for _, _, f in plan.units} == {1e-6} and "overridden" in plan.describe()


def test_errors_are_one_line(default_fields):
    with pytest.raises(AdaptationError) as error:
        plan_adaptation(default_fields, _source(default_fields, channel_format="int16"))
    assert "int16" in _one_line(error)
    with pytest.raises(AdaptationError) as error:
        plan_adaptation(default_fields, _source(default_fields, sfreq_hz=0.0))
    assert "irregular" in _one_line(error)
    with pytest.raises(AdaptationError) as error:
        plan_adaptation(default_fields, SourceDescription("amp", ("TRIG", "Cz"), HZ, ("stim", "eeg")))
    assert "no EEG channel" in _one_line(error) and "'Cz'" in str(error.value)
    with pytest.raises(AdaptationError) as error:
        plan_adaptation(default_fields, _source(default_fields, units=("mmHg",) * 60))
    assert "'mmHg'" in _one_line(error) and "override" in str(error.value)
    with pytest.raises(AdaptationError) as error:
        plan_adaptation(default_fields, _source(default_fields, n=40))
    message = _one_line(error)
    assert "20 of the model's 60" in message and "25 %" in message and "'EEG 041'" in message
    with pytest.raises(AdaptationError) as error:
        plan_adaptation(default_fields, _source(default_fields), AdaptationOptions(montage="standard_9999"))
    assert "unknown montage 'standard_9999'" in _one_line(error)
    with pytest.raises(AdaptationError) as error:
        plan_adaptation(default_fields, _source(default_fields), bad_channels=["EEG 099"])
    assert "'EEG 099'" in _one_line(error)
    for options in (dict(max_missing_fraction=1.5), dict(spline_reg=-1.0), dict(input_unit="furlong")):
        with pytest.raises(AdaptationError) as error:
            AdaptationOptions(**options)
        assert "adaptation." in _one_line(error)
    assert issubclass(AdaptationError, ValueError)


def test_missing_fraction_is_an_option(default_fields):
    plan = plan_adaptation(default_fields, _source(default_fields, n=40), AdaptationOptions(max_missing_fraction=0.5))
    assert len(plan.interpolated) == 20 and "interpolated (20, missing or bad" in plan.describe()


def test_model_without_positions_refuses_interpolation(default_fields):
    bare = ModelEEG(default_fields.eeg_channel_names, None, HZ)
    assert plan_adaptation(bare, _source(default_fields)).is_selection  # nothing to interpolate: fine
    with pytest.raises(AdaptationError) as error:
        plan_adaptation(bare, _source(default_fields, n=58))
    assert "no electrode positions (eeg_positions_m)" in _one_line(error) and "'EEG 059'" in str(error.value)


def test_non_finite_chunks_are_refused_before_any_state_changes(default_fields):
    plan = plan_adaptation(default_fields, _source(default_fields, sfreq_hz=500.0, channel_format="double64"))
    adapter = Adapter(plan, max_chunk_samples=8)
    chunk = np.ones((10, 60))
    adapter.apply(chunk, np.arange(10.0))
    before = adapter._resampler.samples_in
    chunk[3, 7] = np.nan
    with pytest.raises(NonFiniteInputError):
        adapter.apply(chunk, np.arange(10.0))
    assert adapter._resampler.samples_in == before and adapter.non_finite_channels() == ["EEG 008"]


def test_set_plan_refuses_another_stream(default_fields):
    adapter = Adapter(plan_adaptation(default_fields, _source(default_fields)))
    with pytest.raises(AdaptationError):
        adapter.set_plan(plan_adaptation(default_fields, _source(default_fields, sfreq_hz=500.0)))


def test_positions_from_both_metadata_conventions():
    assert channel_position({"location": {"X": "10", "Y": "-20.5", "Z": "30"}}) == pytest.approx((0.01, -0.0205, 0.03))
    assert channel_position({"loc": {"R0x": "0.01", "R0y": "0.02", "R0z": "0.03"}}) == pytest.approx((0.01, 0.02, 0.03))
    assert channel_position({"loc": {"R0x": "0", "R0y": "0", "R0z": "0"}}) is None
    assert channel_position({"location": {"X": "nan", "Y": "1", "Z": "1"}}) is None
    assert channel_position({"label": "Cz"}) is None


def test_resampler_follows_the_models_low_pass_corner(default_fields):
    """The model's low-pass corner reaches the plan, and with it the choice of converter."""
    assert ModelEEG.from_fields(default_fields).lowpass_hz == default_fields.lowpass_hz
    at_500 = plan_adaptation(default_fields, _source(default_fields, sfreq_hz=500.0))
    assert at_500.resampler == "linear" and "resampled (linear," in at_500.describe()
    assert f"band (0-{default_fields.lowpass_hz:g} Hz)" in at_500.describe()
    assert at_500.resampler_delay_s[1] <= 1 / HZ + 1e-9  # linear: at most one output sample
    whole_band = ModelEEG(default_fields.eeg_channel_names, default_fields.eeg_positions_m, HZ, lowpass_hz=None)
    plan = plan_adaptation(whole_band, _source(default_fields, sfreq_hz=500.0))
    assert plan.resampler == "soxr QQ" and "resampled (soxr QQ," in plan.describe()
    assert Adapter(plan)._resampler.method == "soxr QQ"
    assert Adapter(at_500)._resampler.method == "linear"


def test_a_renamed_standard_montage_loads_by_either_name_without_a_deprecation_warning():
    """MNE 1.13 renamed standard_1020 to colin27_1020 and will drop the old name; users and
    `simulate --cap` keep using the old one."""
    import warnings

    from brainformer.adaptation.positions import load_montage

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old, new = load_montage("standard_1020"), load_montage("colin27_1020")
    assert len(old.ch_names) == 94 and old.ch_names == new.ch_names
    old_pos, new_pos = old.get_positions()["ch_pos"], new.get_positions()["ch_pos"]
    assert all(np.array_equal(old_pos[name], new_pos[name]) for name in old.ch_names)
