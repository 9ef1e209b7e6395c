"""Security of the serve daemon: what it binds, who may subscribe, what it refuses to load.

- every socket the daemon opens itself binds 127.0.0.1 unless told otherwise; other addresses
  are warned about (liblsl binds its own data ports on every interface: checked and documented);
- ZeroMQ CURVE: an authorized subscriber receives, an unknown key or a plain subscriber does not;
- model directories that are missing, corrupt, of another model type, or pickled are refused
  with one line and exit code 2, and no pickle is ever opened;
- settings are validated before use, naming the key.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest
import zmq
import zmq.auth

from brainformer_rt.tools._proc import free_port, free_tcp_address
from brainformer.settings import DEFAULT_METRICS_HOST, ServeSettings, SettingsError, build_serve_settings
from brainformer_rt.serving.metrics import ServeMetrics
from brainformer_rt.serving.prometheus import MetricsExporter
from brainformer_rt.serving.publishers.zmq import ZMQPublisher, decode_message, load_curve_keys
from tests.rt.conftest import Player, Serve, json_events, run_cli, save_model, wait_for_event

pytestmark = pytest.mark.timeout(120)

NAMES = ["MEG 0111", "MEG 0112", "MEG 0113"]
TYPES = ["grad", "grad", "mag"]
SFREQ_HZ = 600.614990234375
#: liblsl's data ports: BasePort 16572 + PortRange 32 (its defaults; the loopback config keeps them).
LIBLSL_PORTS = range(16572, 16572 + 32)


# ----------------------------------------------------------------------------------------------
# ZeroMQ CURVE
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def curve_keys(tmp_path) -> dict[str, Path]:
    """A key directory in the documented layout, plus the key pairs of two subscribers (one
    authorized, one not)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    zmq.auth.create_certificates(keys, "server")
    os.chmod(keys / "server.key_secret", 0o600)
    clients = tmp_path / "clients"
    clients.mkdir()
    zmq.auth.create_certificates(clients, "lab-pc")
    zmq.auth.create_certificates(clients, "stranger")
    (keys / "authorized").mkdir()
    (keys / "authorized" / "lab-pc.key").write_bytes((clients / "lab-pc.key").read_bytes())
    return {"dir": keys, "server": keys / "server.key", "lab-pc": clients / "lab-pc.key_secret",
            "stranger": clients / "stranger.key_secret"}


