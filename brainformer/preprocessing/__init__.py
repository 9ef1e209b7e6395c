"""The one causal, stateful preprocessing path shared by training, evaluation and the daemon.

```
raw EEG (n, n_eeg) ─ average reference ─ SOS high-pass ─ SOS low-pass ─ SOS notch ─ decimate ─ scale ─► model
raw MEG (n, n_meg) ─ SSP projections (offline) ─ target band (causal: forward only;
                     zero phase: forward, then backward over the whole recording) ─ decimate ─ scale ─► labels
```

Everything that changes the signal is described by a frozen `PreprocessingSpec`, built once from a
model config and the input sampling rate; a `StreamingPreprocessor` runs a spec over chunks of any
size and carries the filter state and the decimation phase between them, so a recording processed
offline in large chunks gives bit-for-bit the samples the daemon computes online from 16-sample
chunks. The EEG is never filtered with zero phase: the daemon cannot do it live.

The MEG is what the model learns to predict, and exists offline only. By default it goes
through the EEG's causal filters, so the model learns the MEG as those filters delay it (by
their group delay: tens of ms in band, see `delay`). A config with ``target_phase =
"zero_phase"`` asks for the band-limited MEG as it is now: its target is filtered forward and
backward (`zero_phase_backward_pass`), and the model must forecast through the EEG filters' delay.

Scaling: ``scaled = (x - mean) / std`` per channel, with statistics fitted on the training split
(`fit_scaling`) and stored in the model config. A channel whose standard deviation is 0, or below
``FLAT_CHANNEL_RELATIVE_STD`` times the median over channels, is treated as flat: its scale is 0,
so it enters the model as zeros instead of as amplified noise, and un-scaling it yields its mean.

The modules, in reading order:

- `errors`: `PreprocessingError`, `NonFiniteInputError`;
- `scaling`: `ChannelScaling`, the MEG scale/unscale helpers, `ChannelStats` and `fit_scaling`;
- `filters`: filter design, `PreprocessingSpec`, `StreamingPreprocessor` and its two factories,
  the zero-phase target's backward pass;
- `delay`: what the filters delay the brain signal by, per frequency (`design_delay`);
- `recording`: whole MNE recordings offline through the same streaming path.

This package is model-free: it never imports torch or transformers.

Example::

    spec = PreprocessingSpec.for_eeg(config, input_sfreq_hz=600.614990234375)
    pre = StreamingPreprocessor(spec, n_channels=config.n_eeg_channels)
    out, out_timestamps = pre.process(chunk, timestamps)  # (m, n_eeg) float32, (m,) float64
"""

from __future__ import annotations

from brainformer.preprocessing.errors import NonFiniteInputError, PreprocessingError
from brainformer.preprocessing.filters import (
    ANTI_ALIAS_FRACTION,
    ANTI_ALIAS_ORDER,
    ANTI_ALIAS_RIPPLE_DB,
    RATE_RELATIVE_TOLERANCE,
    FilterBand,
    PreprocessingSpec,
    StreamingPreprocessor,
    decimation_factor,
    design_band,
    eeg_preprocessor,
    input_band,
    is_zero_phase_target,
    meg_preprocessor,
    target_band,
    zero_phase_backward_pass,
)
from brainformer.preprocessing.delay import (
    BANDS_HZ,
    DelayAt,
    SignalDelay,
    design_delay,
    filter_delay,
)
from brainformer.preprocessing.recording import (
    DEFAULT_CHUNK_SAMPLES,
    PreprocessedRecording,
    check_raw_compatible,
    decimation_factor_for_raw,
    finish_meg_target,
    iter_preprocessed_chunks,
    needs_resampling,
    preprocess_recording,
    raw_source_name,
)
from brainformer.preprocessing.scaling import (
    FLAT_CHANNEL_RELATIVE_STD,
    ChannelScaling,
    ChannelStats,
    eeg_scaling,
    fit_scaling,
    meg_scaling,
    scale_meg,
    unscale_meg,
    without_scaling,
)

__all__ = [
    "ANTI_ALIAS_FRACTION",
    "ANTI_ALIAS_ORDER",
    "ANTI_ALIAS_RIPPLE_DB",
    "DEFAULT_CHUNK_SAMPLES",
    "FLAT_CHANNEL_RELATIVE_STD",
    "RATE_RELATIVE_TOLERANCE",
    "BANDS_HZ",
    "ChannelScaling",
    "ChannelStats",
    "DelayAt",
    "FilterBand",
    "SignalDelay",
    "NonFiniteInputError",
    "PreprocessedRecording",
    "PreprocessingError",
    "PreprocessingSpec",
    "StreamingPreprocessor",
    "check_raw_compatible",
    "decimation_factor",
    "decimation_factor_for_raw",
    "design_band",
    "design_delay",
    "eeg_preprocessor",
    "eeg_scaling",
    "filter_delay",
    "finish_meg_target",
    "fit_scaling",
    "input_band",
    "is_zero_phase_target",
    "iter_preprocessed_chunks",
    "meg_preprocessor",
    "meg_scaling",
    "needs_resampling",
    "preprocess_recording",
    "raw_source_name",
    "scale_meg",
    "target_band",
    "unscale_meg",
    "without_scaling",
    "zero_phase_backward_pass",
]
