"""What users of ``serve`` rely on, end to end: real ``serve`` processes, real players
(``brainformer-rt simulate``), real LSL, real ZeroMQ sockets, real files.

One daemon serves three streams for most checks (the machine has 2 shared cores), with
``--hop 8`` where the model's hop is 16, ``--channel-map``, ``--lsl-config`` naming an LSL
session of its own (its players play in that session only) and ``--max-missing 0``:

- ``mapped``: the recording's EEG under other labels, matched to the model's through the channel
  map; its messages show the hop; a subscriber that stops reading loses messages and then gets
  new ones, while the daemon goes on serving;
- ``loud``: numbers in µV declared as volts (the amplitude warning), one channel flat (its
  re-plan is refused: no electrode may be missing), served on all the same;
- ``nan``: a short recording with NaN samples in one channel, looped: the preprocessing refuses
  the chunk and the stream is reset, then publishes again.

And, in this process: streams whose pull fails (their source lost, liblsl's recovery off) are
given up one by one while the others go on; when every one failed, ``serve`` exits 1.

Every check waits on events in the daemon's JSON log and on messages received (with a hang
timeout only), never on the clock.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import mne
import numpy as np
import pylsl
import pytest
import torch
import zmq

from brainformer.configuration_brainformer import BrainformerConfig
from brainformer.modeling_brainformer import BrainformerForMEGPrediction
from brainformer_rt.serving.publishers.zmq import ZMQPublisher, decode_message
from brainformer_rt.tools._proc import free_tcp_address
from tests.rt.conftest import HOP, WINDOW, Player, Serve, json_events, run_cli

pytestmark = pytest.mark.timeout(360)

#: The hop ``serve --hop`` is given: not the model's.
SERVED_HOP = 8
#: The recording's rate (the model's).
SFREQ_HZ = 600.614990234375
#: The channel of ``loud`` that goes flat, and the channel of ``nan`` that holds NaN.
FLAT_CHANNEL, NAN_CHANNEL = "EEG 021", "EEG 005"
#: ``nan`` plays this much of the recording in a loop, with NaN in NAN_CHANNEL over NAN_SPAN_S.
NAN_LOOP_S, NAN_SPAN_S = 3.0, (1.5, 1.55)
#: Hang timeout of every wait: far above what anything takes on a busy machine.
HANG_S = 150.0
#: Labels of ``mapped``: the model's ``EEG 001`` … ``EEG 060`` are ``amp01`` … ``amp60`` there.
MAPPED_LABEL = "amp{:02d}"


# ----------------------------------------------------------------------------------------------
# The files: model, sources, channel map, LSL configuration
# ----------------------------------------------------------------------------------------------
def save_model_with_positions(path: Path, eeg: mne.io.BaseRaw) -> Path:
    """A real, untrained Brainformer for the recording's EEG channels (in its order, with their
    electrode positions, so a missing electrode could be interpolated) → the 306 MEG channels."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    names = list(eeg.ch_names)
    config = BrainformerConfig(
        eeg_channel_names=names, eeg_positions_m=[[float(v) for v in ch["loc"][:3]] for ch in eeg.info["chs"]],
        window_samples=WINDOW, hop_samples=HOP, patch_len=16, d_model=16, n_heads=2, d_ff=32, router_dim=4,
        eeg_mean=list(rng.normal(0.0, 1e-6, len(names))), eeg_std=list(rng.uniform(5e-6, 2e-5, len(names))),
        meg_mean=list(rng.normal(0.0, 1e-13, 306)), meg_std=list(rng.uniform(1e-12, 1e-11, 306)),
    )
    BrainformerForMEGPrediction(config).eval().save_pretrained(path)
    return path


