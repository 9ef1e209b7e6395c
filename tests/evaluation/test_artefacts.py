"""brainformer.evaluation.artefacts: heartbeats and blinks of the raw recording, the clean rows."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def sample_raw(sample_fif):
    return mne.io.read_raw_fif(sample_fif, preload=True, verbose="error")


@pytest.fixture(scope="module")
def sample_events(sample_raw) -> ArtefactEvents:
    return detect_artefacts(sample_raw)


def test_the_bundled_recording_has_23_heartbeats_and_4_blinks(sample_raw, sample_events):
    """Counted by hand once (2026-12-03) and fixed by the data: 23 R peaks at 58 bpm from the
    synthetic ECG of the magnetometers (the recording has no ECG channel), 4 blinks on its one
    EOG channel, all in the first 15 s of the 24 s."""
    assert sample_events.heartbeats.size == 23 and sample_events.blinks.size == 4
    assert sample_events.ecg_source == "synthetic ECG from the magnetometers"
    assert sample_events.eog_source == "EOG 061" and sample_events.blinks_detected and sample_events.notes == ()
    assert sample_events.heart_rate_bpm == pytest.approx(58, abs=1)
    # A heartbeat, not noise: the 22 intervals are all within 20 % of their mean (~1.0 s).
    intervals = np.diff(sample_events.heartbeats) / sample_events.sfreq_hz
    assert np.all(np.abs(intervals / intervals.mean() - 1) < 0.2) and intervals.mean() == pytest.approx(60 / 58, rel=0.05)
    assert sample_events.heartbeats[0] >= 0 and sample_events.heartbeats[-1] < sample_raw.n_times
    assert np.all(sample_events.blinks < 15 * sample_events.sfreq_hz)


SYNTHETIC_SFREQ = 600.0
SYNTHETIC_SECONDS = 30.0
#: Blink peaks of the synthetic EOG, seconds.
BLINK_TIMES_S = np.array([3.2, 9.7, 15.1, 21.4, 26.8])


def synthetic_recording(with_ecg_channel: bool):
    """30 s with heartbeats and blinks at known times: an ECG (R wave 8 ms wide, 1 mV; T wave 250 ms
    after it) at 64–68 bpm with a 4 % beat-to-beat spread, the same cardiac field in three
    magnetometers, blinks on an EOG channel, noise everywhere; `(raw, R-peak times in s)`."""
    n = int(SYNTHETIC_SECONDS * SYNTHETIC_SFREQ)
    t = np.arange(n) / SYNTHETIC_SFREQ
    rng = np.random.default_rng(0)
    r_peaks = 0.6 + np.cumsum(np.r_[0.0, 0.9 + 0.04 * rng.standard_normal(40)])
    r_peaks = r_peaks[r_peaks < SYNTHETIC_SECONDS - 0.5]

    def bumps(times: np.ndarray, width_s: float, amplitude: float) -> np.ndarray:
        return amplitude * np.exp(-0.5 * ((t[:, None] - times[None, :]) / width_s) ** 2).sum(axis=1)

    ecg = bumps(r_peaks, 0.008, 1e-3) + bumps(r_peaks + 0.25, 0.04, 0.25e-3) + 20e-6 * rng.standard_normal(n)
    # Blinks 94 ms wide at half height: wider ones make MNE's 1–10 Hz detector ring (events ~0.8 s
    # either side of each blink on this noise-free shape).
    eog = bumps(BLINK_TIMES_S, 0.04, 200e-6) + 10e-6 * rng.standard_normal(n)
    mags = np.outer([2e-12, -1.5e-12, 1e-12], ecg / 1e-3) + 50e-15 * rng.standard_normal((3, n))
    eeg = 10e-6 * rng.standard_normal((2, n))
    names = ["EOG 061", "MEG 0111", "MEG 0121", "MEG 0131", "EEG 001", "EEG 002"]
    types = ["eog", "mag", "mag", "mag", "eeg", "eeg"]
    data = [eog[None], mags, eeg]
    if with_ecg_channel:
        names, types, data = ["ECG 063", *names], ["ecg", *types], [ecg[None], *data]
    info = mne.create_info(names, SYNTHETIC_SFREQ, types)
    return mne.io.RawArray(np.vstack(data), info, verbose="error"), r_peaks


@pytest.mark.parametrize("with_ecg_channel", [True, False], ids=["ECG channel", "cardiac field in the MEG only"])
def test_heartbeats_and_blinks_are_found_at_the_times_they_were_made(with_ecg_channel):
    raw, r_peaks = synthetic_recording(with_ecg_channel)
    events = detect_artefacts(raw)
    assert events.ecg_source == ("ECG 063" if with_ecg_channel else "synthetic ECG from the magnetometers")
    assert events.eog_source == "EOG 061" and events.notes == ()
    # Every beat and every blink once, each within 2 ms of when it was made.
    assert events.heartbeats.size == r_peaks.size and events.blinks.size == BLINK_TIMES_S.size
    np.testing.assert_allclose(events.heartbeats / SYNTHETIC_SFREQ, r_peaks, atol=0.002)
    np.testing.assert_allclose(events.blinks / SYNTHETIC_SFREQ, BLINK_TIMES_S, atol=0.002)
    assert events.heart_rate_bpm == pytest.approx(60 / np.diff(r_peaks).mean(), rel=0.02)


def test_the_rows_left_out_are_those_around_the_beats_and_blinks_made():
    """The mask of rows 300 … 8699 of the synthetic recording decimated by 2 (raw samples 600 …
    17398, 1 s to 29 s),
    against windows computed from the times the events were made: every row more than 5 ms inside a
    window is left out, every row more than 5 ms outside all of them is clean."""
    raw, r_peaks = synthetic_recording(with_ecg_channel=True)
    mask = ArtefactMask.for_rows(detect_artefacts(raw), 300, 8700, decimation=2)
    times = np.arange(300, 8700) * 2 / SYNTHETIC_SFREQ
    offset_beat = times[:, None] - r_peaks[None, :]
    offset_blink = np.abs(times[:, None] - BLINK_TIMES_S[None, :])
    margin = 0.005
    surely_cardiac = ((offset_beat >= -0.150 + margin) & (offset_beat <= 0.250 - margin)).any(axis=1)
    surely_not_cardiac = ~((offset_beat >= -0.150 - margin) & (offset_beat <= 0.250 + margin)).any(axis=1)
    surely_blink = (offset_blink <= 0.300 - margin).any(axis=1)
    surely_not_blink = ~(offset_blink <= 0.300 + margin).any(axis=1)
    assert mask.cardiac[surely_cardiac].all() and not mask.cardiac[surely_not_cardiac].any()
    assert not mask.clean[surely_cardiac | surely_blink].any()
    assert mask.clean[surely_not_cardiac & surely_not_blink].all()
    # Almost every row is one or the other (the undecided are the 5 ms edges).
    assert (surely_cardiac | surely_blink | (surely_not_cardiac & surely_not_blink)).mean() > 0.95
    assert mask.events_in_rows() == (int(((r_peaks >= 1.0) & (r_peaks < 29.0)).sum()), 5)


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
    np.testing.assert_array_equal(subset["a"].predictions, predicted["a"][mask])
    # Replicate k by hand: the blocks of 0.5 s (50 samples) drawn for all samples, each repeated as
    # often as it was drawn, keeping only its samples in the subset; its mean r over channels.
    from brainformer.evaluation import DEFAULT_BOOTSTRAP_BLOCK_S, bootstrap_block_counts

    block = int(round(DEFAULT_BOOTSTRAP_BLOCK_S * 100.0))
    counts = bootstrap_block_counts(1000 // block, 40, seed=0)
    for k in (0, 1, 39):
        rows = np.concatenate([np.repeat(np.arange(b * block, (b + 1) * block), c) for b, c in enumerate(counts[k])])
        rows = rows[mask[rows]]
        assert subset["a"].bootstrap_r[k] == pytest.approx(pearson_r(truth[rows], predicted["a"][rows]).mean(), rel=1e-9)
    assert not np.allclose(subset["a"].bootstrap_r, everything["a"].bootstrap_r)  # the subset's own replicates
    with pytest.raises(EvaluationError, match="sample_mask keeps 1"):
        score_methods(truth, predicted, types, 100.0, sample_mask=np.eye(1, 1000, dtype=bool)[0])
