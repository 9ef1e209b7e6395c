"""The amplitude-aware architecture options: the gain head, the envelope features, `final_norm`.

Each is checked on a known answer: a "gain × linear filter" target is learned by the gain head
and not by the projection of LayerNormed tokens; the served tail equals the whole window's; the
bundled models (whose config.json predates these fields) predict exactly what they did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from brainformer import BrainformerConfig, BrainformerForMEGPrediction
from brainformer.evaluation import model_path_alone, predict_as_served
from brainformer.model_dir import load_model

REFERENCE = Path(__file__).parent / "reference" / "bundled_model_predictions.npz"


def small_config(**overrides) -> BrainformerConfig:
    fields = dict(
        eeg_channel_names=[f"EEG {i:03d}" for i in range(1, 5)],
        meg_channel_names=[f"MEG {i:04d}" for i in range(1, 4)],
        meg_channel_types=["grad", "grad", "mag"],
        sfreq_hz=200.0, window_samples=32, hop_samples=8, patch_len=8,
        d_model=16, n_heads=2, d_ff=32, router_dim=2, dropout=0.0,
    )
    fields.update(overrides)
    return BrainformerConfig(**fields)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gain_times_filter_data(n_windows: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """EEG `(n, 32, 4)`: white noise, channel 0 with a random amplitude per window; MEG `(n, 32, 3)`:
    that amplitude (centred) times a two-tap filter of channel 1, with a fixed pattern over the
    MEG channels. The amplitude is readable from the window, the filter is linear: no linear map
    and no scale-blind projection can produce the product."""
    eeg = torch.randn(n_windows, 32, 4, generator=generator)
    amplitude = torch.rand(n_windows, 1, 1, generator=generator) * 1.8 + 0.2  # uniform 0.2 … 2
    eeg[:, :, :1] *= amplitude
    filtered = eeg[:, :, 1:2] + 0.5 * torch.nn.functional.pad(eeg[:, :-1, 1:2], (0, 0, 1, 0))
    pattern = torch.tensor([1.0, -0.5, 0.8])
    meg = (amplitude - 1.1) * filtered * pattern  # (n, 32, 3)
    return eeg, meg


def _fit(model: BrainformerForMEGPrediction, steps: int, seed: int = 0) -> float:
    """Train on fresh batches of the gain × filter data; the R² of the newest 8 samples on held-out windows."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        eeg, meg = _gain_times_filter_data(32, generator)
        loss = torch.nn.functional.mse_loss(model(eeg, last_samples=8).predictions, meg[:, -8:])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    eeg, meg = _gain_times_filter_data(256, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        predicted = model(eeg, last_samples=8).predictions
    target = meg[:, -8:]
    return float(1 - ((target - predicted) ** 2).sum() / ((target - target.mean()) ** 2).sum())


def test_the_gain_head_learns_a_gain_times_a_linear_filter():
    """Told nothing but windows, the gain head with amplitude features recovers the product (the
    filter is the head's, the gain the trunk's); the same trunk with the plain projection cannot
    express a term that scales with the EEG, and gets nowhere near."""
    torch.manual_seed(0)
    gain = BrainformerForMEGPrediction(small_config(gain_filters=2, gain_filter_past_samples=4, envelope_filters=4,
                                                    envelope_filter_samples=8, final_norm=False))
    torch.manual_seed(0)
    plain = BrainformerForMEGPrediction(small_config())
    assert _fit(gain, 300) > 0.85
    assert _fit(plain, 150) < 0.5  # flat at zero from the first steps: nothing to find for it


@pytest.mark.parametrize("overrides", [
    dict(gain_filters=3, gain_filter_past_samples=5, gain_filter_lookahead_samples=6),
    dict(gain_filters=2, envelope_filters=3, envelope_filter_samples=12, final_norm=False, skip_lags=4),
    dict(envelope_filters=2, envelope_filter_samples=16, n_layers=2),
])
def test_the_served_tail_equals_the_whole_windows(overrides):
    """`last_samples` (what the daemon asks for) gives the whole forward's newest samples, the
    lookahead of the gain filters and the envelope features included."""
    torch.manual_seed(0)
    model = BrainformerForMEGPrediction(small_config(**overrides)).eval()
    if model.gain_head is not None:
        with torch.no_grad():  # gains that are not zero, as after training
            model.gain_head.gain_projection.weight.normal_()
    eeg = torch.randn(2, 32, 4)
    with torch.no_grad():
        whole = model(eeg).predictions
        for n in (1, 5, 8, 16, 32):
            torch.testing.assert_close(model(eeg, last_samples=n).predictions, whole[:, -n:], rtol=1e-5, atol=1e-6)


def test_gain_filters_see_their_taps_and_no_further():
    """With constant gains the head is a linear filter of taps t − 4 … t + 3 (5 past, 3 ahead):
    moving the EEG at t + 3 or t − 4 changes the output at t, at t + 4 or t − 5 it does not."""
    torch.manual_seed(0)
    model = BrainformerForMEGPrediction(small_config(gain_filters=2, gain_filter_past_samples=5,
                                                     gain_filter_lookahead_samples=3)).eval()
    with torch.no_grad():
        model.gain_head.gain_projection.bias.fill_(1.0)  # gains 1, whatever the trunk says
        model.projection.weight.zero_()
        model.projection.bias.zero_()
        eeg = torch.randn(1, 32, 4)
        base = model(eeg).predictions[0, 20]
        for offset, seen in ((3, True), (4, False), (-4, True), (-5, False)):
            moved = eeg.clone()
            moved[0, 20 + offset, 1] += 1.0
            change = (model(moved).predictions[0, 20] - base).abs().max().item()
            assert (change > 1e-3) == seen, (offset, change)


def test_fresh_gain_head_adds_nothing_and_ablation_removes_it():
    """The gains start at zero; `model_path_alone(model, "skip")` removes the gain head with the
    projection, so the two paths still add up to the model."""
    torch.manual_seed(0)
    model = BrainformerForMEGPrediction(small_config(gain_filters=2, skip_lags=3)).eval()
    assert torch.count_nonzero(model.gain_head.gain_projection.weight) == 0
    with torch.no_grad():
        model.gain_head.gain_projection.weight.normal_()
        model.set_linear_skip(torch.randn_like(model.linear_skip.weight), torch.randn_like(model.linear_skip.bias))
    eeg = np.random.default_rng(0).standard_normal((120, 4)).astype(np.float32)
    whole = predict_as_served(model, eeg, 40, 120)
    skip = predict_as_served(model_path_alone(model, "skip"), eeg, 40, 120)
    transformer = predict_as_served(model_path_alone(model, "transformer"), eeg, 40, 120)
    np.testing.assert_allclose(skip + transformer, whole, rtol=1e-4, atol=1e-4)
    assert np.abs(transformer).mean() > 0.1


@pytest.mark.parametrize(("fields", "message"), [
    (dict(gain_filters=-1), "gain_filters"),
    (dict(gain_filter_past_samples=0), "gain_filter_past_samples"),
    (dict(gain_filters=2, gain_filter_past_samples=33), "at most window_samples"),
    (dict(gain_filters=2, gain_filter_lookahead_samples=32), "less than window_samples"),
    (dict(envelope_filters=2, envelope_filter_samples=40), "at most window_samples"),
    (dict(final_norm=1), "true or false"),
])
def test_new_fields_are_validated(fields, message):
    with pytest.raises(ValueError, match=message):
        small_config(**fields)
    # The taps of a disabled bank are not held against a short window (the defaults exceed 32).
    assert small_config().envelope_filter_samples == 64


def test_the_gain_head_is_for_the_regression_head_only():
    with pytest.raises(ValueError, match="gain_filters"):
        small_config(head="tokens", gain_filters=2)
    with pytest.raises(ValueError, match="envelope_filters"):
        small_config(head="tokens", envelope_filters=2, envelope_filter_samples=8)


@pytest.mark.parametrize("name", ["default", "default-lowdelay"])
def test_bundled_models_predict_as_before(name):
    """The bundled config.json files predate the new fields: they load with the defaults, every
    stored weight is used and none is missing, and the predictions are those the previous code
    gave (stored; equal to the last bit on the machine that wrote them)."""
    model = load_model(name)
    config = model.config
    assert (config.gain_filters, config.envelope_filters, config.final_norm) == (0, 0, True)
    assert model.gain_head is None and model.brainformer.envelope is None
    eeg = torch.randn(1, config.window_samples, config.n_eeg_channels, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        predicted = model(eeg, last_samples=32).predictions.numpy()
    with np.load(REFERENCE) as reference:
        np.testing.assert_allclose(predicted, reference[name], rtol=1e-5, atol=1e-6)
