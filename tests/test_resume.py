"""Exact resume: N steps in one go equal k steps, a checkpoint, and N - k
more, bit for bit, with dropout and batch norm in the model."""

import jax
import jax.numpy as jnp
import numpy as np

from fnn import checkpoint, data, losses, optim, train
from fnn import layers as L


def model():
    return L.serial(
        L.Dense(32, use_bias=False), L.BatchNorm(), L.Relu, L.Dropout(0.3), L.Dense(3)
    )


def problem():
    (x, y), (xt, yt) = data.spirals(96, classes=3)
    x, y = np.concatenate([x, xt]), np.concatenate([y, yt])
    net = model()
    _, params, state = net.init(jax.random.key(0), (2,))
    return net, params, state, jnp.asarray(x), jnp.asarray(y)


def assert_bitwise_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_step_resume_is_bit_exact(tmp_path):
    net, params, state, x, y = problem()
    opt = optim.adam(1e-2)
    step = train.make_step(net, losses.softmax_cross_entropy, opt)
    base = jax.random.key(42)

    def run(p, s, o, start, stop):
        for i in range(start, stop):
            idx = jnp.arange(i * 8, i * 8 + 32) % len(x)
            p, s, o, _ = step(p, s, o, x[idx], y[idx], jax.random.fold_in(base, i))
        return p, s, o

    fresh = lambda: jax.tree.map(jnp.copy, (params, state))  # noqa: E731
    p, s = fresh()
    straight = run(p, s, opt.init(p), 0, 6)

    p, s = fresh()
    halfway = run(p, s, opt.init(p), 0, 3)
    path = tmp_path / "ckpt.fnn"
    checkpoint.save(path, halfway)
    like = jax.tree.map(jnp.zeros_like, halfway)
    resumed = run(*checkpoint.load(path, like), 3, 6)
    assert_bitwise_equal(straight, resumed)


def test_fit_resume_is_bit_exact(tmp_path):
    net, params, state, x, y = problem()
    opt = optim.momentum(0.05)
    key = jax.random.key(7)
    kwargs = dict(key=key, batch_size=16)
    full = train.fit(
        net,
        losses.softmax_cross_entropy,
        opt,
        params,
        state,
        (x, y),
        epochs=4,
        **kwargs,
    )
    first = train.fit(
        net,
        losses.softmax_cross_entropy,
        opt,
        params,
        state,
        (x, y),
        epochs=2,
        **kwargs,
    )
    path = tmp_path / "fit.fnn"
    checkpoint.save(path, (first.params, first.state, first.opt_state))
    p, s, o = checkpoint.load(path, (first.params, first.state, first.opt_state))
    rest = train.fit(
        net,
        losses.softmax_cross_entropy,
        opt,
        p,
        s,
        (x, y),
        epochs=4,
        initial_epoch=2,
        opt_state=o,
        **kwargs,
    )
    assert_bitwise_equal(
        (full.params, full.state, full.opt_state),
        (rest.params, rest.state, rest.opt_state),
    )
    assert full.history["train_loss"][2:] == rest.history["train_loss"]


def _noise(key, xb):
    """A tiny augmentation: Gaussian noise, a different draw per example."""
    return xb + 0.1 * jax.random.normal(key, xb.shape, xb.dtype)


def test_fit_resume_with_augmentation_is_bit_exact():
    net, params, state, x, y = problem()
    opt = optim.adam(1e-2)
    kwargs = dict(key=3, batch_size=16, augment=_noise)
    loss = losses.softmax_cross_entropy
    full = train.fit(net, loss, opt, params, state, (x, y), epochs=3, **kwargs)
    first = train.fit(net, loss, opt, params, state, (x, y), epochs=1, **kwargs)
    rest = train.fit(net, loss, opt, first.params, first.state, (x, y), epochs=3,
                     initial_epoch=1, opt_state=first.opt_state, **kwargs)  # fmt: skip
    assert_bitwise_equal(
        (full.params, full.state, full.opt_state),
        (rest.params, rest.state, rest.opt_state),
    )
    plain = train.fit(net, loss, opt, params, state, (x, y), epochs=1, key=3,
                      batch_size=16)  # fmt: skip
    assert plain.history["train_loss"] != first.history["train_loss"]
