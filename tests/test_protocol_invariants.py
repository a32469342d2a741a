"""The layer protocol's invariants, checked on every layer family and option.

For each layer: ``init``'s output shape is ``forward``'s per-example output
shape (train and eval, odd sizes too); ``backward`` returns ``dparams`` with
the tree, shapes and dtypes of ``params`` and ``dx`` with ``x``'s shape and
dtype; training returns a state of the same structure, evaluation leaves it
alone; ``apply`` is ``forward[:2]``, also under ``jax.jit``; a batch is the
stack of its examples (``jax.vmap`` over batches of one); and ``name`` is
the call that rebuilds the layer. Shapes and dtypes are read with
``jax.eval_shape`` (nothing compiles); values run once per family.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn.layers as fl
from fnn.backprop import cast_floats
from fnn.layers import (
    GRU,
    LSTM,
    AvgPool,
    BatchNorm,
    Conv,
    ConvTranspose,
    Dense,
    Dropout,
    Elu,
    Embedding,
    Flatten,
    GlobalAvgPool,
    LastStep,
    LayerNorm,
    LeakyRelu,
    MaxPool,
    MultiHeadAttention,
    Relu,
    Reshape,
    SimpleRNN,
    Upsample,
    fan_in_concat,
    fan_in_sum,
    fan_out,
    parallel,
    remat,
    residual,
    serial,
)

F32, I32, BOOL = jnp.float32, jnp.int32, jnp.bool_
N = 3  # batch size
ACTIVATIONS = [
    fl.Identity,
    fl.Sigmoid,
    fl.Tanh,
    fl.Relu,
    fl.Step,
    fl.Softsign,
    fl.Silu,
    fl.Softplus,
    fl.Gelu,
    fl.GeluTanh,
    fl.Softmax,
    fl.LogSoftmax,
    LeakyRelu(),
    LeakyRelu(0.2),
    Elu(),
    Elu(0.5),
]

# (layer, per-example input shape(s), input dtype(s)); a list of shapes is a
# layer of several inputs (given to init as a tuple).
CASES = [
    (Dense(3), (5,), F32),
    (Dense(3, use_bias=False), (2, 4), F32),
    (Conv(2, 3), (7, 2), F32),
    (Conv(2, (3, 2), strides=2, padding="VALID"), (7, 5, 1), F32),
    (Conv(2, (3, 3), strides=(2, 1)), (7, 5, 2), F32),
    (Conv(2, 2, strides=3, use_bias=False), (8, 1), F32),
    (ConvTranspose(2, 3, strides=2), (5, 2), F32),
    (ConvTranspose(2, (3, 2), strides=(2, 3), padding="VALID"), (3, 5, 1), F32),
    (ConvTranspose(2, 2, strides=3, use_bias=False), (3, 1), F32),
    (MaxPool(2), (7, 2), F32),
    (MaxPool((3,), strides=2, padding="SAME"), (7, 2), F32),
    (MaxPool((2, 2), strides=1), (3, 5, 2), F32),
    (AvgPool(2, strides=1), (5, 1), F32),
    (AvgPool((3, 2), padding="SAME"), (7, 5, 2), F32),
    (GlobalAvgPool(), (5, 3, 2), F32),
    (GlobalAvgPool(), (5, 2), F32),
    (Upsample(2), (3, 5, 2), F32),
    (Upsample((3,)), (3, 2), F32),
    (Upsample((2, 3)), (3, 1, 2), F32),
    *[(a, (3, 5), F32) for a in ACTIVATIONS],
    (Dropout(0.3), (5,), F32),
    (BatchNorm(), (5,), F32),
    (BatchNorm(momentum=0.5, eps=1e-3), (3, 3, 2), F32),
    (LayerNorm(), (5,), F32),
    (LayerNorm(eps=1e-3), (3, 5), F32),
    (Embedding(7, 3), (5,), I32),
    (Embedding(7, 3), (2, 3), I32),
    (SimpleRNN(3), (5, 2), F32),
    (LSTM(3), (5, 2), F32),
    (GRU(3), (5, 2), F32),
    # zero-width inputs (d = 0): Glorot's fan-in of 0 divided by zero at init
    (SimpleRNN(2), (3, 0), F32),
    (LSTM(2), (3, 0), F32),
    (GRU(2), (3, 0), F32),
    (MultiHeadAttention(2, 4), (3, 0), F32),
    (MultiHeadAttention(1, 2, cross=True), [(3, 2), (4, 0)], [F32, F32]),
    (MultiHeadAttention(2, 4), (5, 3), F32),
    (MultiHeadAttention(2, 4, causal=True), (5, 3), F32),
    (MultiHeadAttention(1, 3, padding_mask=True), [(5, 3), (5,)], [F32, BOOL]),
    (MultiHeadAttention(2, 4, cross=True), [(5, 3), (4, 2)], [F32, F32]),
    (
        MultiHeadAttention(2, 4, cross=True, padding_mask=True),
        [(5, 3), (4, 2), (4,)],
        [F32, F32, BOOL],
    ),
    (LastStep(), (5, 3), F32),
    (Flatten(), (3, 2, 2), F32),
    (Reshape((2, 3)), (6,), F32),
    (Reshape((-1, 2)), (3, 2), F32),
    (serial(Dense(4), Relu, Dense(2)), (3,), F32),
    (serial(Conv(2, 3), BatchNorm(), Dropout(0.5), Flatten()), (5, 1), F32),
    (parallel(Dense(2), Relu), [(3,), (4,)], [F32, F32]),
    (serial(fan_out(2), parallel(Dense(2), Dense(2)), fan_in_sum()), (3,), F32),
    (serial(fan_out(2), parallel(Dense(2), Dense(3)), fan_in_concat()), (3,), F32),
    (serial(fan_out(2), fan_in_concat(axis=0)), (2, 3), F32),
    (residual(Dense(3), Relu), (3,), F32),
    (residual(Dense(3), BatchNorm()), (3,), F32),
    (residual(Dense(4), shortcut=Dense(4)), (3,), F32),
    (residual(Conv(2, 3, strides=2), shortcut=Conv(2, 1, strides=2)), (7, 1), F32),
    (remat(Dense(4), Relu), (3,), F32),
    (remat(Dense(4), BatchNorm(), Dropout(0.5)), (3,), F32),
    (remat(Dense(4)), (2, 3), F32),
]
IDS = [f"{i}-{layer.name}" for i, (layer, _, _) in enumerate(CASES)]


def _init_shape(in_shape):
    return tuple(in_shape) if isinstance(in_shape, list) else in_shape


def _spec(in_shape, dtype):
    """A ShapeDtypeStruct batch (a tuple of them for several inputs)."""
    if isinstance(in_shape, list):
        return tuple(_spec(s, d) for s, d in zip(in_shape, dtype, strict=True))
    return jax.ShapeDtypeStruct((N, *in_shape), dtype)


def _lowered(dtype, low):
    """``dtype`` with float32 replaced by ``low`` (ints and bools stay)."""
    if isinstance(dtype, list):
        return [_lowered(d, low) for d in dtype]
    return low if dtype == F32 else dtype


def _avals(tree):
    return jax.tree.map(lambda a: (tuple(a.shape), jnp.dtype(a.dtype)), tree)


def _batched(out_shape):
    """``init``'s per-example output shape(s) with the batch axis in front."""
    if out_shape and isinstance(out_shape[0], tuple):
        return tuple(_batched(s) for s in out_shape)
    return (N, *out_shape)


