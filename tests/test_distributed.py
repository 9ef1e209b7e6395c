"""`brainformer train` under torchrun: two real CPU processes (DDP over gloo) on a prepared dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mne
import pytest

from brainformer.data import build_dataset, prepare_recordings
from brainformer.model_dir import load_model
from brainformer.settings import load_settings
from brainformer.training import load_training_data
from tests.test_training import TINY_MODEL_TOML, assert_trained_from_the_ridge_start

# The tiny model of the training tests, with more, smaller steps: each process gets a share.
TINY_TOML = TINY_MODEL_TOML.replace("train_hop_samples = 64", "train_hop_samples = 32").replace(
    "batch_size = 16", "batch_size = 8"
)


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
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "linear_path_statistics.safetensors", "model.safetensors"]
    # The written model trained: the frozen ridge skip path kept, the transformer moved, better
    # than predicting zero, and scoring the test loss the main process reported. (That the DDP
    # step equals the single-process step on the union batch: tests/test_learning.py.)
    settings = load_settings(config_path)
    data = load_training_data([dataset], settings)
    # Under DDP the Trainer's reported test loss is a weighted mean of per-process batch means, and
    # an odd number of test windows (53 here) is padded with one repeated window: the reported
    # value may move by up to about (spread of the window losses) / 27 from the true mean, ~1 %.
    assert_trained_from_the_ridge_start(load_model(out), data, settings, result.stdout, reported_abs=0.02)
    assert not Path(tmp_path / "model" / "checkpoints").exists()
