"""Learning rates: too small crawls, a good one converges, too large diverges.

The same MLP, its hand-written gradients first checked against autodiff
(`fnn.backprop.check`), is trained on the digits with plain gradient
descent at three learning rates; the training-loss curves go on one figure.
Too large a rate (30 here) throws the loss up to hundreds, where a guess
scores 2.3, and it stays there. Were it to overflow, `fit` would stop at the
first non-finite loss and say where (`result.stopped`, printed).

Run: python examples/learning_rates.py [--epochs 20] [--plot learning_rates.png]
         [--quick]
"""

import argparse
import math

import jax

from fnn import backprop, data, losses, optim, train
from fnn import layers as L

from _shared import finish, pyplot

RATES = {"too small": 1e-4, "good": 0.1, "too large": 30.0}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--quick", action="store_true", help="4 epochs (seconds): for tests"
    )
    parser.add_argument("--plot", default="learning_rates.png", help="PNG path")
    args = parser.parse_args(argv)
    epochs = 4 if args.quick else args.epochs
    plot_path = args.plot

    (x, y), _ = data.digits()
    model = L.serial(L.Flatten(), L.Dense(64), L.Tanh, L.Dense(10))
    _, params, state = model.init(jax.random.key(0), x.shape[1:])
    loss = losses.softmax_cross_entropy
    report = backprop.check(
        model, loss, params, state, x[:16], y[:16], finite_differences=not args.quick
    )
    print(report)
    if not report.ok:
        raise SystemExit("gradient check failed: manual and autodiff disagree")
    curves = {}
    for label, lr in RATES.items():
        result = train.fit(
            model,
            loss,
            optim.sgd(lr),
            params,
            state,
            (x, y),
            key=jax.random.key(1),
            epochs=epochs,
            batch_size=64,
        )
        curves[label] = result.history["train_loss"]
        final = curves[label][-1] if curves[label] else math.nan
        status = f"stopped: {result.stopped}" if result.stopped else ""
        print(
            f"learning rate {lr:g} ({label}): first epoch loss "
            f"{curves[label][0] if curves[label] else math.nan:.4f}, "
            f"last {final:.4f} {status}".rstrip()
        )
    if plot_path:
        plt = pyplot()
        if plt is None:
            return {"curves": curves, "check_ok": report.ok}
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, values in curves.items():
            ax.plot(
                range(1, len(values) + 1),
                values,
                marker="o",
                ms=3,
                label=f"{label}: lr = {RATES[label]:g}",
            )
        ax.set(
            xlabel="epoch",
            ylabel="training loss",
            yscale="log",
            title="Gradient descent on digits at three learning rates",
        )
        ax.legend()
        finish(fig, plot_path)
    return {"curves": curves, "check_ok": report.ok}


if __name__ == "__main__":
    main()
