"""StopRequest: a signal during start-up interrupts blocking work, except inside a deferred block
(importing C extensions), where it is answered right after the block."""

from __future__ import annotations

import os
import signal

import pytest

from brainformer_rt.serving.signals import Interrupted, StopRequest


def test_a_signal_interrupts_start_up_at_once():
    with StopRequest() as stop:
        with pytest.raises(Interrupted, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**6):  # the handler runs between two bytecodes of this loop
                pass
        assert stop.is_set() and stop.signal_name == "SIGTERM"


def test_a_signal_inside_a_deferred_block_is_answered_after_it():
    finished = []
    with StopRequest() as stop:
        with pytest.raises(Interrupted, match="SIGINT"):
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(10**6):
                    pass
                finished.append(True)  # the block ran to its end
        assert finished == [True] and stop.is_set() and stop.interrupt


def test_a_deferred_block_without_a_signal_or_after_start_up_raises_nothing():
    with StopRequest() as stop:
        with stop.deferred():
            pass
        stop.interrupt = False  # serving: the loops check the event themselves
        with stop.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**6):
                pass
        assert stop.is_set()
