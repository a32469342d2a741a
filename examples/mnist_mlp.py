"""The main job: a deep MLP on handwritten digits, gradients checked, then trained.

The network is the course's deep feed-forward classifier, twice
Dense - BatchNorm - ReLU - Dropout, then a Dense layer of 10 logits whose
softmax is the output. The softmax sits inside the loss,
`softmax_cross_entropy`, which computes it by log-sum-exp and so stays
finite for any logits. Adam optimises it.

1. `fnn.backprop.check` compares manual, autodiff and finite-difference
   gradients on a small batch, in float64.
2. `fnn.train.fit` trains with `--method autodiff` or `manual`, printing
   per-epoch training loss and the loss and accuracy on a validation split
   (10% held out from the training images, never trained on).
3. The test set is touched once, at the end, for the final accuracy.
4. The loss and accuracy curves, and the first layer's learned features
   (each hidden unit's weights drawn as an image), are written to PNGs.

`--precision bfloat16` or `float16` runs forward and backward at that
precision (float32 master weights, loss and Adam); float16 adds dynamic
loss scaling, since its range is too narrow for small gradients.

Run: python examples/mnist_mlp.py [--dataset digits|mnist] [--method manual]
     [--precision float32|bfloat16|float16] [--quick]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

from fnn import backprop, data, losses, optim, train
from fnn import layers as L

from _shared import load_images, plot_curves, plot_filters

DEFAULTS = {  # dataset: (epochs, batch size, hidden units, learning rate)
    "digits": (30, 64, 256, 3e-3),
    "mnist": (5, 128, 512, 2e-3),
}
QUICK = {"digits": (4, 64), "mnist": (1, 64)}  # dataset: (epochs, hidden units)
QUICK_MNIST_IMAGES = 6000


def deep_mlp(hidden: int, num_classes: int = 10, rate: float = 0.2) -> L.Layer:
    """Flatten, then (Dense, BatchNorm, ReLU, Dropout) x 2, then Dense logits.

    The Dense layers before BatchNorm have no bias: batch norm subtracts the
    mean, so a bias there has zero gradient and its own shift does the job.
    """
    block = (L.Dense(hidden, use_bias=False), L.BatchNorm(), L.Relu, L.Dropout(rate))
    return L.serial(L.Flatten(), *block, *block, L.Dense(num_classes))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DEFAULTS), default="digits")
    parser.add_argument("--method", choices=backprop.METHODS, default="autodiff")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--precision", choices=("float32", "bfloat16", "float16"), default="float32"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short run (seconds): for tests"
    )
    parser.add_argument("--plot", default=None, help="PNG path for the curves")
    parser.add_argument(
        "--features-plot", default=None, help="PNG path for the learned features"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    # MNIST falls back to the bundled digits, saying so, when it is absent.
    dataset, ((x_train, y_train), (x_test, y_test)) = load_images(args.dataset)
    epochs, batch_size, hidden, lr = DEFAULTS[dataset]
    if args.quick:
        epochs, hidden = QUICK[dataset]
    epochs = args.epochs or epochs
    batch_size = args.batch_size or batch_size
    if args.quick and dataset == "mnist":
        x_train, y_train = x_train[:QUICK_MNIST_IMAGES], y_train[:QUICK_MNIST_IMAGES]
    (x_train, y_train), (x_val, y_val) = data.split(x_train, y_train, 0.1)
    print(
        f"{dataset}: {len(x_train)} training, {len(x_val)} validation (held "
        f"out of the training set)\n  and {len(x_test)} test images of shape "
        f"{x_train.shape[1:]}"
    )

    model = deep_mlp(hidden)
    init_key, check_key, fit_key = jax.random.split(jax.random.key(args.seed), 3)
    _, params, state = model.init(init_key, x_train.shape[1:])
    print(L.summary(model, x_train.shape[1:]))

    loss = losses.softmax_cross_entropy
    report = backprop.check(
        model,
        loss,
        params,
        state,
        x_train[:16],
        y_train[:16],
        key=check_key,
        finite_differences=not args.quick,
    )
    print(report)
    if not report.ok:
        raise SystemExit("gradient check failed")

    steps = epochs * (len(x_train) // batch_size)
    optimizer = optim.adam(optax.cosine_decay_schedule(lr, steps))
    compute_dtype = None if args.precision == "float32" else jnp.dtype(args.precision)
    if args.precision == "float16":
        optimizer = optim.dynamic_loss_scale(optimizer)
    result = train.fit(
        model,
        loss,
        optimizer,
        params,
        state,
        (x_train, y_train),
        key=fit_key,
        epochs=epochs,
        batch_size=batch_size,
        validation_data=(x_val, y_val),
        method=args.method,
        compute_dtype=compute_dtype,
        verbose=True,
    )
    # The one look at the test set, after every choice has been made.
    final = train.evaluate(model, loss, result.params, result.state, x_test, y_test)
    wall = time.perf_counter() - start
    print(
        f"test accuracy {final['accuracy']:.4f}, test loss {final['loss']:.4f}\n"
        f"  ({args.method} gradients, {args.precision}, {epochs} epochs, "
        f"{wall:.1f} s in all)"
    )
    plot_curves(
        result.history,
        args.plot or f"mnist_mlp_{dataset}_{args.method}.png",
        f"deep MLP on {dataset}, {args.method} gradients",
    )
    first = result.params[1]["w"]  # Flatten has no params; then the first Dense
    plot_filters(
        first[:, :32].reshape(*x_train.shape[1:3], -1),
        args.features_plot or f"mnist_mlp_{dataset}_features.png",
        f"first-layer features: the weights of 32 of the {hidden} hidden units",
    )
    return {
        **final,
        "dataset": dataset,
        "check_ok": report.ok,
        "history": result.history,
    }


if __name__ == "__main__":
    main()
