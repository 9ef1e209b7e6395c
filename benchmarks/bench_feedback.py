"""Feedback signals: accuracy against the zero-phase truth as a function of lag, cost per hop, and
end-to-end latency of the feedback stream next to the MEG stream's.

    scripts/netns-run .venv/bin/python benchmarks/bench_feedback.py --plot lags.png [--json out.json]
        [--minutes 16] [--seed 1] [--e2e-seconds 30] [--skip-e2e] [--skip-real]

1. Lag curves. Recordings: the bundled real one (24 s) and a simulated one (`--minutes`, the
   `sample` layout, `--seed`). Models: `default` (causal 4–30 Hz target) and `default-lowdelay`
   (zero-phase target). Inputs: a perfect model's output (the true MEG through the model's own
   target band: `preprocess_recording` with the model's config, un-scaled) and the model's
   prediction as served (`predict_as_served`; on the real recording only its held-out last 25 %,
   the model was trained on the rest). Truth: the zero-phase 4–30 Hz MEG, band-passed again with
   zero phase in the signal's band, its Hilbert envelope or phase (`brainformer.feedback.true_analytic`).
   Signals: the alpha (8–12 Hz) envelope of the 10 magnetometers with the most alpha in the
   truth, the beta (15–25 Hz) envelope of the 10 with the most beta, and the alpha phase of the
   single strongest-alpha magnetometer. Methods, in the same run on the same rows:
   - the feedback stage's estimator (`brainformer.feedback`, offline: tests hold the stage to
     the same numbers hop by hop);
   - the naive chain: a causal 4th-order Butterworth band-pass, rectified, a 100 ms moving mean
     (a group: the mean over its sensors); for the phase, the same band-pass and a Hilbert
     transform over the last 0.5 s, read at its newest sample.
   Envelope: Pearson r of the estimate at `t` against the truth at `t − lag`
   (`lag_correlation`); phase: the phase locking value (`lag_phase_locking`, its modulus: 1 for
   a constant phase difference), with the mean phase error at zero lag (what a consumer would
   have to correct). Goals: at ≤ 1/4 of the naive chain's best-lag
   delay, ≥ 0.9 × its best correlation; at zero lag ≥ 0.8 for the alpha envelope on the
   perfect-model input; the accuracy at each signal's published delay (the one the daemon puts in
   the stream's meta-data, measured on a surrogate at start-up) is reported next to the delay
   measured here. The alpha envelope is also scored per sensor (mean r over its 10 sensors).
2. Cost per hop: the stage with 8 signals for the default model, 16-sample hops of MEG, median
   and p99 of `FeedbackStage.step` without publishers (goal ≤ 0.1 ms median) and with an LSL
   outlet and a ZeroMQ topic, and the array allocations per hop (tracemalloc, numpy's domain).
3. End to end (unless `--skip-e2e`): player → `serve --feedback` (default model, eager) → the
   reference subscribers (`brainformer-rt listen`) on the MEG and the feedback streams, LSL and
   ZeroMQ, in one run: median / p99 latency from the EEG instant to the subscriber.
Everything runs on this machine's CPUs; it must run inside the loopback-only namespace (LSL).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.signal
from rich.console import Console
from rich.table import Table

from brainformer.config_fields import BrainformerFields
from brainformer.evaluation.delay import lag_correlation, lag_phase_locking
from brainformer.feedback import FeedbackSignal, InputBand, design_estimator, measure_delay, plan_feedback, signal_values, true_analytic
from brainformer.paths import SAMPLE_RECORDING
from brainformer.settings import FeedbackSignalSettings

MODELS = ("default", "default-lowdelay")
ALPHA_HZ, BETA_HZ = (8.0, 12.0), (15.0, 25.0)
GROUP_SIZE = 10
#: Seconds dropped at the start of every scored range (filter settling).
SETTLE_S = 1.0
#: Lags scanned (s): the naive chain's best lag is near 0.3 s.
MAX_LAG_S = 0.45
#: The naive chain.
NAIVE_ORDER, NAIVE_MEAN_S, NAIVE_HILBERT_S = 4, 0.1, 0.5
#: Held-out part of the real recording for the served prediction (the model trained on the rest).
REAL_TEST_FROM = 0.75
#: The goals.
DELAY_FRACTION, CORRELATION_FRACTION, ZERO_LAG_GOAL = 0.25, 0.9, 0.8
#: Cost: hops timed, after warm-up hops.
COST_HOPS, COST_WARMUP, HOP = 5000, 300, 16


@dataclass
class Curve:
    """One lag curve: lags (ms) and scores (r, or the locking's real part)."""

    lags_ms: np.ndarray
    score: np.ndarray
    locking: np.ndarray | None = None  # phase: the complex locking

    def at(self, lag_ms: float) -> float:
        return float(np.interp(lag_ms, self.lags_ms, self.score))

    def best(self, low_ms: float = -math.inf, high_ms: float = math.inf) -> tuple[float, float]:
        keep = (self.lags_ms >= low_ms) & (self.lags_ms <= high_ms)
        i = int(np.nanargmax(np.where(keep, self.score, -np.inf)))
        return float(self.lags_ms[i]), float(self.score[i])


# ----------------------------------------------------------------------------------------------
# Data: the recordings through each model
# ----------------------------------------------------------------------------------------------
def _physical(config: Any, scaled: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """`scaled (n, len(columns))` of those MEG columns → T, T/m (float64)."""
    scaled = np.asarray(scaled, dtype=np.float64)
    if config.meg_std is None:
        return scaled
    return scaled * np.asarray(config.meg_std)[columns] + np.asarray(config.meg_mean)[columns]


def _band_power(meg: np.ndarray, sfreq_hz: float, band_hz: tuple[float, float], block: int = 34) -> np.ndarray:
    """Power of each column of `meg (n, C)` in the zero-phase band (in column blocks: memory)."""
    from brainformer.evaluation.delay import zero_phase_band

    return np.concatenate([zero_phase_band(meg[:, i:i + block], sfreq_hz, band_hz).var(axis=0)
                           for i in range(0, meg.shape[1], block)])


def choose_groups(config: Any, truth_scaled: np.ndarray, sfreq_hz: float) -> dict[str, np.ndarray]:
    """The sensors of each signal, chosen on the zero-phase truth: the magnetometers with the most
    alpha, with the most beta, and the single strongest-alpha one."""
    mags = np.flatnonzero(np.asarray(config.meg_channel_types) == "mag")
    truth = _physical(config, truth_scaled[:, mags], mags)
    alpha = mags[np.argsort(_band_power(truth, sfreq_hz, ALPHA_HZ))[::-1]]
    beta = mags[np.argsort(_band_power(truth, sfreq_hz, BETA_HZ))[::-1]]
    return {"alpha envelope": np.sort(alpha[:GROUP_SIZE]), "beta envelope": np.sort(beta[:GROUP_SIZE]),
            "alpha phase": alpha[:1]}


def signal_settings(groups: dict[str, np.ndarray], names: list[str]) -> list[FeedbackSignalSettings]:
    def sensors(key: str) -> tuple[str, ...]:
        return tuple(names[i] for i in groups[key])

    return [FeedbackSignalSettings("alpha envelope", ALPHA_HZ, "envelope", sensors=sensors("alpha envelope")),
            FeedbackSignalSettings("beta envelope", BETA_HZ, "envelope", sensors=sensors("beta envelope")),
            FeedbackSignalSettings("alpha phase", ALPHA_HZ, "phase", sensors=sensors("alpha phase"))]


def model_inputs(raw: Any, model_name: str, columns: np.ndarray, served_rows: tuple[int, int], log) -> dict[str, Any]:
    """For one model: its perfect output, its served prediction (`served_rows`) and the zero-phase
    truth, each `(n, len(columns))` in T / T/m; plus the config and rate."""
    from brainformer.evaluation import predict_as_served
    from brainformer.model_dir import load_model
    from brainformer.preprocessing import is_zero_phase_target, preprocess_recording

    model = load_model(model_name)
    config = model.config
    started = time.monotonic()
    recording = preprocess_recording(raw, config)
    perfect = _physical(config, recording.meg[:, columns], columns)
    if is_zero_phase_target(config):
        truth = perfect
    else:
        zero_phase = preprocess_recording(raw, BrainformerFields.from_config(config).replace(target_phase="zero_phase"))
        truth = _physical(config, zero_phase.meg[:, columns], columns)
        del zero_phase
    log(f"  {model_name}: preprocessed in {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    start, stop = served_rows
    served = np.empty((stop - start, columns.size))
    block = int(60 * recording.sfreq_hz)
    for first in range(start, stop, block):
        last = min(stop, first + block)
        served[first - start:last - start] = _physical(
            config, predict_as_served(model, recording.eeg, first, last)[:, columns], columns)
    log(f"  {model_name}: served prediction of {(stop - start) / recording.sfreq_hz:.0f} s in "
        f"{time.monotonic() - started:.0f} s")
    return {"config": config, "sfreq_hz": recording.sfreq_hz, "perfect": perfect, "truth": truth, "served": served,
            "served_start": start}


# ----------------------------------------------------------------------------------------------
# The naive chain
# ----------------------------------------------------------------------------------------------
def naive_values(signal: FeedbackSignal, x: np.ndarray, sfreq_hz: float) -> np.ndarray:
    """The naive chain on `x (n, k)` (the signal's sensors): envelope = mean over the sensors of
    the rectified, 100 ms-averaged causal band-pass; phase = the Hilbert phase of the last 0.5 s
    of the causal band-pass, at its newest sample."""
    sos = scipy.signal.butter(NAIVE_ORDER, signal.band_hz, btype="bandpass", fs=sfreq_hz, output="sos")
    band = scipy.signal.sosfilt(sos, x, axis=0)
    if signal.measure == "phase":
        return _endpoint_hilbert_phase(band[:, 0], int(round(NAIVE_HILBERT_S * sfreq_hz)))
    n_mean = int(round(NAIVE_MEAN_S * sfreq_hz))
    amplitude = scipy.signal.lfilter(np.ones(n_mean) / n_mean, [1.0], np.abs(band), axis=0).mean(axis=1)
    return amplitude ** 2 if signal.measure == "power" else amplitude


def _endpoint_hilbert_phase(band: np.ndarray, window: int, block: int = 8192) -> np.ndarray:
    """The phase at the newest sample of the Hilbert transform of each sliding `window` of `band`
    (n,); the first `window - 1` samples use the window padded with zeros."""
    padded = np.concatenate([np.zeros(window - 1), band])
    windows = np.lib.stride_tricks.sliding_window_view(padded, window)
    out = np.empty(band.size)
    for first in range(0, band.size, block):
        out[first:first + block] = np.angle(scipy.signal.hilbert(windows[first:first + block], axis=1)[:, -1])
    return out


# ----------------------------------------------------------------------------------------------
# Curves
# ----------------------------------------------------------------------------------------------
def curve(measure: str, truth: np.ndarray, estimate: np.ndarray, sfreq_hz: float, step: int = 1) -> Curve:
    truth = truth.reshape(truth.shape[0], -1)
    estimate = estimate.reshape(estimate.shape[0], -1)
    if measure == "phase":
        lags, locking = lag_phase_locking(truth, estimate, sfreq_hz, MAX_LAG_S, step)
        return Curve(1e3 * lags / sfreq_hz, np.abs(locking), locking)
    lags, r = lag_correlation(truth, estimate, sfreq_hz, MAX_LAG_S, step)
    return Curve(1e3 * lags / sfreq_hz, r)


def score_signal(signal: FeedbackSignal, delay_ms: float, estimator: Any, x: np.ndarray, truth_analytic: np.ndarray,
                 sfreq_hz: float) -> dict[str, Any]:
    """Both methods' curves on `x (n, k)` against the truth, from `SETTLE_S` on, and the goals."""
    settle = int(SETTLE_S * sfreq_hz)
    truth = signal_values(signal, truth_analytic)[settle:]
    ours_analytic = estimator.apply(x)
    ours = signal_values(signal, ours_analytic)[settle:]
    naive = naive_values(signal, x, sfreq_hz)[settle:]
    curves = {"feedback stage": curve(signal.measure, truth, ours, sfreq_hz),
              "naive chain": curve(signal.measure, truth, naive, sfreq_hz)}
    naive_lag, naive_best = curves["naive chain"].best(0.0)
    ours_curve = curves["feedback stage"]
    limit_ms = DELAY_FRACTION * naive_lag
    ours_lag, ours_best_early = ours_curve.best(0.0, limit_ms)
    best_lag, best = ours_curve.best()
    result = {
        "curves": curves,
        "naive": {"best_lag_ms": naive_lag, "best": naive_best, "at_zero": curves["naive chain"].at(0.0)},
        "ours": {"at_zero": ours_curve.at(0.0), "best_lag_ms": best_lag, "best": best,
                 "best_within_quarter": ours_best_early, "its_lag_ms": ours_lag,
                 "published_delay_ms": delay_ms, "at_published_delay": ours_curve.at(delay_ms)},
        "goal_quarter_delay": ours_best_early >= CORRELATION_FRACTION * naive_best,
        "quarter_ms": limit_ms,
    }
    if signal.measure == "phase":
        for name, c in curves.items():
            zero = c.locking[int(np.argmin(np.abs(c.lags_ms)))]
            result["ours" if name == "feedback stage" else "naive"] |= {
                "plv_at_zero": float(abs(zero)), "phase_error_at_zero_deg": float(np.degrees(np.angle(zero)))}
    if signal.measure == "envelope" and signal.sensor_names and len(signal.channels) > 1:
        per_sensor_truth = np.abs(truth_analytic[settle:])
        per_sensor = curve("envelope", per_sensor_truth, np.abs(ours_analytic[settle:]), sfreq_hz, step=3)
        naive_per_sensor = curve("envelope", per_sensor_truth, _naive_per_sensor(signal, x, sfreq_hz)[settle:],
                                 sfreq_hz, step=3)
        result["per_sensor"] = {"ours_at_zero": per_sensor.at(0.0), "ours_best": per_sensor.best(),
                                "naive_at_zero": naive_per_sensor.at(0.0), "naive_best": naive_per_sensor.best()}
    return result


def _naive_per_sensor(signal: FeedbackSignal, x: np.ndarray, sfreq_hz: float) -> np.ndarray:
    sos = scipy.signal.butter(NAIVE_ORDER, signal.band_hz, btype="bandpass", fs=sfreq_hz, output="sos")
    n_mean = int(round(NAIVE_MEAN_S * sfreq_hz))
    return scipy.signal.lfilter(np.ones(n_mean) / n_mean, [1.0], np.abs(scipy.signal.sosfilt(sos, x, axis=0)), axis=0)


def lag_curves(minutes: float, seed: int, skip_real: bool, log) -> list[dict[str, Any]]:
    """Every (recording, model, input, signal): both methods' curves and the goals."""
    from brainformer.data import read_raw
    from brainformer.model_dir import load_fields
    from brainformer.preprocessing import preprocess_recording
    from brainformer.simulation import simulate

    recordings = [] if skip_real else [("real (24 s)", lambda: read_raw(SAMPLE_RECORDING), True)]
    recordings.append((f"simulated ({minutes:g} min)", lambda: simulate("sample", 60.0 * minutes, seed=seed)[0], False))
    results = []
    default_fields = load_fields("default")
    for recording_name, load, held_out in recordings:
        started = time.monotonic()
        raw = load()
        log(f"{recording_name}: ready in {time.monotonic() - started:.0f} s")
        zero_phase = preprocess_recording(raw, default_fields.replace(target_phase="zero_phase"))
        sfreq_hz = zero_phase.sfreq_hz
        groups = choose_groups(default_fields, zero_phase.meg, sfreq_hz)
        n = zero_phase.n_samples
        del zero_phase
        columns = np.unique(np.concatenate(list(groups.values())))
        served_rows = (int(REAL_TEST_FROM * n), n) if held_out else (0, n)
        for model_name in MODELS:
            inputs = model_inputs(raw, model_name, columns, served_rows, log)
            config = inputs["config"]
            plan = plan_feedback(signal_settings(groups, list(config.meg_channel_names)), config, model_name)
            for signal, delay in zip(plan.signals, plan.delays):
                local = np.searchsorted(columns, signal.channels)
                truth_analytic = true_analytic(inputs["truth"][:, local], sfreq_hz, signal.band_hz)
                for input_name in ("perfect", "served"):
                    x = inputs[input_name][:, local]
                    truth_rows = truth_analytic if input_name == "perfect" else truth_analytic[inputs["served_start"]:]
                    started = time.monotonic()
                    scored = score_signal(signal, delay.delay_ms, plan.estimator(signal), x, truth_rows, sfreq_hz)
                    results.append({"recording": recording_name, "model": model_name, "input": input_name,
                                    "signal": signal.name, "sensors": list(signal.sensor_names),
                                    "estimator": plan.estimator(signal).describe(),
                                    "scored_s": (x.shape[0] - SETTLE_S * sfreq_hz) / sfreq_hz, **scored})
                    log(f"  {model_name} {input_name} {signal.name}: {time.monotonic() - started:.0f} s")
            del inputs
        del raw
    return results


# ----------------------------------------------------------------------------------------------
# Cost per hop
# ----------------------------------------------------------------------------------------------
def eight_signals(names: list[str], types: list[str]) -> list[FeedbackSignalSettings]:
    """8 signals of the kinds a closed loop asks for: group envelopes and powers, phases of one
    sensor and of a weighted sum, four bands."""
    occipital = tuple(n for n, t in zip(names, types) if t == "mag" and n.startswith(("MEG 19", "MEG 20", "MEG 21",
                                                                                      "MEG 23", "MEG 25")))
    central = tuple(n for n, t in zip(names, types) if t == "mag" and n.startswith(("MEG 04", "MEG 06", "MEG 07",
                                                                                    "MEG 10", "MEG 11", "MEG 18",
                                                                                    "MEG 22")))
    grads = tuple(n for n, t in zip(names, types) if t == "grad" and n.startswith(("MEG 20", "MEG 21")))
    weights = tuple(np.hanning(len(occipital) + 2)[1:-1])
    return [
        FeedbackSignalSettings("alpha", ALPHA_HZ, "envelope", sensors=occipital),
        FeedbackSignalSettings("alpha_power_grad", ALPHA_HZ, "power", sensors=grads),
        FeedbackSignalSettings("alpha_phase", ALPHA_HZ, "phase", sensors=("MEG 2111",)),
        FeedbackSignalSettings("alpha_weighted", ALPHA_HZ, "envelope", sensors=occipital, weights=weights),
        FeedbackSignalSettings("beta", BETA_HZ, "envelope", sensors=central),
        FeedbackSignalSettings("beta_phase", BETA_HZ, "phase", sensors=central, weights=tuple(1.0 for _ in central)),
        FeedbackSignalSettings("theta", (4.0, 8.0), "envelope", sensors=occipital),
        FeedbackSignalSettings("high_beta_power", (20.0, 30.0), "power", sensors=central),
    ]


def cost_per_hop(log) -> dict[str, Any]:
    from brainformer.model_dir import load_fields
    from brainformer_rt.serving.feedback import FeedbackStage
    from brainformer_rt.serving.publishers.lsl import LSLFeedbackPublisher
    from brainformer_rt.serving.publishers.zmq import FEEDBACK_TOPIC, ZMQFeedbackTopic, ZMQPublisher
    from brainformer_rt.tools._proc import free_tcp_address

    fields = load_fields("default")
    names, types = list(fields.meg_channel_names), list(fields.meg_channel_types)
    plan = plan_feedback(eight_signals(names, types), fields, "default")
    rng = np.random.default_rng(0)
    meg = (rng.standard_normal(((COST_HOPS + COST_WARMUP) * HOP, len(names))) * 1e-12).astype(np.float32)
    timestamps = np.arange(meg.shape[0]) / float(fields.sfreq_hz)

    def timed(stage: FeedbackStage) -> np.ndarray:
        times = np.empty(COST_HOPS)
        for hop in range(COST_HOPS + COST_WARMUP):
            rows = slice(hop * HOP, (hop + 1) * HOP)
            started = time.perf_counter()
            stage.step(meg[rows], timestamps[rows])
            if hop >= COST_WARMUP:
                times[hop - COST_WARMUP] = time.perf_counter() - started
        return 1e3 * times

    bare = timed(FeedbackStage(plan, [], 2 * HOP))
    tracemalloc.start()
    stage = FeedbackStage(plan, [], 2 * HOP)
    for hop in range(COST_WARMUP):
        stage.step(meg[hop * HOP:(hop + 1) * HOP], timestamps[hop * HOP:(hop + 1) * HOP])
    before = tracemalloc.take_snapshot()
    for hop in range(COST_WARMUP, COST_WARMUP + 1000):
        stage.step(meg[hop * HOP:(hop + 1) * HOP], timestamps[hop * HOP:(hop + 1) * HOP])
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    domain = [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]
    allocations = sum(max(stat.count_diff, 0) for stat in after.filter_traces(domain).compare_to(
        before.filter_traces(domain), "lineno"))
    zmq_publisher = ZMQPublisher(free_tcp_address(), b"meg", channel_names=names, channel_types=types,
                                 sfreq_hz=float(fields.sfreq_hz), model_name="default")
    name = f"bench-feedback-{uuid.uuid4().hex[:8]}"
    publishers = [LSLFeedbackPublisher(name, name, plan, float(fields.sfreq_hz) / HOP, "default"),
                  ZMQFeedbackTopic(zmq_publisher, FEEDBACK_TOPIC, plan, float(fields.sfreq_hz) / HOP)]
    try:
        published = timed(FeedbackStage(plan, publishers, 2 * HOP))
    finally:
        for publisher in publishers:
            publisher.close()
        zmq_publisher.close()
    summary = {
        "signals": plan.describe(), "hops": COST_HOPS,
        "step_ms": {"median": float(np.median(bare)), "p99": float(np.percentile(bare, 99))},
        "step_with_lsl_and_zmq_ms": {"median": float(np.median(published)), "p99": float(np.percentile(published, 99))},
        "array_allocations_per_1000_hops": int(allocations),
        "goal_median_ms": 0.1,
    }
    summary["goal_met"] = summary["step_ms"]["median"] <= 0.1
    log(f"cost per hop: {summary['step_ms']}, with publishers {summary['step_with_lsl_and_zmq_ms']}")
    return summary


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------
def end_to_end(seconds: float, log) -> dict[str, Any]:
    """player → serve --feedback → `listen` on the MEG and feedback streams (LSL and ZeroMQ)."""
    from brainformer_rt.tools._proc import ChildProcess, free_tcp_address, rt_cli, stop_all

    run = uuid.uuid4().hex[:8]
    directory = Path(tempfile.mkdtemp(prefix="bench-feedback-"))
    config = directory / "feedback.toml"
    config.write_text(Path(__file__).resolve().parents[1].joinpath("configs", "feedback.toml").read_text())
    serve_toml = directory / "serve.toml"
    serve_toml.write_text("torch_threads = 1\nmax_input_age_s = inf\n")
    eeg, meg, address = f"bench-eeg-{run}", f"bench-meg-{run}", free_tcp_address()
    children = [ChildProcess("player", rt_cli("simulate", "--name", eeg, "--source-id", f"bench-{run}", "--loop"),
                             directory, merge_stderr=True)]
    daemon = ChildProcess("daemon", rt_cli("serve", "--stream", eeg, "--lsl-name", meg, "--zmq", address,
                                           "--feedback", str(config), "--config", str(serve_toml), "--engine", "eager",
                                           "--device", "cpu", "--duration", str(seconds + 120),
                                           "--stats-json", str(directory / "stats.json")), directory, merge_stderr=True)
    children.append(daemon)
    try:
        deadline = time.monotonic() + 300
        while "first prediction" not in daemon.stdout():
            if not daemon.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not serve: {daemon.stdout()[-2000:]}")
            time.sleep(0.5)
        listeners = {
            "MEG (LSL)": ["--lsl", meg], "feedback (LSL)": ["--lsl", f"{meg}-feedback"],
            "MEG (ZeroMQ)": ["--zmq", address, "--topic", "meg"],
            "feedback (ZeroMQ)": ["--zmq", address, "--topic", "feedback"],
        }
        jsons = {name: directory / f"listen-{i}.json" for i, name in enumerate(listeners)}
        listening = [ChildProcess(f"listen-{i}", rt_cli("listen", *args, "--duration", str(seconds), "--json",
                                                        str(jsons[name])), directory, merge_stderr=True)
                     for i, (name, args) in enumerate(listeners.items())]
        children += listening
        for child in listening:
            child.process.wait(seconds + 120)
        out = {}
        for name, path in jsons.items():
            summary = json.loads(path.read_text())
            out[name] = {"messages": summary["messages"], **{k: summary["latency_ms"][k] for k in ("median", "p99")}}
        log(f"end to end: {out}")
        return out
    finally:
        stop_all(children, 10.0)


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def print_tables(console: Console, results: list[dict[str, Any]], cost: dict[str, Any] | None,
                 e2e: dict[str, Any] | None) -> None:
    table = Table(title="feedback signals against the zero-phase truth (envelope: r; phase: locking value)")
    for column in ("recording", "model", "input", "signal", "naive best (lag)", "ours at 0", "ours best ≤ ¼ naive lag",
                   "goal ≥ 0.9×", "published delay", "ours there", "ours best (lag)"):
        table.add_column(column, justify="left" if column in ("recording", "model", "input", "signal") else "right")
    for row in results:
        ours, naive = row["ours"], row["naive"]
        table.add_row(row["recording"], row["model"], row["input"], row["signal"],
                      f"{naive['best']:.3f} ({naive['best_lag_ms']:.0f} ms)", f"{ours['at_zero']:.3f}",
                      f"{ours['best_within_quarter']:.3f} ({ours['its_lag_ms']:.0f} ms)",
                      "met" if row["goal_quarter_delay"] else "NOT met", f"{ours['published_delay_ms']:.0f} ms",
                      f"{ours['at_published_delay']:.3f}", f"{ours['best']:.3f} ({ours['best_lag_ms']:.0f} ms)")
    console.print(table)
    for row in results:
        if "per_sensor" in row and row["input"] == "perfect":
            p = row["per_sensor"]
            console.print(f"{row['recording']} {row['model']} {row['signal']} per sensor (mean r of {GROUP_SIZE}): ours "
                          f"{p['ours_at_zero']:.3f} at 0, best {p['ours_best'][1]:.3f} at {p['ours_best'][0]:.0f} ms; "
                          f"naive {p['naive_at_zero']:.3f} at 0, best {p['naive_best'][1]:.3f} at "
                          f"{p['naive_best'][0]:.0f} ms")
        if "plv_at_zero" in row["ours"]:
            console.print(f"{row['recording']} {row['model']} {row['input']} {row['signal']}: locking value at 0 ours "
                          f"{row['ours']['plv_at_zero']:.3f} (error {row['ours']['phase_error_at_zero_deg']:+.0f}°), "
                          f"naive {row['naive']['plv_at_zero']:.3f} (error {row['naive']['phase_error_at_zero_deg']:+.0f}°)")
    if cost is not None:
        console.print(f"cost per hop, 8 signals: step {cost['step_ms']['median']:.4f} / {cost['step_ms']['p99']:.4f} ms "
                      f"(median / p99; goal ≤ 0.1 ms median: {'met' if cost['goal_met'] else 'NOT met'}), with an LSL "
                      f"outlet and a ZeroMQ topic {cost['step_with_lsl_and_zmq_ms']['median']:.4f} / "
                      f"{cost['step_with_lsl_and_zmq_ms']['p99']:.4f} ms; array allocations in 1000 hops: "
                      f"{cost['array_allocations_per_1000_hops']}")
    if e2e is not None:
        table = Table(title="end to end: EEG instant → subscriber, one run")
        for column in ("stream", "messages", "median ms", "p99 ms"):
            table.add_column(column, justify="left" if column == "stream" else "right")
        for name, row in e2e.items():
            table.add_row(name, str(row["messages"]), f"{row['median']:.2f}" if row["median"] is not None else "–",
                          f"{row['p99']:.2f}" if row["p99"] is not None else "–")
        console.print(table)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys((r["recording"], r["input"]) for r in results))
    signals = list(dict.fromkeys(r["signal"] for r in results))
    fig, axes = plt.subplots(len(rows), len(signals), figsize=(4.6 * len(signals), 2.9 * len(rows)), squeeze=False,
                             sharex=True)
    colours = {"default": "tab:blue", "default-lowdelay": "tab:orange"}
    for r in results:
        ax = axes[rows.index((r["recording"], r["input"])), signals.index(r["signal"])]
        for method, style in (("feedback stage", "-"), ("naive chain", ":")):
            c = r["curves"][method]
            ax.plot(c.lags_ms, c.score, style, color=colours[r["model"]], lw=1.4,
                    label=f"{method}, {r['model']}")
        ax.axvline(r["ours"]["published_delay_ms"], color=colours[r["model"]], lw=0.8, alpha=0.5)
        ax.axvline(r["quarter_ms"], color=colours[r["model"]], lw=0.8, ls="--", alpha=0.5)
    for i, (recording, input_name) in enumerate(rows):
        for j, signal in enumerate(signals):
            ax = axes[i, j]
            ax.axvline(0, color="k", lw=0.6)
            ax.set_title(f"{signal} — {recording}, {'perfect model' if input_name == 'perfect' else 'served model'}",
                         fontsize=9)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("r (phase: locking value)")
            if i == len(rows) - 1:
                ax.set_xlabel("lag of the estimate behind the truth (ms)")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle("feedback signals vs the zero-phase truth; thin lines: published delay (solid), ¼ of the naive "
                 "chain's best lag (dashed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _json_ready(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in results:
        row = dict(row)
        row["curves"] = {name: {"lags_ms": np.round(c.lags_ms[::3], 2).tolist(), "score": np.round(c.score[::3], 4).tolist()}
                         for name, c in row["curves"].items()}
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", type=Path, required=True, help="PNG of the lag curves")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--minutes", type=float, default=16.0, help="length of the simulated recording")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulated recording")
    parser.add_argument("--e2e-seconds", type=float, default=30.0, help="length of the end-to-end run")
    parser.add_argument("--skip-e2e", action="store_true", help="no end-to-end run")
    parser.add_argument("--skip-real", action="store_true", help="the simulated recording only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    console = Console(width=220)
    started = time.monotonic()

    def log(line: str) -> None:
        console.print(f"[{time.monotonic() - started:6.0f} s] {line}", highlight=False)

    cost = cost_per_hop(log)
    results = lag_curves(args.minutes, args.seed, args.skip_real, log)
    e2e = None if args.skip_e2e else end_to_end(args.e2e_seconds, log)
    print_tables(console, results, cost, e2e)
    plot(results, args.plot)
    log(f"plot written to {args.plot}")
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": platform.platform(), "python": sys.version.split()[0],
                                         "minutes": args.minutes, "seed": args.seed, "lag_curves": _json_ready(results),
                                         "cost_per_hop": cost, "end_to_end": e2e}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
