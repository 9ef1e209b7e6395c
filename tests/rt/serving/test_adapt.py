"""The daemon's source adaptation stage (serving/adapt.py + the preprocessing stage around it):
the plan is made from the stream's meta-data and logged naming what it ignores and interpolates,
a stream identical to the training layout is served bit for bit as before, bad channels are
re-planned off the hot path without a gap, implausible amplitudes are warned about, and every
stream that cannot be served is one line with exit code 2.

In-process and fast; the end-to-end runs with real sources are in tests/rt/tools/test_sources.py.
"""

from __future__ import annotations

import logging
import uuid

import mne
import numpy as np
import pylsl
import pytest

from brainformer.adaptation import AdaptationError, AdaptationOptions, SourceDescription
from brainformer.model_dir import load_fields
from brainformer.preprocessing import eeg_preprocessor
from brainformer_rt.serving.adapt import IncompatibleStreamError, SourceAdapter, adaptation_options
from brainformer_rt.serving.pipeline import open_stages
from tests.rt.conftest import run_cli

pytestmark = pytest.mark.timeout(300)

#: How long a test waits for the adapter's worker (a re-plan, the amplitude check): a hang
#: timeout only, far above what the work takes on a busy machine.
IDLE_WAIT_S = 120.0
#: ``--wait`` of the commands run against a stream this process already made visible.
STREAM_WAIT_S = "120"


@pytest.fixture(scope="module")
def fields():
    """The bundled default model's fields (60 EEG channels with positions, 600.615 Hz)."""
    return load_fields("default")


@pytest.fixture(scope="module")
def recording(sample_fif):
    """The first 4 s of the bundled recording: EEG ``(n, 60)`` float32 V, EOG + STI, names."""
    raw = mne.io.read_raw_fif(sample_fif, preload=True, verbose="error").crop(0, 4.0)
    eeg = raw.copy().pick("eeg", exclude=())
    aux = raw.copy().pick(["eog", "stim"], exclude=())
    return (eeg.get_data().T.astype(np.float32), list(eeg.ch_names), aux.get_data().T.astype(np.float32),
            list(aux.ch_names), [t.upper() for t in aux.get_channel_types()], float(raw.info["sfreq"]))


def source(labels, types=None, units=None, sfreq_hz=600.614990234375, channel_format="float32", positions=()):
    return SourceDescription(name="LSL stream 'amp'", labels=tuple(labels), types=tuple(types or ["EEG"] * len(labels)),
                             units=tuple(units or ["V"] * len(labels)), sfreq_hz=sfreq_hz,
                             channel_format=channel_format, positions_m=tuple(positions))


def feed(stage, data, sfreq_hz, chunk=16):
    timestamps = 100.0 + np.arange(len(data)) / sfreq_hz
    outs, times = [], []
    for start in range(0, len(data), chunk):
        out, ts = stage.process(data[start:start + chunk], timestamps[start:start + chunk])
        outs.append(out.copy())
        times.append(ts.copy())
    return np.concatenate(outs), np.concatenate(times), timestamps


# ----------------------------------------------------------------------------------------------
# Identity, extra channels, units
# ----------------------------------------------------------------------------------------------
def test_a_stream_like_the_training_recording_is_served_bit_for_bit_as_before(fields, recording):
    eeg, names, *_ = recording
    assert names == list(fields.eeg_channel_names)
    stage = open_stages(fields, None, source=source(names))
    assert stage.plan.is_selection and not stage.plan.resample and stage.decimation == 1
    out, times, timestamps = feed(stage, eeg, fields.sfreq_hz)
    reference, reference_times = eeg_preprocessor(fields, fields.sfreq_hz).process(eeg, timestamps)
    np.testing.assert_array_equal(out, reference)
    np.testing.assert_array_equal(times, reference_times)
    stage.close()


