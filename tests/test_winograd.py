"""Winograd's F(2x2, 3x3) (fnn._winograd), the CPU formulation of 3x3
stride-1 convolutions with 16 channels or more: its forward, weight
gradient and transposed convolution against XLA's own convolutions in
float64, its float32 rounding against a bound, the Conv layer's hand-written
backward and autodiff through it, and where it is (and is not) used."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import _backend, _native, _winograd, backprop
from fnn._windows import pads as window_pads
from fnn._windows import transpose_pads
from fnn.conv import Conv
from fnn.conv_transpose import ConvTranspose

KEY = jax.random.key(0, impl="rbg")


def _normal(seed, shape, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _geometry(spatial, padding):
    pads = window_pads(spatial, (3, 3), (1, 1), padding)
    out = tuple(n + lo + hi - 2 for n, (lo, hi) in zip(spatial, pads, strict=True))
    return pads, out


@pytest.mark.parametrize(
    "spatial, padding",
    [
        ((6, 6), "SAME"),
        ((5, 7), "SAME"),
        ((1, 1), "SAME"),
        ((4, 7), "VALID"),
        ((3, 3), "VALID"),
    ],
)
def test_forward_weight_gradient_and_transpose_equal_xla_in_float64(spatial, padding):
    # Odd sizes leave a last tile half outside the output, VALID a 1x1 output:
    # the crop and the zero padding of partial tiles must be exact.
    with jax.enable_x64(True):
        _compare_with_xla(spatial, padding)


def _compare_with_xla(spatial, padding):
    pads, out = _geometry(spatial, padding)
    x = jnp.asarray(_normal(0, (2, *spatial, 16)))
    w = jnp.asarray(_normal(1, (3, 3, 16, 17)))
    dy = jnp.asarray(_normal(2, (2, *out, 17)))
    edges = transpose_pads(spatial, out, (3, 3), (1, 1), pads)

    @jax.jit  # one compile, not one per op
    def pairs(x, w, dy):
        return [
            (_winograd.conv(x, w, pads), _native.conv(x, w, (1, 1), pads)),
            (
                _winograd.conv_weight_grad(x, dy, pads),
                _native.conv_weight_grad(x, dy, (3, 3), (1, 1), pads),
            ),
            (
                _winograd.conv_transpose(dy, w, edges),
                _native.conv_transpose(dy, w, (1, 1), edges),
            ),
        ]

    for got, want in pairs(x, w, dy):
        assert got.shape == want.shape and got.dtype == jnp.float64
        np.testing.assert_allclose(
            got, want, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(want)))
        )


def test_float32_rounding_is_within_a_few_units_of_the_sums_scale():
    # The transforms add up to four values and scale by 1/2 (twice in G):
    # float32 results stay within a few units of 2^-24 of sum |x| |w|, the
    # scale of the sums' own rounding (im2col measured 1.5-5 units, Winograd
    # 1.7-3.9, for 16 to 256 channels).
    with jax.enable_x64(True):
        _rounding_against_float64()


def _rounding_against_float64():
    pads, out = _geometry((8, 8), "SAME")
    x, w, dy = (
        _normal(3, (2, 8, 8, 32)),
        _normal(4, (3, 3, 32, 48)),
        _normal(5, (2, *out, 48)),
    )
    single = [jnp.asarray(a, jnp.float32) for a in (x, w, dy)]
    exact = [jnp.asarray(a) for a in (x, w, dy)]
    absolute = [jnp.abs(a) for a in exact]
    edges = transpose_pads((8, 8), out, (3, 3), (1, 1), pads)
    pieces = [
        (
            lambda a, b, c: _winograd.conv(a, b, pads),
            lambda a, b, c: _native.conv(a, b, (1, 1), pads),
        ),
        (
            lambda a, b, c: _winograd.conv_weight_grad(a, c, pads),
            lambda a, b, c: _native.conv_weight_grad(a, c, (3, 3), (1, 1), pads),
        ),
        (
            lambda a, b, c: _winograd.conv_transpose(c, b, edges),
            lambda a, b, c: _native.conv_transpose(c, b, (1, 1), edges),
        ),
    ]
    for winograd, direct in pieces:
        result = jax.jit(winograd)(*single)
        assert result.dtype == jnp.float32
        direct = jax.jit(direct)
        error = np.abs(np.asarray(result, np.float64) - direct(*exact))
        units = error / direct(*absolute) / 2.0**-24
        assert units.max() <= 8, units.max()


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv_layer_backward_through_winograd_matches_autodiff_and_fd(padding):
    layer = Conv(17, (3, 3), padding=padding)
    _, params, state = layer.init(KEY, (5, 6, 16))
    params = dict(params, b=jnp.asarray(_normal(6, (17,)), jnp.float32))
    x = jnp.asarray(_normal(7, (2, 5, 6, 16)), jnp.float32)
    report = backprop.check_layer(layer, params, state, x)
    assert report.ok, str(report)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv_transpose_layer_through_winograd_matches_xla(monkeypatch, padding):
    # ConvTranspose's forward is the transposed convolution and its backward
    # a convolution and a weight gradient: all three are Winograd's here.
    layer = ConvTranspose(17, (3, 3), padding=padding)
    _, params, state = layer.init(KEY, (4, 5, 16))
    x = jnp.asarray(_normal(8, (2, 4, 5, 16)), jnp.float32)
    report = backprop.check_layer(layer, params, state, x)
    assert report.ok, str(report)
    outputs = {}
    for native in (True, False):
        monkeypatch.setattr(_backend, "use_native", lambda native=native: native)
        outputs[native] = jax.jit(layer.apply)(params, state, x)[0]
    np.testing.assert_allclose(outputs[False], outputs[True], rtol=1e-5, atol=1e-5)


def test_both_gradient_methods_use_winograd_and_no_xla_convolution():
    # Autodiff gets its backward by transposing the forward's JVP, whose two
    # terms are written as transposes of Winograd's dx and dw: neither
    # gradient method may fall back to XLA's convolution (slow on CPU).
    layer = Conv(16, (3, 3))
    _, params, state = layer.init(KEY, (6, 6, 16))
    x = jnp.ones((2, 6, 6, 16))

    def autodiff(p, xx):
        return jax.grad(lambda a, b: jnp.sum(layer.apply(a, state, b)[0] ** 2), (0, 1))(
            p, xx
        )

    def manual(p, xx):
        y, _, cache = layer.forward(p, state, xx)
        return layer.backward(p, cache, 2 * y)

    for gradients in (autodiff, manual):
        program = str(jax.make_jaxpr(gradients)(params, x))
        assert "conv_general_dilated" not in program, gradients.__name__
    auto, (dparams, dx) = jax.jit(autodiff)(params, x), jax.jit(manual)(params, x)
    np.testing.assert_allclose(auto[1], dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(auto[0]["w"], dparams["w"], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "kernel_shape, strides, dtype, expected",
    [
        ((3, 3, 16, 16), (1, 1), jnp.float32, True),
        ((3, 3, 64, 32), (1, 1), jnp.float64, True),
        ((3, 3, 1, 32), (1, 1), jnp.float32, False),  # a CNN's first layer
        ((3, 3, 32, 8), (1, 1), jnp.float32, False),
        ((3, 3, 32, 32), (2, 2), jnp.float32, False),
        ((5, 5, 32, 32), (1, 1), jnp.float32, False),
        ((3, 32, 32), (1,), jnp.float32, False),  # 1-D
        ((3, 3, 32, 32), (1, 1), jnp.bfloat16, False),  # im2col sums in float32
        ((3, 3, 32, 32), (1, 1), jnp.float16, False),
    ],
)
def test_applies_only_to_3x3_stride_1_wide_float32_or_float64(
    kernel_shape, strides, dtype, expected
):
    assert _winograd.applies(kernel_shape, strides, dtype) is expected


def test_gpu_path_keeps_xla_convolutions(monkeypatch):
    # Elsewhere than on CPU, XLA's own convolutions are the tuned ones.
    monkeypatch.setattr(_backend, "use_native", lambda: True)
    layer = Conv(16, (3, 3))
    _, params, state = layer.init(KEY, (4, 4, 16))
    y, _, cache = layer.forward(params, state, jnp.ones((1, 4, 4, 16)))
    program = str(jax.make_jaxpr(layer.backward)(params, cache, y))
    assert program.count("conv_general_dilated") == 2


@pytest.mark.parametrize("constructor", [Conv, ConvTranspose])
def test_empty_batch_through_winograd(constructor):
    # The transforms reshaped with -1, undetermined for zero tiles: an empty
    # batch died in a ZeroDivisionError inside jnp.reshape.
    layer = constructor(16, (3, 3))
    _, params, state = layer.init(KEY, (6, 6, 16))
    x = jnp.ones((0, 6, 6, 16))
    y, _, cache = layer.forward(params, state, x)
    assert y.shape == (0, 6, 6, 16)
    dparams, dx = layer.backward(params, cache, y)
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dparams["w"], np.zeros((3, 3, 16, 16)))

    def total(p, xx):
        return jnp.sum(layer.apply(p, state, xx)[0])

    auto, auto_dx = jax.grad(total, (0, 1))(params, x)
    assert auto_dx.shape == x.shape
    np.testing.assert_array_equal(auto["w"], np.zeros((3, 3, 16, 16)))


def test_a_nan_reaches_the_same_outputs_as_in_the_direct_convolution():
    # Winograd mixes a tile's inputs before the products, but each output's
    # sums keep the direct convolution's structural zeros: one NaN input
    # spoils exactly its 3x3 neighbourhood (an inf, subtracted in the
    # transforms, mostly gives NaN instead of inf: documented).
    pads = ((1, 1), (1, 1))
    w = jnp.asarray(_normal(9, (3, 3, 16, 16)), jnp.float32)
    for row, col in [(0, 0), (2, 3), (5, 5)]:
        x = jnp.ones((1, 6, 6, 16)).at[0, row, col, 3].set(jnp.nan)
        got = jnp.isnan(jax.jit(_winograd.conv, static_argnums=2)(x, w, pads))
        want = jnp.isnan(_native.conv(x, w, (1, 1), pads))
        assert int(want.sum()) > 0
        np.testing.assert_array_equal(got, want)
