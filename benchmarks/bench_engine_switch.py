"""`serve` with the default engine (``auto``): how long until the first prediction and until the
compiled forward serves, with a cold and with a warm cache; and nothing lost at the switch.

    python benchmarks/bench_engine_switch.py [--model default] [--after-switch 10] [--cold-for S] [--json out.json]

Each start is a real daemon (``serve --engine auto --device cpu``, JSON log) serving the bundled
recording from ``simulate``; a ZeroMQ subscriber in this process keeps every message. Timed
from the moment ``serve`` is started (wall clock of this process):

- ``first prediction``: the first ZeroMQ message received;
- ``compiled path``: the log's ``engine_switched`` line, and the forward it switched to;
- across the switch: published samples against the span of the output grid they cover, and
  the largest step between consecutive published timestamps (one output period when nothing
  was lost; a skipped window would show as a longer step).

The first start uses empty caches (``BRAINFORMER_CACHE`` and inductor's ``TORCHINDUCTOR_CACHE_DIR``
pointed at new folders, as on a machine that never compiled: the compiled forward is built in the
background); the second start finds what the first one cached. ``--cold-for S`` stops the first
start after ``S`` seconds, switched or not, as a first run shorter than the build; the build it
started goes on, and the second start begins once it ended (the wait is reported).
Runs inside a loopback-only network namespace when it can (it re-executes itself there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from brainformer_rt.serving.lsl_config import loopback_only

#: Longest wait for the compiled path (a cold compile on a busy 2-core machine).
SWITCH_TIMEOUT_S = 900.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model directory or `default`")
    parser.add_argument("--after-switch", type=float, default=10.0,
                        help="seconds served after the switch before the daemon is stopped (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="the daemon's torch threads (default 1, as bench)")
    parser.add_argument("--cold-for", type=float, default=None,
                        help="stop the cold start after this many seconds, switched or not (default: after the switch)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def _subscribe(address: str, stop: threading.Event, arrivals: list) -> None:
    """``(monotonic arrival, timestamps)`` of every message on ``address`` until ``stop``."""
    import numpy as np
    import zmq

    from brainformer_rt.serving.publishers.zmq import decode_message

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(address)
    try:
        while not stop.is_set():
            if sub.poll(100):
                header, _ = decode_message(sub.recv_multipart())
                n = int(header["n_samples"])
                stamps = np.linspace(float(header["t0"]), float(header["t_last"]), n) if n > 1 else np.array([header["t0"]])
                arrivals.append((time.monotonic(), stamps))
    finally:
        sub.close(0)


def _switch_event(log_path: Path) -> dict | None:
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") in ("engine_switched", "engine_switch_failed"):
                return entry
    return None


def one_start(model: str, cache: Path, threads: int, after_switch_s: float, work: Path,
              serve_for_s: float | None = None) -> dict:
    """One daemon start: the times from `serve` started to its first prediction and to its switch."""
    import numpy as np

    from brainformer.model_dir import load_fields
    from brainformer_rt.tools._proc import free_tcp_address, rt_cli

    model_rate = float(load_fields(model).sfreq_hz)
    name = f"switch-{uuid.uuid4().hex[:8]}"
    address = free_tcp_address()
    env = {**os.environ, "BRAINFORMER_CACHE": str(cache), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")}
    config = work / f"{name}.toml"
    config.write_text(f"torch_threads = {threads}\n")
    log_path, stats_path = work / f"{name}.log", work / f"{name}-stats.json"
    player = subprocess.Popen(rt_cli("simulate", "--name", name, "--loop", "--chunk", "16"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # the stream exists before the daemon looks: only the daemon's own start is timed
    arrivals: list = []
    stop = threading.Event()
    subscriber = threading.Thread(target=_subscribe, args=(address, stop, arrivals), daemon=True)
    subscriber.start()
    with log_path.open("w") as log:
        started = time.monotonic()
        serve = subprocess.Popen(rt_cli("serve", "--stream", name, "--model", model, "--device", "cpu", "--engine",
                                        "auto", "--zmq", address, "--lsl-name", "", "--config", str(config),
                                        "--log-format", "json", "--stats-json", str(stats_path)),
                                 stdout=subprocess.DEVNULL, stderr=log, env=env)
        switched_at = event = None
        try:
            while (switched_at is None or time.monotonic() < switched_at + after_switch_s) and (
                    serve_for_s is None or time.monotonic() < started + serve_for_s):
                if serve.poll() is not None:
                    raise SystemExit(f"serve exited with {serve.returncode}: {log_path.read_text()[-2000:]}")
                if time.monotonic() > started + SWITCH_TIMEOUT_S:
                    raise SystemExit(f"no switch after {SWITCH_TIMEOUT_S:.0f} s")
                if switched_at is None and (event := _switch_event(log_path)) is not None:
                    switched_at = time.monotonic()
                time.sleep(0.05)
        finally:
            serve.terminate()
            serve.wait(30)
            stop.set()
            subscriber.join(5)
            player.terminate()
            player.wait(20)
    stats = json.loads(stats_path.read_text())
    event = event or {}
    switched_at = switched_at if switched_at is not None else float("nan")
    stamps = np.concatenate([s for _, s in arrivals])
    steps = np.rint(np.diff(stamps) * model_rate).astype(np.int64)
    return {
        "cache": "warm" if event.get("source") == "cache" else "cold",
        "event": event.get("event"), "switched_to": event.get("engine"), "source": event.get("source"),
        "first_prediction_s": arrivals[0][0] - started,
        # The log line is read every 50 ms; the engine's own clock is exact from its set-up.
        "compiled_path_s": switched_at - started,
        "engine_setup_to_switch_s": event.get("after_s"),
        "eager_calls_before_switch": event.get("eager_calls"),
        "served_s": time.monotonic() - started,
        "max_abs_diff": event.get("max_abs_diff"),
        "samples_published": int(len(stamps)), "output_grid_span": int(steps.sum()) + 1,
        "largest_step_samples": int(steps.max()), "out_of_order_steps": int(np.sum(steps <= 0)),
        "daemon_gaps": sum(c["gaps"] for c in stats["streams"].values()),
        "windows_skipped": sum(c["windows_skipped"] for c in stats["streams"].values()),
        # The whole start's timings: a cold start stopped before its switch (--cold-for) served
        # with eager all along while the build ran, a warm one with the compiled forward.
        "forward_ms": stats["stages"]["forward"],
        "e2e_latency_ms": stats["e2e_latency"]["all"],
        "engine_facts": stats["info"]["engine"],
    }


def _leftovers(cache: Path) -> list:
    """What a build left in ``cache`` besides packages and their records: temporary files, locks."""
    from brainformer_rt.serving.aot_cache import TMP_MARK

    return sorted(path.name for path in cache.glob("*") if TMP_MARK in path.name or path.suffix == ".lock") \
        if cache.is_dir() else []


def _wait_for_builds(cache: Path) -> float:
    """Seconds until no build runs into ``cache`` (a start stopped before its switch leaves one)."""
    from brainformer_rt.serving.aot_cache import running_builders

    started = time.monotonic()
    while running_builders(cache) and time.monotonic() < started + SWITCH_TIMEOUT_S:
        time.sleep(0.5)
    return time.monotonic() - started


def _ms(value) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def main(argv=None) -> int:
    args = parse_args(argv)
    loopback_only()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-switch-") as tmp:
        cache = Path(tmp) / "cache"
        for attempt in ("cold", "warm"):
            limit = f" or for {args.cold_for:g} s" if attempt == "cold" and args.cold_for is not None else ""
            print(f"{attempt} cache: serving until {args.after_switch:g} s after the switch{limit} …", flush=True)
            result = one_start(args.model, cache, args.threads, args.after_switch, Path(tmp),
                               serve_for_s=args.cold_for if attempt == "cold" else None)
            result["build_waited_s"] = _wait_for_builds(cache / "aot")
            result["leftover_files"] = _leftovers(cache / "aot")
            results.append(result)
            if result["event"] is None:
                path = f"no switch before it was stopped ({result['served_s']:.1f} s)"
            else:
                path = (f"compiled path ({result['switched_to']}, {result['event']}) {result['compiled_path_s']:.2f} s "
                        f"after `serve` started ({result['engine_setup_to_switch_s']:.2f} s after the engine's set-up, "
                        f"{result['eager_calls_before_switch']} eager calls before it)")
            print(f"  {result['cache']}: first prediction {result['first_prediction_s']:.2f} s, {path}; "
                  f"{result['samples_published']} samples published over a grid of {result['output_grid_span']}, "
                  f"largest step {result['largest_step_samples']} sample(s), daemon gaps {result['daemon_gaps']}, "
                  f"windows skipped {result['windows_skipped']}; then waited {result['build_waited_s']:.1f} s for "
                  "a build it left running", flush=True)
            forward, e2e = result["forward_ms"], result["e2e_latency_ms"]
            print(f"  forward median {_ms(forward['median_ms'])} / p99 {_ms(forward['p99_ms'])} / max "
                  f"{_ms(forward['max_ms'])} over {forward['count']} calls; e2e median {_ms(e2e['median_ms'])} / "
                  f"p99 {_ms(e2e['p99_ms'])} / max {_ms(e2e['max_ms'])}; left in the cache besides packages: "
                  f"{result['leftover_files'] or 'nothing'}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"model": args.model, "threads": args.threads, "starts": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
