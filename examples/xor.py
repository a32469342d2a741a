"""XOR: the classic problem a single neuron cannot solve.

1. The perceptron: one neuron with a step activation, ``y = step(w.x + b)``,
   trained by the perceptron rule ``w += lr (t - y) x``, ``b += lr (t - y)``,
   learns AND and OR in a few passes, and never learns XOR: no line
   separates XOR's two classes, so some point is always on the wrong side.
   (The step's derivative is 0 almost everywhere, so gradient descent could
   not train it at all: the rule is not a gradient step.)
2. A two-layer ReLU network with weights set by hand computes XOR exactly:
   h1 = ReLU(x1 + x2), h2 = ReLU(x1 + x2 - 1), y = ReLU(h1 - 2 h2).
3. A single linear neuron trained by gradient descent on the squared error
   cannot: the best a line can do is predict 0.5 everywhere, a tie that
   decides nothing.
4. A 2-2-1 tanh network learns XOR by gradient descent on hand-written
   (manual) gradients, after `fnn.backprop.check` shows they equal
   autodiff's and finite differences; from some random starts only: ten
   starts train at once (`jax.vmap` over a `lax.scan` of steps), and the
   others stall on a plateau with two points wrong.

The figure shows why the hidden layer helps: the four points in the input
plane (no line separates the classes), and where each network's hidden layer
sends them, where one line (the output neuron's) does.

Run: python examples/xor.py [--steps 2000] [--plot xor.png] [--quick]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnn
from fnn import backprop, data, losses, optim, train
from fnn import layers as L

from _shared import finish, pyplot

GATES = {
    "AND": np.array([[0], [0], [0], [1]], np.float32),
    "OR": np.array([[0], [1], [1], [1]], np.float32),
    "XOR": np.array([[0], [1], [1], [0]], np.float32),
}
TIE = 0.05  # an output within this of 0.5 decides nothing
STARTS = 10  # random starts of the 2-2-1 network, trained together


def truth_table(title, x, y):
    print(title)
    print("  x1  x2 |   y")
    for (a, b), out in zip(np.asarray(x), np.asarray(y).reshape(-1)):
        print(f"  {a:2.0f}  {b:2.0f} | {out:5.3f}")


def perceptron(x, target, epochs: int, lr: float = 1.0):
    """The perceptron rule on a step neuron, ``serial(Dense(1), Step)``.

    Returns:
      ``(params, errors)``: the final weights and the number of
      misclassified points after each pass over the four points.
    """
    neuron = L.serial(L.Dense(1), L.Step)
    _, params, state = neuron.init(jax.random.key(0), (2,))
    w, b = np.zeros((2, 1), np.float32), np.zeros((1,), np.float32)
    errors = []
    for _ in range(epochs):
        for xi, ti in zip(x, target):
            params = ({"w": jnp.asarray(w), "b": jnp.asarray(b)}, ())
            yi = np.asarray(neuron.apply(params, state, xi[None])[0])[0]
            w = w + lr * (ti - yi) * xi[:, None]
            b = b + lr * (ti - yi)
        params = ({"w": jnp.asarray(w), "b": jnp.asarray(b)}, ())
        out = np.asarray(neuron.apply(params, state, x)[0])
        errors.append(int(np.sum(out != target)))
        if errors[-1] == 0:
            break
    return params, errors


def hand_set_network():
    """Weights straight from the formulas above."""
    model = L.serial(L.Dense(2), L.Relu, L.Dense(1), L.Relu)
    params = (
        {"w": jnp.array([[1.0, 1.0], [1.0, 1.0]]), "b": jnp.array([0.0, -1.0])},
        (),
        {"w": jnp.array([[1.0], [-2.0]]), "b": jnp.array([0.0])},
        (),
    )
    return model, params


def hidden_layer(activation, params, state, x):
    """What the first two layers (Dense, activation) make of ``x``."""
    first = L.serial(L.Dense(2), activation)
    return np.asarray(first.apply(params[:2], state[:2], x)[0])


def train_steps(model, loss, optimizer, params, state, x, y, steps, method):
    step = train.make_step(model, loss, optimizer, method=method)
    opt_state = optimizer.init(params)
    for _ in range(steps):
        params, state, opt_state, value = step(params, state, opt_state, x, y, None)
    return params, state, float(value)


def train_starts(model, loss, optimizer, params, state, x, y, steps):
    """Full-batch training of a stack of parameter sets, one per start.

    ``params`` has a leading axis of starts; one compiled program runs
    ``steps`` steps (``lax.scan``) for all of them (``vmap``).
    Returns the final parameters and the final loss of each start.
    """
    grad_fn = backprop.value_and_grad(model, loss, method="manual")

    def one_start(p):
        def step(carry, _):
            p, opt_state = carry
            (value, _), grads = grad_fn(p, state, x, y)
            updates, opt_state = optimizer.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), value

        (p, _), values = jax.lax.scan(step, (p, optimizer.init(p)), None, steps)
        return p, values[-1]

    return jax.jit(jax.vmap(one_start))(params)


def decisions(out, y, threshold=0.5):
    """``(correct, ties)``: outputs on the right side of ``threshold`` by more
    than ``TIE``, and outputs within ``TIE`` of it (which decide nothing)."""
    out, y = np.asarray(out).reshape(-1), np.asarray(y).reshape(-1)
    tie = np.abs(out - threshold) <= TIE
    correct = ~tie & ((out > threshold) == (y > 0.5))
    return int(correct.sum()), int(tie.sum())


def plot(x, y, hidden_sets, path):
    """The input plane, then each network's hidden space with its output line."""
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(
        1, 1 + len(hidden_sets), figsize=(4 * (1 + len(hidden_sets)), 4)
    )
    colors = np.where(np.asarray(y).reshape(-1) > 0.5, "tab:red", "tab:blue")
    panels = [("input space: no line separates", np.asarray(x), None)] + hidden_sets
    for ax, (title, points, line) in zip(axes, panels):
        ax.scatter(points[:, 0], points[:, 1], c=colors, s=80, edgecolors="k")
        labels = {}  # points the hidden layer merges share one label
        for (a, b), point in zip(np.asarray(x), points):
            key = tuple(np.round(point, 1))
            labels[key] = labels.get(key, ()) + (f"({a:.0f},{b:.0f})",)
        for (px, py), text in labels.items():  # at the rounded position
            ax.annotate(" ".join(text), (px, py), textcoords="offset points",
                        xytext=(6, 6))  # fmt: skip
        if line is not None:  # w0 h0 + w1 h1 + b = level: the output's boundary
            (w0, w1), bias, level = line
            lo, hi = points[:, 0].min() - 0.5, points[:, 0].max() + 0.5
            hs = np.linspace(lo, hi, 2)
            if abs(w1) > 1e-6:
                ax.plot(
                    hs, (level - bias - w0 * hs) / w1, "k--", label="output boundary"
                )
            else:
                ax.axvline(
                    (level - bias) / w0, color="k", ls="--", label="output boundary"
                )
            ax.set_ylim(points[:, 1].min() - 0.5, points[:, 1].max() + 0.5)
            ax.legend(loc="lower right")
        names = ("x1", "x2") if line is None else ("hidden unit 1", "hidden unit 2")
        ax.set(title=title, xlabel=names[0], ylabel=names[1])
    finish(fig, path, "XOR: red = 1, blue = 0")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="fewer steps (seconds): for tests"
    )
    parser.add_argument("--plot", default="xor.png", help="PNG path")
    args = parser.parse_args(argv)
    steps = min(args.steps, 1000) if args.quick else args.steps
    x, y = data.xor()

    print("1. The perceptron rule on one step neuron, y = step(w.x + b)")
    results = {}
    for gate, target in GATES.items():
        params, errors = perceptron(x, target, epochs=20)
        w, b = np.asarray(params[0]["w"]).ravel(), float(params[0]["b"][0])
        learned = errors[-1] == 0
        results[gate] = {"learned": learned, "passes": len(errors), "errors": errors}
        verdict = (
            f"learned in {len(errors)} passes: w = ({w[0]:g}, {w[1]:g}), b = {b:g}"
            if learned
            else f"never learned: after {len(errors)} passes still {errors[-1]} of 4 "
            f"wrong\n      (errors per pass: {', '.join(map(str, errors[:8]))}, ...)"
        )
        print(f"  {gate:3s} {verdict}")

    model, params = hand_set_network()
    _, _, state = model.init(jax.random.key(args.seed), (2,))
    out, _ = model.apply(params, state, x)
    truth_table(
        "\n2. Hand-set ReLU network: h1 = ReLU(x1+x2), h2 = ReLU(x1+x2-1),\n"
        "   y = ReLU(h1 - 2 h2)",
        x,
        out,
    )
    hand_hidden = hidden_layer(L.Relu, params, state, x)

    neuron = L.Dense(1)
    _, p, s = neuron.init(jax.random.key(args.seed), (2,))
    p, s, value = train_steps(
        neuron, losses.mse, optim.sgd(0.1), p, s, x, y, steps, "manual"
    )
    out, _ = neuron.apply(p, s, x)
    correct, ties = decisions(out, y)
    truth_table(
        f"\n3. A single linear neuron after {steps} steps: MSE {value:.4f} (the "
        f"best line: 0.25);\n   {correct} of 4 decided correctly, {ties} of 4 "
        f"ties within {TIE} of 0.5 (no line fits XOR)",
        x,
        out,
    )

    net = L.serial(L.Dense(2), L.Tanh, L.Dense(1))
    keys = jax.random.split(jax.random.key(args.seed), STARTS)
    _, params, state = net.init(keys[0], (2,))
    loss = losses.sigmoid_binary_cross_entropy
    checked = "autodiff" if args.quick else "autodiff and finite differences"
    print(f"\n4. A 2-2-1 tanh network: manual gradients against {checked}")
    report = backprop.check(
        net, loss, params, state, x, y, finite_differences=not args.quick
    )
    print(report)
    if not report.ok:
        raise SystemExit("gradient check failed: manual and autodiff disagree")
    # Two hidden units can represent XOR, but gradient descent from a random
    # start often stalls on a plateau: train STARTS starts at once (vmap).
    inits = jax.vmap(lambda k: net.init(k, (2,))[1])(keys)
    finals, values = train_starts(
        net, loss, optim.momentum(0.5), inits, state, x, y, steps
    )
    probs = jax.vmap(lambda p: fnn.activations.sigmoid(net.apply(p, state, x)[0]))(
        finals
    )
    scores = [decisions(p, y)[0] for p in probs]
    learned = [i for i, c in enumerate(scores) if c == 4]
    best = learned[0] if learned else int(np.argmax(scores))
    params = jax.tree.map(lambda a: a[best], finals)
    prob = probs[best]
    net_correct, net_ties = decisions(prob, y)
    print(
        f"\nTrained from {STARTS} random starts at once ({steps} steps, manual "
        f"gradients):\n  {len(learned)} of {STARTS} learn XOR (points right per "
        f"start: {', '.join(map(str, scores))})"
    )
    truth_table(
        f"Start {best}'s sigmoid outputs (loss {float(values[best]):.4f})", x, prob
    )
    hidden = hidden_layer(L.Tanh, params, state, x)
    plot(
        x,
        y,
        [
            ("hand-set ReLU net's hidden space", hand_hidden, ((1.0, -2.0), 0.0, 0.5)),
            (
                "learned tanh net's hidden space",
                hidden,
                (
                    tuple(np.asarray(params[2]["w"]).ravel()),
                    float(params[2]["b"][0]),
                    0.0,
                ),
            ),
        ],  # fmt: skip
        args.plot,
    )
    return {
        "check_ok": report.ok,
        "perceptron": results,
        "neuron": {"correct": correct, "ties": ties, "mse": value},
        "network": {
            "correct": net_correct,
            "ties": net_ties,
            "prob": np.asarray(prob),
            "learned": len(learned),
        },
    }


if __name__ == "__main__":
    main()
