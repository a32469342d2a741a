"""A small convolutional network on MNIST: 99% test accuracy in 3 epochs.

The network is the classic two-block CNN::

    Conv 3x3x32 - ReLU - MaxPool 2 - Conv 3x3x64 - ReLU - MaxPool 2
    - Flatten - Dense 128 - ReLU - Dropout 0.5 - Dense 10

trained with Adam on a one-cycle learning-rate schedule (warm up, then cosine
decay), batch 128. Every layer has a hand-written backward pass: the
convolution's is a transposed convolution, max pooling routes each gradient
to its window's maximum. `fnn.backprop.check` compares them with autodiff and
float64 finite differences on a small batch before training, and
`--method manual` trains on them.

Training reports, every epoch, the loss and accuracy on a validation split
(10% held out of the training images); the test set is used once, at the
end. `--augment` trains the same network twice, without and with random
shifts and small rotations (`fnn.augment`) of each training batch, and
compares their test accuracies. The first convolution's learned filters
are drawn to a second PNG.

MNIST is read by `fnn.data.mnist()` (from `$FNN_DATA_DIR` or the user cache,
downloading where a network exists); without it the example says so and
falls back to the 8x8 digits bundled with fnn (`--dataset digits` picks them
directly). On 2 CPU cores 3 MNIST epochs take a few minutes.

Run: python examples/mnist_cnn.py [--dataset mnist|digits] [--method manual]
         [--epochs 3] [--augment] [--plot mnist_cnn.png] [--quick]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax

from fnn import augment, backprop, data, losses, optim, train
from fnn import layers as L
from fnn.conv import Conv, MaxPool

from _shared import load_images, off_kinks, plot_curves, plot_filters

DEFAULTS = {  # dataset: (epochs, batch size, peak learning rate)
    "mnist": (3, 128, 3e-3),
    "digits": (30, 64, 3e-3),
}
QUICK = {  # dataset: (epochs, training examples kept, test examples kept)
    "mnist": (1, 4096, 2000),
    "digits": (12, None, None),
}
AUGMENT = {  # dataset: (max shift in pixels, max rotation in degrees)
    "mnist": (2, 10.0),
    "digits": (1, 10.0),
}


def augmentation(dataset: str):
    """Random shifts, then small rotations: digits stay digits."""
    shift, degrees = AUGMENT[dataset]
    return augment.compose(
        augment.random_shift(shift), augment.random_rotation(degrees)
    )


def cnn(num_classes: int = 10, rate: float = 0.5) -> L.Layer:
    """Two conv blocks (3x3 convolution, ReLU, 2x2 max pooling), then an MLP."""
    return L.serial(
        Conv(32, (3, 3)), L.Relu, MaxPool((2, 2)),
        Conv(64, (3, 3)), L.Relu, MaxPool((2, 2)),
        L.Flatten(), L.Dense(128), L.Relu, L.Dropout(rate), L.Dense(num_classes),
    )  # fmt: skip


def epoch_times(times) -> str:
    """The first epoch's time (it compiles) and the mean of the others."""
    text = f"the first epoch {times[0]:.2f} s"
    if len(times) > 1:
        text += f", the others {np.mean(times[1:]):.3f} s on average"
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DEFAULTS), default="mnist")
    parser.add_argument("--method", choices=backprop.METHODS, default="autodiff")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run on a subset (seconds): for tests",
    )
    parser.add_argument(
        "--augment",
        action="store_true",
        help="train without and with augmentation; compare test accuracy",
    )
    parser.add_argument("--plot", default="mnist_cnn.png", help="PNG path")
    parser.add_argument(
        "--features-plot", default=None, help="PNG path for the first-layer filters"
    )
    args = parser.parse_args(argv)

    start = time.perf_counter()
    dataset, ((x_train, y_train), (x_test, y_test)) = load_images(args.dataset)
    epochs, batch_size, lr = DEFAULTS[dataset]
    if args.quick:
        epochs, n_train, n_test = QUICK[dataset]
        x_train, y_train = x_train[:n_train], y_train[:n_train]
        x_test, y_test = x_test[:n_test], y_test[:n_test]
    epochs = args.epochs or epochs
    batch_size = args.batch_size or batch_size
    lr = args.lr or lr
    (x_train, y_train), (x_val, y_val) = data.split(x_train, y_train, 0.1)
    print(
        f"{dataset}: {len(x_train)} training, {len(x_val)} validation (held "
        f"out of the training set)\n  and {len(x_test)} test images of shape "
        f"{x_train.shape[1:]}"
    )

    model = cnn()
    init_key, check_key, fit_key = jax.random.split(jax.random.key(args.seed), 3)
    _, params, state = jax.jit(model.init, static_argnums=1)(
        init_key, x_train.shape[1:]
    )
    print(L.summary(model, x_train.shape[1:]))

    loss = losses.softmax_cross_entropy
    report = backprop.check(
        model,
        loss,
        off_kinks(params, check_key),
        state,
        x_train[:8],
        y_train[:8],
        key=check_key,
        finite_differences=not args.quick,
    )
    print(report)
    if not report.ok:
        raise SystemExit("gradient check failed: manual and autodiff disagree")

    steps = epochs * (len(x_train) // batch_size)
    schedule = optax.cosine_onecycle_schedule(steps, lr, pct_start=0.2)
    runs = {"plain": None}
    if args.augment:
        runs["augmented"] = augmentation(dataset)
        shift, degrees = AUGMENT[dataset]
        print(
            f"augmentation: shifts up to {shift} pixels, rotations up to "
            f"{degrees:g} degrees, a fresh draw every batch"
        )
    results = {}
    for name, aug in runs.items():
        if args.augment:
            print(f"\n{name} training")
        tic = time.perf_counter()
        result = train.fit(
            model,
            loss,
            optim.adam(schedule),
            params,
            state,
            (x_train, y_train),
            key=fit_key,
            epochs=epochs,
            batch_size=batch_size,
            validation_data=(x_val, y_val),
            method=args.method,
            augment=aug,
            verbose=True,
        )
        train_time = time.perf_counter() - tic
        # The one look at the test set, after every choice has been made.
        final = train.evaluate(model, loss, result.params, result.state, x_test, y_test)
        results[name] = (result, final, train_time)
        print(
            f"{name}: test accuracy {final['accuracy']:.4f}, test loss "
            f"{final['loss']:.4f}\n  ({args.method} gradients, {epochs} epochs of "
            f"{len(x_train)} images: {train_time:.1f} s training,\n  "
            f"{epoch_times(result.history['time'])})"
        )
    wall = time.perf_counter() - start
    if args.augment:
        plain, augmented = results["plain"][1], results["augmented"][1]
        print(
            f"\naugmentation moved test accuracy from {plain['accuracy']:.4f} to "
            f"{augmented['accuracy']:.4f} "
            f"({augmented['accuracy'] - plain['accuracy']:+.4f}) and test loss "
            f"from {plain['loss']:.4f} to {augmented['loss']:.4f}"
        )
    print(f"{wall:.1f} s in all")
    name = "augmented" if args.augment else "plain"
    result, final, train_time = results[name]
    plot_curves(
        result.history,
        args.plot,
        f"CNN on {dataset}, {args.method} gradients"
        + (", augmented" if args.augment else ""),
        marker="o",
    )
    plot_filters(
        result.params[0]["w"],
        args.features_plot or args.plot.replace(".png", "_filters.png"),
        "the first convolution's 32 learned 3x3 filters",
    )
    return {
        **final,
        "dataset": dataset,
        "epochs": epochs,
        "train_time": train_time,
        "wall_time": wall,
        "epoch_times": list(np.asarray(result.history["time"])),
        "check_ok": report.ok,
        "test_accuracy": {k: r[1]["accuracy"] for k, r in results.items()},
    }


if __name__ == "__main__":
    main()
