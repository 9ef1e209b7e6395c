"""Brainformer model: shapes, gradients, save/load, Auto classes, heads, causality, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel

import brainformer  # noqa: F401  (registers the Auto classes)
from brainformer import (
    BrainformerConfig,
    BrainformerForMEGPrediction,
    BrainformerForMEGTokens,
    BrainformerModel,
    MEGQuantizer,
)


def tiny_config(n_eeg=5, n_meg=7, window_samples=32, patch_len=4, **overrides) -> BrainformerConfig:
    fields = dict(
        eeg_channel_names=[f"EEG {i:03d}" for i in range(1, n_eeg + 1)],
        meg_channel_names=[f"MEG {i:04d}" for i in range(1, n_meg + 1)],
        meg_channel_types=["mag" if i % 3 == 0 else "grad" for i in range(n_meg)],
        sfreq_hz=200.0, window_samples=window_samples, hop_samples=min(4, window_samples), patch_len=patch_len,
        d_model=16, n_heads=2, d_ff=32, router_dim=3, dropout=0.0,
    )
    fields.update(overrides)
    return BrainformerConfig(**fields)


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # Tiny models run fastest single-threaded, and the test machine is shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


# (n_eeg, n_meg, window_samples, patch_len, n_layers, position_embedding)
LAYOUTS = [
    (5, 7, 32, 4, 1, "learned"),
    (3, 11, 24, 1, 2, "sinusoidal"),
    (8, 4, 16, 16, 1, "learned"),
    (70, 306, 64, 16, 1, "sinusoidal"),
]


@pytest.mark.parametrize(("n_eeg", "n_meg", "window", "patch_len", "n_layers", "position"), LAYOUTS)
def test_regression_shapes(n_eeg, n_meg, window, patch_len, n_layers, position):
    config = tiny_config(n_eeg, n_meg, window, patch_len, n_layers=n_layers, position_embedding=position)
    model = BrainformerForMEGPrediction(config).eval()
    eeg = torch.randn(3, window, n_eeg)
    output = model(eeg, labels=torch.randn(3, window, n_meg))
    assert output.predictions.shape == (3, window, n_meg)
    assert output.loss.shape == () and torch.isfinite(output.loss)
    assert output[0] is output.loss  # Trainer reads the loss first

    trunk = model.brainformer(eeg)
    segments = window // patch_len
    assert trunk.last_hidden_state.shape == (3, segments, n_meg, 16)
    assert trunk.encoder_last_hidden_state.shape == (3, segments, n_eeg, 16)


def test_default_model_shapes():
    config = BrainformerConfig()
    model = BrainformerForMEGPrediction(config).eval()
    with torch.no_grad():
        predictions = model(torch.randn(1, 256, 60)).predictions
    assert predictions.shape == (1, 256, 306)
    assert torch.isfinite(predictions).all()


def test_batch_elements_are_independent():
    model = BrainformerForMEGPrediction(tiny_config()).eval()
    eeg = torch.randn(4, 32, 5)
    together = model(eeg).predictions
    alone = torch.cat([model(eeg[i : i + 1]).predictions for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def _assert_every_parameter_gets_gradient(model, loss):
    loss.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not silent, f"no gradient reaches {silent}"


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_gradients_reach_every_parameter_regression(position):
    config = tiny_config(skip_lags=3, n_layers=2, position_embedding=position, dropout=0.1, loss="huber")
    model = BrainformerForMEGPrediction(config).train()
    output = model(torch.randn(2, 32, 5), labels=torch.randn(2, 32, 7))
    _assert_every_parameter_gets_gradient(model, output.loss)


def test_gradients_reach_every_parameter_tokens():
    config = tiny_config(head="tokens", n_quantization_levels=15)
    model = BrainformerForMEGTokens(config).train()
    labels = MEGQuantizer.from_config(config).encode(torch.randn(2, 32, 7))
    output = model(torch.randn(2, 32, 5), labels=labels)
    _assert_every_parameter_gets_gradient(model, output.loss)


@pytest.mark.parametrize("head", ["regression", "tokens"])
@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_save_and_load_give_identical_outputs(tmp_path, head, position):
    config = tiny_config(head=head, position_embedding=position, skip_lags=2 if head == "regression" else 0)
    cls = BrainformerForMEGPrediction if head == "regression" else BrainformerForMEGTokens
    model = cls(config).eval()
    eeg = torch.randn(2, 32, 5)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]

    loaded = cls.from_pretrained(tmp_path).eval()
    if head == "regression":
        assert torch.equal(loaded(eeg).predictions, model(eeg).predictions)
    else:
        assert torch.equal(loaded.generate(eeg), model.generate(eeg))


def test_auto_model_round_trip(tmp_path):
    model = BrainformerForMEGPrediction(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, BrainformerConfig)
    trunk = AutoModel.from_pretrained(tmp_path).eval()
    assert type(trunk) is BrainformerModel
    eeg = torch.randn(2, 32, 5)
    assert torch.equal(trunk(eeg).last_hidden_state, model.brainformer(eeg).last_hidden_state)


def test_model_does_not_mutate_its_config():
    config = tiny_config(skip_lags=2)
    before = config.to_dict()
    model = BrainformerForMEGPrediction(config)
    model(torch.randn(2, 32, 5), labels=torch.randn(2, 32, 7)).loss.backward()
    assert config.to_dict() == before


def test_regression_overfits_a_tiny_batch():
    config = tiny_config(n_eeg=4, n_meg=6, window_samples=32, patch_len=4, d_model=32, d_ff=64)
    model = BrainformerForMEGPrediction(config).train()
    eeg = torch.randn(4, 32, 4)
    # A target that depends on the input across channels and time: mixing + a 2-sample delay.
    mixing = torch.randn(4, 6)
    meg = torch.roll(eeg @ mixing, shifts=2, dims=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model(eeg, labels=meg).loss.item()
    for _ in range(150):
        optimizer.zero_grad()
        loss = model(eeg, labels=meg).loss
        loss.backward()
        optimizer.step()
    assert loss.item() <= first / 10, (first, loss.item())


def test_huber_loss_is_used_when_configured():
    model = BrainformerForMEGPrediction(tiny_config(loss="huber", huber_delta=0.5)).eval()
    eeg, meg = torch.randn(2, 32, 5), 10 * torch.randn(2, 32, 7)
    output = model(eeg, labels=meg)
    torch.testing.assert_close(output.loss, F.huber_loss(output.predictions, meg, delta=0.5))


def test_linear_skip_is_a_causal_lagged_linear_map():
    lags = 3
    config = tiny_config(skip_lags=lags)
    model = BrainformerForMEGPrediction(config).eval()
    eeg = torch.randn(2, 32, 5)
    without_skip = model(eeg).predictions
    weight, bias = torch.randn(7, 5, lags), torch.randn(7)
    model.set_linear_skip(weight, bias)
    skip = model(eeg).predictions - without_skip

    # weight[:, :, k] multiplies the input skip_lags-1-k samples in the past; no future samples.
    padded = torch.cat([torch.zeros(2, lags - 1, 5), eeg], dim=1)
    expected = bias + sum(padded[:, k : k + 32] @ weight[:, :, k].T for k in range(lags))
    torch.testing.assert_close(skip, expected, rtol=1e-4, atol=1e-4)

    with pytest.raises(ValueError, match=r"weight has shape \(7, 5, 2\); expected \(7, 5, 3\)"):
        model.set_linear_skip(torch.zeros(7, 5, 2), bias)
    with pytest.raises(ValueError, match="skip_lags"):
        BrainformerForMEGPrediction(tiny_config()).set_linear_skip(weight, bias)


@pytest.mark.parametrize("n_layers, skip_lags", [(1, 0), (2, 3)])
def test_last_samples_equal_the_newest_samples_of_the_full_prediction(n_layers, skip_lags):
    """The streaming path (decoder work for the newest segments only) gives the full output's tail."""
    model = BrainformerForMEGPrediction(tiny_config(n_layers=n_layers, skip_lags=skip_lags)).eval()
    if skip_lags:
        model.set_linear_skip(torch.randn(7, 5, skip_lags), torch.randn(7))
    eeg = torch.randn(3, 32, 5)
    with torch.no_grad():
        full = model(eeg).predictions
        for n in (1, 3, 4, 5, 17, 32):  # inside one segment, a whole segment, across segments, all
            tail = model(eeg, last_samples=n).predictions
            assert tail.shape == (3, n, 7)
            torch.testing.assert_close(tail, full[:, -n:], rtol=1e-5, atol=1e-6)


