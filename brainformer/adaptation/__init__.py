"""Source adaptation: whatever a real EEG source sends → the model's EEG, in volts, at its rate.

Torch-free, and MNE is imported only while planning. Used the same way by the daemon (live LSL
streams) and offline (recordings)::

    from brainformer.adaptation import Adapter, AdaptationOptions, SourceDescription, plan_adaptation

    plan = plan_adaptation(fields, SourceDescription(name=..., labels=..., units=..., sfreq_hz=...),
                           AdaptationOptions(channel_map="map.toml", max_missing_fraction=0.25))
    print(plan.describe())
    adapter = Adapter(plan)
    eeg, timestamps = adapter.apply(chunk, chunk_timestamps)   # (m, n_model) float32 volts
    adapter.set_plan(plan.with_bad_channels(["EEG 013"]))       # re-planned off the hot path

Modules: `units` (unit spellings → volts, amplitude check), `channels` (label matching, channel
map), `positions` (positions from meta-data or a montage), `coregistration` (another cap placed
on the model's head; positions no placement can mend refused), `metadata` (a stream's
description from its LSL XML), `interpolation` (MNE's spline matrices), `resampling`
(libsamplerate linear or soxr QQ, timestamps), `plan` (`AdaptationPlan`), `adapter` (`Adapter`),
`resolve` (the model's linear path re-solved for a stream's electrodes, and what the cap gives;
imported on its own: ``from brainformer.adaptation.resolve import resolve_linear_path``).
"""

from brainformer.adaptation.adapter import Adapter
from brainformer.adaptation.channels import load_channel_map, match_channels, normalize_label
from brainformer.adaptation.errors import AdaptationError
from brainformer.adaptation.metadata import channel_metadata, source_from_lsl_xml
from brainformer.adaptation.plan import (
    FLOAT_FORMATS,
    AdaptationOptions,
    AdaptationPlan,
    ModelEEG,
    SourceDescription,
    plan_adaptation,
)
from brainformer.adaptation.positions import channel_position, load_montage, montage_positions
from brainformer.adaptation.resampling import RESAMPLER_QUALITY, StreamResampler
from brainformer.adaptation.units import amplitude_warning, volt_factor

__all__ = [
    "FLOAT_FORMATS",
    "RESAMPLER_QUALITY",
    "AdaptationError",
    "AdaptationOptions",
    "AdaptationPlan",
    "Adapter",
    "ModelEEG",
    "SourceDescription",
    "StreamResampler",
    "amplitude_warning",
    "channel_metadata",
    "channel_position",
    "load_channel_map",
    "load_montage",
    "match_channels",
    "montage_positions",
    "normalize_label",
    "plan_adaptation",
    "source_from_lsl_xml",
    "volt_factor",
]