def _check_dx(dx, x):
    """``dx`` has ``x``'s shape and dtype; ``None`` only for an int/bool ``x``."""
    xs, dxs = (x, dx) if isinstance(x, tuple) else ((x,), (dx,))
    assert len(dxs) == len(xs)
    for d, a in zip(dxs, xs, strict=True):
        if d is None:
            assert not jnp.issubdtype(a.dtype, jnp.floating), a
        else:
            assert (d.shape, d.dtype) == (a.shape, a.dtype), (d, a)


@pytest.mark.parametrize("low", [F32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize(("layer", "in_shape", "dtype"), CASES, ids=IDS)
def test_shapes_and_dtypes_follow_the_protocol(layer, in_shape, dtype, low):
    # bf16: params and float inputs cast together, as compute_dtype does; the
    # state stays float32 (running statistics are never cast).
    key = jax.random.key(0)
    out_shape, params, state = layer.init(key, _init_shape(in_shape))
    params = cast_floats(params, low)
    x = _spec(in_shape, _lowered(dtype, low))
    outputs = {}
    for train in (False, True):

        def run(p, s, x, k, train=train):
            return layer.forward(p, s, x, key=k, train=train)

        y, new_state, cache = jax.eval_shape(run, params, state, x, key)
        assert jax.tree.map(lambda a: a.shape, y) == _batched(out_shape)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)
        assert _avals(new_state) == _avals(state)
        dparams, dx = jax.eval_shape(layer.backward, params, cache, y)
        assert jax.tree.structure(dparams) == jax.tree.structure(params)
        assert _avals(dparams) == _avals(params)
        _check_dx(dx, x)
        outputs[train] = _avals(y)
    assert outputs[False] == outputs[True]  # one output dtype in both modes


@pytest.mark.parametrize(("layer", "in_shape", "dtype"), CASES, ids=IDS)
def test_name_rebuilds_the_layer(layer, in_shape, dtype):
    again = eval(layer.name, vars(fl))  # noqa: S307 - the names are ours
    assert again.name == layer.name
    key = jax.random.key(0)
    first = layer.init(key, _init_shape(in_shape))
    second = again.init(key, _init_shape(in_shape))
    assert first[0] == second[0]
    assert _avals(first[1:]) == _avals(second[1:])


def _ones_init(key, shape, dtype=jnp.float32):
    return jnp.ones(shape, dtype)


def test_embedding_name_shows_its_initialiser():
    # The name dropped embedding_init: two different tables read the same.
    assert Embedding(7, 3).name == "Embedding(7, 3)"
    layer = Embedding(7, 3, embedding_init=_ones_init)
    assert layer.name == "Embedding(7, 3, embedding_init=_ones_init)"
    _, params, _ = layer.init(jax.random.key(0), (2,))
    np.testing.assert_array_equal(params["table"], np.ones((7, 3)))


def test_batchnorm_eval_keeps_the_input_dtype():
    # Evaluation mixed bfloat16 x with the float32 running statistics and
    # returned float32, while training returned bfloat16 (the docstring's
    # "the layer's output dtype is unchanged").
    layer = BatchNorm()
    _, params, state = layer.init(jax.random.key(0), (2,))
    params = cast_floats(params, jnp.bfloat16)
    state = {"mean": jnp.array([1.0, -1.0]), "var": jnp.array([4.0, 0.25])}
    x = jnp.array([[3.0, 0.0], [-1.0, -2.0]], jnp.bfloat16)
    y, _ = layer.apply(params, state, x)
    assert y.dtype == jnp.bfloat16
    want = (np.array([[3.0, 0.0], [-1.0, -2.0]]) - [1.0, -1.0]) / np.sqrt(
        np.array([4.0, 0.25]) + 1e-5
    )
    np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=1e-2)
    _, dx = layer.backward(params, layer.forward(params, state, x)[2], y)
    assert dx.dtype == jnp.bfloat16

    # float16: x_hat = 400 / sqrt(1e-6 + 1e-5) = 1.2e5 is past float16's max;
    # the affine runs wide, and y = 1e-3 * x_hat is exact, not inf.
    state = {"mean": jnp.zeros(2), "var": jnp.array([1e-6, 1.0])}
    params = {"w": jnp.array([1e-3, 1.0], jnp.float16), "b": jnp.zeros(2, jnp.float16)}
    y, _ = layer.apply(params, state, jnp.array([[400.0, 1.0]], jnp.float16))
    assert y.dtype == jnp.float16
    np.testing.assert_allclose(np.asarray(y, np.float32), [[120.6, 1.0]], rtol=1e-3)


