"""`brainformer evaluate` (brainformer.commands.evaluate): tables, JSON, plots and exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from brainformer.cli import app


def test_evaluate_command_writes_json_and_plots(tiny_model_dir, sample_fif, tmp_path):
    json_path, plots = tmp_path / "metrics.json", tmp_path / "plots"
    result = CliRunner().invoke(
        app, ["evaluate", "--model", str(tiny_model_dir), "--data", str(sample_fif), "--json", str(json_path), "--plots", str(plots)]
    )
    assert result.exit_code == 0, result.output
    assert "lagged ridge" in result.output and "model" in result.output
    metrics = json.loads(json_path.read_text())
    for method in ("model", "ridge", "lagged_ridge"):
        entry = metrics[method]
        for key in ("r_mean", "r2_mean", "nmse"):
            assert isinstance(entry[key], float) and np.isfinite(entry[key])
        for kind in ("mag", "grad"):
            assert isinstance(entry[kind]["r_mean"], float) and isinstance(entry[kind]["r2_mean"], float)
        assert entry["mag"]["n_channels"] == 102 and entry["grad"]["n_channels"] == 204
        low, high = entry["bootstrap"]["r_mean"]["ci95"]
        assert low <= high and entry["bootstrap"]["r_mean"]["std"] > 0
        assert len(entry["per_channel"]["r"]) == 306
    # The instantaneous ridge finds the recording's EEG → MEG coupling (no golden value): its mean
    # r is the mean of its 306 per-channel r, and its 95 % bootstrap interval excludes chance, 0.
    ridge = metrics["ridge"]
    assert ridge["r_mean"] == pytest.approx(float(np.nanmean(ridge["per_channel"]["r"])), abs=1e-9)
    assert ridge["bootstrap"]["r_mean"]["ci95"][0] > 0, ridge["bootstrap"]["r_mean"]
    assert metrics["setup"]["n_test_samples"] == 14400 - 10800 - 601
    assert metrics["model"]["hop_samples"] == 16
    assert set(metrics["comparisons"]) == {"model_minus_ridge", "model_minus_lagged_ridge"}
    # Artefact-free and cardiac scores of every method, on the same run's samples.
    artefacts = metrics["artefacts"]
    n_test = metrics["setup"]["n_test_samples"]
    assert artefacts["heartbeats"] > 0 and artefacts["blinks"] > 0 and artefacts["notes"] == []
    assert 0 < artefacts["n_clean"] < n_test and artefacts["clean_share"] == pytest.approx(artefacts["n_clean"] / n_test)
    for method in ("model", "ridge", "lagged_ridge"):
        clean, cardiac = metrics[method]["clean"], metrics[method]["cardiac"]
        for key in ("r_mean", "r2_mean", "r_mag", "r_grad", "nmse"):
            assert isinstance(clean[key], float) and np.isfinite(clean[key]), (method, key)
        assert clean["n_samples"] == artefacts["n_clean"] and cardiac["n_samples"] == artefacts["n_cardiac"]
        low, high = clean["bootstrap"]["r_mean"]["ci95"]
        assert low <= high and clean["bootstrap"]["r_mean"]["std"] > 0
        assert len(clean["per_channel"]["r"]) == 306
        assert np.isfinite(cardiac["r_mean"])
    for comparison in metrics["comparisons"].values():
        assert {"clean", "cardiac"} <= set(comparison) and np.isfinite(comparison["clean"]["r_mean"]["value"])
    # The summaries are those of the per-channel scores, by sensor type, on all and clean samples;
    # the comparisons are the differences of the methods' summaries.
    types = np.asarray(json.loads((tiny_model_dir / "config.json").read_text())["meg_channel_types"])
    for method in ("model", "ridge", "lagged_ridge"):
        entry, clean = metrics[method], metrics[method]["clean"]
        r, r2, clean_r = (np.asarray(v, float) for v in (entry["per_channel"]["r"], entry["per_channel"]["r2"],
                                                           clean["per_channel"]["r"]))
        assert entry["r_mean"] == pytest.approx(np.nanmean(r)) and entry["r2_mean"] == pytest.approx(np.nanmean(r2))
        for kind in ("mag", "grad"):
            assert entry[kind]["r_mean"] == pytest.approx(np.nanmean(r[types == kind]))
            assert entry[kind]["r2_mean"] == pytest.approx(np.nanmean(r2[types == kind]))
            assert clean[f"r_{kind}"] == pytest.approx(np.nanmean(clean_r[types == kind]))
        assert clean["r_mean"] == pytest.approx(np.nanmean(clean_r))
    for baseline in ("ridge", "lagged_ridge"):
        difference = metrics["comparisons"][f"model_minus_{baseline}"]
        for key in ("r_mean", "r2_mean"):
            assert difference[key]["value"] == pytest.approx(metrics["model"][key] - metrics[baseline][key])
        for subset in ("clean", "cardiac"):
            assert difference[subset]["r_mean"]["value"] == pytest.approx(
                metrics["model"][subset]["r_mean"] - metrics[baseline][subset]["r_mean"])
    # The recording's 4 blinks all lie in its first 15 s, before the held-out part (19.0-24.0 s,
    # holding 4 of its 23 R peaks): there, every sample is clean or cardiac.
    assert artefacts["blinks_in_scored_rows"] == 0 and artefacts["heartbeats_in_scored_rows"] == 4
    assert artefacts["n_clean"] + artefacts["n_cardiac"] == n_test
    assert "clean" in result.output and "cardiac" in result.output and "heartbeats" in result.output
    assert sorted(p.name for p in plots.iterdir()) == [
        "clean_vs_all.png", "r_by_type.png", "topomap_clean_r.png", "topomap_r.png", "traces.png"
    ]
    assert all(p.stat().st_size > 10_000 for p in plots.iterdir())


def test_evaluate_reports_the_oracle_on_a_simulated_recording(tiny_model_dir, tmp_path):
    simulated = tmp_path / "sim_raw.fif"
    made = CliRunner().invoke(app, ["simulate-data", "--layout", "sample", "--duration", "8", "--seed", "1", "--out", str(simulated)])
    assert made.exit_code == 0, made.output
    json_path = tmp_path / "metrics.json"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(tiny_model_dir), "--data", str(simulated), "--json", str(json_path)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(json_path.read_text())
    assert {"model", "ridge", "lagged_ridge", "oracle"} <= set(metrics)
    # The simulator's EEG → MEG map is linear and instantaneous: its oracle is the best of all.
    assert metrics["oracle"]["r2_mean"] > metrics["ridge"]["r2_mean"] > metrics["model"]["r2_mean"]
    assert "model_minus_oracle" in metrics["comparisons"]
    # The simulator adds no heartbeats or blinks: a note says so, and clean is all.
    assert metrics["artefacts"]["heartbeats"] == 0 and metrics["artefacts"]["clean_share"] == 1.0
    assert "simulated recording" in metrics["artefacts"]["notes"][0]
    assert "note: simulated recording" in result.output
    for method in ("model", "ridge", "lagged_ridge", "oracle"):
        clean = metrics[method]["clean"]
        assert clean["n_samples"] == metrics["setup"]["n_test_samples"]
        assert (clean["r_mean"], clean["r2_mean"]) == (metrics[method]["r_mean"], metrics[method]["r2_mean"])
        assert clean["bootstrap"] == metrics[method]["bootstrap"]
        assert "cardiac" not in metrics[method]


def test_a_recording_without_eog_is_scored_with_a_note_and_heartbeats_only(tiny_model_dir, sample_fif, tmp_path):
    import mne

    no_eog = tmp_path / "no_eog_raw.fif"
    mne.io.read_raw_fif(sample_fif, verbose="error").drop_channels(["EOG 061"]).save(no_eog, verbose="error")
    json_path = tmp_path / "metrics.json"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(tiny_model_dir), "--data", str(no_eog), "--json", str(json_path)])
    assert result.exit_code == 0, result.output
    assert "note: no EOG channel: blinks not detected" in result.output
    artefacts = json.loads(json_path.read_text())["artefacts"]
    assert artefacts["blinks"] == 0 and not artefacts["blinks_detected"] and artefacts["heartbeats"] > 0
    # Only the heartbeat windows are left out: clean and cardiac split the held-out samples.
    assert artefacts["n_clean"] + artefacts["n_cardiac"] == artefacts["n_scored"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "missing_raw.fif"], "missing_raw.fif: no such file"),
        (["--split", "1.5"], "--split must lie strictly between 0 and 1"),
        (["--model", "no_such_model_dir"], "no_such_model_dir"),
    ],
)
def test_evaluate_bad_input_exits_2_with_one_line(tiny_model_dir, args, message, tmp_path):
    base = {"--model": str(tiny_model_dir)}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = str(tmp_path / value) if flag == "--data" else value
    result = CliRunner().invoke(app, ["evaluate", *[a for kv in base.items() for a in kv]])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
