"""The demo's run: two children (player, daemon), their start-up, the live phase, the result.

No display here: whatever shows progress implements :class:`DemoView` (the command layer's
rich panel); the run hands it plain text and the live :class:`DemoScore`.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Protocol

from brainformer.errors import EXIT_FAILURE, EXIT_USAGE
from brainformer.paths import BUNDLED_MODELS, SAMPLE_RECORDING
from brainformer_rt.serving.signals import Interrupted, StopRequest
from brainformer_rt.tools._proc import ChildProcess, free_tcp_address, rt_cli, stop_all
from brainformer_rt.tools.demo.files import read_json, write_json
from brainformer_rt.tools.demo.scoring import DemoScore, PlaybackClock, build_reference

__all__ = ["DEFAULT_PLOT", "DemoError", "DemoOptions", "DemoPlan", "DemoResult", "DemoView", "check_options",
           "run_demo"]

DEFAULT_PLOT = "brainformer-demo.png"
#: How long the model may take to load and the stream to be found before the demo gives up.
STARTUP_TIMEOUT_S = 180.0
#: SIGTERM → this long → SIGKILL, for the two subprocesses.
STOP_GRACE_S = 3.0
#: The daemon and the player get this much more than the demo as their own duration: a safety
#: net that ends them even if this process is killed without a chance to stop them.
CHILD_MARGIN_S = 30.0
#: What the messages call each child.
_LABELS = {"serve": "daemon (serve)", "player": "player"}


class DemoError(Exception):
    """A failure reported as one line (plus an optional log tail) with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE, log_tail: str = ""):
        super().__init__(message)
        self.exit_code = exit_code
        self.log_tail = log_tail


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float
    plot_path: Path
    model: str  # ``default`` or a directory, as given
    model_dir: Path

    @property
    def model_label(self) -> str:
        return f"bundled model {self.model!r}" if self.model in BUNDLED_MODELS else f"model {self.model}"


@dataclass(frozen=True)
class DemoPlan:
    """What runs where: shown once when the children start."""

    recording: Path
    stream_name: str  # the player's EEG
    meg_stream_name: str  # the daemon's LSL output
    zmq_address: str
    model_label: str


@dataclass
class DemoResult:
    """What the live phase measured, for the summary and the plot.

    ``stopped_by``: the signal that ended it early (None after the full duration);
    ``ended_early``: the child that exited by itself with code 0 before the end;
    ``eeg_check_error``: why the EEG stream could not be read here (no mapping check), if so.
    """

    score: DemoScore
    daemon_stats: dict
    live_s: float
    stopped_by: Optional[str]
    ended_early: Optional[str]
    eeg_check_error: Optional[BaseException]


class DemoView(Protocol):
    """What shows the run's progress."""

    def announce(self, plan: DemoPlan) -> None:
        """The children have started."""

    def starting(self, step: str) -> None:
        """A start-up step begins (plain text)."""

    def update(self, score: DemoScore, elapsed_s: float, received: bool) -> None:
        """Called at every turn of the live loop; ``received``: a message came in this turn."""

    def close(self) -> None:
        """The run is over (also after a failure): take down whatever is on screen."""


def check_options(duration: float, plot: Optional[Path], model: str) -> DemoOptions:
    """Cheap checks before anything starts; DemoError with exit code 2. The model's config is
    read later (``_model_config``)."""
    if not (duration > 0 and math.isfinite(duration)):
        raise DemoError(f"--duration must be a positive number of seconds, got {duration:g}", EXIT_USAGE)
    plot_path = Path(plot if plot is not None else DEFAULT_PLOT).expanduser().resolve()
    if plot_path.suffix.lower() != ".png":
        raise DemoError(f"--plot must name a .png file, got {plot_path}", EXIT_USAGE)
    if not plot_path.parent.is_dir():
        raise DemoError(f"--plot: directory {plot_path.parent} does not exist", EXIT_USAGE)
    bundled = model in BUNDLED_MODELS
    model_dir = BUNDLED_MODELS[model] if bundled else Path(model).expanduser().resolve()
    hint = f" (the bundled model {model!r} is not installed; pass --model DIR)" if bundled else ""
    if not model_dir.is_dir():
        raise DemoError(f"{model_dir}: model directory does not exist{hint}", EXIT_USAGE)
    for name in ("config.json", "model.safetensors"):
        if not (model_dir / name).is_file():
            raise DemoError(f"{model_dir / name}: missing{hint}", EXIT_USAGE)
    return DemoOptions(duration_s=float(duration), plot_path=plot_path, model=model, model_dir=model_dir)


