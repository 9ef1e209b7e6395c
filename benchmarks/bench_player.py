"""How well the player keeps the real rate: the figures the tests no longer assert.

    python benchmarks/bench_player.py [--duration 10] [--chunk 10] [--json out.json]

Plays the bundled recording into an LSL outlet for ``--duration`` seconds (the player in a
thread, as ``brainformer-rt simulate`` runs it) while an inlet in this process reads every
sample, and reports: samples received per second of wall time against the nominal rate,
delivery delay (receive time − stamp of a chunk's newest sample: median / p99 / max), and the
player's own lateness and overruns. Runs inside a loopback-only network namespace when it can
(it re-executes itself there). Measure on a quiet machine: other load shows up in the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from brainformer_rt.serving.lsl_config import loopback_only


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to play (default 10)")
    parser.add_argument("--chunk", type=int, default=10, help="samples per pushed chunk (default 10)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def run(duration_s: float, chunk: int) -> dict:
    import numpy as np
    import pylsl

    from brainformer.paths import SAMPLE_RECORDING
    from brainformer_rt.serving.inlet import EEGInlet, find_stream
    from brainformer_rt.tools.player import Player, RecordingSource

    name = "bench-player"
    player = Player(RecordingSource.from_file(SAMPLE_RECORDING, loop=True), name=name, chunk_samples=chunk,
                    source_id=f"{name}-source", duration_s=duration_s)
    player.open()
    inlet = EEGInlet(find_stream(name, wait_s=30.0))
    inlet.open()
    assert player.wait_for_consumers(10.0)
    thread = threading.Thread(target=lambda: [None for _ in iter(player.step, False)], daemon=True)
    delays, received, first_at, first_n = [], 0, None, 0
    thread.start()
    try:
        while thread.is_alive() or inlet.samples_available():
            _, stamps = inlet.pull(0.2)
            now = pylsl.local_clock()
            if len(stamps):
                if first_at is None:  # the rate is counted from the first chunk on
                    first_at, first_n = now, len(stamps)
                received += len(stamps)
                delays.append(now - float(stamps[-1]))
        last_at = pylsl.local_clock()
    finally:
        thread.join(5.0)
        inlet.close()
        player.close()
    delays_ms = 1e3 * np.asarray(delays)
    elapsed = max(last_at - first_at, 1e-9)
    summary = player.summary()
    return {
        "duration_s": duration_s, "chunk": chunk, "sfreq_hz": player.sfreq_hz,
        "samples_pushed": summary["samples"], "samples_received": received,
        "received_rate_hz": (received - first_n) / elapsed,
        "rate_ratio": (received - first_n) / elapsed / player.sfreq_hz,
        "delivery_ms": {"median": float(np.median(delays_ms)), "p99": float(np.percentile(delays_ms, 99)),
                        "max": float(delays_ms.max())},
        "player_overruns": summary["overruns"], "player_lateness_mean_ms": summary["lateness_mean_ms"],
        "player_lateness_max_ms": summary["lateness_max_ms"],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    loopback_only()
    result = run(args.duration, args.chunk)
    d = result["delivery_ms"]
    print(f"player, chunks of {result['chunk']}: {result['samples_received']} of {result['samples_pushed']} samples "
          f"received, {result['received_rate_hz']:.2f} Hz ({result['rate_ratio']:.4f} × nominal); delivery "
          f"median {d['median']:.3f} ms, p99 {d['p99']:.3f} ms, max {d['max']:.3f} ms; player overruns "
          f"{result['player_overruns']}, lateness mean {result['player_lateness_mean_ms']:.3f} ms / max "
          f"{result['player_lateness_max_ms']:.3f} ms")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