def write_sources(folder: Path, eeg: mne.io.BaseRaw) -> dict:
    """The recordings the three players play, and the channel map of ``mapped``."""
    files = {"mapped": folder / "mapped_raw.fif", "loud": folder / "loud_raw.fif", "nan": folder / "nan_raw.fif",
             "map": folder / "channel_map.toml"}
    labels = {name: MAPPED_LABEL.format(i + 1) for i, name in enumerate(eeg.ch_names)}
    eeg.copy().rename_channels(labels).save(files["mapped"], verbose="error")
    files["map"].write_text("".join(f'"{label}" = "{name}"\n' for name, label in labels.items()))
    loud = eeg.copy()
    loud.apply_function(lambda x: x * 1e6)  # µV numbers; the player declares volts
    loud.save(files["loud"], verbose="error")
    nan = eeg.copy().crop(0.0, NAN_LOOP_S)
    start, stop = (int(round(s * nan.info["sfreq"])) for s in NAN_SPAN_S)
    nan._data[nan.ch_names.index(NAN_CHANNEL), start:stop] = np.nan
    nan.save(files["nan"], verbose="error")
    return files


def session_lsl_config(path: Path) -> Path:
    """This machine's loopback liblsl configuration with a session of its own: streams in it are
    seen only by processes using this file."""
    text, n = re.subn(r"(?m)^\s*SessionID\s*=.*$", f"SessionID = brainformer_test_{uuid.uuid4().hex[:8]}",
                      Path(os.environ["LSLAPICFG"]).read_text())
    assert n == 1, "the loopback liblsl configuration names no SessionID"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------
# The shared daemon, its subscribers and its log
# ----------------------------------------------------------------------------------------------
class Drainer:
    """A ZeroMQ subscriber of every topic, drained by a thread as fast as messages come (no
    limit on its queue): the headers it received, by stream, in order."""

    def __init__(self, address: str) -> None:
        self._socket = zmq.Context.instance().socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, 0)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self._socket.connect(address)
        self._lock = threading.Lock()
        self._headers: dict = defaultdict(list)
        self.non_finite = 0  # messages whose payload held NaN/Inf
        self.malformed: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drainer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._socket.poll(50):
                    continue
                while True:
                    try:
                        frames = self._socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        header, payload = decode_message(frames)
                    except ValueError as error:
                        self.malformed.append(str(error))
                        continue
                    if not np.isfinite(payload).all():
                        self.non_finite += 1
                    kept = {key: header[key] for key in ("seq", "t0", "t_last", "n_samples", "sfreq", "stream")}
                    kept["rows"] = payload.shape[0]
                    with self._lock:
                        self._headers[header["stream"]].append(kept)
        finally:
            self._socket.close(linger=0)

    def headers(self, stream: str) -> list:
        with self._lock:
            return list(self._headers[stream])

    def total(self) -> int:
        with self._lock:
            return sum(len(items) for items in self._headers.values())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10.0)


