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
from fnn.protocol import Layer, ShapeError
from fnn.recurrent import GRU
from fnn.sequence import LastStep

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


T_CTX, E = 5, 2  # the context's length and feature size in cross-attention
# Per example: the first keeps its first 3 keys, the second every key but
# key 1, so padding sits at the end and in the middle.
MASK = np.array([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1]], bool)


def _attention(heads, t, causal, n=N, *, cross=False, masked=False):
    """A layer, its perturbed params, and its input: ``x``, or the tuple of
    ``x``, the context (cross) and the padding mask (masked)."""
    layer = MultiHeadAttention(heads, F, causal, cross=cross, padding_mask=masked)
    s = T_CTX if cross else t
    shapes = ((t, D),) + (((s, E),) if cross else ()) + (((s,),) if masked else ())
    out_shape, params, state = layer.init(KEY, shapes if len(shapes) > 1 else shapes[0])
    x = _normal(99, (n, t, D))
    inputs = (x,) + ((_normal(98, (n, s, E)),) if cross else ())
    inputs += (jnp.asarray(MASK[:n, :s]),) if masked else ()
    return layer, out_shape, _perturbed(params), state, inputs if len(inputs) > 1 else x


def _without_mask(layer, mask):
    """The layer with its mask closed over: all of its inputs are floats, so
    ``check_layer`` checks the input cotangents too."""

    def forward(params, state, x, *, key=None, train=False):
        full = (x, mask) if not isinstance(x, tuple) else x + (mask,)
        return layer.forward(params, state, full, key=key, train=train)

    def backward(params, cache, dy):
        dparams, dx = layer.backward(params, cache, dy)
        assert dx[-1] is None  # the mask has no cotangent
        return dparams, dx[0] if len(dx) == 2 else dx[:-1]

    return Layer(layer.init, forward, backward, layer.name)


def _masked_attention(heads, t, causal, cross):
    layer, out_shape, params, state, inputs = _attention(
        heads, t, causal, cross=cross, masked=True
    )
    x = inputs[0] if len(inputs) == 2 else inputs[:-1]
    return _without_mask(layer, inputs[-1]), out_shape, params, state, x


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
    "mha-cross": (lambda: _attention(2, 3, False, cross=True), ()),
    "mha-mask": (_masked_attention, (2, 5, False, False)),
    "mha-mask-causal": (_masked_attention, (2, 5, True, False)),
    "mha-cross-mask": (_masked_attention, (2, 3, False, True)),
    "mha-cross-mask-T1-heads1": (_masked_attention, (1, 1, False, True)),
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
    n = (x[0] if isinstance(x, tuple) else x).shape[0]
    assert y.shape == (n, *out_shape)
    report = backprop.check_layer(layer, params, state, x)
    assert report.ok, str(report)


# ---------------------------------------------------------------------------
# Multi-head attention


