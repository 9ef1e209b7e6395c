"""Sensor layouts, input checks and the head model (sphere, source grid, forward solution).

Layouts:
    ``sample``: the bundled recording's geometry (60 EEG + 306 MEG, real digitisation and head
    position, 600.615 Hz) and its channel names (``EEG 001``, ``MEG 0113``), so the bundled model
    applies to the simulated data as is.
    ``ds000117``: the canonical Neuromag-306 sensor array shipped with MNE
    (``mne.channels.read_meg_canonical_info("neuromag")``, device frame) and MNE's ``mgh70``
    70-electrode cap, at 1100 Hz, with the names ds000117 uses (``MEG0113``, ``EEG001`` …
    ``EEG060``, ``EEG065`` … ``EEG074``; EEG061–064 are EOG/ECG there). The cap's template
    positions are brought into the head frame by their fiducials (``info.set_montage``); the
    device → head transform is a pure translation of the head 50 mm below the helmet origin, which
    puts the electrodes as close to the sensors as in real recordings.

Head model (per layout, computed once per process): a spherical conductor fitted to the head
digitisation (``mne.make_sphere_model("auto", "auto", info)``, 4 shells), a volume source grid
at ``spacing_mm`` restricted to a cortex-like shell between 35 mm from the centre and 5 mm inside
the inner skull, and the MNE forward solution (``trans=None``: head and "MRI" frames coincide).
The EEG gain is the potential against infinity (MNE applies no reference in the forward); the
preprocessing's average reference removes it.

MNE is imported inside the functions that need it, so importing this module stays cheap.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from brainformer.paths import SAMPLE_RECORDING

logger = logging.getLogger(__name__)

LAYOUTS = ("sample", "ds000117")
DEFAULT_SPACING_MM = 12.0  # about 1000-1200 sources in the cortex-like shell of either layout
MIN_SFREQ_HZ = 100.0  # the sparse beta bursts reach 25 Hz + bandwidth, the evoked kernels 10 Hz
MAX_SFREQ_HZ = 20000.0

_DS000117_SFREQ_HZ = 1100.0
# Smallest electrode-sensor distance 21 mm, median 28 mm with this offset, as in real recordings.
_DS000117_HEAD_BELOW_HELMET_M = 0.05
# Sources closer than this to the sphere centre are left out: the simulated activity is cortical.
_DEEP_EXCLUDE_MM = 35.0
_INNER_SKULL_MINDIST_MM = 5.0


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def _check_layout(layout: Any) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not available: choose one of {', '.join(LAYOUTS)}")
    return layout


def _check_sfreq(sfreq_hz: Any, layout: str) -> float:
    if sfreq_hz is None:
        return default_sfreq_hz(layout)
    if isinstance(sfreq_hz, bool) or not isinstance(sfreq_hz, (int, float)) or not math.isfinite(sfreq_hz):
        raise ValueError(f"sfreq_hz must be a number of Hz, got {sfreq_hz!r}")
    if not MIN_SFREQ_HZ <= sfreq_hz <= MAX_SFREQ_HZ:
        raise ValueError(f"sfreq_hz={sfreq_hz:g} is out of range: allowed {MIN_SFREQ_HZ:g}–{MAX_SFREQ_HZ:g} Hz")
    return float(sfreq_hz)


def _check_nonnegative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_spacing(spacing_mm: Any) -> float:
    if isinstance(spacing_mm, bool) or not isinstance(spacing_mm, (int, float)) or not 5.0 <= spacing_mm <= 30.0:
        raise ValueError(f"spacing_mm must be a number of millimetres between 5 and 30, got {spacing_mm!r}")
    return float(spacing_mm)


def _n_samples(duration_s: Any, sfreq_hz: float) -> int:
    if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)) or not math.isfinite(duration_s):
        raise ValueError(f"duration_s must be a number of seconds, got {duration_s!r}")
    n = int(round(duration_s * sfreq_hz))
    if duration_s <= 0 or n < 1:
        raise ValueError(f"duration_s={duration_s!r} must be positive and hold at least one sample at {sfreq_hz:g} Hz")
    return n


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _base_info(layout: str) -> Any:
    """`mne.Info` of a layout at its own rate: EEG + MEG channels with positions and digitisation."""
    import mne

    if layout == "sample":
        raw = mne.io.read_raw_fif(SAMPLE_RECORDING, preload=False, verbose="error")
        raw.pick(["meg", "eeg"]).del_proj()  # the file's SSP vectors describe its own noise
        info = raw.info.copy()
        info["bads"] = []
        return info

    canonical = mne.channels.read_meg_canonical_info("neuromag")
    montage = mne.channels.make_standard_montage("mgh70")
    meg_names = [ch["ch_name"].replace(" ", "") for ch in canonical["chs"]]
    meg_types = ["mag" if ch["coil_type"] == mne.io.constants.FIFF.FIFFV_COIL_VV_MAG_T3 else "grad" for ch in canonical["chs"]]
    info = mne.create_info(meg_names + montage.ch_names, _DS000117_SFREQ_HZ, meg_types + ["eeg"] * len(montage.ch_names))
    for channel, reference in zip(info["chs"], canonical["chs"]):
        channel["loc"][:] = reference["loc"]
        channel["coil_type"] = reference["coil_type"]
        channel["coord_frame"] = reference["coord_frame"]
    info.set_montage(montage)  # template positions → head frame through the cap's fiducials
    device_to_head = np.eye(4)
    device_to_head[2, 3] = _DS000117_HEAD_BELOW_HELMET_M
    info["dev_head_t"] = mne.transforms.Transform("meg", "head", device_to_head)
    return info


def default_sfreq_hz(layout: str) -> float:
    """The layout's own sampling rate: 600.614990234375 Hz (sample) or 1100 Hz (ds000117)."""
    return float(_base_info(_check_layout(layout))["sfreq"])


