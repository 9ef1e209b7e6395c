"""Start-up wiring of ``brainformer-rt serve``: settings → (streams resolved ∥ model and engine)
→ streams opened and checked → outputs → the loops → statistics.

Everything opened is registered in one :class:`_Resources` as it is made, so a failure or a
signal at any moment closes it all. No presentation here: lines for people go through the
``announce`` callback, the outcome (exit code, error line, metrics) goes back to the command.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from brainformer.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from brainformer.settings import ServeSettings, build_serve_settings
from brainformer_rt.serving.logs import DAEMON_LOGGER_NAME, configure_logging, log_event, remove_log_handler
from brainformer_rt.serving.metrics import ServeMetrics, json_ready
from brainformer_rt.serving.pipeline import StreamPipeline
from brainformer_rt.serving.scheduler import Scheduler
from brainformer_rt.serving.signals import Interrupted, StopRequest

logger = logging.getLogger(DAEMON_LOGGER_NAME)

__all__ = ["ServeOutcome", "UsageError", "ServeFailure", "load_serve_settings", "serve", "run_serve"]

#: While waiting for a stream, a reminder is logged this often.
WAIT_REMINDER_INTERVAL_S = 10.0

Announce = Callable[[str], None]


class UsageError(Exception):
    """Reported as one line with exit code 2."""


class ServeFailure(Exception):
    """Reported as one line with exit code 1."""


@dataclass
class ServeOutcome:
    """How a serve run ended: ``code`` (``brainformer.errors``), ``error`` (one line, without the
    ``error:`` prefix; None on success), the ``metrics`` and the stop signal's name if any."""

    code: int
    error: Optional[str]
    metrics: ServeMetrics
    signal_name: Optional[str] = None


class _Resources:
    """What has been opened so far, so that a failure or a signal at any point closes it."""

    def __init__(self) -> None:
        self.engine: Any = None
        self.inlets: Dict[str, Any] = {}
        self.publishers: List[Any] = []  # not yet owned by a pipeline
        self.zmq_publisher: Any = None  # one PUB socket for every stream (one topic each)
        self.resolvers: List[Any] = []
        self.pipelines: List[StreamPipeline] = []
        self.exporter: Any = None  # the Prometheus metrics server

    def close(self) -> None:
        """Close everything (each step on its own: one failure must not keep the rest open)."""
        closed: List[str] = []
        steps = [("resolvers", lambda: [r.close() for r in self.resolvers])]
        steps += [(f"stream {p.key!r}", p.close) for p in self.pipelines]
        owned = {id(p.inlet) for p in self.pipelines}
        steps += [(f"inlet {k!r}", inlet.close) for k, inlet in self.inlets.items() if id(inlet) not in owned]
        steps += [(type(p).__name__, p.close) for p in self.publishers]
        if self.zmq_publisher is not None:
            steps.append((f"ZeroMQ {self.zmq_publisher.address}", self.zmq_publisher.close))
        if self.engine is not None:
            steps.append(("engine", self.engine.close))
        if self.exporter is not None:
            steps.append((f"metrics server {self.exporter.address}", self.exporter.close))
        for what, close in steps:
            try:
                close()
                closed.append(what)
            except Exception:  # noqa: BLE001 - the others must still be closed
                logger.exception("closing %s failed", what, extra={"event": "close_failed"})
        if len(closed) > 1:
            log_event(logger, logging.INFO, "closed", "closed: %s", ", ".join(closed[1:]), closed=closed[1:])


def load_serve_settings(config_file: Optional[Path] = None, **options: Any) -> ServeSettings:
    """Settings from the TOML file and the ``serve`` options, with logging configured from them.
    Raises ``SettingsError``."""
    settings = build_serve_settings(config_file, **options)
    configure_logging(settings.log_format, settings.log_level)
    return settings


