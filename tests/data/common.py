"""What the tests of `brainformer.data` share: settings, the BIDS runs, file variants."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mne

from brainformer.settings import DataSettings, ExperimentSettings

WINDOW = 64
SETTINGS = ExperimentSettings(
    model={"window_samples": WINDOW, "patch_len": 16, "hop_samples": 16},
    data=DataSettings(settle_s=0.5, train_hop_samples=16, eval_hop_samples=32),
)
SETTINGS_TOML = """
[model]
window_samples = 64
patch_len = 16
hop_samples = 16

[data]
settle_s = 0.5
train_hop_samples = 16
eval_hop_samples = 32
"""

BIDS_RUNS = ("sub-01_ses-meg_task-test_run-01_meg", "sub-02_ses-meg_task-test_run-01_meg")


def save_variant(source: Path, path: Path, change) -> Path:
    raw = mne.io.read_raw_fif(source, verbose="error").crop(0, 3).load_data(verbose="error")
    raw = change(raw) or raw
    raw.save(path, overwrite=True, verbose="error")
    return path


def heavy_modules_after(code: str) -> list[str]:
    """Which of torch and transformers a fresh interpreter has imported after running `code`
    (this test process imported both long ago, so only a new one can tell)."""
    check = f"{code}\nimport json, sys; print(json.dumps(sorted({{'torch', 'transformers'}} & set(sys.modules))))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # the list printed last
