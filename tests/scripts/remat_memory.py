"""Peak memory and time of a deep MLP's training step, with and without remat.

    python tests/scripts/remat_memory.py [--depth 16] [--width 1024]
        [--batch 1024] [--steps 20]

Memory is XLA's own account of the compiled step
(``jax.jit(step).lower(...).compile().memory_analysis()``): the temporary
buffers (activations kept for the backward pass live there), next to the
arguments and outputs (parameters, optimizer state, batch). Time: ``--steps``
interleaved rounds over all configurations after a warm-up; the minimum
and the median per configuration. Blocks: ``none`` keeps every
activation; ``k`` wraps every run of ``k`` (Dense, Relu) pairs in one
``remat``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from fnn import layers as L
from fnn import losses, optim, train
from fnn.remat import remat


def deep_mlp(depth, width, block):
    """``depth`` (Dense, Relu) pairs and a Dense(10) head; with ``block``,
    each run of ``block`` pairs is one ``remat``."""
    layers = [layer for _ in range(depth) for layer in (L.Dense(width), L.Relu)]
    if block:
        step = 2 * block
        layers = [remat(*layers[i : i + step]) for i in range(0, len(layers), step)]
    return L.serial(*layers, L.Dense(10))


def compile_step(depth, width, batch, block, method):
    model = deep_mlp(depth, width, block)
    _, params, state = model.init(jax.random.key(0), (784,))
    opt = optim.sgd(0.01)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 784)), jnp.float32)
    y = jnp.asarray(np.arange(batch) % 10, jnp.int32)
    step = train.make_step(model, losses.softmax_cross_entropy, opt, method=method)
    args = (params, state, opt.init(params), x, y, None)
    return step.lower(*args).compile(), args


def time_once(compiled, args):
    fresh = jax.tree.map(jnp.copy, args[:3])  # the step donates them
    jax.block_until_ready(fresh)
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*fresh, *args[3:]))
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--blocks", default="0,1,4")
    a = p.parse_args()
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; depth {a.depth}, "
        f"width {a.width}, batch {a.batch}"
    )
    configs = [
        (method, int(block))
        for method in ("manual", "autodiff")
        for block in a.blocks.split(",")
    ]
    steps = {c: compile_step(a.depth, a.width, a.batch, c[1], c[0]) for c in configs}
    times = {c: [] for c in configs}
    for c in configs:  # warm-up
        time_once(*steps[c])
    # Interleaved rounds, so that a busy machine slows every configuration
    # alike; the minimum is the least disturbed run.
    for _ in range(a.steps):
        for c in configs:
            times[c].append(time_once(*steps[c]))
    print("method    remat block  temp MiB  args MiB  min ms  median ms")
    for c in configs:
        mem = steps[c][0].memory_analysis()
        print(
            f"{c[0]:9s} {c[1] or 'none':>11}  {mem.temp_size_in_bytes / 2**20:8.1f}  "
            f"{mem.argument_size_in_bytes / 2**20:8.1f}  {1e3 * min(times[c]):6.1f}  "
            f"{1e3 * float(np.median(times[c])):9.1f}"
        )


if __name__ == "__main__":
    main()