def curve_subscriber(address: str, client_secret: Path | None, server_public: Path | None) -> zmq.Socket:
    """A SUB socket; with CURVE keys when ``client_secret`` is given."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    if client_secret is not None:
        public, secret = zmq.auth.load_certificate(client_secret)
        sub.curve_secretkey, sub.curve_publickey = secret, public
        sub.curve_serverkey = zmq.auth.load_certificate(server_public)[0]
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(address)
    return sub


def drain(sockets: dict[str, zmq.Socket], received: dict[str, list], timeout_ms: int = 10) -> None:
    for who, sub in sockets.items():
        while sub.poll(timeout_ms):
            received[who].append(sub.recv_multipart())


def test_curve_only_authorized_subscribers_receive(curve_keys):
    publisher = ZMQPublisher("tcp://127.0.0.1:*", channel_names=NAMES, channel_types=TYPES, sfreq_hz=SFREQ_HZ,
                             curve_keys_dir=curve_keys["dir"])
    subs = {
        "authorized": curve_subscriber(publisher.address, curve_keys["lab-pc"], curve_keys["server"]),
        "unknown key": curve_subscriber(publisher.address, curve_keys["stranger"], curve_keys["server"]),
        "plain": curve_subscriber(publisher.address, None, None),
    }
    received = {who: [] for who in subs}
    sent = np.arange(2 * len(NAMES), dtype=np.float32).reshape(2, len(NAMES))
    try:
        assert publisher.curve
        deadline = time.monotonic() + 10.0
        while not received["authorized"]:  # PUB drops until the subscription arrived
            assert time.monotonic() < deadline, "the authorized subscriber received nothing"
            publisher.publish(sent, np.array([1.0, 2.0]))
            drain(subs, received)
        for _ in range(50):  # the others had as long, and get 0.5 s more
            publisher.publish(sent, np.array([1.0, 2.0]))
            drain(subs, received)
    finally:
        for sub in subs.values():
            sub.close(linger=0)
        publisher.close()
    header, data = decode_message(received["authorized"][-1])
    np.testing.assert_array_equal(data, sent)
    assert received["unknown key"] == [] and received["plain"] == []


def test_listen_with_curve_keys_receives_only_with_an_authorized_key(curve_keys, tmp_path):
    """``listen --curve-server-key --curve-client-key``: the reference client of a CURVE daemon."""
    publisher = ZMQPublisher("tcp://127.0.0.1:*", channel_names=NAMES, channel_types=TYPES, sfreq_hz=SFREQ_HZ,
                             curve_keys_dir=curve_keys["dir"])
    stop = threading.Event()

    def publish():
        sent = np.zeros((2, len(NAMES)), dtype=np.float32)
        while not stop.is_set():
            publisher.publish(sent, np.array([1.0, 2.0]))
            time.sleep(0.01)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    summaries = {}
    try:
        for who in ("lab-pc", "stranger"):
            out = tmp_path / f"{who}.json"
            result = run_cli("listen", "--zmq", publisher.address, "--curve-server-key", str(curve_keys["server"]),
                             "--curve-client-key", str(curve_keys[who]), "--duration", "1.5", "--json", str(out))
            assert result.exit_code == 0, result.output
            summaries[who] = json.loads(out.read_text())
    finally:
        stop.set()
        thread.join(5.0)
        publisher.close()
    assert summaries["lab-pc"]["messages"] > 10 and summaries["lab-pc"]["n_channels"] == len(NAMES)
    assert summaries["stranger"]["messages"] == 0


@pytest.mark.parametrize("flags, message, named", [
    (["--curve-client-key", "{lab-pc}"], "CURVE needs both the publisher's public key", None),
    (["--curve-server-key", "{server}", "--curve-client-key", "{server}"], "has no secret key", "server"),
    (["--curve-server-key", "{missing}", "--curve-client-key", "{lab-pc}"], "cannot be read as a ZeroMQ certificate",
     "missing"),
])
def test_listen_curve_key_problems_exit_2_naming_the_file(curve_keys, tmp_path, flags, message, named):
    paths = {"lab-pc": str(curve_keys["lab-pc"]), "server": str(curve_keys["server"]),
             "missing": str(tmp_path / "nowhere.key")}
    result = run_cli("listen", "--zmq", "tcp://127.0.0.1:5599", *[f.format(**paths) for f in flags], "--duration", "0.5")
    assert result.exit_code == 2 and message in result.output, result.output
    if named is not None:
        assert paths[named] in result.output.replace("\n", ""), result.output


def test_curve_key_directory_problems_name_the_file(curve_keys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"server\.key_secret is missing.*create_certificates"):
        load_curve_keys(empty)
    no_clients = tmp_path / "no-clients"
    no_clients.mkdir()
    zmq.auth.create_certificates(no_clients, "server")
    with pytest.raises(ValueError, match=r"no subscriber public keys in .*authorized"):
        load_curve_keys(no_clients)
    (curve_keys["dir"] / "authorized" / "broken.key").write_text("not a key\n")
    with pytest.raises(ValueError, match=r"broken\.key is not a readable public key file"):
        load_curve_keys(curve_keys["dir"])
    # The same check before serving: one line, exit 2, without waiting for the stream.
    result = run_cli("serve", "--stream", f"absent-{uuid.uuid4().hex[:6]}", "--zmq-curve-keys", str(empty),
                     "--wait", "60")
    assert result.exit_code == 2, result.output
    assert "server.key_secret is missing" in result.stderr and "Traceback" not in result.output


def test_readable_secret_key_is_warned_about(curve_keys, caplog):
    os.chmod(curve_keys["dir"] / "server.key_secret", 0o644)
    with caplog.at_level(logging.WARNING, logger="brainformer_rt"):
        load_curve_keys(curve_keys["dir"])
    assert any("chmod 600" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------------------------
# Addresses: loopback by default, a warning for anything else
# ----------------------------------------------------------------------------------------------
def test_defaults_bind_loopback_only():
    settings = ServeSettings(streams=["EEG"]).validate()
    assert settings.zmq.startswith("tcp://127.0.0.1:") and settings.metrics_host == DEFAULT_METRICS_HOST == "127.0.0.1"


def non_loopback_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "non_loopback_bind"]


def test_binding_a_non_loopback_address_is_warned_about(caplog):
    # The tests run in a namespace whose only interface is lo: binding 0.0.0.0 exposes nothing.
    with caplog.at_level(logging.WARNING, logger="brainformer_rt"):
        for address, warned in (("tcp://127.0.0.2:*", False), ("tcp://0.0.0.0:*", True)):
            caplog.clear()
            publisher = ZMQPublisher(address, channel_names=NAMES, channel_types=TYPES, sfreq_hz=SFREQ_HZ)
            publisher.close()
            assert bool(non_loopback_warnings(caplog)) is warned, address
            if warned:
                assert "unencrypted" in non_loopback_warnings(caplog)[0]
        for host, warned in (("127.0.0.1", False), ("0.0.0.0", True)):
            caplog.clear()
            exporter = MetricsExporter(ServeMetrics(["EEG"]), host, 0)
            exporter.close()
            assert bool(non_loopback_warnings(caplog)) is warned, host


def listening_tcp(pid: int) -> list[tuple[str, int]]:
    process = psutil.Process(pid)
    return [(c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]


def test_serve_with_curve_binds_loopback_and_serves_only_authorized(model_dir, serve_config, curve_keys, tmp_path):
    """The real daemon: ZeroMQ with CURVE keys and metrics; an authorized subscriber gets the
    predictions, a plain one nothing; the daemon's own sockets listen on 127.0.0.1 only."""
    name = f"test-eeg-{uuid.uuid4().hex[:8]}"
    zmq_address = free_tcp_address()
    metrics_port = free_port()
    player = Player(name, f"test-{uuid.uuid4()}")
    serve = Serve(tmp_path, "--stream", name, "--model", str(model_dir), "--zmq", zmq_address, "--lsl-name",
                  f"meg-{uuid.uuid4().hex[:8]}", "--config", str(serve_config), "--zmq-curve-keys",
                  str(curve_keys["dir"]), "--metrics-port", str(metrics_port), "--log-format", "json")
    subs = {"authorized": curve_subscriber(zmq_address, curve_keys["lab-pc"], curve_keys["server"]),
            "plain": curve_subscriber(zmq_address, None, None)}
    received = {who: [] for who in subs}
    try:
        wait_for_event(serve, "first_prediction")
        listening = listening_tcp(serve.process.pid)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline or not received["authorized"]:
            assert time.monotonic() < deadline + 20.0, "the authorized subscriber received nothing"
            drain(subs, received)
        serve.process.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0, serve.stderr
    finally:
        for sub in subs.values():
            sub.close(linger=0)
        serve.close()
        player.stop()
    assert received["plain"] == []
    headers = [decode_message(frames)[0] for frames in received["authorized"]]
    assert [h["seq"] for h in headers] == list(range(headers[0]["seq"], headers[0]["seq"] + len(headers)))
    zmq_port = int(zmq_address.rsplit(":", 1)[1])
    assert ("127.0.0.1", zmq_port) in listening and ("127.0.0.1", metrics_port) in listening
    others = [(ip, port) for ip, port in listening if ip != "127.0.0.1"]
    # Only liblsl's own data ports listen on every interface (liblsl has no setting for it).
    assert all(port in LIBLSL_PORTS for _, port in others), listening
    assert any(e["event"] == "zmq_bound" and e["curve"] for e in json_events(serve.stderr))


