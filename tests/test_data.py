"""brainformer.data: readers (FIF, BIDS), parts and windows, dataset directories, `brainformer prepare`."""

from __future__ import annotations

import json
import re
from pathlib import Path

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
    is_prepared_dataset,
    load_prepare_info,
    load_prepared_dataset,
    prepare_recordings,
    read_raw,
    split_parts,
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
