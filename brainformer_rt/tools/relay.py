"""The transport floor: a relay that receives EEG and sends MEG-shaped zeros, with no model.

``bench --floor`` measures it next to the daemon. Whatever latency the relay shows, any server
that reads EEG from LSL and publishes MEG on LSL / ZeroMQ on this machine pays too: the player's
lateness, liblsl's hop in (its send thread, the socket, the inlet's receive thread, the wake-up
of the puller), and the hop out to the subscriber. The daemon's latency minus the relay's is what
preprocessing, the forward and the daemon's own bookkeeping cost.

It uses the daemon's transport code and nothing else:

- the daemon's inlet (:class:`~brainformer_rt.serving.inlet.EEGInlet`: one blocking pull per hop into a
  preallocated buffer),
- the daemon's publishers (:class:`~brainformer_rt.serving.publishers.lsl.LSLPublisher`,
  :class:`~brainformer_rt.serving.publishers.zmq.ZMQPublisher`) with the model's MEG channels, publishing
  every ``hop`` input samples a ``(hop, n_meg)`` block of zeros stamped with the timestamps of
  those samples — the messages the daemon would send, less the prediction. The output has the
  input's rate (a stream faster than the model is not decimated: there is nothing to compute).

Run it as ``python -m brainformer_rt.tools.relay --stream NAME --model DIR --lsl-name OUT [--zmq ADDR]``
inside the loopback namespace; ``--stats-json`` writes its counters on exit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from brainformer.model_dir import load_fields
from brainformer_rt.tools._proc import peer_main

#: Config fields the relay reads (no torch: it runs no model).
#: Most samples one pull takes (the inlet's buffer).
MAX_CHUNK_SAMPLES = 4096
#: Longest wait of one pull, so that a stop request is seen.
PULL_TIMEOUT_S = 0.1


def run_relay(stream: str, meg_channel_names: list[str], meg_channel_types: list[str], hop_samples: int,
              lsl_name: str | None, zmq_address: str | None, duration_s: float | None = None,
              wait_s: float = 60.0, stop=None) -> dict:
    """Relay ``stream`` until ``duration_s`` or ``stop()``; returns the counters.

    Every ``hop_samples`` input samples, ``(hop_samples, n_meg)`` zeros go to the LSL outlet
    ``lsl_name`` and the ZeroMQ publisher at ``zmq_address`` (either may be None), stamped with the
    input timestamps of those samples, at the input's rate.
    """
    from brainformer_rt.serving.inlet import EEGInlet, find_stream
    from brainformer_rt.serving.publishers.lsl import LSLPublisher
    from brainformer_rt.serving.publishers.zmq import ZMQPublisher

    inlet = EEGInlet(find_stream(stream, wait_s, by=("name",)), max_chunk_samples=MAX_CHUNK_SAMPLES)
    sfreq_hz = inlet.open().sfreq_hz
    publishers = []
    if lsl_name:
        publishers.append(LSLPublisher(lsl_name, f"brainformer-relay:{lsl_name}", meg_channel_names,
                                       meg_channel_types, sfreq_hz, "relay (no model)"))
    if zmq_address:
        publishers.append(ZMQPublisher(zmq_address, channel_names=meg_channel_names, channel_types=meg_channel_types,
                                       sfreq_hz=sfreq_hz, model_name="relay (no model)", stream_name=stream))
    zeros = np.zeros((hop_samples, len(meg_channel_names)), dtype=np.float32)
    # Timestamps of the samples received since the last publish.
    pending = np.empty(hop_samples, dtype=np.float64)
    n_pending = 0
    stats = {"stream": stream, "hop_samples": hop_samples, "samples_in": 0, "windows_served": 0,
             "windows_skipped": 0}
    started = time.monotonic()
    try:
        while not (stop is not None and stop()) and (duration_s is None or time.monotonic() - started < duration_s):
            _, timestamps = inlet.pull(PULL_TIMEOUT_S, hop_samples - n_pending)
            n = len(timestamps)
            if n == 0:
                continue
            stats["samples_in"] += n
            if n_pending + n < hop_samples:
                pending[n_pending:n_pending + n] = timestamps
                n_pending += n
                continue
            # The hop is complete: the newest hop_samples timestamps go out with the zeros (older
            # ones, when a pull brought more than a hop, are dropped like the daemon's stale windows).
            total = n_pending + n
            if n >= hop_samples:
                pending[:] = timestamps[n - hop_samples:]
            else:
                keep = hop_samples - n
                pending[:keep] = pending[n_pending - keep:n_pending]
                pending[keep:] = timestamps
            for publisher in publishers:
                publisher.publish(zeros, pending)
            stats["windows_served"] += 1
            stats["windows_skipped"] += total // hop_samples - 1
            n_pending = 0
    finally:
        for publisher in publishers:
            publisher.close()
        inlet.close()
    stats["duration_s"] = time.monotonic() - started
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brainformer_rt.tools.relay", description=__doc__.split("\n")[0])
    parser.add_argument("--stream", required=True, help="exact LSL name of the EEG stream")
    parser.add_argument("--model", default="default", help="model directory or `default` (its MEG channels and rate)")
    parser.add_argument("--lsl-name", default=None, help="name of the output LSL stream")
    parser.add_argument("--zmq", default=None, help="ZeroMQ address to publish on")
    parser.add_argument("--hop", type=int, default=None,
                        help="input samples per message (default: the model's hop, at the model's rate)")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the stream")
    parser.add_argument("--stats-json", type=Path, default=None, help="write the counters here on exit")
    args = parser.parse_args(argv)
    if args.hop is not None and args.hop < 1:
        parser.error(f"--hop must be >= 1, got {args.hop}")
    if not args.lsl_name and not args.zmq:
        parser.error("give --lsl-name, --zmq or both")

    def run(stop) -> dict:
        # A bad model directory is a usage error (exit 2) too.
        config = load_fields(args.model)
        return run_relay(args.stream, list(config.meg_channel_names), list(config.meg_channel_types),
                         args.hop or int(config.hop_samples), args.lsl_name, args.zmq, args.duration, args.wait,
                         stop=stop)

    return peer_main(run, args.stats_json)


if __name__ == "__main__":
    sys.exit(main())
