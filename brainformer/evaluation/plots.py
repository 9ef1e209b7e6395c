"""PNG plots of an `EvaluationReport` (matplotlib, imported only when plotting).

- `traces.png`: truth vs predictions over the test part, best and median sensor of each type;
- `r_by_type.png`: per-sensor r of every method, by sensor type;
- `topomap_r.png`: per-sensor r on the sensor layout, when the recording's `mne.Info` is given;
- with artefact-free scores: `clean_vs_all.png` (per-sensor r on clean vs all held-out samples)
  and `topomap_clean_r.png` (per-sensor clean r on the sensor layout).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from brainformer.evaluation.metrics import MEG_TYPES
from brainformer.evaluation.scoring import EvaluationReport

logger = logging.getLogger(__name__)


def write_plots(report: EvaluationReport, plots_dir: Path, info: Any | None = None) -> list[Path]:
    """Write PNG plots of a report; returns the files written.

    - `traces.png`: truth vs predictions over the test part for the best and the median sensor of
      each type (ranked by the model's r, or by the lagged ridge's without a model);
    - `r_by_type.png`: per-sensor r of every method, split by sensor type (box + points);
    - `topomap_r.png`: per-sensor r of the ranking method on the magnetometers and on the
      gradiometer pairs (mean of the pair), when `info` (an `mne.Info` holding the MEG channels
      with positions) is given;
    - when the report holds artefact-free scores (`report.clean`): `clean_vs_all.png`, per-sensor
      r on the clean samples against r on all samples for every method (points below the
      diagonal lose with the artefacts), and `topomap_clean_r.png`, the clean r of the ranking
      method on the sensor layout.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = [
        _plot_traces(report, plots_dir / "traces.png", plt),
        _plot_r_by_type(report, plots_dir / "r_by_type.png", plt),
    ]
    if report.clean is not None:
        written.append(_plot_clean_vs_all(report, plots_dir / "clean_vs_all.png", plt))
    if info is not None:
        method = _ranking_method(report)
        maps = [("topomap_r.png", report.methods[method].scores.r, "r, all held-out samples")]
        if report.clean is not None:
            maps.append(("topomap_clean_r.png", report.clean[method].scores.r, "r, clean samples"))
        # One colour scale for both maps, so that they compare at a glance.
        vmax = max(float(np.nanmax(np.abs(np.concatenate([m[1] for m in maps])))), 1e-3)
        for name, r, what in maps:
            path = _plot_topomap(report, plots_dir / name, plt, info, r, f"{method}: {what}", vmax)
            if path is not None:
                written.append(path)
    return written


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ranking_method(report: EvaluationReport) -> str:
    return "model" if "model" in report.methods else "lagged_ridge"


def _plot_traces(report: EvaluationReport, path: Path, plt: Any) -> Path:
    ranking = report.methods[_ranking_method(report)].scores.r
    types = np.asarray(report.channel_types)
    picks: list[tuple[str, int]] = []
    for kind in MEG_TYPES:
        idx = np.flatnonzero((types == kind) & np.isfinite(ranking))
        if idx.size == 0:
            continue
        order = idx[np.argsort(ranking[idx])[::-1]]
        picks += [(f"best {kind}", int(order[0])), (f"median {kind}", int(order[len(order) // 2]))]
    times = np.arange(report.truth.shape[0]) / report.sfreq_hz + report.rows.test_start / report.sfreq_hz
    fig, axes = plt.subplots(len(picks), 1, figsize=(11, 2.2 * len(picks)), sharex=True, squeeze=False)
    shown = [m for m in ("model", "lagged_ridge", "ridge") if m in report.methods]
    shown += [m for m in report.methods if m not in shown]
    for ax, (label, channel) in zip(axes[:, 0], picks):
        ax.plot(times, report.truth[:, channel], color="black", lw=1.0, label="measured")
        for method in shown:
            r = report.methods[method].scores.r[channel]
            ax.plot(times, report.methods[method].predictions[:, channel], lw=0.8, label=f"{method} (r={r:.2f})")
        ax.set_title(f"{report.channel_names[channel]} — {label}", fontsize=9, loc="left")
        ax.set_ylabel("scaled")
        ax.legend(fontsize=7, loc="upper right", ncol=len(shown) + 1)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    return _save(fig, path, plt)


def _plot_r_by_type(report: EvaluationReport, path: Path, plt: Any) -> Path:
    types = np.asarray(report.channel_types)
    kinds = [k for k in MEG_TYPES if (types == k).any()]
    names = list(report.methods)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 + 1.5 * len(names), 4), sharey=True, squeeze=False)
    rng = np.random.default_rng(0)
    for ax, kind in zip(axes[0], kinds):
        data = [report.methods[m].scores.r[types == kind] for m in names]
        data = [d[np.isfinite(d)] for d in data]
        ax.boxplot(data, showfliers=False)
        for i, values in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, values.size), values, s=5, alpha=0.5)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
        ax.set_title(f"{kind} ({int((types == kind).sum())} sensors)")
        ax.axhline(0, color="grey", lw=0.5)
    axes[0, 0].set_ylabel("Pearson r per sensor (test part)")
    fig.tight_layout()
    return _save(fig, path, plt)