def serve(settings: ServeSettings, stop: StopRequest, announce: Announce) -> ServeOutcome:
    """:func:`run_serve`, then the process is made ready to exit quickly."""
    try:
        return run_serve(settings, stop, announce)  # restores the signal handlers
    finally:
        remove_log_handler()
        # Everything is closed; the process exits next. Python's final garbage collections walk
        # every object torch and transformers created; frozen objects are skipped, so a stop
        # request ends the process at once.
        gc.freeze()


def run_serve(settings: ServeSettings, stop: Optional[StopRequest] = None,
              announce: Optional[Announce] = None) -> ServeOutcome:
    """Run the daemon with validated ``settings`` until stopped; never raises."""
    stop = stop if stop is not None else StopRequest()
    stop.install()
    announce = announce if announce is not None else (lambda line: None)
    metrics = ServeMetrics(settings.streams)
    resources = _Resources()
    code, error_line = EXIT_OK, None
    try:
        _serve(settings, metrics, stop, announce, resources)
    except UsageError as error:
        code, error_line = EXIT_USAGE, str(error)
    except ServeFailure as error:
        code, error_line = EXIT_FAILURE, str(error)
    except Exception as error:  # noqa: BLE001 - one line for the user, the traceback in the log
        logger.debug("serve failed", exc_info=True)
        code, error_line = EXIT_FAILURE, f"{type(error).__name__}: {error}"
    finally:
        resources.close()
        stop.restore()
    if code != EXIT_OK and settings.log_format == "json":  # lab pipelines read the log; people the line
        log_event(logger, logging.ERROR, "error", "%s", error_line, exit_code=code)
    if code == EXIT_OK and settings.stats_json:
        _write_stats(settings, metrics)
    return ServeOutcome(code, error_line, metrics, stop.signal_name)


def _serve(settings: ServeSettings, metrics: ServeMetrics, stop: StopRequest, announce: Announce,
           resources: _Resources) -> None:
    """Prepare, then run the loops; a stop signal at any point ends it without an error."""
    try:
        try:
            _prepare(settings, metrics, announce, resources, stop)
        except Exception as error:
            if not stop.is_set():
                raise
            # The signal's Interrupted was raised inside code that re-wrapped it: a C extension's
            # module initialisation turns it into ImportError("initialization failed"). The stop
            # it stood for is what happened, not an error.
            logger.debug("start-up ended by %s: %r", stop.signal_name, error)
            raise Interrupted(stop.signal_name) from error
        stop.interrupt = False
        if stop.is_set():
            raise Interrupted(stop.signal_name or "stop")
        engine, pipelines = resources.engine, resources.pipelines
        meg_mean, meg_std = _unscaling(engine.model.config)
        scheduler = Scheduler(pipelines, engine, meg_mean, meg_std, settings, metrics, stop)
        # Everything made so far (torch, transformers, the model, the engine) lives until the
        # exit: frozen, the collector never walks those objects again, so no full collection
        # lands inside a window's latency.
        gc.collect()
        gc.freeze()
        names = ", ".join(repr(p.key) for p in pipelines)
        hop = pipelines[0].windower.hop_samples
        announce(f"serving {names} with engine {engine.kind} on {engine.device} (hop {hop} samples); "
                 "stop with Ctrl-C")
        log_event(logger, logging.INFO, "serving", "serving %s", names, streams=list(settings.streams),
                  engine=engine.kind, device=str(engine.device), hop_samples=hop)
        try:
            scheduler.run()
        finally:
            _record_feedback_counts(metrics, pipelines)
    except Interrupted:
        pass
    finally:
        stop.interrupt = False
        if stop.signal_name:
            log_event(logger, logging.INFO, "stopping", "stopping on %s", stop.signal_name, signal=stop.signal_name)


