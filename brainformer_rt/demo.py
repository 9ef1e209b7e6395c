"""`demo`: the whole pipe on the bundled recording and the bundled model, scored live.

One command, nothing else running, no network::

    player (subprocess) ──LSL──► serve (subprocess) ──ZeroMQ──► this process
    bundled EEG, real rate        bundled model                 latency, windows, Pearson r
                                                                against the recording's true MEG

- The player (``python -m brainformer_rt.demo``: the ``simulate`` player with a start sample)
  plays the EEG of ``brainformer/recordings/test_raw.fif`` in a loop. It starts ``settle_s``
  before the scored held-out rows (the last 25 % in time, as defined by
  :func:`brainformer.data.split_parts`), so the held-out part is scored within the first
  seconds whatever the duration, and it starts its clock only when the daemon has connected
  (model loaded, stream open): model loading never eats into the scored time. With the 24 s
  recording, the held-out part comes around again every 24 s.
- Every predicted sample carries the LSL timestamp of the EEG sample it was predicted for, and
  the player stamps sample ``k`` with ``t_start + k / sfreq``, so a timestamp maps exactly to a
  sample of the recording. The player reports ``t_start``; the mapping is checked on every EEG
  sample this process also reads from the stream (the values must be equal bit for bit).
- The true MEG is the recording's MEG through the same preprocessing as training
  (:func:`brainformer.preprocessing.preprocess_recording`, scaled with the model's statistics),
  computed once at start. Predictions arrive in physical units (T, T/m) and are scaled with the
  same statistics before comparing, as the evaluation does (flat channels drop out).
- Pearson r per channel is accumulated from running sums, separately for the held-out (test)
  part and for the training part (in-sample), and averaged over magnetometers and gradiometers.
- Latency = ``local_clock()`` when a message is read − timestamp of its newest sample. The
  display is refreshed right after a message arrived (messages come every hop, ~27 ms), so
  drawing it does not delay the next one.

Exit codes: 0 after the duration, and 0 after Ctrl-C/SIGTERM once predictions came in (the
summary and the plot are written from what was received); 130 when stopped before the first
prediction; 1 when the player or the daemon fails (with the tail of its log); 2 for bad
options or an unusable model.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["demo_command", "RunningCorrelation", "PlaybackClock", "DemoReference", "DemoScore", "DemoError"]

DEFAULT_PLOT = "brainformer-demo.png"
#: Display refresh period of the live panel.
REFRESH_S = 0.25
#: Progress line period when the output is not a terminal (logs, CI).
PLAIN_PROGRESS_S = 2.0
#: How long the model may take to load and the stream to be found before the demo gives up.
STARTUP_TIMEOUT_S = 180.0
#: SIGTERM → this long → SIGKILL, for the two subprocesses.
STOP_GRACE_S = 3.0
#: The daemon and the player get this much more than the demo as their own duration: a safety
#: net that ends them even if this process is killed without a chance to stop them.
CHILD_MARGIN_S = 30.0
#: EEG samples per push: one, as an amplifier driver with the lowest latency would send them.
PLAYER_CHUNK_SAMPLES = 1
LOG_TAIL_LINES = 12
#: Seconds of held-out traces in the plot.
PLOT_TRACE_S = 3.0
EXIT_INTERRUPTED = 130


class DemoError(Exception):
    """A failure reported as one line (plus an optional log tail) with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1, log_tail: str = ""):
        super().__init__(message)
        self.exit_code = exit_code
        self.log_tail = log_tail


class _Interrupted(Exception):
    """Ctrl-C/SIGTERM before the first prediction."""


# ==============================================================================================
# Scoring: running Pearson r, timestamp → recording sample, the reference (true MEG)
# ==============================================================================================
class RunningCorrelation:
    """Pearson r per channel from running sums: add ``(n, channels)`` blocks in any order.

    Same conventions as :func:`brainformer.evaluation.pearson_r`: 0 where the prediction is
    constant, NaN where the truth is constant (a flat channel: nothing to predict).
    """

    def __init__(self, n_channels: int):
        self.n = 0
        self._sums = np.zeros((5, n_channels), dtype=np.float64)  # Σt, Σp, Σt², Σp², Σtp

    def add(self, truth: np.ndarray, predicted: np.ndarray) -> None:
        """``truth``, ``predicted``: ``(n, channels)``, same units."""
        if truth.shape[0] == 0:
            return
        t = np.asarray(truth, dtype=np.float64)
        p = np.asarray(predicted, dtype=np.float64)
        self._sums[0] += t.sum(axis=0)
        self._sums[1] += p.sum(axis=0)
        self._sums[2] += np.einsum("nc,nc->c", t, t)
        self._sums[3] += np.einsum("nc,nc->c", p, p)
        self._sums[4] += np.einsum("nc,nc->c", t, p)
        self.n += t.shape[0]

    def r(self) -> np.ndarray:
        """``(channels,)`` Pearson r of everything added so far (NaN with fewer than 2 samples)."""
        if self.n < 2:
            return np.full(self._sums.shape[1], np.nan)
        st, sp, stt, spp, stp = self._sums
        n = float(self.n)
        var_t = stt - st * st / n
        var_p = spp - sp * sp / n
        cov = stp - st * sp / n
        # Cancellation leaves ~1e-16 relative noise in a constant channel's variance.
        flat_t = var_t <= 1e-12 * np.maximum(stt, np.finfo(float).tiny)
        flat_p = var_p <= 1e-12 * np.maximum(spp, np.finfo(float).tiny)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = cov / np.sqrt(var_t * var_p)
        r = np.where(flat_p, 0.0, r)
        return np.where(flat_t, np.nan, r)


