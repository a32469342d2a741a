"""Embedding and multi-head attention: hand-written backward against jax.vjp
and finite differences (float64), forward against a NumPy per-head loop and
table lookups, causality, and errors that name the layer."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import backprop, losses
from fnn import layers as L
from fnn.attention import Embedding, MultiHeadAttention, positional_encoding
from fnn.protocol import ShapeError
from fnn.recurrent import GRU

KEY = jax.random.key(0)
N, D, F = 2, 3, 4


def _normal(seed, shape, scale=1.0):
    """Test data from NumPy: no jax.random program to compile per shape."""
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape))


def _perturbed(params, scale=0.3):
    """Parameters moved off their init, so zero biases carry information."""
    leaves, treedef = jax.tree.flatten(params)
    moved = [p + _normal(i, p.shape, scale) for i, p in enumerate(leaves)]
    return jax.tree.unflatten(treedef, moved)


def _attention(heads, t, causal, n=N):
    layer = MultiHeadAttention(heads, F, causal=causal)
    out_shape, params, state = layer.init(KEY, (t, D))
    return layer, out_shape, _perturbed(params), state, _normal(99, (n, t, D))


def _embedding(ids):
    layer = Embedding(5, D)
    out_shape, params, state = layer.init(KEY, ids.shape[1:])
    return layer, out_shape, params, state, ids


CASES = {
    f"mha-heads{heads}-T{t}{'-causal' if causal else ''}": (
        _attention,
        (heads, t, causal),
    )
    for causal in (False, True)
    for heads in (1, 2)
    for t in (1, 4)
} | {
    # Repeated ids, so the scatter-add must accumulate.
    "embedding-sequence": (_embedding, (jnp.array([[0, 1, 1, 4], [3, 3, 3, 0]]),)),
    "embedding-2d-ids": (
        _embedding,
        (jnp.array([[[2, 0], [2, 2], [1, 0]], [[4, 4], [0, 1], [2, 3]]]),),
    ),
}


@pytest.mark.parametrize("build, args", CASES.values(), ids=CASES.keys())
def test_backward_matches_autodiff_and_finite_differences(build, args):
    layer, out_shape, params, state, x = build(*args)
    y, _ = jax.eval_shape(layer.apply, params, state, x)
    assert y.shape == (x.shape[0], *out_shape)
    report = backprop.check_layer(layer, params, state, x)
    assert report.ok, str(report)


# ---------------------------------------------------------------------------
# Multi-head attention


def _attention_reference(p, x, heads, causal):
    """One head, one example, one query at a time, in float64."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = np.asarray(x, np.float64)
    n, t, _ = x.shape
    dh = F // heads
    q, k, v = (x @ p[f"w_{c}"] + p[f"b_{c}"] for c in "qkv")
    o = np.zeros((n, t, F))
    for b in range(n):
        for h in range(heads):
            cols = slice(h * dh, (h + 1) * dh)
            for i in range(t):
                keys = range(i + 1) if causal else range(t)
                scores = np.array([q[b, i, cols] @ k[b, j, cols] for j in keys])
                weights = np.exp(
                    scores / math.sqrt(dh) - np.max(scores / math.sqrt(dh))
                )
                weights /= weights.sum()
                o[b, i, cols] = sum(
                    w * v[b, j, cols] for w, j in zip(weights, keys, strict=True)
                )
    return o @ p["w_o"] + p["b_o"]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_matches_numpy_per_head_loop(causal):
    layer, _, params, state, x = _attention(2, 5, causal, n=3)
    y, _ = jax.jit(layer.apply)(params, state, x)
    expected = _attention_reference(params, x, 2, causal)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_causal_output_at_t_ignores_later_inputs(causal):
    layer, _, params, state, x = _attention(2, 5, causal)
    apply = jax.jit(layer.apply)
    y, _ = apply(params, state, x)
    for t in range(4):
        later = x.at[:, t + 1 :].add(1.0)
        y_later, _ = apply(params, state, later)
        same = np.allclose(y_later[:, : t + 1], y[:, : t + 1], rtol=1e-6, atol=1e-6)
        # Only the causal layer keeps earlier outputs fixed.
        assert same == causal, t


def test_attention_parameter_shapes():
    out_shape, params, state = MultiHeadAttention(2, 6).init(KEY, (7, 5))
    assert out_shape == (7, 6) and state == ()
    expected = {f"w_{c}": (5, 6) for c in "qkv"} | {"w_o": (6, 6)}
    expected |= {f"b_{c}": (6,) for c in "qkvo"}
    assert {k: v.shape for k, v in params.items()} == expected


def test_features_not_divisible_by_heads_is_rejected():
    with pytest.raises(
        ValueError, match=r"features \(6\) must be divisible by num_heads \(4\)"
    ):
        MultiHeadAttention(4, 6)


