"""Stream descriptions read from real LSL meta-data: mne-lsl's `PlayerLSL` (``loc`` in metres,
exponent units) and the XDF convention (``location`` in mm, ``microvolts``) written by pylsl."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from brainformer.adaptation import Adapter, plan_adaptation, source_from_lsl_xml

pylsl = pytest.importorskip("pylsl")


@pytest.fixture(scope="module")
def player_xml(sample_fif):
    from mne_lsl.player import PlayerLSL

    source_id = f"brainformer-adaptation-{uuid.uuid4().hex[:8]}"
    player = PlayerLSL(sample_fif, chunk_size=16, name="AdaptationPlayer", source_id=source_id)
    player.start()
    try:
        infos = pylsl.resolve_byprop("source_id", source_id, timeout=5.0)
        assert infos, "the player's stream was not found"
        inlet = pylsl.StreamInlet(infos[0])
        xml = inlet.info(timeout=5.0).as_xml()
        inlet.close_stream()
        return xml
    finally:
        player.stop()


def test_mne_lsl_player_stream_plans_as_the_recording(player_xml, eeg_raw, default_fields, model_positions):
    source = source_from_lsl_xml(player_xml)
    assert source.channel_format == "double64" and source.sfreq_hz == pytest.approx(eeg_raw.info["sfreq"])
    eeg = [i for i, t in enumerate(source.types) if t == "eeg"]
    assert [source.labels[i] for i in eeg] == list(default_fields.eeg_channel_names)
    assert {source.units[i] for i in eeg} == {"0"}  # mne-lsl's exponent: volts
    np.testing.assert_allclose([source.positions_m[i] for i in eeg], model_positions, rtol=1e-12)
    meg = [i for i, t in enumerate(source.types) if t in ("mag", "grad")]
    assert all(source.positions_m[i] is None for i in meg)  # device frame: not a head position
    plan = plan_adaptation(default_fields, source)
    assert plan.is_selection and {f for _, _, f in plan.units} == {1.0}
    assert "type stim" in plan.describe() and "type eog" in plan.describe()
    chunk = np.random.default_rng(0).standard_normal((16, source.n_channels))
    out, _ = Adapter(plan).apply(chunk)
    np.testing.assert_allclose(out, chunk[:, eeg].astype(np.float32))


def test_xdf_convention_millimetres_and_microvolts(default_fields, model_positions):
    labels = ["Trigger"] + [n.replace(" ", "") for n in default_fields.eeg_channel_names[:50]]
    info = pylsl.StreamInfo("Amp", "EEG", len(labels), 500.0, "float32", f"xdf-{uuid.uuid4().hex[:8]}")
    channels = info.desc().append_child("channels")
    for k, label in enumerate(labels):
        channel = channels.append_child("channel")
        channel.append_child_value("label", label)
        channel.append_child_value("type", "TRG" if k == 0 else "EEG")
        channel.append_child_value("unit", "" if k == 0 else "microvolts")
        if k:
            location = channel.append_child("location")
            for axis, value in zip("XYZ", 1e3 * model_positions[k - 1]):
                location.append_child_value(axis, repr(float(value)))
    source = source_from_lsl_xml(info.as_xml())
    assert source.labels == tuple(labels) and source.positions_m[0] is None
    np.testing.assert_allclose(source.positions_m[1:], model_positions[:50], rtol=1e-9)
    plan = plan_adaptation(default_fields, source)
    assert plan.mode == "missing" and len(plan.interpolated) == 10 and plan.resample
    assert {f for _, _, f in plan.units} == {1e-6} and plan.ignored == (("Trigger", "type trg"),)
