"""The training recipe's new settings: `max_steps`, `lr_scheduler`, and the loss over the newest
samples computed from the served tail only (the same loss, less work)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainformer import BrainformerConfig, BrainformerForMEGPrediction
from brainformer.data import PreparedData, PreparedRecording
from brainformer.settings import SettingsError, settings_from_dict
from brainformer.training import (
    TrainingError, _make_trainer_class, _newest_samples_loss, _training_arguments, initial_model, train_model, training_data_from_prepared,
)


def gain_config(**overrides) -> BrainformerConfig:
    fields = dict(
        eeg_channel_names=["EEG 001", "EEG 002", "EEG 003"], meg_channel_names=["MEG 0111", "MEG 0112"],
        meg_channel_types=["mag", "grad"], sfreq_hz=200.0, window_samples=32, hop_samples=8, patch_len=8,
        d_model=8, n_heads=2, d_ff=16, router_dim=2, dropout=0.0, skip_lags=3,
        gain_filters=2, gain_filter_past_samples=4, gain_filter_lookahead_samples=3, envelope_filters=2,
        envelope_filter_samples=8,
    )
    fields.update(overrides)
    return BrainformerConfig(**fields)


def test_scheduler_and_step_settings_are_validated_and_reach_the_trainer(tmp_path):
    settings = settings_from_dict({"training": {"lr_scheduler": "constant", "max_steps": 7}})
    args = _training_arguments(settings, tmp_path, "none", has_validation=False, progress=False)
    assert args.max_steps == 7 and args.lr_scheduler_type.value == "constant_with_warmup"
    default = _training_arguments(settings_from_dict({}), tmp_path, "none", has_validation=False, progress=False)
    assert default.max_steps == -1 and default.lr_scheduler_type.value == "cosine"
    with pytest.raises(SettingsError, match="training.lr_scheduler"):
        settings_from_dict({"training": {"lr_scheduler": "step"}})
    with pytest.raises(SettingsError, match="training.max_steps"):
        settings_from_dict({"training": {"max_steps": -1}})


def test_newest_samples_loss_is_computed_from_the_served_tail():
    """The trainer asks the model for the newest samples only; the loss (and its gradient) is
    the one of the whole window's forward over those samples."""
    torch.manual_seed(0)
    model = BrainformerForMEGPrediction(gain_config())
    with torch.no_grad():
        model.gain_head.gain_projection.weight.normal_()
    inputs = {"input_values": torch.randn(4, 32, 3), "labels": torch.randn(4, 32, 2)}
    trainer = object.__new__(_make_trainer_class())  # compute_loss needs only these two attributes
    trainer.loss_last_samples, trainer.model = 8, model
    served = trainer.compute_loss(model, inputs)
    served.backward()
    served_grad = model.gain_head.filters.grad.clone()
    model.zero_grad()
    whole = _newest_samples_loss(model, model(inputs["input_values"]).predictions, inputs["labels"], 8)
    whole.backward()
    torch.testing.assert_close(served, whole, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(served_grad, model.gain_head.filters.grad, rtol=1e-4, atol=1e-7)


def test_max_steps_runs_that_many_steps_on_a_gain_head_model(tmp_path):
    """A gain-head model trains through the Trainer for exactly `max_steps` steps (more than one
    epoch holds), with its skip path fitted and frozen, and is saved and loaded back."""
    rng = np.random.default_rng(0)
    eeg = rng.standard_normal((600, 3)).astype(np.float32)
    meg = (eeg[:, :2] * 0.5 + 0.1 * rng.standard_normal((600, 2))).astype(np.float32)
    recording = PreparedRecording(name="toy", source="toy.fif", eeg=eeg, meg=meg, times=np.arange(600) / 100.0,
                                  sfreq_hz=100.0, parts={"train": (0, 400), "validation": (400, 400), "test": (400, 600)})
    settings = settings_from_dict({
        "data": {"train_hop_samples": 32, "validation_fraction": 0.0},
        "training": {"epochs": 1, "max_steps": 5, "batch_size": 4, "lr_scheduler": "constant", "loss_last_samples": 8,
                     "early_stopping_patience": 0, "skip_learning_rate": 0.0},
    })
    prepared = PreparedData(gain_config(), settings.data, [recording])
    data = training_data_from_prepared(prepared, settings)
    assert len(data.train) // 4 < 5  # fewer steps than max_steps in one epoch
    result = train_model(data, settings, tmp_path / "model", progress=False)
    assert result.epochs_run > 1.0
    from brainformer.model_dir import load_model

    loaded = load_model(tmp_path / "model")
    assert loaded.config.gain_filters == 2
    x = torch.from_numpy(eeg[None, :32])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).predictions, result.model(x).predictions)


def test_a_linear_path_frozen_at_zero_is_refused():
    """Neither fitted nor trained, the skip path (and its hop lookahead) would add nothing, silently."""
    rng = np.random.default_rng(0)
    eeg = rng.standard_normal((400, 3)).astype(np.float32)
    recording = PreparedRecording(name="toy", source="toy.fif", eeg=eeg, meg=eeg[:, :2].copy(), times=np.arange(400) / 100.0,
                                  sfreq_hz=100.0, parts={"train": (0, 300), "validation": (300, 300), "test": (300, 400)})
    settings = settings_from_dict({"data": {"train_hop_samples": 32, "validation_fraction": 0.0},
                                   "training": {"init_skip_from_ridge": False, "skip_learning_rate": 0.0}})
    data = training_data_from_prepared(PreparedData(gain_config(hop_lookahead_past_samples=2), settings.data, [recording]), settings)
    with pytest.raises(TrainingError, match="training.init_skip_from_ridge = false"):
        initial_model(data, settings)
