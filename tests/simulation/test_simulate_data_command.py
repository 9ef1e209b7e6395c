"""`brainformer simulate-data` (`brainformer.commands.simulate_data`): output, files, exit codes."""

from __future__ import annotations

import mne
import pytest
from typer.testing import CliRunner

from brainformer.cli import app


def test_cli_simulate_data(tmp_path):
    out = tmp_path / "cli_raw.fif"
    result = CliRunner().invoke(app, ["simulate-data", "--layout", "sample", "--duration", "0.5", "--seed", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "oracle R²" in result.output
    assert mne.io.read_raw_fif(out, verbose="error").n_times == round(0.5 * 600.614990234375)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--layout", "nope"], "layout 'nope'"),
        (["--duration", "-1"], "duration_s"),
        (["--sfreq", "20"], "sfreq_hz"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, arguments, message):
    out = tmp_path / "x_raw.fif"
    result = CliRunner().invoke(app, ["simulate-data", "--out", str(out), *arguments])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_cli_refuses_a_non_fif_name(tmp_path):
    result = CliRunner().invoke(app, ["simulate-data", "--duration", "0.2", "--out", str(tmp_path / "x.txt")])
    assert result.exit_code == 2 and ".fif" in result.output
