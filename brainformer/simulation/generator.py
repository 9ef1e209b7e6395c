"""The stateful activity generator: consecutive chunks of EEG (and MEG) for one plan and seed.

Determinism: each kind of random draw has its own `numpy.random.Generator`, and every filter
keeps its state between chunks, so reading the activity in chunks of any size gives the same
samples. Generation starts after a burn-in, so the slow filters start in their stationary regime.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.signal

from brainformer.simulation.layouts import LAYOUTS
from brainformer.simulation.plan import _Plan
from brainformer.simulation.planted import _PlantedState, _PlantedTerm
from brainformer.simulation.spectra import _BurstProcess

CHUNK_SECONDS = 2.0
BURN_IN_SECONDS = 10.0

_STREAMS = ("background", "alpha_carrier", "alpha_envelope", "events", "sparse_carrier", "sparse_envelope",
            "eeg_white", "eeg_pink", "meg_white", "meg_pink")


class _ActivityGenerator:
    """Draws consecutive chunks of EEG (and MEG) for one plan and seed.

    All state lives here: one random stream per kind of draw (so chunking never changes which
    number goes where) and the filter states. EEG-only mode skips the MEG streams and sums;
    the EEG is the same either way. With a `planted` term (MEG only) its source time course of
    the last chunk is `planted_source`; the EEG and the rest of the MEG do not change.
    """

    def __init__(self, plan: _Plan, seed: int, with_meg: bool, planted: _PlantedTerm | None = None) -> None:
        self.plan = plan
        self.with_meg = with_meg
        self.planted = _PlantedState(planted) if planted is not None and with_meg else None
        self.planted_source: np.ndarray | None = None
        children = np.random.SeedSequence([seed, LAYOUTS.index(plan.truth.layout)]).spawn(len(_STREAMS))
        self.rng = {name: np.random.Generator(np.random.PCG64(child)) for name, child in zip(_STREAMS, children)}
        n_sections = plan.pink_sos.shape[0]
        n_eeg, n_meg = plan.leads_eeg.shape[0], plan.leads_meg.shape[0]
        # sosfilt along axis 0 keeps its state as (sections, 2, signals).
        self.background_state = np.zeros((n_sections, 2, plan.background_factor_eeg.shape[1]))
        self.eeg_pink_state = np.zeros((n_sections, 2, n_eeg))
        self.meg_pink_state = np.zeros((n_sections, 2, n_meg))
        self.alpha_state = [(np.zeros(2), np.zeros(1)) for _ in plan.alpha]
        self.sparse_state = [(np.zeros(2), np.zeros(1)) for _ in plan.sparse]
        self.evoked_state = [np.zeros(max(len(k.a), len(k.b)) - 1) for k in plan.evoked]
        self.samples_generated = 0
        burn_in = int(BURN_IN_SECONDS * plan.truth.sfreq_hz)
        chunk = max(1, int(CHUNK_SECONDS * plan.truth.sfreq_hz))
        for start in range(0, burn_in, chunk):
            self.generate(min(chunk, burn_in - start))
        self.samples_generated = 0

    def _bursts(
        self, processes: tuple[_BurstProcess, ...], states: list, carrier: str, envelope: str, n: int
    ) -> np.ndarray:
        """`(n, len(processes))` unit-variance burst time courses; `states` updated in place."""
        k = len(processes)
        carrier_noise = self.rng[carrier].standard_normal((n, k))
        envelope_noise = self.rng[envelope].standard_normal((n, k))
        out = np.empty((n, k))
        for i, (process, (carrier_state, envelope_state)) in enumerate(zip(processes, states)):
            c, carrier_state = scipy.signal.lfilter(
                process.carrier_b, process.carrier_a, carrier_noise[:, i], zi=carrier_state
            )
            rho = process.envelope_coefficient
            u, envelope_state = scipy.signal.lfilter(
                [math.sqrt(1 - rho * rho)], [1.0, -rho], envelope_noise[:, i], zi=envelope_state
            )
            out[:, i] = np.abs(u) ** process.envelope_power * c * process.norm
            states[i] = (carrier_state, envelope_state)
        return out

    def _components(self, n: int) -> np.ndarray:
        """`(n, K)` unit time courses in the order alpha, evoked, sparse."""
        plan = self.plan
        alpha = self._bursts(plan.alpha, self.alpha_state, "alpha_carrier", "alpha_envelope", n)
        draws = self.rng["events"].random(n)
        p = plan.event_probability
        impulses = np.where(draws < p, 0.5 + draws / p, 0.0) - p  # minus the mean: zero-mean drive
        evoked = np.empty((n, len(plan.evoked)))
        for i, kernel in enumerate(plan.evoked):
            evoked[:, i], self.evoked_state[i] = scipy.signal.lfilter(kernel.b, kernel.a, impulses, zi=self.evoked_state[i])
        sparse = self._bursts(plan.sparse, self.sparse_state, "sparse_carrier", "sparse_envelope", n)
        return np.hstack([alpha, evoked, sparse])

    def _pink(self, stream: str, n: int, width: int, state_name: str) -> np.ndarray:
        white = self.rng[stream].standard_normal((n, width))
        out, state = scipy.signal.sosfilt(self.plan.pink_sos, white, axis=0, zi=getattr(self, state_name))
        setattr(self, state_name, state)
        return out

    def generate(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Next `n` samples: EEG `(n, n_eeg)` volts and MEG `(n, n_meg)` T / T/m (None if EEG-only)."""
        plan = self.plan
        rank = plan.background_factor_eeg.shape[1]
        background = self._pink("background", n, rank, "background_state")  # (n, r)
        components = self._components(n)  # (n, K)
        eeg = background @ plan.background_factor_eeg.T + components @ plan.leads_eeg.T
        n_eeg = plan.leads_eeg.shape[0]
        eeg += self.rng["eeg_white"].standard_normal((n, n_eeg)) * plan.noise_white_sd_eeg
        eeg += self._pink("eeg_pink", n, n_eeg, "eeg_pink_state") * plan.noise_pink_sd_eeg
        meg = None
        if self.with_meg:
            n_meg = plan.leads_meg.shape[0]
            meg = background @ plan.background_factor_meg.T + components @ plan.leads_meg.T
            meg += self.rng["meg_white"].standard_normal((n, n_meg)) * plan.noise_white_sd_meg
            meg += self._pink("meg_pink", n, n_meg, "meg_pink_state") * plan.noise_pink_sd_meg
            if self.planted is not None:
                # Computed from the EEG as recorded (sensor noise included): a function of it alone.
                self.planted_source = self.planted.source(eeg)
                meg += np.outer(self.planted_source, self.planted.term.meg_pattern)
        self.samples_generated += n
        return eeg, meg

