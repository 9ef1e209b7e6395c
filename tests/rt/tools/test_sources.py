"""Real EEG sources end to end: each kind of source is played into LSL and served by one real
daemon (``serve --model default``, one stream per source kind, one ZeroMQ topic each), and the
live predictions are scored against the recording's MEG as seen through the model's causal band
(the demo's reference), next to the offline model on the same rows.

Sources (the bundled recording, 60 EEG + EOG + stimulus channels at 600.615 Hz):

- mne-lsl ``PlayerLSL``: the EEG only, and the EEG with EOG and stimulus channels (double64, its
  own channel order, units as exponent strings);
- ``brainformer-rt simulate``: in µV; resampled to 500 Hz and to 1000 Hz; 6 electrodes left out;
  interpolated onto a 32-electrode 10-20 cap (positions in the meta-data); and one channel that
  goes flat mid-stream (the ``--flat`` hook), which the daemon must interpolate without a gap.

One daemon for all (the machine has 2 shared cores): about 30 s in all. Everything waits on
samples received and events logged, never on the clock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import mne
import numpy as np
import pylsl
import pytest
import zmq

from brainformer.evaluation import pearson_r
from brainformer.paths import SAMPLE_RECORDING
from brainformer_rt.serving.publishers.zmq import decode_message
from brainformer_rt.tools._proc import free_tcp_address
from tests.rt.conftest import json_events, rt_cli, run_cli, stop_process

pytestmark = pytest.mark.timeout(360)

#: Hang timeout of every wait (a player or the daemon starting on a busy machine takes a minute).
HANG_S = 150.0

DROPPED = ["EEG 005", "EEG 017", "EEG 023", "EEG 034", "EEG 046", "EEG 058"]
#: The channel that goes flat, and when (seconds into the recording; it is flat from the start of
#: serving if the daemon comes later, and re-planned all the same).
FLAT_CHANNEL, FLAT_AT_S = "EEG 021", 8.0
#: What each source kind is: (player, options).
KINDS = {
    "mne-lsl": ("mne-lsl", "eeg"),
    "mne-lsl-aux": ("mne-lsl", "eeg+aux"),
    "uV": ("simulate", ["--unit", "uV"]),
    "500Hz": ("simulate", ["--rate", "500"]),
    "1000Hz": ("simulate", ["--rate", "1000"]),
    "drop6": ("simulate", ["--drop", ",".join(DROPPED)]),
    "cap32": ("simulate", ["--cap", "standard_1020", "--with-aux"]),
    "flat": ("simulate", ["--flat", f"{FLAT_CHANNEL}@{FLAT_AT_S}"]),
}
#: The default model's rate (the rate of every published stream).
MODEL_SFREQ_HZ = 600.614990234375
#: Output samples of each stream left out of the scores: the daemon's filters settle.
SETTLE_S = 2.0
#: Output of the flat stream collected after its re-plan was logged.
AFTER_REPLAN_S = 2.0
#: Seconds of scored output wanted per stream (after settling).
SCORED_S = 6.0

PLAYER_LSL_SCRIPT = """
import sys, time
from mne_lsl.player import PlayerLSL
player = PlayerLSL(sys.argv[1], chunk_size=16, name=sys.argv[2], source_id=sys.argv[3])
player.start()
print("started", flush=True)
while True:
    time.sleep(1.0)
