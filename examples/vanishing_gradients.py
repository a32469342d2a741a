"""Vanishing gradients in numbers: a 20-layer sigmoid MLP, its ReLU and residual fixes.

Backpropagation multiplies the output's gradient by one Jacobian per layer.
For a sigmoid layer that Jacobian is ``diag(sigmoid'(z)) W^T`` with
``sigmoid' <= 1/4``: twenty of them shrink the gradient geometrically, so the
first layers of a deep sigmoid network get almost no signal and barely learn.
Three 20-layer networks of the same width show it, at initialisation, on one
batch of the bundled digits:

- **sigmoid**: Dense - Sigmoid, twenty times (Glorot init). The first
  layer's gradient is many orders of magnitude below the last one's.
- **relu**: Dense - ReLU with He init (variance ``2 / fan_in``, making up
  for ReLU zeroing half its inputs): ``relu' = 1`` on the active half, so
  the gradient keeps its size through the depth.
- **residual**: the sigmoid layers again, each wrapped in a skip connection
  ``y = x + sigmoid(x W + b)`` (``fnn.layers.residual``). Its backward is
  ``dx = dy + (sigmoid'(x W + b) * dy) W^T``: the identity path carries the
  backward signal to the first layer undiminished. (A layer's weight
  gradient is its input times that signal; the inputs grow along the skips,
  so the first layer's is still somewhat smaller than the last one's.)

For each network `fnn.backprop.check` first proves the hand-written
gradients equal to autodiff and finite differences; then the per-layer
gradient norms (`fnn.backprop.grad_norms` of the manual gradient) are
printed as a table and plotted on a log scale.

Run: python examples/vanishing_gradients.py [--depth 20] [--width 64]
         [--plot vanishing_gradients.png] [--quick]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from fnn import backprop, data, initializers, losses
from fnn import layers as L

from _shared import finish, pyplot


def networks(depth: int, width: int) -> dict[str, L.Layer]:
    """Three ``depth``-layer MLPs of ``width`` units, then Dense(10) logits.

    Each hidden layer is one Dense with its activation; in the residual net
    the first has no skip (it changes the width from the 64 pixels) and the
    other ``depth - 1`` are wrapped in skip connections.
    """
    glorot, he = initializers.glorot_normal(), initializers.he_normal()

    def plain(act, init):
        return [L.serial(L.Dense(width, kernel_init=init), act) for _ in range(depth)]

    # y = x + sigmoid(x W + b): the branch is Dense, then Sigmoid.
    first = L.serial(L.Dense(width, kernel_init=glorot), L.Sigmoid)
    skips = [
        L.residual(L.Dense(width, kernel_init=glorot), L.Sigmoid)
        for _ in range(depth - 1)
    ]
    head = (L.Dense(10, kernel_init=glorot),)
    return {
        "sigmoid": L.serial(L.Flatten(), *plain(L.Sigmoid, glorot), *head),
        "relu": L.serial(L.Flatten(), *plain(L.Relu, he), *head),
        "residual": L.serial(L.Flatten(), first, *skips, *head),
    }


def layer_norms(grads, depth: int) -> np.ndarray:
    """The gradient norm of each hidden layer, first to last (head left out)."""
    norms = backprop.grad_norms(grads)  # '[i]': norm, for layers with params
    values = [float(norms[f"[{i}]"]) for i in range(1, depth + 1)]
    return np.array(values)


def plot(norms, path, depth):
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    layers = np.arange(1, depth + 1)
    for name, values in norms.items():
        ax.plot(layers, values, marker="o", ms=4, label=name)
    ax.set(
        xlabel="layer (1 = nearest the input)",
        ylabel="gradient norm at init",
        yscale="log",
        title=f"Per-layer gradient norms of {depth}-layer MLPs",
    )
    ax.set_xticks(layers)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    finish(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="skip the finite differences of the check: for tests",
    )
    parser.add_argument("--plot", default="vanishing_gradients.png", help="PNG path")
    args = parser.parse_args(argv)

    (x, y), _ = data.digits()
    x, y = x[: args.batch_size], y[: args.batch_size]
    loss = losses.softmax_cross_entropy
    init_key, check_key = jax.random.split(jax.random.key(args.seed))
    norms, checks = {}, {}
    for name, model in networks(args.depth, args.width).items():
        _, params, state = jax.jit(model.init, static_argnums=1)(init_key, x.shape[1:])
        report = backprop.check(
            model, loss, params, state, x[:8], y[:8], finite_differences=not args.quick
        )
        checks[name] = report.ok
        verdict = "all leaves agree" if report.ok else str(report)
        print(f"{name}: gradient check over {len(report.rows)} leaves: {verdict}")
        if not report.ok:
            raise SystemExit(f"gradient check failed for the {name} network")
        grad_fn = jax.jit(backprop.value_and_grad(model, loss, method="manual"))
        (value, _), grads = grad_fn(params, state, x, y)
        norms[name] = layer_norms(grads, args.depth)

    print(
        f"\nPer-layer gradient norms at init, {args.depth} layers of "
        f"{args.width}, one batch of {len(x)} digits:"
    )
    print(f"{'layer':>10}" + "".join(f"{name:>12}" for name in norms))
    for i in range(args.depth):
        print(f"{i + 1:10d}" + "".join(f"{v[i]:12.3e}" for v in norms.values()))
    print("first/last" + "".join(f"{v[0] / v[-1]:12.1e}" for v in norms.values()))
    for name, v in norms.items():
        print(
            f"{name}: the first layer's gradient is {v[0] / v[-1]:.1e} times "
            f"the last one's"
        )
    plot(norms, args.plot, args.depth)
    return {
        "norms": norms,
        "ratio": {k: v[0] / v[-1] for k, v in norms.items()},
        "check_ok": all(checks.values()),
    }


if __name__ == "__main__":
    main()
