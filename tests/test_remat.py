"""remat: the same gradients and state as without it, by both methods (with
dropout and batch norm), checked in float64 against finite differences; a
cache that holds only the inputs; and less memory in the compiled step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import backprop, losses, optim, train
from fnn import layers as L
from fnn.attention import Embedding, MultiHeadAttention
from fnn.remat import remat
from fnn.sequence import LastStep

KEY = jax.random.key(0)


def _normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape))


def _blocks():
    return [
        (L.Dense(8), L.Tanh),
        (L.Dense(8, use_bias=False), L.BatchNorm(), L.Relu, L.Dropout(0.3)),
    ]


def _models():
    """The same network twice: plain blocks, and each block under remat. The
    parameter trees have the same structure, so one ``params`` serves both."""
    plain = L.serial(*(L.serial(*b) for b in _blocks()), L.Dense(3))
    rematerialised = L.serial(*(remat(*b) for b in _blocks()), L.Dense(3))
    _, params, state = plain.init(KEY, (5,))
    params = jax.tree.map(lambda p: p + _normal(p.size, p.shape, 0.2), params)
    x, y = _normal(1, (6, 5)), jnp.array([0, 1, 2, 0, 1, 2])
    return plain, rematerialised, params, state, x, y


@pytest.mark.parametrize("method", ["manual", "autodiff"])
def test_same_loss_gradients_and_state_as_without_remat(method):
    plain, rematerialised, params, state, x, y = _models()
    loss = losses.softmax_cross_entropy

    @jax.jit
    def both(params, state, key):
        return [
            backprop.value_and_grad(m, loss, method)(params, state, x, y, key=key)
            for m in (plain, rematerialised)
        ]

    # Two keys: the recomputed dropout mask must follow the key it was given.
    for seed in (3, 4):
        ((l1, s1), g1), ((l2, s2), g2) = both(params, state, jax.random.key(seed))
        np.testing.assert_allclose(l2, l1, rtol=1e-6)
        for a, b in zip(jax.tree.leaves((g1, s1)), jax.tree.leaves((g2, s2))):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    assert not np.allclose(l1, both(params, state, jax.random.key(3))[0][0][0])


@pytest.mark.parametrize("train_mode", [True, False], ids=["train", "eval"])
def test_backprop_check_float64_manual_autodiff_finite_differences(train_mode):
    _, rematerialised, params, state, x, y = _models()
    report = backprop.check(
        rematerialised,
        losses.softmax_cross_entropy,
        params,
        state,
        x,
        y,
        key=jax.random.key(5),
        train=train_mode,
    )
    assert report.ok, str(report)


def test_cache_holds_only_the_inputs_and_backward_matches_the_layer():
    block = L.serial(L.Dense(16), L.Relu, L.Dense(16), L.Tanh, L.Dropout(0.5))
    _, params, state = block.init(KEY, (4,))
    x, key = _normal(2, (3, 4)), jax.random.key(6)
    y, _, cache = block.forward(params, state, x, key=key, train=True)
    y_r, _, cache_r = remat(block).forward(params, state, x, key=key, train=True)
    np.testing.assert_array_equal(y_r, y)
    assert [a.shape for a in jax.tree.leaves(cache_r)] == [(3, 4), ()]  # x, key
    assert sum(a.size for a in jax.tree.leaves(cache)) > 4 * x.size
    dy = _normal(3, y.shape)
    expected = block.backward(params, cache, dy)
    got = remat(block).backward(params, cache_r, dy)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


INPUT_CASES = {
    # Token ids: an integer input without gradient.
    "ids": (
        (Embedding(6, 4), MultiHeadAttention(2, 4, causal=True), LastStep()),
        (5,),
        jnp.array([[1, 2, 3, 0, 0], [5, 4, 3, 2, 1]]),
    ),
    # A tuple input with a bool padding mask.
    "mask": (
        (MultiHeadAttention(2, 4, padding_mask=True), LastStep()),
        ((5, 3), (5,)),
        (_normal(4, (2, 5, 3)), jnp.asarray(np.arange(5)[None] < [[3], [5]])),
    ),
}


@pytest.mark.parametrize("layers, shape, x", INPUT_CASES.values(), ids=INPUT_CASES)
def test_integer_and_mask_inputs_pass_through_both_methods(layers, shape, x):
    plain = L.serial(L.serial(*layers), L.Dense(3))
    rematerialised = L.serial(remat(*layers), L.Dense(3))
    _, params, state = plain.init(KEY, shape)
    y = jnp.array([0, 2])
    loss = losses.softmax_cross_entropy

    @jax.jit
    def gradients(params):
        return [
            backprop.value_and_grad(m, loss, method)(params, state, x, y)
            for method in ("manual", "autodiff")
            for m in (plain, rematerialised)
        ]

    out = gradients(params)
    for ((l1, _), g1), ((l2, _), g2) in (out[:2], out[2:]):
        np.testing.assert_allclose(l2, l1, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def _step_temp_bytes(block, method):
    """XLA's temporary memory of a deep MLP's compiled training step."""
    pairs = [layer for _ in range(8) for layer in (L.Dense(64), L.Relu)]
    if block:
        body = [remat(*pairs[i : i + 2 * block]) for i in range(0, 16, 2 * block)]
    else:
        body = pairs
    model = L.serial(*body, L.Dense(10))
    _, params, state = model.init(KEY, (32,))
    opt = optim.sgd(0.1)
    step = train.make_step(model, losses.softmax_cross_entropy, opt, method=method)
    x, y = jnp.zeros((512, 32)), jnp.zeros((512,), jnp.int32)
    lowered = step.lower(params, state, opt.init(params), x, y, None)
    return lowered.compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("method", ["manual", "autodiff"])
def test_compiled_step_keeps_less_memory(method):
    """Eight (Dense, Relu) pairs on a batch of 512: the plain step keeps 16
    activations of 512 x 64 floats (2 MiB); remat in blocks of 4 pairs keeps
    2 block inputs and one block's activations during its backward."""
    plain = _step_temp_bytes(0, method)
    blocks = _step_temp_bytes(4, method)
    assert plain > 16 * 512 * 64 * 4
    assert blocks < 0.6 * plain, (plain, blocks)


def test_remat_needs_layers():
    with pytest.raises(TypeError, match="remat: needs a layer to wrap"):
        remat()
    with pytest.raises(TypeError, match="remat: expected a Layer, got 3"):
        remat(3)
    assert remat(L.Dense(2)).name == "remat(Dense(2))"
