"""Every activation and its hand-written derivative over [-10, 10].

Each derivative in `fnn.activations` is compared with `jax.grad` of the
function on a fine grid, and each activation layer's backward pass, inside a
small network, with autodiff and finite differences (`fnn.backprop.check`).

Run: python examples/activations.py [--plot activations.png] [--quick]
"""

import argparse

import jax
import jax.numpy as jnp

from fnn import activations as act
from fnn import backprop, losses
from fnn import layers as L

from _shared import finish, pyplot

FUNCTIONS = [
    act.identity,
    act.sigmoid,
    act.tanh,
    act.relu,
    act.leaky_relu,
    act.step,
    act.softsign,
    act.gelu,
    act.silu,
    act.elu,
    act.softplus,
]


LAYERS = {  # the layer of each function above, where it has one
    "sigmoid": L.Sigmoid,
    "tanh": L.Tanh,
    "relu": L.Relu,
    "softsign": L.Softsign,
    "gelu": L.Gelu,
}


def check_layers(names, finite_differences=True):
    """``backprop.check`` of ``serial(Dense, activation, Dense)`` per name."""
    key = jax.random.key(0)
    x = jax.random.normal(key, (8, 3))
    y = jax.random.normal(jax.random.fold_in(key, 1), (8, 2))
    reports = {}
    for name in names:
        model = L.serial(L.Dense(4), LAYERS[name], L.Dense(2))
        _, params, state = model.init(jax.random.fold_in(key, 2), (3,))
        reports[name] = backprop.check(
            model,
            losses.mse,
            params,
            state,
            x,
            y,
            finite_differences=finite_differences,
        )
    return reports


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="check two activation layers, not all (seconds): for tests",
    )
    parser.add_argument("--plot", default="activations.png", help="PNG path")
    args = parser.parse_args(argv)
    plot_path = args.plot

    names = ["sigmoid", "relu"] if args.quick else list(LAYERS)
    reports = check_layers(names, finite_differences=not args.quick)
    for name, report in reports.items():
        verdict = "all leaves agree" if report.ok else f"FAILED\n{report}"
        print(f"serial(Dense, {name}, Dense) gradient check: {verdict}")
    check_ok = all(r.ok for r in reports.values())
    if not check_ok:
        raise SystemExit("gradient check failed: manual and autodiff disagree")

    x = jnp.linspace(-10.0, 10.0, 801)
    worst = 0.0
    for fn in FUNCTIONS:
        manual = act.derivative(fn)(x)
        auto = jax.vmap(jax.grad(fn))(x)
        worst = max(worst, float(jnp.max(jnp.abs(manual - auto))))
    print(
        f"{len(FUNCTIONS)} activations; largest |manual - autodiff| derivative "
        f"on [-10, 10]: {worst:.2e}"
    )
    s = act.softmax(jnp.array([3.0, 0.0, 1.0]))
    print("softmax(3, 0, 1) =", [round(float(v), 2) for v in s])
    plt = pyplot()
    if plt is None:
        return {"worst": worst, "check_ok": check_ok}
    fig, axes = plt.subplots(3, 4, figsize=(14, 9))
    for ax, fn in zip(axes.flat, FUNCTIONS):
        ax.plot(x, fn(x), label="f(x)")
        ax.plot(x, act.derivative(fn)(x), "--", label="f'(x)")
        ax.set_title(fn.__name__)
        ax.set_ylim(-2, 3)
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    # The last panel: softmax over two logits (x, 0), i.e. the sigmoid.
    ax = axes.flat[-1]
    probs = act.softmax(jnp.stack([x, jnp.zeros_like(x)], axis=-1))
    ax.plot(x, probs[:, 0], label="softmax(x, 0)[0]")
    ax.set_title("softmax")
    ax.legend()
    finish(fig, plot_path, dpi=90)
    return {"worst": worst, "check_ok": check_ok}


if __name__ == "__main__":
    main()