def run_demo(options: DemoOptions, view: DemoView, stop: StopRequest) -> DemoResult:
    """Start the player and the daemon, score the predictions for ``options.duration_s`` (or
    until ``stop``), stop both. DemoError on a failure; `Interrupted` from ``stop`` before the
    first prediction."""
    with tempfile.TemporaryDirectory(prefix="brainformer-demo-") as tmp:
        run = _DemoRun(options, SAMPLE_RECORDING, Path(tmp), view, stop)
        try:
            return run.execute()
        finally:
            stop.interrupt = False  # stopping the children must not be cut short
            view.close()
            stop_all(run.children, STOP_GRACE_S)


def _model_config(model_dir: Path) -> Any:
    """The model's fields (channels, rate, filters, scaling), without importing the model package
    (the daemon, starting at the same time, needs the cores for that)."""
    from brainformer.model_dir import ModelDirError, load_fields

    try:
        config = load_fields(model_dir)
    except ModelDirError as error:
        raise DemoError(str(error), EXIT_USAGE) from None
    if config.head != "regression":
        raise DemoError(f"{model_dir}: head {config.head!r}; the demo serves regression-head models", EXIT_USAGE)
    return config


def _torch_threads() -> int:
    """Threads for the daemon's CPU inference: the player and this process need a core too."""
    return max(1, min(4, (os.cpu_count() or 2) - 2))


