"""brainformer.evaluation.artefacts: heartbeats and blinks of the raw recording, the clean rows."""

from __future__ import annotations

import math

import mne
import numpy as np
import pytest

from brainformer.evaluation import (
    BLINK_WINDOW_S,
    HEARTBEAT_WINDOW_S,
    ArtefactEvents,
    ArtefactMask,
    EvaluationError,
    detect_artefacts,
    score_methods,
)
from brainformer.evaluation.artefacts import MAX_RR_VARIATION


@pytest.fixture(scope="module")
def sample_raw(sample_fif):
    return mne.io.read_raw_fif(sample_fif, preload=True, verbose="error")


@pytest.fixture(scope="module")
def sample_events(sample_raw) -> ArtefactEvents:
    return detect_artefacts(sample_raw)


def test_heartbeats_and_blinks_of_the_bundled_recording_are_those_mne_finds(sample_raw, sample_events):
    """Checked independently of the module: MNE's detectors run here directly, and the counts are
    fixed by the data (the recording has no ECG channel, so the R peaks come from MNE's synthetic
    ECG of the magnetometers; one EOG channel). By hand on 2026-12-03: 23 R peaks at 58 bpm, 4
    blinks, all in the first 15 s; a plausible resting rhythm for 24 s."""
    ecg, _, heart_rate = mne.preprocessing.find_ecg_events(sample_raw, verbose="error")
    eog = mne.preprocessing.find_eog_events(sample_raw, verbose="error")
    np.testing.assert_array_equal(sample_events.heartbeats, ecg[:, 0] - sample_raw.first_samp)
    np.testing.assert_array_equal(sample_events.blinks, eog[:, 0] - sample_raw.first_samp)
    assert sample_events.ecg_source == "synthetic ECG from the magnetometers"
    assert sample_events.eog_source == "EOG 061" and sample_events.blinks_detected
    assert sample_events.notes == ()
    # A heartbeat, not noise: about one beat a second, evenly spaced.
    duration_s = sample_raw.n_times / sample_raw.info["sfreq"]
    assert 40 < 60 * sample_events.heartbeats.size / duration_s < 100
    assert math.isclose(sample_events.heart_rate_bpm, heart_rate)
    intervals = np.diff(sample_events.heartbeats)
    assert intervals.std() / intervals.mean() < MAX_RR_VARIATION
    assert 1 <= sample_events.blinks.size <= sample_events.heartbeats.size
    assert np.all((sample_events.heartbeats >= 0) & (sample_events.heartbeats < sample_raw.n_times))


