"""Measuring: the machine's matmul peak, interleaved step timing, the setting.

Timing interleaves contenders: a run is ``rounds`` rounds, and in each
round every contender takes one untimed step (to bring its buffers back
into cache) and then ``steps`` timed ones, each called from Python and
blocked on, each timed on its own. The contenders' order rotates from round
to round and a short pause separates them (so the spinning worker threads
of the previous one have gone to sleep), so load from elsewhere on the
machine falls on all of them alike.

A contender's figure is the median of all its step times. On a shared
machine the step-time distribution has a long tail (the process is
descheduled mid-step); the median ignores the tail, where a mean would
report mostly the other processes. The spread shown beside it is half the
interquartile range of the per-round medians, relative: how much the
figure moved from round to round.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

PEAK_SIZES = (512, 1024, 2048)


def matmul_probe(n: int) -> Callable[[], Any]:
    """A zero-argument step: one jitted float32 ``(n, n) @ (n, n)``, ``2 n^3``
    FLOPs, compiled and warm. Timed among a workload's contenders it gives
    the matmul rate under the same load as their steps."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    return lambda: matmul(a, b)


def matmul_gflops(n: int, repeats: int = 7) -> float:
    """Best float32 GFLOP/s of a jitted ``(n, n) @ (n, n)``, ``2 n^3`` FLOPs."""
    step = matmul_probe(n)
    return 2 * n**3 / min(time_steps(step, repeats)) / 1e9


def matmul_peak(
    sizes: Sequence[int] = PEAK_SIZES, repeats: int = 7
) -> dict[int, float]:
    """GFLOP/s per square size; the machine's peak is the best of them.

    Several sizes, because XLA's CPU matmul is not fastest at the largest:
    on the 2-core development VM 1024 ran ~1.5x faster than 2048.
    """
    return {n: matmul_gflops(n, repeats) for n in sizes}


def time_steps(step: Callable[[], Any], steps: int) -> list[float]:
    """Seconds of each of ``steps`` blocked calls, after one untimed call."""
    jax.block_until_ready(step())
    clock = time.perf_counter
    out = []
    for _ in range(steps):
        tic = clock()
        jax.block_until_ready(step())
        out.append(clock() - tic)
    return out


def interleaved(
    steps_by_name: dict[str, Callable[[], Any]],
    *,
    rounds: int,
    steps: int,
    pause: float = 0.02,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[list[float]]]:
    """Step times of each contender: one list of ``steps`` seconds per round.

    A contender is a zero-argument step, timed here, or an object with a
    ``time_steps(n)`` method (``worker.RemoteStep``), timed in its own
    process. Garbage collection is off while a round runs and done between
    rounds.
    """
    names = list(steps_by_name)
    per_round: dict[str, list[list[float]]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        gc.collect()
        gc.disable()
        try:
            for name in order:
                time.sleep(pause)
                step = steps_by_name[name]
                if hasattr(step, "time_steps"):  # a worker.RemoteStep
                    per_round[name].append(step.time_steps(steps))
                else:
                    per_round[name].append(time_steps(step, steps))
        finally:
            gc.enable()
        if progress:
            progress(f"round {r + 1}/{rounds}")
    return per_round


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> float:
    """Half the interquartile range relative to the median (0 for < 4 values)."""
    if len(values) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4)
    return (q3 - q1) / 2 / statistics.median(values)


def environment(allocator: str) -> dict[str, Any]:
    """What the figures were measured on."""
    versions = {"python": platform.python_version(), "jax": jax.__version__}
    for module in ("jaxlib", "optax", "flax", "equinox", "torch", "numpy"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # not installed, or broken: leave it out
            pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cores": cores,
        "devices": [str(d) for d in jax.devices()],
        "allocator": allocator,
        "load_average_at_start": os.getloadavg(),
        "versions": versions,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
