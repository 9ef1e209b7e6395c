"""Fixtures of the `brainformer.data` tests: real recordings cut from the bundled sample, a BIDS
tree and one preparation, made once for the whole package of tests."""

from __future__ import annotations

from pathlib import Path

import mne
import mne_bids
import pytest

from brainformer.data import prepare_recordings
from tests.data.common import SETTINGS


@pytest.fixture(scope="package")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="package")
def short_fif(sample_fif, work) -> Path:
    """The first 8 s of the real recording, as a file of its own."""
    path = work / "short_raw.fif"
    mne.io.read_raw_fif(sample_fif, verbose="error").crop(0, 8).save(path, verbose="error")
    return path


@pytest.fixture(scope="package")
def bids_root(sample_fif, work) -> Path:
    """A ds000117-like BIDS tree (sub-*/ses-meg/meg/*_meg.fif): two subjects with one 4 s run each,
    cut from the real recording (seconds 0–4 and 4–8)."""
    root = work / "bids"
    for subject, (start, stop) in enumerate([(0, 4), (4, 8)], start=1):
        segment = work / f"segment{subject}_raw.fif"
        mne.io.read_raw_fif(sample_fif, verbose="error").crop(start, stop).save(segment, verbose="error")
        raw = mne.io.read_raw_fif(segment, verbose="error")
        raw.info["line_freq"] = 60.0
        bids_path = mne_bids.BIDSPath(
            subject=f"{subject:02d}", session="meg", task="test", run="01", datatype="meg", root=root
        )
        with pytest.warns(RuntimeWarning, match="No events"):
            mne_bids.write_raw_bids(raw, bids_path, overwrite=True, verbose=False)
    return root


@pytest.fixture(scope="package")
def prepared(short_fif):
    return prepare_recordings([short_fif], SETTINGS)
