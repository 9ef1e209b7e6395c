"""The linear path re-solved for a cap (brainformer.linear_path, brainformer.adaptation.resolve):
the statistics give back the bundled models' skip paths, the closed form equals a ridge fitted on
the inputs the cap really serves, the cap operator is what the served path does, the expected
quality is the held-out score of the data, and the file and its command behave."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from brainformer.adaptation import AdaptationOptions, Adapter, SourceDescription, plan_adaptation
from brainformer.adaptation.coregistration import place_montage
from brainformer.adaptation.interpolation import fit_origin, spline_matrix
from brainformer.adaptation.resolve import cap_operator, check_expected_quality, resolve_linear_path
from brainformer.evaluation import pearson_r
from brainformer.evaluation.baselines import GramAccumulator, fit_ridge_blocks, lagged_rows, refit_ridge
from brainformer.linear_path import (
    N_FOLDS,
    STATISTICS_FILENAME,
    LinearPathStatistics,
    StatisticsError,
    _held_out_quality,
    load_statistics,
    ridge_blocks,
)
from brainformer.model_dir import load_fields
from brainformer.paths import BUNDLED_MODELS, SAMPLE_RECORDING
from brainformer.preprocessing import eeg_preprocessor

REPO_ROOT = Path(__file__).resolve().parents[2]
CAP_19 = tuple("Fp1 Fp2 F7 F3 Fz F4 F8 T7 C3 Cz C4 T8 P7 P3 Pz P4 P8 O1 O2".split())
#: 19 of the model's electrodes, spread over the head.
SUBSET_19 = tuple(range(1, 60, 3))[:19]


@pytest.fixture(scope="module")
def statistics(default_fields):
    return load_statistics(BUNDLED_MODELS["default"], default_fields)


@pytest.fixture(scope="module")
def prepared(default_fields):
    """The recording as the default model was trained on it (its scaling, its parts)."""
    from brainformer.data import prepare_recordings
    from brainformer.settings import load_settings

    settings = load_settings(REPO_ROOT / "configs" / "train-sample.toml")
    return prepare_recordings([SAMPLE_RECORDING], settings, config=default_fields).recordings[0]


def _subset_plan(fields, eeg_raw, keep):
    subset = eeg_raw.copy().pick([eeg_raw.ch_names[i] for i in keep])
    return plan_adaptation(fields, SourceDescription.from_raw(subset), AdaptationOptions(max_missing_fraction=None)), subset


@pytest.mark.parametrize("name", sorted(BUNDLED_MODELS))
def test_the_statistics_give_back_each_bundled_skip_path(name):
    """C = I: the ridge the statistics give is the skip path the model was trained with."""
    fields = load_fields(name)
    solution = load_statistics(BUNDLED_MODELS[name], fields).solve()
    weight, bias = solution.as_conv_skip(fields.skip_lags)
    weights = load_file(str(BUNDLED_MODELS[name] / "model.safetensors"))
    np.testing.assert_allclose(weight, weights["linear_skip.weight"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(bias, weights["linear_skip.bias"], rtol=0, atol=1e-6)
    assert 0.2 < solution.expected.r < 0.6 and 0 < solution.expected.r2 < solution.expected.r


def test_the_closed_form_is_the_ridge_fitted_on_the_served_inputs(default_fields, statistics, prepared, eeg_raw):
    """For 19 of the model's electrodes: the map re-solved from the statistics equals a lagged
    ridge fitted, the training's way, on the training rows as this cap serves them."""
    plan, _ = _subset_plan(default_fields, eeg_raw, SUBSET_19)
    matrix, offset = cap_operator(plan, default_fields)
    served = np.asarray(prepared.eeg, np.float64) @ matrix.T + offset  # (n, 60) the model's input, as served
    as_served = SimpleNamespace(recordings=[dataclasses.replace(prepared, eeg=served)])
    blocks, boundaries = ridge_blocks(as_served, max(statistics.lags))
    fit = fit_ridge_blocks(blocks, boundaries, statistics.lags, statistics.relative_alphas)
    solution = statistics.solve(matrix, offset)
    conv, bias = fit.as_conv_skip(max(statistics.lags) + 1)
    weight, expected_bias = solution.as_conv_skip(max(statistics.lags) + 1)
    scale = np.abs(conv).max()
    np.testing.assert_allclose(weight, conv, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(expected_bias, bias, rtol=0, atol=1e-6)


def test_the_cap_operator_is_what_the_served_path_does(default_fields, eeg_raw, prepared):
    """Adapter + the training's preprocessing of a stream = C · x + c of the training inputs x,
    for a subset of the model's electrodes and for a 10-20 cap placed on the head."""
    positions, fiducials = np.asarray(default_fields.eeg_positions_m), np.asarray(default_fields.eeg_fiducials_m)
    placed, _ = place_montage("standard_1020", CAP_19, positions, fiducials)
    volts = eeg_raw.get_data().T
    cap_volts = volts @ spline_matrix(positions, placed, fit_origin(positions)).T
    cap = SourceDescription(name="cap", labels=CAP_19, sfreq_hz=default_fields.sfreq_hz, units=("V",) * 19,
                            positions_m=tuple(map(tuple, placed)), channel_format="double64")
    plan_subset, subset = _subset_plan(default_fields, eeg_raw, SUBSET_19)
    cases = [(plan_subset, subset.get_data().T),
             (plan_adaptation(default_fields, cap, AdaptationOptions(max_missing_fraction=None)), cap_volts)]
    x = np.asarray(prepared.eeg, np.float64)
    for plan, data in cases:
        adapted, _ = Adapter(plan, max_chunk_samples=len(data)).apply(np.ascontiguousarray(data), None)
        served, _ = eeg_preprocessor(default_fields, default_fields.sfreq_hz).process(adapted, None)
        matrix, offset = cap_operator(plan, default_fields)
        settled = slice(600, None)  # once the filters forgot their start
        np.testing.assert_allclose(served[settled], (x @ matrix.T + offset)[settled], rtol=0, atol=2e-5)


def test_the_expected_quality_is_the_held_out_score_of_the_data(statistics, prepared):
    """The closed-form r and R² of a map fitted on some rows and scored on others equal the
    Pearson r and R² computed from the rows themselves."""
    lags = statistics.lags
    x, y = np.asarray(prepared.eeg, np.float64), np.asarray(prepared.meg, np.float64)
    start, stop = prepared.parts["train"]
    middle = (start + stop) // 2
    fitting, held = GramAccumulator.empty(len(lags) * 60, 306), GramAccumulator.empty(len(lags) * 60, 306)
    fitting.add(lagged_rows(x, lags, start, middle), y[start:middle])
    held.add(lagged_rows(x, lags, middle, stop), y[middle:stop])
    quality = _held_out_quality(fitting, held, 0.1)
    weight, bias, _ = refit_ridge(fitting, 0.1)
    predicted = lagged_rows(x, lags, middle, stop) @ weight + bias
    truth = y[middle:stop]
    assert quality.r == pytest.approx(float(np.nanmean(pearson_r(truth, predicted))), abs=1e-9)
    r2 = 1 - ((truth - predicted) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)
    assert quality.r2 == pytest.approx(float(np.mean(r2)), abs=1e-9)


def test_fewer_electrodes_are_expected_to_give_less_and_the_floor_refuses_by_the_numbers(
    default_fields, statistics, eeg_raw
):
    full = statistics.solve()
    qualities = []
    for k in (45, 19, 6):
        keep = [int(i) for i in np.round(np.linspace(0, 59, k))]
        plan, _ = _subset_plan(default_fields, eeg_raw, keep)
        path = resolve_linear_path(plan, default_fields, statistics, full)
        assert not path.identity and path.quality.n_electrodes == k
        assert path.delta_weight.shape == (len(statistics.lags) * 60, 306) and path.delta_weight.dtype == np.float32
        qualities.append(path.quality)
    assert qualities[0].r > qualities[1].r > qualities[2].r and qualities[0].full_r == pytest.approx(full.expected.r)
    assert "far from complete" in qualities[2].describe() and "far from complete" not in qualities[0].describe()
    check_expected_quality(qualities[2], 0.3, "amp")
    with pytest.raises(ValueError) as error:
        check_expected_quality(qualities[2], 0.9, "amp")
    message = str(error.value)
    assert f"expected r {qualities[2].r:.3f}" in message and f"full-cap r {full.expected.r:.3f}" in message
    assert "90 %" in message and "\n" not in message
    whole, _ = _subset_plan(default_fields, eeg_raw, range(60))
    identity = resolve_linear_path(whole, default_fields, statistics, full)
    assert identity.identity and not identity.delta_weight.any() and identity.quality.share == 1.0


def test_the_file_round_trips_and_is_checked(tmp_path, default_fields, statistics):
    path = statistics.save(tmp_path)
    assert path.name == STATISTICS_FILENAME
    again = load_statistics(tmp_path, default_fields)
    assert len(again.folds) == N_FOLDS and again.lags == statistics.lags
    np.testing.assert_array_equal(again.solve().weight, statistics.solve().weight)
    assert load_statistics(tmp_path / "nowhere") is None  # an older model: no statistics, no error
    other = default_fields.replace(eeg_channel_names=[f"E{i}" for i in range(60)])
    with pytest.raises(StatisticsError, match="other EEG channels"):
        load_statistics(tmp_path, other)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(StatisticsError, match=STATISTICS_FILENAME):
        load_statistics(tmp_path)


def test_the_statistics_command_adds_them_to_an_existing_model(tmp_path, statistics):
    """`brainformer statistics` on a copy of the bundled model without its file writes the same
    statistics, leaves the weights alone and says how close the skip path it gives is."""
    from brainformer.cli import app

    model = tmp_path / "model"
    shutil.copytree(BUNDLED_MODELS["default"], model)
    (model / STATISTICS_FILENAME).unlink()
    weights = (model / "model.safetensors").read_bytes()
    result = CliRunner().invoke(app, ["statistics", "--model", str(model), "--data", str(SAMPLE_RECORDING),
                                      "--config", str(REPO_ROOT / "configs" / "train-sample.toml")])
    assert result.exit_code == 0, result.output
    assert "differs from the model's by at most" in result.output
    assert (model / "model.safetensors").read_bytes() == weights
    written = LinearPathStatistics.read(model / STATISTICS_FILENAME)
    for ours, bundled in zip(written.folds, statistics.folds):
        np.testing.assert_allclose(ours.gram, bundled.gram, rtol=1e-6)  # BLAS summation order
        np.testing.assert_allclose(ours.cross, bundled.cross, rtol=1e-6, atol=1e-6)
    refused = CliRunner().invoke(app, ["statistics", "--model", str(tmp_path / "absent"), "--data",
                                       str(SAMPLE_RECORDING)])
    assert refused.exit_code == 2 and "error:" in refused.output
