"""A closed-loop consumer of the feedback stream, with pylsl: a display and a trigger.

    python examples/feedback_pylsl.py --stream brainformer-meg-feedback [--envelope alpha]
        [--phase alpha_phase] [--duration 60] [--samples N] [--json delays.json]

It reads what `brainformer-rt serve --feedback configs/feedback.toml` publishes (one sample per
served window, stamped with the EEG instant it is for; names, units, bands and delays in the
stream's meta-data) and acts on every sample:

- display: the envelope signal as a bar, scaled to its range over the last 10 s;
- trigger: a marker on the LSL stream ``<stream>-trigger`` at the next peak of the rhythm (phase
  0), forecast from the newest phase and the band's centre frequency, whenever the envelope is
  above its median over the last 10 s and that peak comes before the next sample is due.

It measures the delay of each step and prints them at the end (median, p99):

- transport: EEG instant → sample read here (``local_clock()`` − its timestamp);
- display: sample read → bar drawn;
- trigger: forecast peak → marker pushed (how late the wake-up is).

Needs pylsl and numpy only: it can run on the stimulus computer. LSL must stay on loopback on a
shared machine: set ``LSLAPICFG`` to a loopback-only liblsl config (brainformer's is
``brainformer_rt/resources/lsl_api.cfg``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections import deque

import numpy as np
import pylsl

HISTORY_S = 10.0  # the display's range and the trigger's threshold: the last 10 s
BAR_WIDTH = 40


def signals_of(info: pylsl.StreamInfo) -> dict[str, dict]:
    """``{name: {index, unit, measure, band_hz, delay_ms}}`` from the stream's meta-data."""
    root = ElementTree.fromstring(info.as_xml())
    signals = {}
    for index, channel in enumerate(root.findall("./desc/channels/channel")):
        band = [float(v) for v in (channel.findtext("band_hz") or "0 0").split()]
        signals[channel.findtext("label")] = {
            "index": index, "unit": channel.findtext("unit"), "measure": channel.findtext("measure"),
            "band_hz": band, "delay_ms": float(channel.findtext("delay_ms") or "nan")}
    return signals


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "median_ms": None, "p99_ms": None}
    ms = 1e3 * np.asarray(values)
    return {"n": len(values), "median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", default="brainformer-meg-feedback", help="the feedback stream's LSL name")
    parser.add_argument("--envelope", default="alpha", help="the signal the display shows and the trigger gates on")
    parser.add_argument("--phase", default="alpha_phase", help="the phase signal the trigger follows")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    parser.add_argument("--samples", type=int, default=None, help="stop after reading this many samples")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the stream")
    parser.add_argument("--json", default=None, help="write the measured delays here")
    args = parser.parse_args(argv)

    found = pylsl.resolve_byprop("name", args.stream, 1, args.wait)
    if not found:
        print(f"no LSL stream {args.stream!r} within {args.wait:g} s", file=sys.stderr)
        return 1
    inlet = pylsl.StreamInlet(found[0], max_buflen=2)
    info = inlet.info(10.0)
    signals = signals_of(info)
    for name, signal in signals.items():
        print(f"{name}: {signal['measure']} {signal['band_hz']} Hz, {signal['unit']}, delay {signal['delay_ms']:g} ms")
    envelope, phase = signals[args.envelope], signals[args.phase]
    centre_hz = math.sqrt(phase["band_hz"][0] * phase["band_hz"][1])
    sample_period_s = 1.0 / info.nominal_srate()
    trigger = pylsl.StreamOutlet(pylsl.StreamInfo(f"{args.stream}-trigger", "Markers", 1, pylsl.IRREGULAR_RATE,
                                                  pylsl.cf_string, f"{args.stream}-trigger"))
    recent = deque(maxlen=max(1, int(HISTORY_S / sample_period_s)))
    delays = {"transport": [], "display": [], "trigger": []}
    interactive = sys.stdout.isatty()
    deadline = pylsl.local_clock() + args.duration
    while pylsl.local_clock() < deadline and (args.samples is None or len(delays["transport"]) < args.samples):
        # Wait for a sample, then take everything waiting and keep the newest: a consumer that
        # falls behind must not act on old values. (pull_chunk with a timeout would wait for a
        # full chunk: pull_sample wakes at the first sample.)
        newest, stamp = inlet.pull_sample(timeout=0.2)
        if stamp is None:
            continue
        chunk, stamps = inlet.pull_chunk(timeout=0.0)
        if stamps:
            newest, stamp = chunk[-1], stamps[-1]
        read_s = pylsl.local_clock()
        delays["transport"].append(read_s - stamp)
        value = newest[envelope["index"]]
        recent.append(value)
        low, high = np.percentile(recent, [5, 95]) if len(recent) > 1 else (0.0, value or 1.0)
        filled = int(BAR_WIDTH * np.clip((value - low) / ((high - low) or 1.0), 0.0, 1.0))
        bar = f"\r{args.envelope} {'#' * filled}{'.' * (BAR_WIDTH - filled)} {value:.3g} {envelope['unit']}"
        if interactive:
            sys.stdout.write(bar)
            sys.stdout.flush()
        delays["display"].append(pylsl.local_clock() - read_s)
        # The next peak (phase 0) after now, forecast at the band's centre frequency.
        to_peak_s = ((-newest[phase["index"]]) % (2 * math.pi)) / (2 * math.pi * centre_hz)
        peak_s = stamp + to_peak_s
        while peak_s < pylsl.local_clock():
            peak_s += 1.0 / centre_hz
        if value > np.median(recent) and peak_s - pylsl.local_clock() < sample_period_s:
            while pylsl.local_clock() < peak_s:  # a short wait: spin, a sleep would wake late
                pass
            trigger.push_sample([f"{args.phase} peak"], pylsl.local_clock())
            delays["trigger"].append(pylsl.local_clock() - peak_s)
    if interactive:
        print()
    summary = {"stream": args.stream, "signals": signals, "delays": {k: percentiles(v) for k, v in delays.items()}}
    for step, row in summary["delays"].items():
        if row["n"]:
            print(f"{step}: median {row['median_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms ({row['n']} samples)")
        else:
            print(f"{step}: none")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(summary, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
