"""A cap described by a montage file: the file written here, read through `AdaptationOptions(montage=…)`,
and the plan checked against the positions written.

The cap is 32 of the bundled recording's own 60 electrodes, at their digitised head-frame
positions and with the recording's fiducials, under labels the model does not know (a stream
from another cap, positions from the file only). So the answers are known without MNE: 32 model
electrodes sit exactly on a cap electrode, the others at distances computed here, and a field
that is linear in position on the head is interpolated where nothing measured it.
"""

from __future__ import annotations

import mne
import numpy as np
import pytest

from brainformer.adaptation import AdaptationError, AdaptationOptions, Adapter, SourceDescription, plan_adaptation

HZ = 600.614990234375
#: Every other electrode of the recording, as the cap (its own labels, C01…C30).
CAP = list(range(0, 60, 2))
CAP_LABELS = [f"C{k + 1:02d}" for k in range(len(CAP))]


def fiducials_m(raw) -> dict[str, np.ndarray]:
    """Nasion, LPA and RPA of the recording (head frame, metres)."""
    names = {mne.io.constants.FIFF.FIFFV_POINT_NASION: "Nz", mne.io.constants.FIFF.FIFFV_POINT_LPA: "LPA",
             mne.io.constants.FIFF.FIFFV_POINT_RPA: "RPA"}
    return {names[d["ident"]]: np.asarray(d["r"], float) for d in raw.info["dig"]
            if d["kind"] == mne.io.constants.FIFF.FIFFV_POINT_CARDINAL}


def write_elc(path, labels: list[str], positions_m: np.ndarray, fiducials: dict[str, np.ndarray]):
    """An ASA electrode file (`.elc`, ANT Neuro's digitiser format), positions in millimetres."""
    names = [*labels, *fiducials]
    points = np.vstack([positions_m, *fiducials.values()]) * 1e3
    lines = ["# ASA electrode file", "ReferenceLabel avg", "UnitPosition mm", f"NumberPositions= {len(names)}",
             "Positions", *(f"{x:.6f} {y:.6f} {z:.6f}" for x, y, z in points), "Labels", *names, ""]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def cap_file(tmp_path_factory, raw, model_positions):
    path = tmp_path_factory.mktemp("montage") / "cap.elc"
    return write_elc(path, CAP_LABELS, model_positions[CAP], fiducials_m(raw))


def cap_source() -> SourceDescription:
    """A stream that sends labels and units only (no positions in its meta-data)."""
    return SourceDescription(name="cap", labels=tuple(CAP_LABELS), sfreq_hz=HZ, units=("V",) * len(CAP),
                             channel_format="double64")


def test_a_montage_file_places_the_cap_at_the_positions_it_holds(cap_file, default_fields, model_positions):
    plan = plan_adaptation(default_fields, cap_source(), AdaptationOptions(montage=cap_file))
    assert plan.mode == "other cap" and len(plan.interpolated) == 60
    nearest = {model: (cap, distance) for model, cap, distance in plan.interpolated}
    names = list(default_fields.eeg_channel_names)
    # The electrodes of the cap are where the file put them: on the model's own electrodes
    # (the file holds them to a micrometre) ...
    for label, index in zip(CAP_LABELS, CAP):
        assert nearest[names[index]][0] == label and nearest[names[index]][1] < 1e-5, (names[index], nearest[names[index]])
    # ... and every other model electrode is as far from the cap as the positions say.
    cap_positions = model_positions[CAP]
    for index in sorted(set(range(60)) - set(CAP)):
        distances = np.linalg.norm(cap_positions - model_positions[index], axis=1)
        assert nearest[names[index]][0] == CAP_LABELS[int(distances.argmin())]
        assert nearest[names[index]][1] == pytest.approx(distances.min(), abs=1e-5)


def test_a_field_linear_in_position_is_interpolated_where_the_cap_has_no_electrode(cap_file, default_fields,
                                                                                   model_positions):
    """Two potential maps linear in position (a smooth field, as far-away sources give), mixed
    over time: the adapted EEG at the model's other 30 electrodes is the field there."""
    plan = plan_adaptation(default_fields, cap_source(), AdaptationOptions(montage=cap_file))
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((3, 2))
    time_courses = 1e-5 * rng.standard_normal((500, 2))  # volts per metre of the two maps
    field = time_courses @ (model_positions @ directions).T  # (time, 60): the potential at each electrode
    field -= field.mean(axis=1, keepdims=True)  # average-referenced, like EEG
    adapted, _ = Adapter(plan, max_chunk_samples=500).apply(np.ascontiguousarray(field[:, CAP]), np.arange(500) / HZ)

    def relative_error(electrodes: list[int]) -> float:
        error = adapted[:, electrodes] - field[:, electrodes]
        return float(np.sqrt((error**2).mean() / (field[:, electrodes] ** 2).mean()))

    # Bounds: the splines, regularised, give 2–3 % here (seeds 0–4); with the cap shrunk to
    # MNE's standard head size, as a montage file's positions once were, 22 %.
    assert relative_error(sorted(set(range(60)) - set(CAP))) < 0.05
    assert relative_error(CAP) < 0.03  # where the cap measured, the field comes through (1–2 %)


def test_an_unreadable_montage_file_is_one_line_naming_it(tmp_path, default_fields):
    broken = tmp_path / "broken.elc"
    broken.write_text("# ASA electrode file\nPositions\n1 2 3\n")  # no UnitPosition line
    with pytest.raises(AdaptationError) as error:
        plan_adaptation(default_fields, cap_source(), AdaptationOptions(montage=broken))
    message = str(error.value)
    assert message.startswith(f"montage file {broken}: cannot read") and "\n" not in message