def layout_info(layout: str, sfreq_hz: float | None = None) -> Any:
    """A fresh `mne.Info` for a layout (EEG + MEG channels, positions, digitisation) at `sfreq_hz`."""
    _check_layout(layout)
    sfreq_hz = _check_sfreq(sfreq_hz, layout)
    info = _base_info(layout).copy()
    # MNE has no public setter for the rate of an Info; the rate is all that changes here.
    with info._unlock():
        info["sfreq"] = sfreq_hz
        info["lowpass"] = sfreq_hz / 2.0
        info["highpass"] = 0.0
    info["description"] = f"brainformer simulation, layout {layout}"
    return info


def _channel_groups(info: Any) -> tuple[list[int], list[int], list[str]]:
    """Indices of EEG and MEG channels in `info`, and the MEG channel types (`mag`/`grad`)."""
    import mne

    eeg = list(mne.pick_types(info, meg=False, eeg=True))
    meg = list(mne.pick_types(info, meg=True, eeg=False))
    types = info.get_channel_types(picks=meg)
    return eeg, meg, types


# --------------------------------------------------------------------------------------------
# Head model
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class HeadModel:
    """Geometry and free-orientation forward solution of one layout.

    Attributes:
        layout: ``"sample"`` or ``"ds000117"``.
        eeg_channel_names, meg_channel_names, meg_channel_types: channel sets, in the layout's order.
        sphere_center_m: `(3,)` centre of the fitted sphere, head frame (m).
        brain_radius_m: radius of the innermost shell (inner skull), m.
        source_positions_m: `(n_sources, 3)` head frame.
        gain_eeg_free: `(n_eeg, n_sources, 3)` V per A·m, one column per x/y/z dipole.
        gain_meg_free: `(n_meg, n_sources, 3)` T (mag) or T/m (grad) per A·m.
        spacing_mm: source grid spacing.
    """

    layout: str
    eeg_channel_names: tuple[str, ...]
    meg_channel_names: tuple[str, ...]
    meg_channel_types: tuple[str, ...]
    sphere_center_m: np.ndarray
    brain_radius_m: float
    source_positions_m: np.ndarray
    gain_eeg_free: np.ndarray
    gain_meg_free: np.ndarray
    spacing_mm: float

    @property
    def n_sources(self) -> int:
        return int(self.source_positions_m.shape[0])


def head_model(layout: str, spacing_mm: float = DEFAULT_SPACING_MM) -> HeadModel:
    """Sphere model, volume source grid and forward solution of a layout (cached per process)."""
    return _head_model(_check_layout(layout), _check_spacing(spacing_mm))


@functools.lru_cache(maxsize=4)
def _head_model(layout: str, spacing_mm: float) -> HeadModel:
    import mne

    info = _base_info(layout)
    sphere = mne.make_sphere_model("auto", "auto", info, verbose="error")
    source_space = mne.setup_volume_source_space(
        sphere=sphere, pos=spacing_mm, mindist=_INNER_SKULL_MINDIST_MM, exclude=_DEEP_EXCLUDE_MM, verbose="error"
    )
    forward = mne.make_forward_solution(info, trans=None, src=source_space, bem=sphere, eeg=True, meg=True, verbose="error")
    rows = {name: i for i, name in enumerate(forward["sol"]["row_names"])}
    eeg_idx, meg_idx, meg_types = _channel_groups(info)
    eeg_names = [info["ch_names"][i] for i in eeg_idx]
    meg_names = [info["ch_names"][i] for i in meg_idx]
    gain = forward["sol"]["data"].reshape(len(rows), -1, 3)  # (channels, sources, xyz), head frame
    model = HeadModel(
        layout=layout,
        eeg_channel_names=tuple(eeg_names),
        meg_channel_names=tuple(meg_names),
        meg_channel_types=tuple(meg_types),
        sphere_center_m=np.asarray(sphere["r0"], dtype=np.float64),
        brain_radius_m=float(sphere["layers"][0]["rad"]),
        source_positions_m=np.asarray(forward["source_rr"], dtype=np.float64),
        gain_eeg_free=np.ascontiguousarray(gain[[rows[n] for n in eeg_names]]),
        gain_meg_free=np.ascontiguousarray(gain[[rows[n] for n in meg_names]]),
        spacing_mm=spacing_mm,
    )
    logger.info("head model %s: %d sources at %g mm, %d EEG + %d MEG channels",
                layout, model.n_sources, spacing_mm, len(eeg_names), len(meg_names))
    return model

