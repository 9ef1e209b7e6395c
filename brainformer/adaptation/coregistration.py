"""A cap placed on the model's head: electrode positions brought into its frame, size and pose.

Positions come in whatever frame they were made in: a standard montage's template coordinates,
a digitiser's head frame on another person, whatever an amplifier's software writes. Splines
onto the model's electrodes need them where that cap would sit on *the model's* head. The
placement, planned once (MNE's transforms, numpy):

1. a head frame: a montage is moved into the frame its own nasion/LPA/RPA define (as MNE's
   ``set_montage`` does, `positions.montage_positions`); stream positions whose labels are
   standard 10-20/10-05 names are oriented by those names' standard positions (a similarity
   onto MNE's template, whose fiducials then count as the cap's), so a digitiser's frame (CTF's
   x through the nasion, RAS, another head's size) does not matter; other stream positions are
   taken to be in a head frame (x towards the right ear, y towards the nose, z up);
2. the model's head: the similarity (scale, rotation, shift) that takes the cap's fiducials onto
   the model's (``eeg_fiducials_m``) when both have them, else the one that takes the sphere
   fitted to the cap's electrodes onto the sphere fitted to the model's;
3. its pose: a rigid + scale fit on top, by iterative closest points onto the model's
   electrodes (MNE's ``fit_matched_points``), for caps of `MIN_ICP_ELECTRODES` or more.

A stream whose electrodes partly carry the model's labels gives pairs of positions: then the
similarity is fitted on those pairs, and nothing else is guessed. After the placement every
electrode must lie on the model's head: one farther than `OFF_HEAD_M` from its surface is
refused by name (a typo, a position of another frame), never used silently.

Before any of it, `check_positions` refuses what no fit can mend: positions that are not
finite, two electrodes at the same place, a head of implausible size (units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from brainformer.adaptation.channels import listing
from brainformer.adaptation.errors import AdaptationError

__all__ = ["MIN_ICP_ELECTRODES", "OFF_HEAD_M", "CapPlacement", "check_positions", "place_cap", "place_montage",
           "surface_distances"]

#: A placed electrode farther than this from the model's head surface is refused.
OFF_HEAD_M = 0.025
#: Two electrodes closer than this are one position given twice.
SAME_POSITION_M = 0.002
#: Plausible radius of a head (sphere fitted to its electrodes), in metres.
HEAD_RADIUS_RANGE_M = (0.04, 0.2)
#: Fewest electrodes the rigid + scale fit (iterative closest points) runs on.
MIN_ICP_ELECTRODES = 8
#: Fewest label-matched electrode pairs a similarity is fitted on.
MIN_MATCHED_PAIRS = 4
_ICP_ITERATIONS = 30
_ICP_TOLERANCE_M = 1e-5
#: The rigid + scale fit is kept only within these limits of the head-frame placement.
_ICP_MAX_ROTATION_DEG = 25.0
_ICP_SCALE_RANGE = (0.8, 1.25)


@dataclass(frozen=True)
class CapPlacement:
    """How a cap was placed on the model's head.

    Attributes:
        method: what the transform was fitted to (one phrase, for the plan).
        transform: `(4, 4)` from the cap's positions as given (head frame) to the model's head.
        scale: its scale factor.
        rotation_deg: its rotation angle, in degrees.
        shift_mm: its translation, in millimetres.
        given_surface_mm, surface_mm: median and largest distance (mm) of the electrodes from the
            model's head surface, as given and as placed.
        nearest_mm: median and largest distance (mm) of the placed electrodes from the nearest
            model electrode.
    """

    method: str
    transform: tuple[tuple[float, ...], ...]
    scale: float
    rotation_deg: float
    shift_mm: tuple[float, float, float]
    given_surface_mm: tuple[float, float]
    surface_mm: tuple[float, float]
    nearest_mm: tuple[float, float]

    def apply(self, positions_m: np.ndarray) -> np.ndarray:
        """`(n, 3)` positions as given → placed on the model's head."""
        matrix = np.asarray(self.transform)
        return np.asarray(positions_m, dtype=np.float64) @ matrix[:3, :3].T + matrix[:3, 3]

    def describe(self) -> str:
        """One line for the plan."""
        shift = ", ".join(f"{v:.0f}" for v in self.shift_mm)
        return (
            f"cap placed on the model's head ({self.method}): scale ×{self.scale:.3f}, rotation "
            f"{self.rotation_deg:.1f}°, shift ({shift}) mm; electrodes from the head surface "
            f"{self.surface_mm[0]:.0f} mm median / {self.surface_mm[1]:.0f} mm max (as given "
            f"{self.given_surface_mm[0]:.0f} / {self.given_surface_mm[1]:.0f} mm), from the nearest model "
            f"electrode {self.nearest_mm[0]:.0f} / {self.nearest_mm[1]:.0f} mm"
        )

    def to_dict(self) -> dict:
        return {
            "method": self.method, "scale": self.scale, "rotation_deg": self.rotation_deg,
            "shift_mm": list(self.shift_mm), "given_surface_mm": list(self.given_surface_mm),
            "surface_mm": list(self.surface_mm), "nearest_mm": list(self.nearest_mm),
        }


