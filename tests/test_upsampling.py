"""ConvTranspose, Upsample, GlobalAvgPool: hand-written backward against
autodiff and finite differences (float64) for every rank, stride and
padding; forward against NumPy loops, known answers, and Conv's own input
gradient (ConvTranspose is its transpose); shapes, names and errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import _backend, backprop
from fnn.conv import Conv
from fnn.conv_transpose import ConvTranspose
from fnn.pool import GlobalAvgPool
from fnn.protocol import ShapeError
from fnn.upsample import Upsample

KEY = jax.random.key(0, impl="rbg")


@pytest.fixture(autouse=True)
def _cheap_prng():  # as in test_conv: rbg draws compile faster than threefry
    previous = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    yield
    jax.config.update("jax_default_prng_impl", previous)


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# (id, constructor, options, per-example input shape). Kernel 3 with stride
# 2 overlaps stamped kernels; kernel 1 with stride 3 (SAME) leaves output
# rows that no input reaches (they hold the bias alone).
TRANSPOSE_CASES = [
    (
        f"convT-{rank}d-s{s}-{padding}",
        ConvTranspose,
        dict(
            features=3,
            kernel_size=3 if rank == 1 else (3, 2),
            strides=s,
            padding=padding,
            use_bias=(s == 1),
        ),
        (4, 2) if rank == 1 else (3, 4, 2),
    )
    for rank, s, padding in itertools.product((1, 2), (1, 2), ("SAME", "VALID"))
] + [
    (
        "convT-1d-k1-s3-same",
        ConvTranspose,
        dict(features=2, kernel_size=1, strides=3),
        (3, 2),
    ),
    (
        "convT-2d-k4x1-s2x1",
        ConvTranspose,
        dict(features=2, kernel_size=(4, 1), strides=(2, 1)),
        (3, 2, 1),
    ),
]
RESAMPLE_CASES = [
    ("upsample-1d-3", Upsample, dict(factor=3), (4, 2)),
    ("upsample-2d-2", Upsample, dict(factor=2), (3, 2, 2)),
    ("upsample-2d-2x3", Upsample, dict(factor=(2, 3)), (2, 3, 1)),
    ("gap-2d", GlobalAvgPool, {}, (3, 4, 2)),
    ("gap-1d", GlobalAvgPool, {}, (5, 3)),
]
CASES = TRANSPOSE_CASES + RESAMPLE_CASES


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
# ConvTranspose forward: NumPy scatter loop, Conv's input gradient, known answers


def _sizes(n, k, s, padding):
    """Output size and the low pad of the Conv that maps it back to ``n``."""
    m = n * s if padding == "SAME" else (n - 1) * s + k
    if padding == "VALID":
        return m, 0
    total = max((-(-m // s) - 1) * s + k - m, 0)
    return m, total // 2


def _scatter_reference(options, params, x):
    """``y[p] += x[o] @ w[k]`` at ``p = o*s + k - lo``, in float64."""
    kernel = options["kernel_size"]
    kernel = (kernel,) if isinstance(kernel, int) else tuple(kernel)
    rank = len(kernel)
    strides = options.get("strides", 1)
    strides = (strides,) * rank if isinstance(strides, int) else tuple(strides)
    padding = options.get("padding", "SAME")
    sizes = [
        _sizes(n, k, s, padding)
        for n, k, s in zip(x.shape[1:-1], kernel, strides, strict=True)
    ]
    w = np.asarray(params["w"], np.float64)
    y = np.zeros((x.shape[0], *(m for m, _ in sizes), w.shape[-1]))
    xs = np.asarray(x, np.float64)
    for o in np.ndindex(*x.shape[1:-1]):
        for k in np.ndindex(*kernel):
            p = [oi * si + ki - lo for oi, si, ki, (_, lo) in zip(o, strides, k, sizes)]
            if all(0 <= pi < m for pi, (m, _) in zip(p, sizes)):
                y[(slice(None), *p)] += xs[(slice(None), *o)] @ w[k]
    if "b" in params:
        y += np.asarray(params["b"], np.float64)
    return y


@pytest.mark.parametrize(
    "options, shape",
    [c[2:] for c in TRANSPOSE_CASES],
    ids=[c[0] for c in TRANSPOSE_CASES],
)
def test_conv_transpose_forward_matches_numpy_scatter(options, shape):
    layer, out_shape, params, state, x = _build(ConvTranspose, options, shape)
    y, _ = jax.jit(layer.apply)(params, state, x)
    expected = _scatter_reference(options, params, x)
    assert expected.shape == y.shape == (2, *out_shape)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv_transpose_is_the_input_gradient_of_conv(padding):
    # ConvTranspose(F) from n rows to m is the vjp w.r.t. x of the Conv(C)
    # from m rows back to n, with the kernel's channel axes swapped.
    up = ConvTranspose(3, (3, 2), strides=2, padding=padding, use_bias=False)
    (m1, m2, _), params, _ = up.init(KEY, (3, 4, 2))
    x = _normal(3, (2, 3, 4, 2))
    down = Conv(2, (3, 2), strides=2, padding=padding, use_bias=False)
    conv_params = {"w": jnp.swapaxes(params["w"], -1, -2)}
    assert down.init(KEY, (m1, m2, 3))[0] == (3, 4, 2)
    zeros = jnp.zeros((2, m1, m2, 3))
    _, vjp = jax.vjp(lambda z: down.apply(conv_params, (), z)[0], zeros)
    np.testing.assert_allclose(
        up.apply(params, (), x)[0], vjp(x)[0], rtol=1e-5, atol=1e-5
    )


def test_conv_transpose_known_answers():
    w = jnp.ones((3, 1, 1))
    x = jnp.array([1.0, 2.0]).reshape(1, 2, 1)
    # VALID, stride 2: the stamps [1, 1, 1, 0, 0] + [0, 0, 2, 2, 2].
    valid = ConvTranspose(1, 3, strides=2, padding="VALID", use_bias=False)
    y, _ = valid.apply({"w": w}, (), x)
    np.testing.assert_array_equal(y[0, :, 0], [1.0, 1.0, 3.0, 2.0, 2.0])
    # SAME crops to 2 * 2 = 4 rows, starting at the Conv's low pad (0).
    same = ConvTranspose(1, 3, strides=2, use_bias=False)
    y, _ = same.apply({"w": w}, (), x)
    np.testing.assert_array_equal(y[0, :, 0], [1.0, 1.0, 3.0, 2.0])
    up2d = ConvTranspose(1, (3, 3), strides=2)
    assert up2d.init(KEY, (7, 7, 16))[0] == (14, 14, 1)


def test_conv_transpose_same_drops_the_extra_row_at_the_end_like_keras():
    # k - s odd: the Conv's SAME pads are (0, 1), so the stamped rows are
    # cropped at the end (TensorFlow/Keras); PyTorch's padding=1,
    # output_padding=1 crops the start and gives [10, 102, 20, 203, 30, 300].
    layer = ConvTranspose(1, 3, strides=2, use_bias=False)
    w = jnp.array([1.0, 10.0, 100.0]).reshape(3, 1, 1)
    y, _ = layer.apply({"w": w}, (), jnp.array([1.0, 2.0, 3.0]).reshape(1, 3, 1))
    np.testing.assert_array_equal(y[0, :, 0], [1.0, 10.0, 102.0, 20.0, 203.0, 30.0])


def test_conv_transpose_backward_with_a_kernel_narrower_than_the_input(monkeypatch):
    # bfloat16 weights on a float32 input: XLA's convolution in the manual
    # backward got float32 dy and the bfloat16 kernel (a bare TypeError).
    case = next(c for c in TRANSPOSE_CASES if c[0] == "convT-1d-s2-SAME")
    layer, _, params, state, x = _build(*case[1:])
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    y, _ = layer.apply(params, state, x)
    dy = _normal(7, y.shape)
    for native in (True, False):
        monkeypatch.setattr(_backend, "use_native", lambda native=native: native)
        _, vjp = jax.vjp(lambda p, xx: layer.apply(p, (), xx)[0], params, x)
        auto_params, auto_dx = vjp(dy)
        dparams, dx = layer.backward(params, layer.forward(params, (), x)[2], dy)
        np.testing.assert_allclose(dx, auto_dx, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            np.asarray(dparams["w"], np.float32), auto_params["w"], rtol=1e-2
        )


def test_conv_transpose_native_and_cpu_formulations_agree(monkeypatch):
    case = next(c for c in TRANSPOSE_CASES if c[0] == "convT-2d-s2-SAME")
    layer, _, params, state, x = _build(*case[1:])
    y, _ = layer.apply(params, state, x)
    dy = _normal(7, y.shape)

    @jax.jit
    def both(params, x, dy):
        _, vjp = jax.vjp(lambda p, xx: layer.apply(p, (), xx)[0], params, x)
        _, _, cache = layer.forward(params, (), x)
        return layer.backward(params, cache, dy), vjp(dy)

    results = {}
    for native in (True, False):
        monkeypatch.setattr(_backend, "use_native", lambda native=native: native)
        results[native] = jax.jit(both.__wrapped__)(params, x, dy)
    for a, b in zip(
        jax.tree.leaves(results[True]), jax.tree.leaves(results[False]), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# Upsample and GlobalAvgPool against NumPy


def test_upsample_repeats_like_numpy():
    x = _normal(4, (2, 3, 2, 2))
    y, _ = Upsample((2, 3)).apply((), (), x)
    expected = np.repeat(np.repeat(np.asarray(x), 2, axis=1), 3, axis=2)
    np.testing.assert_array_equal(y, expected)
    y, _ = Upsample(2).apply((), (), x[:, 0])  # an int factor: 1-D too
    np.testing.assert_array_equal(y, np.repeat(np.asarray(x[:, 0]), 2, axis=1))
    # A NumPy array of factors is a tuple (it died unpacking it as an int).
    assert Upsample(np.array([2, 3])).name == "Upsample((2, 3))"


def test_global_avg_pool_is_the_spatial_mean():
    x = _normal(5, (2, 3, 4, 5))
    y, _ = GlobalAvgPool().apply((), (), x)
    np.testing.assert_allclose(y, np.asarray(x).mean(axis=(1, 2)), rtol=1e-6)
    ints = jnp.full((1, 2, 2, 1), 100, jnp.int8)  # no int8 sum that wraps
    np.testing.assert_array_equal(GlobalAvgPool().apply((), (), ints)[0], [[100.0]])


# --------------------------------------------------------------------------
# Names and errors


def test_names_show_non_default_options():
    assert ConvTranspose(8, (3, 3), strides=2).name == (
        "ConvTranspose(8, (3, 3), strides=(2, 2))"
    )
    assert ConvTranspose(4, 2, padding="valid", use_bias=False).name == (
        "ConvTranspose(4, (2,), padding='VALID', use_bias=False)"
    )
    assert Upsample(2).name == "Upsample(2)"
    assert Upsample((2, 3)).name == "Upsample((2, 3))"
    assert GlobalAvgPool().name == "GlobalAvgPool()"


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: ConvTranspose(0, 3), "features must be a positive int"),
        (lambda: ConvTranspose(2, 3, strides=0), "strides must be a positive int"),
        (lambda: ConvTranspose(2, 3, padding="full"), "'full'"),
        (lambda: Upsample(0), "factor must be a positive int"),
        (lambda: Upsample((2, 2, 2)), r"factor must be an int \(1-D\) or a tuple"),
        (lambda: Upsample(1.5), "factor must be a positive int"),
    ],
)
def test_bad_options_are_rejected_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_conv_transpose_use_bias_must_be_a_bool():
    # use_bias=None built a layer without a bias, silently.
    with pytest.raises(TypeError, match=r"ConvTranspose: use_bias must be True or"):
        ConvTranspose(2, 3, use_bias=None)


def test_shape_errors_name_the_layer_at_init_and_under_jit():
    with pytest.raises(ShapeError, match=r"ConvTranspose\(4, \(3, 3\)\): expected"):
        ConvTranspose(4, (3, 3)).init(KEY, (784,))
    layer = ConvTranspose(4, (3, 3))
    _, params, state = layer.init(KEY, (5, 5, 2))
    with pytest.raises(ShapeError, match=r"input \(H, W, 2\), got \(5, 5, 3\)"):
        jax.jit(lambda x: layer.apply(params, state, x))(jnp.ones((1, 5, 5, 3)))
    with pytest.raises(ShapeError, match=r"Upsample\(\(2, 2\)\): expected input \(H"):
        Upsample((2, 2)).init(KEY, (8, 1))
    with pytest.raises(ShapeError, match=r"Upsample\(2\): expected input \(L, C\) or"):
        Upsample(2).apply((), (), jnp.ones((1, 2, 2, 2, 1)))
    with pytest.raises(ShapeError, match=r"GlobalAvgPool\(\).*no spatial positions"):
        GlobalAvgPool().init(KEY, (0, 3, 2))
    with pytest.raises(ShapeError, match=r"GlobalAvgPool\(\): expected input"):
        GlobalAvgPool().apply((), (), jnp.ones((2, 3)))
