"""`brainformer-rt simulate`: play a recording's EEG (or the simulator's) into LSL until done or
stopped (the player is `brainformer_rt.tools.player`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from brainformer_rt.commands.common import LSL_CONFIG_HELP, use_lsl_config


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
    timestamp_offset: float = typer.Option(
        0.0, "--timestamp-offset", hidden=True,
        help="Testing hook: add S seconds to every sample's timestamp (not to when it is pushed), as a source "
             "whose clock is behind (S < 0) or ahead (S > 0); e.g. -0.6 makes every sample arrive 0.6 s old."),
    clock_ppm: float = typer.Option(
        0.0, "--clock-ppm", hidden=True,
        help="Benchmark hook: the source's clock runs PPM parts per million fast (> 0) or slow (< 0): samples "
             "come at the nominal rate × (1 + PPM·1e-6), stamped when they are pushed, as from an amplifier's crystal."),
    clock_file: Optional[Path] = typer.Option(
        None, "--clock-file", hidden=True,
        help="Benchmark hook: once the first chunk is out, write the playback clock to this JSON file "
             "(t_start, start_sample, n_samples, sfreq_hz: stream sample k is due at t_start + k / sfreq_hz "
             "and is sample (start_sample + k) mod n_samples of the recording)."),
    lsl_config: Optional[Path] = typer.Option(None, "--lsl-config", help=LSL_CONFIG_HELP),
    # -- another amplifier, made from the recording offline (test sources for the adaptation) --
    unit: Optional[str] = typer.Option(None, "--unit", help="Send the EEG in this unit and declare it: uV | mV | V."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Resample the EEG offline to this rate (Hz) and declare it."),
    drop: Optional[str] = typer.Option(None, "--drop", help="Leave these EEG channels out: CH,CH,…"),
    cap: Optional[str] = typer.Option(None, "--cap", help="Send the EEG of a standard_1020 cap (32 electrodes; standard_1020:19 for the 19 of 10-20) placed on the recording's head as serve places it; positions in the meta-data."),
    with_aux: bool = typer.Option(False, "--with-aux", help="Also play the EOG and stimulus channels."),
    flat: Optional[str] = typer.Option(
        None, "--flat", hidden=True,
        help="Testing hook: CH@SECONDS[,CH@SECONDS…]: the channel holds its value from that second of the stream on."),
) -> None:
    """Play the EEG of a recording (or of the simulator) into LSL at the real rate."""
    use_lsl_config(lsl_config)
    simulate_command(file=file, synthetic=synthetic, name=name, stream_type=stream_type, chunk=chunk,
                     loop=loop, duration=duration, source_id=source_id, aligned=aligned,
                     timestamp_offset=timestamp_offset, clock_ppm=clock_ppm, clock_file=clock_file,
                     source_options=dict(unit=unit, rate=rate, drop=drop, cap=cap, with_aux=with_aux, flat=flat))


def simulate_command(
    file: Optional[Path] = None,
    synthetic: Optional[str] = None,
    name: str = "EEG-sim",
    stream_type: str = "EEG",
    chunk: int = 1,
    loop: bool = False,
    duration: Optional[float] = None,
    source_id: Optional[str] = None,
    aligned: bool = False,
    timestamp_offset: float = 0.0,
    clock_ppm: float = 0.0,
    source_options: Optional[dict] = None,
    clock_file: Optional[Path] = None,
) -> None:
    """Check the options, open the source, play it until done or stopped, print a summary.
    ``source_options``: ``unit, rate, drop, cap, with_aux, flat`` of the command (another
    amplifier made from the recording, see ``tools.player.prepared_recording``); ``clock_file``:
    where the playback clock goes once the first chunk is out (``Player.playback_clock``)."""
    from rich.console import Console

    from brainformer.commands.common import fail
    from brainformer.paths import SAMPLE_RECORDING
    from brainformer_rt.commands._cli_logging import setup_cli_logging
    from brainformer_rt.serving.signals import StopRequest
    from brainformer_rt.tools.player import Player, RecordingSource, SyntheticSource

    setup_cli_logging()
    if file is not None and synthetic is not None:
        fail("give either --file or --synthetic, not both")
    if chunk < 1:
        fail(f"--chunk must be >= 1, got {chunk}")
    if duration is not None and duration <= 0:
        fail(f"--duration must be positive, got {duration:g}")
    if not math.isfinite(timestamp_offset):
        fail(f"--timestamp-offset must be finite, got {timestamp_offset:g}")
    if not (math.isfinite(clock_ppm) and abs(clock_ppm) < 1e5):
        fail(f"--clock-ppm must be a finite number of parts per million below 100000 in size, got {clock_ppm:g}")
    recording = file if file is not None else SAMPLE_RECORDING
    prepared = {k: v for k, v in (source_options or {}).items() if v not in (None, False, "")}
    if prepared and synthetic is not None:
        fail(f"{', '.join('--' + k.replace('_', '-') for k in prepared)} apply to a recording, not to --synthetic")
    try:
        if prepared:
            source = _prepared_source(recording, prepared, loop)
        else:
            source = SyntheticSource(synthetic) if synthetic is not None else RecordingSource.from_file(recording, loop=loop)
    except (ImportError, ValueError) as error:
        fail(error)
    player = Player(source, name=name, stream_type=stream_type, chunk_samples=chunk, source_id=source_id,
                    duration_s=duration, aligned=aligned, timestamp_offset_s=timestamp_offset,
                    clock_error_ppm=clock_ppm)
    console = Console(highlight=False)
    what = f"synthetic '{synthetic}'" if synthetic else str(recording)
    console.print(
        f"playing {what}: {len(source.channel_names)} EEG channels at {source.sfreq_hz:g} Hz, "
        f"chunks of {chunk} → LSL stream [bold]{name}[/] (type {stream_type}, source_id {player.source_id})",
        soft_wrap=True,
    )
    from brainformer_rt.tools.demo.files import write_json

    def write_clock(started: Player) -> None:
        write_json(clock_file, started.playback_clock())  # atomic: the reader polls for it

    with StopRequest(interrupt=False, on_stop=player.stop):
        player.run(write_clock if clock_file is not None else None)
    s = player.summary()
    console.print(
        f"stopped after {s['samples']} samples ({s['seconds']:.1f} s), {s['overruns']} overruns, "
        f"lateness mean {s['lateness_mean_ms']:.3f} ms / max {s['lateness_max_ms']:.3f} ms",
        soft_wrap=True,
    )


def _prepared_source(recording: Path, options: dict, loop: bool):
    """``--unit/--rate/--drop/--cap/--with-aux/--flat`` → the prepared recording; ValueError
    naming the option."""
    from brainformer_rt.tools.player import prepared_recording

    drop = [name.strip() for name in (options.get("drop") or "").split(",") if name.strip()]
    flat = []
    for item in (options.get("flat") or "").split(","):
        if not item.strip():
            continue
        channel, _, seconds = item.rpartition("@")
        try:
            flat.append((channel.strip(), float(seconds)))
        except ValueError:
            raise ValueError(f"--flat expects CH@SECONDS, got {item!r}") from None
    return prepared_recording(recording, unit=options.get("unit"), rate_hz=options.get("rate"), drop=drop,
                              cap=options.get("cap"), with_aux=bool(options.get("with_aux")), flat=flat, loop=loop)