# --------------------------------------------------------------------------------------------
# What no fit can mend
# --------------------------------------------------------------------------------------------
def check_positions(
    source: str, labels: Sequence[str], positions: Sequence[Sequence[float] | None], broken: Sequence[str] = ()
) -> None:
    """Refuse (`AdaptationError`, one line naming them) electrodes whose positions are `broken`
    (given, but not finite), two electrodes at one position, or positions whose head size says
    they are in other units than metres (mm written as m, m as mm, cm). `positions`: one per
    label, None where none is given."""
    if broken:
        raise AdaptationError(f"{source}: positions of {listing(list(broken))} are not finite (NaN or Inf); fix "
                              "them in the stream's meta-data or give a montage")
    finite = [(label, np.asarray(p, dtype=np.float64)) for label, p in zip(labels, positions)
              if p is not None and all(map(math.isfinite, p))]
    if len(finite) < 2:
        return
    points = np.array([p for _, p in finite])
    radius = _head_radius(points)
    low, high = HEAD_RADIUS_RANGE_M
    if not low <= radius <= high:
        guess = next((unit for unit, factor in (("millimetres", 1e-3), ("centimetres", 1e-2), ("metres as millimetres", 1e3))
                      if low <= radius * factor <= high), "another unit")
        raise AdaptationError(
            f"{source}: the positions of its {len(points)} electrodes span a head of radius {radius:.4g} m, not "
            f"{low * 100:g}-{high * 100:g} cm: positions in implausible units ({guess}?); metres expected "
            "(XDF location in millimetres)"
        )
    distance = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    same = [(finite[i][0], finite[j][0]) for i, j in zip(*np.nonzero(np.triu(distance < SAME_POSITION_M, 1)))]
    if same:
        pairs = ", ".join(f"{a!r} = {b!r}" for a, b in same[:6]) + (", …" if len(same) > 6 else "")
        raise AdaptationError(f"{source}: electrodes at the same position (within {1e3 * SAME_POSITION_M:g} mm): {pairs}")


def _head_radius(points: np.ndarray) -> float:
    """Radius of the sphere fitted to `points` (at least 4 not in one plane), else their RMS
    distance from the origin (a head frame's origin lies inside the head)."""
    if len(points) >= 4:
        centre, radius = _fit_sphere(points)
        if radius is not None:
            return radius
    return float(np.sqrt(np.mean(np.sum(points**2, axis=1))))


def _fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Least-squares sphere through `points (n, 3)`: `(centre, radius)`, radius None when the
    points are too few or too flat to define one."""
    design = np.c_[2 * points, np.ones(len(points))]
    solution, _, rank, _ = np.linalg.lstsq(design, np.sum(points**2, axis=1), rcond=None)
    centre = solution[:3]
    squared = solution[3] + centre @ centre
    if rank < 4 or squared <= 0:
        return centre, None
    return centre, float(np.sqrt(squared))


# --------------------------------------------------------------------------------------------
# The placement
# --------------------------------------------------------------------------------------------
def surface_distances(points_m: np.ndarray, model_positions_m: np.ndarray, centre_m: np.ndarray) -> np.ndarray:
    """Distance (m) of each point from the model's head surface: the difference between its
    distance from the head's centre and that of the model electrode nearest in direction."""
    model = np.asarray(model_positions_m) - centre_m
    points = np.asarray(points_m) - centre_m
    model_radius = np.linalg.norm(model, axis=1)
    radius = np.linalg.norm(points, axis=1)
    cosine = (points / radius[:, None]) @ (model / model_radius[:, None]).T
    return np.abs(radius - model_radius[np.argmax(cosine, axis=1)])


