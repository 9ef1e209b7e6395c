"""`bench`: end-to-end latency of the daemon on this machine, and of a naive loop for comparison.

One command starts everything, like a user's set-up would run it:

    players (``simulate`` subprocesses, the bundled recording at its real rate, one per stream)
        └─► system under test (subprocess): the daemon serving all streams, or, for the
            comparison, one naive hand-written loop per stream (``naive_loop.py``), or, for the
            transport floor (``--floor``), one relay per stream (``relay.py``: no model)
              └─► subscribers in this process: one LSL inlet per output (+ one ZeroMQ SUB for
                  the daemon), draining everything and keeping every arrival.

What is measured and how
------------------------
- Latency of a message = ``local_clock()`` when the subscriber read it − the timestamp of its
  newest sample. The player stamps each sample with the ``local_clock()`` time it was due and
  pushes it then, and both systems stamp each prediction with the timestamp of the EEG sample it
  was predicted for, so this is "EEG sample pushed → its prediction received", on one clock.
- The player pushes late when the machine is busy; the stamp stays the due time, so its lateness
  is part of the measured latency. It is reported (player lateness) so a reader can see it.
- Warm-up: arrivals in the first ``warmup_s`` seconds after the first one are left out (the
  first windows pay for allocations and caches). The daemon's own timings (forward, stages) come
  from its statistics file, which it resets after the same ``warmup_s``.
- The daemon, the naive loop and the relay run one after the other on the same player streams
  (the players keep running), never at the same time: on a small machine they would share the
  cores and distort each other.
- The relay's latency is the floor under every system: the player's lateness, LSL in, LSL or
  ZeroMQ out. The daemon's overhead (p99 e2e − p99 forward) is compared with it.
- Both systems use the same model, hop, device and number of torch threads.

Reading order: ``settings`` (what a run measures, the model's facts) → ``processes`` (the players
and each system under test) → ``receivers`` (subscriber and sampler threads) → ``phases`` (one
system measured) → ``summary`` (its figures) → ``run`` (the whole run). The tables and the plot
live with the command (``brainformer_rt/commands/_bench_report.py``).
"""

from brainformer_rt.tools.bench.run import run_bench
from brainformer_rt.tools.bench.settings import (
    DEFAULT_DURATION_S,
    DEFAULT_THREADS,
    DEFAULT_WARMUP_S,
    PEERS,
    BenchError,
    BenchFailure,
    BenchSettings,
)

__all__ = ["BenchSettings", "BenchError", "BenchFailure", "run_bench", "DEFAULT_DURATION_S", "DEFAULT_WARMUP_S",
           "DEFAULT_THREADS", "PEERS"]
