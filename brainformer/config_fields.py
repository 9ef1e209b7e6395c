"""The fields of a Brainformer model config, without transformers: defaults, validation, derived values.

`BrainformerConfig` (a transformers `PretrainedConfig`, whose import costs torch) stores exactly
these fields and validates them here. Code that only needs the fields — `brainformer prepare`,
`brainformer simulate-data`, the `[model]` section of a settings file, preprocessing — uses
`BrainformerFields`, a frozen dataclass with the same names, defaults, rules and error messages::

    fields = BrainformerFields(sfreq_hz=1100.0, lowpass_hz=100.0)
    fields.n_segments                    # 4, as BrainformerConfig(...).n_segments
    fields.replace(eeg_mean=..., ...)    # a new, validated copy
    BrainformerConfig(**fields.to_dict())  # the config itself (imports transformers)

The meaning of every field is documented once, in the `BrainformerConfig` docstring.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import numbers
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BrainformerFields",
    "DEFAULT_EEG_CHANNEL_NAMES",
    "DEFAULT_MEG_CHANNEL_NAMES",
    "DEFAULT_MEG_CHANNEL_TYPES",
    "DerivedFields",
    "FIELD_NAMES",
    "MODEL_TYPE",
    "SIGNAL_FIELD_NAMES",
    "check_model_type",
    "check_no_unknown_arguments",
    "validate_fields",
]

#: ``model_type`` of the config, in every config.json.
MODEL_TYPE = "brainformer"

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
_TARGET_PHASES = ("causal", "zero_phase")

# Keys a config.json holds besides the fields: written by transformers (and by
# `BrainformerFields.to_json_file`) for bookkeeping; read back and ignored.
# What `PretrainedConfig` itself writes into config.json or accepts from `from_pretrained`: not
# model fields, so the fields leave them to transformers; everything else unknown is a typo.
TRANSFORMERS_KEYS = frozenset({
    "transformers_version", "architectures", "output_hidden_states", "return_dict", "dtype", "torch_dtype",
    "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type", "num_labels",
    "name_or_path", "_name_or_path", "_commit_hash", "output_attentions", "attn_implementation",
    "experts_implementation",
})
_BOOKKEEPING_KEYS = TRANSFORMERS_KEYS | {"model_type"}


# --------------------------------------------------------------------------------------------
# One value
# --------------------------------------------------------------------------------------------
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


def check_model_type(model_type: Any) -> None:
    """Refuse a config of another model (a ``model_type`` other than ``"brainformer"``)."""
    if model_type != MODEL_TYPE:
        _fail("model_type", model_type, repr(MODEL_TYPE))


def check_no_unknown_arguments(unknown: Collection[str]) -> None:
    """Refuse keyword arguments that are not fields: a typo must not be silently stored."""
    if unknown:
        raise ValueError(
            f"BrainformerConfig got unknown argument(s) {', '.join(sorted(unknown))}; "
            "see the BrainformerConfig docstring for the accepted fields"
        )


# --------------------------------------------------------------------------------------------
# The fields, group by group (the groups of the BrainformerConfig docstring)
# --------------------------------------------------------------------------------------------
def _channels(v: Mapping[str, Any]) -> dict[str, Any]:
    eeg_names = DEFAULT_EEG_CHANNEL_NAMES if v["eeg_channel_names"] is None else v["eeg_channel_names"]
    meg_names = DEFAULT_MEG_CHANNEL_NAMES if v["meg_channel_names"] is None else v["meg_channel_names"]
    meg_types = v["meg_channel_types"]
    if meg_types is None:
        # The default types describe the default MEG layout only.
        if v["meg_channel_names"] is not None:
            _fail("meg_channel_types", None, "a list of 'mag'/'grad' when meg_channel_names is given")
        meg_types = DEFAULT_MEG_CHANNEL_TYPES
    meg_types = _as_list(meg_types)
    if isinstance(meg_types, str) or not isinstance(meg_types, Sequence):
        _fail("meg_channel_types", meg_types, "a list of 'mag'/'grad'")
    out = {
        "eeg_channel_names": _names("eeg_channel_names", eeg_names),
        "meg_channel_names": _names("meg_channel_names", meg_names),
        "meg_channel_types": [_choice("meg_channel_types", t, _MEG_TYPES) for t in meg_types],
    }
    if len(out["meg_channel_types"]) != len(out["meg_channel_names"]):
        _fail(
            "meg_channel_types",
            f"<{len(out['meg_channel_types'])} types>",
            f"one type per MEG channel ({len(out['meg_channel_names'])})",
        )
    out["eeg_positions_m"] = _positions("eeg_positions_m", v["eeg_positions_m"], len(out["eeg_channel_names"]))
    out["eeg_fiducials_m"] = _positions("eeg_fiducials_m", v["eeg_fiducials_m"], 3, "[nasion, LPA, RPA] positions")
    return out


def _positions(field: str, value: Any, n_channels: int, what: str = "") -> list[list[float]] | None:
    """None, or one ``[x, y, z]`` per EEG channel (or per fiducial, `what`): head frame, metres,
    within 1 m of the origin."""
    if value is None:
        return None
    value = _as_list(value)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != n_channels:
        shown = f"<{len(value)} positions>" if isinstance(value, Sequence) and not isinstance(value, str) else value
        _fail(field, shown, f"None or a list of {n_channels} " + (what or "[x, y, z] positions (one per EEG channel)"))
    positions = []
    for i, point in enumerate(value):
        point = _as_list(point)
        if isinstance(point, (str, bytes)) or not isinstance(point, Sequence) or len(point) != 3:
            _fail(f"{field}[{i}]", point, "[x, y, z] in metres")
        xyz = [_float(f"{field}[{i}]", c) for c in point]
        if math.hypot(*xyz) >= 1.0:
            _fail(f"{field}[{i}]", xyz, "a position within 1 m of the head origin (metres, not millimetres)")
        positions.append(xyz)
    return positions


def _timing(v: Mapping[str, Any]) -> dict[str, Any]:
    out = {
        "sfreq_hz": _float("sfreq_hz", v["sfreq_hz"], minimum=0.0),
        "window_samples": _int("window_samples", v["window_samples"], 1),
        "hop_samples": _int("hop_samples", v["hop_samples"], 1),
    }
    window = out["window_samples"]
    if out["hop_samples"] > window:
        _fail("hop_samples", v["hop_samples"], f"at most window_samples ({window})")
    out["patch_len"] = _int("patch_len", v["patch_len"], 1)
    if window % out["patch_len"]:
        _fail("patch_len", v["patch_len"], f"a divisor of window_samples ({window})")
    return out


def _size(v: Mapping[str, Any]) -> dict[str, Any]:
    out = {"d_model": _int("d_model", v["d_model"], 1), "n_heads": _int("n_heads", v["n_heads"], 1)}
    if out["d_model"] % out["n_heads"]:
        _fail("n_heads", v["n_heads"], f"a divisor of d_model ({out['d_model']})")
    out["n_layers"] = _int("n_layers", v["n_layers"], 1)
    out["d_ff"] = _int("d_ff", v["d_ff"], 1)
    out["router_dim"] = _int("router_dim", v["router_dim"], 1)
    out["dropout"] = _float("dropout", v["dropout"], minimum=0.0, strict=False)
    if out["dropout"] >= 1.0:
        _fail("dropout", v["dropout"], "a probability in [0, 1)")
    out["position_embedding"] = _choice("position_embedding", v["position_embedding"], _POSITION_EMBEDDINGS)
    out["final_norm"] = _bool("final_norm", v["final_norm"])
    return out


def _bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(field, value, "true or false")
    return value


def _head(v: Mapping[str, Any], window_samples: int, hop_samples: int, n_meg: int) -> dict[str, Any]:
    out = {
        "head": _choice("head", v["head"], _HEADS),
        "loss": _choice("loss", v["loss"], _LOSSES),
        "huber_delta": _float("huber_delta", v["huber_delta"], minimum=0.0),
        "n_quantization_levels": _int("n_quantization_levels", v["n_quantization_levels"], 2),
        "quantization_clip": _float("quantization_clip", v["quantization_clip"], minimum=0.0),
        "skip_lags": _int("skip_lags", v["skip_lags"], 0),
        "gain_filters": _int("gain_filters", v["gain_filters"], 0),
        "gain_filter_past_samples": _int("gain_filter_past_samples", v["gain_filter_past_samples"], 1),
        "gain_filter_lookahead_samples": _int("gain_filter_lookahead_samples", v["gain_filter_lookahead_samples"], 0),
        "envelope_filters": _int("envelope_filters", v["envelope_filters"], 0),
        "envelope_filter_samples": _int("envelope_filter_samples", v["envelope_filter_samples"], 1),
        "hop_lookahead_past_samples": _int("hop_lookahead_past_samples", v["hop_lookahead_past_samples"], 0),
        "hop_lookahead_rank": _int("hop_lookahead_rank", v["hop_lookahead_rank"], 0),
    }
    # The taps of a disabled filter bank are not checked: a short window keeps the defaults.
    for name, used in (("skip_lags", True), ("gain_filter_past_samples", out["gain_filters"] > 0),
                       ("envelope_filter_samples", out["envelope_filters"] > 0)):
        if used and out[name] > window_samples:
            _fail(name, v[name], f"at most window_samples ({window_samples})")
    if out["gain_filters"] and out["gain_filter_lookahead_samples"] >= window_samples:
        _fail("gain_filter_lookahead_samples", v["gain_filter_lookahead_samples"], f"less than window_samples ({window_samples})")
    lookahead = out["hop_lookahead_past_samples"]
    if lookahead and not out["skip_lags"]:
        _fail("hop_lookahead_past_samples", lookahead, "0 without a skip path (skip_lags = 0): it refines the skip path")
    if lookahead + hop_samples - 1 > window_samples:
        _fail("hop_lookahead_past_samples", lookahead, f"at most window_samples − hop_samples + 1 ({window_samples - hop_samples + 1})")
    if lookahead and out["hop_lookahead_rank"] > n_meg:
        _fail("hop_lookahead_rank", v["hop_lookahead_rank"], f"at most the number of MEG channels ({n_meg}); 0 for full-rank maps")
    if out["head"] == "tokens":
        for name in ("gain_filters", "envelope_filters", "hop_lookahead_past_samples"):
            if out[name]:
                _fail(name, v[name], "0 with head='tokens' (the regression head only)")
    return out


def _preprocessing(v: Mapping[str, Any], sfreq_hz: float, n_eeg: int, n_meg: int) -> dict[str, Any]:
    nyquist_hz = sfreq_hz / 2
    highpass_hz = _cutoff("highpass_hz", v["highpass_hz"], nyquist_hz)
    lowpass_hz = _cutoff("lowpass_hz", v["lowpass_hz"], nyquist_hz)
    if highpass_hz is not None and lowpass_hz is not None and highpass_hz >= lowpass_hz:
        _fail("highpass_hz", v["highpass_hz"], f"a cut-off below lowpass_hz ({lowpass_hz:g} Hz)")
    notch_hz = [] if v["notch_hz"] is None else _as_list(v["notch_hz"])
    if isinstance(notch_hz, (str, bytes)) or not isinstance(notch_hz, Sequence):
        _fail("notch_hz", notch_hz, "a list of frequencies in Hz")
    return {
        "highpass_hz": highpass_hz,
        "lowpass_hz": lowpass_hz,
        "filter_order": _int("filter_order", v["filter_order"], 1),
        "notch_hz": [_cutoff(f"notch_hz[{i}]", f, nyquist_hz) for i, f in enumerate(notch_hz)],
        "notch_quality": _float("notch_quality", v["notch_quality"], minimum=0.0),
        **_target(v, nyquist_hz),
        "eeg_reference": _choice("eeg_reference", v["eeg_reference"], _EEG_REFERENCES),
        "eeg_mean": _stats("eeg_mean", v["eeg_mean"], n_eeg, is_std=False),
        "eeg_std": _stats("eeg_std", v["eeg_std"], n_eeg, is_std=True),
        "meg_mean": _stats("meg_mean", v["meg_mean"], n_meg, is_std=False),
        "meg_std": _stats("meg_std", v["meg_std"], n_meg, is_std=True),
    }


def _target(v: Mapping[str, Any], nyquist_hz: float) -> dict[str, Any]:
    """What the model is trained to predict: the MEG through a band (the input filters' band by
    default), causally or with zero phase."""
    band = v["target_band_hz"]
    if band is not None:
        band = _as_list(band)
        if isinstance(band, (str, bytes)) or not isinstance(band, Sequence) or len(band) != 2:
            _fail("target_band_hz", band, "None or [high-pass Hz, low-pass Hz] (either may be None)")
        band = [_cutoff(f"target_band_hz[{i}]", f, nyquist_hz) for i, f in enumerate(band)]
        if band[0] is not None and band[1] is not None and band[0] >= band[1]:
            _fail("target_band_hz", band, "a high-pass cut-off below the low-pass cut-off")
    order = v["target_filter_order"]
    return {
        "target_phase": _choice("target_phase", v["target_phase"], _TARGET_PHASES),
        "target_band_hz": band,
        "target_filter_order": None if order is None else _int("target_filter_order", order, 1),
    }


def validate_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """Every field of `values` (all of `FIELD_NAMES`) checked and normalised to plain JSON types.

    Sequences come back as lists, numbers as `int` / `float`; ``None`` channel names become the
    default layout. Raises `ValueError` ``BrainformerConfig.<field> = <value> is invalid:
    expected <allowed>`` for the first wrong field, in the order of the docstring's groups.
    """
    out = _channels(values)
    out |= _timing(values)
    out |= _size(values)
    n_eeg, n_meg = len(out["eeg_channel_names"]), len(out["meg_channel_names"])
    out |= _head(values, out["window_samples"], out["hop_samples"], n_meg)
    out |= _preprocessing(values, out["sfreq_hz"], n_eeg, n_meg)
    return out


# --------------------------------------------------------------------------------------------
# Derived values and the plain object
# --------------------------------------------------------------------------------------------
class DerivedFields:
    """Values computed from the fields, shared by `BrainformerFields` and `BrainformerConfig`:
    read-only properties, so they can never disagree with the fields."""

    eeg_channel_names: Sequence[str]
    meg_channel_names: Sequence[str]
    window_samples: int
    patch_len: int
    n_quantization_levels: int

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


@dataclasses.dataclass(frozen=True)
class BrainformerFields(DerivedFields):
    """The fields of a `BrainformerConfig`, validated, read-only, without transformers.

    Same arguments, defaults and `ValueError`\\ s as `BrainformerConfig` (documented there);
    sequences are stored as tuples. Unknown arguments raise `TypeError` here; `from_dict` turns
    them into the config's `ValueError`.
    """

    # Channels (None: the default layout of the bundled sample recording).
    eeg_channel_names: tuple[str, ...] | None = None
    meg_channel_names: tuple[str, ...] | None = None
    meg_channel_types: tuple[str, ...] | None = None
    eeg_positions_m: tuple[tuple[float, float, float], ...] | None = None
    eeg_fiducials_m: tuple[tuple[float, float, float], ...] | None = None
    # Timing.
    sfreq_hz: float = 600.614990234375
    window_samples: int = 256
    hop_samples: int = 16
    patch_len: int = 64
    # Size.
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 1
    d_ff: int = 128
    router_dim: int = 10
    dropout: float = 0.1
    position_embedding: str = "learned"
    final_norm: bool = True
    # Head.
    head: str = "regression"
    loss: str = "mse"
    huber_delta: float = 1.0
    n_quantization_levels: int = 255
    quantization_clip: float = 4.0
    skip_lags: int = 0
    gain_filters: int = 0
    gain_filter_past_samples: int = 32
    gain_filter_lookahead_samples: int = 0
    envelope_filters: int = 0
    envelope_filter_samples: int = 64
    hop_lookahead_past_samples: int = 0
    hop_lookahead_rank: int = 0
    # Preprocessing.
    highpass_hz: float | None = 1.0
    lowpass_hz: float | None = 40.0
    filter_order: int = 4
    notch_hz: tuple[float, ...] | None = (60.0,)
    notch_quality: float = 30.0
    target_phase: str = "causal"
    target_band_hz: tuple[float | None, float | None] | None = None
    target_filter_order: int | None = None
    eeg_reference: str = "average"
    eeg_mean: tuple[float, ...] | None = None
    eeg_std: tuple[float, ...] | None = None
    meg_mean: tuple[float, ...] | None = None
    meg_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        given = {name: getattr(self, name) for name in FIELD_NAMES}
        for name, value in validate_fields(given).items():
            # Tuples, so that the object is read-only all the way down.
            object.__setattr__(self, name, _as_tuples(value))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BrainformerFields:
        """Fields from keyword arguments of `BrainformerConfig` or a parsed config.json.

        ``model_type`` must be ``"brainformer"`` when present; ``transformers_version`` and
        ``architectures`` are ignored. Raises `ValueError` naming any other unknown key, as
        `BrainformerConfig` does.
        """
        check_no_unknown_arguments(set(values) - set(FIELD_NAMES) - _BOOKKEEPING_KEYS)
        check_model_type(values.get("model_type", MODEL_TYPE))
        return cls(**{name: values[name] for name in FIELD_NAMES if name in values})

    @classmethod
    def from_config(cls, config: Any) -> BrainformerFields:
        """The fields of a `BrainformerConfig` (or of anything with the same attributes)."""
        if isinstance(config, cls):
            return config
        return cls(**{name: getattr(config, name) for name in FIELD_NAMES})

    @classmethod
    def from_json_file(cls, path: str | Path) -> BrainformerFields:
        """Fields of a config.json written by `to_json_file` or `BrainformerConfig.to_json_file`."""
        values = json.loads(Path(path).read_text())
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object of config fields, got {type(values).__name__}")
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> BrainformerFields:
        """A new `BrainformerFields` with `changes` applied, validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON types (lists, numbers, strings, None), by name."""
        return {name: _as_json(getattr(self, name)) for name in FIELD_NAMES}

    def to_json_file(self, path: str | Path) -> None:
        """Write a config.json that `BrainformerConfig.from_json_file` reads back as this config.

        The layout is that of `BrainformerConfig.to_json_file` (sorted keys, ``model_type``,
        the installed ``transformers_version``), written without importing transformers.
        """
        values = self.to_dict() | {"model_type": MODEL_TYPE}
        try:
            values["transformers_version"] = importlib.metadata.version("transformers")
        except importlib.metadata.PackageNotFoundError:  # readable without it: the key is bookkeeping
            pass
        Path(path).write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")

def _as_json(value: Any) -> Any:
    return [_as_json(v) for v in value] if isinstance(value, tuple) else value


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


#: Names of the config's fields, in the order of the `BrainformerConfig` docstring.
FIELD_NAMES: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(BrainformerFields))

#: Fields that decide what the model's EEG input and MEG target are, before scaling: a prepared
#: dataset fixes them, and models scored side by side must agree on them.
SIGNAL_FIELD_NAMES: tuple[str, ...] = (
    "eeg_channel_names", "meg_channel_names", "meg_channel_types", "sfreq_hz", "highpass_hz", "lowpass_hz",
    "filter_order", "notch_hz", "notch_quality", "target_phase", "target_band_hz", "target_filter_order",
    "eeg_reference",
)
