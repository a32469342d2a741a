"""Transfer learning: a body trained on digits 0-4 helps learn 5-9 from few examples.

1. Task A: a small CNN learns the digits 0-4 from all their training images.
   Its parameters are saved with `fnn.checkpoint.save`.
2. Task B: the digits 5-9, from only ``--shots`` training images per class.
   A new model, the same network with a fresh 5-way output layer, loads
   everything else from the checkpoint (`fnn.checkpoint.load` with
   ``prefix`` and ``strict=False``: part of a checkpoint into part of a
   model). Its convolutional body stays frozen: `fnn.optim.freeze` gives
   those parameters exactly zero updates and keeps no Adam moments for
   them; the dense layers on top train.
3. The same model trained from scratch on the same few images, for
   comparison.
4. Fine-tuning: starting from (2), everything trains, at a tenth of the
   learning rate, so that the body can adapt without being thrown far from
   what it learned (from 25 images it may gain or lose a little).

Test accuracies on all of task B's test images are compared at the end; the
hand-written gradients are checked against autodiff first.

Run: python examples/transfer_learning.py [--shots 10] [--plot ...] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jax
import numpy as np

from fnn import backprop, checkpoint, data, losses, optim, train
from fnn import layers as L

from _shared import finish, off_kinks, pyplot

LR = 3e-3


def body() -> list[L.Layer]:
    """The convolutional feature extractor: ``(8, 8, 1) -> (512,)``."""
    return [
        L.Conv(16, (3, 3)), L.Relu, L.MaxPool((2, 2)),
        L.Conv(32, (3, 3)), L.Relu, L.Flatten(),
    ]  # fmt: skip


FROZEN = len(body())  # layers 0 .. FROZEN - 1 stay frozen on task B


def model_with_head(classes: int) -> L.Layer:
    """The body, then ``Dense(64) - ReLU - Dense(classes)``."""
    return L.serial(*body(), L.Dense(64), L.Relu, L.Dense(classes))


def task(x, y, digits):
    """The images of ``digits``, relabelled ``0..len(digits)-1``."""
    keep = np.isin(y, digits)
    return x[keep], (y[keep] - digits[0]).astype(np.int32)


def few_shots(x, y, shots: int, seed: int = 0):
    """``shots`` random examples of each class."""
    rng = np.random.default_rng(seed)
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), shots, replace=False) for c in np.unique(y)]
    )
    return x[idx], y[idx]


def fit(model, optimizer, params, state, xy, key, epochs, batch_size):
    loss = losses.softmax_cross_entropy
    return train.fit(
        model, loss, optimizer, params, state, xy, key=key, epochs=epochs,
        batch_size=batch_size,
    )  # fmt: skip


def accuracy(model, params, state, x, y) -> float:
    loss = losses.softmax_cross_entropy
    return float(train.evaluate(model, loss, params, state, x, y)["accuracy"])


def plot(curves, path, title):
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, label=label)
    ax.set(xlabel="epoch", ylabel="training loss", yscale="log", title=title)
    ax.legend()
    finish(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=5, help="images per class")
    parser.add_argument("--epochs", type=int, default=15, help="on task A")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="fewer epochs (seconds): for tests"
    )
    parser.add_argument("--plot", default="transfer_learning.png", help="PNG path")
    args = parser.parse_args(argv)
    epochs_a = 5 if args.quick else args.epochs
    epochs_b = 40 if args.quick else 100  # few examples: many one-step epochs
    keys = jax.random.split(jax.random.key(args.seed), 6)

    (x_train, y_train), (x_test, y_test) = data.digits()
    xa, ya = task(x_train, y_train, [0, 1, 2, 3, 4])
    xb_all, yb_all = task(x_train, y_train, [5, 6, 7, 8, 9])
    xb, yb = few_shots(xb_all, yb_all, args.shots, args.seed)
    xb_test, yb_test = task(x_test, y_test, [5, 6, 7, 8, 9])
    xa_test, ya_test = task(x_test, y_test, [0, 1, 2, 3, 4])
    print(
        f"task A (digits 0-4): {len(xa)} training images;\n"
        f"task B (digits 5-9): {len(xb)} training images ({args.shots} per "
        f"class), {len(xb_test)} test"
    )

    # 1. Task A, all of it; the gradients checked first.
    model_a = model_with_head(5)
    _, params, state = model_a.init(keys[0], x_train.shape[1:])
    report = backprop.check(
        model_a,
        losses.softmax_cross_entropy,
        off_kinks(params, keys[1]),
        state,
        xa[:8],
        ya[:8],
        finite_differences=not args.quick,
    )
    print(report)
    if not report.ok:
        raise SystemExit("gradient check failed: manual and autodiff disagree")
    result_a = fit(
        model_a, optim.adam(LR), params, state, (xa, ya), keys[1], epochs_a, 64
    )
    acc_a = accuracy(model_a, result_a.params, result_a.state, xa_test, ya_test)
    print(f"1. task A after {epochs_a} epochs: test accuracy {acc_a:.4f} on digits 0-4")

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "task_a.fnn"
        checkpoint.save(path, (result_a.params, result_a.state))

        # 2. Task B: all but the output layer from task A; the body frozen.
        model_b = model_with_head(5)
        _, params_b, state_b = model_b.init(keys[2], x_train.shape[1:])
        head = len(params_b) - 1
        body_params = checkpoint.load(path, params_b[:head], prefix="[0]", strict=False)
        body_state = checkpoint.load(path, state_b[:head], prefix="[1]", strict=False)
    start_params = (*body_params, params_b[head])
    start_state = (*body_state, state_b[head])
    trainable = tuple(i >= FROZEN for i in range(len(params_b)))
    frozen = fit(
        model_b, optim.freeze(optim.adam(LR), trainable), start_params, start_state,
        (xb, yb), keys[3], epochs_b, 10,
    )  # fmt: skip
    unchanged = all(
        np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(frozen.params[:FROZEN]),
            jax.tree.leaves(body_params[:FROZEN]),
        )
    )

    # 3. The same model from scratch on the same few images.
    scratch = fit(
        model_b, optim.adam(LR), params_b, state_b, (xb, yb), keys[4], epochs_b, 10
    )

    # 4. Fine-tune everything from (2) at a tenth of the rate.
    tuned = fit(
        model_b, optim.adam(LR / 10), frozen.params, frozen.state, (xb, yb), keys[5],
        epochs_b, 10,
    )  # fmt: skip

    runs = {"frozen body": frozen, "from scratch": scratch, "fine-tuned": tuned}
    results = {
        label: accuracy(model_b, r.params, r.state, xb_test, yb_test)
        for label, r in runs.items()
    }
    print(
        f"\ntask B from {len(xb)} images ({epochs_b} epochs each), test "
        f"accuracy\non {len(xb_test)} images of digits 5-9:"
    )
    notes = {"fine-tuned": f"(after the frozen run's {epochs_b} epochs)"}
    for label, acc in results.items():
        print(f"  {label:22s} {acc:.4f}  {notes.get(label, '')}".rstrip())
    print(f"the frozen body's parameters stayed bit for bit the same: {unchanged}")
    plot(
        {
            "frozen body": frozen.history["train_loss"],
            "from scratch": scratch.history["train_loss"],
            "fine-tuning (after frozen)": tuned.history["train_loss"],
        },
        args.plot,
        f"digits 5-9 from {args.shots} images per class",
    )
    return {
        "task_a_accuracy": acc_a,
        "accuracy": results,
        "body_unchanged": unchanged,
        "check_ok": report.ok,
    }


if __name__ == "__main__":
    main()