def test_extra_channels_and_microvolts_are_handled_and_the_plan_is_logged(fields, recording, caplog):
    """EEG in µV in a shuffled order with EOG and trigger channels and two electrodes missing:
    the log event names every ignored channel and every interpolated electrode."""
    from brainformer_rt.serving.app import _log_plan

    eeg, names, aux, aux_names, aux_types, sfreq = recording
    order = np.random.default_rng(0).permutation(len(names))[:-2]  # two electrodes missing
    labels = [names[i] for i in order] + aux_names
    data = np.concatenate([eeg[:, order] * np.float32(1e6), aux], axis=1)
    stage = open_stages(fields, None, source=source(labels, ["EEG"] * len(order) + aux_types,
                                                           ["microvolts"] * len(order) + [""] * len(aux_names)))
    missing = sorted(set(names) - set(labels))
    with caplog.at_level(logging.INFO, logger="brainformer_rt"):
        announced = []
        _log_plan("amp", stage, announced.append)
    (record,) = [r for r in caplog.records if getattr(r, "event", "") == "adaptation_plan"]
    assert "\n" not in record.getMessage()
    ignored = " ".join(record.ignored)
    assert all(f"{name} (" in ignored for name in aux_names), record.ignored  # every one, by name
    assert sorted(item.split(" (")[0] for item in record.interpolated) == missing
    assert "interpolated (2" in announced[0] and "microvolts" in announced[0]
    out, _, _ = feed(stage, data, sfreq)
    assert out.shape == (len(eeg), 60) and np.isfinite(out).all()
    stage.close()


def test_implausible_amplitudes_are_warned_about_after_the_first_seconds(fields, recording):
    """µV numbers declared as volts: the warning names the likely unit (off the hot path)."""
    eeg, names, *_ = recording
    adapter = SourceAdapter(fields, source(names), amplitude_check_s=2.0)
    warnings = []
    adapter.on_amplitude_warning = warnings.append
    for start in range(0, len(eeg), 32):
        adapter.apply(eeg[start:start + 32] * np.float32(1e6), np.arange(start, start + len(eeg[start:start + 32])) / 600.0)
    assert adapter.wait_idle(IDLE_WAIT_S)
    assert len(warnings) == 1 and "look like µV" in warnings[0], warnings
    adapter.close()


# ----------------------------------------------------------------------------------------------
# Bad channels: re-planned off the hot path, swapped in without a gap, restored
# ----------------------------------------------------------------------------------------------
def test_bad_channels_are_replanned_in_the_background_and_swapped_in_without_a_gap(fields, recording):
    eeg, names, *_ = recording
    adapter = SourceAdapter(fields, source(names))
    events = []
    adapter.on_replanned = lambda plan, bad, error: events.append((plan, bad, error))
    timestamps = np.arange(len(eeg)) / fields.sfreq_hz
    rows = []
    for i, start in enumerate(range(0, len(eeg), 16)):
        if i == 20:
            assert adapter.request_bad_channels(["EEG 021"])
            assert not adapter.request_bad_channels(["EEG 021"])  # the same set: nothing to do
            assert adapter.wait_idle(IDLE_WAIT_S)
        if i == 60:
            adapter.request_bad_channels([])
            assert adapter.wait_idle(IDLE_WAIT_S)
        out, ts = adapter.apply(eeg[start:start + 16], timestamps[start:start + 16])
        rows.append((out.copy(), ts.copy()))
    out = np.concatenate([r[0] for r in rows])
    ts = np.concatenate([r[1] for r in rows])
    np.testing.assert_array_equal(ts, timestamps)  # every sample, in order: no gap
    (plan, bad, error), (restored, none, _) = events
    assert bad == ("EEG 021",) and error is None and [m for m, _, _ in plan.interpolated] == ["EEG 021"]
    assert none == () and restored is adapter.base_plan and adapter.plan is adapter.base_plan
    column = names.index("EEG 021")
    during = slice(20 * 16, 60 * 16)
    assert not np.array_equal(out[during, column], eeg[during, column])  # interpolated meanwhile
    r = np.corrcoef(out[during, column], eeg[during, column])[0, 1]
    assert r > 0.5, r  # … from its neighbours: close to the real electrode
    np.testing.assert_array_equal(np.delete(out, column, axis=1), np.delete(eeg, column, axis=1))
    np.testing.assert_array_equal(out[60 * 16:, column], eeg[60 * 16:, column])  # restored
    assert adapter.replans == 2
    adapter.close()


def test_a_replan_that_cannot_be_made_is_reported_and_the_plan_kept(fields, recording):
    eeg, names, *_ = recording
    adapter = SourceAdapter(fields, source(names), AdaptationOptions(max_missing_fraction=0.05))
    events = []
    adapter.on_replanned = lambda plan, bad, error: events.append((plan, bad, error))
    adapter.request_bad_channels(names[:10])
    assert adapter.wait_idle(IDLE_WAIT_S)
    ((plan, bad, error),) = events
    assert plan is None and "10 of the model's 60" in error and adapter.plan is adapter.base_plan
    adapter.close()