class SharedDaemon:
    """The ``serve`` process of this module and what it was given; :meth:`stop` ends it once."""

    def __init__(self, serve: Serve, names: dict, drainer: Drainer, slow: zmq.Socket, stats_path: Path) -> None:
        self.serve = serve
        self.names = names
        self.drainer = drainer
        self.slow = slow  # connected before the daemon bound; read only by its own test
        self.stats_path = stats_path
        self._stopped = None

    def events(self, event: str, kind: str | None = None) -> list:
        stream = None if kind is None else self.names[kind]
        return [e for e in json_events(self.serve.stderr)
                if e.get("event") == event and (stream is None or e.get("stream") == stream)]

    def wait_until(self, condition, what: str):
        """``condition()``'s first truthy value, polled until it comes (hang timeout only)."""
        deadline = time.monotonic() + HANG_S
        while True:
            value = condition()
            if value:
                return value
            assert self.serve.process.poll() is None, \
                f"serve exited with {self.serve.process.returncode} before {what}: {self.serve.stderr[-4000:]}"
            assert time.monotonic() < deadline, f"no {what} after {HANG_S:g} s: {self.serve.stderr[-4000:]}"
            time.sleep(0.05)

    def wait_event(self, event: str, kind: str | None = None) -> dict:
        return self.wait_until(lambda: self.events(event, kind)[:1], f"{event!r} event")[0]

    def stop(self) -> tuple:
        """SIGTERM; ``(exit code, statistics)``, the same on every call."""
        if self._stopped is None:
            self.serve.process.send_signal(signal.SIGTERM)
            code = self.serve.wait(60.0)
            stats = json.loads(self.stats_path.read_text()) if self.stats_path.exists() else None
            self._stopped = (code, stats)
        return self._stopped


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, sample_fif):
    tmp = tmp_path_factory.mktemp("behaviours")
    eeg = mne.io.read_raw_fif(sample_fif, preload=True, verbose="error").pick("eeg", exclude=())
    lsl_config = session_lsl_config(tmp / "session_lsl_api.cfg")
    model = save_model_with_positions(tmp / "model", eeg)
    files = write_sources(tmp, eeg)
    tag = uuid.uuid4().hex[:8]
    names = {kind: f"test-{kind}-{tag}" for kind in ("mapped", "loud", "nan")}
    extra = {"mapped": (), "loud": ("--flat", f"{FLAT_CHANNEL}@0"), "nan": ()}  # flat throughout
    config = tmp / "serve.toml"
    config.write_text(f"torch_threads = 1\nwait_s = {HANG_S}\nmax_input_age_s = inf\nstats_interval_s = 0.5\n")
    zmq_address, stats_path = free_tcp_address(), tmp / "stats.json"
    drainer = Drainer(zmq_address)
    slow = zmq.Context.instance().socket(zmq.SUB)
    slow.setsockopt(zmq.LINGER, 0)
    slow.setsockopt(zmq.RCVHWM, 1)  # hold as little as ZeroMQ and the kernel let it
    slow.setsockopt(zmq.RCVBUF, 4096)
    slow.setsockopt(zmq.SUBSCRIBE, b"")
    slow.connect(zmq_address)
    players = [Player(names[kind], f"test-{uuid.uuid4()}", "--file", str(files[kind]), "--chunk", str(SERVED_HOP),
                      "--lsl-config", str(lsl_config), *extra[kind]) for kind in names]
    serve = None
    try:
        serve = Serve(tmp, *(arg for name in names.values() for arg in ("--stream", name)), "--model", str(model),
                      "--zmq", zmq_address, "--lsl-name", "", "--hop", str(SERVED_HOP), "--config", str(config),
                      "--stats-json", str(stats_path), "--log-format", "json", "--channel-map", str(files["map"]),
                      "--lsl-config", str(lsl_config), "--max-missing", "0")
        shared = SharedDaemon(serve, names, drainer, slow, stats_path)
        yield shared
        shared.stop()
    finally:
        if serve is not None:
            serve.close()
        drainer.close()
        slow.close(linger=0)
        for player in players:
            player.stop()


# ----------------------------------------------------------------------------------------------
# The shared daemon's checks
# ----------------------------------------------------------------------------------------------
def test_lsl_config_puts_the_daemon_in_the_session_of_its_sources(daemon):
    """The sources play in a session only ``--lsl-config``'s file names: the daemon finds and
    serves every one, where this process (the default session) sees none of them."""
    for kind, name in daemon.names.items():
        found = daemon.wait_event("stream_found", kind)
        assert found["lsl_name"] == name
    assert pylsl.resolve_byprop("name", daemon.names["mapped"], 1, 1.5) == []
    daemon.wait_until(lambda: all(daemon.drainer.headers(name) for name in daemon.names.values()),
                      "message from every stream")


def test_channel_map_matches_other_labels_to_the_models_channels(daemon):
    """``mapped`` has none of the model's labels: through ``--channel-map`` every one of its
    channels is read as the model's, nothing interpolated, nothing ignored."""
    plan = daemon.wait_event("adaptation_plan", "mapped")
    assert plan["n_stream_channels"] == 60 and plan["n_used"] == 60 and plan["channels_read"] == 60
    assert plan["interpolated"] == [] and plan["ignored"] == [] and plan["interpolation_mode"] is None
    daemon.wait_until(lambda: daemon.drainer.headers(daemon.names["mapped"]), "prediction of the mapped stream")


