"""Configuration of the Brainformer EEG → MEG model.

A `BrainformerConfig` holds everything needed to build, train and serve a model: channel layout,
timing, model size, head, and the preprocessing parameters (filters and per-channel scaling
statistics). A model directory (`config.json` + `model.safetensors`) is therefore self-sufficient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from brainformer.config_fields import (
    DEFAULT_EEG_CHANNEL_NAMES,
    DEFAULT_MEG_CHANNEL_NAMES,
    DEFAULT_MEG_CHANNEL_TYPES,
    FIELD_NAMES,
    MODEL_TYPE,
    TRANSFORMERS_KEYS,
    BrainformerFields,
    DerivedFields,
    check_model_type,
    check_no_unknown_arguments,
    validate_fields,
)

__all__ = [
    "BrainformerConfig",
    "DEFAULT_EEG_CHANNEL_NAMES",
    "DEFAULT_MEG_CHANNEL_NAMES",
    "DEFAULT_MEG_CHANNEL_TYPES",
]


def _generation_keys() -> frozenset[str]:
    """Generation parameters `transformers` may set on any config (e.g. the `Trainer` writes
    ``use_cache``); read from `GenerationConfig` so a new transformers version needs no edit."""
    try:
        from transformers import GenerationConfig

        return frozenset(GenerationConfig._get_default_generation_params())
    except (ImportError, AttributeError):  # older transformers: no such helper
        return frozenset()


# Runtime keys that transformers itself injects into a config (the `Trainer`, `from_pretrained`,
# generation utilities, older config.json files); accepted and stored as plain attributes.
_RUNTIME_KEYS = frozenset(
    {
        "use_cache",
        "tie_word_embeddings",
        "torchscript",
        "pruned_heads",
        "use_bfloat16",
        "tf_legacy_loss",
        "add_cross_attention",
        "is_decoder",
        "cross_attention_hidden_size",
        "tokenizer_class",
        "prefix",
        "task_specific_params",
        "finetuning_task",
        "output_attentions",
        "gradient_checkpointing",
    }
) | _generation_keys()

# Keys that `PretrainedConfig` itself writes into config.json or accepts from `from_pretrained`;
# everything else unknown is a typo and is refused rather than silently stored.
_PRETRAINED_CONFIG_KEYS = frozenset(
    TRANSFORMERS_KEYS
    | (
        {field.name for field in dataclasses.fields(PretrainedConfig)}
        if dataclasses.is_dataclass(PretrainedConfig)
        else set()
    )
    | _RUNTIME_KEYS
)


# The defaults of every field, in one place (the torch-free `BrainformerFields`).
_DEFAULTS = BrainformerFields()


class BrainformerConfig(DerivedFields, PretrainedConfig):
    r"""
    Configuration of a Brainformer model, which predicts MEG `(batch, time, n_meg)` from EEG
    `(batch, time, n_eeg)`. Every argument is validated here; a wrong value raises `ValueError`
    naming the field, the value and what is allowed. Unknown keyword arguments are an error.

    Channels:
        eeg_channel_names (`list[str]`, defaults to the 60 names `"EEG 001"` … `"EEG 060"`):
            Input EEG channels, in the order of the model's input columns. The daemon re-orders
            incoming streams by these labels.
        meg_channel_names (`list[str]`, defaults to the 306 Neuromag names of the sample recording):
            Predicted MEG channels, in the order of the model's output columns.
        meg_channel_types (`list[str]`, defaults to `grad, grad, mag` × 102):
            `"mag"` or `"grad"` for each MEG channel; same length as `meg_channel_names`.
        eeg_positions_m (`list[list[float]]` or `None`, defaults to `None`):
            Position `[x, y, z]` of each EEG electrode, in metres, head frame, in the order of
            `eeg_channel_names` (filled from the recording's montage by `brainformer prepare`).
            Used to interpolate electrodes a stream lacks or that go bad, and to map streams
            from another cap onto the model's electrodes; `None` refuses both.
        eeg_fiducials_m (`list[list[float]]` or `None`, defaults to `None`):
            The head's fiducials `[nasion, LPA, RPA]`, each `[x, y, z]` in metres, head frame
            (filled from the recording's digitisation by `brainformer prepare`). A cap given by
            a montage is brought onto the model's head from its own fiducials to these; `None`:
            from the electrodes alone.

    Timing:
        sfreq_hz (`float`, defaults to 600.614990234375):
            Sampling rate of the model's input and output, in Hz (after any decimation).
        window_samples (`int`, defaults to 256):
            Samples per window; the model sees and predicts one window per forward.
        hop_samples (`int`, defaults to 16):
            Default serving hop: a new window every `hop_samples` samples (1 ≤ hop ≤ window).
        patch_len (`int`, defaults to 64):
            Samples per DSW segment (one token per channel and segment); must divide
            `window_samples`. `1` gives one token per sample, as in the original brainformer.
            The cost of a forward grows with the number of segments (`window_samples // patch_len`).

    Size:
        d_model (`int`, defaults to 64): Width of every token.
        n_heads (`int`, defaults to 4): Attention heads; must divide `d_model`.
        n_layers (`int`, defaults to 1): Layers in the encoder and in the decoder (each).
        d_ff (`int`, defaults to 128): Hidden width of the feed-forward blocks.
        router_dim (`int`, defaults to 10):
            Learned router vectors per segment in the channel stage of Two-Stage Attention.
        dropout (`float`, defaults to 0.1): Dropout probability, in [0, 1).
        position_embedding (`str`, defaults to `"learned"`):
            Segment position embedding: `"learned"` or `"sinusoidal"`.
        final_norm (`bool`, defaults to `True`):
            A LayerNorm on the encoder's and the decoder's output tokens. It makes the tokens
            blind to the EEG's scale; the gain head and the envelope features carry it instead.

    Head:
        head (`str`, defaults to `"regression"`):
            `"regression"` predicts continuous scaled MEG; `"tokens"` predicts quantized MEG tokens.
        loss (`str`, defaults to `"mse"`): Regression loss, `"mse"` or `"huber"`.
        huber_delta (`float`, defaults to 1.0): Huber transition point, in scaled units.
        n_quantization_levels (`int`, defaults to 255):
            Quantization levels of the tokens head; token ids 0/1/2 are pad/bos/eos.
        quantization_clip (`float`, defaults to 4.0):
            Scaled MEG values are clipped to ±this before quantization.
        skip_lags (`int`, defaults to 0):
            Length in samples of a causal lagged-linear EEG → MEG skip path added to the
            regression output; 0 disables it.
        gain_filters (`int`, defaults to 0):
            The gain head (regression only; 0 disables it): `gain_filters` learned linear filters
            of the EEG whose outputs the trunk weighs, per MEG channel and output sample, and adds
            to the prediction, `Σ_k scale[c, k] · gain[c, k](t) · (filter_k ∗ EEG)(t)`. Its output
            grows with the EEG's amplitude, as a gain times a linear filter of the EEG does: what
            a projection of LayerNormed tokens cannot express. The gains start at zero.
        gain_filter_past_samples (`int`, defaults to 32):
            Taps of each gain filter into the past, the current sample included (≤ `window_samples`).
        gain_filter_lookahead_samples (`int`, defaults to 0):
            Taps into the future inside the window (zeros beyond its newest sample): a served
            window's older samples may use the newer ones it holds.
        envelope_filters (`int`, defaults to 0):
            Learned amplitude features (0 disables them): `envelope_filters` causal filters of
            the EEG (a spatial filter, then a pair of temporal ones, which can learn a band and
            its quadrature), the pair's squared outputs summed (a squared envelope), averaged
            over each segment, in log, embedded and added to every EEG token and MEG query of
            that segment.
        envelope_filter_samples (`int`, defaults to 64):
            Taps of each envelope filter's temporal part (≤ `window_samples`).
        hop_lookahead_past_samples (`int`, defaults to 0):
            The linear path's use of the served hop's own future (0 disables it; needs the skip
            path): each output sample `j` samples before its hop's newest one gets a linear map of
            its own on those `j` future samples and its newest `hop_lookahead_past_samples`
            samples, fitted in closed form to what the skip path leaves. A window is served once
            its newest sample is in, so this costs no delay.
        hop_lookahead_rank (`int`, defaults to 0):
            0: each position's map is full (`n_meg` × its inputs). Otherwise every map is cut to
            this rank on one output basis shared by the positions (`n_meg` × rank): the
            reduced-rank ridge of the full maps, far fewer weights to read per hop.

    Preprocessing:
        highpass_hz (`float` or `None`, defaults to 1.0): Butterworth high-pass cut-off.
        lowpass_hz (`float` or `None`, defaults to 40.0): Butterworth low-pass cut-off.
        filter_order (`int`, defaults to 4): Order of the Butterworth filters (SOS form).
        notch_hz (`list[float]`, defaults to `[60.0]`): Line-noise notch frequencies.
        notch_quality (`float`, defaults to 30.0): Quality factor of each notch.
        target_phase (`str`, defaults to `"causal"`):
            How the MEG the model learns to predict is filtered. `"causal"`: through causal
            filters, as the EEG is, so the prediction lags the brain by their group delay (tens
            of ms in band; `brainformer.preprocessing.design_delay` gives it). `"zero_phase"`:
            forward and backward through the target band, offline, so the model learns to
            predict the band-limited MEG as it is now and must forecast through the input
            filters' delay.
        target_band_hz (`list` of two `float` or `None`, or `None`, defaults to `None`):
            `[high-pass, low-pass]` Butterworth cut-offs of the target (either may be `None`);
            `None` uses the input filters (`highpass_hz`, `lowpass_hz`).
        target_filter_order (`int` or `None`, defaults to `None`):
            Order of the target's Butterworth filters; `None` uses `filter_order`. A zero-phase
            target passes them twice: its magnitude response is their square.
        eeg_reference (`str`, defaults to `"average"`): `"average"` or `"none"`.
        eeg_mean (`list[float]` or `None`, defaults to `None`):
            Per-EEG-channel mean subtracted before scaling (fitted on the training split).
        eeg_std (`list[float]` or `None`, defaults to `None`):
            Per-EEG-channel standard deviation (≥ 0; 0 marks a flat channel that is zeroed).
        meg_mean (`list[float]` or `None`, defaults to `None`): Per-MEG-channel mean.
        meg_std (`list[float]` or `None`, defaults to `None`): Per-MEG-channel standard deviation.

    Example:

    ```python
    >>> from brainformer import BrainformerConfig
    >>> config = BrainformerConfig(
    ...     eeg_channel_names=[f"EEG {i:03d}" for i in range(1, 71)], sfreq_hz=1100.0, lowpass_hz=100.0
    ... )
    >>> config.n_eeg_channels, config.n_meg_channels, config.n_segments, config.vocab_size
    (70, 306, 4, 258)

    ```
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        eeg_channel_names: Sequence[str] | None = None,
        meg_channel_names: Sequence[str] | None = None,
        meg_channel_types: Sequence[str] | None = None,
        eeg_positions_m: Sequence[Sequence[float]] | None = None,
        eeg_fiducials_m: Sequence[Sequence[float]] | None = None,
        sfreq_hz: float = _DEFAULTS.sfreq_hz,
        window_samples: int = _DEFAULTS.window_samples,
        hop_samples: int = _DEFAULTS.hop_samples,
        patch_len: int = _DEFAULTS.patch_len,
        d_model: int = _DEFAULTS.d_model,
        n_heads: int = _DEFAULTS.n_heads,
        n_layers: int = _DEFAULTS.n_layers,
        d_ff: int = _DEFAULTS.d_ff,
        router_dim: int = _DEFAULTS.router_dim,
        dropout: float = _DEFAULTS.dropout,
        position_embedding: str = _DEFAULTS.position_embedding,
        final_norm: bool = _DEFAULTS.final_norm,
        head: str = _DEFAULTS.head,
        loss: str = _DEFAULTS.loss,
        huber_delta: float = _DEFAULTS.huber_delta,
        n_quantization_levels: int = _DEFAULTS.n_quantization_levels,
        quantization_clip: float = _DEFAULTS.quantization_clip,
        skip_lags: int = _DEFAULTS.skip_lags,
        gain_filters: int = _DEFAULTS.gain_filters,
        gain_filter_past_samples: int = _DEFAULTS.gain_filter_past_samples,
        gain_filter_lookahead_samples: int = _DEFAULTS.gain_filter_lookahead_samples,
        envelope_filters: int = _DEFAULTS.envelope_filters,
        envelope_filter_samples: int = _DEFAULTS.envelope_filter_samples,
        hop_lookahead_past_samples: int = _DEFAULTS.hop_lookahead_past_samples,
        hop_lookahead_rank: int = _DEFAULTS.hop_lookahead_rank,
        highpass_hz: float | None = _DEFAULTS.highpass_hz,
        lowpass_hz: float | None = _DEFAULTS.lowpass_hz,
        filter_order: int = _DEFAULTS.filter_order,
        notch_hz: Sequence[float] | None = _DEFAULTS.notch_hz,
        notch_quality: float = _DEFAULTS.notch_quality,
        target_phase: str = _DEFAULTS.target_phase,
        target_band_hz: Sequence[float | None] | None = _DEFAULTS.target_band_hz,
        target_filter_order: int | None = _DEFAULTS.target_filter_order,
        eeg_reference: str = _DEFAULTS.eeg_reference,
        eeg_mean: Sequence[float] | None = _DEFAULTS.eeg_mean,
        eeg_std: Sequence[float] | None = _DEFAULTS.eeg_std,
        meg_mean: Sequence[float] | None = _DEFAULTS.meg_mean,
        meg_std: Sequence[float] | None = _DEFAULTS.meg_std,
        **kwargs: Any,
    ) -> None:
        # The named arguments above, read before any other local variable exists.
        arguments = locals()
        fields = {name: arguments[name] for name in FIELD_NAMES}
        check_no_unknown_arguments(set(kwargs) - _PRETRAINED_CONFIG_KEYS - {"model_type"})
        check_model_type(kwargs.pop("model_type", self.model_type))
        # The same rules as the torch-free `BrainformerFields`; stored as plain JSON types.
        for name, value in validate_fields(fields).items():
            setattr(self, name, value)
        super().__init__(**kwargs)


# A model directory's config.json loads with AutoConfig once this module is imported.
AutoConfig.register(BrainformerConfig.model_type, BrainformerConfig, exist_ok=True)
