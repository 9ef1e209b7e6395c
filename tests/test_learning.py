"""Learning on small synthetic problems with known answers (brainformer.training, both heads).

The training tests build continuous recordings from a known EEG → MEG map, train through the same code
as `brainformer train` (`training_data_from_prepared` + `train_model`, the HF `Trainer`), and check
a bound derived from the map (noise floor, what a linear map can explain), not a copied output.

Training runs on the CPU (`training.device = "cpu"`) wherever the suite runs: a GPU would give
other float rounding, run to run, and the equality checks below compare with CPU runs. The
CUDA case of the known-map test skips without CUDA.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from brainformer.configuration_brainformer import BrainformerConfig
from brainformer.data import PreparedData, PreparedRecording
from brainformer.modeling_brainformer import BrainformerForMEGPrediction, BrainformerForMEGTokens
from brainformer.settings import DataSettings, ExperimentSettings, TrainingSettings
from brainformer.training import (
    _make_trainer,
    _make_trainer_class,
    initial_model,
    train_model,
    training_data_from_prepared,
)

REPO = Path(__file__).resolve().parents[1]
SFREQ_HZ = 100.0
#: A tiny transformer: trains in seconds on one CPU core.
TINY = dict(window_samples=16, patch_len=4, hop_samples=4, d_model=16, n_heads=2, d_ff=32, router_dim=2, dropout=0.0)


def tiny_config(n_eeg: int, n_meg: int, **overrides) -> BrainformerConfig:
    fields = dict(
        eeg_channel_names=[f"E{i}" for i in range(n_eeg)], meg_channel_names=[f"MEG {i:04d}" for i in range(n_meg)],
        meg_channel_types=["mag" if i % 3 == 0 else "grad" for i in range(n_meg)], sfreq_hz=SFREQ_HZ,
        notch_hz=[], lowpass_hz=None, **TINY,
    )
    fields.update(overrides)
    return BrainformerConfig(**fields)


def synthetic_prepared(eeg: np.ndarray, meg: np.ndarray, parts: dict[str, tuple[int, int]], config: BrainformerConfig) -> PreparedData:
    """One continuous 'prepared' recording (already scaled) holding the known map."""
    rec = PreparedRecording(
        name="synthetic", source="synthetic.fif", eeg=eeg.astype(np.float32), meg=meg.astype(np.float32),
        times=np.arange(len(eeg)) / SFREQ_HZ, sfreq_hz=SFREQ_HZ, parts=parts,
    )
    return PreparedData(config, DataSettings(), [rec])


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models train fastest on one thread; on a loaded 2-core machine two threads wait on
    each other (this module took 225 s with two, 38 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def settings_for(train_hop_samples: int = 4, **training) -> ExperimentSettings:
    base = dict(warmup_ratio=0.0, weight_decay=0.0, early_stopping_patience=0, init_skip_from_ridge=False, device="cpu")
    base.update(training)
    return ExperimentSettings(data=DataSettings(train_hop_samples=train_hop_samples), training=TrainingSettings(**base))


def trainer_for(model, tmp_path: Path, loss_last_samples: int):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    return _make_trainer_class()(model=model, args=args, loss_last_samples=loss_last_samples)


def window_mse(model, windows, last: int | None = None) -> float:
    """Mean squared error of a regression model over all windows of a `ContinuousWindows` (newest
    `last` samples only when given)."""
    batch = torch.stack([windows[i]["input_values"] for i in range(len(windows))])
    labels = torch.stack([windows[i]["labels"] for i in range(len(windows))])
    with torch.no_grad():
        predictions = model.eval()(input_values=batch).predictions
    if last:
        predictions, labels = predictions[:, -last:], labels[:, -last:]
    return float(F.mse_loss(predictions, labels))


# --------------------------------------------------------------------------------------------
# `training.loss_last_samples`: the loss of the newest samples only, teacher-forced for tokens
# --------------------------------------------------------------------------------------------
def test_newest_samples_loss_of_the_tokens_head_is_teacher_forced(tmp_path):
    """The Trainer's loss on the newest samples is the model's own teacher-forced cross-entropy
    restricted to those samples (before the fix the decoder was fed pad tokens instead of the
    previous segments' labels: training without teacher forcing)."""
    torch.manual_seed(0)
    config = tiny_config(3, 2, head="tokens", n_quantization_levels=7)
    model = BrainformerForMEGTokens(config).eval()
    last = 8  # the two newest segments: their decoder inputs are labels of segments 2 and 3
    trainer = trainer_for(model, tmp_path, loss_last_samples=last)
    inputs = {"input_values": torch.randn(4, 16, 3), "labels": torch.randint(3, 3 + 7, (4, 16, 2))}
    loss = trainer.compute_loss(model, inputs)
    logits = model(**inputs).logits  # (batch, time, n_meg, vocab), teacher-forced on the labels
    expected = F.cross_entropy(logits[:, -last:].reshape(-1, config.vocab_size), inputs["labels"][:, -last:].reshape(-1))
    torch.testing.assert_close(loss, expected)
    # The check can tell the two apart: without labels the newest logits are different.
    pad_fed = model(input_values=inputs["input_values"]).logits
    assert not torch.allclose(pad_fed[:, -last:], logits[:, -last:], atol=1e-3)


@pytest.mark.parametrize("head", ["regression", "tokens"])
def test_loss_last_samples_gives_no_gradient_from_older_samples(tmp_path, head):
    torch.manual_seed(0)
    last = 4
    if head == "regression":
        model = BrainformerForMEGPrediction(tiny_config(3, 2, skip_lags=3)).eval()
        labels = torch.randn(4, 16, 2, requires_grad=True)
    else:
        model = BrainformerForMEGTokens(tiny_config(3, 2, head="tokens", n_quantization_levels=7)).eval()
        labels = torch.randint(3, 10, (4, 16, 2))
    trainer = trainer_for(model, tmp_path, loss_last_samples=last)
    loss, outputs = trainer.compute_loss(model, {"input_values": torch.randn(4, 16, 3), "labels": labels}, return_outputs=True)
    scores = outputs.predictions if head == "regression" else outputs.logits
    wrt = [scores, labels] if head == "regression" else [scores]
    for grad in torch.autograd.grad(loss, wrt):
        # Older positions (time axis 1) contribute exactly nothing; every newest one contributes.
        assert torch.count_nonzero(grad[:, :-last]) == 0
        assert bool((grad[:, -last:].abs().flatten(2).sum(-1) > 0).all())
    # Without the restriction every position counts (the check above can fail).
    full_trainer = trainer_for(model, tmp_path, loss_last_samples=0)
    full_loss, full_outputs = full_trainer.compute_loss(model, {"input_values": torch.randn(4, 16, 3), "labels": labels}, return_outputs=True)
    full_scores = full_outputs.predictions if head == "regression" else full_outputs.logits
    assert torch.count_nonzero(torch.autograd.grad(full_loss, full_scores)[0][:, :-last]) > 0


# --------------------------------------------------------------------------------------------
# Known maps are learned
# --------------------------------------------------------------------------------------------
NOISE_STD = 0.1  # the noise floor of every synthetic target: MSE NOISE_STD**2 = 0.01
PARTS = {"train": (0, 2000), "validation": (2000, 2400), "test": (2400, 2400)}


def lagged_linear_recording(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """White EEG x (2400, 2) and MEG y_t = x_t W0 + x_{t-2} W2 + noise, each MEG channel of unit
    variance before the noise; returns (x, y, W0, W2), both maps scaled alike."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2400, 2))
    w0, w2 = rng.standard_normal((2, 2)), rng.standard_normal((2, 2))
    scale = np.sqrt((w0**2).sum(0) + (w2**2).sum(0))
    w0, w2 = w0 / scale, w2 / scale
    y = x @ w0
    y[2:] += x[:-2] @ w2
    return x, y + NOISE_STD * rng.standard_normal(y.shape), w0, w2


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (torch.cuda.is_available() is False)")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_a_lagged_linear_map_is_recovered(tmp_path, device):
    x, y, w0, w2 = lagged_linear_recording()
    settings = settings_for(epochs=5, learning_rate=3e-2, batch_size=16, loss_last_samples=8, device=device)
    data = training_data_from_prepared(synthetic_prepared(x, y, PARTS, tiny_config(2, 2, skip_lags=3)), settings)
    result = train_model(data, settings, tmp_path / "model", progress=False)
    assert next(result.model.parameters()).device.type == "cpu"  # handed back on the CPU, wherever it trained
    # Bound: a predictor of zero (or of the mean) scores the target variance, 1 + 0.01; the exact
    # map scores the noise floor 0.01. Within 3× the floor means >= 98 % of the variance explained.
    newest_mse = window_mse(result.model, data.validation, last=8)
    assert newest_mse < 3 * NOISE_STD**2, newest_mse
    # What the Trainer scored (on the GPU, in another summation order: float tolerance).
    assert result.best_validation_loss == pytest.approx(newest_mse, rel=1e-4 if device == "cpu" else 1e-3)
    # The learned input → output map is the known one: regress the model's newest predictions on
    # the current and the lag-2 input of fresh white noise, the other lags must get ~0.
    rng = np.random.default_rng(1)
    fresh = rng.standard_normal((256, 16, 2)).astype(np.float32)
    with torch.no_grad():
        out = result.model(input_values=torch.from_numpy(fresh)).predictions[:, -8:].numpy().reshape(-1, 2)
    lagged = np.concatenate([fresh[:, 8 - lag : 16 - lag].reshape(-1, 2) for lag in (0, 1, 2, 3)], axis=1)
    coef = np.linalg.lstsq(np.c_[lagged, np.ones(len(lagged))], out, rcond=None)[0]
    np.testing.assert_allclose(coef[0:2], w0, atol=0.05)
    np.testing.assert_allclose(coef[4:6], w2, atol=0.05)
    np.testing.assert_allclose(coef[[2, 3, 6, 7]], 0.0, atol=0.05)  # lags 1 and 3 are not in the map


def test_a_non_linear_map_no_linear_model_can_fit_is_learned(tmp_path):
    """MEG = ((x0² - 1)/√2, x0·x1) of white Gaussian EEG: both have zero covariance with every
    (lagged) linear function of x, so the best linear predictor scores the target variance, 1."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2400, 2))
    y = np.stack([(x[:, 0] ** 2 - 1) / np.sqrt(2), x[:, 0] * x[:, 1]], axis=1)
    y += NOISE_STD * rng.standard_normal(y.shape)
    settings = settings_for(epochs=8, learning_rate=1e-2, batch_size=16)
    # patch_len 1: each sample is a token, so the feed-forward blocks act per sample.
    config = tiny_config(2, 2, skip_lags=0, patch_len=1, hop_samples=1)
    data = training_data_from_prepared(synthetic_prepared(x, y, PARTS, config), settings)
    result = train_model(data, settings, tmp_path / "model", progress=False)
    mse = window_mse(result.model, data.validation)
    # Bound: a tenth of what any linear map can reach (1.01), 10× the noise floor (0.01).
    assert mse < 0.1, mse


def non_linear_plus_linear_recording(linear_map: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """White EEG x (2400, 2) and MEG = x @ `linear_map` + ((x0² - 1)/√2, x0·x1) + noise: a linear
    part (what a ridge finds) and a non-linear part of unit variance with zero covariance with
    every linear function of x (what only the transformer can learn)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2400, 2))
    y = x @ linear_map + np.stack([(x[:, 0] ** 2 - 1) / np.sqrt(2), x[:, 0] * x[:, 1]], axis=1)
    return x, y + NOISE_STD * rng.standard_normal(y.shape)


def test_fine_tuning_keeps_what_the_pretrained_transformer_learned_on_top_of_this_datas_ridge(tmp_path):
    """`train_model(pretrained=…)`: pretrain on data A (linear map A + a non-linear part), fine-tune
    briefly on data B (another linear map, the same non-linear part). The fine-tuned model's skip
    path is B's ridge map, and its transformer still holds the non-linear part: B's validation
    MSE is near the noise floor, while the same brief training from scratch leaves the non-linear
    part's variance (1) unexplained."""
    config = tiny_config(2, 2, skip_lags=1, patch_len=1, hop_samples=1)  # per-sample tokens, lag-0 skip path
    map_a, map_b = np.array([[0.8, -0.5], [0.3, 0.6]]), np.array([[-0.6, 0.2], [0.7, -0.4]])
    frozen_ridge_skip = dict(init_skip_from_ridge=True, skip_learning_rate=0.0, batch_size=16)
    pretraining = settings_for(epochs=5, learning_rate=1e-2, **frozen_ridge_skip)
    data_a = training_data_from_prepared(synthetic_prepared(*non_linear_plus_linear_recording(map_a, 0), PARTS, config),
                                         pretraining)
    pretrained = train_model(data_a, pretraining, tmp_path / "pretrained", progress=False).model
    assert window_mse(pretrained, data_a.validation) < 0.1  # it learned the non-linear part

    brief = settings_for(epochs=1, learning_rate=1e-3, **frozen_ridge_skip)
    data_b = training_data_from_prepared(synthetic_prepared(*non_linear_plus_linear_recording(map_b, 1), PARTS, config),
                                         brief)
    tuned = train_model(data_b, brief, tmp_path / "tuned", progress=False, pretrained=pretrained)
    # The skip path is B's linear map (its only tap is the current sample), not A's (every element
    # of the two maps differs by 0.4 or more; the ridge estimate, with the non-linear part as noise
    # of unit variance, lies within 0.1 of the map it estimates).
    skip = tuned.model.linear_skip.weight[:, :, -1].numpy()
    np.testing.assert_allclose(skip, map_b.T, atol=0.1)
    assert np.all(np.abs(skip - map_a.T) > 0.3)
    tuned_mse = window_mse(tuned.model, data_b.validation)
    assert tuned_mse < 0.1, tuned_mse
    saved = load_file(str(tmp_path / "tuned" / "model.safetensors"))
    assert all(torch.equal(saved[name], value) for name, value in tuned.model.state_dict().items())
    # The check can fail: the same brief training from the seeded start learns no non-linear part.
    scratch = train_model(data_b, brief, tmp_path / "scratch", progress=False).model
    assert window_mse(scratch, data_b.validation) > 0.5


def test_a_frozen_skip_path_stays_bit_identical_while_the_rest_trains(tmp_path):
    x, y, _, _ = lagged_linear_recording()
    config = tiny_config(2, 2, skip_lags=3)
    frozen = settings_for(epochs=1, learning_rate=1e-2, init_skip_from_ridge=True, skip_learning_rate=0.0, weight_decay=0.1)
    data = training_data_from_prepared(synthetic_prepared(x, y, PARTS, config), frozen)
    start, _ = initial_model(data, frozen)  # the seeded, ridge-initialised model training begins with
    assert start.linear_skip.weight.abs().max() > 0.1  # the ridge fit, not the zero init
    trained = train_model(data, frozen, tmp_path / "frozen", progress=False).model
    assert torch.equal(trained.linear_skip.weight, start.linear_skip.weight)
    assert torch.equal(trained.linear_skip.bias, start.linear_skip.bias)
    changed = [name for name, p in trained.named_parameters() if not torch.equal(p, dict(start.named_parameters())[name])]
    assert "projection.weight" in changed and len(changed) > 10  # the transformer trained
    saved = load_file(str(tmp_path / "frozen" / "model.safetensors"))
    assert torch.equal(saved["linear_skip.weight"], start.linear_skip.weight)
    # With a learning rate the same skip path moves (so the check above can fail).
    free = dataclasses.replace(frozen, training=dataclasses.replace(frozen.training, skip_learning_rate=1e-2))
    moved = train_model(data, free, tmp_path / "free", progress=False).model
    assert not torch.equal(moved.linear_skip.weight, start.linear_skip.weight)


# --------------------------------------------------------------------------------------------
# Early stopping keeps the best epoch
# --------------------------------------------------------------------------------------------
def test_early_stopping_stops_and_keeps_the_best_epochs_weights(tmp_path):
    """Train part MEG = 2·EEG, validation part MEG = EEG: from the zero-initialised skip path the
    gain g grows from 0 towards 2, so the validation loss (g-1)² falls, then rises past g = 1."""
    from transformers import TrainerCallback

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2400, 1))
    y = x.copy()
    y[:2000] *= 2.0
    # Few steps an epoch (125 windows, 8 steps) so that g moves a little per epoch.
    settings = settings_for(train_hop_samples=16, epochs=30, learning_rate=1e-2, batch_size=16, early_stopping_patience=2)
    data = training_data_from_prepared(synthetic_prepared(x, y, PARTS, tiny_config(1, 1, skip_lags=1)), settings)

    class WeightsPerEpoch(TrainerCallback):
        def __init__(self):
            self.evaluations: list[tuple[float, dict[str, torch.Tensor]]] = []

        def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
            self.evaluations.append((metrics["eval_loss"], {k: v.detach().clone() for k, v in model.state_dict().items()}))

    # The same seeded run, its weights recorded after every epoch's evaluation.
    model, _ = initial_model(data, settings)
    trainer, _ = _make_trainer(model, data, settings, tmp_path / "reference", "none", True, False)
    recorder = WeightsPerEpoch()
    trainer.add_callback(recorder)
    trainer.train()
    losses = [loss for loss, _ in recorder.evaluations]
    best = int(np.argmin(losses))
    assert 0 < best < len(losses) - 1 and losses[-1] > losses[best] + 0.01  # it got worse after `best`
    assert len(losses) == best + 1 + 2 < 30  # stopped after `patience` evaluations without improvement

    result = train_model(data, settings, tmp_path / "model", progress=False)
    assert result.epochs_run == len(losses) and result.best_validation_loss == pytest.approx(losses[best])
    saved = load_file(str(tmp_path / "model" / "model.safetensors"))
    best_weights, last_weights = recorder.evaluations[best][1], recorder.evaluations[-1][1]
    for name, value in saved.items():
        torch.testing.assert_close(value, best_weights[name], rtol=0, atol=1e-6)
    assert not torch.allclose(saved["linear_skip.weight"], last_weights["linear_skip.weight"])
    assert window_mse(result.model, data.validation) == pytest.approx(losses[best], rel=1e-4)


# --------------------------------------------------------------------------------------------
# DDP: two processes on disjoint shards take the step of one process on the union batch
# --------------------------------------------------------------------------------------------
#: 44 train rows: 8 windows of 16 at hop 4, one step of 8 windows (or of 4 on each of 2 processes).
DDP_PARTS = {"train": (0, 44), "validation": (44, 44), "test": (44, 44)}


def one_step_training(out_dir: str, batch_size: int) -> None:
    """One optimisation step over the 8 windows (run here, or by each process under DDP)."""
    x, y, _, _ = lagged_linear_recording()
    settings = settings_for(epochs=1, learning_rate=1e-2, batch_size=batch_size, weight_decay=0.01)
    data = training_data_from_prepared(synthetic_prepared(x[:44], y[:44], DDP_PARTS, tiny_config(2, 2, skip_lags=3)), settings)
    assert len(data.train) == 8
    result = train_model(data, settings, Path(out_dir), progress=False)
    print(f"world_size={result.world_size} steps={result.epochs_run}")


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(240)
def test_two_ddp_processes_on_disjoint_shards_take_the_union_batch_step(tmp_path):
    port = free_loopback_port()
    code = f"from tests.test_learning import one_step_training; one_step_training({str(tmp_path / 'ddp')!r}, 4)"
    processes = []
    for rank in range(2):
        env = dict(
            os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
        )
        processes.append(subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=200)[0] for p in processes]
    for p, output in zip(processes, outputs):
        assert p.returncode == 0, output[-3000:]
        assert "world_size=2" in output, output[-3000:]
    one_step_training(str(tmp_path / "single"), 8)
    ddp, single = load_file(str(tmp_path / "ddp" / "model.safetensors")), load_file(str(tmp_path / "single" / "model.safetensors"))
    x, y, _, _ = lagged_linear_recording()
    start, _ = initial_model(
        training_data_from_prepared(synthetic_prepared(x[:44], y[:44], DDP_PARTS, tiny_config(2, 2, skip_lags=3)), settings_for()),
        settings_for(),
    )
    moved = 0.0
    for name, initial in start.state_dict().items():
        # Equal up to the order of float summation (allreduce of two means vs one mean of 8).
        torch.testing.assert_close(ddp[name], single[name], rtol=0, atol=1e-6, msg=name)
        moved = max(moved, float((single[name] - initial).abs().max()))
    assert moved > 5e-3  # one AdamW step of lr 1e-2 moved the weights, far beyond the tolerance