def test_hop_other_than_the_models_sets_the_published_messages(daemon):
    """``--hop 8`` (the model's is 16): every message holds at least a hop and at most the two
    hops the engine predicts, of consecutive input samples, never overlapping the previous one;
    a window served on time publishes exactly one hop, right after the previous one."""
    serving = daemon.wait_event("serving")
    assert serving["hop_samples"] == SERVED_HOP != HOP
    stream = daemon.names["mapped"]

    def one_hop_right_after_the_last() -> bool:
        headers = daemon.drainer.headers(stream)
        return any(b["seq"] == a["seq"] + 1 and b["n_samples"] == SERVED_HOP
                   and round((b["t0"] - a["t_last"]) * SFREQ_HZ) == 1 for a, b in zip(headers, headers[1:]))

    daemon.wait_until(one_hop_right_after_the_last, f"message of {SERVED_HOP} samples right after the one before")
    headers = daemon.drainer.headers(stream)
    n = np.array([h["n_samples"] for h in headers])
    assert (n >= SERVED_HOP).all() and (n <= 2 * SERVED_HOP).all(), np.unique(n)
    assert all(h["rows"] == h["n_samples"] and h["sfreq"] == SFREQ_HZ for h in headers)
    t0, t_last = np.array([h["t0"] for h in headers]), np.array([h["t_last"] for h in headers])
    np.testing.assert_allclose((t_last - t0) * SFREQ_HZ, n - 1, atol=1e-3)  # consecutive input samples
    consecutive = np.diff([h["seq"] for h in headers]) == 1
    assert (np.rint((t0[1:] - t_last[:-1]) * SFREQ_HZ)[consecutive] >= 1).all()  # no sample twice


def test_amplitudes_implausible_for_the_declared_unit_are_warned_about(daemon):
    warning = daemon.wait_event("amplitude_warning", "loud")
    assert "implausible for the unit V" in warning["warning"] and "look like µV" in warning["warning"]


def test_a_replan_that_cannot_be_made_is_reported_and_the_stream_served_on(daemon):
    """``loud``'s flat channel cannot be left out (``--max-missing 0``): the refusal names the
    channel and the reason, and the stream goes on being served with the channel as it is."""
    flat = daemon.wait_until(lambda: [e for e in daemon.events("flat_channels", "loud") if e["channels"]],
                             "flat channel reported")[0]
    assert flat["channels"] == [FLAT_CHANNEL]
    refused = daemon.wait_event("adaptation_replan_refused", "loud")
    assert refused["channels"] == [FLAT_CHANNEL] and refused["replans_refused"] >= 1
    assert "1 of the model's 60 EEG channels are missing or bad, more than 0 %" in refused["error"]
    stream = daemon.names["loud"]
    served_before = len(daemon.drainer.headers(stream))
    daemon.wait_until(lambda: len(daemon.drainer.headers(stream)) >= served_before + 20,
                      "20 more predictions of the stream after the refusal")
    assert daemon.events("adaptation_replanned", "loud") == []


def test_nan_input_is_refused_by_the_preprocessing_and_the_stream_reset_then_served_again(daemon):
    """NaN in one channel: the chunk is dropped and the stream reset (the log names the channel);
    it publishes again once a finite window is complete, and nothing it published is NaN."""
    nan = daemon.wait_event("nan_input", "nan")
    assert nan["channels"] == [NAN_CHANNEL] and nan["nan_chunks"] >= 1
    resumed = daemon.wait_until(lambda: [e for e in daemon.events("publishing_resumed", "nan")
                                         if e["time"] >= nan["time"]], "publishing resumed after the NaN input")
    assert resumed[0]["nan_chunks"] >= 1 and resumed[0]["outage_s"] > 0
    assert daemon.drainer.non_finite == 0 and daemon.drainer.malformed == []


def stall_messages(message_bytes: int) -> int:
    """Messages a subscriber that reads nothing can be holding at most: the publisher's queue
    (its high-water mark) and what the kernel can buffer on the connection (the largest send
    buffer TCP may grow to, a small receive buffer, ZeroMQ's batches), with a margin."""
    import inspect

    send_hwm = inspect.signature(ZMQPublisher).parameters["send_hwm"].default
    kernel_bytes = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2]) + 256 * 1024
    return int(1.5 * (send_hwm + kernel_bytes / message_bytes)) + 1