def _plot_clean_vs_all(report: EvaluationReport, path: Path, plt: Any) -> Path:
    """Per-sensor r on the clean samples (y) against r on all samples (x), one panel per method."""
    types = np.asarray(report.channel_types)
    names = list(report.methods)
    fig, axes = plt.subplots(
        1, len(names), figsize=(3.6 * len(names), 4.3), sharex=True, sharey=True, squeeze=False, layout="constrained"
    )
    everything = np.concatenate([np.concatenate([report.methods[m].scores.r, report.clean[m].scores.r]) for m in names])
    everything = everything[np.isfinite(everything)]
    lo, hi = (float(everything.min()), float(everything.max())) if everything.size else (-1.0, 1.0)
    pad = 0.05 * max(hi - lo, 1e-3)
    share = report.artefacts.clean_share if report.artefacts is not None else float("nan")
    for ax, method in zip(axes[0], names):
        r_all, r_clean = report.methods[method].scores.r, report.clean[method].scores.r
        for kind, color in zip(MEG_TYPES, ("tab:blue", "tab:orange")):
            picked = types == kind
            if picked.any():
                ax.scatter(r_all[picked], r_clean[picked], s=6, alpha=0.6, color=color, label=f"{kind} ({int(picked.sum())})")
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=0.7)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal")
        ax.set_title(
            f"{method.replace('_', ' ')}: mean r {np.nanmean(r_all):.3f} all → {np.nanmean(r_clean):.3f} clean", fontsize=9
        )
        ax.set_xlabel("r, all held-out samples")
        ax.legend(fontsize=7, loc="upper left")
    axes[0, 0].set_ylabel("r, clean samples")
    fig.suptitle(
        f"per-sensor r without heartbeat and blink windows ({100 * share:.0f} % of the held-out samples are clean)", fontsize=10
    )
    return _save(fig, path, plt)


def _plot_topomap(
    report: EvaluationReport, path: Path, plt: Any, info: Any, r: np.ndarray, title: str, vmax: float
) -> Path | None:
    """`r` `(n_meg,)` on the magnetometers and on the gradiometer pairs (mean of the pair), colours
    from −`vmax` to `vmax`."""
    import mne

    index = {name: i for i, name in enumerate(report.channel_names)}
    mags = [n for n, t in zip(report.channel_names, report.channel_types) if t == "mag" and n in info.ch_names]
    if not mags:
        logger.info("topomap skipped: no magnetometers with positions")
        return None
    mag_info = mne.pick_info(info, [info.ch_names.index(n) for n in mags])
    if not np.all(np.isfinite([ch["loc"][:3] for ch in mag_info["chs"]])) or np.allclose([ch["loc"][:3] for ch in mag_info["chs"]], 0):
        logger.info("topomap skipped: the magnetometers have no positions")
        return None
    # Neuromag triplets share the name stem "MEG 011" + digit: draw each gradiometer pair's mean r
    # at its magnetometer's position.
    grads_by_stem: dict[str, list[int]] = {}
    for name, kind in zip(report.channel_names, report.channel_types):
        if kind == "grad":
            grads_by_stem.setdefault(name[:-1], []).append(index[name])
    mag_r = np.array([r[index[n]] for n in mags])
    grad_r = np.array([np.nanmean(r[grads_by_stem[n[:-1]]]) if n[:-1] in grads_by_stem else np.nan for n in mags])
    panels = [("magnetometers", mag_r)]
    if np.isfinite(grad_r).any():
        panels.append(("gradiometer pairs (mean)", grad_r))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    image = None
    for ax, (panel, values) in zip(axes[0], panels):
        finite = np.isfinite(values)
        picked_info = mne.pick_info(mag_info, np.flatnonzero(finite))
        image, _ = mne.viz.plot_topomap(values[finite], picked_info, axes=ax, show=False, cmap="RdBu_r", vlim=(-vmax, vmax))
        ax.set_title(f"{title}\n{panel}", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), shrink=0.7, label="Pearson r")
    return _save(fig, path, plt)

