"""The feedback stage: hop by hop the estimator's offline numbers, no allocation per hop, holes
bridged or reset; its LSL outlet and ZeroMQ topic; a live daemon with `--feedback` (values, meta-data,
timestamps of the EEG instants, `listen`); a bad feedback config exits 2 naming the key."""

from __future__ import annotations

import json
import time
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import pylsl
import pytest
import zmq

from brainformer.feedback import plan_feedback, signal_values
from brainformer.model_dir import load_fields
from brainformer.settings import FeedbackSignalSettings, read_feedback_file
from brainformer_rt.serving.feedback import FeedbackStage
from brainformer_rt.serving.publishers.lsl import FEEDBACK_STREAM_TYPE, LSLFeedbackPublisher
from brainformer_rt.serving.publishers.zmq import FEEDBACK_TOPIC, ZMQFeedbackTopic, ZMQPublisher, decode_message
from brainformer_rt.tools._proc import free_tcp_address
from tests.rt.conftest import Player, open_inlet, run_cli

pytestmark = pytest.mark.timeout(240)

HOP = 16


class ValuesKept:
    """The stage's sink contract (publish, close), keeping what it is given: the stage's values
    are compared here number for number with the offline estimator; the real LSL and ZeroMQ
    publishers carry them in the round-trip tests below."""

    def __init__(self):
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def publish(self, data: np.ndarray, timestamps: np.ndarray) -> None:
        self.calls.append((data.copy(), timestamps.copy()))

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def fields():
    return load_fields("default")


def eight_signals(names: list[str]) -> list[FeedbackSignalSettings]:
    """Every kind of signal: group envelopes and powers, phases of one sensor and of weighted
    sums, four bands and two history spans."""
    occipital_mags = ("MEG 2*",)
    rng = np.random.default_rng(1)
    return [
        FeedbackSignalSettings("alpha", (8, 12), "envelope", sensors=occipital_mags, types=("mag",)),
        FeedbackSignalSettings("alpha_power", (8, 12), "power", sensors=("MEG 1*",), types=("grad",)),
        FeedbackSignalSettings("beta", (15, 25), "envelope", sensors=("MEG 0*",), types=("mag",)),
        FeedbackSignalSettings("alpha_phase", (8, 12), "phase", sensors=("MEG 2111",)),
        FeedbackSignalSettings("theta_weighted", (4, 8), "envelope", sensors=("MEG 211*",), types=("grad",),
                               weights=(1.0, -0.5)),
        FeedbackSignalSettings("beta_phase", (15, 25), "phase", sensors=("MEG 21*",), types=("mag",),
                               weights=tuple(rng.standard_normal(4))),
        FeedbackSignalSettings("high", (22, 30), "power", types=("mag",), history_s=0.3),
        FeedbackSignalSettings("alpha_short", (8, 12), "envelope", sensors=("MEG 1*",), types=("mag",), history_s=0.25),
    ]


@pytest.fixture(scope="module")
def plan(fields):
    return plan_feedback(eight_signals(list(fields.meg_channel_names)), fields, "default")


