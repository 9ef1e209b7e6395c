"""The threads of the bench process: subscribers that drain every output and keep every arrival
(and, for the outputs asked for, every payload), and the sampler of CPU and memory of the system
under test."""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from brainformer_rt.tools.bench.delay import PayloadKeeper
from brainformer_rt.tools.bench.settings import SAMPLE_INTERVAL_S

__all__ = ["Arrivals", "ReceiverThreads", "ResourceSampler"]


class Arrivals:
    """Every message one output delivered: ``(received_s, newest sample's timestamp, n_samples)``."""

    def __init__(self) -> None:
        self.rows: List[tuple] = []  # list.append is atomic: no lock needed with one writer

    def add(self, received_s: float, newest_timestamp: float, n_samples: int) -> None:
        self.rows.append((received_s, newest_timestamp, n_samples))

    def first_received(self) -> Optional[float]:
        return self.rows[0][0] if self.rows else None

    def between(self, start_s: float, end_s: float) -> np.ndarray:
        """``(n, 3)`` rows received in ``[start_s, end_s)``."""
        rows = np.asarray(self.rows, dtype=np.float64).reshape(-1, 3)
        keep = (rows[:, 0] >= start_s) & (rows[:, 0] < end_s)
        return rows[keep]


class ReceiverThreads:
    """One thread per subscriber, draining until stopped; arrivals keyed by (transport, stream)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.arrivals: Dict[tuple, Arrivals] = {}
        self.errors: List[str] = []
        self.lsl_subscribers: Dict[str, Any] = {}  # stream → its LSLSubscriber (counters stay after close)
        self.payloads: Dict[tuple, PayloadKeeper] = {}  # (transport, stream) → its payload, where asked for
        self._threads: List[threading.Thread] = []
        self._subscribers: List[Any] = []

    def keep_payload(self, transport: str, key: str) -> PayloadKeeper:
        """Keep what the output of ``key`` on ``transport`` carries too (called before it is added)."""
        return self.payloads.setdefault((transport, key), PayloadKeeper())

    def add_lsl(self, key: str, subscriber: Any) -> None:
        arrivals = self.arrivals.setdefault(("lsl", key), Arrivals())
        self.lsl_subscribers[key] = subscriber
        payload = self.payloads.get(("lsl", key))

        def handle(items):
            for item in items:
                arrivals.add(item.received_s, float(item.timestamps[-1]), len(item.timestamps))
                if payload is not None:  # the subscriber hands out copies: kept as they are
                    payload.add(item.received_s, item.timestamps, item.data)

        self._start(subscriber, handle, f"lsl-{key}")

    def add_zmq(self, keys: Sequence[str], subscriber: Any) -> None:
        by_stream = {key: self.arrivals.setdefault(("zmq", key), Arrivals()) for key in keys}

        def handle(items):
            for item in items:
                target = by_stream.get(item.header.get("stream"))
                if target is not None:
                    target.add(item.received_s, float(item.timestamps[-1]), len(item.timestamps))

        self._start(subscriber, handle, "zmq")

    def _start(self, subscriber: Any, handle: Callable, name: str) -> None:
        def loop():
            try:
                while not self.stop.is_set():
                    items = subscriber.receive_all(0.1)
                    if items:
                        handle(items)
            except Exception as error:  # noqa: BLE001 - reported by the bench, not lost in a thread
                self.errors.append(f"{name}: {type(error).__name__}: {error}")

        thread = threading.Thread(target=loop, name=f"bench-{name}", daemon=True)
        self._subscribers.append(subscriber)
        self._threads.append(thread)
        thread.start()

    def first_received(self) -> Optional[float]:
        firsts = [a.first_received() for a in self.arrivals.values() if a.first_received() is not None]
        return min(firsts) if firsts else None

    def close(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(2.0)
        for subscriber in self._subscribers:
            subscriber.close()


class ResourceSampler:
    """Samples CPU % (100 = one core) and RSS of some processes, and the machine's CPU %."""

    def __init__(self, pids: Sequence[int], interval_s: float = SAMPLE_INTERVAL_S):
        import psutil

        self._psutil = psutil
        self.processes = [psutil.Process(pid) for pid in pids]
        self.interval_s = interval_s
        self.cpu_percent: List[float] = []
        self.rss_bytes: List[float] = []
        self.machine_cpu_percent: List[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-resources", daemon=True)

    def start(self) -> None:
        for process in self.processes:
            process.cpu_percent(None)  # the first call only sets the reference point
        self._psutil.cpu_percent(None)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.cpu_percent.append(sum(p.cpu_percent(None) for p in self.processes))
                self.rss_bytes.append(sum(p.memory_info().rss for p in self.processes))
                self.machine_cpu_percent.append(self._psutil.cpu_percent(None))
            except self._psutil.Error:  # a process ended: the phase is over
                return

    def stop(self) -> Dict[str, Any]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        cpu_mean, cpu_max = _mean_max(self.cpu_percent)
        rss_mean, rss_max = _mean_max(self.rss_bytes, 1e-6)
        machine_mean, machine_max = _mean_max(self.machine_cpu_percent)
        return {"samples": len(self.cpu_percent), "interval_s": self.interval_s,
                "cpu_percent_mean": cpu_mean, "cpu_percent_max": cpu_max,
                "rss_mb_mean": rss_mean, "rss_mb_max": rss_max,
                "machine_cpu_percent_mean": machine_mean, "machine_cpu_percent_max": machine_max,
                "machine_cpu_percent_note": f"100 = all {os.cpu_count()} cores busy"}


def _mean_max(values: Sequence[float], scale: float = 1.0) -> tuple:
    if not values:
        return None, None
    return float(np.mean(values)) * scale, float(np.max(values)) * scale
