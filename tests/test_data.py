"""brainformer.data: readers (FIF, BIDS), parts and windows, dataset directories, `brainformer prepare`."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
from pathlib import Path

import datasets
import mne
import mne_bids
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from brainformer.cli import app
from brainformer.configuration_brainformer import (
    DEFAULT_EEG_CHANNEL_NAMES,
    DEFAULT_MEG_CHANNEL_NAMES,
    DEFAULT_MEG_CHANNEL_TYPES,
)
from brainformer.data import (
    ARRAYS_DIRNAME,
    CONFIG_FILENAME,
    DataError,
    build_dataset,
    channel_layout,
    config_for_recording,
    find_recordings,
    hf_windows,
    is_prepared_dataset,
    load_hf_windows,
    load_prepare_info,
    load_prepared_dataset,
    prepare_recordings,
    read_raw,
    save_hf_windows,
    split_parts,
    window_index,
    window_starts,
)
from brainformer.preprocessing import PreprocessingError, fit_scaling, preprocess_recording, without_scaling
from brainformer.quantization import MEGQuantizer
from brainformer.settings import DataSettings, ExperimentSettings
from brainformer.training import ContinuousWindows

WINDOW = 64
SETTINGS = ExperimentSettings(
    model={"window_samples": WINDOW, "patch_len": 16, "hop_samples": 16},
    data=DataSettings(settle_s=0.5, train_hop_samples=16, eval_hop_samples=32),
)
SETTINGS_TOML = """
[model]
window_samples = 64
patch_len = 16
hop_samples = 16

[data]
settle_s = 0.5
train_hop_samples = 16
eval_hop_samples = 32
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def short_fif(sample_fif, work) -> Path:
    """The first 8 s of the real recording, as a file of its own."""
    path = work / "short_raw.fif"
    mne.io.read_raw_fif(sample_fif, verbose="error").crop(0, 8).save(path, verbose="error")
    return path


BIDS_RUNS = ("sub-01_ses-meg_task-test_run-01_meg", "sub-02_ses-meg_task-test_run-01_meg")


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
def prepared(short_fif):
    return prepare_recordings([short_fif], SETTINGS)


def save_variant(source: Path, path: Path, change) -> Path:
    raw = mne.io.read_raw_fif(source, verbose="error").crop(0, 3).load_data(verbose="error")
    raw = change(raw) or raw
    raw.save(path, overwrite=True, verbose="error")
    return path


# --- readers --------------------------------------------------------------------------------


def test_channel_layout_of_the_real_recording(sample_fif):
    eeg, meg, meg_types = channel_layout(read_raw(sample_fif))
    assert eeg == list(DEFAULT_EEG_CHANNEL_NAMES)
    assert meg == list(DEFAULT_MEG_CHANNEL_NAMES)
    assert meg_types == list(DEFAULT_MEG_CHANNEL_TYPES)
    assert meg_types.count("mag") == 102 and meg_types.count("grad") == 204


def test_config_for_recording_takes_channels_and_rate_from_the_file(short_fif):
    raw = read_raw(short_fif)
    config = config_for_recording(raw, {"d_model": 32, "window_samples": WINDOW, "patch_len": 16})
    assert config.n_eeg_channels == 60 and config.n_meg_channels == 306
    assert config.sfreq_hz == raw.info["sfreq"] and config.d_model == 32
    subset = config_for_recording(raw, {"meg_channel_names": ["MEG 0111", "MEG 0112"], "sfreq_hz": raw.info["sfreq"] / 2})
    assert subset.meg_channel_types == ["mag", "grad"] and subset.sfreq_hz == raw.info["sfreq"] / 2
    with pytest.raises(DataError, match=r"short_raw\.fif: .*patch_len"):
        config_for_recording(raw, {"patch_len": 7})
    with pytest.raises(DataError, match=r"short_raw\.fif: model\.meg_channel_names not in the file: MEG 9999"):
        config_for_recording(raw, {"meg_channel_names": ["MEG 9999"]})


def test_find_recordings_files_and_bids_roots(short_fif, bids_root):
    runs = find_recordings([bids_root])
    assert [p.name for p in runs] == [f"{name}.fif" for name in BIDS_RUNS]
    assert [p.parent for p in runs] == [bids_root.resolve() / sub / "ses-meg" / "meg" for sub in ("sub-01", "sub-02")]
    both = find_recordings([short_fif, bids_root, short_fif])  # duplicates dropped, order kept
    assert both == [short_fif.resolve(), *runs]


def test_bids_runs_read_back_the_original_samples(bids_root, sample_fif):
    first, second = find_recordings([bids_root])
    original = mne.io.read_raw_fif(sample_fif, verbose="error")
    raw = read_raw(second)
    assert channel_layout(raw) == channel_layout(original)
    start = original.time_as_index(4.0)[0]
    np.testing.assert_array_equal(raw.get_data(stop=100), original.get_data(start=start, stop=start + 100))


