"""brainformer.data.hf: the training windows as a Hugging Face dataset, saved and reopened."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from brainformer.data import (
    DataError,
    PreparedData,
    build_dataset,
    hf_windows,
    load_hf_windows,
    load_prepared_dataset,
    save_hf_windows,
    split_parts,
    window_index,
)
from brainformer.quantization import MEGQuantizer
from brainformer.training import ContinuousWindows
from tests.data.common import WINDOW


def index_column(ds: datasets.Dataset, name: str) -> np.ndarray:
    """One index column of a window dataset, without cutting any window."""
    return ds.with_format("numpy")[:][name]


@pytest.fixture(scope="module")
def dataset_dir(prepared, work) -> Path:
    out = work / "hf_source"
    build_dataset(prepared, out)
    return out


def test_hf_windows_are_the_training_windows_cut_from_the_memory_maps(dataset_dir, prepared):
    loaded, _ = load_prepared_dataset(dataset_dir)
    rec = prepared.recordings[0]
    for split, hop in (("train", 16), ("validation", 32), ("test", 32)):
        ds = hf_windows(dataset_dir, split)
        assert isinstance(ds, datasets.Dataset) and ds.split == split
        assert ds.column_names == ["recording", "start_sample"]  # the index is all that is stored
        assert ds.features["recording"].names == ["short_raw"]
        windows = ContinuousWindows(loaded.recordings, split, WINDOW, hop)
        assert len(ds) == len(windows) == loaded.n_windows(split) > 0
        starts = index_column(ds, "start_sample")
        np.testing.assert_array_equal(starts, windows.index[:, 1])
        lo, hi = rec.parts[split]
        assert starts.min() >= lo and starts.max() + WINDOW <= hi  # never across the split
        for k in (0, len(ds) - 1):
            row = ds[k]
            start = row["start_sample"]
            assert row["input_values"].dtype == np.float32 and row["input_values"].shape == (WINDOW, 60)
            assert row["labels"].dtype == np.float32 and row["labels"].shape == (WINDOW, 306)
            np.testing.assert_array_equal(row["input_values"], loaded.recordings[0].eeg[start : start + WINDOW])
            np.testing.assert_array_equal(row["labels"], rec.meg[start : start + WINDOW])
            np.testing.assert_array_equal(row["input_values"], windows[k]["input_values"].numpy())
    batch = hf_windows(dataset_dir, "train")[2:5]
    assert batch["input_values"].shape == (3, WINDOW, 60) and batch["labels"].shape == (3, WINDOW, 306)
    np.testing.assert_array_equal(batch["labels"][1], rec.meg[batch["start_sample"][1] : batch["start_sample"][1] + WINDOW])
    # Other window and hop; the same from recordings in memory.
    other = hf_windows(prepared, "test", window_samples=32, hop_samples=8)
    lo, hi = rec.parts["test"]
    assert index_column(other, "start_sample").tolist() == list(range(lo, hi - 32 + 1, 8)) and other[0]["input_values"].shape == (32, 60)


def test_hf_windows_of_several_recordings_follow_each_ones_parts(dataset_dir, prepared):
    second = dataclasses.replace(prepared.recordings[0], name="second", parts={"train": (100, 1000), "validation": (1000, 1000), "test": (1200, 1500)})
    both = PreparedData(prepared.fields, prepared.data, [prepared.recordings[0], second])
    rows = window_index(both.recordings, "test", WINDOW, 32)
    ds = hf_windows(both, "test")
    assert ds.features["recording"].names == ["short_raw", "second"]
    np.testing.assert_array_equal(index_column(ds, "recording"), rows[:, 0])
    assert index_column(ds, "start_sample")[rows[:, 0] == 1].tolist() == list(range(1200, 1500 - WINDOW + 1, 32))
    assert len(hf_windows(both, "validation")) == len(hf_windows(prepared, "validation"))  # an empty part: no windows
    joined = window_index(both.recordings, ("train", "validation"), WINDOW, 16)
    assert joined[joined[:, 0] == 1, 1].tolist() == list(range(100, 1000 - WINDOW + 1, 16))


def test_hf_windows_tokens_are_255_level_ids(dataset_dir, prepared, work):
    quantizer = MEGQuantizer.from_config(prepared.fields)
    ds = hf_windows(dataset_dir, "train", tokenize=True)
    row = ds[len(ds) // 2]
    assert row["labels"].dtype == np.int64 and row["labels"].shape == (WINDOW, 306)
    assert row["labels"].min() >= 3 and row["labels"].max() <= 257
    start = row["start_sample"]
    np.testing.assert_array_equal(row["labels"], quantizer.encode(prepared.recordings[0].meg[start : start + WINDOW]))
    # A dataset prepared with --tokenize gives tokens by default.
    build_dataset(prepared, work / "hf_tokens", tokenize=True)
    assert hf_windows(work / "hf_tokens", "test")[0]["labels"].dtype == np.int64
    assert hf_windows(work / "hf_tokens", "test", tokenize=False)[0]["labels"].dtype == np.float32


def test_hf_window_index_saves_and_loads_memory_mapped(dataset_dir, prepared, work):
    ds = hf_windows(dataset_dir, "validation")
    saved = work / "hf_index"
    save_hf_windows(ds, saved)
    # Plain `datasets` reads the index back, memory-mapped from its Arrow file, without the transform.
    plain = datasets.load_from_disk(str(saved))
    assert plain.cache_files and plain.column_names == ["recording", "start_sample"]
    np.testing.assert_array_equal(index_column(plain, "start_sample"), index_column(ds, "start_sample"))
    assert plain.features == ds.features
    # `load_hf_windows` attaches the transform again.
    again = load_hf_windows(saved)
    assert again.cache_files and len(again) == len(ds)
    np.testing.assert_array_equal(again[3]["input_values"], ds[3]["input_values"])
    np.testing.assert_array_equal(again[3]["labels"], ds[3]["labels"])
    # A shuffled subset keeps its order; the transform still cuts the right rows.
    subset = ds.shuffle(seed=0).select(range(4))
    save_hf_windows(subset, work / "hf_subset")
    reopened = load_hf_windows(work / "hf_subset")
    np.testing.assert_array_equal(index_column(reopened, "start_sample"), index_column(subset, "start_sample"))
    start = reopened[2]["start_sample"]
    np.testing.assert_array_equal(reopened[2]["labels"], prepared.recordings[0].meg[start : start + WINDOW])
    # DataLoader workers get a pickled copy: the memory maps travel by file name, not by value.
    payload = pickle.dumps(again)
    assert len(payload) < prepared.recordings[0].meg.nbytes / 10
    np.testing.assert_array_equal(pickle.loads(payload)[5]["labels"], ds[5]["labels"])
    batch = next(iter(torch.utils.data.DataLoader(again, batch_size=2, collate_fn=lambda rows: rows)))
    assert len(batch) == 2 and batch[0]["input_values"].shape == (WINDOW, 60)


def test_hf_windows_bad_input_is_a_clear_error(dataset_dir, prepared, work):
    with pytest.raises(DataError, match=r"split = 'dev' is invalid: expected one of train, validation, test"):
        hf_windows(dataset_dir, "dev")
    with pytest.raises(DataError, match=r"hop_samples = 0 is invalid: expected an integer >= 1"):
        hf_windows(dataset_dir, "train", hop_samples=0)
    with pytest.raises(DataError, match=r"plain_dir_hf: not a dataset written by `brainformer prepare`"):
        (work / "plain_dir_hf").mkdir(exist_ok=True)
        hf_windows(work / "plain_dir_hf", "train")
    with pytest.raises(DataError, match=r"windows: cut from recordings in memory"):
        save_hf_windows(hf_windows(prepared, "test"), work / "hf_memory")
    foreign = work / "foreign_index"
    datasets.Dataset.from_dict({"start_sample": [1, 2]}).save_to_disk(str(foreign))
    with pytest.raises(DataError, match=r"foreign_index: not a window index written by"):
        load_hf_windows(foreign)
    with pytest.raises(DataError, match=r"no_index_here: cannot open as a saved window index"):
        load_hf_windows(work / "no_index_here")
    # An index that no longer fits its dataset (prepared again with a longer settling).
    save_hf_windows(hf_windows(dataset_dir, "train"), work / "hf_stale")
    later_data = dataclasses.replace(prepared.data, settle_s=1.0)
    rec = prepared.recordings[0]
    later = PreparedData(prepared.fields, later_data, [dataclasses.replace(rec, parts=split_parts(rec.n_samples, rec.sfreq_hz, later_data))])
    build_dataset(later, work / "hf_later")
    with pytest.raises(DataError, match=r"hf_stale: windows outside the train part of .*hf_later"):
        load_hf_windows(work / "hf_stale", prepared_dir=work / "hf_later")