class _DemoRun:
    """One run. State: the options, the files the processes exchange in ``tmp_dir``, the plan,
    the children, the EEG inlet, the view and the stop request."""

    def __init__(self, options: DemoOptions, recording: Path, tmp_dir: Path, view: DemoView, stop: StopRequest):
        self.options = options
        self.view = view
        self.stop = stop
        self.stats_path = tmp_dir / "serve-stats.json"
        self.status_path = tmp_dir / "player-status.json"
        self.start_path = tmp_dir / "player-start.json"
        self.tmp_dir = tmp_dir
        tag = uuid.uuid4().hex[:8]
        self.plan = DemoPlan(recording=recording, stream_name=f"demo-eeg-{tag}", meg_stream_name=f"demo-meg-{tag}",
                             zmq_address=free_tcp_address(), model_label=options.model_label)
        self.children: List[ChildProcess] = []
        self.inlet: Optional[_BackgroundInlet] = None  # the player's EEG, read here for the mapping check
        self.deadline = 0.0  # of the start-up, time.monotonic()

    # -- the whole run -------------------------------------------------------------------------
    def execute(self) -> DemoResult:
        from brainformer_rt.serving.inlet import StreamLostError
        from brainformer_rt.tools.listener import ZMQSubscriber

        self._start_children()
        subscriber = ZMQSubscriber(self.plan.zmq_address)
        subscriber.open()  # connects once the daemon binds; nothing is sent before
        try:
            score, first = self._start_up(subscriber)
            stopped, ended_early, live_s = self._live(score, first, subscriber)
        except StreamLostError:
            raise self._lost_stream() from None
        finally:
            self.view.close()
            if self.inlet is not None:
                self.inlet.close()
            subscriber.close()
        # Stop both (the daemon writes its statistics on SIGTERM), then report.
        stop_all(self.children, STOP_GRACE_S)
        return DemoResult(score=score, daemon_stats=read_json(self.stats_path), live_s=live_s,
                          stopped_by=self.stop.signal_name if stopped else None, ended_early=ended_early,
                          eeg_check_error=self.inlet.error)

    def _start_children(self) -> None:
        """Both start at once: the daemon is the slowest (torch, the model, the engine's
        warm-up), and finds the player's stream while it loads. The player's clock waits for it."""
        plan = self.plan
        serve_config = self.tmp_dir / "serve.toml"
        serve_config.write_text(f"torch_threads = {_torch_threads()}\n")
        child_duration = f"{self.options.duration_s + CHILD_MARGIN_S:g}"
        model = self.options.model if self.options.model in BUNDLED_MODELS else str(self.options.model_dir)
        serve = rt_cli("serve", "--stream", plan.stream_name, "--model", model, "--zmq", plan.zmq_address,
                       "--lsl-name", plan.meg_stream_name, "--config", str(serve_config),
                       "--duration", child_duration, "--wait", f"{STARTUP_TIMEOUT_S:g}",
                       "--stats-json", str(self.stats_path))
        player = [sys.executable, "-m", "brainformer_rt.tools.demo.player", "--file", str(plan.recording),
                  "--name", plan.stream_name, "--source-id", f"brainformer-demo-{uuid.uuid4()}",
                  "--start-file", str(self.start_path), "--status-file", str(self.status_path),
                  "--duration", child_duration, "--wait", f"{STARTUP_TIMEOUT_S:g}"]
        # Own sessions: Ctrl-C on the terminal reaches only this process, which stops them.
        for name, argv, marker in (("serve", serve, self.stats_path), ("player", player, None)):
            self.children.append(ChildProcess(name, argv, self.tmp_dir, merge_stderr=True, new_session=True,
                                              done_marker=marker))
        self.view.announce(plan)

    # -- start-up ------------------------------------------------------------------------------
    def _start_up(self, subscriber: Any) -> tuple[DemoScore, list]:
        """The reference, the player's clock, the first prediction: (score, first messages)."""
        label = self.options.model_label
        self.view.starting(f"starting: loading {label} · computing the recording's true MEG …")
        config = _model_config(self.options.model_dir)
        try:
            reference = build_reference(self.plan.recording, config)
        except ValueError as error:
            raise DemoError(str(error), EXIT_USAGE) from None
        write_json(self.start_path, {"start_sample": reference.start_sample()})
        self.view.starting(f"starting: loading {label} and connecting it to the EEG stream …")
        self.deadline = time.monotonic() + STARTUP_TIMEOUT_S
        playing: dict = {}
        while not playing:
            self._check_startup()
            time.sleep(0.05)
            playing = read_json(self.status_path)
        clock = PlaybackClock(t_start=float(playing["t_start"]), start_sample=int(playing["start_sample"]),
                              n_samples=int(playing["n_samples"]), sfreq_hz=float(playing["sfreq_hz"]))
        if clock.n_samples != reference.n_samples:
            raise DemoError(f"the player plays {clock.n_samples} samples but {self.plan.recording.name} has "
                            f"{reference.n_samples}")
        score = DemoScore(reference, clock, int(config.hop_samples))
        self.view.starting("starting: waiting for the first prediction …")
        self.inlet = _BackgroundInlet(self.plan.stream_name)
        first: list = []
        while not first:
            self._check_startup()
            first = subscriber.receive_all(0.05)
        return score, first

    def _check_startup(self) -> None:
        if self.stop.is_set():
            raise Interrupted(self.stop.signal_name)
        failure = self._first_failure("during start-up")
        if failure is not None:
            raise failure
        if time.monotonic() > self.deadline:
            tails = "\n".join(f"--- {_LABELS[c.name]} ---\n{c.tail()}" for c in self.children)
            raise DemoError(f"no prediction within {STARTUP_TIMEOUT_S:g} s of starting; last lines of the logs:",
                            log_tail=tails)

    # -- failures ------------------------------------------------------------------------------
    def _failure(self, child: ChildProcess, when: str) -> DemoError:
        return DemoError(f"the {_LABELS[child.name]} {child.describe_exit()} {when}; last lines of its log "
                         f"({child.stdout_path.name}):", log_tail=child.tail())

    def _first_failure(self, when: str) -> Optional[DemoError]:
        for child in self.children:
            if child.returncode is not None:
                return self._failure(child, when)
        return None

    def _lost_stream(self) -> DemoError:
        """The player just died: give the process a moment to be reaped, then report it."""
        for _ in range(20):
            failure = self._first_failure("while the demo was running")
            if failure is not None:
                return failure
            time.sleep(0.05)
        return DemoError(f"the EEG stream {self.plan.stream_name} was lost")

    # -- the live phase ------------------------------------------------------------------------
    def _live(self, score: DemoScore, first: list, subscriber: Any) -> tuple[bool, Optional[str], float]:
        """Score until the duration is over, a signal or a child ends it: (stopped by a signal,
        label of a child that ended by itself with code 0, seconds live)."""
        import pylsl

        self.stop.interrupt = False  # from here on a signal ends the live phase and the report follows
        started = pylsl.local_clock()
        end = started + self.options.duration_s
        for item in first:
            score.add_message(item.data, item.timestamps, item.latency_s)
        ended_early: Optional[str] = None
        while not self.stop.is_set():
            received = subscriber.receive_all(min(0.05, max(end - pylsl.local_clock(), 0.0)))
            for item in received:
                score.add_message(item.data, item.timestamps, item.latency_s)
            score.messages_missed = subscriber.messages_missed
            if self.inlet.inlet is not None:
                score.add_eeg(*self.inlet.inlet.pull(0.0))
            now = pylsl.local_clock()
            ended_early = self._ended_early()
            if ended_early is not None or now >= end:
                break
            self.view.update(score, now - started, bool(received))
        return self.stop.is_set(), ended_early, pylsl.local_clock() - started

    def _ended_early(self) -> Optional[str]:
        """Label of a child that exited with code 0; DemoError for one that failed."""
        ended = None
        for child in self.children:
            code = child.returncode
            if code is not None:
                if code != 0:
                    raise self._failure(child, "while the demo was running")
                ended = _LABELS[child.name]
        return ended


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
        from brainformer_rt.serving.inlet import EEGInlet, find_stream

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
