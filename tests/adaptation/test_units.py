"""Unit spellings → volts, and the amplitude plausibility check."""

from __future__ import annotations

import numpy as np
import pytest

from brainformer.adaptation import AdaptationError, amplitude_warning, volt_factor

TABLE = [
    ("V", 1.0), ("v", 1.0), ("volt", 1.0), ("Volts", 1.0), ("0", 1.0),
    ("mV", 1e-3), ("MV", 1e-3), ("millivolts", 1e-3), ("-3", 1e-3),
    ("uV", 1e-6), ("UV", 1e-6), ("µV", 1e-6), ("μV", 1e-6), ("microvolts", 1e-6), ("MicroVolt", 1e-6),
    (" µ V ", 1e-6), ("-6", 1e-6),
    ("nV", 1e-9), ("nanovolts", 1e-9), ("-9", 1e-9),
]


@pytest.mark.parametrize("unit, factor", TABLE)
def test_every_spelling_and_mne_lsl_exponent(unit, factor):
    assert volt_factor(unit) == pytest.approx(factor, rel=1e-12)


@pytest.mark.parametrize("unit", [None, "", "   "])
def test_no_unit_is_none(unit):
    assert volt_factor(unit) is None


@pytest.mark.parametrize("unit", ["mmHg", "a.u.", "uV/m", "-20", "1e-6x"])
def test_not_a_voltage_is_refused_naming_it(unit):
    with pytest.raises(AdaptationError, match=repr(unit).replace(".", r"\.").replace("(", r"\(")):
        volt_factor(unit)


def test_amplitude_check(eeg_raw):
    volts = eeg_raw.get_data().T[:3000]  # the first 5 s of real EEG, in volts
    assert amplitude_warning(volts, 1.0) is None
    # The same numbers in microvolts declared as volts: values around 50.
    message = amplitude_warning(volts * 1e6, 1.0)
    assert message is not None and "look like µV" in message and "\n" not in message
    # Volts declared as microvolts.
    message = amplitude_warning(volts * 1e-6, 1e-6)
    assert message is not None and "look like V" in message
    # Millivolt values declared as microvolts.
    assert "look like mV" in amplitude_warning(volts * 1e3 * 1e-6, 1e-6)


def test_amplitude_check_ignores_flat_and_short_data():
    assert amplitude_warning(np.zeros((100, 4))) is None
    assert amplitude_warning(np.ones((1, 4))) is None