def place_cap(
    positions_m: np.ndarray,
    labels: Sequence[str],
    model_positions_m: np.ndarray,
    model_fiducials_m: np.ndarray | None = None,
    cap_fiducials_m: np.ndarray | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    source: str = "stream",
    template: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, CapPlacement]:
    """Place a cap's electrodes on the model's head (see the module docstring).

    Args:
        positions_m: `(n, 3)` the cap's electrodes as given (head frame), metres.
        labels: their labels, for messages.
        model_positions_m: `(n_model, 3)` the model's electrodes.
        model_fiducials_m, cap_fiducials_m: `(3, 3)` nasion, LPA, RPA of each, or None.
        pairs: `(given (k, 3), model (k, 3))` positions of electrodes the stream and the model
            share by label; a similarity is fitted on them when there are `MIN_MATCHED_PAIRS`.
        source: the stream's name, for messages.
        template: `(standard (n, 3), fiducials (3, 3))`: the standard positions of the cap's
            labels (NaN rows for labels without one) and the template's fiducials; used to
            orient positions that come without fiducials when `MIN_MATCHED_PAIRS` labels have one.

    Returns:
        `(placed (n, 3), CapPlacement)`.

    Raises:
        AdaptationError: an electrode still farther than `OFF_HEAD_M` from the head surface.
    """
    given = np.asarray(positions_m, dtype=np.float64)
    model = np.asarray(model_positions_m, dtype=np.float64)
    model_centre, model_radius = _fit_sphere(model)
    known = None if template is None else np.isfinite(template[0]).all(axis=1)
    if pairs is not None and len(pairs[0]) >= MIN_MATCHED_PAIRS:
        transform, method = _similarity(pairs[0], pairs[1]), f"fitted on {len(pairs[0])} electrodes shared by label"
    else:
        orient, oriented = np.eye(4), ""
        if cap_fiducials_m is None and known is not None and known.sum() >= MIN_MATCHED_PAIRS:
            orient = _similarity(given[known], template[0][known])  # into the template's frame and size
            cap_fiducials_m, oriented = template[1], "oriented by the standard positions of its labels, then "
        if model_fiducials_m is not None and cap_fiducials_m is not None:
            transform = _similarity(np.asarray(cap_fiducials_m), np.asarray(model_fiducials_m)) @ orient
            method = oriented + "its fiducials onto the model's"
        else:
            transform, method = _sphere_onto_sphere(given, model_centre, model_radius), "its sphere onto the model's"
        if len(given) >= MIN_ICP_ELECTRODES:
            refined = _closest_point_fit(_apply(transform, given), model) @ transform
            if _within_limits(refined @ np.linalg.inv(transform)):
                transform, method = refined, method + " + rigid and scale fit onto the model's electrodes"
    placed = _apply(transform, given)
    off = surface_distances(placed, model, model_centre)
    far = [f"{label!r} ({1e3 * d:.0f} mm)" for label, d in zip(labels, off) if d > OFF_HEAD_M]
    if far:
        raise AdaptationError(
            f"{source}: {len(far)} electrode(s) lie off the model's head even after placing the cap ({method}), more "
            f"than {1e3 * OFF_HEAD_M:g} mm from its surface: {', '.join(far[:8])}{', …' if len(far) > 8 else ''}; "
            "check their positions or give a montage"
        )
    nearest = np.min(np.linalg.norm(placed[:, None, :] - model[None, :, :], axis=-1), axis=1)
    given_off = surface_distances(given, model, model_centre)
    scale, rotation = _scale_rotation(transform)
    return placed, CapPlacement(
        method=method,
        transform=tuple(tuple(float(v) for v in row) for row in transform),
        scale=scale,
        rotation_deg=rotation,
        shift_mm=tuple(float(v) for v in 1e3 * transform[:3, 3]),  # type: ignore[arg-type]
        given_surface_mm=_median_max(given_off),
        surface_mm=_median_max(off),
        nearest_mm=_median_max(nearest),
    )


