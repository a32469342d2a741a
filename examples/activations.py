"""Every activation and its hand-written derivative over [-10, 10].

Run: python examples/activations.py [--plot activations.png]
"""

import argparse

import jax
import jax.numpy as jnp

from fnn import activations as act

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


def main(plot_path="activations.png"):
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
        return worst
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
    return worst


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", default="activations.png")
    args = parser.parse_args()
    main(args.plot)
