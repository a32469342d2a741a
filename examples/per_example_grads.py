"""Per-example gradients and DP-SGD-style clipping on the digits.

`fnn.backprop.per_example_grads` gives every example's gradient (a `jax.vmap`
over batches of one). DP-SGD clips each to norm at most C, averages, and adds
Gaussian noise of scale sigma * C / batch before the update, so that no
single example can move the model much. This script first checks the
model's hand-written gradients (`fnn.backprop.check`) and that the mean of
the per-example gradients is the batch gradient, then trains the same MLP
with plain minibatch gradients and with clipped, noised per-example
gradients.

Run: python examples/per_example_grads.py [--clip 1.0] [--noise 0.5] [--quick]
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


def check_gradients(model, loss, params, state, x, y, method, fd=True):
    """``backprop.check``, and per-example gradients averaging to the batch's."""
    report = backprop.check(model, loss, params, state, x, y, finite_differences=fd)
    print(report)
    _, per_example = backprop.per_example_grads(model, loss, method)(
        params, state, x, y
    )
    (_, _), batch = backprop.value_and_grad(model, loss, method)(params, state, x, y)
    gap = max(
        float(jnp.max(jnp.abs(jnp.mean(g, axis=0) - b)))
        for g, b in zip(jax.tree.leaves(per_example), jax.tree.leaves(batch))
    )
    print(f"mean of {len(x)} per-example gradients minus the batch gradient: {gap:.1e}")
    return report.ok and gap < 1e-5, gap


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--method", choices=backprop.METHODS, default="autodiff")
    parser.add_argument(
        "--quick", action="store_true", help="2 epochs (seconds): for tests"
    )
    args = parser.parse_args(argv)
    epochs = 2 if args.quick else args.epochs
    batch_size, clip, noise, method = (
        args.batch_size,
        args.clip,
        args.noise,
        args.method,
    )

    (x, y), (x_test, y_test) = data.digits()
    model = L.serial(L.Flatten(), L.Dense(64), L.Relu, L.Dense(10))
    loss = losses.softmax_cross_entropy
    _, params, state = model.init(jax.random.key(0), x.shape[1:])
    check_ok, gap = check_gradients(
        model, loss, params, state, x[:16], y[:16], method, fd=not args.quick
    )
    if not check_ok:
        raise SystemExit("gradient check failed")
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
        # The last batch's loss and its mean per-example norm before clipping.
        print(
            f"epoch {epoch:2d}  last batch: loss {float(value):.4f}, mean "
            f"|grad| {float(norm):.2f} unclipped; test accuracy {acc:.4f}"
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
    return {"dp_accuracy": acc, "plain_accuracy": ref_acc, "check_ok": check_ok,
            "mean_gap": gap}  # fmt: skip


if __name__ == "__main__":
    main()