def _nanmean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


@dataclass(frozen=True)
class PlaybackClock:
    """How the player maps its samples to the recording.

    Sample ``k`` of the stream (``k = 0`` the first one pushed) is recording sample
    ``(start_sample + k) mod n_samples`` and carries the timestamp ``t_start + k / sfreq_hz``.
    """

    t_start: float
    start_sample: int
    n_samples: int
    sfreq_hz: float

    def stream_samples(self, timestamps: np.ndarray) -> np.ndarray:
        """``(n,)`` timestamps → ``(n,)`` int64 stream sample numbers ``k``."""
        return np.rint((np.asarray(timestamps, dtype=np.float64) - self.t_start) * self.sfreq_hz).astype(np.int64)

    def recording_samples(self, k: np.ndarray) -> np.ndarray:
        return (self.start_sample + k) % self.n_samples


@dataclass
class DemoReference:
    """What the live predictions are compared with, computed once from the recording.

    Attributes:
        meg_true: ``(n_rows, n_meg)`` float32 true MEG at the model rate, preprocessed exactly as
            for training (scaled when the model has statistics).
        eeg_played: ``(n_samples, n_eeg)`` float32 the EEG the player plays (file order).
        recording_sfreq_hz: rate of the recording (and of the stream).
        decimation: recording samples per model sample.
        parts: ``{"train"|"validation"|"test": (start_row, stop_row)}`` from ``split_parts``.
        settle_rows: rows dropped after a (re)start of the filters.
        meg_names, meg_types: the model's MEG channels (``mag``/``grad``), payload order.
        scaling: the model's MEG scaling (``ChannelScaling``) or None (physical units).
    """

    meg_true: np.ndarray
    eeg_played: np.ndarray
    recording_sfreq_hz: float
    decimation: int
    parts: dict
    settle_rows: int
    meg_names: list
    meg_types: list
    scaling: Any = None

    @property
    def n_rows(self) -> int:
        return int(self.meg_true.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.eeg_played.shape[0])

    @property
    def model_sfreq_hz(self) -> float:
        return self.recording_sfreq_hz / self.decimation

    def start_sample(self) -> int:
        """Recording sample the player starts at: ``settle_rows`` before the scored held-out
        rows, so the held-out part comes first and the daemon's filters have settled by then."""
        return max(self.parts["test"][0] - self.settle_rows, 0) * self.decimation

    def rows(self, recording_samples: np.ndarray) -> np.ndarray:
        """Recording samples → rows of ``meg_true`` (nearest model-rate sample)."""
        if self.decimation == 1:
            return recording_samples
        return np.rint(recording_samples / self.decimation).astype(np.int64) % self.n_rows

    def to_scaled(self, physical: np.ndarray) -> np.ndarray:
        """Daemon output ``(n, n_meg)`` T, T/m → the units of ``meg_true``."""
        values = np.asarray(physical, np.float64)
        return values if self.scaling is None else self.scaling.apply(values)

    def to_physical(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, np.float64)
        return values if self.scaling is None else self.scaling.invert(values)


def build_reference(recording: Path, model_config: Any) -> DemoReference:
    """Preprocess ``recording`` with the model's config (the training path). Raises
    ``DemoError`` (exit 2) when the model cannot be scored on this recording."""
    import mne

    from brainformer.data import split_parts
    from brainformer.preprocessing import PreprocessingError, decimation_factor, meg_scaling, preprocess_recording
    from brainformer.settings import DataSettings
    from brainformer_rt.player import RecordingSource

    raw = mne.io.read_raw_fif(recording, allow_maxshield=True, preload=True, verbose="error")
    try:
        decimation = decimation_factor(float(raw.info["sfreq"]), float(model_config.sfreq_hz))
        preprocessed = preprocess_recording(raw, model_config)
        scaling = meg_scaling(model_config)
    except PreprocessingError as error:
        raise DemoError(f"the model cannot be used on {recording.name}: {error}", exit_code=2) from None
    data = DataSettings()
    parts = split_parts(preprocessed.n_samples, preprocessed.sfreq_hz, data)
    if parts["test"][1] - parts["test"][0] < 2:
        raise DemoError(f"{recording.name} is too short for a held-out part", exit_code=2)
    played = RecordingSource.from_file(recording).data  # exactly what the player sends
    return DemoReference(
        meg_true=preprocessed.meg, eeg_played=played, recording_sfreq_hz=float(raw.info["sfreq"]),
        decimation=decimation, parts=parts, settle_rows=int(round(data.settle_s * preprocessed.sfreq_hz)),
        meg_names=list(model_config.meg_channel_names), meg_types=list(model_config.meg_channel_types),
        scaling=scaling,
    )


@dataclass
class CorrelationFigures:
    """Mean r over channels by sensor type, and how many samples they rest on."""

    mag: float
    grad: float
    all: float
    n_samples: int


