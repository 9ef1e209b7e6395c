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
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from brainformer.paths import DEFAULT_MODEL_DIR
from brainformer_rt.tools.demo import PlaybackClock, RunningCorrelation
from tests.rt.conftest import rt_cli, stop_process

REPO = Path(__file__).resolve().parents[3]
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


def offline_held_out_r(model_dir: Path, sample_fif: Path) -> tuple[list[float], list[float]]:
    """Mean r (mags, grads, all) of the model on the held-out part, predicted offline as served:
    on all rows and on the clean rows of `brainformer evaluate`'s artefact mask."""
    import mne

    from brainformer.data import split_parts
    from brainformer.evaluation import ArtefactMask, detect_artefacts, pearson_r, predict_as_served
    from brainformer.model_dir import load_model
    from brainformer.preprocessing import preprocess_recording
    from brainformer.settings import DataSettings

    model = load_model(model_dir)
    raw = mne.io.read_raw_fif(sample_fif, preload=True, verbose="error")
    recording = preprocess_recording(raw, model.config)
    start, stop = split_parts(recording.n_samples, recording.sfreq_hz, DataSettings())["test"]
    truth, predicted = recording.meg[start:stop], predict_as_served(model, recording.eeg, start, stop)
    clean = ArtefactMask.for_rows(detect_artefacts(raw), start, stop).clean
    types = np.asarray(model.config.meg_channel_types)
    means = []
    for r in (pearson_r(truth, predicted), pearson_r(truth[clean], predicted[clean])):
        means.append([float(np.nanmean(r[types == "mag"])), float(np.nanmean(r[types == "grad"])), float(np.nanmean(r))])
    return means[0], means[1]


