"""`brainformer-rt demo` end to end: real player and daemon subprocesses, real LSL and ZeroMQ.

The bundled default model is used when it is installed; otherwise a tiny model with the
bundled recording's channels and scaling statistics fitted on its training part (its
predictions are not meaningful, but every figure of the demo is still computed from them).
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from brainformer.model_dir import DEFAULT_MODEL_DIR
from brainformer_rt.demo import PlaybackClock, RunningCorrelation
from tests.rt.conftest import rt_cli, stop_process

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory, sample_fif) -> tuple[list[str], Path]:
    """``([], DEFAULT_MODEL_DIR)`` for the bundled default model, else ``(["--model", DIR], DIR)``
    of a tiny model whose skip path is a lagged ridge fitted on the training part (so that its
    predictions correlate with the true MEG and the live scores can be checked)."""
    if (DEFAULT_MODEL_DIR / "model.safetensors").is_file():
        return [], DEFAULT_MODEL_DIR
    import mne
    import torch

    from brainformer.data import config_for_recording, split_parts
    from brainformer.evaluation import fit_ridge
    from brainformer.modeling_brainformer import BrainformerForMEGPrediction
    from brainformer.preprocessing import fit_scaling, preprocess_recording
    from brainformer.settings import DataSettings

    raw = mne.io.read_raw_fif(sample_fif, preload=True, verbose="error")
    config = config_for_recording(raw, dict(window_samples=64, hop_samples=16, patch_len=16, d_model=16, n_heads=2,
                                            d_ff=32, router_dim=4, skip_lags=16))
    plain = preprocess_recording(raw, config)  # no statistics yet: physical units
    start, stop = split_parts(plain.n_samples, plain.sfreq_hz, DataSettings())["train"]
    config = fit_scaling(config, plain.eeg[start:stop], plain.meg[start:stop])
    scaled = preprocess_recording(raw, config)
    ridge = fit_ridge(scaled.eeg, scaled.meg, tuple(range(0, 16, 2)), start, stop)
    weight, bias = ridge.as_conv_skip(16)
    torch.manual_seed(0)
    model = BrainformerForMEGPrediction(config).eval()
    model.set_linear_skip(torch.as_tensor(weight, dtype=torch.float32), torch.as_tensor(bias, dtype=torch.float32))
    with torch.no_grad():  # the transformer adds nothing: the model is the ridge map
        model.projection.weight.zero_()
        model.projection.bias.zero_()
    path = tmp_path_factory.mktemp("demo-model")
    model.save_pretrained(path)
    return ["--model", str(path)], path


def offline_held_out_r(model_dir: Path, sample_fif: Path) -> list[float]:
    """Mean r (mags, grads, all) of the model on the held-out part, predicted offline as served."""
    import mne

    from brainformer.data import split_parts
    from brainformer.evaluation import pearson_r, predict_as_served
    from brainformer.model_dir import load_model
    from brainformer.preprocessing import preprocess_recording
    from brainformer.settings import DataSettings

    model = load_model(model_dir)
    raw = mne.io.read_raw_fif(sample_fif, preload=True, verbose="error")
    recording = preprocess_recording(raw, model.config)
    start, stop = split_parts(recording.n_samples, recording.sfreq_hz, DataSettings())["test"]
    r = pearson_r(recording.meg[start:stop], predict_as_served(model, recording.eeg, start, stop))
    types = np.asarray(model.config.meg_channel_types)
    return [float(np.nanmean(r[types == "mag"])), float(np.nanmean(r[types == "grad"])), float(np.nanmean(r))]


def demo_env() -> dict:
    # Wide, unbuffered output: table rows stay on one line and progress lines arrive at once.
    return dict(os.environ, COLUMNS="220", PYTHONUNBUFFERED="1")


def table_value(output: str, label: str) -> str:
    """The value cell of the summary row whose label starts with ``label``."""
    match = re.search(rf"│ {re.escape(label)}[^│]*│\s*([^│]*?)\s*│", output)
    assert match, f"no row {label!r} in:\n{output}"
    return match.group(1)


def demo_processes(stream_name: str) -> list[int]:
    """Processes whose command line mentions ``stream_name`` (the demo's player and daemon)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if stream_name.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def stream_name_of(output: str) -> str:
    match = re.search(r"LSL (demo-eeg-[0-9a-f]{8})", output)
    assert match, output
    return match.group(1)


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_scores_the_held_out_part_and_writes_a_png(tmp_path, demo_model, sample_fif):
    model_args, model_dir = demo_model
    png = tmp_path / "demo.png"
    result = subprocess.run(rt_cli("demo", "--duration", "6", "--plot", str(png), *model_args),
                            capture_output=True, text=True, env=demo_env(), cwd=tmp_path, timeout=170)
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    assert "latency" in output
    windows_served = int(table_value(output, "windows served").split("/")[0].replace(",", ""))
    assert windows_served > 0
    # The player starts just before the held-out part: 6 s are enough to reach and score it.
    held_out = [float(v) for v in table_value(output, "r held-out").split("/")]
    samples = [int(v.replace(",", "")) for v in re.findall(r"samples scored\s*│\s*([\d,]+)", output)]
    assert samples[0] > 1000, output
    # The live scores are those of the same model predicted offline on the held-out part (the
    # daemon's filters start 1 s before it; windows dropped under load change little).
    np.testing.assert_allclose(held_out, offline_held_out_r(model_dir, sample_fif), atol=0.03)
    # Every EEG sample read back from the stream sits at its timestamp's place in the recording.
    assert "all exact" in table_value(output, "timestamp → recording mapping"), output
    latency = [float(v) for v in table_value(output, "e2e latency at the subscriber").split("ms")[0].split("/")]
    assert all(math.isfinite(v) and v > 0 for v in latency)
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert str(png) in output
    # Both subprocesses are gone.
    assert demo_processes(stream_name_of(output)) == []


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_during_the_live_phase_stops_everything_and_still_reports(tmp_path, demo_model):
    model_args, _ = demo_model
    png = tmp_path / "demo.png"
    out_path = tmp_path / "demo.out"
    with out_path.open("w") as out:
        process = subprocess.Popen(rt_cli("demo", "--duration", "120", "--plot", str(png), *model_args),
                                   stdout=out, stderr=subprocess.STDOUT, env=demo_env(), cwd=tmp_path)
        try:
            deadline = time.monotonic() + 150
            # Progress lines (output not a terminal) mean predictions are being scored.
            while "windows served" not in out_path.read_text():
                assert process.poll() is None, out_path.read_text()
                assert time.monotonic() < deadline, out_path.read_text()
                time.sleep(0.2)
            process.send_signal(signal.SIGINT)
            code = process.wait(60)
        finally:
            stop_process(process)
    output = out_path.read_text()
    assert code == 0, output
    assert "stopped by Ctrl-C" in output
    assert int(table_value(output, "windows served").split("/")[0].replace(",", "")) > 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert demo_processes(stream_name_of(output)) == []


def test_ctrl_c_during_start_up_stops_at_once_with_130(tmp_path, demo_model):
    model_args, _ = demo_model
    out_path = tmp_path / "demo.out"
    with out_path.open("w") as out:
        command = rt_cli("demo", "--duration", "60", "--plot", str(tmp_path / "demo.png"), *model_args)
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=demo_env(), cwd=tmp_path)
        try:
            deadline = time.monotonic() + 60
            while "starting:" not in out_path.read_text():  # the player and the daemon are launched
                assert process.poll() is None, out_path.read_text()
                assert time.monotonic() < deadline, out_path.read_text()
                time.sleep(0.1)
            process.send_signal(signal.SIGINT)
            code = process.wait(30)
        finally:
            stop_process(process)
    output = out_path.read_text()
    assert code == 130, output
    assert "stopped by Ctrl-C before the first prediction" in output
    assert not (tmp_path / "demo.png").exists()
    assert demo_processes(stream_name_of(output)) == []


