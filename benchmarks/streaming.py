"""Time per step of ``fit`` streaming from a memory-mapped file, against in memory.

Issue 18's target: on the ``mlp`` workload, ``fnn.train.fit`` fed batches
streamed from memory-mapped ``.npy`` files (``fnn.data.memmap_batches``,
shuffled per epoch) trains within 1.1x the time per step of ``fit`` on the
same data held in memory (its epoch one compiled loop over minibatches
gathered on the device).

Contenders, on the same model, optimizer, batch size and examples, each
the training source ``fit`` builds for its data (``fit`` calls its
``run_epoch`` once per epoch and records that call's time in
``history["time"]``), built and compiled once; rounds of one epoch of each,
in turn, the order rotating (so the load of a shared machine falls on all
alike):

- ``in-memory``: ``fit(..., (x, y))`` with ``x``, ``y`` device arrays, the
  default epoch form (one compiled loop over minibatches gathered on the
  device);
- ``in-memory-loop``: the same with ``scan=False`` (a loop of jitted steps,
  one dispatch each), for reference;
- ``memmap``: ``fit(..., lambda epoch: data.memmap_batches(x.npy, y.npy,
  batch, seed=0, epoch=epoch, drop_remainder=True))``: each batch gathered
  from the mapped files on the host (a new shuffle each epoch) and checked;
  chunks of 16 batches stacked, put on the device one chunk ahead and run
  as one compiled loop each (``fnn._stream``);
- ``memmap-loop``: the same stream with ``scan=False``: one jitted call per
  step, each batch put on the device two steps ahead (what streams did
  before the chunks).

Time per step: an epoch's time (the steps, the shuffling and, for the
stream, reading the files) over its steps. The compiling epoch is left
out. The files sit in the page cache after the first epoch, as a data set
larger than memory would not: this measures fnn's overhead, not the disk.

Usage (from the repository root)::

    python benchmarks/streaming.py              # mlp, 20 rounds
    python benchmarks/streaming.py --quick      # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import allocator  # noqa: E402  (stdlib only: safe before jax)

TARGET = 1.1  # memmap time per step / in-memory time per step, at most


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="mlp")
    p.add_argument("--steps-per-epoch", type=int, help="default 100 (--quick 8)")
    p.add_argument("--rounds", type=int, help="rounds, an epoch of each contender "
                   "(default 20, --quick 2)")  # fmt: skip
    p.add_argument("--contenders",
                   default="in-memory,in-memory-loop,memmap,memmap-loop")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="smoke run")
    p.add_argument("--allocator", choices=("auto", "system"), default="auto")
    p.add_argument("--json", metavar="PATH")
    return p.parse_args(argv)


def note(text):
    print(text, file=sys.stderr, flush=True)


def write_files(folder: Path, workload, n: int) -> tuple[Path, Path]:
    """Synthetic ``x.npy`` and ``y.npy`` of ``n`` examples, written in chunks."""
    import numpy as np

    rng = np.random.default_rng(0)
    xp, yp = folder / "x.npy", folder / "y.npy"
    x = np.lib.format.open_memmap(xp, "w+", np.float32, (n, *workload.input_shape))
    mse = workload.loss == "mse"  # float targets (n, outputs), else int labels
    y_shape, y_type = ((n, workload.outputs), np.float32) if mse else ((n,), np.int32)
    y = np.lib.format.open_memmap(yp, "w+", y_type, y_shape)
    for start in range(0, n, 4096):
        stop = min(n, start + 4096)
        x[start:stop] = rng.standard_normal((stop - start, *workload.input_shape),
                                            dtype=np.float32)  # fmt: skip
        if mse:
            y[start:stop] = rng.standard_normal((stop - start, workload.outputs))
        else:
            y[start:stop] = rng.integers(0, workload.outputs, stop - start)
    x.flush(), y.flush()
    del x, y
    return xp, yp


def runner(workload, xp, yp):
    """``run(contender) -> seconds``: one more epoch of that contender.

    Each contender is the training source ``fit`` builds for its data
    (``fnn._train_checks.sources``: an ``fnn._epoch.InMemory`` or an
    ``fnn._stream.Stream``), built and compiled once, with its own
    ``(params, state, opt_state)``; an epoch is ``source.run_epoch``, the
    call ``fit`` times into ``history["time"]``. Building each source once
    lets the contenders alternate epoch by epoch, without compiling again.
    """
    import jax
    import numpy as np

    import fnn.optim
    from benchmarks.contenders.fnn_steps import loss_of, model
    from fnn import _epoch, _train_checks, data, train
    from fnn.progress import Progress

    net, loss, optimizer = model(workload), loss_of(workload), fnn.optim.adam(1e-3)
    _, params, state = net.init(jax.random.key(0), workload.input_shape)
    arrays = (jax.device_put(np.load(xp)), jax.device_put(np.load(yp)))
    batch, key = workload.batch, jax.random.key(0)
    step = train._step_fn(net, loss, optimizer, "autodiff")

    def stream(epoch):
        return data.memmap_batches(xp, yp, batch, seed=0, epoch=epoch,
                                   drop_remainder=True)  # fmt: skip

    contenders = {}
    for name, train_data, scan in (("in-memory", arrays, True),
                                   ("in-memory-loop", arrays, False),
                                   ("memmap", stream, True),
                                   ("memmap-loop", stream, False)):  # fmt: skip
        source, _ = _train_checks.sources(net, loss, params, state, train_data, None,
                                          key, batch, step, scan, None)  # fmt: skip
        carry = _epoch.copy((params, state, optimizer.init(params)))
        contenders[name] = [source, carry, 0]

    def run(name):
        entry = contenders[name]
        source, carry, epoch = entry
        display = Progress(10**6, source.num_steps, show=False)
        tic = time.perf_counter()
        carry, losses = source.run_epoch(carry, epoch + 1, display)
        seconds = time.perf_counter() - tic
        assert np.all(np.isfinite(losses)) and len(losses) > 0, name
        entry[1:] = [carry, epoch + 1]
        return seconds

    return run


def main(argv=None):
    args = parse_args(argv)
    allocator.ensure(args.allocator)
    import json

    from benchmarks import harness
    from benchmarks.workloads import WORKLOADS

    if args.workload not in WORKLOADS:
        sys.exit(f"unknown workload {args.workload!r}; choose from {sorted(WORKLOADS)}")
    workload = WORKLOADS[args.workload]
    steps = args.steps_per_epoch or (8 if args.quick else 100)
    rounds = args.rounds or (2 if args.quick else 20)
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    env = harness.environment(allocator.describe())
    seconds = {c: [] for c in contenders}
    paired = {c: [] for c in contenders}  # per round: epoch / first's epoch
    with tempfile.TemporaryDirectory() as tmp:
        xp, yp = write_files(Path(tmp), workload, steps * workload.batch)
        run = runner(workload, xp, yp)
        for c in contenders:  # compile, and read the files into the page cache
            run(c)
        for r in range(rounds):
            if r % 5 == 0:
                load = os.getloadavg()[0]
                note(f"{workload.name}: round {r + 1}/{rounds}, load {load:.2f}")
            turn = r % len(contenders)
            order = contenders[turn:] + contenders[:turn]
            this_round = {c: run(c) for c in order}
            for c, value in this_round.items():
                seconds[c].append(value)
                paired[c].append(value / this_round[contenders[0]])
    load_end = os.getloadavg()

    base = harness.median(seconds[contenders[0]]) / steps
    rows = []
    for name, values in seconds.items():
        per_step = harness.median(values) / steps
        rows.append({"contender": name, "ms_per_step": per_step * 1e3,
                     "best_ms_per_step": min(values) / steps * 1e3,
                     "spread": harness.spread(values),
                     "vs_first": per_step / base,
                     "paired": harness.median(paired[name]),
                     "paired_rounds": paired[name], "epoch_s": values})  # fmt: skip

    print(f"fnn.train.fit on {workload.name} ({workload.note}): streamed from "
          f"memory-mapped .npy files vs in memory")  # fmt: skip
    print(f"  cpu: {env['processor']} ({env['cores']} cores); devices: "
          f"{', '.join(env['devices'])}")  # fmt: skip
    print(f"  allocator: {env['allocator']}")
    load = ", ".join(f"{x:.2f}" for x in env["load_average_at_start"])
    print(f"  load average (1, 5, 15 min) at start: {load}; at end: "
          f"{', '.join(f'{x:.2f}' for x in load_end)}")  # fmt: skip
    print(f"  {steps} steps/epoch, {rounds} rounds of one epoch of each contender "
          f"(in turn, the order rotating)")  # fmt: skip
    print()
    head = (f"{'contender':<16} {'ms/step':>9} {'best':>9} {'+-':>6} "
            f"{'vs ' + contenders[0]:>14} {'paired':>8}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['contender']:<16} {r['ms_per_step']:>9.3f} "
              f"{r['best_ms_per_step']:>9.3f} {r['spread']:>5.0%} "
              f"{r['vs_first']:>13.3f}x {r['paired']:>7.3f}x")  # fmt: skip
    print()
    print(f"ms/step: median epoch time over steps; best: the fastest epoch; +-: half "
          f"the interquartile range over the median; paired: the median over rounds "
          f"of the epoch's time over {contenders[0]}'s in the same round (what the "
          f"load of a shared machine disturbs least).")  # fmt: skip
    by_name = {r["contender"]: r for r in rows}
    if "memmap" in by_name and "in-memory" in by_name:
        ratio = by_name["memmap"]["ms_per_step"] / by_name["in-memory"]["ms_per_step"]
        best = (by_name["memmap"]["best_ms_per_step"]
                / by_name["in-memory"]["best_ms_per_step"])  # fmt: skip
        pair = harness.median(paired["memmap"]) / harness.median(paired["in-memory"])
        figures = (f"paired {pair:.3f}x (medians {ratio:.3f}x, best against best "
                   f"{best:.3f}x)")  # fmt: skip
        if workload.name == "mlp":
            holds = "HOLDS" if pair <= TARGET else "FAILS"
            print(f"target: [{holds}] memmap within {TARGET:g}x of in-memory per "
                  f"step: {figures}")  # fmt: skip
        else:
            print(f"memmap against in-memory per step (the target is set on mlp): "
                  f"{figures}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "load_average_at_end": load_end,
                       "results": rows}, f, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