"""


def played_data(kind: str, files: dict) -> tuple[np.ndarray, float, list]:
    """What the source of ``kind`` plays: ``(n, channels)``, its rate, its labels (file order)."""
    player, options = KINDS[kind]
    if player == "mne-lsl":
        raw = mne.io.read_raw_fif(files[options], preload=True, verbose="error")
        return raw.get_data().T, float(raw.info["sfreq"]), list(raw.ch_names)
    from brainformer_rt.commands.simulate import _prepared_source

    keys = {"--unit": "unit", "--rate": "rate", "--drop": "drop", "--cap": "cap", "--flat": "flat"}
    prepared = {}
    for i, option in enumerate(options):
        if option == "--with-aux":
            prepared["with_aux"] = True
        elif option in keys:
            value = options[i + 1]
            prepared[keys[option]] = float(value) if option == "--rate" else value
    source = _prepared_source(SAMPLE_RECORDING, prepared, loop=False)
    return source.data, source.sfreq_hz, source.channel_names


def recording_start(name: str, played: np.ndarray, labels: list, timeout_s: float = HANG_S) -> float:
    """The timestamp the stream ``name`` gives (would give) the first sample of ``played``: the
    first pulled sample found in ``played`` (by label)."""
    found = pylsl.resolve_byprop("name", name, 1, timeout_s)
    assert found, f"LSL stream {name!r} did not appear"
    inlet = pylsl.StreamInlet(found[0])
    try:
        info = inlet.info(timeout_s)
        stream_labels, channel = [], info.desc().child("channels").child("channel")
        while not channel.empty():
            stream_labels.append(channel.child_value("label"))
            channel = channel.next_sibling("channel")
        order = [stream_labels.index(label) for label in labels]
        chunk, stamps = [], []
        deadline = time.monotonic() + timeout_s
        while not stamps:
            assert time.monotonic() < deadline, f"no sample from {name}"
            chunk, stamps = inlet.pull_chunk(timeout=1.0, max_samples=64)
        sample = np.asarray(chunk[0], dtype=np.float64)[order]
        match = np.flatnonzero(np.all(np.isclose(played, sample, rtol=1e-6, atol=0.0), axis=1))
        assert len(match) >= 1, f"{name}: first sample not found in what it plays"
        rate = info.nominal_srate()
        return float(stamps[0]) - int(match[0]) / rate
    finally:
        inlet.close_stream()


@pytest.fixture(scope="module")
def reference():
    """The recording's MEG through the model's causal band (scaled) and the offline default
    model's predictions for every row (windows every hop, each publishing its newest hop)."""
    import torch

    from brainformer.model_dir import load_fields, load_model
    from brainformer.preprocessing import eeg_preprocessor
    from brainformer_rt.tools.demo.scoring import build_reference

    fields = load_fields("default")
    ref = build_reference(SAMPLE_RECORDING, fields)
    model = load_model("default")
    config = model.config
    raw = mne.io.read_raw_fif(SAMPLE_RECORDING, preload=True, verbose="error").pick("eeg", exclude=())
    assert list(raw.ch_names) == list(config.eeg_channel_names)
    eeg = raw.get_data().T.astype(np.float32)
    eeg_pre, _ = eeg_preprocessor(config, config.sfreq_hz).process(eeg, np.arange(len(eeg)) / config.sfreq_hz)
    window, hop = int(config.window_samples), int(config.hop_samples)
    offline = np.full((len(eeg_pre), ref.meg_true.shape[1]), np.nan, dtype=np.float32)
    ends = np.arange(window - 1, len(eeg_pre), hop)
    with torch.no_grad():
        for batch in np.array_split(ends, max(1, len(ends) // 64)):
            windows = np.stack([eeg_pre[end + 1 - window:end + 1] for end in batch])
            predictions = model(torch.from_numpy(windows)).predictions.numpy()
            for end, prediction in zip(batch, predictions):
                offline[end + 1 - hop:end + 1] = prediction[-hop:]
    return ref, offline


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One daemon serving every source kind; yields what it published and said."""
    tmp = tmp_path_factory.mktemp("sources")
    raw = mne.io.read_raw_fif(SAMPLE_RECORDING, preload=True, verbose="error")
    files = {"eeg": tmp / "eeg_raw.fif", "eeg+aux": tmp / "eeg_aux_raw.fif"}
    raw.copy().pick("eeg", exclude=()).save(files["eeg"], verbose="error")
    raw.copy().pick(["eeg", "eog", "stim"], exclude=()).save(files["eeg+aux"], verbose="error")
    tag = uuid.uuid4().hex[:6]
    names = {kind: f"test-src-{kind}-{tag}" for kind in KINDS}
    config = tmp / "serve.toml"
    config.write_text(f"torch_threads = 1\nmax_input_age_s = inf\nwait_s = {HANG_S}\nwarmup_s = 1.0\n")
    zmq_address = free_tcp_address()
    stats_path = tmp / "stats.json"
    err_path = tmp / "serve.err"
    subscriber = zmq.Context.instance().socket(zmq.SUB)
    subscriber.setsockopt(zmq.LINGER, 0)
    subscriber.setsockopt(zmq.RCVHWM, 0)  # no limit on this side: what ZeroMQ drops, it drops at the daemon
    subscriber.setsockopt(zmq.SUBSCRIBE, b"")
    subscriber.connect(zmq_address)
    streams = [arg for kind in KINDS for arg in ("--stream", names[kind])]
    with err_path.open("w") as err:
        daemon = subprocess.Popen(rt_cli("serve", *streams, "--model", "default", "--zmq", zmq_address,
                                         "--lsl-name", "", "--config", str(config), "--stats-json", str(stats_path),
                                         "--log-format", "json", "--device", "cpu", "--engine", "eager"),
                                  stdout=subprocess.PIPE, stderr=err, text=True, env=dict(os.environ))
    players = []
    # Per stream: payloads, the timestamps of their samples, and the headers (seq, t0, t_last, n_samples).
    outputs: dict = {names[kind]: ([], [], []) for kind in KINDS}
    try:
        for kind, (player, options) in KINDS.items():
            source_id = f"test-{uuid.uuid4()}"
            if player == "mne-lsl":
                command = [sys.executable, "-c", PLAYER_LSL_SCRIPT, str(files[options]), names[kind], source_id]
            else:
                command = rt_cli("simulate", "--name", names[kind], "--source-id", source_id, "--chunk", "16",
                                 "--loop", *options)
            players.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                            env=dict(os.environ)))
        starts = {}
        for kind in KINDS:
            data, rate, labels = played_data(kind, files)
            starts[kind] = (recording_start(names[kind], data, labels), rate)
        # Collect until every stream has SCORED_S seconds of settled output samples and the flat one
        # was re-planned (counted in samples received, never in seconds waited: a busy machine only
        # takes longer).
        firsts: dict = {}
        settled = {kind: 0 for kind in KINDS}
        deadline = time.monotonic() + HANG_S  # a hang

        replanned_at: list = []  # messages of the flat stream received when its re-plan was logged

        def enough() -> bool:
            wanted = SCORED_S * MODEL_SFREQ_HZ
            if any(settled[kind] < wanted for kind in KINDS):
                return False
            flat = outputs[names["flat"]][1]
            if not replanned_at:
                if not any(e["event"] == "adaptation_replanned" and e["stream"] == names["flat"]
                           for e in json_events(err_path.read_text())):
                    return False
                replanned_at.append(len(flat))
            # and AFTER_REPLAN_S of output since: the accounting below covers the swap
            return sum(len(stamps) for stamps in flat[replanned_at[0]:]) >= AFTER_REPLAN_S * MODEL_SFREQ_HZ

        while not enough():
            assert daemon.poll() is None, err_path.read_text()[-3000:]
            assert time.monotonic() < deadline, (settled, {k: len(v[1]) for k, v in outputs.items()})
            for _ in range(200):  # then look at the clock again: 8 streams never leave the socket empty
                if not subscriber.poll(20):
                    break
                frames = subscriber.recv_multipart()
                header, payload = decode_message(frames)
                key = frames[0].decode().split("/", 1)[1]
                stamps = header["t0"] + np.arange(header["n_samples"]) / header["sfreq"]
                outputs[key][0].append(np.array(payload))
                outputs[key][1].append(stamps)
                outputs[key][2].append(header)
                kind = next(k for k, n in names.items() if n == key)
                first = firsts.setdefault(kind, stamps[0])
                settled[kind] += int(np.count_nonzero(stamps >= first + SETTLE_S))
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, err_path.read_text()[-3000:]
        stdout = daemon.stdout.read()
    finally:
        subscriber.close()
        stop_process(daemon)
        for process in players:
            stop_process(process)
            process.stderr.close()
        daemon.stdout.close()
    yield {
        "names": names, "starts": starts, "outputs": outputs, "stdout": stdout, "firsts": firsts,
        "stats": json.loads(stats_path.read_text()), "events": json_events(err_path.read_text()),
    }


def _scores(served, reference, kind):
    """(live r, offline r, n rows) of one source kind: mean over MEG channels."""
    ref, offline = reference
    name = served["names"][kind]
    data, stamps, _ = served["outputs"][name]
    data, stamps = np.concatenate(data), np.concatenate(stamps)
    assert np.isfinite(data).all()
    settled = stamps >= stamps[0] + SETTLE_S
    start, _ = served["starts"][kind]
    rows = np.rint((stamps[settled] - start) * ref.model_sfreq_hz).astype(np.int64) % ref.n_rows
    keep = np.isfinite(offline[rows]).all(axis=1)
    rows, live = rows[keep], data[settled][keep]
    truth = ref.meg_true[rows]
    return (float(np.nanmean(pearson_r(truth, ref.to_scaled(live)))),
            float(np.nanmean(pearson_r(truth, offline[rows]))), len(rows))


#: Where no information is lost the live r must reach this share of the offline r.
LOSSLESS_SHARE = 0.8
#: The 32-electrode cap: 60 electrodes → 32 (MNE spline) → 60 (the daemon's splines) loses the
#: fine spatial detail the model was trained on (PLATFORM: median per-electrode r 0.78 after the
#: round trip, 0.18 against 0.41 served). Measured here: live r 0.20–0.22 against offline
#: 0.50–0.53, i.e. 0.40–0.41 of it, in four runs; the bound leaves a margin for the short
#: scoring stretch (6 s) and for other stretches of the recording.
CAP_SHARE = 0.25


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "cap32"])
def test_sources_without_information_loss_score_like_offline(served, reference, kind):
    live, offline, n = _scores(served, reference, kind)
    print(f"\n{kind}: live r {live:.3f}, offline r {offline:.3f} on the same {n} rows ({live / offline:.2f}×)")
    assert n > 0.8 * SCORED_S * reference[0].model_sfreq_hz
    assert offline > 0.1
    assert live >= LOSSLESS_SHARE * offline, (kind, live, offline)


def test_another_cap_is_served_with_a_stated_share_of_the_offline_score(served, reference):
    live, offline, n = _scores(served, reference, "cap32")
    print(f"\ncap32: live r {live:.3f}, offline r {offline:.3f} on the same {n} rows ({live / offline:.2f}×)")
    assert live >= CAP_SHARE * offline, (live, offline)


def test_each_plan_is_logged_with_what_it_ignores_interpolates_and_resamples(served):
    plans = {e["stream"]: e for e in served["events"] if e["event"] == "adaptation_plan"}
    names = served["names"]
    assert set(plans) == set(names.values())
    aux = plans[names["mne-lsl-aux"]]
    assert {item.split(" (")[0] for item in aux["ignored"]} >= {"EOG 061", "STI 014"}
    assert plans[names["mne-lsl"]]["ignored"] == [] and not plans[names["mne-lsl"]]["interpolated"]
    assert plans[names["uV"]]["units"] == ["microvolts×1e-06"]
    for kind, rate in (("500Hz", 500.0), ("1000Hz", 1000.0)):
        plan = plans[names[kind]]
        assert plan["resample"] and plan["input_sfreq_hz"] == rate
        assert plan["resampler"] == ("linear" if rate == 500.0 else "soxr QQ")
        assert 0 < plan["resampler_delay_ms"][1] <= 5.0  # linear holds back at most 1 input sample, soxr QQ about 2
    drop = plans[names["drop6"]]
    assert sorted(item.split(" (")[0] for item in drop["interpolated"]) == DROPPED
    cap = plans[names["cap32"]]
    assert cap["interpolation_mode"] == "other cap" and len(cap["interpolated"]) == 60 and cap["n_used"] == 32
    assert "interpolated (6, missing or bad" in served["stdout"]  # the plan, for people


def test_a_channel_going_flat_is_interpolated_counted_and_leaves_no_gap(served):
    """The flat channel is re-planned (interpolated) without a gap and without losing a sample.

    The newest-window policy may skip windows whenever the daemon falls behind (a busy machine),
    and it counts every sample that gets no prediction (``samples_unpublished``). So "no gap" is
    asserted as accounting, not as a hole-free output: every input sample of the stream went
    through the adaptation (the swap lost none), every adapted sample was published or counted
    as unpublished, and every hole the subscriber sees between two consecutive messages is
    covered by that count. A hole the re-plan made would be counted nowhere.
    """
    name = served["names"]["flat"]
    counters = served["stats"]["streams"][name]
    gauges = served["stats"]["gauges"][name]
    assert counters["replans"] >= 1 and counters["channels_interpolated"] >= 1 and counters["replans_refused"] == 0
    assert counters["gaps"] == 0 and counters["nan_chunks"] == 0 and counters["nan_windows"] == 0
    assert counters["flat_windows"] > 0
    replanned = [e for e in served["events"] if e["event"] == "adaptation_replanned" and e["stream"] == name]
    assert replanned and replanned[0]["channels"] == [FLAT_CHANNEL] and replanned[0]["interpolated"] == [FLAT_CHANNEL]
    # The player loops: where the recording starts again the channel carries signal, and the
    # start-up plan comes back (then it goes flat again at FLAT_AT_S).
    for event in replanned[1:]:
        assert event["channels"] in ([], [FLAT_CHANNEL])
    assert gauges["bad_channels"] == len(replanned[-1]["channels"])
    assert gauges["interpolated_channels"] == len(replanned[-1]["interpolated"])
    for kind in served["names"]:  # nothing else was re-planned
        if kind != "flat":
            assert served["stats"]["streams"][served["names"][kind]]["replans"] == 0, kind

    # Every raw sample was adapted and preprocessed (the stream is at the model's rate: one out per in).
    assert counters["samples_preprocessed"] == counters["samples_in"] > 0
    # Every preprocessed sample after the first window's older part was published or counted:
    # what is not is the last window still waiting to be run at the stop (at most two hops) and
    # the samples that had not yet made a window due (less than a hop).
    info = served["stats"]["info"]
    window, hop = info["window_samples"], info["hop_samples"]
    span = counters["samples_preprocessed"] - (window - hop)
    accounted = counters["samples_published"] + counters["samples_unpublished"]
    assert span - 3 * hop < accounted <= span, (accounted, span)

    # What the subscriber saw: between two consecutive messages (no ZeroMQ drop between them),
    # the missing samples are never more than the daemon counted as unpublished.
    _, _, headers = served["outputs"][name]
    seq = np.array([h["seq"] for h in headers])
    t0 = np.array([h["t0"] for h in headers])
    t_last = np.array([h["t_last"] for h in headers])
    consecutive = np.diff(seq) == 1
    missing = np.rint((t0[1:] - t_last[:-1]) * MODEL_SFREQ_HZ).astype(np.int64) - 1
    assert consecutive.any()
    assert (missing[consecutive] >= 0).all()  # never a sample twice, never out of order
    holes = int(missing[consecutive].sum())
    print(f"\nflat stream: {len(headers)} messages received, {int((~consecutive).sum())} ZeroMQ drops; "
          f"{holes} samples missing between consecutive messages; daemon: {counters['windows_skipped']} windows "
          f"skipped, {counters['samples_unpublished']} samples unpublished")
    assert holes <= counters["samples_unpublished"]


def test_adaptation_cost_and_latency_are_in_the_statistics(served):
    stats, names = served["stats"], served["names"]
    rows = []
    for kind in ("mne-lsl", "uV", "cap32", "500Hz", "1000Hz"):
        # Only that they are measured and well-formed: how long they take is benchmarks/bench_adaptation.py's.
        adapt = stats["adaptation"][names[kind]]
        e2e = stats["e2e_latency"][names[kind]]
        for summary in (adapt, e2e):
            assert summary["count"] > 0
            assert summary["median_ms"] <= summary["p95_ms"] <= summary["p99_ms"] <= summary["max_ms"]
        assert adapt["median_ms"] >= 0  # a duration (an e2e latency may be < 0: PlayerLSL stamps ahead)
        # one latency per published window, one adaptation per pull (timed after the warm-up)
        assert e2e["count"] <= stats["streams"][names[kind]]["windows_served"]
        assert adapt["count"] <= stats["streams"][names[kind]]["samples_in"]
        rows.append(f"{kind}: adapt median {adapt['median_ms']:.3f} ms p99 {adapt['p99_ms']:.3f} ms; "
                    f"e2e median {e2e['median_ms']:.1f} ms p99 {e2e['p99_ms']:.1f} ms")
    assert stats["gauges"][names["500Hz"]]["resampler_delay_s"] > 0
    print("\n" + "\n".join(rows))
    print("serving began at stream second " + ", ".join(
        f"{kind} {served['firsts'][kind] - served['starts'][kind][0]:.1f}" for kind in names))


def test_check_exit_0_and_2_on_a_live_stream(stream_name, start_player):
    """``check`` against a playing source: 0 with the plan (6 electrodes interpolated), 2 when
    more are missing than ``--max-missing`` allows."""
    start_player(stream_name, "--chunk", "16", "--loop", "--drop", ",".join(DROPPED))
    ok = run_cli("check", "--stream", stream_name, "--model", "default", "--wait", str(HANG_S))
    assert ok.exit_code == 0, ok.output
    assert "interpolated (6, missing or bad" in ok.stdout and "can be served" in ok.stdout
    refused = run_cli("check", "--stream", stream_name, "--model", "default", "--max-missing", "0.05",
                      "--wait", str(HANG_S))
    assert refused.exit_code == 2, refused.output
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "6 of the model's 60 EEG channels are missing" in errors[0]