# ----------------------------------------------------------------------------------------------
# Bad options: one line, exit code 2, nothing started
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, needle",
    [
        (["--duration", "0"], "--duration must be a positive number"),
        (["--model", "/nonexistent/brainformer-model"], "/nonexistent/brainformer-model"),
        (["--plot", "/nonexistent-dir/demo.png"], "/nonexistent-dir"),
        (["--plot", "demo.jpg"], "--plot must name a .png file"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path, args, needle):
    result = subprocess.run(rt_cli("demo", *args), capture_output=True, text=True, env=demo_env(), cwd=tmp_path,
                            timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_model_without_weights_is_refused_before_anything_starts(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    result = subprocess.run(rt_cli("demo", "--model", str(model)), capture_output=True, text=True, env=demo_env(),
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "model.safetensors: missing" in result.stderr


# ----------------------------------------------------------------------------------------------
# The scoring pieces
# ----------------------------------------------------------------------------------------------
def test_running_correlation_equals_pearson_r_of_all_samples():
    from brainformer.evaluation import pearson_r

    rng = np.random.default_rng(0)
    truth = rng.normal(size=(1000, 5))
    predicted = 0.5 * truth + rng.normal(size=(1000, 5))
    truth[:, 3] = 2.0  # flat truth: NaN
    predicted[:, 4] = -1.0  # constant prediction: 0
    running = RunningCorrelation(5)
    for start in range(0, 1000, 37):  # any blocks, in any order
        running.add(truth[start:start + 37], predicted[start:start + 37])
    np.testing.assert_allclose(running.r(), pearson_r(truth, predicted), rtol=1e-9, atol=1e-12, equal_nan=True)
    assert np.isnan(running.r()[3]) and running.r()[4] == 0.0
    assert np.all(np.isnan(RunningCorrelation(2).r()))


def test_playback_clock_inverts_the_player_timestamps_across_loops():
    sfreq = 600.614990234375
    clock = PlaybackClock(t_start=12345.678, start_sample=10800, n_samples=14400, sfreq_hz=sfreq)
    k = np.arange(0, 3 * 14400, 7)
    timestamps = clock.t_start + k / sfreq  # how the player stamps stream sample k
    np.testing.assert_array_equal(clock.stream_samples(timestamps), k)
    np.testing.assert_array_equal(clock.recording_samples(k), (10800 + k) % 14400)