def _record_feedback_counts(metrics: ServeMetrics, pipelines: List[StreamPipeline]) -> None:
    """Each feedback stage's counters, for the stats JSON: samples published, resets, holes bridged."""
    counts = {p.key: {"published": p.feedback.published, "resets": p.feedback.resets,
                      "holes_bridged": p.feedback.holes_bridged, "samples_bridged": p.feedback.samples_bridged}
              for p in pipelines if p.feedback is not None}
    if counts:
        metrics.info["feedback_counts"] = counts


def _unscaling(config: Any) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """The model's MEG un-scaling statistics ``(mean, std)`` as float64, or ``(None, None)``."""
    if getattr(config, "meg_std", None) is None:
        return None, None
    return np.asarray(config.meg_mean, dtype=np.float64), np.asarray(config.meg_std, dtype=np.float64)


def _write_stats(settings: ServeSettings, metrics: ServeMetrics) -> None:
    stats = metrics.to_dict()
    stats["settings"] = json_ready(dataclasses.asdict(settings))
    Path(settings.stats_json).write_text(json.dumps(stats, indent=2))


# ----------------------------------------------------------------------------------------------
# Preparation: everything before the loops, in the order it happens
# ----------------------------------------------------------------------------------------------
def _prepare(settings: ServeSettings, metrics: ServeMetrics, announce: Announce, resources: _Resources,
             stop: StopRequest) -> None:
    """Streams resolved (in the background) ∥ model and engine; then the streams are opened,
    validated, and the outputs made — all into ``resources``.
    Raises UsageError / ServeFailure / Interrupted."""
    _check_early(settings, metrics, resources)
    feedback_plan = _plan_feedback(settings, metrics, announce)
    # Resolving runs in background threads while the model loads and warms up. The inlets are
    # opened only afterwards, so that no backlog piles up in them meanwhile.
    resolvers, resolve_started = _start_resolvers(settings, announce, resources)
    options = _adaptation_options(settings)
    config, window, hop = _load_engine(settings, resources, stop)
    if settings.feedback and feedback_plan is None:
        feedback_plan = _plan_feedback(settings, metrics, announce, config)
    delay = _signal_delay(config, hop, announce)
    linear_path = _linear_path(settings, config, announce)
    infos = _wait_for_streams(settings, resolvers, resolve_started)
    stages = _open_streams(settings, config, infos, resources, options, linear_path)
    for key in settings.streams:
        _log_plan(key, stages[key], announce)
    _record_info(settings, metrics, resources, config, stages, window, hop, delay)
    outputs = _output_names(settings)
    engine = resources.engine
    for key in settings.streams:
        publishers = _make_publishers(settings, config, key, outputs[key], resources, delay, stages[key].quality)
        resources.pipelines.append(StreamPipeline(key, resources.inlets[key], stages[key], window, hop,
                                                  settings.gap_threshold_s, metrics.streams[key], publishers,
                                                  engine.n_output_channels, gauges=metrics.gauges[key],
                                                  silence_s=settings.silence_s, max_publish=engine.output_samples,
                                                  metrics=metrics))
        resources.publishers = []  # owned by the pipeline now
        if feedback_plan is not None:
            pipeline = resources.pipelines[-1]
            pipeline.feedback = _make_feedback(settings, config, key, outputs[key], resources, feedback_plan, hop,
                                               engine.output_samples, pipeline.continuity)


def _check_early(settings: ServeSettings, metrics: ServeMetrics, resources: _Resources) -> None:
    """What can fail without a model or a stream fails now, not after the wait for the streams:
    the CURVE keys, the metrics port."""
    if settings.zmq and settings.zmq_curve_keys is not None:
        from brainformer_rt.serving.publishers.zmq import load_curve_keys

        try:
            load_curve_keys(settings.zmq_curve_keys)
        except ValueError as error:
            raise UsageError(str(error)) from None
    if settings.metrics_port is not None:
        from brainformer_rt.serving.prometheus import ExporterError, start_exporter

        try:
            resources.exporter = start_exporter(metrics, settings.metrics_host, settings.metrics_port)
        except ExporterError as error:
            raise UsageError(str(error)) from None


