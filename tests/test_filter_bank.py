"""The band filter banks that start the gain head and the envelope features
(`training.init_filters_from_bands`, `brainformer.filter_bank`), on signals whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from brainformer import BrainformerConfig, BrainformerForMEGPrediction
from brainformer.data import PreparedData, PreparedRecording
from brainformer.filter_bank import band_centres, band_components, component_filters, quadrature_pair
from brainformer.settings import SettingsError, settings_from_dict
from brainformer.training import TrainingError, initial_model, training_data_from_prepared

SFREQ_HZ = 200.0


def _sine(freq_hz: float, seconds: float = 4.0) -> np.ndarray:
    return np.sin(2 * np.pi * freq_hz * np.arange(int(seconds * SFREQ_HZ)) / SFREQ_HZ)


def _causal(kernel: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The bank's kernels are oldest tap first; lfilter's first coefficient is the newest."""
    return scipy.signal.lfilter(kernel[::-1], 1.0, x)


def test_centres_tile_the_band():
    centres, half = band_centres(2.0, 10.0, 4)
    np.testing.assert_allclose(centres, [3.0, 5.0, 7.0, 9.0])
    assert half == 1.0
    with pytest.raises(ValueError):
        band_centres(10.0, 2.0, 4)


def test_a_quadrature_pair_gives_a_steady_envelope_at_its_centre_and_rejects_far_bands():
    taps = 64
    in_phase, quadrature = quadrature_pair(10.0, 2.0, taps, SFREQ_HZ)
    sine = _sine(10.0)
    power = _causal(in_phase, sine) ** 2 + _causal(quadrature, sine) ** 2
    settled = power[taps:]
    # Unit gain at the centre, and a squared envelope that does not swing with the phase
    # (one band-passed output squared swings between 0 and 2 at 20 Hz).
    assert settled.mean() == pytest.approx(1.0, rel=0.02)
    assert settled.std() / settled.mean() < 0.01
    assert _causal(in_phase, sine)[taps:].var() == pytest.approx(0.5, rel=0.03)
    far = _causal(in_phase, _sine(40.0))[taps:]
    assert far.std() < 0.01


def test_each_band_takes_the_topography_of_the_source_that_rhythm_comes_from():
    rng = np.random.default_rng(0)
    n = int(60 * SFREQ_HZ)
    alpha_map, beta_map = rng.standard_normal(8), rng.standard_normal(8)
    eeg = (np.outer(_sine(10.0, 60.0) * (1 + 0.5 * rng.standard_normal(n)), alpha_map)
           + np.outer(_sine(25.0, 60.0), beta_map) + 0.3 * rng.standard_normal((n, 8)))
    components = band_components(eeg, np.array([10.0, 25.0]), 2.0, SFREQ_HZ)
    for component, source_map in zip(components, (alpha_map, beta_map)):
        cosine = abs(component @ source_map) / np.linalg.norm(source_map)
        assert cosine > 0.99
        assert np.linalg.norm(component) == pytest.approx(1.0)


def _config(**overrides) -> BrainformerConfig:
    fields = dict(
        eeg_channel_names=[f"EEG {i:03d}" for i in range(1, 7)], meg_channel_names=["MEG 0111", "MEG 0112"],
        meg_channel_types=["mag", "grad"], sfreq_hz=SFREQ_HZ, window_samples=128, hop_samples=16, patch_len=16,
        d_model=8, n_heads=2, d_ff=16, router_dim=2, dropout=0.0, skip_lags=3, highpass_hz=2.0, lowpass_hz=40.0,
        gain_filters=6, gain_filter_past_samples=32, gain_filter_lookahead_samples=4,
        envelope_filters=3, envelope_filter_samples=48,
    )
    fields.update(overrides)
    return BrainformerConfig(**fields)


def _training_data(config: BrainformerConfig, init: bool):
    rng = np.random.default_rng(1)
    n = int(40 * SFREQ_HZ)
    alpha_map = rng.standard_normal(6)
    eeg = (np.outer(_sine(10.0, 40.0), alpha_map) + 0.5 * rng.standard_normal((n, 6))).astype(np.float32)
    meg = (eeg[:, :2] * 0.5).astype(np.float32)
    recording = PreparedRecording(name="toy", source="toy.fif", eeg=eeg, meg=meg, times=np.arange(n) / SFREQ_HZ,
                                  sfreq_hz=SFREQ_HZ, parts={"train": (0, 6000), "validation": (6000, 6000), "test": (6000, n)})
    settings = settings_from_dict({"data": {"validation_fraction": 0.0},
                                   "training": {"init_filters_from_bands": init, "skip_learning_rate": 0.0}})
    return training_data_from_prepared(PreparedData(config, settings.data, [recording]), settings), settings, alpha_map


