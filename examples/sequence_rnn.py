"""Recurrent networks read digits row by row: SimpleRNN, LSTM and GRU compared.

Each image becomes a sequence: an 8x8 digit is 8 time steps of 8 pixels
(a 28x28 MNIST digit, 28 steps of 28). A recurrent layer reads the rows in
order and only its last hidden state, which has seen the whole image, is
classified::

    Reshape (T, d) - RNN(hidden) - LastStep - Dense 10

`fnn.layers.LastStep` keeps ``h_T``; its hand-written backward puts ``dy``
at the last time step and zeros before it. Backpropagation through time
then happens inside the recurrent layer's own backward (a reverse
``lax.scan``).

The three cells: `SimpleRNN` (``h_t = tanh(x_t w_x + h_{t-1} w_h + b)``),
whose gradient through time is a product of Jacobians that can vanish;
`LSTM` and `GRU`, whose gates let the gradient pass along the cell state.
For each, `fnn.backprop.check` first proves manual = autodiff = finite
differences, then Adam trains it, watching a validation split (10% held
out of the training images), and the test accuracy is reported at the end.

Run: python examples/sequence_rnn.py [--dataset digits|mnist]
         [--cells simple_rnn,lstm,gru] [--method manual] [--plot ...] [--quick]
"""

from __future__ import annotations

import argparse
import time

import jax
import optax

from fnn import backprop, data, losses, optim, train
from fnn import layers as L
from fnn.protocol import Layer
from fnn.recurrent import GRU, LSTM, SimpleRNN

from _shared import finish, load_images, pyplot

CELLS = {"simple_rnn": SimpleRNN, "lstm": LSTM, "gru": GRU}
DEFAULTS = {  # dataset: (epochs, batch size, learning rate, hidden units)
    "digits": (40, 64, 3e-3, 64),
    "mnist": (3, 128, 2e-3, 128),
}
QUICK = {  # dataset: (epochs, training examples kept, test examples kept)
    "digits": (12, None, None),
    "mnist": (1, 4096, 1000),
}


def classifier(cell, image_shape, hidden: int, num_classes: int = 10) -> Layer:
    """An ``(H, W, 1)`` image read as ``H`` steps of ``W``: an RNN, its last state."""
    rows, cols = image_shape[:2]
    return L.serial(
        L.Reshape((rows, cols)), cell(hidden), L.LastStep(), L.Dense(num_classes)
    )


def plot(histories, path, title):
    plt = pyplot()
    if plt is None:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, history in histories.items():
        epochs = range(1, len(history["train_loss"]) + 1)
        ax1.plot(epochs, history["train_loss"], label=name)
        ax2.plot(epochs, history["val_accuracy"], label=name)
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="training loss", yscale="log")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    ax1.legend()
    ax2.legend()
    finish(fig, path, title)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DEFAULTS), default="digits")
    parser.add_argument(
        "--cells",
        default="simple_rnn,lstm,gru",
        help=f"comma-separated, from {', '.join(CELLS)}",
    )
    parser.add_argument("--method", choices=backprop.METHODS, default="autodiff")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="a short run (seconds): for tests"
    )
    parser.add_argument("--plot", default="sequence_rnn.png", help="PNG path")
    args = parser.parse_args(argv)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        parser.error(f"unknown cells {unknown}; choose from {list(CELLS)}")

    dataset, ((x_train, y_train), (x_test, y_test)) = load_images(args.dataset)
    epochs, batch_size, lr, hidden = DEFAULTS[dataset]
    if args.quick:
        epochs, n_train, n_test = QUICK[dataset]
        x_train, y_train = x_train[:n_train], y_train[:n_train]
        x_test, y_test = x_test[:n_test], y_test[:n_test]
    epochs, hidden = args.epochs or epochs, args.hidden or hidden
    (x_train, y_train), (x_val, y_val) = data.split(x_train, y_train, 0.1)
    image_shape = x_train.shape[1:]
    print(
        f"{dataset}: {len(x_train)} training, {len(x_val)} validation and "
        f"{len(x_test)} test images,\n  read as {image_shape[0]} steps of "
        f"{image_shape[1]} pixels"
    )

    loss = losses.softmax_cross_entropy
    init_key, check_key, fit_key = jax.random.split(jax.random.key(args.seed), 3)
    results, histories = {}, {}
    for name in cells:
        start = time.perf_counter()
        model = classifier(CELLS[name], image_shape, hidden)
        _, params, state = jax.jit(model.init, static_argnums=1)(init_key, image_shape)
        report = backprop.check(
            model,
            loss,
            params,
            state,
            x_train[:8],
            y_train[:8],
            finite_differences=not args.quick,
        )
        print(f"{name}: {report}")
        if not report.ok:
            raise SystemExit(f"gradient check failed for {name}")
        steps = epochs * (len(x_train) // batch_size)
        schedule = optax.cosine_decay_schedule(lr, steps)
        optimizer = optax.chain(optax.clip_by_global_norm(1.0), optim.adam(schedule))
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
        )
        final = train.evaluate(model, loss, result.params, result.state, x_test, y_test)
        wall = time.perf_counter() - start
        results[name] = {**final, "time": wall, "check_ok": report.ok}
        histories[name] = result.history
        print(
            f"{name}: test accuracy {final['accuracy']:.4f} after {epochs} epochs "
            f"({args.method} gradients, {wall:.1f} s)\n"
        )

    print("cell         test accuracy   time")
    for name, r in results.items():
        print(f"{name:<12} {r['accuracy']:13.4f} {r['time']:6.1f} s")
    plot(histories, args.plot, f"{dataset} read row by row, {args.method} gradients")
    return results


if __name__ == "__main__":
    main()