def _plan_feedback(settings: ServeSettings, metrics: ServeMetrics, announce: Announce, config: Any = None) -> Any:
    """The feedback signals planned against the model's channels and band, or None without
    signals. Called before the model loads (``config`` None: the model's fields, read without
    torch), so that a signal the model cannot serve fails at once (UsageError naming its key);
    a model whose fields cannot be read is left to the model loader, which says why, and
    planned again with its config (``config``)."""
    if not settings.feedback:
        return None
    from brainformer.feedback import FeedbackError, plan_feedback
    from brainformer.model_dir import load_fields
    from brainformer_rt.serving.metrics import TimingRing

    fields = config
    if fields is None:
        try:
            fields = load_fields(settings.model)
        except (ValueError, OSError):
            return None
    try:
        plan = plan_feedback(settings.feedback, fields, str(settings.model))
    except FeedbackError as error:
        raise UsageError(str(error)) from None
    for line in plan.describe():
        announce(f"feedback signal {line}")
    log_event(logger, logging.INFO, "feedback_plan", "feedback: %s", " | ".join(plan.describe()),
              signals=[s.name for s in plan.signals], delays_ms=[round(d.delay_ms, 1) for d in plan.delays])
    metrics.stages.setdefault("feedback", TimingRing())
    metrics.info["feedback"] = {s.name: {"measure": s.measure, "band_hz": list(s.band_hz), "unit": s.unit,
                                         "sensors": list(s.sensor_names), "delay_ms": round(d.delay_ms, 1)}
                                for s, d in zip(plan.signals, plan.delays)}
    return plan


def _make_feedback(settings: ServeSettings, config: Any, key: str, output: Tuple[str, bytes], resources: _Resources,
                   plan: Any, hop: int, max_samples: int, continuity: Any) -> Any:
    """The feedback stage of one stream with its LSL outlet ``<MEG outlet>-feedback`` and ZeroMQ
    topic ``feedback`` (several streams: ``feedback/<stream>``)."""
    from brainformer_rt.serving.feedback import FeedbackStage

    lsl_name, _ = output
    rate_hz = float(config.sfreq_hz) / hop  # one sample per served window
    made: List[Any] = []
    try:
        if settings.lsl_name:
            from brainformer_rt.serving.publishers.lsl import LSLFeedbackPublisher

            name = f"{lsl_name}-feedback"
            made.append(LSLFeedbackPublisher(name, f"brainformer:{name}@{socket.gethostname()}", plan, rate_hz,
                                             str(settings.model), meg_stream=lsl_name))
            resources.publishers.append(made[-1])
        if settings.zmq:
            from brainformer_rt.serving.publishers.zmq import FEEDBACK_TOPIC, ZMQFeedbackTopic

            topic = FEEDBACK_TOPIC if len(settings.streams) == 1 else FEEDBACK_TOPIC + b"/" + key.encode()
            made.append(ZMQFeedbackTopic(resources.zmq_publisher, topic, plan, rate_hz, stream_name=key))
    except ValueError as error:
        raise UsageError(str(error)) from None
    stage = FeedbackStage(plan, made, max_samples, continuity=continuity)
    resources.publishers = []  # owned by the stage now
    return stage


def _wait_limit(settings: ServeSettings) -> Optional[float]:
    return None if math.isinf(settings.wait_s) else settings.wait_s