def test_attention_init_rejects_input_that_is_not_a_sequence():
    with pytest.raises(
        ShapeError,
        match=r"MultiHeadAttention\(2, 4, causal=False\): expected input \(T, d\)",
    ):
        MultiHeadAttention(2, 4).init(KEY, (5,))


def test_attention_names_feature_mismatch_under_jit():
    layer = MultiHeadAttention(2, 4, causal=True)
    _, params, state = layer.init(KEY, (5, D))
    with pytest.raises(
        ShapeError,
        match=r"MultiHeadAttention\(2, 4, causal=True\): expected input \(T, 3\) "
        r"per example, got \(5, 4\)",
    ):
        jax.jit(lambda x: layer.apply(params, state, x))(jnp.ones((N, 5, 4)))


# ---------------------------------------------------------------------------
# Embedding


def test_embedding_looks_up_table_rows():
    layer = Embedding(5, 3)
    out_shape, params, state = layer.init(KEY, (4,))
    assert out_shape == (4, 3) and params["table"].shape == (5, 3)
    ids = jnp.array([[0, 4, 4, 2], [1, 1, 3, 0]])
    y, _ = jax.jit(layer.apply)(params, state, ids)
    np.testing.assert_array_equal(y, np.asarray(params["table"])[np.asarray(ids)])


def test_embedding_gradient_sums_over_repeated_ids():
    layer = Embedding(4, 2)
    _, params, state = layer.init(KEY, (3,))
    ids = jnp.array([[1, 1, 3]])
    _, _, cache = layer.forward(params, state, ids)
    dy = jnp.array([[[1.0, 2.0], [10.0, 20.0], [5.0, 7.0]]])
    dparams, dx = layer.backward(params, cache, dy)
    np.testing.assert_array_equal(
        dparams["table"], [[0.0, 0.0], [11.0, 22.0], [0.0, 0.0], [5.0, 7.0]]
    )
    assert dx is None


def test_embedding_rejects_float_ids_naming_the_layer():
    layer = Embedding(5, 3)
    _, params, state = layer.init(KEY, (4,))
    with pytest.raises(
        TypeError, match=r"Embedding\(5, 3\): expects integer token ids"
    ):
        jax.jit(lambda x: layer.apply(params, state, x))(jnp.ones((N, 4)))


def test_tiny_language_model_three_gradients_agree():
    """Embedding -> causal attention -> GRU -> Dense, next-token cross-entropy:
    the manual chain rule, autodiff, and autodiff through ``manual_vjp``
    (where Embedding's ``dx=None`` crosses ``jax.custom_vjp``)."""
    vocab = 6
    model = L.serial(
        Embedding(vocab, F),
        MultiHeadAttention(2, F, causal=True),
        GRU(3),
        L.Dense(vocab),
    )
    _, params, state = model.init(KEY, (4,))
    params = _perturbed(params)
    ids = jnp.array([[0, 5, 5, 2], [3, 1, 0, 4]])
    labels = jnp.roll(ids, -1, axis=1)
    loss = losses.softmax_cross_entropy
    wrapped = L.serial(*(backprop.manual_vjp(layer) for layer in model.layers))

    @jax.jit
    def gradients(params):
        grad = {
            m: backprop.value_and_grad(model, loss, m)(params, state, ids, labels)[1]
            for m in ("manual", "autodiff")
        }
        grad["manual_vjp"] = backprop.value_and_grad(wrapped, loss)(
            params, state, ids, labels
        )[1]
        return grad

    grads = gradients(params)
    auto = jax.tree.leaves(grads["autodiff"])
    for method in ("manual", "manual_vjp"):
        for m, a in zip(jax.tree.leaves(grads[method]), auto, strict=True):
            np.testing.assert_allclose(m, a, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Positional encoding


def test_positional_encoding_follows_the_sinusoid_formula():
    pe = np.asarray(positional_encoding(6, 8))
    assert pe.shape == (6, 8)
    np.testing.assert_array_equal(pe[0], [0, 1] * 4)
    pos, i = np.arange(6)[:, None], np.arange(4)[None, :]
    angle = pos / 10000 ** (2 * i / 8)
    np.testing.assert_allclose(pe[:, 0::2], np.sin(angle), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pe[:, 1::2], np.cos(angle), rtol=1e-5, atol=1e-6)
    # An odd size keeps every sine and drops the last cosine.
    odd = np.asarray(positional_encoding(6, 7))
    assert odd.shape == (6, 7)
    angle = pos / 10000 ** (2 * i / 7)
    np.testing.assert_allclose(odd[:, 0::2], np.sin(angle), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(odd[:, 1::2], np.cos(angle[:, :3]), rtol=1e-5, atol=1e-6)