# --------------------------------------------------------------------------
# values: one small concrete run per family


def _concrete(in_shape, dtype, key):
    if isinstance(in_shape, list):
        keys = jax.random.split(key, len(in_shape))
        return tuple(
            _concrete(s, d, k) for s, d, k in zip(in_shape, dtype, keys, strict=True)
        )
    if dtype == I32:
        return jax.random.randint(key, (N, *in_shape), 0, 7)
    if dtype == BOOL:  # padding masks: 1, 2, 3... real tokens
        lengths = jnp.arange(1, N + 1)
        return jnp.arange(in_shape[0])[None, :] < lengths[:, None]
    return jax.random.normal(key, (N, *in_shape), dtype)


def _allclose(a, b):
    return all(
        jax.tree.leaves(
            jax.tree.map(
                lambda u, v: bool(jnp.allclose(u, v, rtol=1e-5, atol=1e-5)), a, b
            )
        )
    )


VALUE_CASES = [
    (Conv(2, (3, 2), strides=2), (5, 3, 1), F32),
    (ConvTranspose(2, 3, strides=2, padding="VALID"), (3, 2), F32),
    (MaxPool((3,), strides=2, padding="SAME"), (5, 2), F32),
    (serial(Dense(3), BatchNorm(), Dropout(0.5), LayerNorm()), (2,), F32),
    (Embedding(7, 2), (3,), I32),
    (GRU(2), (3, 2), F32),
    (
        MultiHeadAttention(2, 4, cross=True, padding_mask=True),
        [(3, 2), (3, 3), (3,)],
        [F32, F32, BOOL],
    ),
    (residual(remat(Dense(2), BatchNorm()), shortcut=Dense(2)), (3,), F32),
    (serial(fan_out(2), parallel(Dense(2), Relu), fan_in_concat()), (2,), F32),
]