def _start_resolvers(settings: ServeSettings, announce: Announce, resources: _Resources) -> Tuple[Dict[str, Any], float]:
    """One background resolver per stream (by name, then type); ``(resolvers, started)``."""
    from brainformer_rt.serving.inlet import StreamResolver

    wait_s = _wait_limit(settings)
    limit = "" if wait_s is None else f" (up to {wait_s:g} s)"
    for key in settings.streams:
        announce(f"waiting for LSL stream {key!r} (by name, then type){limit} …")
        log_event(logger, logging.INFO, "waiting", "waiting for LSL stream %r (by name, then type)%s", key, limit,
                  stream=key, wait_s=settings.wait_s)
    resolvers = {}
    for key in settings.streams:
        try:
            resolvers[key] = StreamResolver(key)
        except ValueError as error:  # a name liblsl cannot look up
            raise UsageError(str(error)) from None
        resources.resolvers.append(resolvers[key])
    return resolvers, time.monotonic()


def _load_engine(settings: ServeSettings, resources: _Resources, stop: StopRequest) -> Tuple[Any, int, int]:
    """Model loaded, engine made and warmed up (into ``resources``); ``(config, window, hop)``."""
    with stop.deferred():  # a stop signal never lands inside a C extension's initialisation
        import torch  # the slow imports come after the resolvers were started

        from brainformer_rt.serving.engine import EngineError
        from brainformer_rt.serving.engine_switch import model_label, serving_engine, serving_output_samples

        if settings.torch_threads is not None:
            torch.set_num_threads(settings.torch_threads)
        log_event(logger, logging.INFO, "model_loading", "loading model %s", settings.model, model=str(settings.model))
        model, config = _load(settings)
    hop = settings.hop_samples if settings.hop_samples is not None else int(config.hop_samples)
    window = int(config.window_samples)
    if not 1 <= hop <= window:
        raise UsageError(f"hop_samples = {hop} is invalid: expected 1..{window} (the model's window_samples)")
    batch_size = settings.batch_size or len(settings.streams)
    try:
        resources.engine = engine = serving_engine(model, settings.engine, settings.device, batch_size, window,
                                                   output_samples=serving_output_samples(model, window, hop),
                                                   model_label=model_label(settings.model))
    except EngineError as error:
        raise UsageError(str(error)) from None
    log_event(logger, logging.INFO, "engine_warmup", "preparing the %s engine on %s (warm-up)", engine.kind,
              engine.device, engine=engine.kind, device=str(engine.device), batch_size=batch_size)
    started = time.monotonic()
    engine.setup()
    log_event(logger, logging.INFO, "engine_ready", "engine ready after %.2f s", time.monotonic() - started,
              engine=engine.kind, setup_s=time.monotonic() - started)
    return config, window, hop


def _signal_delay(config: Any, hop: int, announce: Announce) -> Optional[Dict[str, Any]]:
    """The delay the model's filters put on the brain signal, published with every output;
    announced and logged once (None, with a warning, for filters that cannot be designed)."""
    from brainformer_rt.serving.delay import delay_budget, describe_delay, published_delay

    try:
        delay = published_delay(config)
    except ValueError as error:  # PreprocessingError too
        log_event(logger, logging.WARNING, "signal_delay_unknown", "the filters' delay could not be designed: %s",
                  error, error=str(error))
        return None
    budget = delay_budget(delay, hop, float(config.sfreq_hz), None)
    announce(describe_delay(delay, hop, float(config.sfreq_hz)))
    log_event(logger, logging.INFO, "signal_delay", "%s; mean hop wait %.1f ms", delay["summary"],
              budget.hop_wait_ms, target_phase=delay["target_phase"], band_hz=delay["band_hz"],
              filter_group_delay_ms=budget.filter_ms, band_centre_hz=budget.frequency_hz,
              hop_wait_ms=budget.hop_wait_ms,
              group_delay_ms={point["label"]: point["group_delay_ms"] for point in delay["points"]},
              phase_delay_ms={point["label"]: point["phase_delay_ms"] for point in delay["points"]})
    return delay


