"""The demo's player subprocess: `simulate` plus a start sample and a clock that waits for the daemon.

``python -m brainformer_rt.tools.demo.player --file F --name N --source-id S --start-file A
--status-file P --duration D --wait W`` plays F's EEG in a loop.

The outlet opens at once (so that the daemon finds the stream while its model loads), but the
clock starts only when both the daemon has connected and the demo has written
``{"start_sample": I}`` to A (it needs the split of the recording, which takes a while to
compute); playback starts at sample I. ``{"state": "playing", "t_start", "start_sample",
"n_samples", "sfreq_hz"}`` is written to P after the first push.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from brainformer.errors import EXIT_FAILURE, EXIT_OK
from brainformer_rt.tools.demo.files import read_json, write_json

logger = logging.getLogger(__name__)

#: EEG samples per push: one, as an amplifier driver with the lowest latency would send them.
PLAYER_CHUNK_SAMPLES = 1
#: How long the player waits for the daemon and the start sample (``--wait``) by default.
WAIT_S = 180.0


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="brainformer_rt.tools.demo.player", description="the demo's player")
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--source-id", required=True)
    parser.add_argument("--start-file", type=Path, required=True)
    parser.add_argument("--status-file", type=Path, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--wait", type=float, default=WAIT_S)
    parser.add_argument("--chunk", type=int, default=PLAYER_CHUNK_SAMPLES)
    return parser.parse_args(list(argv))


def _wait_for_start(player, start_file: Path, wait_s: float) -> Optional[int]:
    """Block until a consumer is connected and the start sample is known; that sample, or None
    when stopped meanwhile. TimeoutError after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    start_sample = None
    # In slices, so that a stop request is seen while waiting.
    while not player.stopped:
        connected = player.wait_for_consumers(0.2)
        if start_sample is None:
            start_sample = read_json(start_file).get("start_sample")
        if connected and start_sample is not None:
            return int(start_sample)
        if time.monotonic() > deadline:
            raise TimeoutError(f"stream {player.name!r}: no consumer or no start sample within {wait_s:g} s")
    return None


def _play(player, source, args: argparse.Namespace) -> int:
    """Wait for the start, push the first chunk, report the clock, then play to the end."""
    try:
        start_sample = _wait_for_start(player, args.start_file, args.wait)
    except TimeoutError as error:
        logger.error("%s", error)
        return EXIT_FAILURE
    if start_sample is None:
        return EXIT_OK
    source.position = start_sample % len(source.data)
    if not player.step():
        return EXIT_OK
    write_json(args.status_file, {
        "state": "playing", "t_start": player.t_start, "start_sample": start_sample % len(source.data),
        "n_samples": len(source.data), "sfreq_hz": source.sfreq_hz,
    })
    while player.step():
        pass
    return EXIT_OK


def main(argv: Sequence[str]) -> int:
    args = _parse(argv)
    from brainformer_rt.serving.lsl_config import use_loopback_config

    use_loopback_config()  # before pylsl is imported
    from brainformer_rt.serving.signals import StopRequest
    from brainformer_rt.tools.player import Player, RecordingSource

    # Into the demo's log file: the demo shows its tail when this process fails.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    source = RecordingSource.from_file(args.file, loop=True)
    player = Player(source, name=args.name, chunk_samples=args.chunk, source_id=args.source_id,
                    duration_s=args.duration)
    with StopRequest(interrupt=False, on_stop=player.stop):
        player.open()
        try:
            code = _play(player, source, args)
        finally:
            player.close()
    summary = player.summary()
    logger.info("played %d samples (%.1f s), %d overruns, lateness max %.3f ms", summary["samples"],
                summary["seconds"], summary["overruns"], summary["lateness_max_ms"])
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