@pytest.mark.parametrize(
    ("layer", "in_shape", "dtype"), VALUE_CASES, ids=[c[0].name for c in VALUE_CASES]
)
def test_apply_jit_vmap_and_eval_state_agree(layer, in_shape, dtype):
    _, params, state = layer.init(jax.random.key(0), _init_shape(in_shape))
    state = jax.tree.map(lambda s: s + 0.5, state)  # not the init values
    x = _concrete(in_shape, dtype, jax.random.key(1))
    key = jax.random.key(2)

    @jax.jit
    def jitted(params, state, x, key):
        return layer.apply(params, state, x, key=key, train=True), layer.apply(
            params, state, x
        )

    by_jit = jitted(params, state, x, key)
    for i, train in enumerate((True, False)):
        y, new_state, _ = layer.forward(params, state, x, key=key, train=train)
        assert _allclose(
            (y, new_state), layer.apply(params, state, x, key=key, train=train)
        )
        assert _allclose((y, new_state), by_jit[i])
        if train:
            assert jax.tree.structure(new_state) == jax.tree.structure(state)
    # Evaluation leaves the state alone, and a batch is its examples stacked.
    y, new_state = layer.apply(params, state, x)
    assert all(
        bool((a == b).all())
        for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state))
    )

    def one(xi):
        return layer.apply(params, state, jax.tree.map(lambda a: a[None], xi))[0]

    stacked = jax.tree.map(lambda a: a[:, 0], jax.vmap(one)(x))
    assert _allclose(stacked, y)


@pytest.mark.parametrize(
    ("layer", "in_shape"),
    [
        (MultiHeadAttention(2, 4), [5, 3]),
        (MultiHeadAttention(2, 4, cross=True), [[5, 3], [4, 2]]),
        (MultiHeadAttention(2, 4, padding_mask=True), ([5, 3], [5])),
        (Dense(2), [5, 3]),
        (serial(Conv(2, 3), Flatten()), [5, 1]),
    ],
    ids=str,
)
def test_init_reads_a_list_as_a_shape(layer, in_shape):
    # check_shape takes a list of ints for a shape; MultiHeadAttention read
    # [5, 3] as two shapes and raised "expected one shape for x".
    def as_tuple(s):
        return tuple(as_tuple(d) for d in s) if isinstance(s, list) else s

    key = jax.random.key(0)
    from_list = layer.init(key, in_shape)
    from_tuple = layer.init(key, as_tuple(in_shape))
    assert from_list[0] == from_tuple[0]
    assert _avals(from_list[1]) == _avals(from_tuple[1])


def test_manual_gradients_come_in_the_params_dtype():
    # bfloat16 params on float32 data: the manual grads came back float32
    # (autodiff's bfloat16), and fit(method="manual", scan=True) then failed
    # with XLA's "carry input and carry output must have equal types".
    from fnn import backprop, losses

    model = serial(Dense(3), Relu, Dense(2))
    _, params, state = model.init(jax.random.key(0), (4,))
    params = cast_floats(params, jnp.bfloat16)
    x, y = jnp.linspace(-1, 1, 20).reshape(5, 4), jnp.zeros((5, 2))
    grads = {
        m: backprop.value_and_grad(model, losses.mse, m)(params, state, x, y)[1]
        for m in ("manual", "autodiff")
    }
    assert _avals(grads["manual"]) == _avals(params) == _avals(grads["autodiff"])
    for a, b in zip(*map(jax.tree.leaves, grads.values()), strict=True):
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2e-2, atol=1e-3
        )


def test_manual_vjp_cotangents_come_in_the_primals_dtypes():
    # jax.grad through manual_vjp gave a float32 gradient for a bfloat16 x
    # (plain autodiff: bfloat16); the bool mask keeps no cotangent.
    from fnn.backprop import manual_vjp

    plain = MultiHeadAttention(1, 2, padding_mask=True)
    wrapped = manual_vjp(plain)
    _, params, state = plain.init(jax.random.key(0), ((3, 2), (3,)))
    x = jnp.linspace(-1, 1, 12, dtype=jnp.bfloat16).reshape(2, 3, 2)
    mask = jnp.array([[True, True, False], [True, True, True]])

    def grad_of(layer):
        def total(params, x):
            return layer.apply(params, state, (x, mask))[0].astype(F32).sum()

        return jax.grad(total, argnums=(0, 1))(params, x)

    got, want = grad_of(wrapped), grad_of(plain)
    assert _avals(got) == _avals(want)
    assert got[1].dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(got[1], np.float32), np.asarray(want[1], np.float32), atol=2e-2
    )
