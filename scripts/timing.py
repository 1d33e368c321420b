"""The timing harness every benchmark in scripts/ uses (issue 26, item 2): compared programs interleaved over rounds.

A figure from one timing window per program, taken once on a shared machine, is not a measurement (issue 26:
three back-to-back runs of the old gridworld bench gave crl/NAVIX 2.00, 0.29 and 0.81). Here:

- every program is warmed up (compilation, caches, first allocations) before any window is timed;
- round r times one window of every program, in an order rotated by r, so no program always runs first or
  right after the same neighbour and a load spike lands on all of them alike;
- each program's rate is reported as the median over rounds with its spread (min–max and IQR);
- a ratio between two programs is taken per round (a/b within the same round, so both saw the same load) and
  its median and min–max reported;
- the run records what it ran on: the CPUs the process may use (all programs share them: one process),
  each program's threads as the bench declares them, torch's intra-op threads, and the load average before
  and after (a busy machine shows there, not only in the spread).

    from timing import Program, measure, report
    results = measure([Program("crl 64", block, units=6400, threads="1 torch thread")], rounds=5, seconds=1.0)
    print(report(results))
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence


@dataclass(frozen=True)
class Program:
    """One compared program: ``block()`` does ``units`` units of work (env steps, updates, ...) and returns when
    they are done (a CUDA or JAX bench synchronises inside it). ``threads``: how many threads it computes on,
    in words (printed with the results)."""

    name: str
    block: Callable[[], object]
    units: int
    threads: str = "1"
    warmup_calls: int = 2


@dataclass
class Results:
    names: list[str]
    rates: dict[str, list[float]]  # units/s per round, in round order
    unit: str = "steps"
    context: dict[str, str] = field(default_factory=dict)
    threads: dict[str, str] = field(default_factory=dict)


def interleaved_order(names: Sequence[str], rounds: int) -> list[list[str]]:
    """The programs' order in each round: round r starts at program r mod k (a rotation)."""
    k = len(names)
    return [[names[(r + i) % k] for i in range(k)] for r in range(rounds)]


def time_window(block: Callable[[], object], units: int, seconds: float,
                clock: Callable[[], float] = time.perf_counter) -> float:
    """units/s of ``block`` called repeatedly for at least ``seconds`` (at least once)."""
    calls, start = 0, clock()
    while True:
        block()
        calls += 1
        elapsed = clock() - start
        if elapsed >= seconds:
            return calls * units / elapsed


def spread(values: Sequence[float]) -> dict[str, float]:
    """median, min, max and the interquartile range (quartiles by statistics.quantiles' inclusive method)."""
    values = list(values)
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "q1": q1, "q3": q3}


def ratio_per_round(results: Results, a: str, b: str) -> list[float]:
    """a's rate over b's, each round on its own (the pair timed under the same conditions)."""
    return [x / y for x, y in zip(results.rates[a], results.rates[b])]


def machine_context() -> dict[str, str]:
    context = {"cpus": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())}
    if hasattr(os, "getloadavg"):
        context["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        import torch

        context["torch"] = f"{torch.__version__}, {torch.get_num_threads()} intra-op thread(s)"
    except ImportError:
        pass
    return context


def pin_cores(spec: str | None) -> None:
    """Restrict this process (every program it times) to the listed cores, e.g. "0,1"; None leaves it as is."""
    if spec:
        os.sched_setaffinity(0, {int(c) for c in spec.split(",")})


def measure(programs: Sequence[Program], rounds: int = 5, seconds: float = 1.0, unit: str = "steps",
            clock: Callable[[], float] = time.perf_counter, log: Callable[[str], None] | None = None) -> Results:
    """Warm every program up, then ``rounds`` interleaved rounds of one ``seconds`` window per program."""
    by_name = {p.name: p for p in programs}
    if len(by_name) != len(programs):
        raise ValueError("program names must be distinct")
    before = machine_context()
    for p in programs:
        for _ in range(p.warmup_calls):
            p.block()
    rates: dict[str, list[float]] = {p.name: [] for p in programs}
    for r, order in enumerate(interleaved_order(list(by_name), rounds)):
        for name in order:
            p = by_name[name]
            rates[name].append(time_window(p.block, p.units, seconds, clock))
        if log:
            log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {rates[n][-1]:,.0f}" for n in by_name))
    context = {"cpus": before["cpus"], "load before": before.get("load", "?"),
               "load after": machine_context().get("load", "?"), "rounds": str(rounds), "window": f"{seconds:g} s"}
    if "torch" in before:
        context["torch"] = before["torch"]
    return Results(list(by_name), rates, unit, context, {p.name: p.threads for p in programs})


def report(results: Results, ratios: Sequence[tuple[str, str]] = ()) -> str:
    """A table: per program median units/s, min–max, IQR, threads; then each ratio's per-round median and range."""
    lines = ["; ".join(f"{k}: {v}" for k, v in results.context.items())]
    width = max(len(n) for n in results.names)
    lines.append(f"{'program':<{width}}  {'median ' + results.unit + '/s':>18}  {'min–max':>25}  {'IQR':>25}  threads")
    def num(x: float, w: int, align: str = ">") -> str:
        return f"{x:{align}{w},.0f}" if x >= 100 else f"{x:{align}{w}.2f}"  # slow programs keep two decimals

    for name in results.names:
        s = spread(results.rates[name])
        lines.append(f"{name:<{width}}  {num(s['median'], 18)}  {num(s['min'], 12)}–{num(s['max'], 12, '<')}"
                     f"  {num(s['q1'], 12)}–{num(s['q3'], 12, '<')}  {results.threads[name]}")
    for a, b in ratios:
        s = spread(ratio_per_round(results, a, b))
        r = {k: f"{v:.2f}" if v >= 0.01 else f"{v:.3g}" for k, v in s.items()}
        lines.append(f"{a} / {b}: median {r['median']} (per round, min–max {r['min']}–{r['max']})")
    return "\n".join(lines)