def test_the_clean_mask_leaves_out_exactly_minus_150_to_plus_250_ms_around_an_r_peak(sample_events):
    sfreq = sample_events.sfreq_hz
    peak = int(sample_events.heartbeats[len(sample_events.heartbeats) // 2])
    start, stop = peak - 200, peak + 300
    mask = ArtefactMask.for_rows(sample_events, start, stop)
    offsets_s = (np.arange(start, stop) - peak) / sfreq
    inside = (offsets_s >= -0.150) & (offsets_s <= 0.250)
    # Only this peak's window reaches these rows: the neighbouring beats' windows end before them.
    others = np.delete(sample_events.heartbeats, len(sample_events.heartbeats) // 2)
    assert np.all((others + 0.250 * sfreq < start) | (others - 0.150 * sfreq >= stop))
    np.testing.assert_array_equal(mask.cardiac, inside)
    first, last = np.flatnonzero(mask.cardiac)[[0, -1]] + start
    assert (peak - first) / sfreq <= 0.150 < (peak - first + 1) / sfreq  # the one just before is kept
    assert (last - peak) / sfreq <= 0.250 < (last - peak + 1) / sfreq  # and the one just after
    if np.all((sample_events.blinks + 0.300 * sfreq < start) | (sample_events.blinks - 0.300 * sfreq >= stop)):
        np.testing.assert_array_equal(mask.clean, ~inside)
    assert mask.clean_share == pytest.approx(mask.clean.mean())


def test_blink_windows_are_300_ms_either_side_and_decimation_maps_rows_to_raw_samples():
    sfreq = 1000.0
    events = ArtefactEvents(sfreq, 10_000, heartbeats=np.array([2000]), blinks=np.array([6000]), blinks_detected=True)
    rows = ArtefactMask.for_rows(events, 1000, 4000, decimation=2)  # row r = raw sample 2 r
    raw_samples = np.arange(1000, 4000) * 2
    np.testing.assert_array_equal(rows.cardiac, (raw_samples >= 1850) & (raw_samples <= 2250))
    blink = (raw_samples >= 5700) & (raw_samples <= 6300)
    np.testing.assert_array_equal(rows.clean, ~(rows.cardiac | blink))
    assert blink.sum() == 301 and rows.events_in_rows() == (1, 1)
    assert HEARTBEAT_WINDOW_S == (0.150, 0.250) and BLINK_WINDOW_S == 0.300
    with pytest.raises(EvaluationError, match="decimation"):
        ArtefactMask.for_rows(events, 10, 5, decimation=1)


def test_a_recording_without_eog_and_without_a_cardiac_field_gives_notes_and_no_windows(sample_raw):
    """Real faults: the EOG channel dropped, the magnetometers replaced by white noise (MNE still
    makes a synthetic ECG of them and picks "R peaks" in it, without any rhythm)."""
    raw = sample_raw.copy().drop_channels(["EOG 061"])
    rng = np.random.default_rng(0)
    raw.apply_function(lambda x: 1e-13 * rng.standard_normal(x.shape), picks="mag")
    events = detect_artefacts(raw)
    assert events.heartbeats.size == 0 and events.blinks.size == 0 and not events.blinks_detected
    assert any("no EOG channel" in note for note in events.notes), events.notes
    assert any("without a heart rhythm" in note for note in events.notes), events.notes
    mask = ArtefactMask.for_rows(events, 0, raw.n_times)
    assert mask.clean.all() and not mask.cardiac.any() and mask.clean_share == 1.0


def test_a_simulated_recording_is_artefact_free_by_construction(tmp_path):
    info = mne.create_info(["MEG 0111", "EEG 001"], 600.0, ["mag", "eeg"])
    info["description"] = "brainformer simulation, layout sample"
    raw = mne.io.RawArray(np.random.default_rng(1).standard_normal((2, 6000)) * 1e-12, info, verbose="error")
    events = detect_artefacts(raw)
    assert events.heartbeats.size == 0 and events.blinks.size == 0
    assert events.notes and "simulated recording" in events.notes[0]


def test_score_methods_on_a_subset_uses_the_blocks_drawn_for_all_samples():
    rng = np.random.default_rng(3)
    truth = rng.standard_normal((1000, 3))
    predicted = {"a": truth + rng.standard_normal((1000, 3)), "b": truth + 2 * rng.standard_normal((1000, 3))}
    types = ["mag", "grad", "grad"]
    everything = score_methods(truth, predicted, types, 100.0, bootstrap_replicates=40)
    # A mask keeping everything changes nothing, to the last bit.
    kept = score_methods(truth, predicted, types, 100.0, bootstrap_replicates=40, sample_mask=np.ones(1000, bool))
    for name in predicted:
        np.testing.assert_array_equal(kept[name].scores.r, everything[name].scores.r)
        np.testing.assert_array_equal(kept[name].bootstrap_r, everything[name].bootstrap_r)
    # A subset is scored on its samples only; its replicates resample the same blocks.
    mask = np.zeros(1000, bool)
    mask[::3] = True
    subset = score_methods(truth, predicted, types, 100.0, bootstrap_replicates=40, sample_mask=mask)
    from brainformer.evaluation import pearson_r

    np.testing.assert_allclose(subset["a"].scores.r, pearson_r(truth[mask], predicted["a"][mask]))
    assert subset["a"].predictions.shape == (mask.sum(), 3)
    assert subset["a"].bootstrap_r.shape == (40,) and np.all(np.isfinite(subset["a"].bootstrap_r))
    with pytest.raises(EvaluationError, match="sample_mask keeps 1"):
        score_methods(truth, predicted, types, 100.0, sample_mask=np.eye(1, 1000, dtype=bool)[0])
