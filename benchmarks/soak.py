"""Soak test of the serve daemon: does it stay flat over a session?

    python benchmarks/soak.py [--duration 1800] [--model default] [--json soak.json]
                              [--sample-interval 10] [--window 300] [--warmup 30]

What runs, like a lab set-up: a player (``brainformer-rt simulate --loop``, the bundled recording
at its real rate) → ``brainformer-rt serve`` with the model (LSL and ZeroMQ outputs, Prometheus
metrics on) → a ZeroMQ subscriber in this process that drains every message.

What is measured:
- the daemon's resident memory (RSS) every ``--sample-interval`` seconds; growth = the last
  sample − the first one after the warm-up, and the least-squares slope (MB per hour);
- end-to-end latency of every message at the subscriber (``local_clock()`` on receipt − the
  timestamp of its newest sample), p50/p99 of the first and of the last ``--window`` seconds
  after the warm-up (the window shrinks to a third of the measured time for short runs);
- lost messages (jumps in ``seq``) and the daemon's own counters (gaps, stale, NaN, ...).

The targets are reported as booleans (``targets``): RSS growth ≤ 5 MB, and the last window's
p99 at most 10 % above the first's (a faster end is not a failure). The full soak is 30 minutes; a short ``--duration``
checks that everything works. Writes the JSON (series + summary) and prints a summary.

Runs inside a loopback-only network namespace when it can (it re-executes itself there), like
``brainformer-rt bench``. Measure on a quiet machine: other load shows up in the latencies.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from brainformer_rt.serving.lsl_config import loopback_only
from brainformer_rt.tools._proc import ChildProcess, free_tcp_address, rt_cli

RSS_GROWTH_TARGET_MB = 5.0
P99_DRIFT_TARGET = 0.10
STARTUP_TIMEOUT_S = 120.0


def _free_port() -> int:
    return int(free_tcp_address().rsplit(":", 1)[1])


def _check_alive(*children: ChildProcess) -> None:
    for child in children:
        if child.returncode is not None:
            raise SystemExit(f"{child.name} exited with code {child.returncode}: {child.last_error_line()}")


class Subscriber(threading.Thread):
    """Drains the daemon's ZeroMQ output; keeps ``(received local_clock, t_last, seq)`` per message."""

    def __init__(self, address: str):
        import zmq

        super().__init__(name="soak-subscriber", daemon=True)
        self._zmq = zmq
        self.socket = zmq.Context.instance().socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"meg")
        self.socket.connect(address)
        self.rows: List[tuple] = []
        self._closing = threading.Event()

    def run(self) -> None:
        import pylsl

        zmq = self._zmq
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while not self._closing.is_set():
            if not poller.poll(50):
                continue
            while True:
                try:
                    frames = self.socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                received = pylsl.local_clock()
                header = json.loads(frames[1])
                self.rows.append((received, header["t_last"], header["seq"]))

    def close(self) -> None:
        self._closing.set()
        self.join(5)
        self.socket.close(linger=0)


