"""The ground truth of a simulated recording, and its sidecar file next to the FIF.

A simulated ``dir/name.fif`` has a ``dir/name-truth.npz`` sidecar (compressed, no pickles) with
everything the oracle needs: gains, source and noise covariances, spectra. Its presence is what
makes a recording "simulated" (`is_simulated`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainformer.simulation.spectra import _integration_weights

#: Sidecar next to a simulated FIF: ``sim_raw.fif`` → ``sim_raw-truth.npz``.
TRUTH_SUFFIX = "-truth.npz"
TRUTH_FORMAT_VERSION = 1
#: Fields a sidecar may lack (they keep their defaults): the planted term's.
_OPTIONAL_FIELDS = ("planted_share", "planted_meg_pattern", "planted_source")


def _background_covariance(positions_m: np.ndarray, variance: np.ndarray, length_m: float) -> np.ndarray:
    """`(n_src, n_src)` Gaussian-correlated covariance of the background moments."""
    from scipy.spatial.distance import cdist

    squared = cdist(positions_m, positions_m, "sqeuclidean")
    sd = np.sqrt(variance)
    return sd[:, None] * np.exp(-0.5 * squared / length_m**2) * sd[None, :]


@dataclass(frozen=True, eq=False)
class SimulationTruth:
    """Everything the oracle needs about one simulated recording (saved as the truth sidecar).

    Sources: `n_src` fixed-orientation dipoles; components: `K` single-dipole generators (alpha,
    evoked, sparse) on top of the background. Spectra are one-sided on `freqs_hz`: a density
    `psd` integrates (∫₀^{fs/2} · df) to the variance, and a complex `component_transfer` T gives
    the cross-spectrum of components i and j as T_i conj(T_j) when they share a driver.

    Attributes:
        layout, seed, subject, sfreq_hz, spacing_mm: how it was made.
        eeg_channel_names `(n_eeg,)`, meg_channel_names `(n_meg,)`, meg_channel_types `(n_meg,)`.
        gain_eeg: `(n_eeg, n_src)` V per A·m (potential against infinity).
        gain_meg: `(n_meg, n_src)` T (mag) or T/m (grad) per A·m.
        source_positions_m: `(n_src, 3)` head frame; source_orientations: `(n_src, 3)` unit.
        background_variance_am2: `(n_src,)` variance of each source's 1/f background, (A·m)².
        background_correlation_length_m: the background of sources at distance d correlates by
            exp(−d² / 2ℓ²) (see `background_covariance`).
        pink_psd: `(F,)` unit-variance 1/f density (background and pink sensor noise), 1/Hz.
        component_kinds `(K,)` (``alpha``/``evoked``/``sparse``), component_sources `(K,)`,
        component_moments_am `(K,)` RMS dipole moments, component_drivers `(K,)` (components
        with the same driver are correlated), component_covariance `(K, K)` of the unit time
        courses (exact), component_transfer `(K, F)` complex, 1/√Hz.
        noise_white_variance_eeg/meg, noise_pink_variance_eeg/meg: `(n_eeg,)`/`(n_meg,)` sensor
        noise variances (V², T², (T/m)²); sensor noise is independent across channels.
        freqs_hz: `(F,)` the frequency grid.
        planted_share: the share of each MEG channel's variance (1–40 Hz) the planted
            non-linear term was set to (`brainformer.simulation.planted`); 0: none.
        planted_meg_pattern: `(n_meg,)` its MEG field per unit source (T, T/m), or None.
        planted_source: `(n_samples,)` float32, its realised source time course, or None.
    """

    layout: str
    seed: int
    subject: int
    sfreq_hz: float
    spacing_mm: float
    eeg_channel_names: tuple[str, ...]
    meg_channel_names: tuple[str, ...]
    meg_channel_types: tuple[str, ...]
    gain_eeg: np.ndarray
    gain_meg: np.ndarray
    source_positions_m: np.ndarray
    source_orientations: np.ndarray
    background_variance_am2: np.ndarray
    background_correlation_length_m: float
    pink_psd: np.ndarray
    component_kinds: tuple[str, ...]
    component_sources: np.ndarray
    component_moments_am: np.ndarray
    component_drivers: np.ndarray
    component_covariance: np.ndarray
    component_transfer: np.ndarray
    noise_white_variance_eeg: np.ndarray
    noise_pink_variance_eeg: np.ndarray
    noise_white_variance_meg: np.ndarray
    noise_pink_variance_meg: np.ndarray
    freqs_hz: np.ndarray
    planted_share: float = 0.0
    planted_meg_pattern: np.ndarray | None = None
    planted_source: np.ndarray | None = None

    @property
    def n_eeg(self) -> int:
        return len(self.eeg_channel_names)

    @property
    def n_meg(self) -> int:
        return len(self.meg_channel_names)

    @property
    def component_patterns_am(self) -> np.ndarray:
        """`(K, n_src)` dipole moment of each component per unit of its time course, A·m."""
        patterns = np.zeros((len(self.component_kinds), self.gain_eeg.shape[1]))
        patterns[np.arange(len(self.component_kinds)), self.component_sources] = self.component_moments_am
        return patterns

    def source_covariance(self) -> np.ndarray:
        """`(n_src, n_src)` covariance of the source moments, (A·m)², unfiltered."""
        patterns = self.component_patterns_am
        return self.background_covariance() + patterns.T @ self.component_covariance @ patterns

    def background_covariance(self) -> np.ndarray:
        """`(n_src, n_src)` covariance of the 1/f background moments, (A·m)², unfiltered."""
        return _background_covariance(self.source_positions_m, self.background_variance_am2, self.background_correlation_length_m)

    def noise_covariance_eeg(self) -> np.ndarray:
        """`(n_eeg, n_eeg)` diagonal sensor-noise covariance, V², unfiltered."""
        return np.diag(self.noise_white_variance_eeg + self.noise_pink_variance_eeg)

    def noise_covariance_meg(self) -> np.ndarray:
        """`(n_meg, n_meg)` diagonal sensor-noise covariance, T² / (T/m)², unfiltered."""
        return np.diag(self.noise_white_variance_meg + self.noise_pink_variance_meg)

    def filter_power_response(self, sos: np.ndarray) -> np.ndarray:
        """|H|² of an SOS cascade on `freqs_hz` (ones for an empty cascade): the power response
        `sensor_covariance` takes."""
        import scipy.signal

        if sos.shape[0] == 0:
            return np.ones_like(self.freqs_hz)
        _, response = scipy.signal.sosfreqz(sos, worN=2 * np.pi * self.freqs_hz / self.sfreq_hz)
        return np.abs(response) ** 2

    def sensor_covariance(self, power_response: np.ndarray | None = None) -> np.ndarray:
        """`(n_eeg + n_meg, n_eeg + n_meg)` covariance of [EEG; MEG] (physical units).

        Args:
            power_response: `(F,)` |H(f)|² of a linear filter applied to every channel (on
                `freqs_hz`), or None for the unfiltered data (exact variances).
        """
        gain = np.vstack([self.gain_eeg, self.gain_meg])  # (channels, n_src)
        leads = gain[:, self.component_sources] * self.component_moments_am  # (channels, K)
        white_gain, pink_gain = self._noise_gains(power_response)
        background_gain = pink_gain  # the background is 1/f, like the pink sensor noise
        if power_response is None:
            component_cov = self.component_covariance
        else:
            power = np.asarray(power_response, dtype=np.float64)
            weights = _integration_weights(self.freqs_hz)
            same_driver = self.component_drivers[:, None] == self.component_drivers[None, :]
            transfer = self.component_transfer
            cross = np.einsum("f,if,jf->ij", weights, transfer, transfer.conj()).real * same_driver
            filtered = np.einsum("f,if,jf->ij", weights * power, transfer, transfer.conj()).real * same_driver
            # Correct the grid's small integration error with the exact unfiltered variances.
            correction = np.sqrt(np.diag(self.component_covariance) / np.diag(cross))
            component_cov = filtered * np.outer(correction, correction)
        cov = background_gain * (gain @ self.background_covariance() @ gain.T)
        cov += leads @ component_cov @ leads.T
        noise = np.concatenate([
            white_gain * self.noise_white_variance_eeg + pink_gain * self.noise_pink_variance_eeg,
            white_gain * self.noise_white_variance_meg + pink_gain * self.noise_pink_variance_meg,
        ])
        cov[np.diag_indices_from(cov)] += noise
        return cov

    def meg_noise_variance(self, power_response: np.ndarray | None = None) -> np.ndarray:
        """`(n_meg,)` variance of the MEG sensor noise alone (T², (T/m)²), after a filter of power
        response `power_response` (as in `sensor_covariance`), or unfiltered for None."""
        white_gain, pink_gain = self._noise_gains(power_response)
        return white_gain * self.noise_white_variance_meg + pink_gain * self.noise_pink_variance_meg

    def _noise_gains(self, power_response: np.ndarray | None) -> tuple[float, float]:
        """Variance gains of a filter on white and on 1/f (pink) noise: `(white, pink)`."""
        if power_response is None:
            return 1.0, 1.0
        power = np.asarray(power_response, dtype=np.float64)
        if power.shape != self.freqs_hz.shape:
            raise ValueError(f"power_response must have shape {self.freqs_hz.shape}, got {power.shape}")
        weights = _integration_weights(self.freqs_hz)
        pink_gain = float(np.sum(weights * power * self.pink_psd) / np.sum(weights * self.pink_psd))
        white_gain = float(np.sum(weights * power) / np.sum(weights))
        return white_gain, pink_gain

    # -- sidecar -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the truth as a compressed ``.npz`` (no pickles). Adds, for other readers, the
        dense `source_covariance_am2`, `noise_covariance_eeg` and `noise_covariance_meg`."""
        path = Path(path)
        arrays: dict[str, Any] = {"format_version": np.array(TRUTH_FORMAT_VERSION)}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name in _OPTIONAL_FIELDS and self.planted_source is None:
                continue  # no planted term: its fields are left out, as in older sidecars
            arrays[item.name] = np.array(list(value)) if isinstance(value, tuple) else np.asarray(value)
        arrays["source_covariance_am2"] = self.source_covariance()
        arrays["noise_covariance_eeg"] = self.noise_covariance_eeg()
        arrays["noise_covariance_meg"] = self.noise_covariance_meg()
        with open(path, "wb") as handle:  # np.savez would append ".npz" to other names
            np.savez_compressed(handle, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SimulationTruth":
        """Read a sidecar written by `save`; `ValueError` naming the file if it is not one."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                stored = {key: data[key] for key in data.files}
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a simulation truth file ({err})") from None
        version = int(stored.get("format_version", -1))
        if version != TRUTH_FORMAT_VERSION:
            raise ValueError(f"{path}: truth format version {version}, this version of brainformer reads {TRUTH_FORMAT_VERSION}")
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            if item.name not in stored and item.name in _OPTIONAL_FIELDS:
                continue  # a sidecar without a planted term (or written before there was one)
            if item.name not in stored:
                raise ValueError(f"{path}: truth file lacks {item.name!r}")
            value = stored[item.name]
            if item.name in ("layout",):
                value = str(value)
            elif item.name in ("seed", "subject"):
                value = int(value)
            elif item.name in ("sfreq_hz", "spacing_mm", "background_correlation_length_m", "planted_share"):
                value = float(value)
            elif item.name.endswith("_names") or item.name.endswith("_types") or item.name == "component_kinds":
                value = tuple(str(v) for v in value)
            values[item.name] = value
        return cls(**values)


def truth_path(path: str | Path) -> Path:
    """Sidecar path of a simulated FIF: ``dir/name.fif`` → ``dir/name-truth.npz``."""
    path = Path(path)
    if str(path).endswith(TRUTH_SUFFIX):
        return path
    name = path.name
    for suffix in (".fif.gz", ".fif"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + TRUTH_SUFFIX)


def is_simulated(path: str | Path) -> bool:
    """True if `path` is a simulated recording: its truth sidecar exists."""
    return truth_path(path).is_file()


def load_truth(path: str | Path) -> SimulationTruth:
    """The `SimulationTruth` of a simulated FIF (or of the sidecar path itself).

    Raises:
        FileNotFoundError: no sidecar (the recording is not a simulation).
        ValueError: the sidecar is unreadable or from another format version.
    """
    sidecar = truth_path(path)
    if not sidecar.is_file():
        raise FileNotFoundError(f"{path}: no simulation truth sidecar ({sidecar.name}); not a simulated recording")
    return SimulationTruth.load(sidecar)