def test_init_sets_the_gain_filters_and_envelope_features_to_the_bank_and_leaves_the_rest():
    config = _config()
    data, settings, alpha_map = _training_data(config, init=True)
    model, _ = initial_model(data, settings)
    random_model, _ = initial_model(*_training_data(config, init=False)[:2])
    filters = model.gain_head.filters.detach().numpy()  # (6, n_eeg, 32 + 4)
    assert np.all(filters[:, :, 32:] == 0)  # causal: no lookahead taps
    # Three pairs over 2-40 Hz: centres 8.3, 21, 33.7 Hz; the first pair, on the band's own
    # principal component, is the 10 Hz source's topography.
    spatial = np.linalg.svd(filters[0])[0][:, 0]  # a separable filter: spatial ⊗ temporal
    assert abs(spatial @ alpha_map) / np.linalg.norm(alpha_map) > 0.95
    features = model.brainformer.envelope
    assert tuple(features.temporal.shape) == (3, 2, 48)
    # The envelope features' first band (4-12.7 Hz) holds the rhythm: a steady sine gives a
    # steady feature, which random filters do not give.
    x = torch.from_numpy(np.outer(_sine(10.0, 128 / SFREQ_HZ), alpha_map)[None].astype(np.float32))
    with torch.no_grad():
        steady = features(x)[0, 3:, 0]  # segments after the first 48 taps have filled
        noisy = random_model.brainformer.envelope(x)[0, 3:, 0]
    assert float(steady.max() - steady.min()) < 0.05
    assert float(noisy.max() - noisy.min()) > 0.05
    # The rest of the model is the seeded initialisation, untouched.
    torch.testing.assert_close(model.brainformer.encoder.state_dict(), random_model.brainformer.encoder.state_dict())
    assert torch.count_nonzero(model.gain_head.gain_projection.weight) == 0


def test_init_needs_a_gain_head_or_envelope_features():
    data, settings, _ = _training_data(_config(gain_filters=0, envelope_filters=0), init=True)
    with pytest.raises(TrainingError, match="init_filters_from_bands"):
        initial_model(data, settings)


def test_a_fresh_gain_head_adds_nothing_and_its_channel_scales_differ():
    model = BrainformerForMEGPrediction(_config()).eval()
    scale = model.gain_head.channel_scale.detach()
    assert torch.unique(scale).numel() == scale.numel()
    x = torch.randn(2, 128, 6)
    with torch.no_grad():
        without = model(x).predictions - model.gain_head(model.brainformer(x).last_hidden_state, x, 128)
    torch.testing.assert_close(model(x).predictions, without)


def test_component_filters_are_the_leading_principal_components_at_unit_variance():
    rng = np.random.default_rng(2)
    mixing = rng.standard_normal((5, 5))
    eeg = rng.standard_normal((20_000, 5)) * np.array([5.0, 3.0, 1.0, 0.5, 0.1]) @ mixing
    spatial = component_filters(eeg, 3)
    outputs = eeg @ spatial.T
    np.testing.assert_allclose(outputs.var(axis=0, ddof=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.corrcoef(outputs.T), np.eye(3), atol=1e-6)  # uncorrelated
    _, vectors = np.linalg.eigh(np.cov(eeg, rowvar=False))
    leading = spatial[0] / np.linalg.norm(spatial[0])
    assert abs(leading @ vectors[:, -1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="6 principal components"):
        component_filters(eeg, 6)


def _component_settings(settings, components: int, init: bool = True):
    return settings_from_dict({"data": {"validation_fraction": 0.0}, "training": {
        "init_filters_from_bands": init, "skip_learning_rate": 0.0, "gain_filters_on_components": components}})


def test_gain_filters_on_components_start_a_linear_map_that_adds_nothing_and_learns_from_the_first_step():
    config = _config(skip_lags=0)
    data, settings, _ = _training_data(config, init=True)
    model, _ = initial_model(data, _component_settings(settings, 2))
    # The same four band filters as a head of four, all of them band pairs.
    banded_only, _ = initial_model(_training_data(_config(skip_lags=0, gain_filters=4), init=True)[0], settings)
    head = model.gain_head
    filters = head.filters.detach().numpy()  # (6, n_eeg, 32 + 4): four band filters, then two components
    np.testing.assert_array_equal(filters[:4], banded_only.gain_head.filters.detach().numpy()[:4])
    others = np.delete(filters[4:], 31, axis=2)
    assert np.all(others == 0)  # one tap, on the newest sample
    train_eeg = data.prepared.recordings[0].eeg[:6000].astype(np.float64)
    np.testing.assert_allclose((train_eeg @ filters[4:, :, 31].T).var(axis=0), 1.0, rtol=0.02)
    assert torch.all(head.channel_scale[:, 4:] == 0) and torch.all(head.channel_scale[:, :4] != 0)
    gains = head.gain_projection.bias.detach().view(config.patch_len, config.gain_filters)
    assert torch.all(gains[:, 4:] == 1) and torch.all(gains[:, :4] == 0)

    x = torch.from_numpy(data.prepared.recordings[0].eeg[:128][None])
    y = torch.from_numpy(data.prepared.recordings[0].meg[:128][None])
    for fresh in (model, banded_only):
        fresh.train(False)
        with torch.no_grad():
            hidden = fresh.brainformer(x).last_hidden_state
            assert torch.count_nonzero(fresh.gain_head(hidden, x, 128)) == 0  # a fresh head adds nothing
        fresh(x, labels=y).loss.backward()
    # Zero gains give the channel weights no gradient; unit gains give the components' at once.
    assert torch.count_nonzero(banded_only.gain_head.channel_scale.grad) == 0
    assert torch.count_nonzero(model.gain_head.channel_scale.grad[:, 4:]) == 2 * 2
    assert torch.count_nonzero(model.gain_head.channel_scale.grad[:, :4]) == 0


def test_gain_filters_on_components_errors_name_the_field():
    config = _config(skip_lags=0)
    data, settings, _ = _training_data(config, init=True)
    with pytest.raises(TrainingError, match=r"training.gain_filters_on_components = 7 exceeds model.gain_filters = 6"):
        initial_model(data, _component_settings(settings, 7))
    with pytest.raises(SettingsError, match=r"training.gain_filters_on_components.*init_filters_from_bands = true"):
        _component_settings(settings, 2, init=False)
    with pytest.raises(SettingsError, match=r"training.gain_filters_on_components"):
        _component_settings(settings, -1)
