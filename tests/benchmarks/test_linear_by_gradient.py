"""benchmarks/linear_by_gradient.py: the lagged ridge's map trained by gradient converges to the
closed-form fit where the schedule lets it (its measured run is in docs/transformer.md)."""

from __future__ import annotations

import numpy as np

from benchmarks.gain_head_linear_capacity import mean_r2
from benchmarks.transformer_controls import train_linear
from brainformer.evaluation import fit_ridge
from brainformer.settings import TrainingSettings

N, TRAIN, TEST, LAGS = 12000, (0, 9000), (9000, 12000), (0, 2, 4)


def test_a_decaying_schedule_converges_to_the_closed_form_and_a_constant_one_stays_off_it():
    rng = np.random.default_rng(0)
    eeg = rng.standard_normal((N, 3)).astype(np.float32)
    meg = np.stack([eeg[:, 0] - 0.5 * np.roll(eeg[:, 1], 2), np.roll(eeg[:, 2], 4) + 0.3 * eeg[:, 0]], axis=1)
    meg = (meg + 0.3 * rng.standard_normal(meg.shape)).astype(np.float32)
    truth = meg[TEST[0]:TEST[1]].astype(np.float64)
    closed_form = mean_r2(truth, fit_ridge(eeg, meg, LAGS, *TRAIN).predict(eeg, *TEST))
    results = {}
    for scheduler in ("cosine", "constant"):
        training = TrainingSettings(batch_size=8, learning_rate=0.2, weight_decay=0.0, warmup_ratio=0.1,
                                    lr_scheduler=scheduler, loss_last_samples=8)
        trained = train_linear(eeg, meg, TRAIN, TEST, LAGS, training, steps=400, checkpoints=2, window_samples=16)
        assert sorted(trained) == [200, 400]
        results[scheduler] = mean_r2(truth, trained[400])
    assert closed_form > 0.85
    assert results["cosine"] > closed_form - 0.002
    # A large constant step keeps the weights jumping around the optimum.
    assert results["constant"] < results["cosine"] - 0.01
