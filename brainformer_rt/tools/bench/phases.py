"""One phase of a bench run: a started system under test, its subscribers, the measurement."""

from __future__ import annotations

import signal
import time
from typing import Any, Callable, Dict, Optional, Sequence

from brainformer_rt.tools._proc import ChildProcess, stop_all
from brainformer_rt.tools.bench.delay import DelayProbe
from brainformer_rt.tools.bench.processes import Phase, check_alive
from brainformer_rt.tools.bench.receivers import ReceiverThreads, ResourceSampler
from brainformer_rt.tools.bench.settings import STARTUP_TIMEOUT_S, BenchFailure, BenchSettings, ModelFacts
from brainformer_rt.tools.bench.summary import summarise_phase

__all__ = ["run_phase"]

#: Seconds between two looks at the clock and the children while waiting.
POLL_S = 0.05
#: How long a stopped system may take to exit before it is killed.
STOP_TIMEOUT_S = 20.0


def run_phase(phase: Phase, settings: BenchSettings, facts: ModelFacts, players: Sequence[ChildProcess],
              progress: Callable[[str], None], probe: Optional[DelayProbe] = None) -> Dict[str, Any]:
    """Measure one started system: wait for its first output, skip the warm-up, record
    ``duration_s`` seconds, stop it (SIGTERM) and summarise; with a ``probe``, also the effective
    delay of its prediction (the payload of the probe's stream is kept meanwhile)."""
    import pylsl

    watched = [*phase.children, *players]
    receivers = ReceiverThreads()
    payload = None if probe is None else receivers.keep_payload("lsl", probe.stream)
    sampler = None
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        _open_subscribers(phase, receivers, deadline)
        first_s = _wait_for_first(phase, receivers, watched, deadline)
        start_s = first_s + settings.warmup_s
        end_s = start_s + settings.duration_s
        progress(f"  {phase.system}: first prediction received; warm-up {settings.warmup_s:g} s, "
                 f"then measuring {settings.duration_s:g} s")
        _wait_until(pylsl.local_clock, start_s, watched)
        sampler = ResourceSampler([c.pid for c in phase.children])
        sampler.start()
        _wait_until(pylsl.local_clock, end_s, watched)
        resources = sampler.stop()
        sampler = None
    finally:
        if sampler is not None:
            sampler.stop()
        # Subscribers first: an inlet whose outlet vanishes makes liblsl log reconnection attempts.
        receivers.close()
        stop_all(phase.children, STOP_TIMEOUT_S)
    if receivers.errors:
        raise BenchFailure(f"{phase.system}: subscriber failed: {receivers.errors[0]}")
    _check_stopped_cleanly(phase.children)
    result = summarise_phase(phase, settings, facts, receivers, start_s, end_s, resources)
    if probe is not None:
        progress(f"  {phase.system}: measuring the effective delay of its prediction against the zero-phase truth …")
        result["effective_delay"] = probe.measure(payload, start_s, end_s)
    return result


def _open_subscribers(phase: Phase, receivers: ReceiverThreads, deadline: float) -> None:
    """The ZeroMQ subscribers, then one LSL subscriber per output as each appears; fail early when
    a process dies."""
    from brainformer_rt.serving.inlet import StreamNotFoundError
    from brainformer_rt.tools.listener import LSLSubscriber, ZMQSubscriber

    streams = list(phase.lsl_outputs)
    for address in phase.zmq_addresses:
        zmq_subscriber = ZMQSubscriber(address, b"meg")
        zmq_subscriber.open()
        receivers.add_zmq(streams, zmq_subscriber)
    for stream, name in phase.lsl_outputs.items():
        while True:
            check_alive(phase.children)
            subscriber = LSLSubscriber(name, wait_s=1.0)
            try:
                subscriber.open()
                break
            except StreamNotFoundError:
                if time.monotonic() > deadline:
                    raise BenchFailure(f"{phase.system}: output stream {name!r} did not appear within "
                                       f"{STARTUP_TIMEOUT_S:g} s") from None
        receivers.add_lsl(stream, subscriber)


def _wait_for_first(phase: Phase, receivers: ReceiverThreads, watched: Sequence[ChildProcess],
                    deadline: float) -> float:
    """``local_clock()`` when the first prediction of any output arrived."""
    while receivers.first_received() is None:
        check_alive(watched)
        if time.monotonic() > deadline:
            raise BenchFailure(f"{phase.system}: no prediction arrived within {STARTUP_TIMEOUT_S:g} s")
        time.sleep(POLL_S)
    return receivers.first_received()


def _wait_until(clock: Callable[[], float], until_s: float, watched: Sequence[ChildProcess]) -> None:
    while clock() < until_s:
        check_alive(watched)
        time.sleep(POLL_S)


def _check_stopped_cleanly(children: Sequence[ChildProcess]) -> None:
    """A system must end with 0 or by the SIGTERM that stopped it."""
    for child in children:
        if child.returncode not in (0, -signal.SIGTERM):
            raise BenchFailure(f"{child.name} exited with code {child.returncode}: {child.last_error_line()}")
