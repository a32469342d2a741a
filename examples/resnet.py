"""A small ResNet on MNIST: residual blocks, batch norm, augmentation.

The network (He et al. 2016, sized for digits)::

    Conv 3x3x16 - BatchNorm - ReLU                          stem
    [residual(Conv 3x3 - BN - ReLU - Conv 3x3 - BN) - ReLU] x 2 per stage,
      stages of 16, 32 and 64 channels; the first block of a stage halves
      the image with stride 2, and its shortcut, a 1x1 Conv of stride 2 and
      BatchNorm, projects ``x`` to the new shape (``residual(...,
      shortcut=...)``); elsewhere the shortcut is the identity
    GlobalAvgPool - Dense 10

Each training batch is augmented inside the compiled epoch (random shifts,
small rotations: `fnn.augment`, passed to `fit(..., augment=...)`).
`fnn.backprop.check` compares the hand-written backward of the whole stack
(convolutions, batch norm in training mode, the projection shortcuts,
global pooling) with autodiff first. Training watches a validation split
held out of the training images; the test set is used once, at the end.

MNIST is read by `fnn.data.mnist()` (`$FNN_DATA_DIR` or the user cache);
without it the example falls back to the bundled 8x8 digits.

Run: python examples/resnet.py [--dataset mnist|digits] [--epochs N]
         [--method manual] [--plot resnet.png] [--quick]
"""

from __future__ import annotations

import argparse
import time

import jax
import optax

from fnn import augment, backprop, data, losses, optim, train
from fnn import layers as L

from _shared import load_images, off_kinks, plot_curves

DEFAULTS = {  # dataset: (epochs, batch size, peak learning rate, max shift)
    "mnist": (3, 128, 3e-3, 2),
    "digits": (30, 64, 3e-3, 1),
}
QUICK = {  # dataset: (epochs, training examples kept, test examples kept)
    "mnist": (1, 2048, 1000),
    "digits": (10, 512, None),
}


def conv_bn(features: int, strides: int = 1, kernel=(3, 3)) -> list[L.Layer]:
    """A convolution without bias (batch norm shifts), then batch norm."""
    return [L.Conv(features, kernel, strides=strides, use_bias=False), L.BatchNorm()]


def block(features: int, strides: int = 1, project: bool = False) -> list[L.Layer]:
    """``ReLU(x + F(x))``, or ``ReLU(P(x) + F(x))`` where the shape changes."""
    branch = [*conv_bn(features, strides), L.Relu, *conv_bn(features)]
    shortcut = L.serial(*conv_bn(features, strides, (1, 1))) if project else None
    return [L.residual(*branch, shortcut=shortcut), L.Relu]


def resnet(stages=(16, 32, 64), blocks: int = 2, num_classes: int = 10) -> L.Layer:
    layers = [*conv_bn(stages[0]), L.Relu]
    for i, features in enumerate(stages):
        for j in range(blocks):
            first = j == 0 and i > 0
            layers += block(features, strides=2 if first else 1, project=first)
    return L.serial(*layers, L.GlobalAvgPool(), L.Dense(num_classes))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DEFAULTS), default="mnist")
    parser.add_argument("--method", choices=backprop.METHODS, default="autodiff")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="a short run on a subset: for tests"
    )
    parser.add_argument("--plot", default="resnet.png", help="PNG path")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    dataset, ((x_train, y_train), (x_test, y_test)) = load_images(args.dataset)
    epochs, batch_size, lr, shift = DEFAULTS[dataset]
    stages, blocks = (16, 32, 64), 2
    if args.quick:
        epochs, n_train, n_test = QUICK[dataset]
        x_train, y_train = x_train[:n_train], y_train[:n_train]
        x_test, y_test = x_test[:n_test], y_test[:n_test]
        stages, blocks, batch_size, lr = (8, 16), 1, 32, 1e-2
    epochs = args.epochs or epochs
    (x_train, y_train), (x_val, y_val) = data.split(x_train, y_train, 0.1)
    print(
        f"{dataset}: {len(x_train)} training, {len(x_val)} validation and "
        f"{len(x_test)} test images of shape {x_train.shape[1:]}"
    )

    model = resnet(stages, blocks)
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
        finite_differences=not args.quick,
    )
    print(report)
    if not report.ok:
        raise SystemExit("gradient check failed: manual and autodiff disagree")

    aug = augment.compose(augment.random_shift(shift), augment.random_rotation(10.0))
    steps = epochs * (len(x_train) // batch_size)
    result = train.fit(
        model,
        loss,
        optim.adam(optax.cosine_onecycle_schedule(steps, lr, pct_start=0.2)),
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
    # The one look at the test set, after every choice has been made.
    final = train.evaluate(model, loss, result.params, result.state, x_test, y_test)
    wall = time.perf_counter() - start
    print(
        f"test accuracy {final['accuracy']:.4f}, test loss {final['loss']:.4f}\n"
        f"  ({args.method} gradients, {epochs} epochs, shifts up to {shift} "
        f"pixel{'s' * (shift != 1)} and rotations up to 10 degrees; "
        f"{wall:.1f} s in all)"
    )
    plot_curves(
        result.history, args.plot, f"ResNet on {dataset}, {args.method} gradients"
    )
    return {**final, "dataset": dataset, "check_ok": report.ok}


if __name__ == "__main__":
    main()
