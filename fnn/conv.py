"""Convolution: ``Conv``, 1-D and 2-D.

Images are channels last: per example ``(L, C)`` in 1-D and ``(H, W, C)`` in
2-D (NWC / NHWC with the batch), kernels are ``(*kernel_size, C_in, C_out)``
(WIO / HWIO). The rank follows the window: an int ``kernel_size`` means 1-D,
a tuple's length gives the rank. Padding is ``"SAME"`` or ``"VALID"``, made
explicit ``(lo, hi)`` pairs with XLA's rule (:mod:`fnn._windows`).

With stride ``s`` an input row can fall outside every window (VALID, or the
last row when ``n + lo + hi - k`` is not a multiple of ``s``); it gets a zero
gradient.

In the formulas one spatial axis stands for all of them; ``o`` runs over
output positions, ``k`` over window offsets, and ``x_pad[i] = x[i - lo]``
(zero outside ``x``). Which formulation computes each piece on which
backend is :mod:`fnn._backend`'s business, not this module's.
"""

from __future__ import annotations

import jax.numpy as jnp

from fnn import _backend, initializers
from fnn import _windows as win
from fnn.options import check_bool
from fnn.pool import AvgPool, MaxPool  # noqa: F401  (fnn.conv held them before)
from fnn.protocol import (
    Layer,
    check_leaves,
    check_positive_int,
    layer_name,
    per_channel,
)

DEFAULT_KERNEL_INIT = initializers.lecun_normal()


def float_input(x, w):
    """``x`` and ``w`` in their common floating type, as ``x @ w`` would
    promote them (an integer or bool image meets a float kernel)."""
    dtype = jnp.result_type(x, w)
    return x.astype(dtype), w.astype(dtype)


def common_backward(x, w, dy):
    """The forward's cache ``x``, a kernel ``w`` and ``dy`` in their common
    type, as the forward promoted ``x`` and ``w``: XLA's convolutions take
    one dtype, and a kernel narrower than the input (bfloat16 weights on a
    float32 image, float32 ones on float64) must not fail in backward."""
    dtype = jnp.result_type(x, w, dy)
    return x.astype(dtype), w.astype(dtype), dy.astype(dtype)


def check_use_bias(kind, use_bias):
    """``use_bias`` as a bool; as ``Dense``, anything but a bool or an int
    is refused (``None`` or ``"no"`` would pass a truth test silently)."""
    return check_bool(kind, "use_bias", use_bias)


def conv_options(kind, features, kernel_size, strides, padding, init_options):
    """Checked ``(features, kernel, strides, padding, name)`` of a conv layer;
    ``init_options`` are the ``(key, value, default)`` of ``use_bias`` and
    the initialisers, shown in the name where not the default."""
    features = check_positive_int(kind, "features", features)
    kernel = win.window_tuple(
        f"{kind}({features}, {kernel_size!r})", "kernel_size", kernel_size
    )
    rank = len(kernel)
    strides = win.strides_tuple(f"{kind}({features}, {kernel})", strides, rank)
    padding = win.padding_mode(f"{kind}({features}, {kernel})", padding)
    name = layer_name(
        kind,
        (features, kernel),
        [
            ("strides", strides, (1,) * rank),
            ("padding", padding, "SAME"),
            *init_options,
        ],
    )
    return features, kernel, strides, padding, name


def conv_params(key, kernel, c, features, use_bias, kernel_init, bias_init):
    """``{"w": (*kernel, c, features), "b": (features,)}``, each from its own
    key (no ``"b"`` without ``use_bias``)."""
    w_key, b_key = initializers.split(key, 2)
    params = {"w": initializers.draw(kernel_init, w_key, (*kernel, c, features))}
    if use_bias:
        params["b"] = initializers.draw(bias_init, b_key, (features,))
    return params


def init_options(use_bias, kernel_init, bias_init):
    """The ``(key, value, default)`` of a conv layer's bias and initialisers."""
    return [
        ("use_bias", use_bias, True),
        ("kernel_init", kernel_init, DEFAULT_KERNEL_INIT),
        ("bias_init", bias_init, initializers.zeros),
    ]


def param_shapes(kernel, features, use_bias):
    """The parameter shapes a conv layer checks at trace time (any ``C``)."""
    shapes = {"w": (*kernel, None, features)}
    if use_bias:
        shapes["b"] = (features,)
    return shapes


def bias_grad(dy):
    """``db[f] = sum_{n, o} dy[n, o, f]``."""
    return jnp.sum(dy, axis=tuple(range(dy.ndim - 1)))


