"""Conv, MaxPool, AvgPool: hand-written backward against jax.vjp and finite
differences (float64) for every rank, stride and padding; forward against
NumPy loops and known answers; SAME pads against XLA's; shape errors that
name the layer."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jax import lax

from fnn import _backend, backprop
from fnn._windows import pads as _pads
from fnn.conv import Conv
from fnn.pool import AvgPool, MaxPool
from fnn.protocol import Layer, ShapeError

# (id, constructor, options, per-example input shape). Sizes are odd or
# uneven on purpose: kernel 4 on 7 and kernel 2 on 7 give asymmetric SAME
# pads (lo, hi) = (1, 2) and (0, 1); stride 2 with VALID leaves the last
# row(s) in no window (they must get a zero gradient).
CONV_CASES = [
    (
        f"conv-{rank}d-s{s}-{padding}-{'bias' if bias else 'nobias'}",
        Conv,
        dict(
            features=3,
            kernel_size=4 if rank == 1 else (3, 2),
            strides=s,
            padding=padding,
            use_bias=bias,
        ),
        (7, 2) if rank == 1 else (6, 7, 2),
    )
    for rank, s, padding, bias in itertools.product(
        (1, 2), (1, 2), ("SAME", "VALID"), (True, False)
    )
] + [
    (
        "conv-2d-strides-2x1-kernel-1x3",
        Conv,
        dict(features=2, kernel_size=(1, 3), strides=(2, 1)),
        (5, 4, 3),
    ),
    (
        "conv-1d-kernel-wider-than-input-same",
        Conv,
        dict(features=2, kernel_size=5),
        (3, 2),
    ),
]
POOL_CASES = [
    (
        f"{pool.__name__}-{rank}d-{'default' if s is None else 's1'}-{padding}",
        pool,
        dict(window=3 if rank == 1 else (2, 3), strides=s, padding=padding),
        (7, 2) if rank == 1 else (5, 7, 2),
    )
    for pool, rank, s, padding in itertools.product(
        (MaxPool, AvgPool), (1, 2), (None, 1), ("SAME", "VALID")
    )
]
CASES = CONV_CASES + POOL_CASES


# XLA's CPU compile of a threefry draw costs ~1.5 s of CPU per shape; the
# "rbg" generator a fifth of that. Test keys are rbg keys, and so are the
# ones check_layer makes for its random directions, within these tests.
KEY = jax.random.key(0, impl="rbg")


@pytest.fixture(autouse=True)
def _cheap_prng():
    previous = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    yield
    jax.config.update("jax_default_prng_impl", previous)


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _build(constructor, options, shape):
    layer = constructor(**options)
    out_shape, params, state = layer.init(KEY, shape)
    if "b" in params:  # a random bias, so a wrong db cannot hide behind zeros
        params = dict(params, b=_normal(2, params["b"].shape))
    return layer, out_shape, params, state, _normal(1, (2, *shape))


@pytest.mark.parametrize(
    "constructor, options, shape", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_backward_matches_autodiff_and_finite_differences(constructor, options, shape):
    layer, out_shape, params, state, x = _build(constructor, options, shape)
    y, _ = jax.jit(layer.apply)(params, state, x)
    assert y.shape == (2, *out_shape)
    report = backprop.check_layer(layer, params, state, x)
    assert report.ok, str(report)


# --------------------------------------------------------------------------
# Forward against NumPy loops


def _reference_pads(n, k, s, padding):
    """TensorFlow's SAME rule, written out again: out = ceil(n / s)."""
    if padding == "VALID":
        return (0, 0)
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    return (total // 2, total - total // 2)


def _reference(constructor, options, params, x):
    """The layer's output in float64 by a loop over output positions."""
    window = options.get("kernel_size", options.get("window"))
    window = (window,) if isinstance(window, int) else tuple(window)
    rank = len(window)
    strides = options.get("strides", 1 if constructor is Conv else None)
    strides = window if strides is None else strides
    strides = (strides,) * rank if isinstance(strides, int) else tuple(strides)
    padding = options.get("padding", "SAME" if constructor is Conv else "VALID")
    pads = [
        _reference_pads(n, k, s, padding)
        for n, k, s in zip(x.shape[1:-1], window, strides, strict=True)
    ]
    fill = -np.inf if constructor is MaxPool else 0.0
    xp = np.pad(
        np.asarray(x, np.float64), [(0, 0), *pads, (0, 0)], constant_values=fill
    )
    out = [(xp.shape[1 + i] - window[i]) // strides[i] + 1 for i in range(rank)]
    spatial_axes = tuple(range(1, rank + 1))
    if constructor is Conv:
        w = np.asarray(params["w"], np.float64)
        b = np.asarray(params["b"], np.float64) if "b" in params else 0.0
    y = np.zeros(
        (x.shape[0], *out, w.shape[-1] if constructor is Conv else x.shape[-1])
    )
    for o in np.ndindex(*out):
        region = tuple(
            slice(oi * si, oi * si + ki)
            for oi, si, ki in zip(o, strides, window, strict=True)
        )
        patch = xp[(slice(None), *region)]  # (N, *window, C)
        if constructor is Conv:
            value = (
                np.tensordot(patch, w, axes=(range(1, rank + 2), range(rank + 1))) + b
            )
        elif constructor is MaxPool:
            value = patch.max(axis=spatial_axes)
        else:
            value = patch.sum(axis=spatial_axes) / math.prod(window)
        y[(slice(None), *o)] = value
    return y


@pytest.mark.parametrize(
    "constructor, options, shape", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_forward_matches_numpy_loop(constructor, options, shape):
    layer, out_shape, params, state, x = _build(constructor, options, shape)
    y, _ = jax.jit(layer.apply)(params, state, x)
    expected = _reference(constructor, options, params, x)
    assert expected.shape == y.shape == (2, *out_shape)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_same_pads_follow_xla_rule():
    # Every (n, k, s) up to 9: explicit pads equal XLA's own "SAME"/"VALID".
    for n, k, s in itertools.product(range(1, 10), range(1, 6), range(1, 4)):
        for padding in ("SAME", "VALID"):
            if padding == "VALID" and k > n:
                continue
            expected = lax.padtype_to_pads((n,), (k,), (s,), padding)
            assert list(_pads((n,), (k,), (s,), padding)) == list(expected), (n, k, s)


# --------------------------------------------------------------------------
# Known answers


def _apply_with(layer, shape, w, x, b=None):
    _, params, state = layer.init(KEY, shape)
    params = dict(params, w=jnp.asarray(w, jnp.float32))
    if b is not None:
        params["b"] = jnp.asarray(b, jnp.float32)
    return np.asarray(layer.apply(params, state, jnp.asarray(x, jnp.float32))[0])


def test_conv1d_arange_kernel_known_answers():
    w = np.arange(3.0).reshape(3, 1, 1)  # taps [0, 1, 2]
    ones = np.ones((1, 5, 1))
    # VALID: 0 + 1 + 2 everywhere.
    valid = _apply_with(Conv(1, 3, padding="VALID", use_bias=False), (5, 1), w, ones)
    np.testing.assert_array_equal(valid[0, :, 0], [3.0, 3.0, 3.0])
    # SAME pads one zero each side: the first output loses tap 0 (weight 0),
    # the last loses tap 2 (weight 2).
    same = _apply_with(Conv(1, 3, use_bias=False), (5, 1), w, ones)
    np.testing.assert_array_equal(same[0, :, 0], [3.0, 3.0, 3.0, 3.0, 1.0])
    # x = [0, 1, 2, 3, 4]: y[o] = x[o + 1] + 2 x[o + 2].
    ramp = np.arange(5.0).reshape(1, 5, 1)
    valid = _apply_with(Conv(1, 3, padding="VALID", use_bias=False), (5, 1), w, ramp)
    np.testing.assert_array_equal(valid[0, :, 0], [5.0, 8.0, 11.0])
    # Stride 2, taps [1, 1] on [0..5]: pairs (0+1), (2+3), (4+5).
    pairs = _apply_with(
        Conv(1, 2, strides=2, padding="VALID", use_bias=False),
        (6, 1),
        np.ones((2, 1, 1)),
        np.arange(6.0).reshape(1, 6, 1),
    )
    np.testing.assert_array_equal(pairs[0, :, 0], [1.0, 5.0, 9.0])


def test_conv2d_ones_kernel_sums_windows_plus_bias():
    x = np.arange(9.0).reshape(1, 3, 3, 1)
    y = _apply_with(
        Conv(1, (2, 2), padding="VALID"), (3, 3, 1), np.ones((2, 2, 1, 1)), x, b=[1.0]
    )
    np.testing.assert_array_equal(y[0, :, :, 0], [[9.0, 13.0], [21.0, 25.0]])


def test_conv2d_channels_mix_through_kernel():
    # Two input channels of ones and threes, two filters weighting them
    # (1, 0) and (1, 1): each 1x1 output is the channel sum it selects.
    x = np.stack([np.ones((2, 2)), 3 * np.ones((2, 2))], axis=-1)[None]
    w = np.zeros((2, 2, 2, 2))
    w[..., 0, 0] = 1.0
    w[..., :, 1] = 1.0
    y = _apply_with(Conv(2, (2, 2), padding="VALID", use_bias=False), (2, 2, 2), w, x)
    np.testing.assert_array_equal(y.reshape(2), [4.0, 16.0])


def test_pools_known_answers():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    y, _ = MaxPool((2, 2)).apply((), (), x)
    np.testing.assert_array_equal(y[0, :, :, 0], [[5.0, 7.0], [13.0, 15.0]])
    y, _ = AvgPool((2, 2)).apply((), (), x)
    np.testing.assert_array_equal(y[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])
    # SAME counts the padded zero in the divisor: [0, 1, 2] pooled by 2
    # gives (0 + 1) / 2 and (2 + pad) / 2.
    y, _ = AvgPool(2, padding="SAME").apply((), (), jnp.arange(3.0).reshape(1, 3, 1))
    np.testing.assert_array_equal(y[0, :, 0], [0.5, 1.0])
    # ...while max pooling never picks the padding, even for negative inputs.
    y, _ = MaxPool(2, padding="SAME").apply((), (), -jnp.ones((1, 3, 1)))
    np.testing.assert_array_equal(y[0, :, 0], [-1.0, -1.0])


# --------------------------------------------------------------------------
# Gradient conventions and geometry sweeps


def _manual_and_autodiff(layer):
    """One jitted function: the hand-written and jax.vjp pullbacks of ``dy``."""

    @jax.jit
    def both(params, x, dy):
        _, vjp = jax.vjp(lambda p, xx: layer.apply(p, (), xx)[0], params, x)
        _, _, cache = layer.forward(params, (), x)
        return layer.backward(params, cache, dy), vjp(dy)

    return both


@pytest.mark.parametrize(
    "window, strides, padding",
    [((2, 2), None, "VALID"), ((2, 2), 1, "VALID"), ((3, 3), 2, "SAME")],
)
def test_max_pool_ties_go_to_first_maximum_like_jax(window, strides, padding):
    x = jnp.array(
        [[1, 3, 3, 0, 2], [3, 2, 1, 1, 2], [0, 0, 5, 5, 2], [5, 5, 0, 0, 2]],
        jnp.float32,
    ).reshape(1, 4, 5, 1)
    layer = MaxPool(window, strides, padding)
    out_shape, _, _ = layer.init(KEY, (4, 5, 1))
    dy = jnp.arange(1.0, 1.0 + math.prod(out_shape)).reshape(1, *out_shape)
    (_, dx), (_, auto_dx) = _manual_and_autodiff(layer)((), x, dy)
    np.testing.assert_array_equal(dx, auto_dx)
    # Each window's gradient lands on exactly one element.
    assert float(dx.sum()) == float(dy.sum())
    if strides is None:  # [[1, 3], [3, 2]]: the first 3 in row-major order
        assert dx[0, 0, 1, 0] == dy[0, 0, 0, 0] and dx[0, 1, 0, 0] == 0


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(
    n=st.integers(1, 8),
    k=st.integers(1, 4),
    s=st.integers(1, 3),
    padding=st.sampled_from(["SAME", "VALID"]),
    constructor=st.sampled_from([Conv, MaxPool, AvgPool]),
)
def test_backward_matches_vjp_for_any_1d_geometry(n, k, s, padding, constructor):
    assume(padding == "SAME" or k <= n)
    if constructor is Conv:
        layer = Conv(2, k, strides=s, padding=padding)
        params = {"w": _normal(3, (k, 2, 2)), "b": _normal(4, (2,))}
    else:
        layer, params = constructor(k, strides=s, padding=padding), ()
    (out_len, _), _, _ = layer.init(KEY, (n, 2))
    x, dy = _normal(n, (2, n, 2)), _normal(k, (2, out_len, 2))
    (dparams, dx), (auto_params, auto_dx) = _manual_and_autodiff(layer)(params, x, dy)
    np.testing.assert_allclose(dx, auto_dx, rtol=1e-5, atol=1e-5)
    for a, b in zip(
        jax.tree.leaves(dparams), jax.tree.leaves(auto_params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_wrong_backward_is_caught():
    # The options and shapes of the table case conv-2d-s2-SAME-bias, so the
    # check's compiled random draws are reused.
    case = next(c for c in CASES if c[0] == "conv-2d-s2-SAME-bias")
    layer, _, params, state, x = _build(*case[1:])
    assert layer.name == "Conv(3, (3, 2), strides=(2, 2))"

    def backward(params, cache, dy):
        dparams, dx = layer.backward(params, cache, dy)
        return dparams, 1.01 * dx

    broken = Layer(layer.init, layer.forward, backward, layer.name)
    report = backprop.check_layer(broken, params, state, x)
    assert not report.ok
    assert [row.path for row in report.failures()] == ["['x']"]


def test_manual_vjp_gives_autodiff_gradient():
    # The caches cross jax.custom_vjp: arrays only.
    model = Conv(2, (2, 2), strides=2)
    pool = MaxPool(2, strides=1, padding="SAME")
    _, params, state = model.init(KEY, (5, 5, 1))
    x = _normal(5, (2, 5, 5, 1))

    def loss(conv, pool, p, xx):
        h = conv.apply(p, state, xx)[0]  # (2, 3, 3, 2), pooled as (2, 9, 2)
        return jnp.sum(jnp.sin(pool.apply((), (), h.reshape(2, -1, 2))[0]))

    def grads(conv, pool):
        return jax.jit(jax.grad(lambda p, xx: loss(conv, pool, p, xx), (0, 1)))

    wrapped = grads(backprop.manual_vjp(model), backprop.manual_vjp(pool))
    plain = grads(model, pool)
    for a, b in zip(
        jax.tree.leaves(wrapped(params, x)),
        jax.tree.leaves(plain(params, x)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# Errors


def test_init_rejects_flat_input_naming_layer_and_layout():
    with pytest.raises(
        ShapeError,
        match=r"Conv\(32, \(3, 3\)\): expected input \(H, W, C\), got \(784,\)",
    ):
        Conv(32, (3, 3)).init(KEY, (784,))
    with pytest.raises(ShapeError, match=r"MaxPool\(\(2,\)\): expected input \(L, C\)"):
        MaxPool(2).init(KEY, (8, 8, 1))


def test_init_rejects_valid_window_larger_than_input():
    with pytest.raises(
        ShapeError, match=r"Conv\(4, \(5, 5\), padding='VALID'\).*larger"
    ):
        Conv(4, (5, 5), padding="VALID").init(KEY, (3, 8, 1))
    with pytest.raises(ShapeError, match=r"AvgPool\(\(3,\)\).*larger"):
        AvgPool(3).init(KEY, (2, 1))


def test_forward_shape_errors_fire_under_jit():
    layer = Conv(8, (3, 3))
    _, params, state = layer.init(KEY, (8, 8, 3))
    run = jax.jit(lambda x: layer.apply(params, state, x))
    with pytest.raises(
        ShapeError,
        match=r"Conv\(8, \(3, 3\)\): expected input \(H, W, 3\).*got \(8, 8, 1\)",
    ):
        run(jnp.ones((2, 8, 8, 1)))
    with pytest.raises(ShapeError, match=r"Conv\(8, \(3, 3\)\).*got \(64, 3\)"):
        run(jnp.ones((2, 64, 3)))
    pool = jax.jit(lambda x: MaxPool((2, 2)).apply((), (), x))
    with pytest.raises(
        ShapeError, match=r"MaxPool\(\(2, 2\)\): expected input \(H, W, C\)"
    ):
        pool(jnp.ones((2, 8, 1)))
    with pytest.raises(ShapeError, match=r"MaxPool\(\(2, 2\)\).*larger"):
        pool(jnp.ones((2, 1, 8, 1)))


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: Conv(0, 3), "features must be a positive int"),
        (lambda: Conv(4, (3, 0)), "kernel_size must be a positive int"),
        (lambda: Conv(4, (3, 3, 3)), r"kernel_size must be an int \(1-D\) or a tuple"),
        (lambda: Conv(4, 2.5), "kernel_size must be a positive int"),
        (lambda: Conv(4, (3, 3), strides=(1, 2, 1)), r"strides .* tuple of 2"),
        (lambda: Conv(4, 3, strides=0), "strides must be a positive int"),
        (lambda: Conv(4, 3, padding="full"), "'full'"),
        (lambda: MaxPool((2, 2), padding="causal"), "'causal'"),
        (lambda: AvgPool(2, strides=(1, 1)), r"strides .* tuple of 1"),
    ],
)
def test_bad_options_are_rejected_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("use_bias", [None, "no", 1.0])
def test_use_bias_must_be_a_bool(use_bias):
    # None built a layer without a bias and "no" one with it, silently
    # (Dense refused both already).
    with pytest.raises(TypeError, match=r"Conv: use_bias must be True or False"):
        Conv(2, 3, use_bias=use_bias)
    assert Conv(2, 3, use_bias=np.False_).name == "Conv(2, (3,), use_bias=False)"


def test_padding_is_case_insensitive_and_names_show_options():
    assert Conv(4, 3, padding="valid").name == "Conv(4, (3,), padding='VALID')"
    assert MaxPool((2, 2), strides=1, padding="same").name == (
        "MaxPool((2, 2), strides=(1, 1), padding='SAME')"
    )
    assert AvgPool(2).name == "AvgPool((2,))"
    assert Conv(4, 3, use_bias=False).name == "Conv(4, (3,), use_bias=False)"


# --------------------------------------------------------------------------
# Both implementations: XLA's native ops and the CPU formulations


@pytest.mark.parametrize(
    "constructor, options, shape",
    [c[1:] for c in CASES if c[1] is not AvgPool]
    + [
        (Conv, dict(features=3, kernel_size=(3, 2), strides=s), (6, 7, 1))
        for s in (1, 2)  # one input channel: the per-offset forward
    ]
    + [(Conv, dict(features=16, kernel_size=(3, 3)), (5, 4, 16))],  # Winograd
    ids=[c[0] for c in CASES if c[1] is not AvgPool]
    + ["conv-2d-c1-s1", "conv-2d-c1-s2", "conv-2d-winograd"],
)
def test_native_and_cpu_formulations_agree(monkeypatch, constructor, options, shape):
    # fnn._backend picks at trace time: the tests run on CPU, so the table above
    # checks the CPU formulations; here XLA's ops are forced and compared.
    layer, _, params, state, x = _build(constructor, options, shape)
    y, _ = layer.apply(params, state, x)
    dy = _normal(7, (2, *y.shape[1:]))
    results = {}
    for native in (True, False):
        monkeypatch.setattr(_backend, "use_native", lambda native=native: native)
        results[native] = _manual_and_autodiff(layer)(params, x, dy)
        results[native] += (jax.jit(layer.apply)(params, state, x)[0],)
    for a, b in zip(
        jax.tree.leaves(results[True]), jax.tree.leaves(results[False]), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "options, shape",
    [
        (dict(features=3, kernel_size=(3, 3)), (5, 6, 2)),  # patches forward
        (dict(features=3, kernel_size=(3, 2), strides=2), (6, 7, 1)),  # offsets
        (dict(features=2, kernel_size=3, padding="VALID"), (7, 3)),  # 1-D
        (dict(features=16, kernel_size=(3, 3)), (5, 4, 16)),  # Winograd
    ],
    ids=["2d-c2", "2d-c1-s2", "1d-valid", "2d-winograd"],
)
def test_cpu_conv_jvp_and_second_order_match_native(monkeypatch, options, shape):
    # On CPU the forward carries a product-rule JVP (conv(dx, w) + patches(x)
    # @ dw, or Winograd's terms); forward mode and derivatives of derivatives
    # must still be the convolution's, as XLA's own op gives them.
    layer, _, params, state, x = _build(Conv, options, shape)
    tangents = jax.tree.map(lambda a: _normal(3, a.shape), (params, x))

    def loss(p, xx):
        return jnp.sum(jnp.tanh(layer.apply(p, state, xx)[0]) ** 2)

    def derivatives(p, xx):
        jvp = jax.jvp(lambda a, b: layer.apply(a, state, b)[0], (p, xx), tangents)
        hvp = jax.jvp(jax.grad(loss, argnums=(0, 1)), (p, xx), tangents)[1]
        return jvp, hvp

    results = {}
    for native in (True, False):
        monkeypatch.setattr(_backend, "use_native", lambda native=native: native)
        results[native] = jax.jit(derivatives)(params, x)
    for a, b in zip(
        jax.tree.leaves(results[True]), jax.tree.leaves(results[False]), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_max_pool_propagates_nan_on_both_paths(monkeypatch):
    x = jnp.array([[1.0, jnp.nan], [5.0, 2.0]]).reshape(1, 2, 2, 1)
    layer = MaxPool((2, 2))
    for native in (True, False):
        monkeypatch.setattr(_backend, "use_native", lambda native=native: native)
        y, _ = jax.jit(layer.apply)((), (), x)
        assert np.isnan(float(y[0, 0, 0, 0])), native


# --------------------------------------------------------------------------
# Every dtype, and edge sizes (issue 12)


def _numpy_max_pool(x, window, strides, padding):
    """Max pooling by a loop, padding with the dtype's lowest value."""
    if x.dtype == np.bool_:
        lowest = False
    elif np.issubdtype(x.dtype, np.integer):
        lowest = np.iinfo(x.dtype).min
    else:
        lowest = -np.inf
    pads = [
        _reference_pads(n, k, s, padding)
        for n, k, s in zip(x.shape[1:-1], window, strides, strict=True)
    ]
    xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=lowest)
    out = [(xp.shape[1 + i] - window[i]) // strides[i] + 1 for i in range(len(window))]
    y = np.empty((x.shape[0], *out, x.shape[-1]), x.dtype)
    for o in np.ndindex(*out):
        region = tuple(
            slice(oi * si, oi * si + ki)
            for oi, si, ki in zip(o, strides, window, strict=True)
        )
        y[(slice(None), *o)] = xp[(slice(None), *region)].max(axis=(1, 2))
    return y


def _dtype_batch(dtype):
    """Three examples: all lowest-but-one (all False, all iinfo.min, all
    negative), random, and all highest, so padding must never win."""
    rng = np.random.default_rng(0)
    shape = (3, 4, 5, 1)
    if dtype == np.bool_:
        x = np.zeros(shape, bool)
        x[1] = rng.random(shape[1:]) < 0.3
        x[2] = True
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
        x[0], x[2] = info.min, info.max
    else:
        x = rng.standard_normal(shape).astype(dtype)
        x[0] = -np.abs(x[0]) - 1
    return x


@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.int32, np.float16])
def test_max_pool_every_dtype_exactly_on_both_paths(monkeypatch, dtype):
    # Before: bool padded with True (an all-False image pooled to True),
    # ints raised OverflowError building a -inf of their dtype.
    x = _dtype_batch(dtype)
    window, strides = (2, 3), (2, 2)
    layer = MaxPool(window, strides, padding="SAME")  # pads (0, 0) and (1, 1)
    expected = _numpy_max_pool(x, window, strides, "SAME")
    if dtype == np.bool_:
        assert not expected[0].any()
    for native in (True, False):
        monkeypatch.setattr(_backend, "use_native", lambda native=native: native)
        y, _ = jax.jit(layer.apply)((), (), jnp.asarray(x))
        assert y.dtype == dtype, native
        np.testing.assert_array_equal(np.asarray(y), expected, err_msg=str(native))


def test_max_pool_refuses_complex_input_on_both_paths(monkeypatch):
    # XLA's max ordered complex numbers lexicographically (native path) and
    # the CPU formulation died in a bare "gt does not accept dtype".
    x = jnp.array([1 + 1j, 2 - 5j], jnp.complex64).reshape(1, 2, 1)
    for native in (True, False):
        monkeypatch.setattr(_backend, "use_native", lambda native=native: native)
        with pytest.raises(TypeError, match=r"MaxPool: got a complex64 input"):
            MaxPool(2).apply((), (), x)


def test_avg_pool_of_integers_is_their_float_mean_without_wrapping():
    # int8 sums wrapped: [100, 100] averaged to -28.0.
    x = jnp.array([100, 100, -128, -127, 5, 6], jnp.int8).reshape(1, 6, 1)
    y, _ = AvgPool(2).apply((), (), x)
    assert y.dtype == jnp.float32
    np.testing.assert_array_equal(y[0, :, 0], [100.0, -127.5, 5.5])
    bools = jnp.array([True, True, False, True]).reshape(1, 4, 1)
    y, _ = AvgPool(2).apply((), (), bools)
    np.testing.assert_array_equal(y[0, :, 0], [1.0, 0.5])


def _bf16(seed, shape):
    """bfloat16 values in [1, 2] with random last bits: sums need rounding."""
    values = np.random.default_rng(seed).uniform(1.0, 2.0, shape)
    return jnp.asarray(values, jnp.bfloat16)


def _rounded_once(exact):
    """A float64 result rounded to bfloat16 once, as float32 sums give it."""
    return np.asarray(jnp.asarray(exact, jnp.float32).astype(jnp.bfloat16))


def test_avg_pool_sums_16_bit_floats_in_float32_like_jnp_mean():
    # The window sums ran in the input's 16-bit type: a bfloat16 8x8 mean was
    # 7 units of its last place off (GlobalAvgPool, through jnp.mean, was
    # right), the backward's overlapping shares of dy were summed in
    # bfloat16 too, and a float16 window of 40000s averaged to inf.
    x = _bf16(0, (1, 8, 8, 1))
    y, _, cache = AvgPool((8, 8)).forward((), (), x)
    assert y.dtype == jnp.bfloat16
    exact = np.asarray(x, np.float64).mean()
    np.testing.assert_array_equal(np.asarray(y).ravel(), [_rounded_once(exact)])
    layer = AvgPool(8, strides=1)
    _, _, cache = layer.forward((), (), jnp.ones((1, 16, 1), jnp.bfloat16))
    dy = _bf16(1, (1, 9, 1))
    _, dx = layer.backward((), cache, dy)
    d = np.asarray(dy, np.float64)[0, :, 0] / 8
    exact = [d[max(p - 7, 0) : p + 1].sum() for p in range(16)]
    assert dx.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(dx)[0, :, 0], _rounded_once(exact))
    # float16: the sum 80000 overflowed to inf, the mean is 40000.
    big = jnp.full((1, 2, 1), 40000.0, jnp.float16)
    np.testing.assert_array_equal(AvgPool(2).apply((), (), big)[0], [[[40000.0]]])


def test_one_channel_conv_sums_bfloat16_in_float32_on_both_paths(monkeypatch):
    # The CPU forward for one input channel (a sum of per-offset products)
    # rounded its partial sums to bfloat16 at each of the 25 offsets: 6x
    # further from the exact result than XLA's convolution.
    x, w = _bf16(2, (2, 6, 6, 1)), _bf16(3, (5, 5, 1, 2))  # no cancellation
    layer = Conv(2, (5, 5), use_bias=False)
    xs, ws = np.asarray(x, np.float64), np.asarray(w, np.float64)
    expected = _reference(Conv, dict(kernel_size=(5, 5)), {"w": ws}, xs)
    for native in (True, False):
        monkeypatch.setattr(_backend, "use_native", lambda native=native: native)
        y, _ = jax.jit(layer.apply)({"w": w}, (), x)
        assert y.dtype == jnp.bfloat16
        # Within one unit of bfloat16's last place (2**-7 relative).
        ulp = np.exp2(np.floor(np.log2(np.abs(expected))) - 7)
        error = np.abs(np.asarray(y, np.float64) - expected)
        assert np.all(error <= ulp), (native, float((error / ulp).max()))


def test_conv_backward_with_a_kernel_narrower_than_the_input(monkeypatch):
    # bfloat16 weights on a float32 image: the forward promoted both, the
    # manual backward handed XLA's convolution float32 dy with the
    # bfloat16 kernel and died in a bare TypeError (same dtypes required).
    layer, _, params, state, x = _build(Conv, dict(features=2, kernel_size=3), (5, 2))
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    y, _ = layer.apply(params, state, x)
    dy = _normal(4, y.shape)
    for native in (True, False):
        monkeypatch.setattr(_backend, "use_native", lambda native=native: native)
        (dparams, dx), (auto_params, auto_dx) = _manual_and_autodiff(layer)(
            params, x, dy
        )
        np.testing.assert_allclose(dx, auto_dx, rtol=1e-5, atol=1e-5)
        for a, b in zip(
            jax.tree.leaves(dparams), jax.tree.leaves(auto_params), strict=True
        ):
            np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=1e-2)


def test_conv_promotes_integer_input_like_dense_on_both_paths(monkeypatch):
    # XLA's convolution refused an int8 image with a float kernel (a bare
    # TypeError) while the CPU path promoted it: now both promote.
    layer, _, params, state, _ = _build(Conv, dict(features=2, kernel_size=3), (6, 1))
    x = jnp.arange(-6, 6, dtype=jnp.int8).reshape(2, 6, 1)
    expected = layer.apply(params, state, x.astype(jnp.float32))[0]
    for native in (True, False):
        monkeypatch.setattr(_backend, "use_native", lambda native=native: native)
        y, _ = jax.jit(layer.apply)(params, state, x)
        assert y.dtype == jnp.float32
        np.testing.assert_allclose(y, expected, rtol=1e-6)


def test_conv_zero_channels_and_empty_batch():
    # Zero input channels: the empty sum, y = b (the initialiser divided by
    # a fan-in of 0 before: ZeroDivisionError).
    layer = Conv(2, 3)
    out_shape, params, state = layer.init(KEY, (5, 0))
    assert out_shape == (5, 2) and params["w"].shape == (3, 0, 2)
    params = dict(params, b=jnp.array([1.0, -2.0]))
    y, _ = layer.apply(params, state, jnp.ones((2, 5, 0)))
    np.testing.assert_array_equal(y, np.broadcast_to([1.0, -2.0], (2, 5, 2)))
    # An empty batch gives an empty batch, forward and backward.
    for pool in (MaxPool(2), AvgPool(2, strides=1, padding="SAME")):
        y, _, cache = pool.forward((), (), jnp.ones((0, 4, 3)))
        assert pool.backward((), cache, y)[1].shape == (0, 4, 3)


def test_empty_spatial_axis_is_refused_at_init_and_trace_time():
    # MaxPool's CPU path died in a bare slicing TypeError on a zero-length
    # input, and AvgPool's backward returned the wrong shape.
    with pytest.raises(ShapeError, match=r"Conv\(2, \(3,\)\): input .* empty spatial"):
        Conv(2, 3).init(KEY, (0, 1))
    with pytest.raises(ShapeError, match=r"MaxPool\(\(2,\), padding='SAME'\).*empty"):
        MaxPool(2, padding="SAME").apply((), (), jnp.ones((2, 0, 1)))


def test_numpy_integer_options_are_accepted():
    layer = Conv(np.int64(4), (np.int64(3), np.int32(3)), strides=np.int64(2))
    assert layer.name == "Conv(4, (3, 3), strides=(2, 2))"
    assert layer.init(KEY, (5, 5, 1))[0] == (3, 3, 4)
    pool = MaxPool(np.int64(2), strides=np.int8(1))
    assert pool.name == "MaxPool((2,), strides=(1,))"
    assert Conv(2, np.array([3, 3])).name == "Conv(2, (3, 3))"
    with pytest.raises(ValueError, match="strides must be a positive int"):
        Conv(2, 3, strides=np.int64(0))
    with pytest.raises(ValueError, match="kernel_size must be a positive int"):
        Conv(2, True)


def test_conv_layers_declare_they_scan_badly_and_fit_reads_it_from_the_tree():
    # fit picks its epoch (one compiled scan, or a loop of jitted steps)
    # from what layers declare, never from their names.
    from fnn.combinators import serial
    from fnn.conv_transpose import ConvTranspose
    from fnn.dense import Dense, Flatten

    assert not Conv(2, 3).scans_well and not ConvTranspose(2, 3).scans_well
    assert MaxPool(2).scans_well
    on_cpu = jax.default_backend() == "cpu"
    dense = serial(Flatten(), Dense(3))
    assert _backend.scan_by_default(dense)
    cnn = serial(serial(Conv(2, 3), MaxPool(2)), dense)  # nested: walked
    assert _backend.scan_by_default(cnn) == (not on_cpu)
    renamed = Conv(2, 3)._replace(name="MyBlock")  # names play no part
    assert _backend.scan_by_default(serial(renamed)) == (not on_cpu)
    assert _backend.scan_by_default(backprop.manual_vjp(Conv(2, 3))) == (not on_cpu)


@pytest.mark.parametrize(
    "options, shape",
    [
        (dict(features=3, kernel_size=(3, 3)), (5, 6, 1)),
        (dict(features=2, kernel_size=(2, 3), strides=2, padding="VALID"), (7, 6, 1)),
        (dict(features=2, kernel_size=4, strides=2), (9, 1)),
    ],
    ids=["2d-same", "2d-valid-s2", "1d-s2"],
)
def test_one_channel_weight_gradient_by_offset_views(options, shape):
    # One input channel: dw is views (|K|, M) @ dy, the views stacked with
    # the offsets first, in the manual backward and in autodiff's transpose
    # of the JVP; manual against autodiff against finite differences.
    layer, _, params, state, x = _build(Conv, options, shape)
    report = backprop.check_layer(layer, params, state, x)
    assert report.ok, str(report)
