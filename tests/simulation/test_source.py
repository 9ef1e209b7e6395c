"""`brainformer.simulation.source`: the live synthetic source."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from brainformer import simulation as sim
from tests.simulation.helpers import DS000117_EEG


def test_synthetic_source_is_the_same_signal_for_any_chunking():
    whole = sim.SyntheticSource("sample", seed=9).read_eeg(2000)
    source = sim.SyntheticSource("sample", seed=9)
    sizes = [1, 7, 100, 513, 0, 3, 1376]
    pieces = [source.read_eeg(n) for n in sizes]
    assert [p.shape for p in pieces] == [(n, 60) for n in sizes]
    joined = np.concatenate(pieces)
    assert source.samples_generated == 2000
    # Every filter and random stream is sequential; only matrix-product rounding may differ.
    np.testing.assert_allclose(joined, whole, rtol=1e-5, atol=1e-12)
    # ... and it is the EEG of the offline simulation with the same seed.
    raw, truth = sim.simulate("sample", 2000 / 600.614990234375, seed=9)
    offline = raw.get_data(picks=list(truth.eeg_channel_names)).T
    np.testing.assert_allclose(whole, offline, rtol=1e-5, atol=1e-12)


def test_synthetic_source_attributes_and_errors():
    source = sim.SyntheticSource("ds000117", seed=0)
    assert source.eeg_channel_names == DS000117_EEG
    assert source.sfreq_hz == 1100.0
    assert len(source.meg_channel_names) == 306
    chunk = source.read_eeg(110)
    assert chunk.dtype == np.float32 and chunk.shape == (110, 70)
    assert 1e-6 < float(np.std(chunk)) < 1e-4
    with pytest.raises(ValueError, match="n_samples"):
        source.read_eeg(-1)
    with pytest.raises(RuntimeError, match="with_meg"):
        source.read_eeg_meg(10)
    with pytest.raises(ValueError, match="layout"):
        sim.SyntheticSource("nope")


def test_synthetic_source_with_meg_matches_the_simulation():
    source = sim.SyntheticSource("sample", seed=2, with_meg=True)
    eeg, meg = source.read_eeg_meg(300)
    raw, truth = sim.simulate("sample", 300 / 600.614990234375, seed=2)
    np.testing.assert_allclose(meg, raw.get_data(picks=list(truth.meg_channel_names)).T, rtol=1e-5, atol=1e-20)
    np.testing.assert_allclose(eeg, raw.get_data(picks=list(truth.eeg_channel_names)).T, rtol=1e-5, atol=1e-12)


def test_the_simulator_never_imports_torch():
    # `brainformer-rt simulate --synthetic` runs the live source without the model library.
    code = (
        "import sys\n"
        "from brainformer.simulation import SyntheticSource\n"
        "SyntheticSource('sample', seed=0).read_eeg(10)\n"
        "loaded = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
