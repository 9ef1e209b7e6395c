"""Channel units → factor to volts, and a plausibility check of the amplitudes.

Every common spelling is accepted, case-insensitively and ignoring spaces (``V``, ``mV``,
``uV``, ``µV`` (micro sign), ``μV`` (Greek mu), ``microvolts``, ``nanovolts``, …), and so is
mne-lsl's power-of-ten exponent (``"0"`` = V, ``"-3"`` = mV, ``"-6"`` = µV, ``"-9"`` = nV)::

    volt_factor("microvolts")   # 1e-06
    volt_factor("-6")           # 1e-06
    volt_factor("")             # None: no unit given (the plan takes volts and warns)
    volt_factor("mmHg")         # raises AdaptationError
"""

from __future__ import annotations

import math
import unicodedata

import numpy as np

from brainformer.adaptation.errors import AdaptationError

__all__ = [
    "PLAUSIBLE_EEG_STD_V",
    "UNIT_NAMES",
    "amplitude_warning",
    "normalize_unit",
    "unit_name",
    "volt_factor",
]

#: Normalised spelling (NFKC, case-folded, no spaces) → factor to volts. NFKC + casefold turn the
#: micro sign ``µ`` into the Greek ``μ``; both are listed anyway.
_FACTORS = {
    "v": 1.0, "volt": 1.0, "volts": 1.0,
    "mv": 1e-3, "millivolt": 1e-3, "millivolts": 1e-3,
    "uv": 1e-6, "µv": 1e-6, "μv": 1e-6, "microvolt": 1e-6, "microvolts": 1e-6,
    "nv": 1e-9, "nanovolt": 1e-9, "nanovolts": 1e-9,
}
#: Exponents mne-lsl may write (``set_channel_units``): 10**exponent volts.
_EXPONENT_RANGE = range(-12, 4)

#: Factor → the name shown to users.
UNIT_NAMES = {1.0: "V", 1e-3: "mV", 1e-6: "µV", 1e-9: "nV"}

#: Robust EEG amplitude (median over channels of each channel's standard deviation) that counts
#: as plausible, in volts: 0.1 µV … 10 mV. A unit off by a factor of 1000 (µV read as mV or V)
#: moves a typical 20 µV out of this range.
PLAUSIBLE_EEG_STD_V = (1e-7, 1e-2)
_TYPICAL_EEG_STD_V = 2e-5


def normalize_unit(unit: str) -> str:
    """NFKC, case-folded, without white space: the key unit spellings are compared by."""
    return "".join(unicodedata.normalize("NFKC", unit).casefold().split())


def volt_factor(unit: str | None, what: str = "unit") -> float | None:
    """Factor from `unit` to volts, or None when no unit is given (None or blank).

    Raises:
        AdaptationError: naming `what` and the unit, for a unit that is not a voltage.
    """
    if unit is None or not unit.strip():
        return None
    key = normalize_unit(unit)
    if key in _FACTORS:
        return _FACTORS[key]
    try:
        exponent = int(key)
    except ValueError:
        exponent = None
    if exponent is not None and exponent in _EXPONENT_RANGE:
        return 10.0**exponent
    raise AdaptationError(
        f"{what} {unit!r} is not a voltage unit: expected V, mV, uV/µV/microvolts, nV or an mne-lsl "
        "exponent (0, -3, -6, -9); give the input unit explicitly to override"
    )


def unit_name(factor: float) -> str:
    """``1e-6`` → ``"µV"``; other powers of ten as ``1e-12 V``."""
    for known, name in UNIT_NAMES.items():
        if math.isclose(factor, known, rel_tol=1e-9):
            return name
    return f"{factor:g} V"


def amplitude_warning(volts: np.ndarray, declared_factor: float = 1.0) -> str | None:
    """A warning when EEG `volts` `(n, channels)`, converted with the declared unit (factor
    `declared_factor` to volts), are far outside EEG amplitudes, naming the unit that would make
    them plausible; None when they look like EEG.

    Call it off the hot path with the first seconds of a stream (or of a recording): the
    amplitude is the median over channels of each channel's standard deviation (flat channels
    left out), compared with `PLAUSIBLE_EEG_STD_V`.
    """
    data = np.asarray(volts, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] < 2:
        return None
    std = data.std(axis=0)
    std = std[np.isfinite(std) & (std > 0)]
    if std.size == 0:
        return None
    amplitude = float(np.median(std))
    low, high = PLAUSIBLE_EEG_STD_V
    if low <= amplitude <= high:
        return None
    in_stream_units = amplitude / declared_factor
    likely = min(UNIT_NAMES, key=lambda f: abs(math.log10(in_stream_units * f / _TYPICAL_EEG_STD_V)))
    return (
        f"EEG amplitudes are implausible for the unit {unit_name(declared_factor)}: median channel std "
        f"{in_stream_units:.3g} {unit_name(declared_factor)} = {amplitude:.3g} V (EEG: {low:g}–{high:g} V); "
        f"the values look like {UNIT_NAMES[likely]}: override the input unit if so"
    )