def meg_hops(n_samples: int, n_channels: int, sfreq_hz: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    meg = (rng.standard_normal((n_samples, n_channels)) * 1e-12).astype(np.float32)
    return meg, np.arange(n_samples) / sfreq_hz


def offline(plan, meg: np.ndarray) -> np.ndarray:
    """`(n, n_signals)`: every signal at every sample, from the estimators applied offline."""
    columns = []
    for signal in plan.signals:
        analytic = plan.estimator(signal).apply(meg[:, signal.channels].astype(np.float64))
        columns.append(signal_values(signal, analytic))
    return np.stack(columns, axis=1)


def assert_values_match(plan, got: np.ndarray, expected: np.ndarray) -> None:
    """float32 arithmetic against float64: relative to each signal's scale; phases as angles."""
    for s, signal in enumerate(plan.signals):
        if signal.measure == "phase":
            difference = np.angle(np.exp(1j * (got[:, s] - expected[:, s])))
            assert np.max(np.abs(difference)) < 1e-4, signal.name
        else:
            scale = np.max(np.abs(expected[:, s]))
            assert np.max(np.abs(got[:, s] - expected[:, s])) < 1e-5 * scale, signal.name


# ----------------------------------------------------------------------------------------------
# The stage, in-process
# ----------------------------------------------------------------------------------------------
def test_each_hop_publishes_the_offline_estimate_for_its_newest_sample(plan, fields):
    meg, timestamps = meg_hops(200 * HOP, len(fields.meg_channel_names), fields.sfreq_hz)
    sink = ValuesKept()
    stage = FeedbackStage(plan, [sink], 2 * HOP)
    published = [stage.step(meg[i:i + HOP], timestamps[i:i + HOP]) for i in range(0, meg.shape[0], HOP)]
    first = int(np.argmax(published))
    assert not any(published[:first]) and all(published[first:])
    assert first == -(-stage.span // HOP) - 1  # the first hop with a full span of history
    got = np.concatenate([values for values, _ in sink.calls])
    stamps = np.concatenate([stamp for _, stamp in sink.calls])
    newest = np.arange(0, meg.shape[0], HOP)[first:] + HOP - 1
    np.testing.assert_array_equal(stamps, timestamps[newest])
    assert_values_match(plan, got, offline(plan, meg)[newest])
    assert stage.published == len(sink.calls) and stage.steps == len(published)


def test_a_step_allocates_no_array(plan, fields):
    meg, timestamps = meg_hops(400 * HOP, len(fields.meg_channel_names), fields.sfreq_hz)
    stage = FeedbackStage(plan, [], 2 * HOP)
    hops = [(meg[i:i + HOP], timestamps[i:i + HOP]) for i in range(0, meg.shape[0], HOP)]
    for data, stamps in hops[:100]:
        stage.step(data, stamps)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for data, stamps in hops[100:]:
            assert stage.step(data, stamps)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    arrays = [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]
    grown = [stat for stat in after.filter_traces(arrays).compare_to(before.filter_traces(arrays), "lineno")
             if stat.count_diff > 0]
    assert grown == []


class Continuity:
    """A stream's continuity counters, moved by the test."""

    def __init__(self):
        self.segment, self.samples_left_out, self.windows_left_out = 0, 0, 0

    def __call__(self):
        return (self.segment, self.samples_left_out, self.windows_left_out)


def test_samples_left_out_are_bridged_with_zeros_and_a_reset_waits_for_a_full_span(plan, fields):
    meg, timestamps = meg_hops(160 * HOP, len(fields.meg_channel_names), fields.sfreq_hz, seed=3)
    continuity = Continuity()
    sink = ValuesKept()
    stage = FeedbackStage(plan, [sink], 2 * HOP, continuity=continuity)
    for i in range(0, 60 * HOP, HOP):
        stage.step(meg[i:i + HOP], timestamps[i:i + HOP])
    # Two hops left out (a skipped window): the next hop's estimate is the offline one on the
    # predictions with zeros in their place.
    continuity.samples_left_out += 2 * HOP
    resumed = 62 * HOP
    assert stage.step(meg[resumed:resumed + HOP], timestamps[resumed:resumed + HOP])
    bridged = meg[:resumed + HOP].copy()
    bridged[60 * HOP:resumed] = 0.0
    assert_values_match(plan, sink.calls[-1][0], offline(plan, bridged)[-1:])
    assert (stage.holes_bridged, stage.samples_bridged, stage.resets) == (1, 2 * HOP, 0)
    # A reset of the stream: nothing until a full span of the new segment, then its own estimate.
    continuity.segment += 1
    start = 80 * HOP
    published = [stage.step(meg[i:i + HOP], timestamps[i:i + HOP]) for i in range(start, 160 * HOP, HOP)]
    first = int(np.argmax(published))
    assert first == -(-stage.span // HOP) - 1 and stage.resets == 1
    assert_values_match(plan, sink.calls[-1][0], offline(plan, meg[start:])[-1:])
    # A hole as long as the span, and a NaN window (samples of unknown number): resets too.
    continuity.samples_left_out += stage.span
    assert not stage.step(meg[:HOP], timestamps[:HOP])
    continuity.windows_left_out += 1
    assert not stage.step(meg[:HOP], timestamps[:HOP])
    assert stage.resets == 3


# ----------------------------------------------------------------------------------------------
# Publishers: real LSL and ZeroMQ round trips
# ----------------------------------------------------------------------------------------------
def test_lsl_feedback_outlet_meta_data_and_samples(plan):
    name = f"test-feedback-{uuid.uuid4().hex[:8]}"
    publisher = LSLFeedbackPublisher(name, name, plan, 37.5, "default", meg_stream="brainformer-meg")
    try:
        inlet = open_inlet(name)
        info = inlet.info(10.0)
        assert info.type() == FEEDBACK_STREAM_TYPE and info.channel_count() == len(plan.signals)
        assert info.nominal_srate() == pytest.approx(37.5)
        channel = info.desc().child("channels").child("channel")
        for signal, delay in zip(plan.signals, plan.delays):
            assert channel.child_value("label") == signal.name
            assert channel.child_value("unit") == signal.unit
            assert channel.child_value("measure") == signal.measure
            assert float(channel.child_value("delay_ms")) == pytest.approx(delay.delay_ms, abs=0.05)
            assert channel.child_value("sensors").split(",") == list(signal.sensor_names)
            channel = channel.next_sibling("channel")
        assert info.desc().child("feedback").child_value("meg_stream") == "brainformer-meg"
        values = np.arange(len(plan.signals), dtype=np.float32).reshape(1, -1)
        stamp = np.array([pylsl.local_clock() - 1.0])
        publisher.publish(values, stamp)
        data, stamps = [], []
        deadline = time.monotonic() + 60
        while not stamps and time.monotonic() < deadline:
            data, stamps = inlet.pull_chunk(timeout=0.5)
        np.testing.assert_array_equal(np.asarray(data, dtype=np.float32), values)
        assert stamps[0] == pytest.approx(stamp[0], abs=1e-3)
    finally:
        publisher.close()


def test_zmq_feedback_topic_shares_the_meg_socket(plan, fields):
    address = free_tcp_address()
    meg = ZMQPublisher(address, b"meg", channel_names=list(fields.meg_channel_names),
                       channel_types=list(fields.meg_channel_types), sfreq_hz=float(fields.sfreq_hz), model_name="m")
    topic = ZMQFeedbackTopic(meg, FEEDBACK_TOPIC, plan, 37.5, stream_name="EEG")
    subscriber = zmq.Context.instance().socket(zmq.SUB)
    subscriber.setsockopt(zmq.LINGER, 0)
    subscriber.setsockopt(zmq.SUBSCRIBE, b"feedback")
    subscriber.connect(address)
    try:
        values = np.linspace(0, 1, len(plan.signals), dtype=np.float32).reshape(1, -1)
        received = None
        deadline = time.monotonic() + 60
        while received is None and time.monotonic() < deadline:  # until the subscription is through
            topic.publish(values, np.array([12.5]))
            if subscriber.poll(200):
                received = subscriber.recv_multipart()
        header, data = decode_message(received)
        assert received[0] == b"feedback" and header["kind"] == "feedback"
        np.testing.assert_array_equal(data, values)
        assert header["t0"] == header["t_last"] == 12.5 and header["stream"] == "EEG" and header["model"] == "m"
        assert header["n_channels"] == len(plan.signals) and header["sfreq"] == 37.5
        if header["seq"] % 100 == 0:
            assert header["channels"] == [s.name for s in plan.signals]
        assert topic.messages_sent >= header["seq"] + 1 and topic.messages_dropped == 0
    finally:
        subscriber.close(linger=0)
        meg.close()


# ----------------------------------------------------------------------------------------------
# A live daemon with --feedback
# ----------------------------------------------------------------------------------------------
FEEDBACK_TOML = """
[alpha]
band_hz = [8.0, 12.0]
measure = "envelope"
sensors = ["MEG 2*"]
types = ["mag"]

[beta_power]
band_hz = [15.0, 25.0]
measure = "power"
sensors = ["MEG 04*", "MEG 06*"]
types = ["grad"]

[alpha_phase]
band_hz = [8.0, 12.0]
measure = "phase"
sensors = ["MEG 2111", "MEG 2121", "MEG 2131"]
weights_file = "weights.txt"
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory, model_dir):
    """player → serve --feedback (the test model) → inlets on both outlets, a ZeroMQ subscriber
    on each topic (connected before the daemon binds: they see every message)."""
    directory = tmp_path_factory.mktemp("feedback")
    (directory / "weights.txt").write_text("1.0\n-0.5\n0.25\n")
    (directory / "feedback.toml").write_text(FEEDBACK_TOML)
    (directory / "serve.toml").write_text("torch_threads = 1\nmax_input_age_s = inf\nwait_s = 60.0\n")
    eeg, out, address = f"test-eeg-{uuid.uuid4().hex[:8]}", f"meg-{uuid.uuid4().hex[:8]}", free_tcp_address()
    subscribers = {}
    for topic in (b"meg", b"feedback"):
        socket = zmq.Context.instance().socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SUBSCRIBE, topic)
        socket.connect(address)
        subscribers[topic] = socket
    player = Player(eeg, f"test-{uuid.uuid4()}")
    from tests.rt.conftest import Serve

    serve = Serve(directory, "--stream", eeg, "--model", str(model_dir), "--lsl-name", out, "--zmq", address,
                  "--feedback", str(directory / "feedback.toml"), "--config", str(directory / "serve.toml"))
    try:
        yield {"serve": serve, "out": out, "address": address, "subscribers": subscribers, "directory": directory,
               "model_dir": model_dir}
    finally:
        serve.close()
        player.stop()
        for socket in subscribers.values():
            socket.close(linger=0)


def _pull(inlet, data: list, stamps: list) -> None:
    chunk, times = inlet.pull_chunk(timeout=0.2, max_samples=100000)
    if times:
        data.append(np.asarray(chunk, dtype=np.float32))
        stamps.append(np.asarray(times))


def test_the_daemon_publishes_each_signal_for_the_eeg_instants_of_its_meg(live):
    """Every feedback sample is stamped with the newest EEG instant of a published MEG hop, and
    its values are the stage's on the MEG the daemon published before it."""
    live["serve"].wait_for_output("stop with Ctrl-C", timeout_s=180)
    plan = plan_feedback(read_feedback_file(live["directory"] / "feedback.toml"), load_fields(live["model_dir"]))
    meg_inlet, feedback_inlet = open_inlet(live["out"]), open_inlet(f"{live['out']}-feedback")
    info = feedback_inlet.info(10.0)
    assert info.type() == FEEDBACK_STREAM_TYPE
    channel = info.desc().child("channels").child("channel")
    labels = []
    while not channel.empty():
        labels.append((channel.child_value("label"), channel.child_value("unit"), float(channel.child_value("delay_ms"))))
        channel = channel.next_sibling("channel")
    assert labels == [(s.name, s.unit, pytest.approx(d.delay_ms, abs=0.05)) for s, d in zip(plan.signals, plan.delays)]
    span = FeedbackStage(plan, [], HOP).span
    period = 1.0 / float(load_fields(live["model_dir"]).sfreq_hz)
    meg, meg_stamps, feedback, feedback_stamps = [], [], [], []
    checked = 0
    deadline = time.monotonic() + 150  # a hang guard only: the test waits for counts
    while checked < 20:
        assert time.monotonic() < deadline, f"only {checked} feedback samples with a full MEG history"
        _pull(meg_inlet, meg, meg_stamps)
        _pull(feedback_inlet, feedback, feedback_stamps)
        if not feedback_stamps or not meg_stamps:
            continue
        all_meg, all_meg_stamps = np.concatenate(meg), np.concatenate(meg_stamps)
        all_feedback, all_feedback_stamps = np.concatenate(feedback), np.concatenate(feedback_stamps)
        checked = 0
        for values, stamp in zip(all_feedback, all_feedback_stamps):
            if stamp > all_meg_stamps[-1]:
                continue  # its MEG hop not pulled yet
            index = int(np.searchsorted(all_meg_stamps, stamp))
            assert all_meg_stamps[index] == stamp, "a feedback sample not at an EEG instant of the MEG stream"
            if index + 1 < span:
                continue
            history = slice(index + 1 - span, index + 1)
            if np.any(np.diff(all_meg_stamps[history]) > 1.5 * period):
                continue  # a hole in the MEG: bridged by the stage, not reproduced here
            stage = FeedbackStage(plan, [], span)
            stage.step(all_meg[history], all_meg_stamps[history])
            assert_values_match(plan, values[None, :], stage.values)
            checked += 1


def test_zmq_topics_keep_meg_and_feedback_apart(live):
    live["serve"].wait_for_output("stop with Ctrl-C", timeout_s=180)
    received = {b"meg": [], b"feedback": []}
    deadline = time.monotonic() + 120
    while len(received[b"feedback"]) < 5 or not received[b"meg"]:
        assert time.monotonic() < deadline, {k: len(v) for k, v in received.items()}
        live["subscribers"][b"feedback"].poll(50)
        for topic, socket in live["subscribers"].items():
            # Only what is waiting: the MEG arrives more often than a poll's timeout.
            while socket.poll(0):
                received[topic].append(socket.recv_multipart())
    for topic, messages in received.items():
        assert all(frames[0] == topic for frames in messages)
    first, _ = decode_message(received[b"feedback"][0])
    assert first["seq"] == 0 and first["kind"] == "feedback"
    assert first["channels"] == ["alpha", "beta_power", "alpha_phase"]
    assert first["units"] == ["T", "(T/m)^2", "rad"] and len(first["delays_ms"]) == 3
    seqs = [decode_message(frames)[0]["seq"] for frames in received[b"feedback"]]
    assert seqs == list(range(len(seqs)))


def test_listen_shows_the_feedback_signals(live, tmp_path):
    live["serve"].wait_for_output("stop with Ctrl-C", timeout_s=180)
    summary_path = tmp_path / "listen.json"
    result = run_cli("listen", "--lsl", f"{live['out']}-feedback", "--duration", "1.5", "--json", str(summary_path))
    assert result.exit_code == 0, result.output
    summary = json.loads(summary_path.read_text())
    assert [c["name"] for c in summary["feedback"]] == ["alpha", "beta_power", "alpha_phase"]
    assert summary["feedback"][2]["unit"] == "rad" and summary["feedback"][0]["band_hz"] == "8–12"
    assert all(c["delay_ms"] is not None for c in summary["feedback"])
    for name in ("alpha", "beta_power", "alpha_phase"):
        assert f"last {name} (" in result.output
    result = run_cli("listen", "--zmq", live["address"], "--topic", "feedback", "--duration", "1.5", "--json",
                     str(summary_path))
    assert result.exit_code == 0, result.output
    assert json.loads(summary_path.read_text())["n_channels"] == 3


# ----------------------------------------------------------------------------------------------
# Bad feedback configs exit 2 naming the key
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, needle", [
    ('[alpha]\nband_hz = [12, 8]\nmeasure = "envelope"\ntypes = ["mag"]\n', "alpha.band_hz = [12.0, 8.0]"),
    ('[alpha]\nband_hz = [8, 12]\nmeasure = "envelope"\nsensors = ["MEG 9*"]\n', "alpha.sensors: 'MEG 9*' matches no"),
    ('[alpha]\nband_hz = [0.5, 3]\nmeasure = "envelope"\ntypes = ["mag"]\n', "alpha.band_hz = [0.5, 3.0] reaches outside"),
    ('[alpha]\nband_hz = [8, 12]\nmeasure = "phase"\ntypes = ["mag"]\n', "alpha: a phase is measured on one signal"),
])
def test_a_bad_feedback_config_exits_2_naming_the_key_before_waiting_for_the_stream(tmp_path, model_dir, text, needle):
    path = tmp_path / "feedback.toml"
    path.write_text(text)
    result = run_cli("serve", "--stream", f"absent-{uuid.uuid4().hex[:8]}", "--model", str(model_dir), "--no-zmq",
                     "--feedback", str(path), "--wait", "600", "--device", "cpu")
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and needle in error_lines[0], result.stderr
    assert "Traceback" not in result.output