def test_a_subscriber_that_stops_reading_loses_messages_and_then_gets_new_ones(daemon):
    """The slow subscriber has not read since it connected. Once the daemon has published more
    than it could be holding (the draining subscriber received that many meanwhile: the daemon
    did not wait for it), it finds a jump in ``seq`` (ZeroMQ dropped for it alone), then newer
    messages. PUB counts no drops itself: they are seen on the subscriber's side."""
    smallest = SERVED_HOP * 306 * 4  # one hop of float32 MEG
    bound = stall_messages(smallest)
    daemon.wait_until(lambda: daemon.drainer.total() >= bound, f"{bound} messages to the draining subscriber")
    newest = {name: daemon.drainer.headers(name)[-1]["seq"] for name in daemon.names.values()}
    seqs: dict = defaultdict(list)
    deadline = time.monotonic() + HANG_S
    while not all(seqs[name] and seqs[name][-1] >= seq for name, seq in newest.items()):
        assert time.monotonic() < deadline, ({k: v[-3:] for k, v in seqs.items()}, newest)
        if daemon.slow.poll(100):
            header, _ = decode_message(daemon.slow.recv_multipart())
            seqs[header["stream"]].append(header["seq"])
    for name, received in seqs.items():
        assert (np.diff(received) > 0).all(), name  # in order, none twice
    jumps = {name: int(np.count_nonzero(np.diff(received) > 1)) for name, received in seqs.items()}
    missed = sum(int((np.diff(received) - 1).clip(min=0).sum()) for received in seqs.values())
    print(f"\nslow subscriber: {sum(map(len, seqs.values()))} messages received, {missed} missed in "
          f"{sum(jumps.values())} jumps (draining subscriber: {daemon.drainer.total()} messages)")
    assert sum(jumps.values()) >= 1 and missed > 0
    # it held the oldest messages (its queue), then got new ones: the stall cost it, not the others
    assert all(received[0] < newest[name] for name, received in seqs.items())


def test_the_daemon_stops_cleanly_and_its_counters_agree(daemon):
    """SIGTERM: exit 0; the statistics agree with what the other checks saw."""
    for kind in daemon.names:
        daemon.wait_until(lambda kind=kind: len(daemon.drainer.headers(daemon.names[kind])) >= 10,
                          f"10 predictions of {kind}")
    code, stats = daemon.stop()
    assert code == 0, daemon.serve.stderr[-4000:]
    assert stats["info"]["hop_samples"] == SERVED_HOP
    streams = {kind: stats["streams"][name] for kind, name in daemon.names.items()}
    for kind, counters in streams.items():
        assert counters["windows_served"] > 0 and counters["gaps"] == 0, kind
        # Each served window publishes a hop to two hops (one may still have been waiting at the stop).
        published, served = counters["samples_published"], counters["windows_served"]
        if kind != "nan":
            assert SERVED_HOP * (served - 1) <= published <= 2 * SERVED_HOP * served, (kind, published, served)
    assert streams["mapped"]["replans"] == streams["mapped"]["replans_refused"] == 0
    assert streams["loud"]["replans"] == 0 and streams["loud"]["replans_refused"] >= 1
    assert streams["loud"]["flat_windows"] > 0 and stats["gauges"][daemon.names["loud"]]["bad_channels"] == 0
    assert streams["nan"]["nan_chunks"] >= 1 and streams["nan"]["nan_windows"] >= 1
    assert stats["info"]["streams"][daemon.names["mapped"]]["adaptation"]["n_used"] == 60


