import re
import subprocess
import threading
import time

import mne
import numpy as np
import pylsl
import pytest

from brainformer_rt.serving.inlet import EEGInlet, find_stream
from brainformer_rt.tools.player import Player, RecordingSource
from tests.rt.conftest import rt_cli, stop_process

pytestmark = pytest.mark.timeout(300)

#: Hang timeouts: far above what the waits take on a busy machine.
HANG_S = 120.0


@pytest.fixture(scope="module")
def recording_eeg(sample_fif):
    """(data (n, 60) float32 volts, channel names, sfreq) of the bundled recording."""
    raw = mne.io.read_raw_fif(sample_fif, allow_maxshield=True, verbose="error").pick("eeg")
    return raw.get_data().T.astype(np.float32), raw.ch_names, raw.info["sfreq"]


def test_player_process_streams_every_sample_in_order_never_ahead_of_its_clock(start_player, stream_name,
                                                                               recording_eeg):
    """The file's samples, every one, in order, stamped 1/sfreq apart, none pushed before its
    stamp. (The rate it keeps is measured by benchmarks/bench_player.py, not asserted here.)"""
    file_data, file_names, file_sfreq = recording_eeg
    process = start_player(stream_name, "--chunk", "10")
    inlet = EEGInlet(find_stream(stream_name, wait_s=HANG_S))
    inlet.open()
    try:
        description = inlet.description
        assert list(description.channel_labels) == file_names and len(file_names) == 60
        assert set(description.channel_units) == {"V"}
        assert description.sfreq_hz == file_sfreq and description.channel_format == "float32"

        data, timestamps = [], []
        deadline = time.monotonic() + HANG_S  # a hang timeout
        while sum(len(t) for t in timestamps) < 1200:  # ~2 s of the recording
            assert time.monotonic() < deadline and process.poll() is None, "the player stopped sending"
            chunk, stamps = inlet.pull(0.2)
            received_at = pylsl.local_clock()
            if len(stamps):
                assert stamps[-1] <= received_at  # never stamped ahead of the clock
                data.append(chunk.copy()), timestamps.append(stamps.copy())
        data, timestamps = np.concatenate(data), np.concatenate(timestamps)

        # Every sample stamped 1/sfreq after the previous one: none lost, none repeated.
        np.testing.assert_allclose(np.diff(timestamps), 1 / file_sfreq, rtol=0, atol=1e-6)
        # The file's samples, in order, from wherever the inlet joined.
        start = np.flatnonzero((file_data == data[0]).all(axis=1))
        assert len(start) == 1
        np.testing.assert_array_equal(data, file_data[start[0]:start[0] + len(data)])
        assert inlet.reconnects == 0
    finally:
        inlet.close()
    assert stop_process(process) == 0  # SIGTERM: clean stop
    assert "stopped after" in process.stdout.read()


def test_timestamp_offset_shifts_every_stamp_not_the_schedule(stream_name, recording_eeg):
    """``--timestamp-offset`` (a testing hook): the same samples, stamped S seconds earlier."""
    file_data, file_names, file_sfreq = recording_eeg
    source = RecordingSource(file_data[:400], file_sfreq, file_names)
    player = Player(source, name=stream_name, chunk_samples=16, timestamp_offset_s=-0.6)
    player.open()
    inlet = EEGInlet(find_stream(stream_name, wait_s=HANG_S))
    inlet.open()
    try:
        assert player.wait_for_consumers(HANG_S)
        while player.step():
            pass
        data, timestamps = [], []
        deadline = time.monotonic() + HANG_S
        while sum(len(t) for t in timestamps) < 400:
            assert time.monotonic() < deadline, "samples missing"
            chunk, stamps = inlet.pull(0.2)
            data.append(chunk.copy()), timestamps.append(stamps.copy())
    finally:
        inlet.close()
        player.close()
    timestamps = np.concatenate(timestamps)
    np.testing.assert_array_equal(np.concatenate(data), file_data[:400])
    # The stamps are the schedule's (t_start + k / sfreq) moved by the offset.
    np.testing.assert_allclose(timestamps, player.t_start - 0.6 + np.arange(400) / file_sfreq, rtol=0, atol=1e-6)
    assert player.summary()["samples"] == 400


