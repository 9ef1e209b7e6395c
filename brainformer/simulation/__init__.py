"""Physics simulator of paired EEG/MEG recordings, and the Wiener oracle to measure models against.

Real paired EEG/MEG is scarce, so this package makes any amount of it from a real forward model:
dipolar sources in a spherical head, with realistic activity, projected through MNE forward
solutions onto the EEG electrodes and the Neuromag-306 MEG sensors, plus sensor noise. Because
the simulator knows every covariance, it also gives the best possible *instantaneous linear* map
from EEG to MEG (the Wiener oracle) and the R² that map reaches, which is what a model trained on
simulated data is compared with.

API (everything else is private)::

    raw, truth = simulate("sample", duration_s=60.0, seed=0)      # mne.io.RawArray + SimulationTruth
    write_simulation(layout, duration_s, sfreq_hz, seed, out)       # FIF + "<stem>-truth.npz"
    is_simulated(path) -> bool                                      # a truth sidecar sits next to it
    truth = load_truth(path)                                        # from the FIF path or the sidecar
    W = wiener_oracle(truth)                                        # (n_meg, n_eeg), raw physical units
    oracle = oracle_map(truth, config)                              # the same after preprocessing
    meg = oracle_prediction(path_or_truth, config, eeg_preprocessed=None)  # (n, n_meg) scaled units
    r2 = noise_ceiling(truth, config)                               # (n_meg,) R² of noiseless vs measured MEG
    r2 = causal_limit(truth, config, lags)                          # (n_meg,) best linear filter on these past lags
    r2 = linear_limit(truth, config)                                # (n_meg,) best non-causal linear filter
    r2 = hop_limit(truth, config, lags, hop_samples)                # (n_meg,) same, plus the future inside the served hop
    r2 = informed_limit(truth, config)                              # (n_meg,) best predictor of any kind
    r2 = envelope_informed_limit(truth, config)                     # (n_meg,) best linear filter told the bursts' power
    share = planted_share(truth, config)                            # (n_meg,) the planted term's share (simulate(planted_share=))
    meg = planted_meg(truth, config)                                # (n, n_meg) the planted term, preprocessed
    source = SyntheticSource("ds000117", seed=0)                    # live, endless
    eeg = source.read_eeg(n_samples)                                # (n, n_eeg) float32 volts

Modules, in dependency order:
    `layouts`: the sensor layouts, input checks and the head model (sphere, sources, forward);
    `spectra`: the filtered-noise processes and their exact spectra;
    `truth`: `SimulationTruth`, the ground truth and its sidecar file;
    `plan`: one subject's anatomy, generators and noise levels (from the ``subject`` number);
    `planted`: the planted non-linear term (off by default), computed from the EEG;
    `generator`: the stateful generator drawing the activity (from the ``seed``);
    `offline`: `simulate` and `write_simulation`, a whole recording;
    `oracle`: the Wiener oracle and its predictions, the causal, hop, linear, envelope-informed and
        informed limits, the noise ceiling, the planted term's share;
    `source`: `SyntheticSource`, the live endless source.

Determinism: the same (layout, duration, rate, seed, subject, spacing) gives the same samples on
a given machine, in chunks of any size. No line noise, head movement or artefacts are simulated.

Nothing here imports torch or transformers (MNE only inside the functions that need it), so
`brainformer simulate-data` and `brainformer-rt simulate --synthetic` run without the model.
"""

from __future__ import annotations

from brainformer.simulation.layouts import DEFAULT_SPACING_MM, LAYOUTS, HeadModel, default_sfreq_hz, head_model, layout_info
from brainformer.simulation.offline import simulate, write_simulation
from brainformer.simulation.oracle import (
    OracleMap,
    causal_limit,
    envelope_informed_limit,
    hop_limit,
    informed_limit,
    linear_limit,
    noise_ceiling,
    oracle_map,
    oracle_prediction,
    planted_meg,
    planted_share,
    wiener_oracle,
)
from brainformer.simulation.source import SyntheticSource
from brainformer.simulation.truth import SimulationTruth, is_simulated, load_truth, truth_path

__all__ = [
    "DEFAULT_SPACING_MM",
    "LAYOUTS",
    "HeadModel",
    "OracleMap",
    "SimulationTruth",
    "SyntheticSource",
    "causal_limit",
    "default_sfreq_hz",
    "envelope_informed_limit",
    "hop_limit",
    "head_model",
    "informed_limit",
    "is_simulated",
    "layout_info",
    "linear_limit",
    "load_truth",
    "noise_ceiling",
    "oracle_map",
    "oracle_prediction",
    "planted_meg",
    "planted_share",
    "simulate",
    "truth_path",
    "wiener_oracle",
    "write_simulation",
]