def place_montage(
    montage: Any, labels: Sequence[str], model_positions_m: np.ndarray, model_fiducials_m: np.ndarray | None = None
) -> tuple[np.ndarray, CapPlacement]:
    """The electrodes `labels` of a montage (MNE name, file or ``DigMontage``) placed on a head
    given by its electrodes and fiducials: where a cap of that layout sits on it, as `serve`
    places it (its own fiducials, then the model's, then the rigid + scale fit). `AdaptationError`
    for labels the montage lacks."""
    from brainformer.adaptation.positions import load_montage, montage_fiducials, montage_positions

    montage = load_montage(montage) if isinstance(montage, (str, Path)) else montage
    given = montage_positions(montage, labels)
    missing = [label for label, p in zip(labels, given) if p is None]
    if missing:
        raise AdaptationError(f"montage: no position for {listing(missing)}")
    return place_cap(np.array(given), labels, np.asarray(model_positions_m), model_fiducials_m,
                     montage_fiducials(montage), source="montage")


def _median_max(distances_m: np.ndarray) -> tuple[float, float]:
    return float(1e3 * np.median(distances_m)), float(1e3 * np.max(distances_m))


def _apply(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ transform[:3, :3].T + transform[:3, 3]


def _similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """`(4, 4)` rotation, shift and one scale taking `source (k, 3)` onto `target (k, 3)` in the
    least-squares sense (MNE's ``fit_matched_points``)."""
    from mne.coreg import fit_matched_points

    return np.asarray(fit_matched_points(np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64),
                                         rotate=True, translate=True, scale=1, out="trans"), dtype=np.float64)


def _sphere_onto_sphere(points: np.ndarray, centre: np.ndarray, radius: float | None) -> np.ndarray:
    """`(4, 4)` scale about the cap's own sphere and shift onto the model's sphere. Electrodes too
    few or too flat to define a sphere of their own are taken to share the model's centre (both
    are in a head frame) and scaled about it by their median distance from it."""
    transform = np.eye(4)
    if radius is None:
        return transform
    own_centre, own_radius = _fit_sphere(points) if len(points) >= MIN_ICP_ELECTRODES else (centre, None)
    low, high = HEAD_RADIUS_RANGE_M
    if own_radius is None or not low <= own_radius <= high:
        own_centre = centre
        own_radius = float(np.median(np.linalg.norm(points - centre, axis=1)))
    scale = radius / own_radius
    transform[:3, :3] *= scale
    transform[:3, 3] = centre - scale * own_centre
    return transform


def _closest_point_fit(points: np.ndarray, model: np.ndarray) -> np.ndarray:
    """`(4, 4)` rigid + scale transform of `points` onto the model's electrodes, by iterative
    closest points (each electrode paired with the nearest model electrode, the similarity of
    the pairs fitted, until it stops moving)."""
    total = np.eye(4)
    current = points
    for _ in range(_ICP_ITERATIONS):
        nearest = np.argmin(np.linalg.norm(current[:, None, :] - model[None, :, :], axis=-1), axis=1)
        step = _similarity(current, model[nearest])
        moved = _apply(step, current)
        total = step @ total
        if np.max(np.linalg.norm(moved - current, axis=1)) < _ICP_TOLERANCE_M:
            break
        current = moved
    return total


def _scale_rotation(transform: np.ndarray) -> tuple[float, float]:
    """Scale factor and rotation angle (degrees) of a similarity transform."""
    linear = transform[:3, :3]
    scale = float(np.cbrt(abs(np.linalg.det(linear))))
    rotation = linear / scale
    cosine = np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0)
    return scale, float(np.degrees(np.arccos(cosine)))


def _within_limits(change: np.ndarray) -> bool:
    """Is the rigid + scale fit a refinement (small rotation, moderate scale), not a slide?"""
    scale, rotation = _scale_rotation(change)
    return rotation <= _ICP_MAX_ROTATION_DEG and _ICP_SCALE_RANGE[0] <= scale <= _ICP_SCALE_RANGE[1]