def test_last_samples_errors_name_the_argument():
    model = BrainformerForMEGPrediction(tiny_config()).eval()
    eeg = torch.randn(1, 32, 5)
    for bad in (0, 33, 2.0, True):
        with pytest.raises(ValueError, match=r"last_samples = .*window_samples=32"):
            model(eeg, last_samples=bad)
    with pytest.raises(ValueError, match="cannot be combined with labels"):
        model(eeg, labels=torch.randn(1, 32, 7), last_samples=4)


def test_tokens_head_logits_and_loss_ignore_pad():
    config = tiny_config(head="tokens", n_quantization_levels=31)
    model = BrainformerForMEGTokens(config).eval()
    eeg = torch.randn(2, 32, 5)
    labels = MEGQuantizer.from_config(config).encode(torch.randn(2, 32, 7))
    labels[:, 20:] = config.pad_token_id
    output = model(eeg, labels=labels)
    assert output.logits.shape == (2, 32, 7, config.vocab_size)
    keep = labels != config.pad_token_id
    expected = F.cross_entropy(output.logits[keep], labels[keep])
    torch.testing.assert_close(output.loss, expected)


def test_tokens_teacher_forcing_is_causal_over_segments():
    config = tiny_config(head="tokens", n_quantization_levels=31, patch_len=4)
    model = BrainformerForMEGTokens(config).eval()
    eeg = torch.randn(1, 32, 5)
    quantizer = MEGQuantizer.from_config(config)
    labels = quantizer.encode(torch.randn(1, 32, 7))
    changed = labels.clone()
    changed[:, 12:] = quantizer.encode(torch.randn(1, 20, 7))  # segments 3 … 7 change
    logits, logits_changed = model(eeg, labels=labels).logits, model(eeg, labels=changed).logits
    # Segment s is predicted from the targets of segments < s: samples 0..15 (segments 0-3) agree.
    torch.testing.assert_close(logits[:, :16], logits_changed[:, :16])
    assert not torch.allclose(logits[:, 16:], logits_changed[:, 16:])


