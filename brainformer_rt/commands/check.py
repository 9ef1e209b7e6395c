"""`brainformer-rt check` (no torch: it never runs a model): would ``serve`` serve this stream?

Resolves the stream, reads its full meta-data and prints the adaptation plan that ``serve``
would use — unit factors, channel mapping, ignored channels, another cap placed on the model's
head, interpolated electrodes with their distances, resampling ratio and delay — and, for a model
with linear path statistics, what this cap is expected to give (r and R² next to the model's full
cap), without serving; then the delay the model's filters put on the brain signal (what ``serve``
publishes with its outputs). Exit code 0 when it would serve, 2 with the reason when it would not
(1 when the stream never appeared).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from brainformer_rt.commands.common import LSL_CONFIG_HELP, use_lsl_config


def check(
    stream: str = typer.Option(..., "--stream", help="LSL stream name (or type) of the EEG."),
    model: str = typer.Option("default", "--model", help="Model directory or `default`."),
    montage: Optional[str] = typer.Option(None, "--montage", help="Electrode positions of the stream: an MNE montage name (standard_1020) or a file."),
    input_unit: Optional[str] = typer.Option(None, "--input-unit", help="Unit of the stream's EEG (uV, mV, V, -6 …), overriding its meta-data."),
    channel_map: Optional[Path] = typer.Option(None, "--channel-map", help="TOML file of \"stream label\" = \"model label\" pairs."),
    max_missing: Optional[float] = typer.Option(None, "--max-missing", help="Largest fraction of the model's electrodes that may be missing and interpolated (default: no limit for a model with linear path statistics, else 0.25)."),
    min_expected_share: float = typer.Option(0.5, "--min-expected-share", help="Refuse a cap expected to give less than this share of the model's full-cap r."),
    wait: float = typer.Option(10.0, "--wait", help="Seconds to wait for the stream."),
    lsl_config: Optional[Path] = typer.Option(None, "--lsl-config", help=LSL_CONFIG_HELP),
) -> None:
    """Print how a live EEG stream would be adapted to the model, without serving it."""
    use_lsl_config(lsl_config)
    from brainformer.adaptation import AdaptationError, plan_adaptation, source_from_lsl_xml
    from brainformer.adaptation.resolve import check_expected_quality, resolve_linear_path
    from brainformer.commands.common import fail
    from brainformer.errors import EXIT_FAILURE
    from brainformer.model_dir import load_fields, resolve_model_dir
    from brainformer.preprocessing import PreprocessingError, eeg_preprocessor
    from brainformer_rt.serving.adapt import adaptation_options, linear_path_of
    from brainformer_rt.serving.delay import describe_delay, published_delay

    if not 0.0 <= min_expected_share <= 1.0:
        fail(f"--min-expected-share must be a fraction in [0, 1], got {min_expected_share:g}")
    try:
        fields = load_fields(model)
        statistics, full = linear_path_of(resolve_model_dir(model), fields)
    except (ValueError, FileNotFoundError) as error:  # ModelDirError, StatisticsError are ValueErrors
        fail(f"model {model!r}: {error}" if isinstance(error, FileNotFoundError) else error)
    try:
        options = adaptation_options(channel_map=None if channel_map is None else str(channel_map), montage=montage,
                                     input_unit=input_unit, max_missing_fraction=max_missing,
                                     has_statistics=statistics is not None)
    except AdaptationError as error:
        fail(error)

    import pylsl

    from brainformer_rt.serving.inlet import StreamNotFoundError, find_stream

    try:
        info = find_stream(stream, wait)
    except StreamNotFoundError as error:
        fail(error, EXIT_FAILURE)
    except ValueError as error:  # a name liblsl cannot look up
        fail(error)
    inlet = pylsl.StreamInlet(info)
    try:
        xml = inlet.info(10.0).as_xml()
    except Exception as error:  # noqa: BLE001 - liblsl timeout
        fail(f"LSL stream {stream!r}: its meta-data did not come: {error}", EXIT_FAILURE)
    finally:
        inlet.close_stream()
    try:
        source = source_from_lsl_xml(xml)
        plan = plan_adaptation(fields, source, options)
        eeg_preprocessor(fields, plan.output_sfreq_hz)  # the filters must be buildable at that rate
        delay = published_delay(fields)
        quality = None if statistics is None else resolve_linear_path(plan, fields, statistics, full).quality
        if quality is not None:
            check_expected_quality(quality, min_expected_share, source.name)
    except (AdaptationError, PreprocessingError) as error:
        fail(error)
    from rich.console import Console

    console = Console(highlight=False, markup=False)
    console.print(plan.describe(), soft_wrap=True)
    if quality is not None:
        console.print(f"  {quality.describe()}", soft_wrap=True)
    else:
        console.print(f"  no expected quality: model {model!r} has no linear path statistics (`brainformer statistics` "
                      "adds them)", soft_wrap=True)
    console.print(describe_delay(delay, int(fields.hop_samples), float(fields.sfreq_hz)), soft_wrap=True)
    console.print(f"ok: {stream!r} can be served by model {model!r}", soft_wrap=True)
