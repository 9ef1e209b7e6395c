"""Caps placed on the model's head (brainformer.adaptation.coregistration) and the inputs no
placement can mend (duplicated labels, positions not finite, duplicated or in other units)."""

from __future__ import annotations

import numpy as np
import pytest

from brainformer.adaptation import AdaptationError, AdaptationOptions, SourceDescription, plan_adaptation
from brainformer.adaptation.coregistration import (
    OFF_HEAD_M,
    check_positions,
    place_cap,
    place_montage,
    surface_distances,
)
from brainformer.adaptation.interpolation import nearest_distances
from brainformer.adaptation.metadata import source_from_lsl_xml
from brainformer.adaptation.positions import load_montage, montage_positions

CAP_32 = tuple(
    "Fp1 Fp2 F7 F3 Fz F4 F8 FC5 FC1 FC2 FC6 T7 C3 Cz C4 T8 TP9 CP5 CP1 CP2 CP6 TP10 P7 P3 Pz P4 P8 PO9 O1 Oz O2 PO10".split()
)
CAP_19 = tuple("Fp1 Fp2 F7 F3 Fz F4 F8 T7 C3 Cz C4 T8 P7 P3 Pz P4 P8 O1 O2".split())


def _rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[axis]
    rotation = np.eye(3)
    rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = c, -s, s, c
    return rotation


def _source(labels, positions=None, name="amp"):
    return SourceDescription(name=name, labels=tuple(labels), sfreq_hz=600.614990234375, units=("V",) * len(labels),
                             positions_m=() if positions is None else tuple(map(tuple, positions)))


@pytest.fixture(scope="module")
def model_head(default_fields):
    return np.asarray(default_fields.eeg_positions_m), np.asarray(default_fields.eeg_fiducials_m)


def test_a_template_cap_lands_on_the_model_head(model_head):
    """standard_1020 in the frame of its own fiducials sits far from the model's electrodes
    (another head's size); placed, it lies on the model's head surface and nearer its electrodes."""
    positions, fiducials = model_head
    as_given = np.array(montage_positions(load_montage("standard_1020"), CAP_32))
    placed, placement = place_montage("standard_1020", CAP_32, positions, fiducials)
    _, given_nearest = nearest_distances(as_given, positions)
    _, placed_nearest = nearest_distances(placed, positions)
    assert np.median(placed_nearest) < np.median(given_nearest) and placed_nearest.max() < given_nearest.max()
    centre = np.mean(positions, axis=0)
    assert np.median(surface_distances(placed, positions, centre)) < 0.012
    assert 0.8 < placement.scale < 1.2 and placement.rotation_deg < 25
    assert placement.surface_mm[1] < 1e3 * OFF_HEAD_M
    assert "its fiducials onto the model's" in placement.describe()
    np.testing.assert_allclose(placement.apply(as_given), placed, atol=1e-12)


def test_serve_with_a_montage_places_the_cap_as_simulate_does(default_fields, model_head):
    """Labels only + --montage: the plan's electrodes are exactly where `place_montage` (which
    `simulate --cap` uses) puts them, and the plan says how they were placed."""
    positions, fiducials = model_head
    plan = plan_adaptation(default_fields, _source(CAP_19), AdaptationOptions(montage="standard_1020"))
    placed, _ = place_montage("standard_1020", CAP_19, positions, fiducials)
    np.testing.assert_allclose(np.array(plan.used_positions_m), placed, atol=1e-12)
    assert plan.used_model_index == (-1,) * 19
    assert "cap placed on the model's head" in plan.describe()


@pytest.mark.parametrize("degrees", [20, 90])
def test_positions_of_another_frame_and_head_are_brought_onto_the_model_head(default_fields, model_head, degrees):
    """The cap as a digitiser would send it from a 15 % larger head, in a frame turned about the
    vertical (90°: CTF's x through the nasion) and shifted: oriented by the standard positions of
    its 10-20 labels, it lands where the montage placement puts it."""
    positions, fiducials = model_head
    reference, _ = place_montage("standard_1020", CAP_32, positions, fiducials)
    foreign = 1.15 * reference @ _rotation("z", degrees).T + np.array([0.04, -0.01, 0.02])
    plan = plan_adaptation(default_fields, _source(CAP_32, foreign))
    placed = np.array(plan.used_positions_m)
    moved = np.linalg.norm(placed - reference, axis=1)
    assert moved.max() < 1e-3, 1e3 * moved
    assert plan.placement.method.startswith("oriented by the standard positions of its labels")


def test_positions_without_standard_labels_are_fitted_by_their_sphere(default_fields, model_head):
    """Labels no template knows, positions in a head frame but of a larger head: scaled onto the
    model's head by the spheres and the rigid + scale fit, a few millimetres from the montage
    placement."""
    positions, fiducials = model_head
    reference, _ = place_montage("standard_1020", CAP_32, positions, fiducials)
    centre = reference.mean(axis=0)
    foreign = centre + 1.15 * (reference - centre) + np.array([0.0, 0.0, 0.01])
    labels = [f"E{i:02d}" for i in range(len(CAP_32))]
    plan = plan_adaptation(default_fields, _source(labels, foreign))
    moved = np.linalg.norm(np.array(plan.used_positions_m) - reference, axis=1)
    assert np.median(moved) < 0.008 and moved.max() < 0.02, 1e3 * moved
    assert plan.placement.method.startswith("its sphere onto the model's")


