"""Per-example gradients and DP-SGD-style clipping on the digits.

`fnn.backprop.per_example_grads` gives every example's gradient (a `jax.vmap`
over batches of one). DP-SGD clips each to norm at most C, averages, and adds
Gaussian noise of scale sigma * C / batch before the update, so that no
single example can move the model much. This script trains the same MLP with
plain minibatch gradients and with clipped, noised per-example gradients.

Run: python examples/per_example_grads.py [--clip 1.0] [--noise 0.5]
"""

import argparse

import jax
import jax.numpy as jnp
import optax

from fnn import backprop, data, losses, optim, train
from fnn import layers as L


def clipped_step(model, loss, optimizer, clip, noise, method):
    """A jitted DP-SGD step: clip per-example gradients, average, add noise."""
    per_example = backprop.per_example_grads(model, loss, method)

    @jax.jit
    def step(params, state, opt_state, x, y, key):
        dropout_key, noise_key = jax.random.split(key)
        values, grads = per_example(params, state, x, y, key=dropout_key)
        norms = backprop.per_example_norms(grads)
        factor = jnp.minimum(1.0, clip / (norms + 1e-12))
        mean = jax.tree.map(lambda g: jnp.tensordot(factor, g, axes=1) / len(x), grads)
        leaves, treedef = jax.tree.flatten(mean)
        keys = jax.random.split(noise_key, len(leaves))
        noisy = [
            g + noise * clip / len(x) * jax.random.normal(k, g.shape)
            for g, k in zip(leaves, keys)
        ]
        updates, opt_state = optimizer.update(
            jax.tree.unflatten(treedef, noisy), opt_state, params
        )
        return (
            optax.apply_updates(params, updates),
            state,
            opt_state,
            jnp.mean(values),
            jnp.mean(norms),
        )

    return step


def main(epochs=15, batch_size=64, clip=1.0, noise=0.5, method="autodiff"):
    (x, y), (x_test, y_test) = data.digits()
    model = L.serial(L.Flatten(), L.Dense(64), L.Relu, L.Dense(10))
    loss = losses.softmax_cross_entropy
    _, params, state = model.init(jax.random.key(0), x.shape[1:])
    opt = optim.sgd(0.5)
    step = clipped_step(model, loss, opt, clip, noise, method)
    opt_state = opt.init(params)
    key = jax.random.key(1)
    for epoch in range(1, epochs + 1):
        key, perm_key = jax.random.split(key)
        perm = jax.random.permutation(perm_key, len(x))
        for i in range(len(x) // batch_size):
            key, step_key = jax.random.split(key)
            idx = perm[i * batch_size : (i + 1) * batch_size]
            params, state, opt_state, value, norm = step(
                params, state, opt_state, x[idx], y[idx], step_key
            )
        acc = train.evaluate(model, loss, params, state, x_test, y_test)["accuracy"]
        print(
            f"epoch {epoch:2d}  loss {float(value):.4f}  mean per-example grad "
            f"norm {float(norm):.3f}  test accuracy {acc:.4f}"
        )
    reference = train.fit(
        model,
        loss,
        optim.sgd(0.5),
        *model.init(jax.random.key(0), x.shape[1:])[1:],
        (x, y),
        key=key,
        epochs=epochs,
        batch_size=batch_size,
    )
    ref_acc = train.evaluate(
        model, loss, reference.params, reference.state, x_test, y_test
    )["accuracy"]
    print(
        f"DP-SGD (clip {clip}, noise {noise}) test accuracy {acc:.4f}; "
        f"plain SGD {ref_acc:.4f}"
    )
    return acc, ref_acc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--method", choices=backprop.METHODS, default="autodiff")
    args = parser.parse_args()
    main(args.epochs, clip=args.clip, noise=args.noise, method=args.method)
