"""ops/_measure.Picks: the once-per-shape timed choice of an implementation against the one the
dispatcher would fall back to (CPU, with the timer and that fallback replaced; the GPU tests
exercise it for real through conv_bn_act)."""
import pytest
import torch

from kernelswap.ops import _measure
from kernelswap.ops.backend import Impl, Transient


@pytest.fixture
def fake_times(monkeypatch):
    times = {}
    calls = []

    def median_ms(fn, args):
        calls.append(fn)
        if isinstance(times[fn], Exception):
            raise times[fn]
        return times[fn]

    monkeypatch.setattr(_measure, "median_ms", median_ms)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    # What the dispatcher would run if `ours` declined: `theirs`, on the torch backend.
    monkeypatch.setattr(_measure, "choose_after", lambda op, fn, args: Impl("torch", theirs, lambda *a: None))
    return times, calls


def ours(*a):
    return "ours"


def theirs(*a):
    return "theirs"


def test_faster_candidate_is_picked_once_per_key(fake_times):
    times, calls = fake_times
    times.update({ours: 1.0, theirs: 2.0})
    picks = _measure.Picks("conv_bn_act", "ours")
    assert picks.reason(("k",), ours, ()) is None
    assert picks.reason(("k",), ours, ()) is None
    assert len(calls) == 2  # measured once: one timing each
    assert ("k",) in picks and picks[("k",)] is None


def test_slower_candidate_gets_the_numbers_in_its_reason(fake_times):
    times, _ = fake_times
    times.update({ours: 0.3, theirs: 0.1})
    why = _measure.Picks("conv_bn_act", "the Triton kernel").reason(("k",), ours, ())
    assert why == "torch (theirs) measured faster at this shape (100.0 us vs 300.0 us for the Triton kernel)"


def test_failing_candidate_falls_back_with_the_error(fake_times):
    times, _ = fake_times
    times.update({ours: RuntimeError("out of resources"), theirs: 0.1})
    why = _measure.Picks("conv_bn_act", "the Triton kernel").reason(("k",), ours, ())
    assert "the Triton kernel failed at this shape (RuntimeError: out of resources); torch serves it" == why


def test_capture_gets_a_transient_answer_and_measures_later(fake_times, monkeypatch):
    times, calls = fake_times
    times.update({ours: 1.0, theirs: 2.0})
    picks = _measure.Picks("conv_bn_act", "ours")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    why = picks.reason(("k",), ours, ())
    assert isinstance(why, Transient) and "capture" in why and not calls and ("k",) not in picks
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert picks.reason(("k",), ours, ()) is None
