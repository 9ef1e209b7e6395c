"""The bench's effective delay and delay budget: the summary code on a known case (a prediction
that is the truth late by a known lag must be found at that lag), the players' playback clock
(real `simulate` subprocess, real inlet), and a whole bench run reporting both."""

from __future__ import annotations

import json
import math
import subprocess
import time
import uuid

import numpy as np
import pylsl
import pytest
import scipy.signal

from brainformer.paths import SAMPLE_RECORDING
from brainformer_rt.tools.bench.delay import BANDS, DelayProbe, PayloadKeeper, ZeroPhaseTruth, read_clock
from brainformer_rt.tools.demo.files import write_json
from brainformer_rt.tools.player import RecordingSource
from tests.rt.conftest import HOP, open_inlet, rt_cli

MODEL_HZ = 600.0


def band_limited_noise(n_rows: int, n_channels: int = 6, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal((n_rows, n_channels))
    sos = scipy.signal.butter(4, [4.0, 30.0], btype="bandpass", fs=MODEL_HZ, output="sos")
    return scipy.signal.sosfiltfilt(sos, noise, axis=0).astype(np.float32)


def published(truth: ZeroPhaseTruth, clock: dict, lag_rows: int, per_row: int, n_rows: int,
              hop: int = 16, lost_hop: int | None = None) -> PayloadKeeper:
    """What a system would publish: one message per hop, sample ``j`` stamped with its EEG
    sample's time and holding the truth ``lag_rows`` model samples earlier (late by that lag)."""
    keeper = PayloadKeeper()
    start_row = clock["start_sample"] // per_row
    for first in range(0, n_rows, hop):
        if first // hop == lost_hop:
            continue  # a message that never arrived
        j = np.arange(first, first + hop)
        k = j * per_row  # stream samples: every per_row-th EEG sample has a prediction
        timestamps = clock["t_start"] + k / clock["sfreq_hz"]
        data = truth.meg[(start_row + j - lag_rows) % truth.meg.shape[0]] * 1e-12 + 3e-13  # physical units
        keeper.add(received_s=float(first), timestamps=timestamps, data=data)
    return keeper


@pytest.mark.parametrize("per_row", [1, 2])  # the recording at the model's rate, and at twice it
@pytest.mark.parametrize("lag_rows", [12, 0, -5])
def test_a_prediction_late_by_a_known_lag_is_found_at_that_lag_in_every_band(tmp_path, lag_rows, per_row):
    n_recording_rows = 6000
    truth = ZeroPhaseTruth(meg=band_limited_noise(n_recording_rows), sfreq_hz=MODEL_HZ,
                           recording_sfreq_hz=MODEL_HZ * per_row)
    # The player started near the recording's end, so the measured stretch wraps around it.
    clock = {"t_start": 1000.25, "start_sample": 5000 * per_row, "n_samples": n_recording_rows * per_row,
             "sfreq_hz": MODEL_HZ * per_row}
    write_json(tmp_path / "clock.json", clock)
    n_rows = 4800
    probe = DelayProbe(truth, "EEG", tmp_path / "clock.json")
    found = probe.measure(published(truth, clock, lag_rows, per_row, n_rows), 0.0, float(n_rows))
    assert "error" not in found, found
    assert found["samples"] == n_rows and found["missing_fraction"] == 0
    for band in BANDS:  # a pure shift delays cycles and envelopes alike
        entry = found["bands"][band]
        assert entry["lag_ms"] == pytest.approx(1e3 * lag_rows / MODEL_HZ, abs=0.01), band
        assert entry["r_at_lag"] > 0.99, band
        assert (entry["r_at_zero"] < entry["r_at_lag"]) == (lag_rows != 0), band
    # A message that never arrived leaves a hole, filled with the mean: counted, and the lag stays.
    keeper = published(truth, clock, lag_rows, per_row, n_rows, lost_hop=100)
    found = probe.measure(keeper, 0.0, float(n_rows))
    assert found["samples"] == n_rows and found["missing_fraction"] == pytest.approx(16 / n_rows)
    assert found["bands"]["all"]["lag_ms"] == pytest.approx(1e3 * lag_rows / MODEL_HZ, abs=0.01)
    # Only the messages received in the measured period count.
    assert probe.measure(keeper, 0.0, float(n_rows // 2))["samples"] == n_rows // 2


def test_what_cannot_be_measured_is_said_not_raised(tmp_path):
    truth = ZeroPhaseTruth(meg=band_limited_noise(3000), sfreq_hz=MODEL_HZ, recording_sfreq_hz=MODEL_HZ)
    clock_file = tmp_path / "clock.json"
    probe = DelayProbe(truth, "EEG", clock_file)
    assert "no playback clock" in probe.measure(PayloadKeeper(), 0.0, 1.0)["error"]
    write_json(clock_file, {"t_start": 0.0, "start_sample": 0, "n_samples": 2500, "sfreq_hz": 500.0})
    keeper = published(truth, {"t_start": 0.0, "start_sample": 0, "sfreq_hz": 500.0}, 0, 1, 1000)
    assert "500 Hz" in probe.measure(keeper, 0.0, 1000.0)["error"]  # a resampled source
    write_json(clock_file, {"t_start": 0.0, "start_sample": 0, "n_samples": 3000, "sfreq_hz": MODEL_HZ})
    assert "no prediction" in probe.measure(PayloadKeeper(), 0.0, 1.0)["error"]
    short = published(truth, {"t_start": 0.0, "start_sample": 0, "sfreq_hz": MODEL_HZ}, 0, 1, 160)
    assert "too few" in probe.measure(short, 0.0, 160.0)["error"]


@pytest.mark.timeout(120)
def test_the_players_clock_maps_every_timestamp_to_the_sample_it_carries(tmp_path, stream_name):
    """A real `simulate --clock-file`: the EEG an inlet receives is, bit for bit, the recording's
    sample the clock names for its timestamp."""
    clock_file = tmp_path / "clock.json"
    player = subprocess.Popen(rt_cli("simulate", "--name", stream_name, "--source-id", f"test-{uuid.uuid4()}",
                                     "--loop", "--chunk", str(HOP), "--clock-file", str(clock_file)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        inlet = open_inlet(stream_name)
        deadline = time.monotonic() + 60
        while (clock := read_clock(clock_file)) is None:
            assert time.monotonic() < deadline and player.poll() is None, "no playback clock written"
            time.sleep(0.05)
        chunks, stamps = [], []
        while sum(map(len, stamps)) < 200:
            data, timestamps = inlet.pull_chunk(timeout=10.0, max_samples=256)
            assert timestamps, "no EEG arrived"
            chunks.append(np.asarray(data, np.float32)), stamps.append(np.asarray(timestamps))
    finally:
        player.terminate()
        player.wait(30)
    recording = RecordingSource.from_file(SAMPLE_RECORDING)
    assert (clock.start_sample, clock.n_samples, clock.sfreq_hz) == (0, len(recording.data), recording.sfreq_hz)
    timestamps = np.concatenate(stamps)
    k = clock.stream_samples(timestamps)
    np.testing.assert_allclose(timestamps, clock.t_start + k / clock.sfreq_hz, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate(chunks), recording.data[clock.recording_samples(k)])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_reports_the_effective_delay_and_the_delay_budget(model_dir, tmp_path):
    json_path = tmp_path / "bench.json"
    done = subprocess.run(rt_cli("bench", "--model", str(model_dir), "--duration", "3", "--hop", str(HOP),
                                 "--peer", "none", "--engine", "eager", "--json", str(json_path)),
                          capture_output=True, text=True, timeout=220)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "delay as the brain sees it" in done.stdout and "effective delay of the prediction" in done.stdout
    results = json.loads(json_path.read_text())
    daemon = results["systems"]["daemon"]
    delay = daemon["effective_delay"]
    assert "error" not in delay, delay
    assert delay["output"] == "lsl" and delay["samples"] > 1000 and 0 <= delay["missing_fraction"] < 0.5
    assert set(delay["bands"]) == set(BANDS)
    for band, entry in delay["bands"].items():
        assert abs(entry["lag_ms"]) <= 250 and math.isfinite(entry["r_at_lag"]) and math.isfinite(entry["r_at_zero"])
        assert entry["r_at_lag"] >= entry["r_at_zero"], band
    budget = daemon["delay_budget"]
    centre = next(p for p in results["settings"]["delay"]["points"] if p["label"] == "band centre")
    assert budget["filter_group_delay_ms"] == centre["group_delay_ms"] > 0
    assert budget["hop_wait_ms"] == pytest.approx(1e3 * (HOP - 1) / 2 / results["settings"]["sfreq_hz"])
    assert budget["e2e_median_ms"] == daemon["outputs"]["lsl"]["pooled"]["median_ms"]
    assert budget["total_ms"] == pytest.approx(budget["filter_group_delay_ms"] + budget["hop_wait_ms"]
                                               + budget["e2e_median_ms"])
