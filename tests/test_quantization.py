"""MEGQuantizer: scaled MEG <-> token ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainformer import BrainformerConfig, MEGQuantizer
from brainformer.config_fields import BrainformerFields


@pytest.mark.parametrize(("n_levels", "clip"), [(255, 4.0), (16, 1.5), (2, 1.0)])
def test_round_trip_error_is_at_most_half_a_step_inside_clip(n_levels, clip):
    quantizer = MEGQuantizer(n_levels, clip)
    step = 2 * clip / (n_levels - 1)
    values = np.random.default_rng(0).uniform(-clip, clip, size=(64, 50)).astype(np.float32)
    values[0, :3] = [-clip, 0.0, clip]
    tokens = quantizer.encode(values)
    assert tokens.dtype == np.int64 and tokens.shape == values.shape
    decoded = quantizer.decode(tokens)
    assert decoded.dtype == np.float32
    assert np.abs(decoded - values).max() <= step / 2 + 1e-6
    assert decoded[0, 0] == -clip and decoded[0, 2] == clip


def test_level_ids_skip_the_special_tokens_and_fill_the_vocabulary():
    quantizer = MEGQuantizer()
    tokens = quantizer.encode(np.linspace(-4, 4, 255))
    assert np.array_equal(tokens, np.arange(3, 258))
    assert quantizer.vocab_size == 258 == BrainformerConfig().vocab_size


def test_values_beyond_clip_saturate():
    quantizer = MEGQuantizer(255, 4.0)
    tokens = quantizer.encode(np.array([-100.0, -np.inf, 4.0001, np.inf]))
    assert tokens.tolist() == [3, 3, 257, 257]
    assert quantizer.decode(tokens).tolist() == [-4.0, -4.0, 4.0, 4.0]


def test_torch_and_numpy_agree():
    quantizer = MEGQuantizer(255, 4.0)
    values = torch.randn(3, 256, 306) * 2
    tokens = quantizer.encode(values)
    assert isinstance(tokens, torch.Tensor) and tokens.dtype == torch.int64
    assert np.array_equal(tokens.numpy(), quantizer.encode(values.numpy()))
    decoded = quantizer.decode(tokens)
    assert isinstance(decoded, torch.Tensor) and decoded.dtype == torch.float32
    np.testing.assert_array_equal(decoded.numpy(), quantizer.decode(tokens.numpy()))
    inside = values.abs() <= 4.0
    assert (decoded - values)[inside].abs().max() <= quantizer.step / 2 + 1e-6


@pytest.mark.parametrize("make", [BrainformerConfig, BrainformerFields], ids=["config", "fields"])
def test_from_config(make):
    quantizer = MEGQuantizer.from_config(make(n_quantization_levels=99, quantization_clip=3.0))
    assert (quantizer.n_levels, quantizer.clip, quantizer.vocab_size) == (99, 3.0, 102)


def test_bad_arguments_and_inputs_raise():
    with pytest.raises(ValueError, match="n_levels"):
        MEGQuantizer(1)
    with pytest.raises(ValueError, match="clip"):
        MEGQuantizer(255, float("nan"))
    quantizer = MEGQuantizer()
    with pytest.raises(ValueError, match="NaN"):
        quantizer.encode(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="NaN"):
        quantizer.encode(torch.tensor([float("nan")]))
    for special in (0, 1, 2, 258):
        with pytest.raises(ValueError, match=r"expected level ids 3\.\.257"):
            quantizer.decode(np.array([5, special]))
        with pytest.raises(ValueError, match=r"expected level ids 3\.\.257"):
            quantizer.decode(torch.tensor([5, special]))
    with pytest.raises(ValueError, match="integer token ids"):
        quantizer.decode(np.array([3.0]))
