"""scripts/timing.py, the harness every benchmark uses (issue 26, item 2): its pure logic on a fake clock."""

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("timing", Path(__file__).resolve().parents[1] / "scripts" / "timing.py")
timing = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("timing", timing)
_spec.loader.exec_module(timing)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_interleaved_order_rotates_every_program_once_per_round():
    order = timing.interleaved_order(["a", "b", "c"], 4)
    assert order == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_measure_warms_up_then_interleaves_windows_and_computes_rates():
    clock, calls = FakeClock(), []
    # per round, a's speed and b's change together (the machine's load), and a is always 5x b:
    # a: 10 units per call; b: 5 units per call; a call of a takes 0.1 s * slowdown, of b 0.25 s * slowdown.
    slowdown = {"value": 1.0}

    def block(name, dt):
        def run():
            calls.append(name)
            clock.now += dt * slowdown["value"]
        return run

    programs = [timing.Program("a", block("a", 0.1), units=10, warmup_calls=1),
                timing.Program("b", block("b", 0.25), units=5, warmup_calls=1)]
    rounds_seen = []

    def log(line):
        rounds_seen.append(line)
        slowdown["value"] *= 2  # the next round runs twice as slow

    res = timing.measure(programs, rounds=3, seconds=1.0, clock=clock, log=log)
    # warm-ups first, then the windows (each lasts until 1 s has passed on the clock)
    assert calls[:2] == ["a", "b"]
    # round 1: a then b; round 2 (2x slower): b then a; round 3 (4x slower): a then b
    assert calls[2:] == ["a"] * 10 + ["b"] * 4 + ["b"] * 2 + ["a"] * 5 + ["a"] * 3 + ["b"] * 1
    assert res.rates["a"] == pytest.approx([100.0, 50.0, 25.0])
    assert res.rates["b"] == pytest.approx([20.0, 10.0, 5.0])
    assert timing.ratio_per_round(res, "a", "b") == pytest.approx([5.0, 5.0, 5.0])
    assert len(rounds_seen) == 3
    text = timing.report(res, ratios=[("a", "b")])
    assert "a / b: median 5.00" in text and "cpus:" in text and "load before" in text


def test_spread_median_min_max_iqr():
    s = timing.spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["min"], s["max"], s["q1"], s["q3"]) == (3.0, 1.0, 5.0, 2.0, 4.0)
    assert timing.spread([7.0])["median"] == 7.0


def test_time_window_runs_at_least_once_and_until_the_window_is_full():
    clock = FakeClock()

    def slow():
        clock.now += 3.0

    assert timing.time_window(slow, units=6, seconds=1.0, clock=clock) == pytest.approx(2.0)


def test_duplicate_program_names_refused():
    p = timing.Program("x", lambda: None, units=1)
    with pytest.raises(ValueError):
        timing.measure([p, p], rounds=1, seconds=0.0)
