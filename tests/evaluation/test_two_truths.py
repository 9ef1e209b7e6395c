"""Two truths, both named: a model is scored against the MEG it learned and against the other phase,
next to ridge baselines fitted to each, and every method gets its effective delay against the
zero-phase truth. Real files, a real (tiny) model, the real recording."""

from __future__ import annotations

import json

import mne
import numpy as np
import pytest
import torch

from brainformer.config_fields import BrainformerFields
from brainformer.evaluation import evaluate_recording, predict_as_served, write_json
from brainformer.model_dir import load_model
from brainformer.modeling_brainformer import BrainformerForMEGPrediction
from brainformer.preprocessing import preprocess_recording


@pytest.fixture(scope="module")
def short_fif(sample_fif, tmp_path_factory):
    path = tmp_path_factory.mktemp("two-truths") / "short_raw.fif"
    mne.io.read_raw_fif(sample_fif, verbose="error").crop(0, 12).save(path, verbose="error")
    return path


def with_target(tiny_model_dir, tmp_path, **fields):
    """The tiny model's weights under a config whose target differs (scaling statistics kept)."""
    model = load_model(tiny_model_dir)
    config = type(model.config)(**(BrainformerFields.from_config(model.config).replace(**fields).to_dict()))
    torch.manual_seed(0)
    other = BrainformerForMEGPrediction(config)
    other.load_state_dict(model.state_dict())
    other.save_pretrained(tmp_path / "model")
    return load_model(tmp_path / "model")


@pytest.mark.parametrize("phase", ["causal", "zero_phase"])
def test_each_truth_is_the_named_meg_and_the_model_is_scored_on_both(tiny_model_dir, short_fif, tmp_path, phase):
    model = with_target(tiny_model_dir, tmp_path, target_phase=phase)
    report, _ = evaluate_recording(model, short_fif, bootstrap_replicates=10)
    raw = mne.io.read_raw_fif(short_fif, verbose="error")
    fields = BrainformerFields.from_config(model.config)
    causal = preprocess_recording(raw, fields.replace(target_phase="causal"))
    zero = preprocess_recording(raw, fields.replace(target_phase="zero_phase"))
    rows = report.rows
    truths = report.all_truths()
    assert list(truths) == (["causal", "zero-phase"] if phase == "causal" else ["zero-phase", "causal"])
    assert report.truth_name == list(truths)[0]  # the model's own target first
    np.testing.assert_array_equal(truths["causal"].truth, causal.meg[rows.test_start:rows.test_stop])
    np.testing.assert_array_equal(truths["zero-phase"].truth, zero.meg[rows.test_start:rows.test_stop])
    assert not np.allclose(truths["causal"].truth, truths["zero-phase"].truth)
    # The model's prediction is the same against both; the baselines are fitted anew to each.
    expected = predict_as_served(model, causal.eeg, rows.test_start, rows.test_stop)
    for scored in truths.values():
        np.testing.assert_array_equal(scored.methods["model"].predictions, expected)
    assert not np.allclose(truths["causal"].methods["ridge"].predictions, truths["zero-phase"].methods["ridge"].predictions)
    # Effective delays: every method of every truth against the zero-phase truth.
    assert set(report.effective_delays) == {"causal", "zero-phase"}
    delays = report.effective_delays[report.truth_name]["model"]
    assert {"all", "alpha", "alpha envelope"} <= set(delays)
    # r at zero lag is the plain mean r against the zero-phase truth.
    assert delays["all"].r_at_zero == pytest.approx(
        float(np.nanmean(truths["zero-phase"].methods["model"].scores.r)), abs=0.02)
    written = tmp_path / "report.json"
    write_json(report, written)
    entry = json.loads(written.read_text())
    assert entry["truth"] == report.truth_name
    other = next(name for name in truths if name != report.truth_name)
    assert set(entry["other_truths"]) == {other} and "model" in entry["other_truths"][other]
    assert entry["effective_delay"][report.truth_name]["model"]["alpha"]["lag_ms"] == delays["alpha"].to_dict()["lag_ms"]


def test_the_bundled_models_have_the_two_targets_and_their_designed_delay():
    from brainformer.model_dir import load_config, resolve_model_dir
    from brainformer.paths import LOWDELAY_MODEL_DIR
    from brainformer.preprocessing import design_delay

    assert resolve_model_dir("default-lowdelay") == LOWDELAY_MODEL_DIR
    default, lowdelay = load_config("default"), load_config("default-lowdelay")
    assert default.target_phase == "causal" and lowdelay.target_phase == "zero_phase"
    assert design_delay(default).centre.group_delay_ms > 25
    assert design_delay(lowdelay).centre.group_delay_ms == 0.0
    # Both predict the same band of the same MEG channels.
    assert lowdelay.target_band_hz == [default.highpass_hz, default.lowpass_hz]
    assert lowdelay.meg_channel_names == default.meg_channel_names
