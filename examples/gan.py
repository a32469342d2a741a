"""A GAN learns a ring of eight Gaussians, its generator trained through the critic.

A generator ``G`` maps noise ``z`` to points in the plane; a discriminator
``D`` scores points with a logit, real (from the data) against fake (from
``G``). They train in turn, each with its own Adam:

- ``D`` minimises ``BCE(D(x_real), 1) + BCE(D(G(z)), 0)``;
- ``G`` minimises the non-saturating ``BCE(D(G(z)), 1)`` (Goodfellow et al.
  2014): its gradient stays strong while ``D`` easily spots the fakes,
  where ``log(1 - D(G(z)))`` would flatten out.

Both losses are `fnn.losses.sigmoid_binary_cross_entropy` on logits. The
generator's gradient has to flow through the discriminator. With fnn's layer
protocol that is the chain rule done by hand (``--method manual``)::

    fake, _, g_cache = G.forward(g_params, g_state, z)
    logits, _, d_cache = D.forward(d_params, d_state, fake)
    dlogits = loss.grad(logits, ones)
    _, dfake = D.backward(d_params, d_cache, dlogits)   # D's input cotangent...
    dg_params, _ = G.backward(g_params, g_cache, dfake)  # ...is G's output's

``--method autodiff`` takes ``jax.grad`` of the composed function instead.
The chain is also the backward of ``serial(G, D)``, so `fnn.backprop.check`
on that composite (and on ``D`` alone) proves it right before training.

A plain GAN on this data tends to collapse onto a few of the modes: ``D``
judges one point at a time, so ``G`` is never penalised for putting all its
points in the same place. ``D`` here judges ``m = 4`` points at a time, all
real or all fake (PacGAN, Lin et al. 2018): a pack that keeps landing on the
same modes looks fake. In fnn that is per-example shapes: ``G`` maps noise
``(m, 16) -> (m, 2)`` (its Dense layers act on the last axis) and ``D``
starts with ``Flatten``, ``(m, 2) -> (2m,)``. ``--pack 1`` gives the plain
GAN, for comparison.

The data: eight Gaussians of standard deviation 0.05 on a circle of radius 2.
Quality is measured on 2,000 samples: the mean distance to the nearest mode,
the fraction of samples within 0.25 of a mode, and how many of the eight
modes get at least 2% of the samples (a collapsed GAN covers few).

Run: python examples/gan.py [--method autodiff] [--pack 4] [--steps 6000]
         [--plot gan.png] [--quick]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn import backprop, losses
from fnn import layers as L

from _shared import finish, pyplot

MODES = 8
RADIUS = 2.0
STD = 0.05
NEAR = 0.25  # a sample within this distance of a mode is a good one
COVERED = 0.02  # a mode holding this fraction of the samples, near it, is covered
NOISE = 16  # dimension of the generator's noise z
LOSS = losses.sigmoid_binary_cross_entropy


def centres() -> jax.Array:
    """The ``(MODES, 2)`` mode centres, evenly spaced on the circle."""
    angle = 2 * jnp.pi * jnp.arange(MODES) / MODES
    return RADIUS * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)


def sample_real(key, shape) -> jax.Array:
    """Points of the mixture, ``shape + (2,)``: a random mode plus noise."""
    k_mode, k_noise = jax.random.split(key)
    mode = jax.random.randint(k_mode, shape, 0, MODES)
    return centres()[mode] + STD * jax.random.normal(k_noise, (*shape, 2))


def networks(hidden: int = 128):
    """``(generator, discriminator)``: MLPs with two hidden layers.

    Per example the generator maps ``(..., NOISE) -> (..., 2)``; the
    discriminator flattens its input (``m`` points) and gives one logit.
    """
    generator = L.serial(L.Dense(hidden), L.Relu, L.Dense(hidden), L.Relu, L.Dense(2))
    discriminator = L.serial(
        L.Flatten(), L.Dense(hidden), L.LeakyRelu(0.2),
        L.Dense(hidden), L.LeakyRelu(0.2), L.Dense(1),
    )  # fmt: skip
    return generator, discriminator


def quality(samples) -> dict[str, float]:
    """Mean distance to the nearest mode, fraction near one, modes covered."""
    samples = np.asarray(samples).reshape(-1, 2)
    c = np.asarray(centres())
    dist = np.linalg.norm(samples[:, None, :] - c[None, :, :], axis=-1)
    nearest, which = dist.min(axis=1), dist.argmin(axis=1)
    good = nearest < NEAR
    share = np.bincount(which[good], minlength=MODES) / len(samples)
    return {
        "mean_distance": float(nearest.mean()),
        "good_fraction": float(good.mean()),
        "modes_covered": int((share >= COVERED).sum()),
    }


def make_train(gen, disc, g_opt, d_opt, method, batch, m, states):
    """A jitted ``train(carry, key, steps) -> (carry, losses)``: a scan of steps.

    ``carry = (g_params, d_params, g_opt_state, d_opt_state)``. Each step
    updates ``D`` once on ``batch`` real and ``batch`` fake examples of ``m``
    points each, then ``G`` once. ``states`` are the networks' (empty)
    states, ``(g_state, d_state)``.
    """
    g_s, d_s = states
    d_grad_fn = backprop.value_and_grad(disc, LOSS, method)
    labels = jnp.concatenate([jnp.ones((batch, 1)), jnp.zeros((batch, 1))])
    ones = jnp.ones((batch, 1))

    def g_loss_and_grad(g_params, d_params, z):
        if method == "manual":
            fake, _, g_cache = gen.forward(g_params, g_s, z, train=True)
            logits, _, d_cache = disc.forward(d_params, d_s, fake, train=True)
            dlogits = LOSS.grad(logits, ones)
            _, dfake = disc.backward(d_params, d_cache, dlogits)
            dg_params, _ = gen.backward(g_params, g_cache, dfake)
            return LOSS(logits, ones), dg_params

        def g_loss(g_params):
            fake, _ = gen.apply(g_params, g_s, z, train=True)
            logits, _ = disc.apply(d_params, d_s, fake, train=True)
            return LOSS(logits, ones)

        return jax.value_and_grad(g_loss)(g_params)

    def step(carry, key):
        g_params, d_params, g_state, d_state = carry
        k_real, k_fake, k_gen = jax.random.split(key, 3)
        real = sample_real(k_real, (batch, m))
        fake, _ = gen.apply(g_params, g_s, jax.random.normal(k_fake, (batch, m, NOISE)))
        x = jnp.concatenate([real, fake])
        (d_loss, _), d_grads = d_grad_fn(d_params, d_s, x, labels)
        updates, d_state = d_opt.update(d_grads, d_state, d_params)
        d_params = optax.apply_updates(d_params, updates)

        z = jax.random.normal(k_gen, (batch, m, NOISE))
        g_loss, g_grads = g_loss_and_grad(g_params, d_params, z)
        updates, g_state = g_opt.update(g_grads, g_state, g_params)
        g_params = optax.apply_updates(g_params, updates)
        return (g_params, d_params, g_state, d_state), jnp.stack([d_loss, g_loss])

    def train(carry, key, steps):
        return jax.lax.scan(step, carry, jax.random.split(key, steps))

    return jax.jit(train, static_argnums=2)


def plot(real, before, after, path, title):
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), sharex=True, sharey=True)
    for ax, (label, fake) in zip(axes, (("at init", before), ("trained", after))):
        ax.scatter(*np.asarray(real).T, s=3, alpha=0.3, label="real")
        ax.scatter(*np.asarray(fake).T, s=3, alpha=0.3, label="generated")
        ax.set(title=f"generator {label}", aspect="equal", xlim=(-3, 3), ylim=(-3, 3))
        ax.legend(loc="upper right", markerscale=4)
    finish(fig, path, title)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=backprop.METHODS, default="manual")
    parser.add_argument(
        "--pack",
        type=int,
        default=4,
        help="points per discriminator example (1: a plain GAN)",
    )
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument(
        "--batch-size", type=int, default=64, help="examples (packs of points) per step"
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="a short run (seconds): for tests"
    )
    parser.add_argument("--plot", default="gan.png", help="PNG path")
    args = parser.parse_args(argv)
    steps = 1500 if args.quick else args.steps
    chunk = min(steps, 500)
    m, batch = args.pack, args.batch_size

    start = time.perf_counter()
    gen, disc = networks()
    keys = jax.random.split(jax.random.key(args.seed), 5)
    _, g_params, g_s = jax.jit(gen.init, static_argnums=1)(keys[0], (m, NOISE))
    _, d_params, d_s = jax.jit(disc.init, static_argnums=1)(keys[1], (m, 2))

    # D alone, and G through D: serial(G, D)'s backward is the manual chain.
    # (Random points, not zeros: at init the biases are 0 and a zero input
    # would sit every unit on LeakyReLU's kink.)
    x_small = jax.random.normal(keys[3], (8, m, 2))
    y_small = jnp.concatenate([jnp.ones((4, 1)), jnp.zeros((4, 1))])
    fd = not args.quick  # --quick: manual against autodiff only
    reports = {
        "discriminator": backprop.check(
            disc, LOSS, d_params, d_s, x_small, y_small, finite_differences=fd
        ),
        "serial(generator, discriminator)": backprop.check(
            L.serial(gen, disc),
            LOSS,
            (g_params, d_params),
            (g_s, d_s),
            jax.random.normal(keys[2], (8, m, NOISE)),
            jnp.ones((8, 1)),
            finite_differences=fd,
        ),
    }
    for name, report in reports.items():
        print(f"gradient check of {name}:\n{report}")
        if not report.ok:
            raise SystemExit(f"gradient check failed for the {name}")

    z_eval = jax.random.normal(keys[4], (2000, NOISE))
    real = sample_real(jax.random.key(args.seed + 1), (2000,))
    sample = jax.jit(lambda p: gen.apply(p, g_s, z_eval)[0])
    before = sample(g_params)
    q_before = quality(before)

    adam = optax.adam(args.lr, b1=0.5)  # b1 = 0.5: the usual GAN choice
    train = make_train(gen, disc, adam, adam, args.method, batch, m, (g_s, d_s))
    carry = (g_params, d_params, adam.init(g_params), adam.init(d_params))
    train_key = jax.random.key(args.seed + 2)
    for done in range(0, steps, chunk):
        n = min(chunk, steps - done)
        carry, values = train(carry, jax.random.fold_in(train_key, done), n)
        d_loss, g_loss = np.asarray(values).mean(axis=0)
        q = quality(sample(carry[0]))
        print(
            f"step {done + n:5d}  D loss {d_loss:.3f}  G loss {g_loss:.3f}  "
            f"mean distance {q['mean_distance']:.3f}  good {q['good_fraction']:.0%}"
            f"  modes {q['modes_covered']}/{MODES}"
        )
    after = sample(carry[0])
    q_after = quality(after)
    wall = time.perf_counter() - start
    print(
        f"before training: mean distance to the nearest mode "
        f"{q_before['mean_distance']:.3f}, {q_before['modes_covered']}/{MODES} "
        f"modes;\nafter {steps} steps ({args.method} gradients, pack {m}, "
        f"{wall:.1f} s): {q_after['mean_distance']:.3f},\n  "
        f"{q_after['good_fraction']:.0%} of samples within {NEAR} of a mode, "
        f"{q_after['modes_covered']}/{MODES} modes"
    )
    plot(
        real,
        before,
        after,
        args.plot,
        f"GAN on {MODES} Gaussians, {steps} steps, pack {m}, {args.method} gradients",
    )
    return {
        "before": q_before,
        "after": q_after,
        "check_ok": all(r.ok for r in reports.values()),
    }


if __name__ == "__main__":
    main()
