"""brainformer.data.dataset_dir: dataset directories written once, memory-mapped back, damaged ones refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from brainformer.data import (
    ARRAYS_DIRNAME,
    CONFIG_FILENAME,
    DataError,
    build_dataset,
    is_prepared_dataset,
    load_prepare_info,
    load_prepared_dataset,
)
from brainformer.quantization import MEGQuantizer
from brainformer.training import ContinuousWindows
from tests.data.common import WINDOW


def test_dataset_stores_each_recording_once_and_windows_stay_inside_their_parts(prepared, work):
    out = work / "dataset"
    dataset = build_dataset(prepared, out)
    assert is_prepared_dataset(out)
    loaded, fields = load_prepared_dataset(out)
    assert fields == loaded.fields == prepared.fields and fields.window_samples == WINDOW
    assert (out / CONFIG_FILENAME).is_file()
    rec, stored = prepared.recordings[0], loaded.recordings[0]
    info = load_prepare_info(out)
    assert info["recordings"][0]["parts"] == {k: list(v) for k, v in rec.parts.items()}
    assert stored.parts == rec.parts and stored.name == "short_raw" and loaded.data == prepared.data
    # Continuous rows, memory-mapped from disk, exactly the prepared arrays.
    assert isinstance(stored.eeg, np.memmap) and not stored.eeg.flags.writeable
    np.testing.assert_array_equal(stored.eeg, rec.eeg)
    np.testing.assert_array_equal(stored.meg, rec.meg)
    np.testing.assert_array_equal(stored.times, rec.times)
    # No stored windows: the directory is as large as the recording itself, whatever the hop.
    array_bytes = sum(p.stat().st_size for p in (out / ARRAYS_DIRNAME).iterdir())
    assert array_bytes < rec.n_samples * (60 + 306) * 4 + rec.n_samples * 8 + 3 * 4096
    for split, hop in (("train", 16), ("validation", 32), ("test", 32)):
        assert loaded.hop_samples(split) == hop and dataset.n_windows(split) == prepared.n_windows(split) > 0
        windows = ContinuousWindows(loaded.recordings, split, WINDOW, hop)
        lo, hi = rec.parts[split]
        assert [start for _, start, _, _ in windows.index] == list(range(lo, hi - WINDOW + 1, hop))  # inside the part
        for k in (0, len(windows) - 1):
            start = windows.index[k][1]
            item = windows[k]
            assert item["input_values"].dtype == torch.float32 and item["input_values"].shape == (WINDOW, 60)
            np.testing.assert_array_equal(item["input_values"].numpy(), rec.eeg[start : start + WINDOW])
            np.testing.assert_array_equal(item["labels"].numpy(), rec.meg[start : start + WINDOW])
    assert not any(p.name.startswith(".brainformer-") for p in work.iterdir())


def test_tokens_are_quantised_from_the_stored_meg(prepared, work):
    loaded = build_dataset(prepared, work / "tokens", tokenize=True)
    assert load_prepare_info(work / "tokens")["data"]["tokenize"] is True
    quantizer = MEGQuantizer.from_config(loaded.fields)
    windows = ContinuousWindows(loaded.recordings, "validation", WINDOW, 32, quantizer=quantizer)
    item, start = windows[0], windows.index[0][1]
    assert item["labels"].dtype == torch.int64
    expected = quantizer.encode(prepared.recordings[0].meg[start : start + WINDOW])
    np.testing.assert_array_equal(item["labels"].numpy(), expected)


def test_damaged_or_old_dataset_directories_are_clear_errors(prepared, work):
    out = work / "damaged"
    build_dataset(prepared, out)
    meg = out / ARRAYS_DIRNAME / "short_raw_meg.npy"
    np.save(meg, np.zeros((10, 306), np.float32))
    with pytest.raises(DataError, match=r"short_raw_meg\.npy: expected float32 \(\d+, 306\), found float32 \(10, 306\)"):
        load_prepared_dataset(out)
    meg.unlink()
    with pytest.raises(DataError, match=r"short_raw_meg\.npy: cannot open the prepared array"):
        load_prepared_dataset(out)
    # A directory of stored windows from an older `prepare`: prepare again.
    old = work / "old_format"
    old.mkdir()
    prepared.config.to_json_file(str(old / CONFIG_FILENAME))
    (old / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation", "test"]}))
    assert is_prepared_dataset(old)
    with pytest.raises(DataError, match=r"old_format: a dataset of stored windows .* run `brainformer prepare` again"):
        load_prepared_dataset(old)


def test_the_stored_config_reads_back_as_the_same_brainformer_config(prepared, work):
    """brainformer_config.json is written without transformers, in the layout of
    `BrainformerConfig.to_json_file`, and loads with `from_json_file` as the prepared config."""
    from brainformer.configuration_brainformer import BrainformerConfig

    out = work / "config_json"
    loaded = build_dataset(prepared, out)
    from_json = BrainformerConfig.from_json_file(str(out / CONFIG_FILENAME))
    assert from_json.to_dict() == prepared.config.to_dict() == loaded.config.to_dict()
    assert json.loads((out / CONFIG_FILENAME).read_text()) == json.loads(prepared.config.to_json_string())
    # A config.json written by transformers itself reads back torch-free.
    prepared.config.to_json_file(str(out / CONFIG_FILENAME))
    assert load_prepared_dataset(out)[1] == prepared.fields


def test_a_config_json_with_unknown_keys_is_a_clear_error(prepared, work):
    out = work / "bad_config_json"
    build_dataset(prepared, out)
    values = json.loads((out / CONFIG_FILENAME).read_text()) | {"d_modle": 3}
    (out / CONFIG_FILENAME).write_text(json.dumps(values))
    with pytest.raises(DataError, match=r"brainformer_config\.json: invalid model config: .*unknown argument.*d_modle"):
        load_prepared_dataset(out)
