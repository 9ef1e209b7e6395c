"""The loop a user would write by hand: the baseline the daemon is compared with in ``bench``.

It is deliberately plain — what one writes from the pylsl examples and a PyTorch tutorial, with
nothing wrong in it either:

- ``pylsl.resolve_byprop`` + ``StreamInlet.pull_chunk()`` with its defaults (no timeout, Python
  lists back), and a 1 ms ``time.sleep`` when nothing arrived so the loop does not burn a core;
- the window kept in a numpy array grown with ``np.concatenate`` and cut to the last
  ``window_samples`` rows;
- the same preprocessing as the daemon (:func:`brainformer.preprocessing.eeg_preprocessor`, the
  stateful causal filters and scaling), so both systems compute the same predictions;
- an eager forward under ``torch.no_grad()`` every ``hop_samples`` new samples, the last
  predicted samples un-scaled and pushed with ``push_chunk`` to its own LSL outlet, stamped with
  the timestamps of the EEG samples they were predicted for (so the latency is measured the same
  way as the daemon's).

Run it as ``python -m brainformer_rt.tools.naive_loop --stream NAME --model DIR --lsl-name OUT`` inside
the loopback namespace; ``--stats-json`` writes its forward times and counters on exit.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from brainformer_rt.tools._proc import peer_main

logger = logging.getLogger(__name__)

#: How long the loop sleeps when ``pull_chunk()`` returned nothing.
POLL_SLEEP_S = 0.001

#: One line saying what the loop does, for reports.
DESCRIPTION = (f"pylsl pull_chunk() (lists) polled with a {POLL_SLEEP_S * 1e3:g} ms sleep when empty, numpy window "
               "by np.concatenate, the daemon's preprocessing, eager torch forward under no_grad every hop, "
               "push_chunk to LSL with the EEG timestamps")


# One function on purpose: this is the loop a user would write by hand, and the bench compares
# the daemon against it, so it reads top to bottom as that user's script would.
def run_naive_loop(
    stream: str,
    model: str,
    lsl_name: str,
    hop_samples: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    duration_s: float | None = None,
    preprocess: bool = True,
    wait_s: float = 60.0,
    stop=None,
) -> dict:
    """Serve ``stream`` with the model the plain way until ``duration_s`` or ``stop()`` is true.

    Args:
        stream: exact LSL name of the EEG stream.
        model: model directory or ``default``.
        lsl_name: name of the output LSL stream (type ``MEG``).
        hop_samples: new samples between two predictions (default: the model's).
        device: torch device of the forward (``auto``: cuda when available).
        threads: ``torch.set_num_threads`` (None: torch's choice).
        duration_s: stop after this many seconds of serving (None: until stopped).
        preprocess: run the shared preprocessing (filters + scaling); False feeds raw volts.
        wait_s: how long to wait for the stream.
        stop: callable returning True when the loop must end (e.g. after a signal).

    Returns the statistics: counters, and ``forwards`` as ``(local_clock() at the end of the
    forward, forward seconds)`` pairs so a caller can leave out a warm-up period.
    """
    import pylsl
    import torch

    from brainformer.preprocessing import eeg_preprocessor, unscale_meg

    net, device = _load_model(model, device, threads)
    config = net.config
    window_samples = int(config.window_samples)
    hop = int(hop_samples or config.hop_samples)
    inlet, order, input_sfreq_hz = _open_inlet(stream, wait_s, config.eeg_channel_names)
    preprocessor = eeg_preprocessor(config, input_sfreq_hz) if preprocess else None
    outlet = pylsl.StreamOutlet(pylsl.StreamInfo(lsl_name, "MEG", len(config.meg_channel_names), config.sfreq_hz,
                                                 "float32", f"naive-{lsl_name}"))

    window = np.zeros((0, len(order)), dtype=np.float32)  # (<= window_samples, n_eeg)
    window_times = np.zeros(0)  # (<= window_samples,)
    new_samples = 0
    stats = {"stream": stream, "lsl_name": lsl_name, "hop_samples": hop, "window_samples": window_samples,
             "preprocessing": "brainformer.preprocessing (same as the daemon)" if preprocess else "none",
             "torch_threads": torch.get_num_threads(), "device": device, "samples_in": 0, "windows_served": 0,
             "windows_skipped": 0, "forwards": []}
    started = time.monotonic()
    while not (stop is not None and stop()) and (duration_s is None or time.monotonic() - started < duration_s):
        chunk, stamps = inlet.pull_chunk()
        if not stamps:
            time.sleep(POLL_SLEEP_S)
            continue
        x = np.asarray(chunk, dtype=np.float32)[:, order]
        t = np.asarray(stamps)
        stats["samples_in"] += len(t)
        if preprocessor is not None:
            x, t = preprocessor.process(x, t)
        window = np.concatenate([window, x])[-window_samples:]
        window_times = np.concatenate([window_times, t])[-window_samples:]
        new_samples += len(t)
        if len(window) < window_samples or new_samples < hop:
            continue
        n_out = min(new_samples, window_samples)
        predicted, forward_s = _forward(net, window, device)
        meg = np.asarray(unscale_meg(config, predicted[-n_out:]), dtype=np.float32)
        outlet.push_chunk(meg, window_times[-n_out:].tolist())
        stats["forwards"].append((pylsl.local_clock(), forward_s))
        stats["windows_served"] += 1
        stats["windows_skipped"] += new_samples // hop - 1  # hops that got no forward of their own
        new_samples = 0
    stats["duration_s"] = time.monotonic() - started
    return stats


def _forward(net, window: np.ndarray, device: str) -> tuple[np.ndarray, float]:
    """The eager forward of one ``(window_samples, n_eeg)`` window: the ``(window_samples, n_meg)``
    prediction and the seconds it took."""
    import torch

    begin = time.perf_counter()
    with torch.no_grad():
        predicted = net(torch.from_numpy(window[None]).to(device)).predictions[0].cpu().numpy()
    return predicted, time.perf_counter() - begin


def _load_model(model: str, device: str, threads: int | None):
    """The model in eval mode on ``device`` (``auto`` resolved), and the device."""
    import torch

    from brainformer.model_dir import load_model

    if threads is not None:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    net = load_model(model, device=device)
    net.eval()
    return net, device


def _open_inlet(stream: str, wait_s: float, eeg_channel_names: list[str]):
    """The inlet of ``stream``, the column of each model EEG channel in it (looked up by label,
    once) and its nominal rate."""
    import pylsl

    found = pylsl.resolve_byprop("name", stream, 1, wait_s)
    if not found:
        raise LookupError(f"no LSL stream named {stream!r} appeared within {wait_s:g} s")
    inlet = pylsl.StreamInlet(found[0])
    info = inlet.info()
    labels = []
    channel = info.desc().child("channels").child("channel")
    while not channel.empty():
        labels.append(channel.child_value("label"))
        channel = channel.next_sibling("channel")
    return inlet, [labels.index(name) for name in eeg_channel_names], info.nominal_srate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brainformer_rt.tools.naive_loop", description=__doc__.split("\n")[0])
    parser.add_argument("--stream", required=True, help="exact LSL name of the EEG stream")
    parser.add_argument("--model", default="default", help="model directory or `default`")
    parser.add_argument("--lsl-name", required=True, help="name of the output LSL stream")
    parser.add_argument("--hop", type=int, default=None, help="new samples between two predictions")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--no-preprocess", action="store_true", help="feed raw volts to the model")
    parser.add_argument("--stats-json", type=Path, default=None, help="write the statistics here on exit")
    args = parser.parse_args(argv)
    if args.hop is not None and args.hop < 1:
        parser.error(f"--hop must be >= 1, got {args.hop}")

    return peer_main(lambda stop: run_naive_loop(args.stream, args.model, args.lsl_name, args.hop, args.device,
                                                 args.threads, args.duration, not args.no_preprocess, stop=stop),
                     args.stats_json)


if __name__ == "__main__":
    sys.exit(main())
