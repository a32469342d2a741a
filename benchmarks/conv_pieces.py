"""Milliseconds of each convolution and max-pool piece of the CNN workload:
XLA's native ops against the formulation ``fnn._backend`` picks on this backend.

``fnn._backend.use_native()`` chooses at trace time; this script compiles every
piece twice, once with it forced to ``True`` (XLA's ``conv_general_dilated``
and ``reduce_window``, the code before the CPU formulations) and once as the
backend decides, and times both side by side, interleaved, in one process:

- per conv (28x28x1->32, 14x14x32->64, batch 128, 3x3 SAME): forward, ``dw``
  and ``dx`` of the hand-written backward, and ``jax.vjp`` of the forward
  (what ``method="autodiff"`` runs);
- per max pool (2x2 on 28x28x32 and 14x14x64): the same three;
- the dense tail (Flatten, Dense 128, ReLU, Dense 10 on 7x7x64): forward,
  the manual backward's parameter and input gradients, ``jax.vjp``;
- one Adam update of the CNN's parameters (the same on every backend:
  timed once, in the native column);
- the whole training step, ``fnn.train.make_step``, with both methods, and
  PyTorch's eager step (NCHW-contiguous and ``channels_last``, each in a
  worker process of its own, ``benchmarks/worker.py``) when torch is
  installed;
- a 1024 x 1024 float32 matmul (the probe), timed in the same rounds.

Beside each time: the piece's matmul/conv FLOPs (``2 N prod(out) |K| C F``
per conv product; pooling has none) as GFLOP/s and as a share of the
probe's rate, so the gap of each piece to the machine's matmul speed has a
number. These are the direct convolution's FLOPs whatever runs: on CPU fnn
computes 14x14x32->64 by Winograd's F(2x2, 3x3) (``fnn._winograd``), 16/36
of those multiplies, so its share reads as the rate a direct convolution
would need to match it.

Usage (from the repository root)::

    python benchmarks/conv_pieces.py               # tcmalloc when available
    python benchmarks/conv_pieces.py --rounds 20 --allocator system
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import allocator  # noqa: E402  (stdlib only: safe before jax)

BATCH = 128
CONVS = (((28, 28, 1), 32), ((14, 14, 32), 64))  # (input per example, features)
POOLS = ((28, 28, 32), (14, 14, 64))
DENSE_TAIL = "Dense tail 7x7x64 -> 128 -> 10"


@contextlib.contextmanager
def native(forced: bool):
    """Traces inside see ``use_native() == True`` when ``forced``."""
    from fnn import _backend

    chosen = _backend.use_native
    if forced:
        _backend.use_native = lambda: True
    try:
        yield
    finally:
        _backend.use_native = chosen


def compiled(fn, args, forced):
    """``fn(*args)`` jitted and compiled under ``native(forced)``; a
    zero-argument callable for the harness."""
    import jax

    jitted = jax.jit(fn)
    with native(forced):
        jax.block_until_ready(jitted(*args))
    return lambda: jitted(*args)


def layer_pieces(layer, shape, forced):
    """Forward, manual dw (absent for pooling), manual dx and autodiff vjp
    of ``layer`` on a random batch of ``shape`` per example."""
    import jax

    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    out_shape, params, state = layer.init(k1, shape)
    x = jax.random.normal(k2, (BATCH, *shape))
    dy = jax.random.normal(k3, (BATCH, *out_shape))
    if len(shape) == 3 and not params:  # pools see ReLU output: ties at 0
        x = jax.nn.relu(x)

    def forward(p, x):
        return layer.forward(p, state, x)[0]

    def vjp(p, x, dy):
        return jax.vjp(forward, p, x)[1](dy)

    def backward(p, x, dy):  # the cache as the forward makes it
        return layer.backward(p, layer.forward(p, state, x)[2], dy)

    pieces = {"forward": compiled(forward, (params, x), forced)}
    if isinstance(params, dict):
        dw = lambda p, x, dy: backward(p, x, dy)[0]["w"]  # noqa: E731
        pieces["dw (manual)"] = compiled(dw, (params, x, dy), forced)
    elif params:  # a serial: every layer's parameter gradients
        dp = lambda p, x, dy: backward(p, x, dy)[0]  # noqa: E731
        pieces["dparams (manual)"] = compiled(dp, (params, x, dy), forced)
    dx = lambda p, x, dy: backward(p, x, dy)[1]  # noqa: E731
    pieces["dx (manual)"] = compiled(dx, (params, x, dy), forced)
    pieces["vjp (autodiff)"] = compiled(vjp, (params, x, dy), forced)
    return pieces


def adam_piece():
    """One Adam update (``fnn.optim.adam``, then ``optax.apply_updates``) of
    the CNN's parameters with a gradient shaped like them, as the step runs
    it (no backend-specific formulation: timed once)."""
    import jax
    import optax

    import fnn.optim
    from benchmarks import workloads
    from benchmarks.contenders import fnn_steps

    cnn = workloads.WORKLOADS["cnn"]
    _, params, _ = fnn_steps.model(cnn).init(jax.random.key(0), cnn.input_shape)
    grads = jax.tree.map(lambda p: 1e-3 * jax.numpy.ones_like(p), params)
    optimizer = fnn.optim.adam(workloads.LEARNING_RATE)

    def update(params, grads, state):
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return compiled(update, (params, grads, optimizer.init(params)), False)


def step_pieces(forced):
    from benchmarks import workloads
    from benchmarks.contenders import fnn_steps

    cnn = workloads.WORKLOADS["cnn"]
    out = {}
    for method in ("manual", "autodiff"):
        with native(forced):  # make_step's first call traces and compiles
            run = fnn_steps._build(cnn, method)
            run()
        out[f"step ({method})"] = run
    return out


def torch_steps():
    """PyTorch's CNN steps, each contender in a worker process of its own:
    ``{label: RemoteStep}`` (empty without torch) and the workers."""
    from benchmarks.worker import RemoteStep, Worker

    steps, workers = {}, []
    for contender, label in (
        ("torch", "PyTorch eager (NCHW-contiguous)"),
        ("torch-channels-last", "PyTorch eager (channels_last)"),
    ):
        worker = Worker()
        workers.append(worker)
        reply = worker.ask(op="build", workload="cnn", contender=contender)
        if "skip" not in reply:
            steps[label] = RemoteStep(worker, contender)
    return steps, workers


def piece_flops(group, piece):
    """Matmul/conv FLOPs of one timed piece (0 for pooling)."""
    from benchmarks import workloads

    if group == "CNN training step":
        return workloads.WORKLOADS["cnn"].step_flops()
    if group == DENSE_TAIL:
        forward = sum(2 * BATCH * i * o for i, o in workloads.CNN_DENSE)
        return forward * (2 if piece.startswith("vjp") else 1)
    for (h, w, c), f in CONVS:
        if group == f"Conv {h}x{w}x{c}->{f}":
            product = 2 * BATCH * h * w * 9 * c * f  # 3x3 SAME, stride 1
            return 2 * product if piece.startswith("vjp") else product
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--allocator", choices=("auto", "system"), default="auto")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--steps", type=int, default=5, help="timed calls per round")
    args = p.parse_args(argv)
    allocator.ensure(args.allocator)

    import jax

    from benchmarks import harness
    from fnn import layers as nn
    from fnn.conv import Conv
    from fnn.pool import MaxPool

    rows = []  # (group, piece)
    timed = {}  # (group, piece, "native" | "chosen") -> zero-argument call
    groups = [(f"Conv {s[0]}x{s[1]}x{s[2]}->{f}", Conv(f, (3, 3)), s) for s, f in CONVS]
    groups += [(f"MaxPool 2x2 {s[0]}x{s[1]}x{s[2]}", MaxPool((2, 2)), s) for s in POOLS]
    tail = nn.serial(nn.Flatten(), nn.Dense(128), nn.Relu, nn.Dense(10))
    groups.append((DENSE_TAIL, tail, (7, 7, 64)))
    for group, layer, shape in groups:
        for forced, column in ((True, "native"), (False, "chosen")):
            for piece, call in layer_pieces(layer, shape, forced).items():
                timed[group, piece, column] = call
                if column == "native":
                    rows.append((group, piece))
    timed["Adam", "update of the CNN's parameters", "native"] = adam_piece()
    rows.append(("Adam", "update of the CNN's parameters"))
    for forced, column in ((True, "native"), (False, "chosen")):
        for piece, call in step_pieces(forced).items():
            timed["CNN training step", piece, column] = call
            if column == "native":
                rows.append(("CNN training step", piece))
    torch, workers = torch_steps()
    for label, step in torch.items():
        timed["CNN training step", label, "native"] = step
        rows.append(("CNN training step", label))
    timed["probe", "matmul 1024", "native"] = harness.matmul_probe(1024)

    names = {key: " / ".join(key) for key in timed}
    try:
        per_round = harness.interleaved(
            {names[key]: call for key, call in timed.items()},
            rounds=args.rounds,
            steps=args.steps,
        )
    finally:
        for worker in workers:
            worker.close()
    ms = {
        key: 1e3 * harness.median([t for r in per_round[names[key]] for t in r])
        for key in timed
    }

    import os

    probe = 2 * 1024**3 / ms["probe", "matmul 1024", "native"] / 1e6  # GFLOP/s
    print(f"backend {jax.default_backend()}, allocator {allocator.describe()}")
    print(f"median ms of {args.rounds} x {args.steps} interleaved calls, batch {BATCH}")
    print(
        f"matmul probe (1024^3, same rounds): {probe:.1f} GFLOP/s; load average "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    print(
        f"{'':44s} {'XLA native':>10s} {'fnn picks':>10s} {'':6s} "
        f"{'GFLOP':>6s} {'GFLOP/s':>8s} {'% mm':>5s}"
    )
    last = None
    for group, piece in rows:
        if group != last:
            print(group)
            last = group
        a = ms[group, piece, "native"]
        b = ms.get((group, piece, "chosen"))
        shown = f"{b:10.2f}  x{a / b:4.2f}" if b is not None else f"{'':17s}"
        flops = piece_flops(group, piece)
        if flops:
            rate = flops / (b if b is not None else a) / 1e6
            shown += f" {flops / 1e9:6.3f} {rate:8.1f} {rate / probe:5.0%}"
        print(f"  {piece:42s} {a:10.2f} {shown}")
    print(
        "GFLOP/s and % mm: of the time in the 'fnn picks' column (PyTorch: "
        "its own), against the probe's rate."
    )


if __name__ == "__main__":
    main()
