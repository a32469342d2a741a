"""Epochs per second: ``fnn.train.fit`` (one compiled scan per epoch) against
a Python loop of jitted steps over the same minibatches.

Both train the same model on the same on-device data with shuffled
minibatches of the workload's batch size:

- ``fit``: ``fnn.train.fit``, whose epoch is one ``lax.scan`` over the
  minibatches (one Python call per epoch). ``fit-wall`` is the time from the
  end of one epoch to the end of the next (everything ``fit`` does per
  epoch: the scan, the copy of the per-step losses to the host, the copy of
  the state it keeps to roll back a non-finite step); ``fit-scan`` the part
  it records in ``history["time"]``. The first epoch (compilation) is left
  out.
- ``fit-loop``: ``fit(scan=False)``, which runs the same minibatches as a
  Python loop of jitted steps (its default for convolutional models on
  CPU), timed like ``fit-wall``.
- ``loop``: the step of ``fnn.train.make_step`` called once per minibatch
  from Python, inside a jitted wrapper that gathers the minibatch from the
  on-device data by index (``x[idx]``), so the loop itself does no host work
  but the call. The epoch's permutation is made on the device and split
  into per-step index arrays before the clock starts (in the loop's
  favour). Two variants: ``loop-async`` blocks once at the end of the
  epoch (JAX's asynchronous dispatch overlaps Python with compute);
  ``loop-blocking`` blocks on every step, as ``run.py`` does.

Usage (from the repository root)::

    python benchmarks/epochs.py                  # tiny and mlp
    python benchmarks/epochs.py --quick
    python benchmarks/epochs.py --steps-per-epoch 500 --json epochs.json

Target: ``fit`` (``fit-wall``) at least 5x faster per step than the loop
(``loop-async``) on ``tiny``, and not slower on ``mlp``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import allocator  # noqa: E402  (stdlib only: safe before jax)

TARGETS = {"tiny": 5.0, "mlp": 1.0}  # minimum loop / fit time-per-step ratio


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="tiny,mlp")
    p.add_argument("--steps-per-epoch", type=int, help="default 200 (--quick 20)")
    p.add_argument("--epochs", type=int, help="epochs per round (default 5, --quick 2)")
    p.add_argument("--rounds", type=int, help="rounds (default 3, --quick 1)")
    p.add_argument("--quick", action="store_true", help="smoke run")
    p.add_argument("--allocator", choices=("auto", "system"), default="auto")
    p.add_argument("--json", metavar="PATH")
    return p.parse_args(argv)


def note(text):
    print(text, file=sys.stderr, flush=True)


class _EpochStamps(io.TextIOBase):
    """A stdout that notes the time of each of ``fit``'s verbose epoch lines."""

    def __init__(self):
        self.times = []

    def write(self, text):
        if text.startswith("epoch"):
            self.times.append(time.perf_counter())
        return len(text)


def time_fit(workload, data, epochs, key, scan=True):
    """``(scan, wall)``: seconds per epoch of one ``fit`` call, first epoch
    (compilation) left out. ``scan`` is what ``fit`` records in
    ``history["time"]``; ``wall`` is the time between the ends of
    consecutive epochs (taken from ``verbose=True``'s lines), which also
    counts the work ``fit`` does between scans."""
    import jax

    import fnn.optim
    import fnn.train
    from benchmarks.contenders.fnn_steps import loss_of, model

    net = model(workload)
    _, params, state = net.init(jax.random.key(0), workload.input_shape)
    stamps = _EpochStamps()
    with contextlib.redirect_stdout(stamps):
        result = fnn.train.fit(
            net,
            loss_of(workload),
            fnn.optim.adam(1e-3),
            params,
            state,
            data,
            key=key,
            epochs=epochs + 1,
            batch_size=workload.batch,
            progress=False,
            verbose=True,
            scan=scan,
        )
    wall = [b - a for a, b in zip(stamps.times[:-1], stamps.times[1:])]
    return result.history["time"][1:], wall


def loop_runner(workload, data):
    """``run_epoch(key, block_each_step) -> seconds`` for the Python loop."""
    from functools import partial

    import jax

    import fnn.optim
    import fnn.train
    from benchmarks.contenders.fnn_steps import loss_of, model

    net = model(workload)
    _, params, state = net.init(jax.random.key(0), workload.input_shape)
    optimizer = fnn.optim.adam(1e-3)
    opt_state = optimizer.init(params)
    step = fnn.train.make_step(net, loss_of(workload), optimizer)
    x, y = data
    num_steps = len(x) // workload.batch

    @partial(jax.jit, donate_argnums=(0, 1, 2))
    def gathered_step(params, state, opt_state, x, y, idx):
        return step(params, state, opt_state, x[idx], y[idx], None)

    @jax.jit
    def permutation(key):
        perm = jax.random.permutation(key, len(x))[: num_steps * workload.batch]
        return perm.reshape(num_steps, workload.batch)

    carry = [params, state, opt_state]

    def run_epoch(key, block_each_step):
        perm = permutation(key)
        batches = [perm[i] for i in range(num_steps)]
        jax.block_until_ready(batches)
        params, state, opt_state = carry
        losses = []
        tic = time.perf_counter()
        for idx in batches:
            params, state, opt_state, loss = gathered_step(
                params, state, opt_state, x, y, idx
            )
            if block_each_step:
                loss.block_until_ready()
            losses.append(loss)
        jax.device_get(losses)  # like fit: every step's loss reaches the host
        seconds = time.perf_counter() - tic
        carry[:] = [params, state, opt_state]
        return seconds

    run_epoch(jax.random.key(1), False)  # compile
    return run_epoch