def _attention_reference(p, x, heads, causal, context=None, mask=None):
    """One head, one example, one query at a time, in float64. A query that
    sees no key gets ``o = 0``."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = np.asarray(x, np.float64)
    c = x if context is None else np.asarray(context, np.float64)
    n, t, _ = x.shape
    mask = np.ones(c.shape[:2], bool) if mask is None else np.asarray(mask)
    dh = F // heads
    q = x @ p["w_q"] + p["b_q"]
    k, v = (c @ p[f"w_{a}"] + p[f"b_{a}"] for a in "kv")
    o = np.zeros((n, t, F))
    for b in range(n):
        for h in range(heads):
            cols = slice(h * dh, (h + 1) * dh)
            for i in range(t):
                keys = [
                    j
                    for j in range(c.shape[1])
                    if mask[b, j] and (j <= i or not causal)
                ]
                if not keys:
                    continue
                scores = np.array([q[b, i, cols] @ k[b, j, cols] for j in keys])
                weights = np.exp(
                    scores / math.sqrt(dh) - np.max(scores / math.sqrt(dh))
                )
                weights /= weights.sum()
                o[b, i, cols] = sum(
                    w * v[b, j, cols] for w, j in zip(weights, keys, strict=True)
                )
    return o @ p["w_o"] + p["b_o"]


OPTIONS = {
    "full": dict(causal=False),
    "causal": dict(causal=True),
    "cross": dict(causal=False, cross=True),
    "mask": dict(causal=False, masked=True),
    "mask-causal": dict(causal=True, masked=True),
    "cross-mask": dict(causal=False, cross=True, masked=True),
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_attention_matches_numpy_per_head_loop(options):
    layer, _, params, state, x = _attention(2, 5, n=2, **options)
    y, _ = jax.jit(layer.apply)(params, state, x)
    parts = x if isinstance(x, tuple) else (x,)
    context = parts[1] if options.get("cross") else None
    mask = parts[-1] if options.get("masked") else None
    expected = _attention_reference(
        params, parts[0], 2, options["causal"], context, mask
    )
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_attention_backprop_check_float64_every_option(options):
    """``backprop.check`` of a small model around the layer: manual against
    autodiff against finite differences, the whole chain in float64."""
    layer, _, params, state, x = _attention(2, 3, n=2, **options)
    model = L.serial(layer, L.Flatten(), L.Dense(2))
    shape = jax.tree.map(lambda a: a.shape[1:], x)
    shape = tuple(shape) if isinstance(x, tuple) else shape
    _, model_params, model_state = model.init(KEY, shape)
    model_params = (params,) + _perturbed(model_params[1:])
    y = jnp.array([0, 1])
    report = backprop.check(
        model, losses.softmax_cross_entropy, model_params, model_state, x, y
    )
    assert report.ok, str(report)


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


def test_padded_keys_change_nothing_but_real_ones_do():
    layer, _, params, state, (x, context, mask) = _attention(
        2, 3, False, cross=True, masked=True
    )
    apply = jax.jit(layer.apply)
    y, _ = apply(params, state, (x, context, mask))
    padded = jnp.where(mask[..., None], context, 100.0)
    np.testing.assert_array_equal(apply(params, state, (x, padded, mask))[0], y)
    real = jnp.where(mask[..., None], context + 1.0, context)
    assert not np.allclose(apply(params, state, (x, real, mask))[0], y)


def test_query_that_sees_no_key_outputs_the_bias_with_zero_gradient():
    """Every key padded: no NaN; ``o = 0``, so ``y = b_o``, and only ``b_o``
    gets a gradient from that example."""
    layer, _, params, state, (x, mask) = _attention(2, 4, True, masked=True)
    mask = mask.at[1].set(False)  # example 1: all padding
    y, _, cache = jax.jit(layer.forward)(params, state, (x, mask))
    assert np.isfinite(np.asarray(y)).all()
    np.testing.assert_array_equal(y[1], np.broadcast_to(params["b_o"], (4, F)))
    dy = jnp.zeros_like(y).at[1].set(1.0)
    dparams, (dx, dmask) = layer.backward(params, cache, dy)
    assert dmask is None
    np.testing.assert_array_equal(dx, 0.0)
    for name, g in dparams.items():
        assert np.all(np.asarray(g) == 0) != (name == "b_o"), name
    # Left padding with causal masking: query 0 sees nothing, query 1 one key.
    left = jnp.array([[False, True, True, True]] * N)
    y, _ = jax.jit(layer.apply)(params, state, (x, left))
    np.testing.assert_allclose(y[:, 0], np.broadcast_to(params["b_o"], (N, F)))
    expected = _attention_reference(params, x, 2, True, mask=left)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_padding_mask_model_three_gradients_agree():
    """The mask's ``None`` cotangent crosses ``jax.custom_vjp`` in
    ``manual_vjp``, and the manual chain rule agrees with autodiff."""
    layer, _, params, state, (x, mask) = _attention(2, 4, False, masked=True)
    model = L.serial(layer, LastStep(), L.Dense(3))
    _, model_params, model_state = model.init(KEY, ((4, D), (4,)))
    model_params = (params,) + _perturbed(model_params[1:])
    wrapped = L.serial(*(backprop.manual_vjp(m) for m in model.layers))
    y = jnp.array([2, 0])
    loss = losses.softmax_cross_entropy

    @jax.jit
    def gradients(p):
        return [
            backprop.value_and_grad(m, loss, method)(p, model_state, (x, mask), y)[1]
            for m, method in (
                (model, "manual"),
                (model, "autodiff"),
                (wrapped, "autodiff"),
            )
        ]

    manual, auto, via_vjp = gradients(model_params)
    for m, a, v in zip(*map(jax.tree.leaves, (manual, auto, via_vjp)), strict=True):
        np.testing.assert_allclose(m, a, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v, a, rtol=1e-5, atol=1e-6)


def test_attention_parameter_shapes():
    out_shape, params, state = MultiHeadAttention(2, 6).init(KEY, (7, 5))
    assert out_shape == (7, 6) and state == ()
    expected = {f"w_{c}": (5, 6) for c in "qkv"} | {"w_o": (6, 6)}
    expected |= {f"b_{c}": (6,) for c in "qkvo"}
    assert {k: v.shape for k, v in params.items()} == expected
    layer = MultiHeadAttention(2, 6, cross=True, padding_mask=True)
    out_shape, params, _ = layer.init(KEY, ((7, 5), (9, 3), (9,)))
    assert out_shape == (7, 6)
    assert {k: v.shape for k, v in params.items()} == expected | {
        "w_k": (3, 6),
        "w_v": (3, 6),
    }


def test_options_given_as_numpy_scalars_are_accepted():
    layer = MultiHeadAttention(np.int64(2), np.int32(4), np.bool_(True))
    assert layer.name == "MultiHeadAttention(2, 4, causal=True)"
    _, params, state = layer.init(KEY, (3, D))
    y, _ = layer.apply(params, state, jnp.ones((1, 3, D)))
    assert y.shape == (1, 3, 4)
    assert Embedding(np.int64(5), np.int64(3)).name == "Embedding(5, 3)"
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        MultiHeadAttention(True, 4)
    with pytest.raises(ValueError, match="cross must be True or False, got 1"):
        MultiHeadAttention(2, 4, cross=1)


def test_names_show_the_options_that_differ_from_the_defaults():
    assert MultiHeadAttention(2, 4).name == "MultiHeadAttention(2, 4)"
    layer = MultiHeadAttention(2, 4, cross=True, padding_mask=True)
    assert layer.name == "MultiHeadAttention(2, 4, cross=True, padding_mask=True)"


def test_features_not_divisible_by_heads_is_rejected():
    with pytest.raises(
        ValueError, match=r"features \(6\) must be divisible by num_heads \(4\)"
    ):
        MultiHeadAttention(4, 6)


def test_causal_cross_attention_is_rejected():
    with pytest.raises(ValueError, match="causal applies to self-attention"):
        MultiHeadAttention(2, 4, causal=True, cross=True)


def test_attention_init_rejects_input_that_is_not_a_sequence():
    with pytest.raises(
        ShapeError,
        match=r"MultiHeadAttention\(2, 4\): expected input \(T, d\)",
    ):
        MultiHeadAttention(2, 4).init(KEY, (5,))


def test_attention_names_feature_mismatch_under_jit():
    layer = MultiHeadAttention(2, 4, causal=True)
    _, params, state = layer.init(KEY, (5, D))
    with pytest.raises(
        ShapeError,
        match=r"MultiHeadAttention\(2, 4, causal=True\): expected input \(T, 3\)"
        r".*got \(5, 4\)",
    ):
        jax.jit(lambda x: layer.apply(params, state, x))(jnp.ones((N, 5, 4)))


BAD_INPUTS = {
    "cross-given-one-array": (
        dict(cross=True),
        lambda x, c, m: x,
        ShapeError,
        r"expected a tuple \(x, context\) of arrays, got an array",
    ),
    "self-given-a-tuple": (
        dict(),
        lambda x, c, m: (x, c),
        ShapeError,
        "build the layer with cross=True or padding_mask=True",
    ),
    "mask-of-ints": (
        dict(cross=True, masked=True),
        lambda x, c, m: (x, c, m.astype(jnp.int32)),
        TypeError,
        r"the mask must be bool .*got dtype int32; cast with mask.astype\(bool\)",
    ),
    "mask-of-another-length": (
        dict(cross=True, masked=True),
        lambda x, c, m: (x, c, m[:, :3]),
        ShapeError,
        r"expected mask \(5,\).* got \(3,\)",
    ),
    "context-of-another-size": (
        dict(cross=True),
        lambda x, c, m: (x, jnp.ones((N, T_CTX, 7))),
        ShapeError,
        r"expected context \(S, 2\).* got \(5, 7\)",
    ),
    "empty-context": (
        dict(cross=True),
        lambda x, c, m: (x, c[:, :0]),
        ShapeError,
        r"the context is empty \(S = 0\)",
    ),
    "batch-sizes-differ": (
        dict(cross=True),
        lambda x, c, m: (x, c[:1]),
        ShapeError,
        r"different batch sizes \[1, 2\]",
    ),
}


@pytest.mark.parametrize(
    "options, make, error, match", BAD_INPUTS.values(), ids=BAD_INPUTS.keys()
)
def test_bad_inputs_name_the_layer_and_the_fix_under_jit(options, make, error, match):
    layer, _, params, state, _ = _attention(2, 3, False, **options)
    x, c = _normal(1, (N, 3, D)), _normal(2, (N, T_CTX, E))
    m = jnp.asarray(MASK)
    with pytest.raises(error, match=rf"MultiHeadAttention\(2, 4[^:]*\): .*{match}"):
        jax.jit(lambda *a: layer.apply(params, state, make(*a)))(x, c, m)


def test_init_checks_the_tuple_of_shapes():
    layer = MultiHeadAttention(2, 4, cross=True, padding_mask=True)
    with pytest.raises(ShapeError, match=r"expected mask shape \(6,\), one per key"):
        layer.init(KEY, ((3, D), (6, E), (3,)))
    with pytest.raises(ShapeError, match=r"expected a tuple \(x, context, mask\)"):
        layer.init(KEY, (3, D))
    with pytest.raises(ShapeError, match=r"the context is empty"):
        MultiHeadAttention(2, 4, cross=True).init(KEY, ((3, D), (0, E)))


def test_params_of_another_attention_layer_are_refused():
    _, params, state = MultiHeadAttention(2, 4).init(KEY, (3, D))
    wider = MultiHeadAttention(2, 8)
    with pytest.raises(
        ShapeError, match=r"MultiHeadAttention\(2, 8\): params\['w_q'\]"
    ):
        wider.apply(params, state, jnp.ones((1, 3, D)))
    # Self-attention params in a cross layer whose context has another width.
    cross = MultiHeadAttention(2, 4, cross=True)
    with pytest.raises(ShapeError, match=r"context \(S, 3\).* got \(5, 2\)"):
        cross.apply(params, state, (jnp.ones((1, 3, D)), jnp.ones((1, 5, 2))))


def test_empty_query_sequence_gives_empty_output_and_gradient():
    layer, _, params, state, _ = _attention(2, 0, True)
    y, _, cache = layer.forward(params, state, jnp.ones((N, 0, D)))
    assert y.shape == (N, 0, F)
    dparams, dx = layer.backward(params, cache, y)
    assert dx.shape == (N, 0, D)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(dparams))


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


def test_embedding_refuses_ids_out_of_range_in_eager_calls():
    layer = Embedding(5, 3)
    _, params, state = layer.init(KEY, (4,))
    for bad in (5, -1):
        ids = jnp.array([[0, 1, bad, 2]])
        with pytest.raises(
            ValueError,
            match=rf"Embedding\(5, 3\): token ids must be in \[0, 5\), got 1 "
            rf"outside it \(e.g. \[{bad}\]\)",
        ):
            layer.apply(params, state, ids)


def test_embedding_checks_int64_ids_before_x64_off_narrows_them():
    """With x64 off ``jnp.asarray`` narrows int64 to int32: ``2**32 + 1``
    wrapped to the valid id 1 and silently looked up row 1."""
    layer = Embedding(5, 3)
    _, params, state = layer.init(KEY, (2,))
    for dtype in (np.int64, np.uint64):
        ids = np.array([[2, 2**32 + 1]], dtype)
        with pytest.raises(ValueError, match=r"outside it \(e.g. \[4294967297\]\)"):
            layer.apply(params, state, ids)


def test_embedding_ids_out_of_range_under_jit_give_nan_rows_and_no_gradient():
    """Never a clamped or wrapped-around row: ``-1`` is not the last id."""
    layer = Embedding(5, 3)
    _, params, state = layer.init(KEY, (4,))
    ids = jnp.array([[0, -1, 5, 4]])
    y, _, cache = jax.jit(layer.forward)(params, state, ids)
    table = np.asarray(params["table"])
    np.testing.assert_array_equal(y[0, np.array([0, 3])], table[[0, 4]])
    assert np.isnan(np.asarray(y[0, 1:3])).all()
    dparams, _ = layer.backward(params, cache, jnp.ones_like(y))
    expected = np.zeros((5, 3))
    expected[[0, 4]] = 1.0
    np.testing.assert_array_equal(dparams["table"], expected)
    # Narrow id dtypes too: an int8 -1 must not wrap onto a valid row.
    wide = Embedding(300, 2)
    _, params, state = wide.init(KEY, (2,))
    y, _ = jax.jit(wide.apply)(params, state, np.array([[7, -1]], np.int8))
    np.testing.assert_array_equal(y[0, 0], params["table"][7])
    assert np.isnan(np.asarray(y[0, 1])).all()


def test_embedding_refuses_the_table_of_another_vocabulary():
    _, params, state = Embedding(5, 3).init(KEY, (4,))
    with pytest.raises(ShapeError, match=r"Embedding\(6, 3\): params\['table'\]"):
        Embedding(6, 3).apply(params, state, jnp.zeros((1, 4), jnp.int32))


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
