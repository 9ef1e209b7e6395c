"""Daemon preprocessing stage: stream checks, channel re-ordering, units, gaps."""

from __future__ import annotations


import mne
import numpy as np
import pytest

from brainformer.configuration_brainformer import BrainformerConfig
from brainformer.preprocessing import NonFiniteInputError, eeg_preprocessor
from brainformer_rt.serving.inlet import StreamDescription
from brainformer_rt.serving.pipeline import open_stages
from brainformer_rt.serving.preprocess import GapDetector

SFREQ_HZ = 600.614990234375


@pytest.fixture(scope="module")
def config() -> BrainformerConfig:
    return BrainformerConfig()


@pytest.fixture(scope="module")
def recording_eeg(sample_fif):
    """The first 3 s of the bundled recording's EEG: ``(n, 60)`` float32 volts and channel names."""
    raw = mne.io.read_raw_fif(sample_fif, preload=False, verbose="error")
    picks = mne.pick_types(raw.info, meg=False, eeg=True, exclude=())
    data = raw.get_data(picks=picks, stop=int(3 * raw.info["sfreq"])).T.astype(np.float32)
    return data, [raw.ch_names[i] for i in picks]


def describe(labels, units=None, sfreq_hz=SFREQ_HZ, channel_format="float32", name="EEG-test"):
    units = tuple(units) if units is not None else ("V",) * len(labels)
    return StreamDescription(name=name, type="EEG", source_id="test", channel_labels=tuple(labels),
                             channel_types=("EEG",) * len(labels), channel_units=units, sfreq_hz=sfreq_hz,
                             channel_format=channel_format, n_channels=len(labels), hostname="localhost")


def test_stage_equals_the_shared_preprocessor_on_reordered_volts(config, recording_eeg):
    """Stream in a shuffled channel order, in µV, any chunking → the same samples as the shared
    preprocessor on model-ordered volts in one go."""
    data_v, names = recording_eeg
    assert names == list(config.eeg_channel_names)
    timestamps = 1000.0 + np.arange(data_v.shape[0]) / SFREQ_HZ
    order = np.random.default_rng(2).permutation(len(names))
    stream_uv = np.ascontiguousarray(data_v[:, order] * np.float32(1e6))
    stage = open_stages(config, describe([names[i] for i in order], units=["uV"] * len(names)),
                               max_chunk_samples=8)
    outputs, output_times = [], []
    rng = np.random.default_rng(3)
    start = 0
    while start < len(timestamps):
        stop = min(len(timestamps), start + int(rng.integers(1, 40)))  # also chunks beyond the initial buffer
        out, out_ts = stage.process(stream_uv[start:stop], timestamps[start:stop])
        outputs.append(out)
        output_times.append(out_ts)
        start = stop
    reference_input = (stream_uv.astype(np.float32) * np.float32(1e-6))[:, np.argsort(order)]
    reference, reference_times = eeg_preprocessor(config, SFREQ_HZ).process(reference_input, timestamps)
    np.testing.assert_allclose(np.concatenate(outputs), reference, rtol=1e-5, atol=1e-6 * np.abs(reference).max())
    np.testing.assert_array_equal(np.concatenate(output_times), reference_times)


def test_stage_reset_restarts_like_a_fresh_stage(config, recording_eeg):
    data_v, names = recording_eeg
    timestamps = np.arange(data_v.shape[0]) / SFREQ_HZ
    stage = open_stages(config, describe(names))
    stage.process(data_v[:500], timestamps[:500])
    stage.reset()
    after_reset, _ = stage.process(data_v[500:900], timestamps[500:900])
    fresh, _ = open_stages(config, describe(names)).process(data_v[500:900], timestamps[500:900])
    np.testing.assert_array_equal(after_reset, fresh)


def test_stage_decimates_a_double_rate_stream(config, recording_eeg):
    data_v, names = recording_eeg
    stage = open_stages(config, describe(names, sfreq_hz=2 * SFREQ_HZ, channel_format="double64"))
    timestamps = np.arange(100) / (2 * SFREQ_HZ)
    out, out_ts = stage.process(data_v[:100].astype(np.float64), timestamps)
    assert out.shape == (50, 60) and out.dtype == np.float32
    np.testing.assert_array_equal(out_ts, timestamps[::2])


def test_stage_refuses_nan_without_touching_its_state(config, recording_eeg):
    data_v, names = recording_eeg
    timestamps = np.arange(300) / SFREQ_HZ
    stage = open_stages(config, describe(names))
    reference = open_stages(config, describe(names))
    stage.process(data_v[:100], timestamps[:100])
    reference.process(data_v[:100], timestamps[:100])
    bad = data_v[100:200].copy()
    bad[5, 3] = np.nan
    with pytest.raises(NonFiniteInputError):
        stage.process(bad, timestamps[100:200])
    np.testing.assert_array_equal(stage.process(data_v[200:300], timestamps[200:300])[0],
                                  reference.process(data_v[200:300], timestamps[200:300])[0])


def test_gap_detector_finds_the_last_discontinuity():
    period = 1 / 500.0
    detector = GapDetector(500.0, threshold_s=0.05, max_chunk_samples=4)
    t = np.arange(10) * period
    assert detector.check(t) == -1  # the first chunk has nothing before it
    assert detector.check(t + 10 * period) == -1  # continuous across chunks
    # 0.2 s forward jump before index 3 of the next chunk.
    chunk = 20 * period + np.arange(6) * period
    chunk[3:] += 0.2
    assert detector.check(chunk) == 3
    assert detector.missing_samples == round((0.2 + period) / period) - 1
    # The next chunk starts after a jump from the previous chunk's last sample.
    assert detector.check(np.array([chunk[-1] + 1.0])) == 0
    # Backwards by more than half a period.
    assert detector.check(np.array([chunk[-1], chunk[-1] + period])) == 0
    assert detector.missing_samples == 0
    detector.reset()
    assert detector.check(np.array([0.0])) == -1