class DemoScore:
    """Everything measured in the demo process from the ZeroMQ output and the EEG stream.

    State (all of it): the counters below, the latencies of every message, the two running
    correlations, and the first prediction seen for each recording row (for the plot).
    """

    def __init__(self, reference: DemoReference, clock: PlaybackClock, hop_samples: int):
        self.reference = reference
        self.clock = clock
        self.hop_samples = hop_samples
        n_meg = len(reference.meg_names)
        self.held_out = RunningCorrelation(n_meg)
        self.in_sample = RunningCorrelation(n_meg)
        self.latencies_s: list[float] = []
        self.messages = 0
        self.messages_missed = 0  # ZeroMQ seq gaps: served but lost before this process read them
        self.samples_out = 0
        self.windows_skipped_estimate = 0
        self._last_k: Optional[int] = None
        self.newest_k = -1  # newest predicted stream sample
        self.eeg_newest_k = -1  # newest EEG stream sample seen
        self.eeg_checked = 0
        self.eeg_mismatched = 0
        # First prediction of each row, in physical units (bounded: one recording's worth).
        self.first_prediction = np.full((reference.n_rows, n_meg), np.nan, dtype=np.float32)
        self._types = np.asarray(reference.meg_types)

    # -- input ---------------------------------------------------------------------------------
    def add_message(self, data: np.ndarray, timestamps: np.ndarray, latency_s: float) -> None:
        """One ZeroMQ message: ``data (n, n_meg)`` physical units, ``timestamps (n,)``."""
        ref = self.reference
        self.messages += 1
        self.latencies_s.append(latency_s)
        n = timestamps.shape[0]
        self.samples_out += n
        k = self.clock.stream_samples(timestamps)
        # Windows the daemon did not run: a message longer than a hop, or a hole before it.
        hop_raw = self.hop_samples * ref.decimation
        missing = 0 if self._last_k is None else max(int(k[0]) - self._last_k - ref.decimation, 0)
        self.windows_skipped_estimate += max(n // self.hop_samples - 1, 0) + missing // hop_raw
        self._last_k = int(k[-1])
        self.newest_k = max(self.newest_k, int(k[-1]))
        rows = ref.rows(self.clock.recording_samples(k))
        # The daemon's filters start at stream sample 0: its first second is still settling.
        settled = k >= ref.settle_rows * ref.decimation
        predicted = ref.to_scaled(data)
        for correlation, part in ((self.held_out, "test"), (self.in_sample, "train")):
            start, stop = ref.parts[part]
            mask = settled & (rows >= start) & (rows < stop)
            if mask.any():
                correlation.add(ref.meg_true[rows[mask]], predicted[mask])
        new = np.isnan(self.first_prediction[rows, 0])
        if new.any():
            self.first_prediction[rows[new]] = data[new]

    def add_eeg(self, data: np.ndarray, timestamps: np.ndarray) -> None:
        """EEG read from the player's stream: checks the timestamp → recording mapping."""
        if timestamps.shape[0] == 0:
            return
        k = self.clock.stream_samples(timestamps)
        expected = self.reference.eeg_played[self.clock.recording_samples(k)]
        equal = np.all(expected == data, axis=1)
        self.eeg_checked += int(equal.shape[0])
        self.eeg_mismatched += int(equal.shape[0] - equal.sum())
        self.eeg_newest_k = max(self.eeg_newest_k, int(k[-1]))

    # -- figures -------------------------------------------------------------------------------
    @property
    def samples_in(self) -> int:
        """EEG samples the stream has carried so far (the newest one seen, counted from 0)."""
        return max(self.eeg_newest_k, self.newest_k) + 1

    def recording_position_s(self) -> float:
        """Where in the recording the newest prediction is, in seconds."""
        if self.newest_k < 0:
            return math.nan
        return float(self.clock.recording_samples(np.array([self.newest_k]))[0]) / self.reference.recording_sfreq_hz

    def part_now(self) -> str:
        if self.newest_k < 0:
            return "–"
        row = int(self.reference.rows(self.clock.recording_samples(np.array([self.newest_k])))[0])
        for part in ("train", "validation", "test"):
            start, stop = self.reference.parts[part]
            if start <= row < stop:
                return {"test": "held-out part", "train": "training part",
                        "validation": "validation part (not scored)"}[part]
        return "settling (not scored)"

    def figures(self, correlation: RunningCorrelation) -> CorrelationFigures:
        r = correlation.r()
        return CorrelationFigures(
            mag=_nanmean(r[self._types == "mag"]), grad=_nanmean(r[self._types == "grad"]),
            all=_nanmean(r), n_samples=correlation.n,
        )

    def latency_ms(self) -> dict:
        if not self.latencies_s:
            return {"n": 0, "median": math.nan, "p99": math.nan, "max": math.nan}
        values = np.asarray(self.latencies_s) * 1e3
        median, p99 = np.percentile(values, [50, 99])
        return {"n": int(values.size), "median": float(median), "p99": float(p99), "max": float(values.max())}


# ==============================================================================================
# Subprocesses
# ==============================================================================================
class _Child:
    """A subprocess with stdout+stderr in one log file, in its own session (Ctrl-C on the
    terminal reaches only the demo, which stops the children itself)."""

    def __init__(self, label: str, argv: Sequence[str], log_path: Path, done_marker: Optional[Path] = None):
        self.label = label
        self.log_path = log_path
        self.done_marker = done_marker  # a file written when its work is done (exit may lag)
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(list(argv), stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=dict(os.environ), start_new_session=True)

    def exited(self) -> Optional[int]:
        return self.process.poll()

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:  # the child writes to the file itself: nothing is buffered on this side
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def failure(self, when: str) -> DemoError:
        code = self.process.returncode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return DemoError(f"the {self.label} {how} {when}; last lines of its log ({self.log_path.name}):",
                         exit_code=1, log_tail=self.tail())

    def send_stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait_or_kill(self, deadline: float) -> Optional[int]:
        try:
            self.process.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            done = self.done_marker is not None and self.done_marker.exists()
            # After its final statistics only the interpreter's teardown is left to cut short.
            logger.log(logging.DEBUG if done else logging.WARNING, "the %s did not stop within %.0f s; killing it",
                       self.label, STOP_GRACE_S)
            self.process.kill()
            self.process.wait()
        self._log.close()
        return self.process.returncode


def _stop_children(children: Sequence[_Child]) -> None:
    """SIGTERM all at once, wait up to STOP_GRACE_S, then SIGKILL whatever is left."""
    for child in children:
        child.send_stop()
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        child.wait_or_kill(deadline)


class _BackgroundInlet:
    """Finds and opens an LSL inlet on the player's stream in a thread, so that the main loop
    keeps reading ZeroMQ meanwhile (a message left waiting would show a false latency).

    ``inlet`` is None until it is open; ``error`` holds what went wrong, if anything.
    """

    def __init__(self, stream_name: str):
        self.stream_name = stream_name
        self.inlet: Any = None
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._open, name="demo-eeg-inlet", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        from brainformer_rt.inlet import EEGInlet, find_stream

        try:
            inlet = EEGInlet(find_stream(self.stream_name, 10.0, by=("name",)), recover=False)
            inlet.open()
            self.inlet = inlet
        except Exception as error:  # noqa: BLE001 - the demo goes on without the mapping check
            self.error = error

    def close(self) -> None:
        self._thread.join(2.0)
        if self.inlet is not None:
            self.inlet.close()


def _free_tcp_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def _rt_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "brainformer_rt.cli", *args]