# ----------------------------------------------------------------------------------------------
# Refusals: one line each (AdaptationError in the stage, exit code 2 from the command)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels, kwargs, options, needle", [
    (["Fp1", "Fp2", "Cz", "Pz"], {}, None, "no EEG channel for the model"),
    (None, {"channel_format": "int16"}, None, "channel format 'int16'"),
    (None, {"units": ["furlong"] * 60}, None, "'furlong' is not a voltage unit"),
    ("drop20", {}, None, "20 of the model's 60 EEG channels are missing"),
    (None, {"sfreq_hz": 0.0}, None, "irregular"),
], ids=["no-eeg-channel", "non-float", "unknown-unit", "too-many-missing", "irregular-rate"])
def test_streams_that_cannot_be_served_are_refused_in_one_line(fields, recording, labels, kwargs, options, needle):
    names = recording[1]
    if labels is None:
        labels = names
    elif labels == "drop20":
        labels = names[20:]
    with pytest.raises(IncompatibleStreamError) as error:
        open_stages(fields, None, source=source(labels, **kwargs), options=options)
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_an_unknown_unit_is_served_with_input_unit(fields, recording):
    names = recording[1]
    stage = open_stages(fields, None, source=source(names, units=["furlong"] * 60),
                               options=adaptation_options(input_unit="uV"))
    assert {factor for _, _, factor in stage.plan.units} == {1e-6}
    stage.close()


def test_an_unknown_montage_is_refused_before_any_stream(fields):
    with pytest.raises(AdaptationError, match="unknown montage 'nope_1020'"):
        adaptation_options(montage="nope_1020")
    result = run_cli("serve", "--stream", f"absent-{uuid.uuid4().hex[:8]}", "--model", "default", "--no-zmq",
                     "--montage", "nope_1020", "--wait", "30")
    assert result.exit_code == 2, result.output
    assert "unknown montage 'nope_1020'" in result.stderr and "Traceback" not in result.output


def _outlet(name, labels, fmt="float32", units=None, types=None):
    info = pylsl.StreamInfo(name, "EEG", len(labels), 600.614990234375, fmt, f"test-{uuid.uuid4()}")
    channels = info.desc().append_child("channels")
    for i, label in enumerate(labels):
        channel = channels.append_child("channel")
        channel.append_child_value("label", label)
        channel.append_child_value("type", (types or ["EEG"] * len(labels))[i])
        channel.append_child_value("unit", (units or ["V"] * len(labels))[i])
    return pylsl.StreamOutlet(info)


