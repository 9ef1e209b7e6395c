"""`brainformer-rt`: serve predicted MEG from live EEG, and the tools around it.

Every command that touches LSL points liblsl at a loopback-only configuration before pylsl is
imported (see lsl_config.py); `--lsl-config` chooses another file explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    name="brainformer-rt",
    help="Real-time EEG→MEG: LSL in, predicted MEG out on LSL and ZeroMQ.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

LSL_CONFIG_HELP = "liblsl configuration file (default: the loopback-only one shipped with the package)."


def _lsl(config_file: Optional[Path]) -> None:
    from brainformer_rt.lsl_config import use_loopback_config

    use_loopback_config(config_file)


@app.command()
def serve(
    stream: List[str] = typer.Option([], "--stream", help="LSL stream name (or type) of the EEG; repeat to serve several."),
    model: Optional[str] = typer.Option(None, "--model", help="Model directory or `default`."),
    zmq: Optional[str] = typer.Option(None, "--zmq", help="ZeroMQ PUB address (default tcp://127.0.0.1:5556)."),
    no_zmq: bool = typer.Option(False, "--no-zmq", help="Do not publish on ZeroMQ."),
    lsl_name: Optional[str] = typer.Option(None, "--lsl-name", help="Name of the output LSL stream (default brainformer-meg)."),
    hop: Optional[int] = typer.Option(None, "--hop", help="New samples between two predictions (default: the model's)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda"),
    engine: Optional[str] = typer.Option(None, "--engine", help="auto | eager | compile | aot | cuda-graph"),
    config: Optional[Path] = typer.Option(None, "--config", help="Serve TOML (configs/serve.toml); flags override it."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Stop after this many seconds."),
    wait: Optional[float] = typer.Option(None, "--wait", help="Seconds to wait for the stream before giving up."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Serve Prometheus metrics on 127.0.0.1:PORT."),
    metrics_host: Optional[str] = typer.Option(None, "--metrics-host", help="Address of the metrics server (default 127.0.0.1)."),
    log_format: Optional[str] = typer.Option(None, "--log-format", help="text | json"),
    zmq_curve_keys: Optional[Path] = typer.Option(None, "--zmq-curve-keys", help="Directory with CURVE keys for ZeroMQ."),
    stats_json: Optional[Path] = typer.Option(None, "--stats-json", help="Write the final statistics to this JSON file."),
    busy_poll: bool = typer.Option(False, "--busy-poll", help="Spin instead of sleeping while waiting for input: lower latency for one core at 100 %."),
    lsl_config: Optional[Path] = typer.Option(None, "--lsl-config", help=LSL_CONFIG_HELP),
) -> None:
    """Serve predicted MEG for one or more live EEG streams."""
    _lsl(lsl_config)
    from brainformer_rt.daemon import serve_command

    serve_command(
        stream=stream, model=model, zmq=zmq, no_zmq=no_zmq, lsl_name=lsl_name, hop=hop, device=device,
        engine=engine, config_file=config, duration=duration, wait=wait, metrics_port=metrics_port,
        metrics_host=metrics_host,
        log_format=log_format, zmq_curve_keys=zmq_curve_keys, stats_json=stats_json,
        busy_poll=busy_poll or None,  # not given: the config file (or the default) decides
    )


@app.command()
def simulate(
    file: Optional[Path] = typer.Option(None, "--file", help="Recording to play (default: the bundled sample recording)."),
    synthetic: Optional[str] = typer.Option(None, "--synthetic", help="Stream the physics simulator instead: sample | ds000117."),
    name: str = typer.Option("EEG-sim", "--name", help="LSL stream name."),
    stream_type: str = typer.Option("EEG", "--type", help="LSL stream type."),
    chunk: int = typer.Option(1, "--chunk", help="Samples per pushed chunk."),
    loop: bool = typer.Option(False, "--loop", help="Start again at the end of the recording."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Stop after this many seconds."),
    source_id: Optional[str] = typer.Option(None, "--source-id", help="LSL source_id (default derived from the name)."),
    aligned: bool = typer.Option(False, "--aligned", help="Push chunks at whole multiples of the chunk period, so players push together."),
    lsl_config: Optional[Path] = typer.Option(None, "--lsl-config", help=LSL_CONFIG_HELP),
) -> None:
    """Play the EEG of a recording (or of the simulator) into LSL at the real rate."""
    _lsl(lsl_config)
    from brainformer_rt.player import simulate_command

    simulate_command(file=file, synthetic=synthetic, name=name, stream_type=stream_type, chunk=chunk,
                     loop=loop, duration=duration, source_id=source_id, aligned=aligned)


@app.command()
def listen(
    lsl: Optional[str] = typer.Option(None, "--lsl", help="Name of the LSL stream to read."),
    zmq: Optional[str] = typer.Option(None, "--zmq", help="ZeroMQ address to subscribe to."),
    topic: str = typer.Option("", "--topic", help="ZeroMQ topic prefix."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Stop after this many seconds."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write latency statistics to this JSON file."),
    curve_server_key: Optional[Path] = typer.Option(None, "--curve-server-key", help="CURVE: the publisher's server.key."),
    curve_client_key: Optional[Path] = typer.Option(None, "--curve-client-key", help="CURVE: this subscriber's NAME.key_secret."),
    lsl_config: Optional[Path] = typer.Option(None, "--lsl-config", help=LSL_CONFIG_HELP),
) -> None:
    """Reference subscriber: drain LSL or ZeroMQ, keep the newest, show rate and latency."""
    _lsl(lsl_config)
    from brainformer_rt.listener import listen_command

    listen_command(lsl=lsl, zmq=zmq, topic=topic, duration=duration, json_path=json_path,
                   curve_server_key=curve_server_key, curve_client_key=curve_client_key)


@app.command()
def streams(
    timeout: float = typer.Option(1.5, "--timeout", help="Seconds to look for streams."),
    lsl_config: Optional[Path] = typer.Option(None, "--lsl-config", help=LSL_CONFIG_HELP),
) -> None:
    """List the LSL streams that are visible."""
    _lsl(lsl_config)
    from brainformer_rt.inlet import streams_command

    streams_command(timeout=timeout)


@app.command()
def bench(
    model: Optional[str] = typer.Option(None, "--model", help="Model directory or `default`."),
    duration: float = typer.Option(60.0, "--duration", help="Seconds of streaming measured (after warm-up)."),
    streams_n: int = typer.Option(1, "--streams", help="Number of EEG streams served by one daemon."),
    hop: Optional[int] = typer.Option(None, "--hop", help="New samples between two predictions (default: the model's)."),
    engine: str = typer.Option("auto", "--engine", help="auto | eager | compile | aot | cuda-graph"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write every figure (and the raw latencies) to this JSON file."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Latency histogram / CDF PNG."),
    peer: str = typer.Option("naive", "--peer", help="naive | none: also run the naive loop for a ratio."),
    floor: bool = typer.Option(False, "--floor", help="Also run a relay with no model: the transport floor of this machine."),
    busy_poll: bool = typer.Option(False, "--busy-poll", help="The daemon serves with `serve --busy-poll`."),
    aligned: bool = typer.Option(False, "--aligned", help="Players push in step (one acquisition clock); default: independent phases."),
    lsl_config: Optional[Path] = typer.Option(None, "--lsl-config", help=LSL_CONFIG_HELP),
) -> None:
    """End-to-end latency benchmark: player → daemon → subscriber, in one command."""
    _lsl(lsl_config)
    from brainformer_rt.bench import bench_command

    bench_command(model=model, duration=duration, n_streams=streams_n, hop=hop, engine=engine, device=device,
                  json_path=json_path, plot=plot, peer=peer, floor=floor, busy_poll=busy_poll,
                  aligned=aligned)


@app.command()
def demo(
    duration: float = typer.Option(20.0, "--duration", help="Seconds to run."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Where to write the summary PNG (default ./brainformer-demo.png)."),
    model: str = typer.Option("default", "--model", help="Model directory to serve instead of the bundled default."),
    lsl_config: Optional[Path] = typer.Option(None, "--lsl-config", help=LSL_CONFIG_HELP),
) -> None:
    """Live demo: play the bundled recording, serve the bundled model, compare with the true MEG."""
    _lsl(lsl_config)
    from brainformer_rt.demo import demo_command

    demo_command(duration=duration, plot=plot, model=model)


if __name__ == "__main__":
    app()