def _wait_for_streams(settings: ServeSettings, resolvers: Dict[str, Any], started: float) -> Dict[str, Any]:
    """``{stream: pylsl.StreamInfo}`` once every resolver found its stream (logged as found, with
    a reminder every ``WAIT_REMINDER_INTERVAL_S``); ServeFailure after ``wait_s``."""
    from brainformer_rt.serving.inlet import StreamNotFoundError, wait_for_streams

    def found(key: str, info: Any) -> None:
        log_event(logger, logging.INFO, "stream_found", "found LSL stream %r (source_id %r)", key,
                  info.source_id(), stream=key, source_id=info.source_id(), lsl_name=info.name())

    def waiting(missing: List[str], waited_s: float) -> None:
        for key in missing:
            log_event(logger, logging.INFO, "waiting", "still waiting for LSL stream %r (%.0f s)", key, waited_s,
                      stream=key, waited_s=waited_s)

    wait_s = _wait_limit(settings)
    try:
        infos = wait_for_streams(resolvers, wait_s, on_found=found, on_waiting=waiting,
                                 reminder_interval_s=WAIT_REMINDER_INTERVAL_S, started_s=started)
    except StreamNotFoundError as error:
        log_event(logger, logging.ERROR, "wait_timeout", "no LSL stream %r after %g s", error.key, wait_s,
                  stream=error.key, wait_s=wait_s)
        raise ServeFailure(str(error)) from None
    for resolver in resolvers.values():
        resolver.close()
    return infos


def _adaptation_options(settings: ServeSettings) -> Any:
    """The ``AdaptationOptions`` of the settings (a montage is loaded, so an unknown one is
    refused now, before any stream); UsageError naming the key otherwise."""
    from brainformer.adaptation import AdaptationError
    from brainformer.linear_path import STATISTICS_FILENAME
    from brainformer.model_dir import resolve_model_dir
    from brainformer_rt.serving.adapt import adaptation_options

    try:
        has_statistics = (resolve_model_dir(settings.model) / STATISTICS_FILENAME).is_file()
    except (ValueError, OSError):  # the model directory's own error comes with the model
        has_statistics = False
    try:
        return adaptation_options(channel_map=settings.channel_map, montage=settings.montage,
                                  input_unit=settings.input_unit,
                                  max_missing_fraction=settings.max_missing_fraction, has_statistics=has_statistics)
    except AdaptationError as error:
        raise UsageError(str(error)) from None


def _linear_path(settings: ServeSettings, config: Any, announce: Announce) -> Tuple[Any, Any]:
    """``(statistics, full-cap solution)`` of the model's linear path, or ``(None, None)`` for a
    model without them (logged: its linear path stays as trained, no expected quality)."""
    from brainformer.model_dir import resolve_model_dir
    from brainformer_rt.serving.adapt import linear_path_of

    try:
        statistics, full = linear_path_of(resolve_model_dir(settings.model), config)
    except ValueError as error:  # StatisticsError: a file there but unusable
        raise UsageError(str(error)) from None
    if statistics is None:
        line = (f"model {settings.model!r} has no linear path statistics: its linear path is not re-solved for a "
                "stream's own electrodes and no expected quality is given (add them with `brainformer statistics`)")
        announce(line)
        log_event(logger, logging.INFO, "linear_path_statistics_missing", "%s", line, model=str(settings.model))
    return statistics, full


def _log_plan(key: str, stages: Any, announce: Announce) -> None:
    """The adaptation plan of one stream, once: for people (several lines) and the log (one event
    naming every ignored channel and every interpolated electrode); its warnings one by one; the
    expected quality of its cap (a warning when the cap is far from complete)."""
    from brainformer.adaptation.resolve import INCOMPLETE_SHARE
    from brainformer_rt.serving.adapt import plan_fields

    plan = stages.plan
    text = plan.describe()
    announce(text)
    log_event(logger, logging.INFO, "adaptation_plan", "stream %r: adaptation plan: %s", key,
              " | ".join(line.strip() for line in text.splitlines()), stream=key, **plan_fields(plan))
    for warning in plan.warnings:
        log_event(logger, logging.WARNING, "adaptation_warning", "stream %r: %s", key, warning, stream=key,
                  warning=warning)
    quality = stages.quality
    if quality is not None:
        line = quality.describe()
        announce(f"  {line}")
        level = logging.WARNING if quality.share < INCOMPLETE_SHARE else logging.INFO
        log_event(logger, level, "expected_quality", "stream %r: %s", key, line, stream=key, **quality.to_dict())


