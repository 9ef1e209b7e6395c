"""benchmarks/lowdelay_sim.py: the two models it trains are the ones it says (the measured run
itself is in docs/lowdelay.md; it takes most of an hour)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.lowdelay_design import INPUT_FILTERS, LAG_SETS
from benchmarks.lowdelay_sim import model_settings, skip_path_for
from brainformer.config_fields import BrainformerFields
from brainformer.settings import load_settings, settings_from_dict

SIM_RECIPE = Path(__file__).resolve().parents[2] / "configs" / "train-sim.toml"


@pytest.mark.parametrize("lag_set", list(LAG_SETS))
def test_every_candidate_lag_set_becomes_a_skip_path_on_exactly_those_lags(lag_set):
    skip = skip_path_for(LAG_SETS[lag_set])
    assert tuple(range(0, skip["skip_lags"], skip["ridge_lag_step_samples"])) == LAG_SETS[lag_set]


def test_lags_that_no_skip_path_holds_are_refused():
    with pytest.raises(ValueError, match="not 0, step"):
        skip_path_for((0, 2, 6))


@pytest.mark.parametrize("candidate", INPUT_FILTERS)
def test_the_low_delay_model_learns_the_zero_phase_target_from_the_chosen_input_and_the_other_the_causal_one(candidate):
    base = load_settings(SIM_RECIPE)
    highpass_hz, lowpass_hz, order = candidate
    design = {"highpass_hz": highpass_hz, "lowpass_hz": lowpass_hz, "order": order, "lags": "0-12 every 3"}
    low_delay = model_settings(base, "lowdelay", design)
    causal = model_settings(base, "causal", design)
    # Both pass the checks a training TOML goes through.
    for settings in (low_delay, causal):
        settings_from_dict(settings.to_dict())
    fields = BrainformerFields.from_dict(low_delay.model)
    assert (fields.target_phase, tuple(fields.target_band_hz), fields.target_filter_order) == ("zero_phase", (4.0, 30.0), 4)
    assert (fields.highpass_hz, fields.lowpass_hz, fields.filter_order) == candidate
    assert (fields.skip_lags, low_delay.training.ridge_lag_step_samples) == (13, 3)
    fields = BrainformerFields.from_dict(causal.model)
    assert (fields.target_phase, fields.highpass_hz, fields.lowpass_hz, fields.filter_order) == ("causal", 4.0, 30.0, 4)
    assert fields.target_band_hz is None  # the causal target is the input's own band
    # Everything else is the recipe's.
    assert low_delay.data == causal.data == base.data
    assert {k: v for k, v in causal.model.items() if k not in ("highpass_hz", "lowpass_hz", "filter_order", "target_phase")} == \
        {k: v for k, v in base.model.items() if k not in ("highpass_hz", "lowpass_hz", "filter_order")}