def _scrape(url: str) -> Dict[str, float]:
    """Counter totals of the daemon's metrics (one stream: labels dropped)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.name.startswith("brainformer_"):
                values[sample.name.removeprefix("brainformer_").removesuffix("_total")] = sample.value
    return values


def _latency_summary(latencies_ms: np.ndarray) -> Dict[str, Optional[float]]:
    if latencies_ms.size == 0:
        return {"messages": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    p50, p99 = np.percentile(latencies_ms, [50, 99])
    return {"messages": int(latencies_ms.size), "p50_ms": float(p50), "p99_ms": float(p99),
            "max_ms": float(latencies_ms.max())}


def run_soak(duration_s: float, model: str, sample_interval_s: float, window_s: float, warmup_s: float,
             threads: int, directory: Path) -> dict:
    import psutil
    import pylsl

    name = f"soak-eeg-{uuid.uuid4().hex[:6]}"
    zmq_port, metrics_port = _free_port(), _free_port()
    config = directory / "serve.toml"
    config.write_text(f"torch_threads = {threads}\nwait_s = {STARTUP_TIMEOUT_S}\nstats_interval_s = 60.0\n")
    stats_path = directory / "serve-stats.json"
    player = ChildProcess("player", rt_cli("simulate", "--name", name, "--source-id", f"soak-{uuid.uuid4()}", "--loop"),
                   directory)
    subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
    subscriber.start()
    serve = ChildProcess("serve", rt_cli("serve", "--stream", name, "--model", model, "--zmq", f"tcp://127.0.0.1:{zmq_port}",
                                "--lsl-name", f"soak-meg-{uuid.uuid4().hex[:6]}", "--config", str(config),
                                "--metrics-port", str(metrics_port), "--stats-json", str(stats_path)), directory)
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    samples: List[dict] = []
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not subscriber.rows:  # serving: the first prediction arrived
            _check_alive(serve, player)
            if time.monotonic() > deadline:
                raise SystemExit(f"no prediction within {STARTUP_TIMEOUT_S:g} s; see {directory}")
            time.sleep(0.1)
        process = psutil.Process(serve.pid)
        started = pylsl.local_clock()
        print(f"serving; soaking for {duration_s:g} s (RSS and counters every {sample_interval_s:g} s)", flush=True)
        end = started + duration_s
        next_sample = started
        while True:
            now = pylsl.local_clock()
            if now >= next_sample:
                _check_alive(serve, player)
                rss_mb = process.memory_info().rss / 2**20
                samples.append({"t_s": now - started, "rss_mb": rss_mb, "counters": _scrape(url)})
                next_sample += sample_interval_s
            if now >= end:
                break
            time.sleep(max(0.0, min(next_sample, end) - pylsl.local_clock()))
    finally:
        subscriber.close()
        serve_code = serve.stop()
        player.stop()
    rows = np.array(subscriber.rows) if subscriber.rows else np.zeros((0, 3))
    return summarise(rows, samples, started, duration_s, window_s, warmup_s, serve_code, stats_path)


def summarise(rows: np.ndarray, samples: List[dict], started: float, duration_s: float, window_s: float,
              warmup_s: float, serve_code: Optional[int], stats_path: Path) -> dict:
    """Summary of one soak: RSS growth, latency drift, losses; the series are kept too."""
    t = rows[:, 0] - started
    latency_ms = (rows[:, 0] - rows[:, 1]) * 1e3
    measured_s = duration_s - warmup_s
    window = min(window_s, measured_s / 3)
    first = latency_ms[(t >= warmup_s) & (t < warmup_s + window)]
    last = latency_ms[(t >= duration_s - window) & (t <= duration_s)]
    seqs = rows[:, 2].astype(np.int64)
    lost = int(np.sum(np.diff(seqs) - 1)) if seqs.size > 1 else 0
    steady = [s for s in samples if s["t_s"] >= warmup_s] or samples[-1:]
    rss_t = np.array([s["t_s"] for s in steady])
    rss = np.array([s["rss_mb"] for s in steady])
    slope = float(np.polyfit(rss_t, rss, 1)[0]) * 3600 if rss.size >= 3 else math.nan
    growth = float(rss[-1] - rss[0]) if rss.size else math.nan
    first_summary, last_summary = _latency_summary(first), _latency_summary(last)
    drift = (last_summary["p99_ms"] / first_summary["p99_ms"] - 1.0
             if first_summary["p99_ms"] and last_summary["p99_ms"] else math.nan)
    daemon_stats = json.loads(stats_path.read_text()) if stats_path.is_file() else None
    return {
        "duration_s": duration_s, "warmup_s": warmup_s, "window_s": window,
        "rss_mb": {"first": float(rss[0]) if rss.size else None, "last": float(rss[-1]) if rss.size else None,
                   "growth": growth, "slope_mb_per_hour": slope, "max": float(rss.max()) if rss.size else None},
        "latency": {"first_window": first_summary, "last_window": last_summary, "p99_drift": drift,
                    "all": _latency_summary(latency_ms[t >= warmup_s])},
        "messages": {"received": int(seqs.size), "lost": lost},
        "counters": samples[-1]["counters"] if samples else {},
        # A faster end than start is no failure: the target is "not more than 10 % worse".
        "targets": {"rss_growth_le_5mb": bool(growth <= RSS_GROWTH_TARGET_MB),
                    "p99_last_within_10pct_of_first": bool(drift <= P99_DRIFT_TARGET)},
        "serve_exit_code": serve_code,
        "series": {"rss": [{"t_s": s["t_s"], "rss_mb": s["rss_mb"]} for s in samples],
                   "latency_ms_per_second": _per_second(t, latency_ms)},
        "daemon_stats": daemon_stats,
    }


def _per_second(t: np.ndarray, latency_ms: np.ndarray) -> List[dict]:
    """p50/p99 per 10-second bin (a compact series for plots)."""
    if t.size == 0:
        return []
    out = []
    for start in np.arange(0.0, float(t.max()) + 10.0, 10.0):
        chunk = latency_ms[(t >= start) & (t < start + 10.0)]
        if chunk.size:
            p50, p99 = np.percentile(chunk, [50, 99])
            out.append({"t_s": float(start), "p50_ms": float(p50), "p99_ms": float(p99)})
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of soak after serving started")
    parser.add_argument("--model", default="default")
    parser.add_argument("--json", type=Path, default=Path("soak.json"))
    parser.add_argument("--sample-interval", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--window", type=float, default=300.0, help="seconds compared at the start and the end")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds left out at the start")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the daemon")
    args = parser.parse_args(argv)
    if not args.duration > args.warmup + 3 * args.sample_interval:
        parser.error("--duration must exceed --warmup by at least three sample intervals")
    loopback_only()
    with tempfile.TemporaryDirectory(prefix="brainformer-soak-") as tmp:
        result = run_soak(args.duration, args.model, args.sample_interval, args.window, args.warmup, args.threads,
                          Path(tmp))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    rss, latency = result["rss_mb"], result["latency"]
    first, last = latency["first_window"], latency["last_window"]
    print(f"RSS {rss['first']:.1f} → {rss['last']:.1f} MB (growth {rss['growth']:+.2f} MB, "
          f"{rss['slope_mb_per_hour']:+.2f} MB/h); target ≤ {RSS_GROWTH_TARGET_MB:g} MB: "
          f"{'met' if result['targets']['rss_growth_le_5mb'] else 'NOT met'}")
    print(f"latency first {result['window_s']:.0f} s: p50 {first['p50_ms']:.2f} / p99 {first['p99_ms']:.2f} ms; "
          f"last {result['window_s']:.0f} s: p50 {last['p50_ms']:.2f} / p99 {last['p99_ms']:.2f} ms "
          f"(p99 drift {latency['p99_drift'] * 100:+.1f} %; target ≤ +{P99_DRIFT_TARGET * 100:g} %: "
          f"{'met' if result['targets']['p99_last_within_10pct_of_first'] else 'NOT met'})")
    print(f"messages {result['messages']['received']} received, {result['messages']['lost']} lost; "
          f"daemon counters {result['counters']}; written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
