"""`brainformer train` under torchrun: two real CPU processes (DDP over gloo) on a prepared dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mne
import pytest
import torch

from brainformer.data import build_dataset, prepare_recordings
from brainformer.model_dir import load_model
from brainformer.settings import load_settings

TINY_TOML = """
[model]
window_samples = 64
hop_samples = 16
patch_len = 16
d_model = 8
n_heads = 2
d_ff = 16
router_dim = 2
skip_lags = 5

[data]
settle_s = 0.5
train_hop_samples = 32

[training]
epochs = 1
batch_size = 8
loss_last_samples = 16
time_shift_samples = 8
noise_std = 0.1
skip_learning_rate = 0.0
"""


@pytest.mark.slow
def test_two_process_cpu_training_writes_one_loadable_model_dir(sample_fif, tmp_path):
    short = tmp_path / "short_raw.fif"
    mne.io.read_raw_fif(sample_fif, verbose="error").crop(0, 8).save(short, verbose="error")
    config_path = tmp_path / "tiny.toml"
    config_path.write_text(TINY_TOML)
    dataset = tmp_path / "dataset"
    build_dataset(prepare_recordings([short], load_settings(config_path)), dataset)
    out = tmp_path / "model"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "brainformer.cli", "train", "--data", str(dataset), "--out", str(out), "--config", str(config_path),
    ]
    # One thread per process: two processes share the CPU cores; no GPU even where one exists.
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", TQDM_DISABLE="1")
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # Both processes trained together (DDP), and only the main one wrote and reported.
    assert result.stdout.count("model written to") == 1, output[-4000:]
    assert "on 2 processes" in result.stdout
    assert result.stdout.count("test part") == 1
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    model = load_model(out)
    with torch.no_grad():
        predictions = model(input_values=torch.randn(2, 64, 60)).predictions
    assert predictions.shape == (2, 64, 306) and torch.isfinite(predictions).all()
    assert not Path(tmp_path / "model" / "checkpoints").exists()