def test_player_stops_after_duration(stream_name):
    result = subprocess.run(rt_cli("simulate", "--name", stream_name, "--duration", "0.5", "--chunk", "7"),
                            capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 0, result.stderr
    assert "stopped after 300 samples" in result.stdout  # round(0.5 s * 600.615 Hz)


@pytest.mark.parametrize("args, message", [
    (["--file", "no/such/recording.fif"], "recording not found: no/such/recording.fif"),
    (["--synthetic", "nope"], "synthetic layout must be one of"),
    (["--chunk", "0"], "--chunk must be >= 1"),
])
def test_bad_input_exits_2_with_one_line(stream_name, args, message):
    result = subprocess.run(rt_cli("simulate", "--name", stream_name, *args), capture_output=True, text=True,
                            timeout=HANG_S)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # the simulator builds its head model first
@pytest.mark.timeout(120)
def test_synthetic_source_plays(stream_name):
    result = subprocess.run(rt_cli("simulate", "--name", stream_name, "--synthetic", "sample", "--duration", "0.2"),
                            capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stderr
    assert re.search(r"stopped after \d+ samples", result.stdout)


def test_player_in_a_thread_loops_with_uniform_timestamps(stream_name):
    data = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    source = RecordingSource(data, sfreq_hz=200.0, channel_names=["C3", "C4"], loop=True)
    player = Player(source, name=stream_name, chunk_samples=3, duration_s=0.2)  # 40 samples
    player.open()
    inlet = EEGInlet(find_stream(stream_name, wait_s=HANG_S))
    inlet.open()
    assert player.wait_for_consumers(HANG_S)
    thread = threading.Thread(target=lambda: [None for _ in iter(player.step, False)])
    thread.start()
    received, stamps = [], []
    try:
        deadline = time.monotonic() + HANG_S
        while sum(map(len, stamps)) < 40:
            assert time.monotonic() < deadline, f"{sum(map(len, stamps))} of 40 samples came"
            chunk, chunk_stamps = inlet.pull(0.2)
            received.append(chunk.copy()), stamps.append(chunk_stamps - inlet.clock_offset_s)
    finally:
        thread.join(HANG_S)
        player.close()
        inlet.close()
    np.testing.assert_array_equal(np.concatenate(received), data[np.arange(40) % 10])
    np.testing.assert_allclose(np.concatenate(stamps), player.t_start + np.arange(40) / 200.0, rtol=0, atol=1e-9)
    assert player.samples_pushed == 40 and player.chunks_pushed == 14


def test_aligned_players_push_at_whole_multiples_of_the_chunk_period(stream_name):
    source = RecordingSource(np.zeros((8, 1), np.float32), sfreq_hz=200.0, channel_names=["Cz"], loop=True)
    players = [Player(source, name=f"{stream_name}-{i}", chunk_samples=4, duration_s=0.06, aligned=True)
               for i in range(2)]
    for player in players:
        player.open()
        assert player.step()  # the clock starts at the first chunk
        time.sleep(0.013)  # the second player starts later, at another phase
    period = 4 / 200.0
    for player in players:
        assert player.t_start == pytest.approx(round(player.t_start / period) * period, abs=1e-9)
        player.close()
    # Without alignment the clock starts whenever the first chunk comes.
    free = Player(source, name=f"{stream_name}-free", chunk_samples=4, duration_s=0.06)
    free.open()
    free.step()
    free.close()
    assert players[0].aligned and not free.aligned


def test_stop_ends_a_running_player_from_another_thread(stream_name):
    source = RecordingSource(np.zeros((5, 1), np.float32), sfreq_hz=100.0, channel_names=["Cz"], loop=True)
    player = Player(source, name=stream_name, chunk_samples=50)  # 0.5 s per chunk, endless
    thread = threading.Thread(target=player.run)
    thread.start()
    player.stop()
    thread.join(HANG_S)
    assert not thread.is_alive()


def test_recording_source_reads_in_order_and_stops_without_loop():
    source = RecordingSource(np.arange(5, dtype=np.float32)[:, None], 10.0, ["Cz"])
    assert source.read(3)[:, 0].tolist() == [0, 1, 2]
    assert source.read(3)[:, 0].tolist() == [3, 4]
    assert len(source.read(3)) == 0
    with pytest.raises(ValueError, match=r"shape \(n_samples > 0, 2 channels\)"):
        RecordingSource(np.zeros((4, 3)), 10.0, ["a", "b"])