def _open_streams(settings: ServeSettings, config: Any, infos: Dict[str, Any], resources: _Resources,
                  options: Any = None, linear_path: Tuple[Any, Any] = (None, None)) -> Dict[str, Any]:
    """Inlets opened (in parallel, into ``resources``) and planned against the model (the
    adaptation plan from each inlet's full meta-data, the linear path re-solved for its
    electrodes); ``{stream: StreamStages}``."""
    from brainformer_rt.serving.adapt import IncompatibleStreamError, stream_source
    from brainformer_rt.serving.inlet import EEGInlet
    from brainformer_rt.serving.pipeline import open_stages

    def open_inlet(key: str) -> Any:
        inlet = EEGInlet(infos[key], max_chunk_samples=settings.max_chunk_samples, recover=True,
                         gap_threshold_s=settings.gap_threshold_s)
        inlet.open()
        return inlet

    opened = _Background({key: (lambda key=key: open_inlet(key)) for key in settings.streams}).results()
    resources.inlets.update({k: v for k, v in opened.items() if not isinstance(v, BaseException)})
    for key in settings.streams:
        _raise_connect_error(key, opened[key])
    stages = {}
    for key in settings.streams:
        try:
            inlet = resources.inlets[key]
            stages[key] = open_stages(config, inlet.description, settings.max_chunk_samples,
                                      source=stream_source(inlet), options=options, statistics=linear_path[0],
                                      full=linear_path[1], min_expected_share=settings.min_expected_share)
        except (IncompatibleStreamError, ValueError) as error:  # AdaptationError is a ValueError
            raise UsageError(str(error)) from None
    return stages


def _record_info(settings: ServeSettings, metrics: ServeMetrics, resources: _Resources, config: Any,
                 stages: Dict[str, Any], window: int, hop: int, delay: Optional[Dict[str, Any]]) -> None:
    """What is served, for the stats JSON and the Prometheus info metric (and its delay gauges)."""
    inlets = resources.inlets
    metrics.info.update({
        "model": str(settings.model), "engine": resources.engine.describe(), "hop_samples": hop,
        "warmup_s": settings.warmup_s, "busy_poll": settings.busy_poll,
        "window_samples": window, "model_sfreq_hz": float(config.sfreq_hz),
        "streams": {k: {"name": inlets[k].description.name, "source_id": inlets[k].description.source_id,
                        "sfreq_hz": inlets[k].description.sfreq_hz, "decimation": stages[k].decimation,
                        "adaptation": _plan_info(stages[k])}
                    for k in settings.streams},
        "hostname": socket.gethostname(),
        "delay": delay,
    })
    metrics.describe_engine = resources.engine.describe


def _plan_info(stages: Any) -> Dict[str, Any]:
    from brainformer_rt.serving.adapt import plan_fields

    info = plan_fields(stages.plan)
    info["expected_quality"] = None if stages.quality is None else stages.quality.to_dict()
    return info


def _output_names(settings: ServeSettings) -> Dict[str, Tuple[str, bytes]]:
    """stream → (LSL output name, ZeroMQ topic)."""
    if len(settings.streams) == 1:
        return {settings.streams[0]: (settings.lsl_name, b"meg")}
    return {s: (f"{settings.lsl_name}-{s}", f"meg/{s}".encode()) for s in settings.streams}


