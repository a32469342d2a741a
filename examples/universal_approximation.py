"""One hidden layer approximates a continuous function better as it widens.

The universal approximation theorem: a network with one hidden layer of
enough sigmoid (or tanh, ReLU...) units can approximate any continuous
function on a closed interval as closely as wanted. Here ``Dense(width) -
Tanh - Dense(1)`` networks of growing width are fitted to

    f(x) = sin(3x) + 0.5 |x|   on [-2, 2]

(a kink at 0 and three humps), each by full-batch Adam on 256 points, and
their largest and root-mean-square errors are measured on a 2,000-point
grid; whether the RMS error fell at every widening is worked out from them.
The first width's hand-written gradients are checked against autodiff and
finite differences (`fnn.backprop.check`); the fits and the error against
width go to a PNG.

Run: python examples/universal_approximation.py [--steps 3000] [--plot ...] [--quick]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn import backprop, losses, optim
from fnn import layers as L

from _shared import finish, pyplot

WIDTHS = (1, 2, 4, 8, 16, 32, 64)
QUICK_WIDTHS = (1, 4, 16)


def target(x):
    return jnp.sin(3 * x) + 0.5 * jnp.abs(x)


def one_hidden_layer(width: int) -> L.Layer:
    return L.serial(L.Dense(width), L.Tanh, L.Dense(1))


def fit_full_batch(model, params, state, x, y, steps: int, lr: float):
    """``steps`` Adam steps on all of ``(x, y)``, one compiled ``lax.scan``."""
    optimizer = optim.adam(optax.cosine_decay_schedule(lr, steps))
    grad_fn = backprop.value_and_grad(model, losses.mse, method="manual")

    @jax.jit
    def run(params):
        def step(carry, _):
            params, opt_state = carry
            (value, _), grads = grad_fn(params, state, x, y)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        (params, _), values = jax.lax.scan(
            step, (params, optimizer.init(params)), None, steps
        )
        return params, values

    return run(params)


def width_verdict(errors) -> str:
    """Says, from the numbers, whether the RMS error fell with each widening."""
    widths = list(errors)
    rms = [errors[w]["rms"] for w in widths]
    rises = [f"{a} to {b}" for a, b, r, s in zip(widths, widths[1:], rms, rms[1:])
             if s >= r]  # fmt: skip
    change = (
        f"RMS error {rms[0]:.3g} at width {widths[0]}, {rms[-1]:.3g} at width "
        f"{widths[-1]}"
    )
    if not rises:
        return f"{change}: it fell at every widening"
    return f"{change}; it did not fall from width {', '.join(rises)}"


def plot(x, y, fits, errors, path):
    plt = pyplot()
    if plt is None:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(x, y, "k", lw=3, alpha=0.3, label="f(x) = sin(3x) + 0.5|x|")
    for width, pred in fits.items():
        ax1.plot(x, pred, lw=1, label=f"{width} hidden units")
    ax1.set(xlabel="x", ylabel="y", title="fits")
    ax1.legend(fontsize=7)
    widths = list(errors)
    ax2.loglog(widths, [e["max"] for e in errors.values()], "o-", label="max |error|")
    ax2.loglog(widths, [e["rms"] for e in errors.values()], "s-", label="RMS error")
    ax2.set(xlabel="hidden units", ylabel="error on the grid", title="error vs width")
    ax2.set_xticks(widths, [str(w) for w in widths])
    ax2.legend()
    finish(fig, path, "one hidden layer of tanh units, growing wider")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 widths, fewer steps (seconds): for tests",
    )
    parser.add_argument(
        "--plot", default="universal_approximation.png", help="PNG path"
    )
    args = parser.parse_args(argv)
    widths = QUICK_WIDTHS if args.quick else WIDTHS
    steps = 1500 if args.quick else args.steps

    start = time.perf_counter()
    x_train = jnp.linspace(-2.0, 2.0, 256)[:, None]
    y_train = target(x_train)
    x_grid = jnp.linspace(-2.0, 2.0, 2000)[:, None]
    y_grid = np.asarray(target(x_grid))[:, 0]

    key = jax.random.key(args.seed)
    check_ok, fits, errors = True, {}, {}
    for i, width in enumerate(widths):
        model = one_hidden_layer(width)
        _, params, state = model.init(jax.random.fold_in(key, width), (1,))
        if i == 0:
            report = backprop.check(
                model,
                losses.mse,
                params,
                state,
                x_train[::32],
                y_train[::32],
                finite_differences=not args.quick,
            )
            print(f"gradient check of {width} hidden unit(s):\n{report}\n")
            check_ok = report.ok
            if not check_ok:
                raise SystemExit("gradient check failed: manual and autodiff disagree")
            print("hidden units   max |error|   RMS error   final training MSE")
        params, values = fit_full_batch(
            model, params, state, x_train, y_train, steps, args.lr
        )
        pred = np.asarray(model.apply(params, state, x_grid)[0])[:, 0]
        err = pred - y_grid
        errors[width] = {
            "max": float(np.abs(err).max()),
            "rms": float(np.sqrt(np.mean(err**2))),
        }
        fits[width] = pred
        print(
            f"{width:12d}   {errors[width]['max']:11.4f}   {errors[width]['rms']:9.4f}"
            f"   {float(values[-1]):.2e}"
        )
    print(f"({steps} Adam steps each, {time.perf_counter() - start:.1f} s in all)")
    print(width_verdict(errors))
    plot(np.asarray(x_grid)[:, 0], y_grid, fits, errors, args.plot)
    return {"errors": errors, "check_ok": check_ok}


if __name__ == "__main__":
    main()
