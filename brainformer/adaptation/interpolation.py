"""Spherical-spline interpolation matrices, computed by MNE (Perrin et al. 1989).

The matrix is what ``inst.interpolate_bads()`` and ``raw.interpolate_to(montage,
method="spline")`` apply to EEG: ``values_to = matrix @ values_from``, `(n_to, n_from)`, from
positions centred on a sphere origin. It is built once per plan (off the hot path) and applied
per chunk as a matmul. MNE is imported only here, inside the functions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_SPLINE_REG", "fit_origin", "nearest_distances", "spline_matrix"]

#: Regularisation of the spline fit: MNE's value for ``interpolate_bads``.
DEFAULT_SPLINE_REG = 1e-5


def fit_origin(positions_m: np.ndarray) -> np.ndarray:
    """`(3,)` centre of the sphere MNE fits to electrode positions `(n, 3)` (head frame, m)."""
    import mne

    positions_m = np.asarray(positions_m, dtype=np.float64)
    names = [f"E{i}" for i in range(len(positions_m))]
    montage = mne.channels.make_dig_montage(ch_pos=dict(zip(names, positions_m)), coord_frame="head")
    info = mne.create_info(names, 1000.0, "eeg")
    info.set_montage(montage, verbose="error")
    _, origin, _ = mne.bem.fit_sphere_to_headshape(info, dig_kinds=("eeg",), units="m", verbose="error")
    return np.asarray(origin, dtype=np.float64)


def spline_matrix(
    positions_from_m: np.ndarray, positions_to_m: np.ndarray, origin_m: np.ndarray, reg: float = DEFAULT_SPLINE_REG
) -> np.ndarray:
    """`(n_to, n_from)` float64 spherical-spline matrix from MNE (the one `interpolate_bads` uses)."""
    from mne.channels.interpolation import _make_interpolation_matrix

    origin_m = np.asarray(origin_m, dtype=np.float64)
    return np.asarray(
        _make_interpolation_matrix(
            np.asarray(positions_from_m, dtype=np.float64) - origin_m,
            np.asarray(positions_to_m, dtype=np.float64) - origin_m,
            alpha=reg,
        ),
        dtype=np.float64,
    )


def nearest_distances(positions_to_m: np.ndarray, positions_from_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each target `(n_to, 3)`: index of and distance (m) to the nearest source `(n_from, 3)`."""
    d = np.linalg.norm(np.asarray(positions_to_m)[:, None, :] - np.asarray(positions_from_m)[None, :, :], axis=-1)
    nearest = d.argmin(axis=1)
    return nearest, d[np.arange(len(nearest)), nearest]