def _load(settings: ServeSettings):
    """Model + its config; errors become one-line usage errors."""
    from brainformer.model_dir import load_model

    try:
        model = load_model(settings.model, device="cpu")
    except ValueError as error:  # ModelDirError and config validation
        raise UsageError(str(error)) from None
    except FileNotFoundError as error:
        raise UsageError(f"model {settings.model!r}: {error}") from None
    config = model.config
    if getattr(config, "head", "regression") != "regression":
        raise UsageError(f"model {settings.model!r} has head {config.head!r}; serve needs a regression-head model")
    return model, config


class _Background:
    """Runs one blocking call per key in daemon threads (liblsl calls block in C, where a signal
    cannot interrupt them); :meth:`results` waits in short slices so that SIGINT/SIGTERM is
    answered at once (the signal handler raises ``Interrupted`` in the main thread)."""

    def __init__(self, calls: Dict[str, Any]) -> None:
        self._results: Dict[str, Any] = {}
        self._threads = []
        for key, call in calls.items():
            thread = threading.Thread(target=self._run, args=(key, call), name=f"connect-{key}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, key: str, call: Any) -> None:
        try:
            self._results[key] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            self._results[key] = error

    def results(self) -> Dict[str, Any]:
        """``{key: result or the exception raised}``."""
        for thread in self._threads:
            while thread.is_alive():
                thread.join(0.05)
        return dict(self._results)


def _raise_connect_error(key: str, outcome: Any) -> None:
    from brainformer_rt.serving.inlet import StreamNotFoundError

    if isinstance(outcome, StreamNotFoundError):
        raise ServeFailure(str(outcome))
    if isinstance(outcome, ValueError):  # e.g. UnsupportedStreamError: a non-float format
        raise UsageError(str(outcome))
    if isinstance(outcome, BaseException):
        raise ServeFailure(f"stream {key!r}: {type(outcome).__name__}: {outcome}")
    if outcome is None:
        raise ServeFailure(f"stream {key!r}: could not be opened")


def _make_publishers(settings: ServeSettings, config: Any, key: str, output: Tuple[str, bytes],
                     resources: _Resources, delay: Optional[Dict[str, Any]], quality: Any = None) -> List[Any]:
    """The LSL outlet and ZeroMQ topic of one stream (registered in ``resources`` as made), each
    carrying the ``delay`` in its meta-data; the outlet's meta-data also carry the expected quality
    of the stream's cap (``quality``, or none)."""
    lsl_name, topic = output
    names = list(config.meg_channel_names)
    types = list(config.meg_channel_types)
    model_name = str(settings.model)
    made: List[Any] = []
    try:
        if settings.lsl_name:
            from brainformer_rt.serving.publishers.lsl import LSLPublisher

            made.append(LSLPublisher(lsl_name, f"brainformer:{lsl_name}@{socket.gethostname()}", names, types,
                                     float(config.sfreq_hz), model_name, delay=delay,
                                     expected_quality=None if quality is None else quality.to_dict()))
            resources.publishers.append(made[-1])
        if settings.zmq:
            from brainformer_rt.serving.publishers.zmq import ZMQPublisher

            if resources.zmq_publisher is None:  # one socket; with several streams one topic each
                resources.zmq_publisher = ZMQPublisher(
                    settings.zmq, topic, channel_names=names, channel_types=types, sfreq_hz=float(config.sfreq_hz),
                    model_name=model_name, stream_name=key, curve_keys_dir=settings.zmq_curve_keys, delay=delay)
                log_event(logger, logging.INFO, "zmq_bound", "ZeroMQ publisher on %s%s",
                          resources.zmq_publisher.address, " (CURVE)" if resources.zmq_publisher.curve else "",
                          address=resources.zmq_publisher.address, curve=resources.zmq_publisher.curve)
            made.append(resources.zmq_publisher if len(settings.streams) == 1
                        else resources.zmq_publisher.add_topic(topic, key))
    except ValueError as error:
        raise UsageError(str(error)) from None
    return made
