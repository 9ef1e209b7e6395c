"""End-to-end latency sweeps of the daemon: the numbers for docs/benchmarks.md, in one command.

    python benchmarks/bench_latency.py --out bench-results [--model default] [--duration 60]
                                       [--streams 1,2,4,8] [--hop 16] [--device cpu] [--floor] [--busy-poll]

(a) one stream, daemon then the naive hand-written loop on the same player stream: latency
    percentiles, daemon overhead, real-time factor and the p99 ratio daemon / naive;
(b) the many-streams curve: one daemon serving N streams (``bench --streams N --peer none``),
    p99 latency, real-time factor and whether real time was kept, for each N. The N = 1 point
    is the daemon phase of (a) (the same measurement ``bench --streams 1`` makes).

With ``--floor`` every run also measures the relay (``bench --floor``: the daemon's transport and
no model), so each row shows how much of the latency LSL / ZeroMQ alone cost in that run; with
``--busy-poll`` the daemon spins instead of sleeping (``serve --busy-poll``) in every run.

Writes ``bench_latency.json`` (every run's full results), ``latency_single.png`` (histogram +
CDF of (a)) and ``streams_curve.png`` under ``--out``, and prints markdown tables ready for
docs/benchmarks.md. Each run is exactly what ``brainformer-rt bench`` does (same code), so any
row can be reproduced on its own with the command printed next to it.

Runs inside a loopback-only network namespace when it can (it re-executes itself there), like
``brainformer-rt bench``. Measure on a quiet machine: other load shows up in the latencies.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from brainformer.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, print_error
from brainformer_rt.serving.lsl_config import reexec_in_loopback_namespace, use_loopback_config


def parse_streams(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--streams must be a comma-separated list of integers, got {text!r}")
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"--streams needs integers >= 1, got {text!r}")
    return sorted(set(values))


def bench_cli(settings, n_streams: int, peer: str) -> str:
    """The `brainformer-rt bench` command line that reproduces one run."""
    parts = ["brainformer-rt bench", f"--model {settings.model}", f"--duration {settings.duration_s:g}",
             f"--streams {n_streams}", f"--peer {peer}", f"--engine {settings.engine}", f"--device {settings.device}"]
    if settings.floor:
        parts.append("--floor")
    if settings.busy_poll:
        parts.append("--busy-poll")
    if settings.hop_samples is not None:
        parts.append(f"--hop {settings.hop_samples}")
    return " ".join(parts)


def _ms(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def _whole(value) -> str:
    return "–" if value is None else f"{value:.0f}"


def single_table(result: dict, command: str) -> str:
    lines = [f"Single stream (`{command}`):", "",
             "| system | output | median ms | p95 ms | p99 ms | max ms | forward p99 ms | overhead ms (p99 e2e − p99 fwd) | RTF |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, system in result["systems"].items():
        for transport in ("lsl", "zmq"):
            outputs = system["outputs"].get(transport)
            if not outputs:
                continue
            p = outputs["pooled"]
            label = {"daemon": "daemon", "naive": "naive loop", "relay": "relay (transport floor, no model)"}[name]
            lines.append(f"| {label} | {transport.upper()} | "
                         f"{_ms(p['median_ms'])} | {_ms(p['p95_ms'])} | {_ms(p['p99_ms'])} | {_ms(p['max_ms'])} | "
                         f"{_ms(system['forward_ms']['p99_ms'])} | {_ms(system['overhead_ms'][transport])} | "
                         f"{'–' if system['rtf'] is None else format(system['rtf'], '.3f')} |")
    ratio = result.get("ratio")
    if ratio:
        lines += ["", f"p99 ratio daemon / naive loop (LSL): **{ratio['p99_lsl']:.2f}** (goal ≤ {ratio['goal']:g})"]
    return "\n".join(lines)


def curve_table(curve: list[dict], single_p99_lsl: float | None) -> str:
    lines = ["Streams served by one daemon (`brainformer-rt bench --streams N --peer none`):", "",
             "| streams | LSL p99 ms | ZeroMQ p99 ms | p99 / 1-stream p99 | floor LSL p99 ms | RTF (mean) | engine busy | windows skipped | kept real time | daemon CPU % | RSS MB |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: | ---: | ---: |"]
    for point in curve:
        daemon = point["result"]["systems"]["daemon"]
        lsl = daemon["outputs"]["lsl"]["pooled"]["p99_ms"]
        zmq = daemon["outputs"]["zmq"]["pooled"]["p99_ms"]
        growth = "–" if not (lsl and single_p99_lsl) else f"{lsl / single_p99_lsl:.2f}"
        busy = daemon.get("engine_busy_fraction")
        windows = daemon["windows"]
        floor = (point["result"].get("floor") or {}).get("lsl", {}).get("p99_ms")
        lines.append(f"| {point['n_streams']} | {_ms(lsl)} | {_ms(zmq)} | {growth} | {_ms(floor)} | {daemon['rtf']:.3f} | "
                     f"{'–' if busy is None else f'{busy:.2f}'} | {windows['skipped']} | "
                     f"{'yes' if daemon['real_time']['kept'] else 'no'} | "
                     f"{_whole(daemon['process']['cpu_percent_mean'])} | {_whole(daemon['process']['rss_mb_max'])} |")
    return "\n".join(lines)


def plot_curve(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [point["n_streams"] for point in curve]
    daemons = [point["result"]["systems"]["daemon"] for point in curve]
    figure, (latency_axis, rtf_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for transport, label, colour in (("lsl", "LSL", "tab:blue"), ("zmq", "ZeroMQ", "tab:orange")):
        latency_axis.plot(n, [d["outputs"][transport]["pooled"]["p99_ms"] for d in daemons], "o-", color=colour,
                          label=f"p99 {label}")
        latency_axis.plot(n, [d["outputs"][transport]["pooled"]["median_ms"] for d in daemons], "o--", color=colour,
                          label=f"median {label}")
    floors = [(point.get("result", {}).get("floor") or {}).get("lsl", {}).get("p99_ms") for point in curve]
    if any(f is not None for f in floors):
        latency_axis.plot(n, [f if f is not None else float("nan") for f in floors], "x:", color="grey",
                          label="p99 LSL, relay (transport floor)")
    latency_axis.set_xlabel("EEG streams served by one daemon")
    latency_axis.set_ylabel("end-to-end latency (ms)")
    latency_axis.set_xscale("log", base=2)
    latency_axis.set_xticks(n, [str(v) for v in n])
    latency_axis.grid(True, alpha=0.3)
    latency_axis.legend(fontsize=8)
    rtf_axis.plot(n, [d["rtf"] for d in daemons], "o-", label="real-time factor (forward / hop)")
    rtf_axis.plot(n, [d.get("engine_busy_fraction") for d in daemons], "s--", label="engine busy fraction")
    rtf_axis.axhline(1.0, color="grey", linewidth=0.8)
    rtf_axis.set_xlabel("EEG streams served by one daemon")
    rtf_axis.set_xscale("log", base=2)
    rtf_axis.set_xticks(n, [str(v) for v in n])
    rtf_axis.grid(True, alpha=0.3)
    rtf_axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from brainformer_rt.tools.bench import DEFAULT_DURATION_S, DEFAULT_THREADS, DEFAULT_WARMUP_S

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the JSON and PNG files")
    parser.add_argument("--model", default="default")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="seconds measured per system")
    parser.add_argument("--streams", type=parse_streams, default=[1, 2, 4, 8], help="e.g. 1,2,4,8")
    parser.add_argument("--hop", type=int, default=None)
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    parser.add_argument("--warmup", type=float, default=DEFAULT_WARMUP_S)
    parser.add_argument("--floor", action="store_true", help="also measure the relay (transport floor) in every run")
    parser.add_argument("--busy-poll", action="store_true", help="the daemon spins while waiting for input")
    return parser.parse_args(argv)


def sweep(args: argparse.Namespace, console) -> tuple[dict, str, list[dict]]:
    """(a) then (b): the single-stream results, the command that reproduces them, the curve."""
    from brainformer_rt.commands._bench_report import results_table
    from brainformer_rt.tools.bench import BenchSettings, run_bench

    def settings_for(n_streams: int, peer: str) -> BenchSettings:
        return BenchSettings(model=args.model, duration_s=args.duration, n_streams=n_streams, hop_samples=args.hop,
                             engine=args.engine, device=args.device, peer=peer, warmup_s=args.warmup,
                             threads=args.threads, floor=args.floor, busy_poll=args.busy_poll)

    def progress(line: str) -> None:
        console.print(line, highlight=False)

    single_settings = settings_for(1, "naive")
    console.rule("(a) one stream: daemon, then the naive loop")
    single = run_bench(single_settings, progress)
    console.print(results_table(single))
    curve = [{"n_streams": 1, "command": bench_cli(single_settings, 1, "none"),
              "note": "the daemon phase of the single-stream run", "result": single}]
    for n_streams in [n for n in args.streams if n > 1]:
        console.rule(f"(b) {n_streams} streams, one daemon")
        settings = settings_for(n_streams, "none")
        result = run_bench(settings, progress)
        console.print(results_table(result))
        curve.append({"n_streams": n_streams, "command": bench_cli(settings, n_streams, "none"), "result": result})
    if 1 not in args.streams:
        curve = curve[1:]
    return single, bench_cli(single_settings, 1, "naive"), curve


def markdown_report(args: argparse.Namespace, single: dict, single_command: str, curve: list[dict]) -> str:
    """The tables for docs/benchmarks.md, and what they were measured on."""
    single_p99 = single["systems"]["daemon"]["outputs"]["lsl"]["pooled"]["p99_ms"]
    markdown = single_table(single, single_command)
    if curve:
        markdown += "\n\n" + curve_table(curve, single_p99)
    machine = single["machine"]
    markdown += (f"\n\nMeasured on {machine['cpu_count']} CPU ({machine['cpu_model']}), torch {machine['torch']}, "
                 f"device {machine['device']}, {single['settings']['threads']} torch thread(s), "
                 f"{args.duration:g} s per system after a {args.warmup:g} s warm-up.")
    return markdown


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_loopback_config()
    from rich.console import Console

    from brainformer_rt.commands._bench_report import write_plot
    from brainformer_rt.tools.bench import BenchError, BenchFailure

    console = Console()
    if not reexec_in_loopback_namespace():
        console.print("[yellow]warning:[/] no loopback-only network namespace; using the loopback LSL "
                      "configuration alone", highlight=False)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        single, single_command, curve = sweep(args, console)
    except (BenchError, BenchFailure) as error:
        print_error(error)
        return EXIT_USAGE if isinstance(error, BenchError) else EXIT_FAILURE

    report = {"single_stream": {"command": single_command, "result": single}, "streams_curve": curve,
              "elapsed_s": time.time() - started}
    json_path = args.out / "bench_latency.json"
    json_path.write_text(json.dumps(report, indent=1))
    write_plot(single, args.out / "latency_single.png")
    if curve:
        plot_curve(curve, args.out / "streams_curve.png")
    markdown = markdown_report(args, single, single_command, curve)
    (args.out / "bench_latency.md").write_text(markdown + "\n")
    console.rule("markdown for docs/benchmarks.md")
    print(markdown)  # plain text, so it can be copied as is
    console.print(f"\nwritten: {json_path}, {args.out / 'latency_single.png'}"
                  + (f", {args.out / 'streams_curve.png'}" if curve else "") + f", {args.out / 'bench_latency.md'}",
                  highlight=False)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
