"""A DCGAN-style generator draws digits: transposed convolutions from noise.

The generator and the discriminator of Radford et al. (2016), sized for the
8x8 digits::

    G: z (32) - Dense 2*2*64 - BatchNorm - ReLU - Reshape (2, 2, 64)
       - ConvTranspose 3x3x32 stride 2 - BatchNorm - ReLU     (4, 4, 32)
       - ConvTranspose 3x3x1 stride 2 - Sigmoid               (8, 8, 1)
    D: Conv 3x3x32 stride 2 - LeakyReLU 0.2 - Conv 3x3x64 stride 2
       - LeakyReLU 0.2 - Flatten - Dense 1 (a logit: real or generated)

They train in turn with Adam (``b1 = 0.5``), as in `examples/gan.py`: ``D``
on a batch of real and a batch of generated digits, then ``G`` through
``D`` (the non-saturating loss). The generator's gradient is the chain rule
by hand, ``D``'s input cotangent fed to ``G.backward`` (``--method
manual``), or ``jax.grad`` of the composition (``autodiff``);
`fnn.backprop.check` proves ``D`` and ``serial(G, D)`` right first.

How close the samples come to real digits is measured by the distance from
each of 256 samples to its nearest training image (root mean square over
pixels), before and after training; the samples go to a PNG.

Run: python examples/dcgan.py [--steps 3000] [--method autodiff]
         [--plot dcgan.png] [--quick]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn import backprop, data, losses
from fnn import layers as L

from _shared import finish, off_kinks, pyplot

NOISE = 32
LOSS = losses.sigmoid_binary_cross_entropy


def networks():
    """``(generator, discriminator)`` for 8x8 single-channel images."""
    generator = L.serial(
        L.Dense(2 * 2 * 64), L.BatchNorm(), L.Relu, L.Reshape((2, 2, 64)),
        L.ConvTranspose(32, (3, 3), strides=2), L.BatchNorm(), L.Relu,
        L.ConvTranspose(1, (3, 3), strides=2), L.Sigmoid,
    )  # fmt: skip
    discriminator = L.serial(
        L.Conv(32, (3, 3), strides=2), L.LeakyRelu(0.2),
        L.Conv(64, (3, 3), strides=2), L.LeakyRelu(0.2),
        L.Flatten(), L.Dense(1),
    )  # fmt: skip
    return generator, discriminator


def make_step(gen, disc, g_opt, d_opt, method, batch, d_state):
    """A jitted ``step(carry, real, key) -> (carry, (d_loss, g_loss))``.

    ``carry = (g_params, g_state, d_params, g_opt_state, d_opt_state)``;
    ``d_state`` is the discriminator's (empty) state.
    """
    d_grad_fn = backprop.value_and_grad(disc, LOSS, method)
    labels = jnp.concatenate([jnp.ones((batch, 1)), jnp.zeros((batch, 1))])
    ones = jnp.ones((batch, 1))

    def g_loss_and_grad(g_params, g_state, d_params, z):
        if method == "manual":
            fake, g_state, g_cache = gen.forward(g_params, g_state, z, train=True)
            logits, _, d_cache = disc.forward(d_params, d_state, fake, train=True)
            _, dfake = disc.backward(d_params, d_cache, LOSS.grad(logits, ones))
            dg_params, _ = gen.backward(g_params, g_cache, dfake)
            return LOSS(logits, ones), g_state, dg_params

        def g_loss(g_params):
            fake, new_state = gen.apply(g_params, g_state, z, train=True)
            logits, _ = disc.apply(d_params, d_state, fake, train=True)
            return LOSS(logits, ones), new_state

        (value, g_state), grads = jax.value_and_grad(g_loss, has_aux=True)(g_params)
        return value, g_state, grads

    @jax.jit
    def step(carry, real, key):
        g_params, g_state, d_params, g_os, d_os = carry
        k_fake, k_gen = jax.random.split(key)
        z = jax.random.normal(k_fake, (batch, NOISE))
        fake, g_state = gen.apply(g_params, g_state, z, train=True)
        x = jnp.concatenate([real, fake])
        (d_loss, _), d_grads = d_grad_fn(d_params, d_state, x, labels)
        updates, d_os = d_opt.update(d_grads, d_os, d_params)
        d_params = optax.apply_updates(d_params, updates)

        z = jax.random.normal(k_gen, (batch, NOISE))
        g_loss, g_state, g_grads = g_loss_and_grad(g_params, g_state, d_params, z)
        updates, g_os = g_opt.update(g_grads, g_os, g_params)
        g_params = optax.apply_updates(g_params, updates)
        return (g_params, g_state, d_params, g_os, d_os), (d_loss, g_loss)

    return step


def nearest_distance(samples, images) -> float:
    """Mean over samples of the RMS pixel distance to the nearest image."""
    s = np.asarray(samples).reshape(len(samples), -1)
    x = np.asarray(images).reshape(len(images), -1)
    d2 = (s**2).sum(1)[:, None] - 2 * s @ x.T + (x**2).sum(1)[None, :]
    return float(np.sqrt(np.maximum(d2.min(axis=1), 0) / s.shape[1]).mean())


def plot(real, before, after, path, title):
    plt = pyplot()
    if plt is None:
        return
    rows = (("real", real), ("G at init", before), ("G trained", after))
    fig, axes = plt.subplots(3, 12, figsize=(12, 3.4))
    for r, (label, images) in enumerate(rows):
        for c in range(12):
            ax = axes[r, c]
            ax.imshow(np.asarray(images[c, ..., 0]), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=8)
    finish(fig, path, title)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=backprop.METHODS, default="manual")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="a short run (seconds): for tests"
    )
    parser.add_argument("--plot", default="dcgan.png", help="PNG path")
    args = parser.parse_args(argv)
    steps = 60 if args.quick else args.steps
    batch = args.batch_size

    start = time.perf_counter()
    (x_train, _), _ = data.digits()
    gen, disc = networks()
    keys = jax.random.split(jax.random.key(args.seed), 6)
    _, g_params, g_state = gen.init(keys[0], (NOISE,))
    _, d_params, d_state = disc.init(keys[1], x_train.shape[1:])

    z_small = jax.random.normal(keys[2], (8, NOISE))
    x_small = jnp.concatenate(
        [x_train[:4], gen.apply(g_params, g_state, z_small[:4])[0]]
    )
    y_small = jnp.concatenate([jnp.ones((4, 1)), jnp.zeros((4, 1))])
    fd = not args.quick
    # Off the kinks: on a digit's blank background a fresh conv unit is
    # exactly 0, on LeakyReLU's kink (see _shared.off_kinks).
    g_check, d_check = off_kinks((g_params, d_params), keys[5])
    reports = {
        "discriminator": backprop.check(
            disc, LOSS, d_check, d_state, x_small, y_small, finite_differences=fd
        ),
        "serial(generator, discriminator)": backprop.check(
            L.serial(gen, disc), LOSS, (g_check, d_check), (g_state, d_state),
            z_small, jnp.ones((8, 1)), finite_differences=fd,
        ),
    }  # fmt: skip
    for name, report in reports.items():
        print(f"gradient check of {name}:\n{report}")
        if not report.ok:
            raise SystemExit(f"gradient check failed for the {name}")

    z_eval = jax.random.normal(keys[3], (256, NOISE))
    sample = jax.jit(lambda p, s: gen.apply(p, s, z_eval)[0])
    before = sample(g_params, g_state)
    dist_before = nearest_distance(before, x_train)

    adam = optax.adam(args.lr, b1=0.5)
    step = make_step(gen, disc, adam, adam, args.method, batch, d_state)
    carry = (g_params, g_state, d_params, adam.init(g_params), adam.init(d_params))
    rng = np.random.default_rng(args.seed)
    for i in range(steps):
        real = x_train[rng.choice(len(x_train), batch, replace=False)]
        carry, (d_loss, g_loss) = step(carry, real, jax.random.fold_in(keys[4], i))
        if (i + 1) % max(1, steps // 6) == 0 or i + 1 == steps:
            print(
                f"step {i + 1:5d}  D loss {float(d_loss):.3f}  "
                f"G loss {float(g_loss):.3f}"
            )
    g_params, g_state = carry[0], carry[1]
    after = sample(g_params, g_state)
    dist_after = nearest_distance(after, x_train)
    wall = time.perf_counter() - start
    print(
        f"RMS pixel distance from a sample to its nearest training digit,\n"
        f"  mean over {len(after)} samples: {dist_before:.3f} at init, "
        f"{dist_after:.3f} after {steps} steps\n"
        f"  ({args.method} gradients, {wall:.1f} s in all)"
    )
    plot(
        x_train[:12],
        before,
        after,
        args.plot,
        f"DCGAN on 8x8 digits, {steps} steps, {args.method} gradients",
    )
    return {
        "distance_before": dist_before,
        "distance_after": dist_after,
        "check_ok": all(r.ok for r in reports.values()),
    }


if __name__ == "__main__":
    main()