@pytest.mark.parametrize("case", ["unknown-unit", "too-many-missing", "no-eeg-channel", "non-float"])
def test_serve_and_check_exit_2_with_one_line(eeg_names, case):
    """Real LSL streams the default model cannot use: ``serve`` and ``check`` both exit 2 with
    one ``error:`` line naming the reason; ``--input-unit`` makes the unknown unit servable."""
    name = f"test-amp-{uuid.uuid4().hex[:8]}"
    labels, fmt, units, needle = list(eeg_names), "float32", None, ""
    if case == "unknown-unit":
        units, needle = ["furlong"] * 60, "'furlong' is not a voltage unit"
    elif case == "too-many-missing":
        labels, needle = eeg_names[:30], "30 of the model's 60 EEG channels are missing"
    elif case == "no-eeg-channel":
        labels, needle = ["Fp1", "Fp2", "Cz"], "no EEG channel"
    else:
        fmt, needle = "int16", "int16"
    outlet = _outlet(name, labels, fmt, units)
    try:
        limit = ["--max-missing", "0.25"] if case == "too-many-missing" else []  # else the expected quality decides
        checked = run_cli("check", "--stream", name, "--model", "default", "--wait", STREAM_WAIT_S, *limit)
        assert checked.exit_code == 2, checked.output
        errors = [line for line in checked.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and needle in errors[0], checked.stderr
        if case == "unknown-unit":
            served = run_cli("serve", "--stream", name, "--model", "default", "--no-zmq", "--lsl-name",
                             f"meg-{uuid.uuid4().hex[:8]}", "--wait", STREAM_WAIT_S, "--device", "cpu",
                             "--engine", "eager")
            assert served.exit_code == 2, served.output
            errors = [line for line in served.stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and needle in errors[0], served.stderr
            fixed = run_cli("check", "--stream", name, "--model", "default", "--input-unit", "uV",
                            "--wait", STREAM_WAIT_S)
            assert fixed.exit_code == 0, fixed.output
            assert "input unit overridden: 'uV'" in fixed.stdout and "can be served" in fixed.stdout
    finally:
        del outlet


def test_check_prints_the_plan_of_a_servable_stream(eeg_names):
    name = f"test-amp-{uuid.uuid4().hex[:8]}"
    labels = [n for n in eeg_names if n not in ("EEG 001", "EEG 030")] + ["EOG 061", "STI 014"]
    outlet = _outlet(name, labels, "double64", ["microvolts"] * 58 + ["microvolts", ""], ["EEG"] * 58 + ["EOG", "STIM"])
    try:
        result = run_cli("check", "--stream", name, "--model", "default", "--wait", STREAM_WAIT_S)
    finally:
        del outlet
    assert result.exit_code == 0, result.output
    out = result.stdout
    for needle in ("'microvolts' → µV ×1e-06", "58 of 60 model channels", "ignored (2)", "'EOG 061'", "'STI 014'",
                   "interpolated (2", "'EEG 001' (nearest", "'EEG 030' (nearest", "mm", "600.615 Hz (the model rate)",
                   "can be served"):
        assert needle in out, (needle, out)


# ----------------------------------------------------------------------------------------------
# Settings: the serve TOML keys and the flags
# ----------------------------------------------------------------------------------------------
def test_adaptation_settings_from_the_toml_and_the_flags(tmp_path):
    from brainformer.settings import SettingsError, build_serve_settings

    channel_map = tmp_path / "map.toml"
    channel_map.write_text('"Fp1" = "EEG 001"\n')
    path = tmp_path / "serve.toml"
    path.write_text(f'input_unit = "uV"\nmontage = "standard_1020"\nchannel_map = "{channel_map}"\n'
                    "max_missing_fraction = 0.1\n")
    settings = build_serve_settings(path, stream=["EEG"])
    assert (settings.input_unit, settings.montage, settings.channel_map, settings.max_missing_fraction) == \
        ("uV", "standard_1020", str(channel_map), 0.1)
    settings = build_serve_settings(path, stream=["EEG"], input_unit="mV", max_missing=0.5)
    assert settings.input_unit == "mV" and settings.max_missing_fraction == 0.5
    assert build_serve_settings(None, stream=["EEG"]).max_missing_fraction is None  # the expected quality decides
    for text, needle in [('input_unit = "furlong"\n', "input_unit = 'furlong' is invalid"),
                         ("max_missing_fraction = 1.5\n", "max_missing_fraction = 1.5 is invalid"),
                         ('channel_map = "absent.toml"\n', "channel_map = 'absent.toml' is invalid"),
                         ('montage = ""\n', "montage = '' is invalid")]:
        path.write_text(text)
        with pytest.raises(SettingsError, match=needle):
            build_serve_settings(path, stream=["EEG"])


def test_adaptation_timing_and_replans_reach_the_stats_and_prometheus():
    from brainformer_rt.serving.metrics import ServeMetrics
    from brainformer_rt.serving.prometheus import ServeCollector

    metrics = ServeMetrics(["amp"])
    for value in (20e-6, 40e-6, 60e-6):
        metrics.add_adapt("amp", value)
    metrics.streams["amp"].replans = 2
    metrics.streams["amp"].channels_interpolated = 1
    metrics.gauges["amp"].resampler_delay_s = 0.003
    stats = metrics.to_dict()
    assert stats["adaptation"]["amp"]["count"] == 3 and stats["adaptation"]["amp"]["median_ms"] == pytest.approx(0.04)
    assert set(stats["stages"]) == {"pull", "preprocess", "forward", "publish"}  # adapt is a part of preprocess
    families = {family.name: family for family in ServeCollector(metrics).collect()}
    adapt = families["brainformer_adapt_seconds"]
    count = [s for s in adapt.samples if s.name.endswith("_count")]
    assert count[0].labels == {"stream": "amp"} and count[0].value == 3
    assert families["brainformer_replans"].samples[0].value == 2
    assert families["brainformer_channels_interpolated"].samples[0].value == 1
    assert families["brainformer_resampler_delay_seconds"].samples[0].value == pytest.approx(0.003)