def test_bad_paths_and_bids_roots_are_clear_errors(work):
    with pytest.raises(DataError, match=r"nothing_here\.fif: no such file or directory"):
        find_recordings([work / "nothing_here.fif"])
    plain_dir = work / "plain_dir"
    plain_dir.mkdir()
    with pytest.raises(DataError, match=r"plain_dir: a directory that is not a BIDS root"):
        find_recordings([plain_dir])
    empty_root = work / "empty_bids"
    empty_root.mkdir()
    (empty_root / "dataset_description.json").write_text(json.dumps({"Name": "empty", "BIDSVersion": "1.8.0"}))
    with pytest.raises(DataError, match=r"empty_bids: BIDS root with no MEG runs"):
        find_recordings([empty_root])


def test_files_without_eeg_or_meg_or_not_raw_are_clear_errors(short_fif, work):
    no_meg = save_variant(short_fif, work / "eeg_only_raw.fif", lambda raw: raw.pick(["eeg", "stim"]))
    with pytest.raises(DataError, match=r"eeg_only_raw\.fif: no MEG channels \(channel types in the file: eeg, stim\)"):
        read_raw(no_meg)
    no_eeg = save_variant(short_fif, work / "meg_only_raw.fif", lambda raw: raw.pick("meg"))
    with pytest.raises(DataError, match=r"meg_only_raw\.fif: no EEG channels"):
        read_raw(no_eeg)
    text = work / "notes_raw.fif"
    text.write_text("not a recording\n")
    with pytest.raises(DataError, match=r"notes_raw\.fif: cannot read as a raw recording"):
        read_raw(text)


# --- parts and windows ----------------------------------------------------------------------


def test_split_parts_and_windows():
    parts = split_parts(10_000, 100.0, DataSettings(split=0.75, validation_fraction=0.2, settle_s=1.0))
    assert parts == {"train": (100, 6000), "validation": (6100, 7500), "test": (7600, 10_000)}
    no_validation = split_parts(1000, 100.0, DataSettings(validation_fraction=0.0, settle_s=0.0))
    assert no_validation["validation"] == (750, 750) and no_validation["train"] == (0, 750)
    starts = window_starts(100, 400, 64, 32)
    assert starts.tolist() == list(range(100, 400 - 64 + 1, 32)) and starts[-1] + 64 <= 400
    assert window_starts(0, 63, 64, 1).size == 0


# --- preparing ------------------------------------------------------------------------------


def test_prepare_fits_scaling_on_the_train_part_only(prepared, short_fif):
    rec = prepared.recordings[0]
    n = rec.n_samples
    assert rec.name == "short_raw" and rec.eeg.shape == (n, 60) and rec.meg.shape == (n, 306)
    assert rec.parts == split_parts(n, rec.sfreq_hz, SETTINGS.data)
    train_start, train_stop = rec.parts["train"]
    assert train_start == round(0.5 * rec.sfreq_hz)
    assert train_stop == round(0.75 * 0.8 * n)
    # Statistics are those of the unscaled train part after settling, nothing else.
    raw = read_raw(short_fif)
    plain = preprocess_recording(raw, without_scaling(prepared.config))
    expected = fit_scaling(without_scaling(prepared.config), plain.eeg[train_start:train_stop], plain.meg[train_start:train_stop])
    np.testing.assert_allclose(prepared.config.meg_std, expected.meg_std, rtol=1e-6)
    np.testing.assert_allclose(prepared.config.eeg_mean, expected.eeg_mean, rtol=1e-6, atol=1e-12)
    eeg_train, meg_train = rec.part("train")
    np.testing.assert_allclose(meg_train.std(axis=0), 1.0, rtol=1e-3)
    np.testing.assert_allclose(eeg_train.mean(axis=0), 0.0, atol=1e-3)
    # The continuous arrays are exactly what the streaming preprocessor gives with that config.
    np.testing.assert_array_equal(rec.eeg, preprocess_recording(raw, prepared.config).eeg)
    # A config that already holds statistics (a trained model's) is used as it is.
    again = prepare_recordings([short_fif], SETTINGS, config=prepared.config)
    assert again.config.meg_std == prepared.config.meg_std
    np.testing.assert_array_equal(again.recordings[0].meg, rec.meg)


def test_dataset_stores_each_recording_once_and_windows_stay_inside_their_parts(prepared, work):
    out = work / "dataset"
    dataset = build_dataset(prepared, out)
    assert is_prepared_dataset(out)
    loaded, config = load_prepared_dataset(out)
    assert config.meg_std == prepared.config.meg_std and config.window_samples == WINDOW
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
    quantizer = MEGQuantizer.from_config(loaded.config)
    windows = ContinuousWindows(loaded.recordings, "validation", WINDOW, 32, quantizer=quantizer)
    item, start = windows[0], windows.index[0][1]
    assert item["labels"].dtype == torch.int64
    expected = quantizer.encode(prepared.recordings[0].meg[start : start + WINDOW])
    np.testing.assert_array_equal(item["labels"].numpy(), expected)


