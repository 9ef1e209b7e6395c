"""The plan's interpolation equals MNE's own: `interpolate_bads` for missing or bad electrodes,
`interpolate_to(montage, method="spline")` for a stream from another cap."""

from __future__ import annotations

import mne
import numpy as np
import pytest

from brainformer.adaptation import AdaptationOptions, Adapter, SourceDescription, plan_adaptation
from brainformer.adaptation.positions import standard_montage

MISSING = ["EEG 005", "EEG 013", "EEG 027", "EEG 044", "EEG 058"]
CAP_32 = (
    "Fp1 Fp2 F7 F3 Fz F4 F8 FC5 FC1 FC2 FC6 T7 C3 Cz C4 T8 TP9 CP5 CP1 CP2 CP6 TP10 "
    "P7 P3 Pz P4 P8 PO9 O1 Oz O2 PO10"
).split()
N = 2000  # samples compared


def _adapt(plan, data):
    out, _ = Adapter(plan, max_chunk_samples=N).apply(np.ascontiguousarray(data), np.arange(len(data)) / 600.0)
    return out.astype(np.float64)


def test_missing_electrodes_equal_interpolate_bads(eeg_raw, default_fields):
    stream = eeg_raw.copy().drop_channels(MISSING)
    plan = plan_adaptation(default_fields, SourceDescription.from_raw(stream))
    assert plan.mode == "missing" and [m for m, _, _ in plan.interpolated] == MISSING
    expected = eeg_raw.copy()
    expected.info["bads"] = list(MISSING)
    expected.interpolate_bads(origin=plan.origin_m, reset_bads=True, verbose="error")
    got = _adapt(plan, stream.get_data().T[:N])
    want = expected.get_data().T[:N]
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * scale)  # float32 output
    # The electrodes present are copied, not smoothed.
    present = [i for i, name in enumerate(eeg_raw.ch_names) if name not in MISSING]
    np.testing.assert_allclose(got[:, present], want[:, present], rtol=1e-6, atol=0)


def test_bad_channels_replan_equals_interpolate_bads(eeg_raw, default_fields):
    plan = plan_adaptation(default_fields, SourceDescription.from_raw(eeg_raw))
    assert plan.is_selection and not plan.interpolated
    bad = plan.with_bad_channels(["EEG 017", "eeg 031"])
    assert bad.bad_channels == ("EEG 017", "EEG 031") and not bad.is_selection
    expected = eeg_raw.copy()
    expected.info["bads"] = ["EEG 017", "EEG 031"]
    expected.interpolate_bads(origin=bad.origin_m, reset_bads=True, verbose="error")
    adapter = Adapter(plan, max_chunk_samples=N)
    adapter.set_plan(bad)
    got, _ = adapter.apply(eeg_raw.get_data().T[:N].copy())
    want = expected.get_data().T[:N]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())


def _cap_32(eeg_raw):
    montage = standard_montage("standard_1020")
    montage = montage.copy()
    montage.ch_names  # noqa: B018 - the 94 names
    montage_32 = mne.channels.make_dig_montage(
        ch_pos={name: pos for name, pos in montage.get_positions()["ch_pos"].items() if name in CAP_32},
        nasion=montage.get_positions()["nasion"],
        lpa=montage.get_positions()["lpa"],
        rpa=montage.get_positions()["rpa"],
        coord_frame="unknown",
    )
    # Real EEG seen through a 32-electrode 10-20 cap (MNE's own mapping), as a stream would send it.
    return eeg_raw.copy().interpolate_to(montage_32, method="spline", origin=(0.0, 0.0, 0.04))


@pytest.mark.parametrize("positions_from", ["metadata", "montage"])
def test_other_cap_equals_interpolate_to(eeg_raw, default_fields, model_positions, positions_from):
    cap = _cap_32(eeg_raw)
    cap_eeg = cap.copy().pick("eeg")
    if positions_from == "metadata":  # positions sent with the stream (mne-lsl `loc`, XDF `location`)
        source, options = SourceDescription.from_raw(cap_eeg), AdaptationOptions()
    else:  # labels only, positions from MNE's standard montage
        described = SourceDescription.from_raw(cap_eeg)
        source = SourceDescription(name="cap", labels=described.labels, sfreq_hz=described.sfreq_hz,
                                   units=described.units, channel_format="double64")
        options = AdaptationOptions(montage="standard_1020")
    plan = plan_adaptation(default_fields, source, options)
    assert plan.mode == "other cap" and len(plan.interpolated) == 60 and not plan.channels
    model_montage = mne.channels.make_dig_montage(
        ch_pos=dict(zip(default_fields.eeg_channel_names, model_positions)), coord_frame="head"
    )
    # The cap as the plan placed it on the model's head (brainformer.adaptation.coregistration).
    cap_positions = np.array(plan.used_positions_m)
    placed = cap_eeg.copy().set_montage(
        mne.channels.make_dig_montage(ch_pos=dict(zip(cap_eeg.ch_names, cap_positions)), coord_frame="head")
    )
    expected = placed.interpolate_to(model_montage, method="spline", origin=plan.origin_m, reg=plan.options.spline_reg)
    assert expected.ch_names == list(default_fields.eeg_channel_names)
    want = expected.get_data().T[:N]
    got = _adapt(plan, cap_eeg.get_data().T[:N])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
    # Distances: each model electrode to its nearest cap electrode.
    d = np.linalg.norm(model_positions[:, None] - cap_positions[None], axis=-1)
    assert [s for _, s, _ in plan.interpolated] == [cap_eeg.ch_names[k] for k in d.argmin(1)]
    np.testing.assert_allclose([x for _, _, x in plan.interpolated], d.min(1), rtol=1e-9)
    assert "another cap" in plan.describe() and "farthest model electrode" in plan.describe()