def Conv(
    features: int,
    kernel_size,
    strides=1,
    padding: str = "SAME",
    use_bias: bool = True,
    kernel_init=DEFAULT_KERNEL_INIT,
    bias_init=initializers.zeros,
) -> Layer:
    """A convolution (cross-correlation, as in every deep-learning library).

    Per example: 1-D ``(L, C) -> (L', features)`` for an int or length-1
    ``kernel_size``, 2-D ``(H, W, C) -> (H', W', features)`` for a pair,
    with ``L' = ceil(L / s)`` (SAME) or ``(L - k) // s + 1`` (VALID).

    Parameters: ``{"w": (*kernel_size, C, features), "b": (features,)}``,
    without ``"b"`` when ``use_bias=False``. An integer or bool input is
    promoted to the kernel's float type, as ``Dense`` does.

    Forward, with stride ``s``::

        y[n, o, f] = b[f] + sum_{k, c} x_pad[n, o*s + k, c] w[k, c, f]

    Backward::

        db[f]       = sum_{n, o} dy[n, o, f]
        dw[k, c, f] = sum_{n, o} x_pad[n, o*s + k, c] dy[n, o, f]
        dx[n, p, c] = sum_{o*s + k = p + lo} sum_f dy[n, o, f] w[k, c, f]

    ``dw`` correlates ``x`` with ``dy`` dilated by ``s`` (the examples are
    the contracted axis); ``dx`` is the transposed convolution: ``dy``
    dilated by ``s``, padded by ``_windows.transpose_pads``, correlated with
    the kernel flipped in space and with ``C`` and ``features`` swapped.
    :mod:`fnn._backend` picks the formulation of each piece (on CPU
    Winograd's F(2x2, 3x3) for 3x3 stride-1 kernels with 16 channels or
    more, im2col matmuls otherwise; XLA's convolutions elsewhere).

    Args:
      features: output channels, a positive int.
      kernel_size: an int (1-D) or a tuple of 1 or 2 positive ints.
      strides: an int or one int per spatial axis.
      padding: ``"SAME"`` (output ``ceil(n / s)``) or ``"VALID"`` (windows
        inside the input only); case-insensitive.
      use_bias: add a learned ``b`` per output channel.
      kernel_init, bias_init: ``init(key, shape, dtype)``; the default LeCun
        normal draws with variance ``1 / (C * prod(kernel_size))``.

    Returns:
      A :class:`fnn.protocol.Layer` with ``scans_well=False`` (see
      :func:`fnn._backend.scan_by_default`).

    Raises:
      ValueError: at construction, for an option out of its domain.
      TypeError: at construction, for a ``use_bias`` that is no bool.
      ShapeError: at init or trace time, for an input of the wrong rank or
        channel count, or a VALID window larger than the input.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> layer = Conv(4, (3, 3), strides=2)
      >>> out_shape, params, _ = layer.init(jax.random.key(0), (28, 28, 1))
      >>> out_shape, params["w"].shape
      ((14, 14, 4), (3, 3, 1, 4))
    """
    use_bias = check_use_bias("Conv", use_bias)
    shown = init_options(use_bias, kernel_init, bias_init)
    features, kernel, strides, padding, name = conv_options(
        "Conv", features, kernel_size, strides, padding, shown
    )

    def init(key, input_shape):
        input_shape = win.init_check(name, input_shape, kernel, padding)
        spatial, c = input_shape[:-1], input_shape[-1]
        params = conv_params(key, kernel, c, features, use_bias, kernel_init, bias_init)
        out = win.out_spatial(
            spatial, kernel, strides, win.pads(spatial, kernel, strides, padding)
        )
        return (*out, features), params, ()

    def forward(params, state, x, *, key=None, train=False):
        check_leaves(name, "params", params, param_shapes(kernel, features, use_bias))
        check_leaves(name, "state", state, ())
        win.trace_check(name, x, kernel, padding, channels=params["w"].shape[-2])
        x, w = float_input(x, params["w"])
        pads = win.pads(x.shape[1:-1], kernel, strides, padding)
        y = _backend.conv(x, w, strides, pads)
        if use_bias:
            y = y + per_channel(params["b"], y.ndim)
        return y, state, x

    def backward(params, x, dy):
        x, w, dy = common_backward(x, params["w"], dy)
        spatial, out = x.shape[1:-1], dy.shape[1:-1]
        pads = win.pads(spatial, kernel, strides, padding)
        dw = _backend.conv_weight_grad(x, dy, kernel, strides, pads)
        edges = win.transpose_pads(spatial, out, kernel, strides, pads)
        dx = _backend.conv_transpose(dy, w, strides, edges)
        dparams = {"w": dw}
        if use_bias:
            dparams["b"] = bias_grad(dy)
        return dparams, dx

    return Layer(init, forward, backward, name, scans_well=False)
