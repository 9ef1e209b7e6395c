"""What gain-modulated features of the EEG add to the lagged ridge, in closed form, on a simulation.

The transformer's gain head computes "gain × linear filter of the EEG" with gains read off the
EEG's envelopes. This asks, without training anything, how much such terms are worth on the
recording `benchmarks/transformer_controls.py` uses: the lagged ridge (the evaluation's, lags
0 … 50 ms) is fitted on the first `--minutes`, then a second ridge on what it leaves, from
gain-modulated features of the EEG:

- spatial components: the `--components` leading principal components of the train rows' EEG
  (`--spatial pca`), or (`--spatial leads`) minimum-variance filters on the simulator's own
  components' EEG leads (from the truth: the best spatial estimate of each source there is);
- per component and band (`BANDS`, 4–31 Hz), the causal band-passed signal `x`, its quarter-cycle
  delayed copy, and its causal envelope (RMS over `--envelope-samples`, the model's window at
  128): features `x · envelope`, `x_delayed · envelope` and the envelope itself.

The features enter as what the lagged EEG does not explain of them, so the second ridge adds
non-linear structure only. Every penalty is chosen on the last 20 % of the train rows. Reported:
both R² on the held-out rows and their paired difference with the evaluation's block-bootstrap
interval (`paired_r2_difference`). A non-linear model's gain over the linear one through
amplitude modulation is bounded by what such features can find (to first order: a gain that
follows the power, times the signal).

    python benchmarks/gain_feature_headroom.py --work /tmp/controls --spatial pca --components 30
    python benchmarks/gain_feature_headroom.py --work /tmp/controls --spatial leads --json leads.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from scipy import signal  # noqa: E402

from benchmarks.transformer_controls import add_default_simulation_arguments, prepared_default_simulation  # noqa: E402
from brainformer.evaluation import fit_ridge, lag_samples, paired_r2_difference  # noqa: E402
from brainformer.settings import load_settings  # noqa: E402

#: Bands of the features (Hz): theta to beta, where the simulator's rhythms and bursts are.
BANDS = ((4, 8), (7, 10), (9, 12), (11, 14), (13, 18), (17, 24), (23, 31))


def gain_modulated_features(components: np.ndarray, sfreq_hz: float, train: tuple[int, int],
                            envelope_samples: int, bands=BANDS) -> np.ndarray:
    """`(n, 3 · components · bands)` float32, all causal: per band and component `x · e`,
    `x_delayed · e` and `e`, with `x` the band-passed component (2nd-order Butterworth), `x_delayed`
    it a quarter of the band's centre cycle earlier, `e` its RMS over the last `envelope_samples`
    samples, standardised on the `train` rows."""
    kernel = np.full(envelope_samples, 1.0 / envelope_samples)
    blocks = []
    for low, high in bands:
        sos = signal.butter(2, [low, high], btype="bandpass", fs=sfreq_hz, output="sos")
        x = signal.sosfilt(sos, components, axis=0)
        envelope = np.sqrt(signal.lfilter(kernel, [1.0], x**2, axis=0))
        envelope = (envelope - envelope[train[0]:train[1]].mean(0)) / envelope[train[0]:train[1]].std(0)
        quarter = max(1, int(round(sfreq_hz / (low + high) * 2 / 4)))
        delayed = np.concatenate([np.zeros((quarter, x.shape[1])), x[:-quarter]])
        blocks += [(x * envelope).astype(np.float32), (delayed * envelope).astype(np.float32), envelope.astype(np.float32)]
    return np.concatenate(blocks, axis=1)


def spatial_components(eeg: np.ndarray, train: tuple[int, int], kind: str, count: int, fif: Path | None = None,
                       config: Any = None) -> np.ndarray:
    """`(n, k)` components of the scaled EEG, each of unit variance on the train rows."""
    covariance = np.cov(eeg[train[0]:train[1]].T)
    if kind == "pca":
        values, vectors = np.linalg.eigh(covariance)
        filters = vectors[:, np.argsort(values)[::-1][:count]]
    else:  # "leads": minimum-variance filters on the simulation's components
        from brainformer.preprocessing import PreprocessingSpec
        from brainformer.simulation import load_truth

        truth = load_truth(fif)
        names = list(truth.eeg_channel_names)
        rows = [names.index(name) for name in config.eeg_channel_names]
        leads = truth.gain_eeg[rows][:, truth.component_sources]
        if PreprocessingSpec.for_eeg(config, truth.sfreq_hz).average_reference:
            leads = leads - leads.mean(axis=0)
        leads = leads / np.asarray(config.eeg_std)[:, None]  # the scaled units of `eeg`
        filters = np.linalg.pinv(covariance, rcond=1e-8, hermitian=True) @ leads
    components = eeg @ filters
    return components / components[train[0]:train[1]].std(0)


def headroom(eeg: np.ndarray, meg: np.ndarray, sfreq_hz: float, train: tuple[int, int], test: tuple[int, int],
             features: np.ndarray, channel_types: list[str]) -> dict[str, Any]:
    """Lagged ridge on `train`, then a ridge of what it leaves on what of `features` the lagged EEG
    does not explain (both on `train`, so the second ridge adds only non-linear structure: the
    joint fit, in two steps); both scored on `test`, paired."""
    lags = lag_samples(sfreq_hz)
    linear = fit_ridge(eeg, meg, lags, *train).predict(eeg)
    features = features - fit_ridge(eeg, features, lags, *train).predict(eeg)
    second = fit_ridge(features, meg - linear, (0,), *train)
    truth = np.asarray(meg[test[0]:test[1]], dtype=np.float64)
    linear = linear[test[0]:test[1]]
    with_features = linear + second.predict(features, *test)
    gain = paired_r2_difference(truth, linear, with_features, channel_types, sfreq_hz)
    return {"lagged_ridge": float(gain.pop("reference")), "with_features": float(gain.pop("other")), "gain": gain,
            "features": int(features.shape[1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_default_simulation_arguments(parser)
    parser.add_argument("--spatial", choices=["pca", "leads"], default="pca")
    parser.add_argument("--components", type=int, default=30, help="principal components (--spatial pca)")
    parser.add_argument("--envelope-samples", type=int, default=128)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    fif, prepared, rec, test_start = prepared_default_simulation(args, load_settings(args.config))
    train = rec.parts["train"]
    eeg, meg = np.asarray(rec.eeg, dtype=np.float64), np.asarray(rec.meg)
    components = spatial_components(eeg, train, args.spatial, args.components, fif, prepared.fields)
    features = gain_modulated_features(components, rec.sfreq_hz, train, args.envelope_samples)
    result = {"spatial": args.spatial, "components": int(components.shape[1]), "envelope_samples": args.envelope_samples,
              **headroom(eeg, meg, rec.sfreq_hz, train, (test_start, rec.n_samples), features,
                         list(prepared.fields.meg_channel_types))}
    print(f"{args.spatial} ({result['components']} components, {result['features']} features, "
          f"{args.envelope_samples}-sample envelopes): lagged ridge {result['lagged_ridge']:.4f}, "
          f"with the features {result['with_features']:.4f}, gain {result['gain']['value']:+.5f} "
          f"[{result['gain']['ci95'][0]:+.5f}, {result['gain']['ci95'][1]:+.5f}]")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