@pytest.mark.parametrize(("patch_len", "window"), [(4, 16), (1, 8)])
def test_generate_decodes_levels_autoregressively(patch_len, window):
    config = tiny_config(head="tokens", n_quantization_levels=31, patch_len=patch_len, window_samples=window)
    model = BrainformerForMEGTokens(config).eval()
    eeg = torch.randn(2, window, 5)
    tokens = model.generate(eeg)
    assert tokens.shape == (2, window, 7) and tokens.dtype == torch.int64
    assert tokens.min() >= 3 and tokens.max() < config.vocab_size
    # Greedy decoding is a fixed point of teacher forcing: fed its own output, the model's argmax
    # over the level ids reproduces it.
    logits = model(eeg, labels=tokens).logits
    assert torch.equal(logits[..., 3:].argmax(-1) + 3, tokens)
    assert MEGQuantizer.from_config(config).decode(tokens).shape == (2, window, 7)


def test_head_must_match_the_task_model():
    with pytest.raises(ValueError, match="head"):
        BrainformerForMEGPrediction(tiny_config(head="tokens"))
    with pytest.raises(ValueError, match="head"):
        BrainformerForMEGTokens(tiny_config())


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 32, 6), r"\(2, 32, 6\); expected \(batch, window_samples=32, n_eeg_channels=5\)"),
        ((2, 31, 5), r"\(2, 31, 5\); expected"),
        ((32, 5), r"\(32, 5\); expected"),
    ],
)
def test_bad_input_shapes_raise(shape, message):
    for model in (BrainformerForMEGPrediction(tiny_config()), BrainformerForMEGTokens(tiny_config(head="tokens"))):
        with pytest.raises(ValueError, match=message):
            model(torch.randn(*shape))
    with pytest.raises(ValueError, match=message):
        BrainformerForMEGTokens(tiny_config(head="tokens")).generate(torch.randn(*shape))


def test_bad_input_dtype_and_labels_raise():
    model = BrainformerForMEGPrediction(tiny_config())
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(2, 32, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"labels has shape \(2, 32, 6\); expected \(batch=2, window_samples=32, n_meg_channels=7\)"):
        model(torch.randn(2, 32, 5), labels=torch.randn(2, 32, 6))


def test_trains_with_hf_trainer_unchanged(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    config = tiny_config()
    model = BrainformerForMEGPrediction(config)
    eeg = torch.randn(8, 32, 5)
    dataset = Dataset.from_dict({"input_values": eeg.numpy(), "labels": torch.roll(eeg, 1, 1)[..., [0, 1, 2, 3, 4, 0, 1]].numpy()})
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3,
        report_to=[], use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    before = [p.detach().clone() for p in model.parameters()]
    result = trainer.train()
    assert result.global_step == 4 and result.training_loss > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
