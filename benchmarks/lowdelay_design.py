"""Choose the low-delay model's input filters and linear lags on validation data.

    python benchmarks/lowdelay_design.py [--data FILE.fif] [--json results.json]

The target is the zero-phase band-passed MEG (the band of the bundled default: 4th-order
Butterworth 4–30 Hz, forward and backward, 60 Hz notch): the brain as it is now. The input is the
EEG through causal filters, which the daemon can run live. For each candidate input filter and
set of causal lags, a ridge map is fitted on the first 60 % of the recording (its penalty chosen
on the last 20 % of those rows, as every ridge here) and scored on the rows from 60 to 75 %, at
zero lag: the mean over MEG channels of Pearson r. The last 25 % (the test part) is never touched.

Every candidate goes through the package's own preprocessing (`preprocess_recording` with the
candidate's config), so what is chosen here is what training and serving compute.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
from rich.console import Console
from rich.table import Table

from brainformer.config_fields import BrainformerFields
from brainformer.data import read_raw
from brainformer.data.readers import fields_for_recording
from brainformer.evaluation import fit_ridge, pearson_r
from brainformer.paths import SAMPLE_RECORDING
from brainformer.preprocessing import preprocess_recording

#: Candidate causal input filters: (high-pass Hz, low-pass Hz, Butterworth order). The first is
#: the bundled default's.
INPUT_FILTERS = (
    (4.0, 30.0, 4), (1.0, 40.0, 2), (1.0, 40.0, 1), (2.0, 40.0, 2), (1.0, None, 2), (0.5, None, 1), (2.0, None, 2),
    (0.5, 40.0, 1),
)
#: Candidate causal lags (samples at 600.6 Hz; 6 samples = 10 ms).
LAG_SETS = {"0": (0,), "0,6": (0, 6), "0-12 every 3": (0, 3, 6, 9, 12), "0-24 every 4": (0, 4, 8, 12, 16, 20, 24),
            "0-30 every 2": tuple(range(0, 31, 2))}
TARGET = {"target_phase": "zero_phase", "target_band_hz": (4.0, 30.0), "target_filter_order": 4}


def candidate_fields(base: BrainformerFields, highpass_hz, lowpass_hz, order: int) -> BrainformerFields:
    return base.replace(highpass_hz=highpass_hz, lowpass_hz=lowpass_hz, filter_order=order, **TARGET)


def score_candidates(data: Path) -> list[dict]:
    return score_recording_candidates(read_raw(data))


def score_recording_candidates(raw, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Every candidate input filter × lag set scored on `raw` (an MNE EEG + MEG recording): rows
    `{highpass_hz, lowpass_hz, order, lags, validation_r}`; `progress` hears of each filter."""
    base = fields_for_recording(raw, {})
    sfreq_hz = float(base.sfreq_hz)
    rows = []
    for highpass_hz, lowpass_hz, order in INPUT_FILTERS:
        if progress is not None:
            progress(f"input filter {filter_label({'highpass_hz': highpass_hz, 'lowpass_hz': lowpass_hz, 'order': order})}")
        recording = preprocess_recording(raw, candidate_fields(base, highpass_hz, lowpass_hz, order))
        n = recording.n_samples
        settle = int(round(sfreq_hz))
        fit_start, fit_stop, val_stop = settle, int(0.60 * n), int(0.75 * n)
        for lag_name, lags in LAG_SETS.items():
            fit = fit_ridge(recording.eeg, recording.meg, lags, fit_start, fit_stop)
            predicted = fit.predict(recording.eeg, fit_stop, val_stop)
            r = float(np.nanmean(pearson_r(recording.meg[fit_stop:val_stop], predicted)))
            rows.append({"highpass_hz": highpass_hz, "lowpass_hz": lowpass_hz, "order": order, "lags": lag_name,
                         "validation_r": round(r, 4)})
    return rows


def best_candidate(rows: list[dict]) -> dict:
    """The row of the highest validation r (the first of equals, in the grid's order)."""
    return max(rows, key=lambda row: row["validation_r"])


def filter_label(row: dict) -> str:
    """``"2–40 Hz, order 2"`` or ``"high-pass 2 Hz, order 2"``."""
    band = f"{row['highpass_hz']:g}–{row['lowpass_hz']:g} Hz" if row["lowpass_hz"] else f"high-pass {row['highpass_hz']:g} Hz"
    return f"{band}, order {row['order']}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SAMPLE_RECORDING, help="EEG + MEG recording (default: the bundled one)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    rows = score_candidates(args.data)
    table = Table(title=f"{args.data.name}: zero-lag r against the zero-phase 4–30 Hz MEG, validation rows 60–75 %")
    for column in ("input filter", "lags", "validation r"):
        table.add_column(column, justify="right" if column == "validation r" else "left")
    best = best_candidate(rows)
    for row in sorted(rows, key=lambda row: -row["validation_r"]):
        table.add_row(filter_label(row), row["lags"], f"{row['validation_r']:.3f}", style="bold" if row is best else None)
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({"data": str(args.data), "target": {k: list(v) if isinstance(v, tuple) else v for k, v in TARGET.items()},
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
