"""An autoencoder: digits squeezed through a 16-number bottleneck and back.

The encoder maps each image to a short code, the decoder maps the code back
to an image; trained to reproduce its own input under the mean squared
error, the pair must learn what digits have in common::

    encoder: Flatten - Dense 128 - ReLU - Dense 16            (the code)
    decoder: Dense 128 - ReLU - Dense H*W - Sigmoid - Reshape (H, W, 1)

``--model conv`` makes both halves convolutional (``H`` and ``W``
divisible by 4)::

    encoder: Conv 3x3x16 stride 2 - ReLU - Conv 3x3x32 stride 2 - ReLU
             - Flatten - Dense 16
    decoder: Dense (H/4)(W/4)32 - ReLU - Reshape (H/4, W/4, 32)
             - ConvTranspose 3x3x16 stride 2 - ReLU      (H/2, W/2, 16)
             - Upsample 2 - Conv 3x3x1 - Sigmoid          (H, W, 1)

a transposed convolution and a nearest-neighbour upsampling followed by a
convolution: the two ways back up to full size.

The sigmoid keeps reconstructed pixels in [0, 1], like the inputs. The
example checks the hand-written gradients (`fnn.backprop.check`), reports the
reconstruction MSE on the test images before and after training (Adam), and
saves a PNG with test inputs on the top row and their reconstructions below.

Run: python examples/autoencoder.py [--dataset digits|mnist] [--model dense|conv]
         [--code 16] [--method manual] [--plot autoencoder.png] [--quick]
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import numpy as np
import optax

from fnn import backprop, losses, optim, train
from fnn import layers as L

from _shared import finish, load_images, off_kinks, pyplot

DEFAULTS = {  # dataset: (epochs, batch size, learning rate)
    "digits": (60, 64, 3e-3),
    "mnist": (5, 128, 2e-3),
}
QUICK = {  # dataset: (epochs, training examples kept, test examples kept)
    "digits": (15, None, None),
    "mnist": (1, 4096, 1000),
}


def autoencoder(image_shape, code: int = 16, hidden: int = 128):
    """``(encoder, decoder, serial(encoder, decoder))`` for images ``(H, W, 1)``."""
    pixels = math.prod(image_shape)
    encoder = L.serial(L.Flatten(), L.Dense(hidden), L.Relu, L.Dense(code))
    decoder = L.serial(
        L.Dense(hidden), L.Relu, L.Dense(pixels), L.Sigmoid, L.Reshape(image_shape)
    )
    return encoder, decoder, L.serial(encoder, decoder)


def conv_autoencoder(image_shape, code: int = 16):
    """The convolutional pair, for images ``(H, W, 1)`` with ``H, W`` divisible by 4."""
    h, w = image_shape[0] // 4, image_shape[1] // 4
    encoder = L.serial(
        L.Conv(16, (3, 3), strides=2), L.Relu,
        L.Conv(32, (3, 3), strides=2), L.Relu,
        L.Flatten(), L.Dense(code),
    )  # fmt: skip
    decoder = L.serial(
        L.Dense(h * w * 32), L.Relu, L.Reshape((h, w, 32)),
        L.ConvTranspose(16, (3, 3), strides=2), L.Relu,
        L.Upsample(2), L.Conv(1, (3, 3)), L.Sigmoid,
    )  # fmt: skip
    return encoder, decoder, L.serial(encoder, decoder)


MODELS = {"dense": autoencoder, "conv": conv_autoencoder}


def reconstruction_mse(model, params, state, x) -> float:
    out, _ = jax.jit(model.apply)(params, state, x)
    return float(losses.mse(out, x))


def plot(x, out, path, title, n=10):
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(2, n, figsize=(1.2 * n, 2.8))
    for i in range(n):
        for row, images in enumerate((x, out)):
            ax = axes[row, i]
            ax.imshow(np.asarray(images[i, ..., 0]), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("output")
    finish(fig, path, title)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DEFAULTS), default="digits")
    parser.add_argument("--model", choices=sorted(MODELS), default="dense")
    parser.add_argument("--code", type=int, default=16, help="bottleneck size")
    parser.add_argument("--method", choices=backprop.METHODS, default="autodiff")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="a short run (seconds): for tests"
    )
    parser.add_argument("--plot", default="autoencoder.png", help="PNG path")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    dataset, ((x_train, _), (x_test, _)) = load_images(args.dataset)
    epochs, batch_size, lr = DEFAULTS[dataset]
    if args.quick:
        epochs, n_train, n_test = QUICK[dataset]
        x_train, x_test = x_train[:n_train], x_test[:n_test]
    epochs = args.epochs or epochs
    image_shape = x_train.shape[1:]
    print(
        f"{dataset}: {len(x_train)} training and {len(x_test)} test images "
        f"of shape {image_shape}, code of {args.code}"
    )

    _, _, model = MODELS[args.model](image_shape, args.code)
    init_key, check_key, fit_key = jax.random.split(jax.random.key(args.seed), 3)
    _, params, state = jax.jit(model.init, static_argnums=1)(init_key, image_shape)
    print(L.summary(model, image_shape))

    loss = losses.mse
    report = backprop.check(
        model,
        loss,
        off_kinks(params, check_key) if args.model == "conv" else params,
        state,
        x_train[:8],
        x_train[:8],
        key=check_key,
        finite_differences=not args.quick,
    )
    print(report)
    if not report.ok:
        raise SystemExit("gradient check failed: manual and autodiff disagree")

    before = reconstruction_mse(model, params, state, x_test)
    steps = epochs * (len(x_train) // batch_size)
    result = train.fit(
        model,
        loss,
        optim.adam(optax.cosine_decay_schedule(lr, steps)),
        params,
        state,
        (x_train, x_train),
        key=fit_key,
        epochs=epochs,
        batch_size=batch_size,
        method=args.method,
    )
    after = reconstruction_mse(model, result.params, result.state, x_test)
    # The floor any code must beat: predict the mean training image every time.
    mean_image = np.broadcast_to(x_train.mean(axis=0), x_test.shape)
    baseline = float(losses.mse(mean_image, x_test))
    print(
        f"test reconstruction MSE: {before:.4f} at init, {after:.4f} after "
        f"{epochs} epochs ({before / after:.1f}x lower; the mean image scores "
        f"{baseline:.4f}); {time.perf_counter() - start:.1f} s in all"
    )
    out, _ = jax.jit(model.apply)(result.params, result.state, x_test[:10])
    plot(
        x_test[:10],
        out,
        args.plot,
        f"{dataset}: inputs (top) and reconstructions from {args.code} numbers",
    )
    return {
        "mse_before": before,
        "mse_after": after,
        "mse_mean_image": baseline,
        "check_ok": report.ok,
    }


if __name__ == "__main__":
    main()
