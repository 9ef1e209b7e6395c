"""Configuration of the Brainformer EEG → MEG model.

A `BrainformerConfig` holds everything needed to build, train and serve a model: channel layout,
timing, model size, head, and the preprocessing parameters (filters and per-channel scaling
statistics). A model directory (`config.json` + `model.safetensors`) is therefore self-sufficient.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

from transformers import PretrainedConfig

__all__ = [
    "BrainformerConfig",
    "DEFAULT_EEG_CHANNEL_NAMES",
    "DEFAULT_MEG_CHANNEL_NAMES",
    "DEFAULT_MEG_CHANNEL_TYPES",
]

# The 102 Neuromag sensor triplets of the bundled sample recording, in its channel order. Each code
# is the triplet's first gradiometer; the triplet is (that gradiometer, the other gradiometer, the
# magnetometer ending in 1). The gradiometer order inside a triplet differs between sensors
# (0113, 0112 but 0122, 0123), so it is stored rather than derived.
_NEUROMAG_TRIPLET_FIRST_GRAD = """
0113 0122 0132 0143 0213 0222 0232 0243 0313 0322 0333 0343 0413 0422 0432 0443 0513 0523 0532
0542 0613 0622 0633 0642 0713 0723 0733 0743 0813 0822 0913 0923 0932 0942 1013 1023 1032 1043
1112 1123 1133 1142 1213 1223 1232 1243 1312 1323 1333 1342 1412 1423 1433 1442 1512 1522 1533
1543 1613 1622 1632 1643 1713 1722 1732 1743 1813 1822 1832 1843 1912 1923 1932 1943 2013 2023
2032 2042 2113 2122 2133 2143 2212 2223 2233 2242 2312 2323 2332 2343 2412 2423 2433 2442 2512
2522 2533 2543 2612 2623 2633 2642
""".split()


def _neuromag_channels() -> tuple[tuple[str, ...], tuple[str, ...]]:
    names: list[str] = []
    types: list[str] = []
    for first_grad in _NEUROMAG_TRIPLET_FIRST_GRAD:
        location, last_digit = first_grad[:3], first_grad[3]
        other_grad = "2" if last_digit == "3" else "3"
        names += [f"MEG {first_grad}", f"MEG {location}{other_grad}", f"MEG {location}1"]
        types += ["grad", "grad", "mag"]
    return tuple(names), tuple(types)


DEFAULT_EEG_CHANNEL_NAMES: tuple[str, ...] = tuple(f"EEG {i:03d}" for i in range(1, 61))
DEFAULT_MEG_CHANNEL_NAMES, DEFAULT_MEG_CHANNEL_TYPES = _neuromag_channels()

_MEG_TYPES = ("mag", "grad")
_POSITION_EMBEDDINGS = ("learned", "sinusoidal")
_HEADS = ("regression", "tokens")
_LOSSES = ("mse", "huber")
_EEG_REFERENCES = ("average", "none")

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
    {
        "transformers_version",
        "architectures",
        "output_hidden_states",
        "return_dict",
        "dtype",
        "torch_dtype",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "id2label",
        "label2id",
        "problem_type",
        "num_labels",
        "name_or_path",
        "_name_or_path",
        "_commit_hash",
        "output_attentions",
        "attn_implementation",
        "experts_implementation",
    }
    | (
        {field.name for field in dataclasses.fields(PretrainedConfig)}
        if dataclasses.is_dataclass(PretrainedConfig)
        else set()
    )
    | _RUNTIME_KEYS
)


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"BrainformerConfig.{field} = {value!r} is invalid: expected {allowed}")


def _int(field: str, value: Any, minimum: int) -> int:
    # bool is an int subclass; `n_layers=True` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        _fail(field, value, f"an integer >= {minimum}")
    return int(value)


def _float(field: str, value: Any, *, minimum: float | None = None, strict: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        _fail(field, value, "a finite number")
    value = float(value)
    if minimum is not None and (value <= minimum if strict else value < minimum):
        _fail(field, value, f"a finite number {'>' if strict else '>='} {minimum}")
    return value


def _choice(field: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        _fail(field, value, "one of " + ", ".join(repr(a) for a in allowed))
    return value


def _as_list(value: Any) -> Any:
    """numpy arrays / torch tensors → plain lists (config.json holds plain JSON types)."""
    return value.tolist() if hasattr(value, "tolist") and not isinstance(value, (str, bytes)) else value


def _names(field: str, value: Any) -> list[str]:
    value = _as_list(value)
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) == 0:
        _fail(field, value, "a non-empty list of channel names")
    names = list(value)
    if not all(isinstance(name, str) and name for name in names):
        _fail(field, value, "a list of non-empty strings")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        _fail(field, duplicates, "unique channel names (these appear more than once)")
    return names


def _stats(field: str, value: Any, n_channels: int, *, is_std: bool) -> list[float] | None:
    if value is None:
        return None
    value = _as_list(value)
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != n_channels:
        _fail(field, value if not isinstance(value, Sequence) else f"<{len(value)} values>",
              f"None or a list of {n_channels} numbers (one per channel)")
    # A std of exactly 0 marks a flat channel: preprocessing scales it to 0 instead of dividing.
    return [
        _float(f"{field}[{i}]", v, minimum=0.0, strict=False) if is_std else _float(f"{field}[{i}]", v)
        for i, v in enumerate(value)
    ]


def _cutoff(field: str, value: Any, nyquist_hz: float) -> float | None:
    if value is None:
        return None
    value = _float(field, value, minimum=0.0)
    if value >= nyquist_hz:
        _fail(field, value, f"None or a frequency below the model's Nyquist frequency {nyquist_hz:g} Hz")
    return value


class BrainformerConfig(PretrainedConfig):
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
            The cost of a forward grows with the number of segments: with 64 (4 segments of a
            256-sample window, 58 ms at 1100 Hz) the default model needs a quarter of a 32-sample
            hop on two CPU cores for the 70-channel ds000117 layout; 32 needs about 0.4.

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

    Preprocessing:
        highpass_hz (`float` or `None`, defaults to 1.0): Butterworth high-pass cut-off.
        lowpass_hz (`float` or `None`, defaults to 40.0): Butterworth low-pass cut-off.
        filter_order (`int`, defaults to 4): Order of the Butterworth filters (SOS form).
        notch_hz (`list[float]`, defaults to `[60.0]`): Line-noise notch frequencies.
        notch_quality (`float`, defaults to 30.0): Quality factor of each notch.
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

    model_type = "brainformer"

    def __init__(
        self,
        eeg_channel_names: Sequence[str] | None = None,
        meg_channel_names: Sequence[str] | None = None,
        meg_channel_types: Sequence[str] | None = None,
        sfreq_hz: float = 600.614990234375,
        window_samples: int = 256,
        hop_samples: int = 16,
        patch_len: int = 64,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 1,
        d_ff: int = 128,
        router_dim: int = 10,
        dropout: float = 0.1,
        position_embedding: str = "learned",
        head: str = "regression",
        loss: str = "mse",
        huber_delta: float = 1.0,
        n_quantization_levels: int = 255,
        quantization_clip: float = 4.0,
        skip_lags: int = 0,
        highpass_hz: float | None = 1.0,
        lowpass_hz: float | None = 40.0,
        filter_order: int = 4,
        notch_hz: Sequence[float] | None = (60.0,),
        notch_quality: float = 30.0,
        eeg_reference: str = "average",
        eeg_mean: Sequence[float] | None = None,
        eeg_std: Sequence[float] | None = None,
        meg_mean: Sequence[float] | None = None,
        meg_std: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - _PRETRAINED_CONFIG_KEYS - {"model_type"})
        if unknown:
            raise ValueError(
                f"BrainformerConfig got unknown argument(s) {', '.join(unknown)}; "
                "see the BrainformerConfig docstring for the accepted fields"
            )
        model_type = kwargs.pop("model_type", self.model_type)
        if model_type != self.model_type:
            _fail("model_type", model_type, repr(self.model_type))

        # Channels.
        self.eeg_channel_names = _names(
            "eeg_channel_names", DEFAULT_EEG_CHANNEL_NAMES if eeg_channel_names is None else eeg_channel_names
        )
        self.meg_channel_names = _names(
            "meg_channel_names", DEFAULT_MEG_CHANNEL_NAMES if meg_channel_names is None else meg_channel_names
        )
        if meg_channel_types is None:
            if meg_channel_names is not None:
                _fail("meg_channel_types", None, "a list of 'mag'/'grad' when meg_channel_names is given")
            meg_channel_types = DEFAULT_MEG_CHANNEL_TYPES
        meg_channel_types = _as_list(meg_channel_types)
        if isinstance(meg_channel_types, str) or not isinstance(meg_channel_types, Sequence):
            _fail("meg_channel_types", meg_channel_types, "a list of 'mag'/'grad'")
        self.meg_channel_types = [_choice("meg_channel_types", t, _MEG_TYPES) for t in meg_channel_types]
        if len(self.meg_channel_types) != len(self.meg_channel_names):
            _fail(
                "meg_channel_types",
                f"<{len(self.meg_channel_types)} types>",
                f"one type per MEG channel ({len(self.meg_channel_names)})",
            )

        # Timing.
        self.sfreq_hz = _float("sfreq_hz", sfreq_hz, minimum=0.0)
        self.window_samples = _int("window_samples", window_samples, 1)
        self.hop_samples = _int("hop_samples", hop_samples, 1)
        if self.hop_samples > self.window_samples:
            _fail("hop_samples", hop_samples, f"at most window_samples ({self.window_samples})")
        self.patch_len = _int("patch_len", patch_len, 1)
        if self.window_samples % self.patch_len:
            _fail("patch_len", patch_len, f"a divisor of window_samples ({self.window_samples})")

        # Size.
        self.d_model = _int("d_model", d_model, 1)
        self.n_heads = _int("n_heads", n_heads, 1)
        if self.d_model % self.n_heads:
            _fail("n_heads", n_heads, f"a divisor of d_model ({self.d_model})")
        self.n_layers = _int("n_layers", n_layers, 1)
        self.d_ff = _int("d_ff", d_ff, 1)
        self.router_dim = _int("router_dim", router_dim, 1)
        self.dropout = _float("dropout", dropout, minimum=0.0, strict=False)
        if self.dropout >= 1.0:
            _fail("dropout", dropout, "a probability in [0, 1)")
        self.position_embedding = _choice("position_embedding", position_embedding, _POSITION_EMBEDDINGS)

        # Head.
        self.head = _choice("head", head, _HEADS)
        self.loss = _choice("loss", loss, _LOSSES)
        self.huber_delta = _float("huber_delta", huber_delta, minimum=0.0)
        self.n_quantization_levels = _int("n_quantization_levels", n_quantization_levels, 2)
        self.quantization_clip = _float("quantization_clip", quantization_clip, minimum=0.0)
        self.skip_lags = _int("skip_lags", skip_lags, 0)
        if self.skip_lags > self.window_samples:
            _fail("skip_lags", skip_lags, f"at most window_samples ({self.window_samples})")

        # Preprocessing.
        nyquist_hz = self.sfreq_hz / 2
        self.highpass_hz = _cutoff("highpass_hz", highpass_hz, nyquist_hz)
        self.lowpass_hz = _cutoff("lowpass_hz", lowpass_hz, nyquist_hz)
        if self.highpass_hz is not None and self.lowpass_hz is not None and self.highpass_hz >= self.lowpass_hz:
            _fail("highpass_hz", highpass_hz, f"a cut-off below lowpass_hz ({self.lowpass_hz:g} Hz)")
        self.filter_order = _int("filter_order", filter_order, 1)
        notch_hz = [] if notch_hz is None else _as_list(notch_hz)
        if isinstance(notch_hz, (str, bytes)) or not isinstance(notch_hz, Sequence):
            _fail("notch_hz", notch_hz, "a list of frequencies in Hz")
        self.notch_hz = [_cutoff(f"notch_hz[{i}]", f, nyquist_hz) for i, f in enumerate(notch_hz)]
        self.notch_quality = _float("notch_quality", notch_quality, minimum=0.0)
        self.eeg_reference = _choice("eeg_reference", eeg_reference, _EEG_REFERENCES)
        n_eeg, n_meg = len(self.eeg_channel_names), len(self.meg_channel_names)
        self.eeg_mean = _stats("eeg_mean", eeg_mean, n_eeg, is_std=False)
        self.eeg_std = _stats("eeg_std", eeg_std, n_eeg, is_std=True)
        self.meg_mean = _stats("meg_mean", meg_mean, n_meg, is_std=False)
        self.meg_std = _stats("meg_std", meg_std, n_meg, is_std=True)

        super().__init__(**kwargs)

    # Derived, read-only: computed from the fields above so they can never disagree with them.
    @property
    def n_eeg_channels(self) -> int:
        return len(self.eeg_channel_names)

    @property
    def n_meg_channels(self) -> int:
        return len(self.meg_channel_names)

    @property
    def n_segments(self) -> int:
        """DSW segments per window: `window_samples // patch_len`."""
        return self.window_samples // self.patch_len

    @property
    def vocab_size(self) -> int:
        """Token vocabulary of the tokens head: the quantization levels plus pad, bos and eos."""
        return self.n_quantization_levels + 3

    @property
    def pad_token_id(self) -> int:
        return 0

    @property
    def bos_token_id(self) -> int:
        return 1

    @property
    def eos_token_id(self) -> int:
        return 2
