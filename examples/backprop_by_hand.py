"""Backpropagation by hand, beside fnn's hand-written backward and jax.grad.

1. The course's graph ``f = (x + y) z`` at ``(x, y, z) = (-2, 5, -4)``:
   forward ``q = x + y = 3``, ``f = q z = -12``; backward by the chain rule
   ``df/dz = q = 3``, ``df/dq = z = -4``, ``df/dx = df/dq dq/dx = -4``,
   ``df/dy = df/dq dq/dy = -4``. The two nodes are written as fnn layers
   (``Add`` and ``Multiply``, each a forward and a hand-written backward,
   like every layer of fnn), chained with ``serial``, whose backward runs
   the chain rule through them.
2. A two-layer network ``Dense(4) - Sigmoid - Dense(2)`` with a squared
   error on one example: every derivative worked out by hand in NumPy,
   beside `fnn.backprop.value_and_grad` with ``method="manual"`` (the
   layers' hand-written backward passes) and ``"autodiff"`` (``jax.grad``),
   then `fnn.backprop.check` against finite differences as well.

Run: python examples/backprop_by_hand.py [--quick]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from fnn import backprop, losses
from fnn import layers as L

POINT = (-2.0, 5.0, -4.0)


def Add() -> L.Layer:
    """``(x, y, z) -> (q, z)`` with ``q = x + y``. Backward: ``dx = dy = dq``."""

    def init(key, input_shape):
        return (2,), (), ()

    def forward(params, state, v, *, key=None, train=False):
        q = v[:, 0:1] + v[:, 1:2]
        return jnp.concatenate([q, v[:, 2:3]], axis=1), state, ()

    def backward(params, cache, dout):
        dq, dz = dout[:, 0:1], dout[:, 1:2]
        return (), jnp.concatenate([dq, dq, dz], axis=1)  # dq/dx = dq/dy = 1

    return L.Layer(init, forward, backward, "Add()")


def Multiply() -> L.Layer:
    """``(q, z) -> f = q z``. Backward: ``dq = z df``, ``dz = q df``."""

    def init(key, input_shape):
        return (1,), (), ()

    def forward(params, state, v, *, key=None, train=False):
        return v[:, 0:1] * v[:, 1:2], state, v  # the cache: the inputs

    def backward(params, cache, df):
        q, z = cache[:, 0:1], cache[:, 1:2]
        return (), jnp.concatenate([z * df, q * df], axis=1)

    return L.Layer(init, forward, backward, "Multiply()")


def row(name, by_hand, manual, autodiff):
    arrays = [np.asarray(a, np.float64) for a in (by_hand, manual, autodiff)]
    by_hand, manual, autodiff = arrays
    gap = max(np.abs(manual - by_hand).max(), np.abs(autodiff - by_hand).max())
    cells = (np.array2string(a.ravel()[:2], precision=4) for a in arrays)
    print(f"  {name:6s} " + "  ".join(f"{c:>19s}" for c in cells) + f"  {gap:.1e}")
    return float(gap)


def graph_part():
    """Part 1; returns the largest gap between hand, manual and autodiff."""
    x, y, z = POINT
    q = x + y  # forward, one node at a time
    f = q * z
    df_df = 1.0  # backward, in reverse order
    df_dz = q * df_df
    df_dq = z * df_df
    df_dx = df_dq * 1.0
    df_dy = df_dq * 1.0
    print(f"1. f = (x + y) z at (x, y, z) = {POINT}:")
    print(f"  forward by hand: q = x + y = {q:g}, f = q z = {f:g}")

    graph = L.serial(Add(), Multiply())
    _, params, state = graph.init(jax.random.key(0), (3,))  # no parameters
    v = jnp.array([POINT])  # a batch of one point
    out, _, cache = graph.forward(params, state, v)
    _, manual = graph.backward(params, cache, jnp.ones_like(out))  # df/df = 1
    autodiff = jax.grad(lambda v: jnp.sum((v[:, 0] + v[:, 1]) * v[:, 2]))(v)
    print(f"  fnn forward: f = {float(out[0, 0]):g}")
    print(f"  {'':8s} {'by hand':>8s} {'fnn manual backward':>20s} {'jax.grad':>10s}")
    worst = 0.0
    for i, (name, hand) in enumerate(
        (("df/dx", df_dx), ("df/dy", df_dy), ("df/dz", df_dz))
    ):
        m, a = float(manual[0, i]), float(autodiff[0, i])
        worst = max(worst, abs(m - hand), abs(a - hand))
        print(f"  {name:8s} {hand:8g} {m:20g} {a:10g}")
    print(f"  (and df/dq = z = {df_dq:g}: the gradient that reaches the + node)")
    return worst


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def network_part(seed: int, finite_differences: bool):
    """Part 2; returns (largest gap, backprop.check report)."""
    model = L.serial(L.Dense(4), L.Sigmoid, L.Dense(2))
    _, params, state = model.init(jax.random.key(seed), (3,))
    x = np.array([[0.5, -1.0, 2.0]])
    t = np.array([[1.0, 0.0]])
    w1, b1 = (
        np.asarray(params[0]["w"], np.float64),
        np.asarray(params[0]["b"], np.float64),
    )
    w2, b2 = (
        np.asarray(params[2]["w"], np.float64),
        np.asarray(params[2]["b"], np.float64),
    )

    # Forward, by hand.
    a1 = x @ w1 + b1  # (1, 4) pre-activations
    h = sigmoid(a1)  # (1, 4) hidden units
    out = h @ w2 + b2  # (1, 2) predictions
    loss = np.mean((out - t) ** 2)
    # Backward, by hand: the chain rule, one line per local derivative.
    d_out = 2 * (out - t) / out.size  # dL/d out of L = mean((out - t)^2)
    d_w2 = h.T @ d_out  # out = h w2 + b2
    d_b2 = d_out.sum(axis=0)
    d_h = d_out @ w2.T
    d_a1 = d_h * h * (1 - h)  # sigmoid' = sigmoid (1 - sigmoid)
    d_w1 = x.T @ d_a1
    d_b1 = d_a1.sum(axis=0)

    xj, tj = jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32)
    grads = {}
    for method in backprop.METHODS:
        (value, _), grads[method] = backprop.value_and_grad(model, losses.mse, method)(
            params, state, xj, tj
        )
    print("\n2. Dense(4) - Sigmoid - Dense(2), squared error on one example:")
    print(f"  loss {loss:.6f} by hand, {float(value):.6f} by fnn")
    print(
        f"  {'':6s} {'by hand':>19s}  {'fnn manual backward':>19s}  "
        f"{'jax.grad':>19s}  max gap"
    )
    worst = 0.0
    for name, hand, path in (
        ("dL/dw2", d_w2, (2, "w")),
        ("dL/db2", d_b2, (2, "b")),
        ("dL/dw1", d_w1, (0, "w")),
        ("dL/db1", d_b1, (0, "b")),
    ):
        manual = grads["manual"][path[0]][path[1]]
        autodiff = grads["autodiff"][path[0]][path[1]]
        worst = max(worst, row(name, hand, manual, autodiff))
    print("  (first two entries of each; the gap, from by hand, is over all of them)")
    report = backprop.check(
        model, losses.mse, params, state, xj, tj, finite_differences=finite_differences
    )
    print(report)
    return worst, report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="skip the finite differences of the final check: for tests",
    )
    args = parser.parse_args(argv)
    graph_gap = graph_part()
    network_gap, report = network_part(args.seed, finite_differences=not args.quick)
    if not report.ok:
        raise SystemExit("gradient check failed: manual and autodiff disagree")
    return {"graph_gap": graph_gap, "network_gap": network_gap, "check_ok": report.ok}


if __name__ == "__main__":
    main()
