"""`demo`: the whole pipe on the bundled recording and the bundled model, scored live.

One command, nothing else running, no network::

    player (subprocess) ──LSL──► serve (subprocess) ──ZeroMQ──► this process
    bundled EEG, real rate        bundled model                 latency, windows, Pearson r
                                                                against the recording's true MEG

- The player (``python -m brainformer_rt.tools.demo.player``: the ``simulate`` player with a start sample)
  plays the EEG of ``brainformer/recordings/test_raw.fif`` in a loop. It starts ``settle_s``
  before the scored held-out rows (the last 25 % in time, as defined by
  :func:`brainformer.data.split_parts`), so the held-out part is scored within the first
  seconds whatever the duration, and it starts its clock only when the daemon has connected
  (model loaded, stream open): model loading never eats into the scored time. With the 24 s
  recording, the held-out part comes around again every 24 s.
- Every predicted sample carries the LSL timestamp of the EEG sample it was predicted for, and
  the player stamps sample ``k`` with ``t_start + k / sfreq``, so a timestamp maps exactly to a
  sample of the recording. The player reports ``t_start``; the mapping is checked on every EEG
  sample this process also reads from the stream (the values must be equal bit for bit).
- The true MEG is the recording's MEG through the same preprocessing as training
  (:func:`brainformer.preprocessing.preprocess_recording`, scaled with the model's statistics),
  computed once at start. Predictions arrive in physical units (T, T/m) and are scaled with the
  same statistics before comparing, as the evaluation does (flat channels drop out).
- Pearson r per channel is accumulated from running sums, separately for the held-out (test)
  part and for the training part (in-sample), and averaged over magnetometers and gradiometers;
  each also on the clean samples alone (outside the heartbeat and blink windows that
  ``brainformer evaluate`` leaves out, found once in the recording with MNE).
- Latency = ``local_clock()`` when a message is read − timestamp of its newest sample. The
  display is refreshed right after a message arrived (messages come every hop), so drawing it
  does not delay the next one.

Modules: `scoring` (running r, the playback clock, the true MEG), `run` (the children, their
start-up, the live phase), `player` (the player subprocess), `files` (what the processes hand
each other). The display, the summary and the plot are in `brainformer_rt.commands.demo`.
"""

from brainformer_rt.tools.demo.run import DemoError, DemoOptions, DemoResult, check_options, run_demo
from brainformer_rt.tools.demo.scoring import DemoReference, DemoScore, PlaybackClock, RunningCorrelation

__all__ = ["DemoError", "DemoOptions", "DemoReference", "DemoResult", "DemoScore", "PlaybackClock",
           "RunningCorrelation", "check_options", "run_demo"]