def measure(workload, args):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import harness

    steps = args.steps_per_epoch or (20 if args.quick else 200)
    epochs = args.epochs or (2 if args.quick else 5)
    rounds = args.rounds or (1 if args.quick else 3)
    rng = np.random.default_rng(0)
    n = steps * workload.batch
    x = rng.standard_normal((n, *workload.input_shape), dtype=np.float32)
    if workload.loss == "mse":
        y = rng.standard_normal((n, workload.outputs), dtype=np.float32)
    else:
        y = rng.integers(0, workload.outputs, n).astype(np.int32)
    data = (jax.device_put(jnp.asarray(x)), jax.device_put(jnp.asarray(y)))
    run_epoch = loop_runner(workload, data)
    seconds = {
        "fit-wall": [],
        "fit-scan": [],
        "fit-loop": [],
        "loop-async": [],
        "loop-blocking": [],
    }
    key = jax.random.key(2)
    for r in range(rounds):
        note(f"{workload.name}: round {r + 1}/{rounds}")
        key, fit_key = jax.random.split(key)
        scan, wall = time_fit(workload, data, epochs, fit_key)
        seconds["fit-scan"] += scan
        seconds["fit-wall"] += wall
        seconds["fit-loop"] += time_fit(workload, data, epochs, fit_key, scan=False)[1]
        for variant, block in (("loop-async", False), ("loop-blocking", True)):
            for _ in range(epochs):
                key, k = jax.random.split(key)
                seconds[variant].append(run_epoch(k, block))
    fit_step = harness.median(seconds["fit-wall"]) / steps
    rows = []
    for name, values in seconds.items():
        epoch = harness.median(values)
        rows.append(
            {
                "workload": workload.name,
                "method": name,
                "steps_per_epoch": steps,
                "epochs_per_s": 1 / epoch,
                "ms_per_step": epoch / steps * 1e3,
                "vs_fit": epoch / steps / fit_step,
                "epoch_s": values,
            }
        )
    return rows


def main(argv=None):
    args = parse_args(argv)
    allocator.ensure(args.allocator)
    import json

    from benchmarks import harness
    from benchmarks.workloads import WORKLOADS

    env = harness.environment(allocator.describe())
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for name in names:
        if name not in WORKLOADS:
            sys.exit(f"unknown workload {name!r}; choose from {sorted(WORKLOADS)}")
    rows = []
    for name in names:
        rows += measure(WORKLOADS[name], args)

    print("fnn.train.fit (scan per epoch) vs a Python loop of jitted steps")
    cpu = f"{env['processor']} ({env['cores']} cores)"
    print(f"  cpu: {cpu}; allocator: {env['allocator']}")
    load = ", ".join(f"{x:.2f}" for x in env["load_average_at_start"])
    print(f"  load average (1, 5, 15 min) at start: {load}")
    print()
    head = (
        f"{'workload':<10} {'method':<14} {'steps/epoch':>11} {'epochs/s':>9} "
        f"{'ms/step':>9} {'time vs fit':>11}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['workload']:<10} {r['method']:<14} {r['steps_per_epoch']:>11} "
            f"{r['epochs_per_s']:>9.2f} {r['ms_per_step']:>9.4f} {r['vs_fit']:>10.2f}x"
        )
    print()
    print(
        "fit-wall: fnn.train.fit, time from the end of one epoch to the end of the "
        "next (everything fit does per epoch); fit-scan: the part fit records in "
        "history['time'] (the compiled scan and the copy of its losses to the "
        "host); fit-loop: fit(scan=False), the same epochs as a loop of jitted "
        "steps, wall time as fit-wall; loop-async: Python loop of jitted "
        "steps, blocking once per epoch; "
        "loop-blocking: blocking after every step. Medians over epochs; the "
        "first epoch of each fit (compilation) left out. time vs fit: ms/step "
        "over fit-wall's."
    )
    print()
    print("targets (loop-async time per step / fit-wall time per step):")
    for r in rows:
        need = TARGETS.get(r["workload"])
        if r["method"] == "loop-async" and need is not None:
            holds = r["vs_fit"] >= need
            print(
                f"  [{'HOLDS' if holds else 'FAILS'}] {r['workload']}: fit >= "
                f"{need:g}x faster per step than the loop: {r['vs_fit']:.2f}x"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"environment": env, "results": rows},
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