# ----------------------------------------------------------------------------------------------
# Streams that fail
# ----------------------------------------------------------------------------------------------
class Records(logging.Handler):
    """Every log record of this process, in order (the in-process daemon's events as they happen)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock_records = threading.Lock()
        self._records: list = []

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_records:
            self._records.append(record)

    def find(self, predicate) -> list:
        with self._lock_records:
            return [(i, r) for i, r in enumerate(self._records) if predicate(r)]


def test_a_failing_stream_leaves_the_others_served_and_every_stream_failing_exits_1(model_dir, tmp_path,
                                                                                     monkeypatch):
    """A stream fails when its pull raises: its pull thread gives it up, the others go on; when
    every stream has failed, ``serve`` exits 1 naming each one and why.

    ``serve``'s inlets reconnect to a restarted source (liblsl's recovery), so a source that
    vanishes is waited for and never fails a stream. With recovery off, liblsl reports the lost
    source at the next pull: the real error such a pull raises. So this runs ``serve`` in this
    process, its inlets opened with recovery off, and kills the real players one after the other.
    """
    import brainformer_rt.serving.inlet as inlet_module

    class InletWithoutRecovery(inlet_module.EEGInlet):
        def __init__(self, *args, **kwargs):
            kwargs["recover"] = False
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(inlet_module, "EEGInlet", InletWithoutRecovery)
    tag = uuid.uuid4().hex[:8]
    first, second = names = [f"test-fail-{i}-{tag}" for i in (1, 2)]
    players = {name: Player(name, f"test-{uuid.uuid4()}", "--chunk", str(HOP)) for name in names}
    config = tmp_path / "serve.toml"
    config.write_text(f"wait_s = {HANG_S}\nmax_input_age_s = inf\nstats_interval_s = 0.1\n")
    zmq_address = free_tcp_address()
    records = Records()
    outcome: dict = {}

    def failed(name):
        return records.find(lambda r: "pull thread stopped" in r.getMessage() and getattr(r, "stream", None) == name)

    def progress(name, after: int) -> list:
        return [r.windows_served for i, r in records.find(
            lambda r: getattr(r, "event", None) == "progress" and getattr(r, "stream", None) == name) if i > after]

    def drive() -> None:
        """Kill the players one by one, each when the daemon has shown what the test waits for."""
        subscriber = zmq.Context.instance().socket(zmq.SUB)
        subscriber.setsockopt(zmq.LINGER, 0)
        subscriber.setsockopt(zmq.SUBSCRIBE, b"")
        subscriber.connect(zmq_address)
        received: dict = defaultdict(int)

        def receive_until(condition, what: str) -> None:
            deadline = time.monotonic() + HANG_S
            while not condition():
                if time.monotonic() > deadline:
                    raise AssertionError(f"no {what} after {HANG_S:g} s")
                while subscriber.poll(20):
                    header, _ = decode_message(subscriber.recv_multipart())
                    received[header["stream"]] += 1

        try:
            receive_until(lambda: received[first] >= 5 and received[second] >= 5, "predictions of both streams")
            players[first].kill()
            receive_until(lambda: failed(first), f"failure of {first}")
            index = failed(first)[0][0]
            outcome["first_failed_at"] = index
            served = received[second]
            receive_until(lambda: received[second] >= served + 20 and len(set(progress(second, index))) >= 2,
                          f"predictions of {second} after {first} failed")
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            outcome["error"] = error
        finally:
            subscriber.close(linger=0)
            for player in players.values():  # the last one: every stream has failed now
                player.kill()

    logging.getLogger().addHandler(records)
    thread = threading.Thread(target=drive, name="drive", daemon=True)
    thread.start()
    try:
        result = run_cli("serve", "--stream", first, "--stream", second, "--model", str(model_dir), "--zmq",
                         zmq_address, "--lsl-name", "", "--config", str(config), "--log-format", "json",
                         "--device", "cpu", "--engine", "eager")
    finally:
        thread.join(HANG_S)
        logging.getLogger().removeHandler(records)
        for player in players.values():
            player.stop()
    if "error" in outcome:
        raise outcome["error"]
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "every stream failed" in errors[0], result.stderr[-3000:]
    assert f"{first}: LSL stream {first!r} was lost" in errors[0]
    assert f"{second}: LSL stream {second!r} was lost" in errors[0]
    index = outcome["first_failed_at"]
    assert failed(second)[0][0] > index  # one after the other
    # After the first failed, its windows stopped; the second's went on.
    assert len(set(progress(first, index))) == 1
    assert len(set(progress(second, index))) >= 2
    events = json_events(result.stderr)
    assert [e["exit_code"] for e in events if e["event"] == "error"] == [1]
