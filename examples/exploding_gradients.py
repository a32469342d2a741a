"""Exploding gradients: a deep network diverges; clipping the gradient tames it.

A 16-layer ReLU network whose weights start too large (variance
``4 / fan_in``, twice He's ``2 / fan_in``) doubles the variance of its
signal at every layer, so the signal grows about ``2^(16/2) = 256``-fold
in norm through the stack; the logits and the loss are huge (a loss in the
hundreds where a guess scores 2.3), and so is every layer's gradient, the
backward signal growing layer by layer as the forward one did. Plain SGD
at learning rate 0.1 then takes a first step so large that the loss
overflows within a few steps: `fnn.train.fit` stops at the first non-finite loss, and
``result.stopped`` says where, returning the last finite parameters.

The same SGD chained after ``optax.clip_by_global_norm(1.0)`` (rescale the
whole gradient to norm at most 1 before the step) trains the same network
from the same start. `fnn.backprop.check` first proves the hand-written
gradients right; per-layer gradient norms at the start and the loss of the
first steps, both ways, go to a PNG.

Run: python examples/exploding_gradients.py [--epochs 10] [--plot ...] [--quick]
"""

from __future__ import annotations

import argparse
import textwrap

import jax
import numpy as np
import optax

from fnn import backprop, data, losses, optim, train
from fnn import layers as L

from _shared import finish, pyplot

DEPTH, WIDTH, SCALE, LR, CLIP = 16, 64, 4.0, 0.1, 1.0


def deep_relu_net(depth: int, width: int, scale: float) -> L.Layer:
    """``depth`` times Dense-ReLU, weights of variance ``scale / fan_in``."""
    init = jax.nn.initializers.variance_scaling(scale, "fan_in", "normal")
    layers = [L.Flatten()]
    for _ in range(depth):
        layers += [L.Dense(width, kernel_init=init), L.Relu]
    return L.serial(*layers, L.Dense(10, kernel_init=init))


def first_steps(model, loss, optimizer, params, state, x, y, steps, batch_size):
    """The loss of each of the first ``steps`` minibatch steps (nan after a blow-up)."""
    step = train.make_step(model, loss, optimizer)
    params, state = jax.tree.map(np.array, (params, state))  # step donates its inputs
    opt_state = optimizer.init(params)
    values = []
    for i in range(steps):
        idx = slice(i * batch_size, (i + 1) * batch_size)
        params, state, opt_state, value = step(
            params, state, opt_state, x[idx], y[idx], None
        )
        values.append(float(value))
        if not np.isfinite(values[-1]):
            break
    return values


def plot(norms, curves, path):
    plt = pyplot()
    if plt is None:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.semilogy(range(1, len(norms) + 1), norms, "o-")
    ax1.set(
        xlabel="layer",
        ylabel="gradient norm",
        title="per-layer gradient norm at the start",
    )
    for label, values in curves.items():
        ax2.semilogy(range(1, len(values) + 1), values, "o-", ms=3, label=label)
    ax2.set(xlabel="step", ylabel="training loss", title="the first steps")
    ax2.legend()
    finish(fig, path, f"{DEPTH} ReLU layers, weights of variance {SCALE:g} / fan_in")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="2 epochs (seconds): for tests"
    )
    parser.add_argument("--plot", default="exploding_gradients.png", help="PNG path")
    args = parser.parse_args(argv)
    epochs = 2 if args.quick else args.epochs
    batch_size = 64

    (x, y), (x_test, y_test) = data.digits()
    model = deep_relu_net(DEPTH, WIDTH, SCALE)
    loss = losses.softmax_cross_entropy
    init_key, fit_key = jax.random.split(jax.random.key(args.seed))
    _, params, state = model.init(init_key, x.shape[1:])
    report = backprop.check(
        model, loss, params, state, x[:8], y[:8], finite_differences=not args.quick
    )
    print(report)
    if not report.ok:
        raise SystemExit("gradient check failed: manual and autodiff disagree")

    (value, _), grads = jax.jit(backprop.value_and_grad(model, loss))(
        params, state, x[:256], y[:256]
    )
    norms = [float(v) for v in backprop.grad_norms(grads).values()]
    print(
        f"\nat the start: loss {float(value):.1f} (log 10 = 2.3 would be a "
        f"guess),\n  gradient norm {float(optax.tree.norm(grads)):.0f}; per layer "
        f"from {norms[-1]:.2g} (last) to {norms[0]:.2g} (first)"
    )

    optimizers = {
        f"SGD {LR:g}": optim.sgd(LR),
        f"clip to norm {CLIP:g}, then SGD {LR:g}": optax.chain(
            optax.clip_by_global_norm(CLIP), optim.sgd(LR)
        ),
    }
    results, curves = {}, {}
    for label, optimizer in optimizers.items():
        curves[label] = first_steps(
            model, loss, optimizer, params, state, x, y, 20, batch_size
        )
        result = train.fit(
            model,
            loss,
            optimizer,
            params,
            state,
            (x, y),
            key=fit_key,
            epochs=epochs,
            batch_size=batch_size,
        )
        metrics = train.evaluate(
            model, loss, result.params, result.state, x_test, y_test
        )
        results[label] = {
            "stopped": result.stopped,
            "epochs_done": len(result.history["train_loss"]),
            "accuracy": metrics["accuracy"],
            "first_losses": curves[label][:5],
        }
        first = ", ".join(f"{v:.4g}" for v in curves[label][:5])
        print(f"\n{label}: losses of the first steps\n  {first}")
        if result.stopped:  # fit's sentence, wrapped to the terminal
            text = f"fit stopped: {result.stopped}"
            print(textwrap.fill(text, 78, initial_indent="  ", subsequent_indent="  "))
        else:
            print(
                f"  trained {epochs} epochs: training loss "
                f"{result.history['train_loss'][-1]:.4f}, test accuracy "
                f"{metrics['accuracy']:.4f}"
            )
    plot(norms, curves, args.plot)
    plain, clipped = results.values()
    return {"plain": plain, "clipped": clipped, "norms": norms, "check_ok": report.ok}


if __name__ == "__main__":
    main()