def demo_env() -> dict:
    """Wide, unbuffered output (table rows stay on one line and progress lines arrive at once), and
    no GPU: the demo starts its daemon with `--device auto`, which on a GPU machine would serve with
    the CUDA-graph engine; the scores below are compared with the model run on the CPU."""
    return dict(os.environ, COLUMNS="220", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")


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
    held_out = [float(v) for v in table_value(output, "r held-out (last").split("/")]
    held_out_clean = [float(v) for v in table_value(output, "r held-out, clean").split("/")]
    samples = [int(v.replace(",", "")) for v in re.findall(r"samples scored\s*│\s*([\d,]+)", output)]
    assert samples[0] > 1000 and 0 < samples[1] < samples[0], output  # all, then clean held-out samples
    # The live scores are those of the same model predicted offline on the held-out part (the
    # daemon's filters start 1 s before it; windows dropped under load change little), on all
    # and on the clean samples.
    offline, offline_clean = offline_held_out_r(model_dir, sample_fif)
    np.testing.assert_allclose(held_out, offline, atol=0.03)
    np.testing.assert_allclose(held_out_clean, offline_clean, atol=0.03)
    # Every EEG sample read back from the stream sits at its timestamp's place in the recording.
    assert "all exact" in table_value(output, "timestamp → recording mapping"), output
    latency = [float(v) for v in table_value(output, "e2e latency at the subscriber").split("ms")[0].split("/")]
    assert all(math.isfinite(v) and v > 0 for v in latency)
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert str(png) in output
    # Both subprocesses are gone.
    assert demo_processes(stream_name_of(output)) == []


def interrupt_demo(tmp_path: Path, args: list[str], after: str, wait_s: float, exit_wait_s: float) -> tuple[int, str]:
    """Run ``demo ARGS``, send SIGINT once ``after`` appears in its output; (exit code, output)."""
    out_path = tmp_path / "demo.out"
    with out_path.open("w") as out:
        process = subprocess.Popen(rt_cli("demo", *args), stdout=out, stderr=subprocess.STDOUT, env=demo_env(),
                                   cwd=tmp_path)
        try:
            deadline = time.monotonic() + wait_s
            while after not in out_path.read_text():
                assert process.poll() is None, out_path.read_text()
                assert time.monotonic() < deadline, out_path.read_text()
                time.sleep(0.1)
            process.send_signal(signal.SIGINT)
            code = process.wait(exit_wait_s)
        finally:
            stop_process(process)
    return code, out_path.read_text()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_during_the_live_phase_stops_everything_and_still_reports(tmp_path, demo_model):
    model_args, _ = demo_model
    png = tmp_path / "demo.png"
    # Progress lines (output not a terminal) mean predictions are being scored.
    code, output = interrupt_demo(tmp_path, ["--duration", "120", "--plot", str(png), *model_args],
                                  after="windows served", wait_s=150, exit_wait_s=60)
    assert code == 0, output
    assert "stopped by Ctrl-C" in output
    assert int(table_value(output, "windows served").split("/")[0].replace(",", "")) > 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert demo_processes(stream_name_of(output)) == []


def test_ctrl_c_during_start_up_stops_at_once_with_130(tmp_path, demo_model):
    model_args, _ = demo_model
    # "starting:": the player and the daemon are launched.
    code, output = interrupt_demo(tmp_path, ["--duration", "60", "--plot", str(tmp_path / "demo.png"), *model_args],
                                  after="starting:", wait_s=60, exit_wait_s=30)
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


def test_live_r_on_clean_samples_leaves_out_exactly_the_artefact_rows():
    """DemoScore fed one message per hop: the clean correlation is Pearson r of the settled
    held-out rows outside the reference's artefact windows, the overall one of all of them."""
    from brainformer.evaluation import pearson_r
    from brainformer_rt.tools.demo import DemoReference, DemoScore

    rng = np.random.default_rng(4)
    n_rows, sfreq = 2000, 100.0
    meg = rng.standard_normal((n_rows, 3)).astype(np.float32)
    clean = np.ones(n_rows, bool)
    clean[1620:1660] = False  # a heartbeat window in the held-out part
    reference = DemoReference(meg_true=meg, eeg_played=np.zeros((n_rows, 2), np.float32), recording_sfreq_hz=sfreq,
                              decimation=1, parts={"train": (100, 1200), "validation": (1300, 1500),
                                                   "test": (1600, 2000)},
                              settle_rows=100, meg_names=["a", "b", "c"], meg_types=["mag", "grad", "grad"],
                              clean=clean)
    clock = PlaybackClock(t_start=100.0, start_sample=reference.start_sample(), n_samples=n_rows, sfreq_hz=sfreq)
    score = DemoScore(reference, clock, hop_samples=10)
    predicted = meg + rng.standard_normal(meg.shape).astype(np.float32)
    for k in range(0, 400, 10):  # stream samples 0…399 = recording rows 1500…1899
        rows = clock.recording_samples(np.arange(k, k + 10))
        score.add_message(predicted[rows], clock.t_start + np.arange(k, k + 10) / sfreq, 0.001)
    held = np.arange(1600, 1900)  # settled (stream sample >= 100) and in the test part
    np.testing.assert_allclose(score.held_out.r(), pearson_r(meg[held], predicted[held]), rtol=1e-9)
    kept = held[clean[held]]
    assert kept.size == 300 - 40 and score.held_out_clean.n == kept.size
    np.testing.assert_allclose(score.held_out_clean.r(), pearson_r(meg[kept], predicted[kept]), rtol=1e-9)
    # Without artefact information every row is clean.
    assert DemoReference(meg_true=meg, eeg_played=meg, recording_sfreq_hz=sfreq, decimation=1, parts={},
                         settle_rows=0, meg_names=[], meg_types=[]).clean.all()


def test_the_demo_process_scores_without_importing_the_model_package(demo_model):
    """The daemon child pays for torch; the demo's own process reads the config and builds the
    true MEG with numpy, scipy and MNE only (checked in a fresh interpreter)."""
    _, model_dir = demo_model
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from brainformer.paths import SAMPLE_RECORDING
        from brainformer_rt.commands import _demo_report, demo
        from brainformer_rt.tools.demo.run import _model_config
        from brainformer_rt.tools.demo.scoring import build_reference

        reference = build_reference(SAMPLE_RECORDING, _model_config(Path({str(model_dir)!r})))
        assert reference.n_rows > 0
        # The heartbeats of the recording leave some rows out of the clean scores, not all.
        assert reference.artefacts.heartbeats.size > 0 and 0 < reference.clean.sum() < reference.n_rows
        print(sorted(name for name in ("torch", "transformers") if name in sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]"]
