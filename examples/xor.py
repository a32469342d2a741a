"""XOR: the classic problem a single neuron cannot solve.

1. A two-layer ReLU network with weights set by hand computes XOR exactly:
   h1 = ReLU(x1 + x2), h2 = ReLU(x1 + x2 - 1), y = ReLU(h1 - 2 h2).
2. A single linear neuron trained by gradient descent cannot: XOR is not
   linearly separable, and the best a line can do is predict 0.5 everywhere.
3. A small network learns XOR by gradient descent on hand-written (manual)
   gradients, after `fnn.backprop.check` shows they equal autodiff's.

Run: python examples/xor.py
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import backprop, data, losses, optim, train
from fnn import layers as L


def truth_table(title, x, y):
    print(title)
    print("  x1  x2 |   y")
    for (a, b), out in zip(np.asarray(x), np.asarray(y).reshape(-1)):
        print(f"  {a:2.0f}  {b:2.0f} | {out:5.3f}")


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


def train_steps(model, loss, optimizer, params, state, x, y, steps, method):
    step = train.make_step(model, loss, optimizer, method=method)
    opt_state = optimizer.init(params)
    for _ in range(steps):
        params, state, opt_state, value = step(params, state, opt_state, x, y, None)
    return params, state, float(value)


def main(steps: int = 2000, seed: int = 0):
    x, y = data.xor()

    model, params = hand_set_network()
    _, _, state = model.init(jax.random.key(seed), (2,))
    out, _ = model.apply(params, state, x)
    truth_table(
        "1. Hand-set ReLU network: h1 = ReLU(x1+x2), h2 = ReLU(x1+x2-1), "
        "y = ReLU(h1 - 2 h2)",
        x,
        out,
    )

    neuron = L.Dense(1)
    _, params, state = neuron.init(jax.random.key(seed), (2,))
    params, state, value = train_steps(
        neuron, losses.mse, optim.sgd(0.1), params, state, x, y, steps, "manual"
    )
    out, _ = neuron.apply(params, state, x)
    accuracy = float(jnp.mean((out > 0.5) == (y > 0.5)))
    truth_table(
        f"\n2. A single linear neuron after {steps} steps: MSE {value:.4f} "
        f"(the best line gives 0.25), accuracy {accuracy:.0%}: it cannot learn XOR",
        x,
        out,
    )

    net = L.serial(L.Dense(4), L.Tanh, L.Dense(1))
    _, params, state = net.init(jax.random.key(seed), (2,))
    loss = losses.sigmoid_binary_cross_entropy
    print(
        "\n3. A 2-4-1 tanh network: manual gradients against autodiff and "
        "finite differences"
    )
    report = backprop.check(net, loss, params, state, x, y)
    print(report)
    params, state, value = train_steps(
        net, loss, optim.momentum(0.5), params, state, x, y, steps, "manual"
    )
    logits, _ = net.apply(params, state, x)
    truth_table(
        f"\nLearned by gradient descent on manual gradients ({steps} steps, "
        f"loss {value:.4f}): sigmoid outputs",
        x,
        fnn.activations.sigmoid(logits),
    )
    return report.ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    raise SystemExit(0 if main(args.steps, args.seed) else 1)
