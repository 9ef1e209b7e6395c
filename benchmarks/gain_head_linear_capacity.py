"""How good a linear filter the gain head can be, in closed form, on a simulation.

With constant gains the gain head is a linear filter of the EEG: a weighted sum, per MEG channel,
of its filters' outputs. Control 1 of `benchmarks/transformer_controls.py` (the transformer
without a linear path) must reach the lagged ridge; this asks, without training anything, what
the head's filters allow at best on the same recording (`--minutes` train rows, held-out rest):

- `bands`: the recipe's start, band-pass pairs each on its band's first principal component
  (`filter_bank.band_filters`, as `training.init_filters_from_bands` builds them), `--pairs`
  pairs;
- `components k`: the EEG's `k` leading principal components at the newest sample
  (`filter_bank.component_filters`, the start `training.gain_filters_on_components` gives);
- `reduced rank r`: the lagged ridge (the evaluation's, lags 0 … 50 ms) projected on its `r`
  leading output directions on the train rows (the reduced-rank ridge): what `r` filters can
  give once trained to the best spatio-temporal shapes.

Each is a ridge from the filters' outputs to the MEG (penalty chosen on the last 20 % of the
train rows) scored on the held-out rows, mean R² over the channels, next to the ridge and the
lagged ridge fitted in the same run.

    python benchmarks/gain_head_linear_capacity.py --work /tmp/controls --components 32 59 --ranks 8 16 24 32
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from scipy import signal  # noqa: E402

from benchmarks.transformer_controls import add_default_simulation_arguments, prepared_default_simulation  # noqa: E402
from brainformer.evaluation import fit_ridge, lag_samples, r_squared  # noqa: E402
from brainformer.filter_bank import band_filters, component_filters  # noqa: E402
from brainformer.settings import load_settings  # noqa: E402


def mean_r2(truth: np.ndarray, prediction: np.ndarray) -> float:
    """Mean over the channels of R² (`brainformer.evaluation.r_squared`)."""
    return float(np.mean(r_squared(truth, prediction)))


def band_outputs(eeg: np.ndarray, train: tuple[int, int], sfreq_hz: float, band_hz: tuple[float, float], pairs: int,
                 taps: int) -> np.ndarray:
    """`(n, 2 · pairs)`: the causal outputs of the recipe's band bank, fitted on the train rows."""
    bank = band_filters(eeg[train[0]:train[1]], sfreq_hz, band_hz[0], band_hz[1], pairs, taps)
    return np.stack([signal.lfilter(kernel[::-1], 1.0, eeg @ spatial) for spatial, kernel in zip(bank.spatial, bank.temporal)],
                    axis=1)


def reduced_rank(fitted: np.ndarray, train: tuple[int, int], rank: int) -> np.ndarray:
    """`fitted` `(n, n_meg)` projected on its `rank` leading directions on the train rows (about
    their train mean): the reduced-rank version of the map that gave it."""
    mean = fitted[train[0]:train[1]].mean(axis=0)
    centred = fitted[train[0]:train[1]] - mean
    _, vectors = np.linalg.eigh(centred.T @ centred)
    basis = vectors[:, ::-1][:, :rank]
    return (fitted - mean) @ basis @ basis.T + mean


def capacities(eeg: np.ndarray, meg: np.ndarray, sfreq_hz: float, train: tuple[int, int], test: tuple[int, int],
               band_hz: tuple[float, float], pairs: int, taps: int, components: list[int], ranks: list[int]) -> dict:
    """R² on `test` of the baselines and of each filter family of the module docstring."""
    truth = np.asarray(meg[test[0]:test[1]], dtype=np.float64)

    def through_ridge(features: np.ndarray) -> float:
        return mean_r2(truth, fit_ridge(features, meg, (0,), *train).predict(features, *test))

    lagged = fit_ridge(eeg, meg, lag_samples(sfreq_hz), *train).predict(eeg)
    result = {"ridge": through_ridge(eeg), "lagged_ridge": mean_r2(truth, lagged[test[0]:test[1]]),
              "bands": {"filters": 2 * pairs, "r2": through_ridge(band_outputs(eeg, train, sfreq_hz, band_hz, pairs, taps))},
              "components": {}, "reduced_rank": {}}
    for count in components:
        result["components"][count] = through_ridge(eeg @ component_filters(eeg[train[0]:train[1]], count).T)
    for rank in ranks:
        result["reduced_rank"][rank] = mean_r2(truth, reduced_rank(lagged, train, rank)[test[0]:test[1]])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_default_simulation_arguments(parser)
    parser.add_argument("--components", type=int, nargs="+", default=[32])
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 24, 32])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if min(args.ranks) < 1 or min(args.components) < 1:
        parser.error("--components and --ranks: each at least 1")

    settings = load_settings(args.config)
    _, prepared, rec, test_start = prepared_default_simulation(args, settings)
    config = prepared.fields
    if max(args.components) > config.n_eeg_channels:
        parser.error(f"--components: at most the model's {config.n_eeg_channels} EEG channels")
    pairs = -(-int(settings.model.get("gain_filters", 32)) // 2)
    taps = int(settings.model.get("gain_filter_past_samples", 128))
    band_hz = (config.highpass_hz or 1.0, min(config.lowpass_hz or 0.45 * rec.sfreq_hz, 0.45 * rec.sfreq_hz))
    result = capacities(np.asarray(rec.eeg, dtype=np.float64), np.asarray(rec.meg), rec.sfreq_hz, rec.parts["train"],
                        (test_start, rec.n_samples), band_hz, pairs, taps, args.components, args.ranks)
    print(f"ridge {result['ridge']:.4f}, lagged ridge {result['lagged_ridge']:.4f}")
    print(f"band bank ({result['bands']['filters']} filters): {result['bands']['r2']:.4f}")
    for count, r2 in result["components"].items():
        print(f"{count} principal components at the newest sample: {r2:.4f}")
    for rank, r2 in result["reduced_rank"].items():
        print(f"lagged ridge at rank {rank}: {r2:.4f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
