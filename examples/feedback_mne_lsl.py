"""A closed-loop consumer of the feedback stream, with mne-lsl's `StreamLSL`: a display.

    python examples/feedback_mne_lsl.py --stream brainformer-meg-feedback [--signal alpha]
        [--duration 60] [--samples N] [--json delays.json]

`StreamLSL` keeps the stream in a ring buffer filled by its own acquisition thread; the feedback
stream's channels arrive as MNE ``misc`` channels named after the signals. Every new sample
redraws a bar of the signal, scaled to its range over the buffer (10 s). Measured per sample and
printed at the end (median, p99):

- transport: EEG instant → the sample is in the buffer and read here (``local_clock()`` − its
  timestamp; mne-lsl polls liblsl every `--acquisition-delay` seconds, which adds to it);
- display: read → bar drawn.

Needs mne-lsl and numpy only. On a shared machine keep LSL on loopback with ``LSLAPICFG`` (a
loopback-only liblsl config; brainformer's is ``brainformer_rt/resources/lsl_api.cfg``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from mne_lsl.lsl import local_clock
from mne_lsl.stream import StreamLSL

BUFFER_S = 10.0
BAR_WIDTH = 40


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", default="brainformer-meg-feedback", help="the feedback stream's LSL name")
    parser.add_argument("--signal", default="alpha", help="the signal the display shows")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    parser.add_argument("--samples", type=int, default=None, help="stop after reading this many samples")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the stream")
    parser.add_argument("--acquisition-delay", type=float, default=0.001, help="mne-lsl's polling period (s)")
    parser.add_argument("--json", default=None, help="write the measured delays here")
    args = parser.parse_args(argv)

    stream = StreamLSL(bufsize=BUFFER_S, name=args.stream)
    stream.connect(acquisition_delay=args.acquisition_delay, timeout=args.wait)
    channels = list(stream.ch_names)
    try:
        print(f"{args.stream}: {channels} at {stream.info['sfreq']:g} Hz")
        pick = channels.index(args.signal)
        transport, display = [], []
        interactive = sys.stdout.isatty()
        deadline = local_clock() + args.duration
        while local_clock() < deadline and (args.samples is None or len(transport) < args.samples):
            if stream.n_new_samples == 0:  # mne-lsl's own thread fills the buffer; this loop only reads it
                time.sleep(args.acquisition_delay)
                continue
            data, stamps = stream.get_data(picks=[pick])  # the whole buffer, oldest first
            read_s = local_clock()
            transport.append(read_s - stamps[-1])
            values = data[0][np.isfinite(data[0]) & (stamps > 0)]
            low, high = np.percentile(values, [5, 95]) if values.size > 1 else (0.0, 1.0)
            filled = int(BAR_WIDTH * np.clip((data[0, -1] - low) / ((high - low) or 1.0), 0.0, 1.0))
            if interactive:
                sys.stdout.write(f"\r{args.signal} {'#' * filled}{'.' * (BAR_WIDTH - filled)} {data[0, -1]:.3g}")
                sys.stdout.flush()
            display.append(local_clock() - read_s)
    finally:
        stream.disconnect()
    if interactive:
        print()
    delays = {}
    for step, values in (("transport", transport), ("display", display)):
        ms = 1e3 * np.asarray(values)
        delays[step] = {"n": len(values), "median_ms": float(np.median(ms)) if len(ms) else None,
                        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None}
        if len(ms):
            print(f"{step}: median {delays[step]['median_ms']:.2f} ms, p99 {delays[step]['p99_ms']:.2f} ms "
                  f"({len(ms)} samples)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"stream": args.stream, "channels": channels, "delays": delays}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
