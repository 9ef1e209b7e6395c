"""The linear path's use of the served hop's own future (`hop_lookahead_past_samples`).

Checked on known answers: each output sample uses exactly its own future in its hop and its
newest samples, counted back from the window's newest sample (so a served tail equals the whole
window's); the closed-form fit recovers a planted map on a future sample where the hop holds it
and cannot where it does not; the ablation counts it in the linear path; bad configs name the field.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainformer import BrainformerConfig, BrainformerForMEGPrediction
from brainformer.data import PreparedData, PreparedRecording
from brainformer.evaluation import model_path_alone, predict_as_served
from brainformer.settings import settings_from_dict
from brainformer.training import initial_model, training_data_from_prepared

HOP, PAST = 8, 3
#: A frozen skip path on every lag, fitted in closed form, then the lookahead on what it leaves.
SETTINGS = settings_from_dict({"data": {"train_hop_samples": 32, "validation_fraction": 0.0},
                               "training": {"skip_learning_rate": 0.0, "ridge_lag_step_samples": 1}})


def lookahead_config(**overrides) -> BrainformerConfig:
    fields = dict(
        eeg_channel_names=[f"EEG {i:03d}" for i in range(1, 4)],
        meg_channel_names=["MEG 0111", "MEG 0112"], meg_channel_types=["mag", "grad"],
        sfreq_hz=200.0, window_samples=32, hop_samples=HOP, patch_len=8,
        d_model=8, n_heads=2, d_ff=16, router_dim=2, dropout=0.0, skip_lags=4, hop_lookahead_past_samples=PAST,
    )
    fields.update(overrides)
    return BrainformerConfig(**fields)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("rank", [0, 1])
def test_each_sample_uses_its_own_future_in_the_hop_and_the_served_tail_equals_the_window(rank):
    torch.manual_seed(0)
    model = BrainformerForMEGPrediction(lookahead_config(hop_lookahead_rank=rank)).eval()
    with torch.no_grad():
        for parameter in model.hop_lookahead.parameters():
            parameter.normal_()
    # Full maps: weight_j is (n_meg, inputs); with a rank, (rank, inputs) on a (n_meg, rank) basis.
    maps = [w if rank == 0 else model.hop_lookahead.basis @ w for w in model.hop_lookahead.weights]
    x = torch.randn(2, 32, 3)
    with torch.no_grad():
        lookahead = model.hop_lookahead(x, 32)
        whole = model(x).predictions
        for n_out in (1, 5, HOP, 13, 32):
            torch.testing.assert_close(model(x, last_samples=n_out).predictions, whole[:, -n_out:], rtol=1e-5, atol=1e-5)
    for i in range(32):
        j = (31 - i) % HOP  # samples of the hop after sample i
        taps = [x[:, t] if t >= 0 else torch.zeros(2, 3) for t in range(i - PAST + 1, i + j + 1)]
        features = torch.stack(taps, dim=-1).flatten(1)  # channel-major, oldest tap first
        expected = features @ maps[j].T + model.hop_lookahead.bias[j]
        torch.testing.assert_close(lookahead[:, i], expected, rtol=1e-5, atol=1e-5)
    assert [w.shape for w in model.hop_lookahead.weights] == [(rank or 2, 3 * (PAST + j)) for j in range(HOP)]


def _future_map_data(n: int = 6000, config: BrainformerConfig | None = None) -> tuple[PreparedData, np.ndarray, np.ndarray]:
    """White-noise EEG; MEG channel 0 = EEG 1 two samples ahead, channel 1 = EEG 0 now, and with
    a third MEG channel in `config`, channel 2 = 0.5 · EEG 2 one sample ahead (plus a little
    noise): the causal skip path gets channel 1, only the lookahead can get channels 0 and 2."""
    config = config or lookahead_config()
    rng = np.random.default_rng(0)
    eeg = rng.standard_normal((n, 3)).astype(np.float32)
    meg = np.zeros((n, config.n_meg_channels), dtype=np.float32)
    meg[:-2, 0] = eeg[2:, 1]
    meg[:, 1] = eeg[:, 0]
    if config.n_meg_channels > 2:
        meg[:-1, 2] = 0.5 * eeg[1:, 2]
    meg += 0.05 * rng.standard_normal(meg.shape).astype(np.float32)
    split = int(0.75 * n)
    recording = PreparedRecording(name="toy", source="toy.fif", eeg=eeg, meg=meg, times=np.arange(n) / 200.0, sfreq_hz=200.0,
                                  parts={"train": (0, split), "validation": (split, split), "test": (split, n)})
    return PreparedData(config, SETTINGS.data, [recording]), eeg, meg


def test_the_closed_form_fit_finds_a_future_sample_where_the_hop_holds_it():
    prepared, eeg, meg = _future_map_data()
    model, ridge = initial_model(training_data_from_prepared(prepared, SETTINGS), SETTINGS)
    assert ridge is not None and not any(p.requires_grad for p in model.hop_lookahead.parameters())
    start, stop = 4600, 5992  # test rows, a whole number of hops
    served = predict_as_served(model.eval(), eeg, start, stop)
    truth = meg[start:stop]
    position = (HOP - 1 - (np.arange(start, stop) - start)) % HOP  # samples of the hop after each row
    error = (served[:, 0] - truth[:, 0]) ** 2 / truth[:, 0].var()
    # Two samples ahead is in the hop for positions 2 … 7: found there (noise 0.05² left), not before.
    assert error[position >= 2].mean() < 0.01
    assert error[position < 2].mean() > 0.9
    # The causal channel is the skip path's at every position.
    assert ((served[:, 1] - truth[:, 1]) ** 2).mean() / truth[:, 1].var() < 0.01
    # The weight of position 4 on EEG 1 at t + 2 (channel 1's taps start at index PAST + 4).
    weight = model.hop_lookahead.weights[4].detach().numpy()
    assert weight[0, (PAST + 4) + PAST - 1 + 2] == pytest.approx(1.0, abs=0.02)


def test_a_reduced_rank_keeps_the_maps_with_the_most_fitted_variance():
    """Two future maps on different MEG channels need rank 2; rank 1 keeps the larger one (channel
    0, variance 1 against 0.25 for channel 2) and drops the other."""
    three = dict(meg_channel_names=["MEG 0111", "MEG 0112", "MEG 0113"], meg_channel_types=["mag", "grad", "grad"])
    start, stop = 4600, 5992
    position = (HOP - 1 - (np.arange(start, stop) - start)) % HOP
    errors = {}
    for rank in (1, 2):
        prepared, eeg, meg = _future_map_data(config=lookahead_config(hop_lookahead_rank=rank, **three))
        model, _ = initial_model(training_data_from_prepared(prepared, SETTINGS), SETTINGS)
        basis = model.hop_lookahead.basis.detach().numpy()
        np.testing.assert_allclose(basis.T @ basis, np.eye(rank), atol=1e-5)
        served, truth = predict_as_served(model.eval(), eeg, start, stop), meg[start:stop]
        errors[rank] = (served - truth) ** 2 / truth.var(axis=0)
    # Where the hop holds the future sample (channel 0: 2 ahead, channel 2: 1 ahead).
    assert errors[2][position >= 2, 0].mean() < 0.01 and errors[2][position >= 1, 2].mean() < 0.01
    assert errors[1][position >= 2, 0].mean() < 0.01 and errors[1][position >= 1, 2].mean() > 0.9
    for rank in (1, 2):
        assert errors[rank][:, 1].mean() < 0.01  # the skip path's channel


def test_the_ablation_counts_it_in_the_linear_path():
    torch.manual_seed(0)
    model = BrainformerForMEGPrediction(lookahead_config()).eval()
    with torch.no_grad():
        model.hop_lookahead.bias.fill_(1.0)
        model.projection.weight.zero_()  # the transformer's output: its projection's bias alone
        model.projection.bias.fill_(0.5)
    x = torch.zeros(1, 32, 3)
    with torch.no_grad():
        linear = model_path_alone(model, "skip")(x).predictions
        transformer = model_path_alone(model, "transformer")(x).predictions
    torch.testing.assert_close(linear, torch.ones_like(linear))  # the lookahead's bias; no projection
    torch.testing.assert_close(transformer, torch.full_like(transformer, 0.5))  # no lookahead


@pytest.mark.parametrize("overrides, message", [
    (dict(skip_lags=0), "without a skip path"),
    (dict(hop_lookahead_past_samples=26), "at most window_samples − hop_samples \\+ 1 \\(25\\)"),
    (dict(hop_lookahead_past_samples=-1), "hop_lookahead_past_samples"),
])
def test_bad_configs_name_the_field(overrides, message):
    with pytest.raises(ValueError, match="hop_lookahead_past_samples") as error:
        lookahead_config(**overrides)
    assert error.match(message)


@pytest.mark.parametrize("rank, message", [(3, "at most the number of MEG channels \\(2\\)"), (-1, "≥ 0|>= 0|at least")])
def test_a_rank_beyond_the_meg_channels_names_the_field(rank, message):
    with pytest.raises(ValueError, match="hop_lookahead_rank") as error:
        lookahead_config(hop_lookahead_rank=rank)
    assert error.match(message)


def test_off_by_default():
    config = lookahead_config(hop_lookahead_past_samples=0)
    assert BrainformerForMEGPrediction(config).hop_lookahead is None
    assert BrainformerConfig().hop_lookahead_past_samples == 0