# --- the Hugging Face view -----------------------------------------------------------------


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
    both = dataclasses.replace(prepared, recordings=[prepared.recordings[0], second])
    rows = window_index(both.recordings, "test", WINDOW, 32)
    ds = hf_windows(both, "test")
    assert ds.features["recording"].names == ["short_raw", "second"]
    np.testing.assert_array_equal(index_column(ds, "recording"), rows[:, 0])
    assert index_column(ds, "start_sample")[rows[:, 0] == 1].tolist() == list(range(1200, 1500 - WINDOW + 1, 32))
    assert len(hf_windows(both, "validation")) == len(hf_windows(prepared, "validation"))  # an empty part: no windows
    joined = window_index(both.recordings, ("train", "validation"), WINDOW, 16)
    assert joined[joined[:, 0] == 1, 1].tolist() == list(range(100, 1000 - WINDOW + 1, 16))


def test_hf_windows_tokens_are_255_level_ids(dataset_dir, prepared, work):
    quantizer = MEGQuantizer.from_config(prepared.config)
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
    later = dataclasses.replace(prepared, data=dataclasses.replace(prepared.data, settle_s=1.0))
    later.recordings = [dataclasses.replace(prepared.recordings[0], parts=split_parts(prepared.recordings[0].n_samples, prepared.recordings[0].sfreq_hz, later.data))]
    build_dataset(later, work / "hf_later")
    with pytest.raises(DataError, match=r"hf_stale: windows outside the train part of .*hf_later"):
        load_hf_windows(work / "hf_stale", prepared_dir=work / "hf_later")


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


def test_recordings_that_do_not_match_the_first_are_clear_errors(short_fif, work):
    renamed = save_variant(short_fif, work / "renamed_raw.fif", lambda raw: raw.rename_channels({"EEG 005": "EEG 5"}))
    with pytest.raises(PreprocessingError, match=r"renamed_raw\.fif: EEG channels of the model config are missing from the file: EEG 005"):
        prepare_recordings([short_fif, renamed], SETTINGS)
    slower = save_variant(short_fif, work / "resampled_raw.fif", lambda raw: raw.resample(500.0, verbose="error"))
    with pytest.raises(PreprocessingError, match=r"resampled_raw\.fif: input sampling rate 500 Hz .* 600\.615 Hz"):
        prepare_recordings([short_fif, slower], SETTINGS)


# --- the command ----------------------------------------------------------------------------


def put_nan_segment(raw) -> None:
    raw._data[3, 600:700] = np.nan  # about 1.0–1.17 s on one MEG channel


def run_prepare(*args: str):
    return CliRunner().invoke(app, ["prepare", *args])


def test_prepare_command_writes_a_dataset_from_files_and_a_bids_root_in_parallel(short_fif, bids_root, work):
    config = work / "train.toml"
    config.write_text(SETTINGS_TOML)
    out = work / "cli_dataset"
    result = run_prepare("--data", str(short_fif), "--data", str(bids_root), "--out", str(out), "--config", str(config), "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert "preprocessing" in result.output and "3/3" in result.output  # the progress bar, per recording
    loaded, model_config = load_prepared_dataset(out)
    assert [r.name for r in loaded.recordings] == ["short_raw", *BIDS_RUNS]
    assert model_config.window_samples == WINDOW and model_config.eeg_std is not None
    # In-process and parallel preparation give the same arrays.
    serial = prepare_recordings([short_fif, bids_root], SETTINGS)
    for rec, stored in zip(serial.recordings, loaded.recordings):
        assert stored.parts == rec.parts
        np.testing.assert_array_equal(stored.eeg, rec.eeg)
        np.testing.assert_array_equal(stored.meg, rec.meg)
    # Running it again replaces the dataset in place.
    again = run_prepare("--data", str(bids_root), "--out", str(out), "--config", str(config))
    assert again.exit_code == 0, again.output
    assert [r.name for r in load_prepared_dataset(out)[0].recordings] == list(BIDS_RUNS)
    assert sorted(p.name for p in (out / ARRAYS_DIRNAME).iterdir()) == sorted(
        f"{name}_{kind}.npy" for name in BIDS_RUNS for kind in ("eeg", "meg", "times")
    )
    assert not any(p.name.startswith(".brainformer-") for p in work.iterdir())


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda short, work: [short, save_variant(short, work / "no_meg_raw.fif", lambda raw: raw.pick("eeg"))], r"no_meg_raw\.fif: no MEG channels"),
        (lambda short, work: [work / "missing_raw.fif"], r"missing_raw\.fif: no such file or directory"),
        (
            lambda short, work: [save_variant(short, work / "nan_raw.fif", put_nan_segment)],
            r"nan_raw\.fif: NaN/Inf values at 0\.99\d–1\.16\d s",
        ),
    ],
)
def test_prepare_command_bad_input_exits_2_with_one_line(short_fif, work, make_input, message):
    paths = make_input(short_fif, work)
    out = work / "bad_out"
    result = run_prepare(*[a for p in paths for a in ("--data", str(p))], "--out", str(out))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()
    assert not any(p.name.startswith(".brainformer-") for p in work.iterdir())  # no staging left behind
