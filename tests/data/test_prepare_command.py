"""`brainformer prepare` (brainformer/commands/prepare.py): a dataset from files and BIDS roots, one-line errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from brainformer.cli import app
from brainformer.data import ARRAYS_DIRNAME, is_prepared_dataset, load_prepared_dataset, prepare_recordings
from tests.data.common import BIDS_RUNS, SETTINGS, SETTINGS_TOML, WINDOW, heavy_modules_after, save_variant


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
    loaded, fields = load_prepared_dataset(out)
    assert [r.name for r in loaded.recordings] == ["short_raw", *BIDS_RUNS]
    assert fields.window_samples == WINDOW and fields.eeg_std is not None
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


def test_prepare_command_never_imports_torch_or_transformers(short_fif, work):
    out = work / "torch_free_dataset"
    code = (
        "from typer.testing import CliRunner; from brainformer.cli import app\n"
        f"result = CliRunner().invoke(app, ['prepare', '--data', {str(short_fif)!r}, '--out', {str(out)!r}])\n"
        "assert result.exit_code == 0, result.output"
    )
    assert heavy_modules_after(code) == []
    assert is_prepared_dataset(out)