# ----------------------------------------------------------------------------------------------
# Model directories: refused with one line, never unpickled
# ----------------------------------------------------------------------------------------------
class _Tripwire:
    """Unpickling this creates the file named by ``path``: proof that a pickle was opened."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def write_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"weight": _Tripwire(marker)}))


def _model_problem(kind: str, good: Path, target: Path, marker: Path) -> tuple[Path, str]:
    """Make the broken model directory ``target`` of ``kind`` from the ``good`` one; returns
    (directory, text the error must contain)."""
    config = json.loads((good / "config.json").read_text())
    weights = (good / "model.safetensors").read_bytes()
    if kind == "missing directory":
        return target, "model directory does not exist"
    target.mkdir()
    if kind == "no config.json":
        (target / "model.safetensors").write_bytes(weights)
        return target, "config.json: missing"
    if kind == "config.json not JSON":
        (target / "config.json").write_text("{model_type: brainformer")
        return target, "config.json: invalid JSON"
    if kind == "another model type":
        (target / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
        (target / "model.safetensors").write_bytes(weights)
        return target, "model_type is 'bert', expected 'brainformer'"
    if kind == "unknown config key":
        (target / "config.json").write_text(json.dumps({**config, "d_modle": 64}))
        (target / "model.safetensors").write_bytes(weights)
        return target, "d_modle"
    if kind == "wrong config type":
        (target / "config.json").write_text(json.dumps({**config, "n_layers": "2"}))
        (target / "model.safetensors").write_bytes(weights)
        return target, "n_layers"
    (target / "config.json").write_text(json.dumps(config))
    if kind == "no weights":
        return target, "model.safetensors: missing"
    if kind == "corrupt safetensors":
        (target / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
        return target, "model.safetensors: not a readable safetensors file"
    if kind == "truncated safetensors":
        (target / "model.safetensors").write_bytes(weights[: len(weights) // 2])
        return target, "model.safetensors: not a readable safetensors file"
    if kind == "weights of another shape":
        (target / "config.json").write_text(json.dumps({**config, "d_model": 32, "d_ff": 64}))
        (target / "model.safetensors").write_bytes(weights)
        return target, "has shape"
    if kind == "pickle instead of safetensors":
        write_pickle(target / "pytorch_model.bin", marker)
        return target, "pytorch_model.bin: pickled weights are refused"
    if kind == "pickle named model.safetensors":
        write_pickle(target / "model.safetensors", marker)
        return target, "model.safetensors: not a readable safetensors file"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", [
    "missing directory", "no config.json", "config.json not JSON", "another model type", "unknown config key",
    "wrong config type", "no weights", "corrupt safetensors", "truncated safetensors", "weights of another shape",
    "pickle instead of safetensors", "pickle named model.safetensors",
])
def test_model_directory_problems_are_refused_with_one_line(kind, eeg_names, tmp_path):
    good = save_model(tmp_path / "good", eeg_names)
    marker = tmp_path / "unpickled"
    directory, needle = _model_problem(kind, good, tmp_path / "broken", marker)
    result = run_cli("serve", "--stream", f"absent-{uuid.uuid4().hex[:6]}", "--model", str(directory), "--no-zmq",
                     "--lsl-name", f"meg-{uuid.uuid4().hex[:6]}", "--wait", "60")
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    assert needle in error_lines[0] and str(directory) in error_lines[0]
    assert "Traceback" not in result.output
    assert not marker.exists(), "a pickle was unpickled"


def test_the_tripwire_works(tmp_path):
    """The pickle used above does create its marker when unpickled (so its absence means something)."""
    marker = tmp_path / "unpickled"
    write_pickle(tmp_path / "weights.bin", marker)
    pickle.loads((tmp_path / "weights.bin").read_bytes())
    assert marker.exists()


# ----------------------------------------------------------------------------------------------
# Settings validated before use
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, needle", [
    ("metrics_host = 5\n", "metrics_host"),
    ("metrics_host = 'http://127.0.0.1'\n", "metrics_host"),
    ("metrics_port = 70000\n", "metrics_port"),
    ("metrics_port = '9100'\n", "metrics_port"),
    ("silence_s = 0\n", "silence_s"),
    ("log_format = 'xml'\n", "log_format"),
    ("zmq_curve_keys = 3\n", "zmq_curve_keys"),
    ("zmq = ''\nzmq_curve_keys = 'keys'\n", "ZeroMQ is disabled"),
    ("metrics = 9100\n", "unknown key 'metrics'"),
])
def test_serve_config_errors_name_the_key(tmp_path, text, needle):
    path = tmp_path / "serve.toml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=needle):
        build_serve_settings(path, stream=["EEG"])
    result = run_cli("serve", "--config", str(path), "--stream", "EEG")
    assert result.exit_code == 2 and needle.split("'")[0] in result.stderr and "Traceback" not in result.output