def test_electrodes_shared_by_label_fix_the_transform_exactly(default_fields, model_head):
    """A stream of the model's electrodes in another frame, 20 of them under the model's labels and
    20 under other labels: the similarity fitted on the shared 20 puts the others exactly where
    they belong."""
    positions, _ = model_head
    names = list(default_fields.eeg_channel_names)
    rotation = _rotation("x", 12) @ _rotation("z", -30)
    foreign_frame = 0.9 * positions @ rotation.T + np.array([0.01, 0.05, -0.03])
    shared, other = list(range(0, 40, 2)), list(range(1, 40, 2))
    labels = [names[i] for i in shared] + [f"X{i}" for i in other]
    plan = plan_adaptation(default_fields, _source(labels, foreign_frame[shared + other]),
                           AdaptationOptions(max_missing_fraction=None))
    assert "20 electrodes shared by label" in plan.placement.method
    foreign = [k for k, j in enumerate(plan.used_model_index) if j < 0]
    np.testing.assert_allclose(np.array([plan.used_positions_m[k] for k in foreign]), positions[other], atol=1e-9)


def test_an_electrode_off_the_head_is_refused_by_name(default_fields, model_head):
    positions, fiducials = model_head
    placed, _ = place_montage("standard_1020", CAP_32, positions, fiducials)
    placed[CAP_32.index("Cz")] += np.array([0.0, 0.0, 0.06])  # 6 cm above the scalp
    with pytest.raises(AdaptationError) as error:
        plan_adaptation(default_fields, _source(CAP_32, placed))
    message = str(error.value)
    assert "'Cz'" in message and "off the model's head" in message and "\n" not in message


# ----------------------------------------------------------------------------------------------
# What no placement can mend: exit 2 with one line naming it
# ----------------------------------------------------------------------------------------------
def test_duplicated_labels_are_refused_by_name(default_fields, model_head):
    positions, fiducials = model_head
    labels = list(CAP_19[:10]) + list(CAP_19[:9])  # 19 channels, 10 electrodes
    with pytest.raises(AdaptationError) as error:
        plan_adaptation(default_fields, _source(labels), AdaptationOptions(montage="standard_1020"))
    message = str(error.value)
    assert "share a label" in message and "'Fp1' at columns 0, 10" in message and "\n" not in message
    model_labels = list(default_fields.eeg_channel_names[:30]) + ["EEG 001"]
    with pytest.raises(AdaptationError, match="'EEG 001'"):
        plan_adaptation(default_fields, _source(model_labels), AdaptationOptions(max_missing_fraction=None))


def test_positions_at_one_place_are_refused(default_fields, model_head):
    positions, fiducials = model_head
    placed, _ = place_montage("standard_1020", CAP_19, positions, fiducials)
    placed[CAP_19.index("Pz")] = placed[CAP_19.index("Cz")]
    with pytest.raises(AdaptationError, match=r"same position .*'Cz' = 'Pz'"):
        plan_adaptation(default_fields, _source(CAP_19, placed))


@pytest.mark.parametrize("factor, unit", [(1e3, "millimetres"), (1e-3, "metres as millimetres"), (1e2, "centimetres")])
def test_positions_in_other_units_are_refused(default_fields, model_head, factor, unit):
    positions, fiducials = model_head
    placed, _ = place_montage("standard_1020", CAP_19, positions, fiducials)
    with pytest.raises(AdaptationError) as error:
        plan_adaptation(default_fields, _source(CAP_19, placed * factor))
    assert "implausible units" in str(error.value) and f"({unit}?)" in str(error.value)


def test_positions_that_are_not_finite_are_refused_from_the_stream_metadata(default_fields, model_head):
    """XDF meta-data whose ``location`` of two electrodes holds NaN or Inf: refused, named."""
    positions, fiducials = model_head
    placed, _ = place_montage("standard_1020", CAP_19, positions, fiducials)
    channels = []
    for label, xyz in zip(CAP_19, 1e3 * placed):
        values = [f"{v:.3f}" for v in xyz]
        if label == "Cz":
            values[1] = "nan"
        if label == "O2":
            values[2] = "inf"
        location = "".join(f"<{axis}>{v}</{axis}>" for axis, v in zip("XYZ", values))
        channels.append(f"<channel><label>{label}</label><type>EEG</type><unit>microvolts</unit>"
                        f"<location>{location}</location></channel>")
    xml = (f"<info><name>amp</name><channel_count>{len(CAP_19)}</channel_count><nominal_srate>600.614990234375"
           f"</nominal_srate><channel_format>float32</channel_format><desc><channels>{''.join(channels)}</channels>"
           "</desc></info>")
    source = source_from_lsl_xml(xml)
    with pytest.raises(AdaptationError) as error:
        plan_adaptation(default_fields, source)
    assert "not finite" in str(error.value) and "'Cz'" in str(error.value) and "'O2'" in str(error.value)
    # All three coordinates NaN is how MNE says "no position": not an error by itself.
    check_positions("amp", ["Cz"], [None])


def test_place_cap_keeps_a_placement_for_a_replan(default_fields, model_head):
    """A bad electrode re-plans with the start-up placement (no new fit on fewer electrodes)."""
    positions, fiducials = model_head
    plan = plan_adaptation(default_fields, _source(CAP_32), AdaptationOptions(montage="standard_1020"))
    replanned = plan.with_bad_channels(["Cz"])
    assert replanned.placement is plan.placement
    kept = [k for k, label in enumerate(CAP_32) if label != "Cz"]
    np.testing.assert_allclose(np.array(replanned.used_positions_m), np.array(plan.used_positions_m)[kept])
    placed, _ = place_cap(np.array(montage_positions(load_montage("standard_1020"), CAP_32)), CAP_32, positions,
                          fiducials, None)  # without the montage's fiducials: from the electrodes alone
    assert np.isfinite(placed).all()