def _read_status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_status(path: Path, status: dict) -> None:
    """Atomic: the reader never sees a half-written file."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(status))
    os.replace(partial, path)


# ==============================================================================================
# The player subprocess: `simulate` plus a start offset and a clock that waits for the daemon
# ==============================================================================================
def _player_main(argv: Sequence[str]) -> int:
    """``python -m brainformer_rt.demo --file F --name N --source-id S --start-file A
    --status-file P --duration D --wait W``: play F's EEG in a loop.

    The outlet opens at once (so that the daemon finds the stream while its model loads), but the
    clock starts only when both the daemon has connected and the demo has written
    ``{"start_sample": I}`` to A (it needs the split of the recording, which takes a while to
    compute); playback starts at sample I. ``{"state": "playing", "t_start", "start_sample",
    "n_samples", "sfreq_hz"}`` is written to P after the first push.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="brainformer_rt.demo", description="the demo's player")
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--source-id", required=True)
    parser.add_argument("--start-file", type=Path, required=True)
    parser.add_argument("--status-file", type=Path, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--wait", type=float, default=STARTUP_TIMEOUT_S)
    parser.add_argument("--chunk", type=int, default=PLAYER_CHUNK_SAMPLES)
    args = parser.parse_args(list(argv))

    from brainformer_rt.lsl_config import use_loopback_config

    use_loopback_config()
    from brainformer_rt.player import Player, RecordingSource, setup_cli_logging, stop_on_signals

    setup_cli_logging()
    source = RecordingSource.from_file(args.file, loop=True)
    player = Player(source, name=args.name, chunk_samples=args.chunk, source_id=args.source_id,
                    duration_s=args.duration)
    with stop_on_signals(player.stop):
        player.open()
        try:
            deadline = time.monotonic() + args.wait
            start_sample = None
            # In slices, so that a stop request is seen while waiting.
            while not player.stopped:
                connected = player.wait_for_consumers(0.2)
                if start_sample is None:
                    start_sample = _read_status(args.start_file).get("start_sample")
                if connected and start_sample is not None:
                    break
                if time.monotonic() > deadline:
                    logger.error("stream %r: no consumer or no start sample within %g s", args.name, args.wait)
                    return 1
            if player.stopped:
                return 0
            source.position = int(start_sample) % len(source.data)
            if not player.step():
                return 0
            _write_status(args.status_file, {
                "state": "playing", "t_start": player.t_start, "start_sample": int(start_sample) % len(source.data),
                "n_samples": len(source.data), "sfreq_hz": source.sfreq_hz,
            })
            while player.step():
                pass
        finally:
            player.close()
    summary = player.summary()
    logger.info("played %d samples (%.1f s), %d overruns, lateness max %.3f ms", summary["samples"],
                summary["seconds"], summary["overruns"], summary["lateness_max_ms"])
    return 0


# ==============================================================================================
# Display
# ==============================================================================================
def _fmt(value: float, spec: str = ".3f", none: str = "–") -> str:
    return none if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _r_text(figures: CorrelationFigures) -> str:
    if figures.n_samples < 2:
        return "not reached yet"
    return (f"mags {_fmt(figures.mag, '.2f')} · grads {_fmt(figures.grad, '.2f')} · all {_fmt(figures.all, '.2f')}"
            f"   ({figures.n_samples:,} samples)")


def _live_table(score: DemoScore, elapsed_s: float, duration_s: float, model_label: str):
    from rich.markup import escape
    from rich.table import Table

    latency = score.latency_ms()
    progress = f"{min(elapsed_s, duration_s):4.1f} / {duration_s:g} s"
    table = Table(title=f"brainformer-rt demo · {escape(model_label)} · {progress}",
                  title_justify="left", show_header=False, min_width=72)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("EEG samples in", f"{score.samples_in:,} ({score.reference.recording_sfreq_hz:.1f} Hz)")
    lost = f", {score.messages_missed:,} lost on the way" if score.messages_missed else ""
    # A message lost on the way also leaves a hole in the samples: not a skipped window.
    skipped = max(score.windows_skipped_estimate - score.messages_missed, 0)
    table.add_row("windows served / skipped", f"{score.messages:,} / {skipped:,}"
                  f"   (hop {score.hop_samples} samples{lost})")
    table.add_row("e2e latency median / p99", f"{_fmt(latency['median'])} / {_fmt(latency['p99'])} ms")
    table.add_row("model forward", "reported by the daemon at the end")
    table.add_row("playing", f"{_fmt(score.recording_position_s(), '.1f')} s of "
                  f"{score.reference.n_samples / score.reference.recording_sfreq_hz:.1f} s: {score.part_now()}")
    table.add_row("r held-out (last 25 %)", _r_text(score.figures(score.held_out)))
    table.add_row("r in-sample (training part)", _r_text(score.figures(score.in_sample)))
    return table


def _plain_progress(score: DemoScore, elapsed_s: float) -> str:
    latency = score.latency_ms()
    held = score.figures(score.held_out)
    return (f"{elapsed_s:5.1f} s: {score.samples_in} EEG samples in, {score.messages} windows served, "
            f"e2e latency median {_fmt(latency['median'])} ms / p99 {_fmt(latency['p99'])} ms, "
            f"r held-out {_fmt(held.all, '.2f')} ({held.n_samples} samples)")


def _summary_table(score: DemoScore, stats: dict, live_s: float, model_label: str):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"brainformer-rt demo: summary ({escape(model_label)}, {live_s:.1f} s)", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    totals = stats.get("totals", {})
    info = stats.get("info", {})
    latency = score.latency_ms()
    table.add_row("EEG samples in", f"{int(totals.get('samples_in', score.samples_in)):,}")
    if totals:
        table.add_row("windows served / skipped / stale",
                      f"{int(totals['windows_served']):,} / {int(totals['windows_skipped']):,} / "
                      f"{int(totals['windows_stale']):,}")
    else:
        skipped = max(score.windows_skipped_estimate - score.messages_missed, 0)
        table.add_row("windows served / skipped (seen here)", f"{score.messages:,} / {skipped:,}")
    table.add_row("ZeroMQ messages received / missed", f"{score.messages:,} / {score.messages_missed:,}")
    table.add_row("e2e latency at the subscriber median / p99 / max",
                  f"{_fmt(latency['median'])} / {_fmt(latency['p99'])} / {_fmt(latency['max'])} ms")
    daemon_e2e = stats.get("e2e_latency", {}).get("all", {})
    if daemon_e2e:
        table.add_row("e2e latency in the daemon (published) median / p99",
                      f"{_fmt(daemon_e2e.get('median_ms'))} / {_fmt(daemon_e2e.get('p99_ms'))} ms")
    forward = stats.get("stages", {}).get("forward", {})
    engine = info.get("engine")
    engine_text = ""
    if isinstance(engine, dict) and engine.get("kind"):
        n_threads = engine.get("torch_threads")
        threads = ""
        if engine.get("device") == "cpu" and n_threads:
            threads = f", {n_threads} thread{'s' if n_threads != 1 else ''}"
        engine_text = f" ({engine['kind']} on {engine.get('device', '?')}{threads})"
    table.add_row(f"model forward median / p99{engine_text}",
                  f"{_fmt(forward.get('median_ms'))} / {_fmt(forward.get('p99_ms'))} ms" if forward else "not reported")
    for label, correlation in (("r held-out (last 25 % of the recording)", score.held_out),
                               ("r in-sample (training part)", score.in_sample)):
        figures = score.figures(correlation)
        table.add_row(f"{label}: mags / grads / all",
                      f"{_fmt(figures.mag, '.3f')} / {_fmt(figures.grad, '.3f')} / {_fmt(figures.all, '.3f')}")
        seconds = figures.n_samples / score.reference.model_sfreq_hz
        table.add_row("   samples scored", f"{figures.n_samples:,} ({seconds:.1f} s)")
    check = (f"{score.eeg_checked:,} EEG samples, all exact" if score.eeg_mismatched == 0
             else f"{score.eeg_mismatched:,} of {score.eeg_checked:,} EEG samples differ")
    table.add_row("timestamp → recording mapping checked on", check)
    return table


# ==============================================================================================
# The plot
# ==============================================================================================
def _contiguous_run(rows: np.ndarray, max_len: int) -> Optional[tuple[int, int]]:
    """The longest run of consecutive row numbers in sorted ``rows``, capped at ``max_len``."""
    if rows.size < 2:
        return None
    breaks = np.flatnonzero(np.diff(rows) != 1)
    starts = np.concatenate([[0], breaks + 1])
    stops = np.concatenate([breaks + 1, [rows.size]])
    best = int(np.argmax(stops - starts))
    start = int(rows[starts[best]])
    return start, start + min(int(stops[best] - starts[best]), max_len)


def write_plot(score: DemoScore, path: Path) -> str:
    """Predicted vs true traces (best mag, best grad, median mag, median grad) over a few
    seconds of the held-out part (the training part if the held-out part was not reached) and
    a latency histogram. Returns which part the traces show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = score.reference
    part, correlation = "held-out", score.held_out
    if correlation.n < 2:
        part, correlation = "training (in-sample)", score.in_sample
    start, stop = ref.parts["test" if part == "held-out" else "train"]
    seen = np.flatnonzero(~np.isnan(score.first_prediction[:, 0]))
    seen = seen[(seen >= start) & (seen < stop)]
    run = _contiguous_run(seen, int(PLOT_TRACE_S * ref.model_sfreq_hz))
    r = correlation.r()
    types = np.asarray(ref.meg_types)
    picks: list[tuple[str, int]] = []
    for kind in ("mag", "grad"):
        candidates = np.flatnonzero((types == kind) & np.isfinite(r))
        if candidates.size:
            ordered = candidates[np.argsort(r[candidates])]
            picks.append((f"best {kind}", int(ordered[-1])))
            picks.append((f"median {kind}", int(ordered[len(ordered) // 2])))
    picks.sort(key=lambda item: (not item[0].startswith("best"), item[0]))

    figure = plt.figure(figsize=(13, 9), layout="constrained")
    grid = figure.add_gridspec(3, 2)
    trace_axes = [figure.add_subplot(grid[i // 2, i % 2]) for i in range(4)]
    if run is not None and picks:
        rows = np.arange(run[0], run[1])
        seconds = rows / ref.model_sfreq_hz
        truth = ref.to_physical(ref.meg_true[rows])
        for axis, (label, channel) in zip(trace_axes, picks):
            factor, unit = (1e15, "fT") if types[channel] == "mag" else (1e13, "fT/cm")
            axis.plot(seconds, truth[:, channel] * factor, color="0.2", linewidth=1.0, label="true MEG")
            axis.plot(seconds, score.first_prediction[rows, channel] * factor, color="tab:orange",
                      linewidth=1.0, label="predicted live")
            axis.set_title(f"{label}: {ref.meg_names[channel]} (r = {r[channel]:.2f})", fontsize=10)
            axis.set_xlabel("time in the recording (s)")
            axis.set_ylabel(unit)
            axis.legend(loc="upper right", fontsize=8)
    for axis in trace_axes[len(picks) if run is not None else 0:]:
        axis.axis("off")
    hist = figure.add_subplot(grid[2, :])
    latencies = np.asarray(score.latencies_s) * 1e3
    hidden = 0
    if latencies.size:
        p99 = float(np.percentile(latencies, 99))
        # A few outliers (a stalled machine) would squeeze the histogram into one bar.
        shown = latencies[latencies <= max(p99 * 1.5, latencies.min() + 1e-3)]
        hidden = latencies.size - shown.size
        hist.hist(shown, bins=80, color="tab:blue")
        median = float(np.median(latencies))
        hist.axvline(median, color="k", linestyle="--", label=f"median {median:.2f} ms")
        hist.axvline(p99, color="tab:red", linestyle="--", label=f"p99 {p99:.2f} ms")
        hist.legend()
    note = f" ({hidden} above 1.5 × p99 not shown)" if hidden else ""
    hist.set_xlabel(f"end-to-end latency: EEG sample pushed → prediction received (ms){note}")
    hist.set_ylabel("windows")
    figure.suptitle(f"brainformer-rt demo: MEG predicted live from EEG vs the recording's MEG ({part} part)")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return part


# ==============================================================================================
# demo_command
# ==============================================================================================
class _StopFlag:
    """SIGINT/SIGTERM → a flag the loops check (main thread only). While ``interrupt`` is True
    (start-up: importing, preprocessing, waiting) the handler also raises ``_Interrupted`` so
    that long blocking work ends at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name: Optional[str] = None
        self.interrupt = True
        self._previous: dict = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        already = self.event.is_set()
        self.event.set()
        if self.interrupt and not already:
            raise _Interrupted()

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def is_set(self) -> bool:
        return self.event.is_set()


def demo_command(duration: float = 20.0, plot: Optional[Path] = None, model: str = "default") -> None:
    """CLI `demo`: play the bundled recording, serve ``model`` (default: the bundled one), score
    its predictions live against the recording's MEG, print a summary and write a PNG."""
    import typer
    from rich.console import Console
    from rich.markup import escape

    from brainformer_rt.lsl_config import reexec_in_loopback_namespace

    console = Console(highlight=False)
    err_console = Console(stderr=True, highlight=False)
    if not reexec_in_loopback_namespace():
        err_console.print("[yellow]warning:[/] no private network namespace here (needs root or unprivileged user "
                          "namespaces); LSL stays on the loopback-only configuration", soft_wrap=True)
    _setup_logging(err_console)
    code = 0
    try:
        code = _run_demo(console, err_console, duration, plot, model)
    except DemoError as error:
        err_console.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
        if error.log_tail:
            err_console.print(error.log_tail, markup=False, soft_wrap=True)
        code = error.exit_code
    if code:
        raise typer.Exit(code)


def _setup_logging(err_console: Any) -> None:
    """Warnings and errors of the library on stderr (its INFO lines would clutter the panel)."""
    root = logging.getLogger()
    if root.handlers:
        return
    from rich.logging import RichHandler

    root.addHandler(RichHandler(console=err_console, show_path=False))
    root.setLevel(logging.WARNING)


def _model_label(model: str) -> str:
    return "bundled default model" if model == "default" else f"model {model}"


def _default_model_dir() -> Path:
    """The bundled model directory, found without importing ``brainformer`` (which imports
    torch and transformers: seconds the daemon, starting in parallel, needs more)."""
    spec = importlib.util.find_spec("brainformer")
    if spec is None or not spec.submodule_search_locations:
        raise DemoError("the brainformer package is not installed", exit_code=2)
    return Path(list(spec.submodule_search_locations)[0]) / "default_model"


def _check_options(duration: float, plot: Optional[Path], model: str) -> tuple[Path, Path]:
    """(plot path, model directory): cheap checks before anything starts; DemoError with exit
    code 2. The model's config is validated later (``_load_model_config``)."""
    if not (duration > 0 and math.isfinite(duration)):
        raise DemoError(f"--duration must be a positive number of seconds, got {duration:g}", exit_code=2)
    plot_path = Path(plot if plot is not None else DEFAULT_PLOT).expanduser().resolve()
    if plot_path.suffix.lower() != ".png":
        raise DemoError(f"--plot must name a .png file, got {plot_path}", exit_code=2)
    if not plot_path.parent.is_dir():
        raise DemoError(f"--plot: directory {plot_path.parent} does not exist", exit_code=2)
    model_dir = _default_model_dir() if model == "default" else Path(model).expanduser().resolve()
    hint = " (the bundled default model is not installed; pass --model DIR)" if model == "default" else ""
    if not model_dir.is_dir():
        raise DemoError(f"{model_dir}: model directory does not exist{hint}", exit_code=2)
    for name in ("config.json", "model.safetensors"):
        if not (model_dir / name).is_file():
            raise DemoError(f"{model_dir / name}: missing{hint}", exit_code=2)
    return plot_path, model_dir


def _load_model_config(model_dir: Path) -> Any:
    from brainformer.model_dir import ModelDirError, load_config

    try:
        config = load_config(model_dir)
    except ModelDirError as error:
        raise DemoError(str(error), exit_code=2) from None
    if getattr(config, "head", "regression") != "regression":
        raise DemoError(f"{model_dir}: head {config.head!r}; the demo serves regression-head models", exit_code=2)
    return config


def _torch_threads() -> int:
    """Threads for the daemon's CPU inference: the player and this process need a core too."""
    return max(1, min(4, (os.cpu_count() or 2) - 2))


def _run_demo(console: Any, err_console: Any, duration: float, plot: Optional[Path], model: str) -> int:
    plot_path, model_dir = _check_options(duration, plot, model)
    from brainformer_rt.player import default_recording

    recording = default_recording()
    with tempfile.TemporaryDirectory(prefix="brainformer-demo-") as tmp, _StopFlag() as stop:
        children: list[_Child] = []
        try:
            return _run_with_children(console, err_console, duration, plot_path, model, model_dir, recording,
                                      Path(tmp), children, stop)
        except _Interrupted:
            stop.interrupt = False
            err_console.print(f"stopped by {stop.signal_name or 'a signal'} before the first prediction")
            return EXIT_INTERRUPTED
        finally:
            stop.interrupt = False  # stopping the children must not be cut short
            _stop_children(children)


def _run_with_children(console: Any, err_console: Any, duration: float, plot_path: Path, model: str,
                       model_dir: Path, recording: Path, tmp_dir: Path, children: list, stop: _StopFlag) -> int:
    import pylsl
    from rich.markup import escape

    from brainformer_rt.inlet import StreamLostError
    from brainformer_rt.listener import ZMQSubscriber

    tag = uuid.uuid4().hex[:8]
    stream_name = f"demo-eeg-{tag}"
    zmq_address = _free_tcp_address()
    stats_path = tmp_dir / "serve-stats.json"
    status_path = tmp_dir / "player-status.json"
    start_path = tmp_dir / "player-start.json"
    serve_config = tmp_dir / "serve.toml"
    serve_config.write_text(f"torch_threads = {_torch_threads()}\n")
    child_duration = f"{duration + CHILD_MARGIN_S:g}"
    model_label = _model_label(model)

    # Both start at once: the daemon is the slowest (torch, the model, the engine's warm-up), and
    # finds the player's stream while it loads. The player's clock waits for the daemon.
    children.append(_Child("daemon (serve)", _rt_cli(
        "serve", "--stream", stream_name, "--model", "default" if model == "default" else str(model_dir),
        "--zmq", zmq_address,
        "--lsl-name", f"demo-meg-{tag}", "--config", str(serve_config), "--duration", child_duration,
        "--wait", f"{STARTUP_TIMEOUT_S:g}", "--stats-json", str(stats_path)), tmp_dir / "serve.log",
        done_marker=stats_path))
    children.append(_Child("player", [
        sys.executable, "-m", "brainformer_rt.demo", "--file", str(recording), "--name", stream_name,
        "--source-id", f"brainformer-demo-{uuid.uuid4()}", "--start-file", str(start_path),
        "--status-file", str(status_path), "--duration", child_duration, "--wait", f"{STARTUP_TIMEOUT_S:g}"],
        tmp_dir / "player.log"))
    console.print(f"demo: {recording.name} (loop) → LSL [bold]{stream_name}[/] → brainformer-rt serve "
                  f"({escape(model_label)}) → ZeroMQ {zmq_address} + LSL [bold]demo-meg-{tag}[/]", soft_wrap=True)
    subscriber = ZMQSubscriber(zmq_address)
    subscriber.open()  # connects once the daemon binds; nothing is sent before
    inlet: Optional[_BackgroundInlet] = None
    try:
        with console.status("") as status:

            def say(text: str) -> None:
                status.update(text)
                if not console.is_terminal:  # no spinner in a log: one line per step instead
                    console.print(text, soft_wrap=True)

            say(f"starting: loading {escape(model_label)} · computing the recording's true MEG …")
            config = _load_model_config(model_dir)
            reference = build_reference(recording, config)
            _write_status(start_path, {"start_sample": reference.start_sample()})
            say(f"starting: loading {escape(model_label)} and connecting it to the EEG stream …")
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            playing: dict = {}
            while not playing:
                _check_startup(children, stop, deadline)
                time.sleep(0.05)
                playing = _read_status(status_path)
            clock = PlaybackClock(t_start=float(playing["t_start"]), start_sample=int(playing["start_sample"]),
                                  n_samples=int(playing["n_samples"]), sfreq_hz=float(playing["sfreq_hz"]))
            if clock.n_samples != reference.n_samples:
                raise DemoError(f"the player plays {clock.n_samples} samples but {recording.name} has "
                                f"{reference.n_samples}", exit_code=1)
            score = DemoScore(reference, clock, int(config.hop_samples))
            say("starting: waiting for the first prediction …")
            inlet = _BackgroundInlet(stream_name)
            first: list = []
            while not first:
                _check_startup(children, stop, deadline)
                first = subscriber.receive_all(0.05)
        stop.interrupt = False  # from here on a signal ends the live phase and the report follows
        live_started = pylsl.local_clock()
        for item in first:
            score.add_message(item.data, item.timestamps, item.latency_s)
        interrupted, early_exit = _live(console, score, subscriber, inlet, children, stop, duration, live_started,
                                        model_label)
        live_s = pylsl.local_clock() - live_started
    except StreamLostError:
        # The player just died: give the process a moment to be reaped, then report it.
        for _ in range(20):
            failure = _first_failure(children, "while the demo was running")
            if failure is not None:
                raise failure from None
            time.sleep(0.05)
        raise DemoError(f"the EEG stream {stream_name} was lost") from None
    finally:
        if inlet is not None:
            inlet.close()
        subscriber.close()
    # Stop both (the daemon writes its statistics on SIGTERM), then report.
    _stop_children(children)
    stats = _read_status(stats_path)
    if interrupted:
        console.print(f"stopped by {stop.signal_name} after {live_s:.1f} s")
    if early_exit is not None:
        err_console.print(f"[yellow]warning:[/] the {early_exit.label} stopped before the end", soft_wrap=True)
    console.print(_summary_table(score, stats, live_s, model_label))
    part = write_plot(score, plot_path)
    console.print(f"plot ({part} traces + latency histogram): {escape(str(plot_path))}", soft_wrap=True)
    if inlet.error is not None:
        err_console.print(f"[yellow]warning:[/] could not read the EEG stream here ({escape(str(inlet.error))}); the "
                          "timestamp mapping was not checked", soft_wrap=True)
    if score.eeg_mismatched:
        err_console.print(f"[yellow]warning:[/] {score.eeg_mismatched} EEG samples did not match the recording at "
                          "their timestamps: the scores may be misaligned", soft_wrap=True)
    return 0


def _first_failure(children: Sequence[_Child], when: str) -> Optional[DemoError]:
    for child in children:
        if child.exited() is not None:
            return child.failure(when)
    return None


def _check_startup(children: Sequence[_Child], stop: _StopFlag, deadline: float) -> None:
    if stop.is_set():
        raise _Interrupted()
    failure = _first_failure(children, "during start-up")
    if failure is not None:
        raise failure
    if time.monotonic() > deadline:
        tails = "\n".join(f"--- {c.label} ---\n{c.tail()}" for c in children)
        raise DemoError(f"no prediction within {STARTUP_TIMEOUT_S:g} s of starting; last lines of the logs:",
                        exit_code=1, log_tail=tails)


def _live(console: Any, score: DemoScore, subscriber: Any, inlet: _BackgroundInlet, children: Sequence[_Child],
          stop: _StopFlag, duration: float, live_started: float, model_label: str) -> tuple[bool, Optional[_Child]]:
    """The live phase; returns (stopped by a signal, child that ended by itself with code 0)."""
    import pylsl
    from rich.live import Live

    end = live_started + duration
    live = Live(console=console, auto_refresh=False, transient=True) if console.is_terminal else None
    next_refresh = 0.0
    next_plain = live_started + PLAIN_PROGRESS_S
    last_message = live_started
    early_exit: Optional[_Child] = None
    if live is not None:
        live.start()
    try:
        while not stop.is_set():
            received = subscriber.receive_all(min(0.05, max(end - pylsl.local_clock(), 0.0)))
            for item in received:
                score.add_message(item.data, item.timestamps, item.latency_s)
            score.messages_missed = subscriber.messages_missed
            if inlet.inlet is not None:
                data, timestamps = inlet.inlet.pull(0.0)
                score.add_eeg(data, timestamps)
            now = pylsl.local_clock()
            if received:
                last_message = now
            for child in children:
                code = child.exited()
                if code is not None:
                    if code != 0:
                        raise child.failure("while the demo was running")
                    early_exit = child
            if early_exit is not None or now >= end:
                break
            # Draw right after a message (the next one is a hop away), or when none comes.
            if live is not None and now >= next_refresh and (received or now - last_message > 0.1):
                live.update(_live_table(score, now - live_started, duration, model_label), refresh=True)
                next_refresh = now + REFRESH_S
            if live is None and now >= next_plain:
                console.print(_plain_progress(score, now - live_started), soft_wrap=True)
                next_plain += PLAIN_PROGRESS_S
    finally:
        if live is not None:
            live.stop()
    return stop.is_set(), early_exit


if __name__ == "__main__":
    sys.exit(_player_main(sys.argv[1:]))
