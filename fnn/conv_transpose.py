"""Transposed convolution: ``ConvTranspose``, 1-D and 2-D.

``ConvTranspose`` runs :func:`fnn.conv.Conv`'s geometry backwards: each
input position ``o`` stamps its kernel-weighted values onto output rows
``o*s + k - lo``, so a stride ``s`` upsamples by ``s`` (the decoder of an
autoencoder, the generator of a DCGAN). For the same options, a
``ConvTranspose`` from ``n`` to ``m`` rows is the input gradient of the
``Conv`` from ``m`` to ``n`` rows: ``m = n * s`` (SAME) or
``(n - 1) * s + k`` (VALID), and ``(lo, hi)`` are the pads of that
``Conv`` (:mod:`fnn._windows`). This is Keras's ``Conv2DTranspose``. In
PyTorch's ``ConvTranspose`` terms VALID is ``padding=0``, and SAME is
``padding=lo, output_padding=max(s - k, 0)`` when ``k - s`` is even or
negative (``k=4, s=2``: ``padding=1``); when ``k - s`` is odd and positive
SAME crops the extra stamped row at the END (``hi = lo + 1``), where
PyTorch's ``padding=lo + 1, output_padding=1`` crops it at the start: its
output is this one shifted by a row.

Shapes are channels last as in :mod:`fnn.conv`: per example ``(L, C)`` or
``(H, W, C)``, kernels ``(*kernel_size, C_in, features)``.
"""

from __future__ import annotations

import jax.numpy as jnp

from fnn import _backend, initializers
from fnn import _windows as win
from fnn.conv import (
    DEFAULT_KERNEL_INIT,
    bias_grad,
    check_use_bias,
    common_backward,
    conv_options,
    conv_params,
    float_input,
    init_options,
    param_shapes,
)
from fnn.protocol import Layer, check_leaves, per_channel


def _geometry(spatial, kernel, strides, padding):
    """``(out, pads, edges)`` for ``spatial`` input rows per axis: the
    output size, the pads of the ``Conv`` that maps ``out`` back to
    ``spatial``, and the edges of the transposed convolution."""
    if padding == "SAME":
        out = tuple(n * s for n, s in zip(spatial, strides, strict=True))
    else:
        out = tuple(
            (n - 1) * s + k for n, k, s in zip(spatial, kernel, strides, strict=True)
        )
    pads = win.pads(out, kernel, strides, padding)
    return out, pads, win.transpose_pads(out, spatial, kernel, strides, pads)


def ConvTranspose(
    features: int,
    kernel_size: int | tuple[int, ...],
    strides: int | tuple[int, ...] = 1,
    padding: str = "SAME",
    use_bias: bool = True,
    kernel_init=DEFAULT_KERNEL_INIT,
    bias_init=initializers.zeros,
) -> Layer:
    """A transposed convolution: the adjoint of ``Conv``'s geometry.

    Per example: 1-D ``(L, C) -> (L', features)`` for an int or length-1
    ``kernel_size``, 2-D ``(H, W, C) -> (H', W', features)`` for a pair,
    with ``L' = L * s`` (SAME) or ``(L - 1) * s + k`` (VALID).

    Parameters: ``{"w": (*kernel_size, C, features), "b": (features,)}``,
    without ``"b"`` when ``use_bias=False``.

    Forward, with stride ``s`` and ``(lo, hi)`` the pads of the ``Conv``
    from ``L'`` rows back to ``L`` (output rows that no input reaches hold
    the bias alone)::

        y[n, p, f] = b[f] + sum_{o*s + k = p + lo} sum_c x[n, o, c] w[k, c, f]

    Backward, with ``dy_pad[i] = dy[i - lo]`` (zero outside ``dy``)::

        db[f]       = sum_{n, p} dy[n, p, f]
        dw[k, c, f] = sum_{n, o} x[n, o, c] dy_pad[n, o*s + k, f]
        dx[n, o, c] = sum_{k, f} dy_pad[n, o*s + k, f] w[k, c, f]

    ``dx`` is a strided ``Conv`` of ``dy`` with the kernel's channel axes
    swapped, and ``dw`` is that ``Conv``'s weight gradient with ``dy`` as
    its input and ``x`` as its output cotangent: the roles of ``Conv``'s
    forward and input gradient trade places. :mod:`fnn._backend` picks the
    formulation of each piece.

    Args:
      features: output channels, a positive int.
      kernel_size: an int (1-D) or a tuple of 1 or 2 positive ints.
      strides: an int or one int per spatial axis: the upsampling factor.
      padding: ``"SAME"`` (output ``n * s``) or ``"VALID"`` (every
        stamped kernel row kept: ``(n - 1) * s + k``); case-insensitive.
      use_bias: add a learned ``b`` per output channel.
      kernel_init, bias_init: ``init(key, shape, dtype)``; the default LeCun
        normal draws with variance ``1 / (C * prod(kernel_size))``.

    Returns:
      A :class:`fnn.protocol.Layer` with ``scans_well=False``.

    Raises:
      ValueError: at construction, for an option out of its domain.
      TypeError: at construction, for a ``use_bias`` that is no bool.
      ShapeError: at init or trace time, for an input of the wrong rank or
        channel count.

    Example:
      >>> import jax
      >>> layer = ConvTranspose(8, (3, 3), strides=2)
      >>> layer.init(jax.random.key(0), (7, 7, 16))[0]
      (14, 14, 8)
      >>> ConvTranspose(8, 4, strides=2, padding="VALID").init(
      ...     jax.random.key(0), (5, 3))[0]
      (12, 8)
    """
    use_bias = check_use_bias("ConvTranspose", use_bias)
    shown = init_options(use_bias, kernel_init, bias_init)
    features, kernel, strides, padding, name = conv_options(
        "ConvTranspose", features, kernel_size, strides, padding, shown
    )
    # Any input fits: VALID output windows are never larger than the output.
    check_padding = "SAME"

    def init(key, input_shape):
        input_shape = win.init_check(name, input_shape, kernel, check_padding)
        spatial, c = input_shape[:-1], input_shape[-1]
        params = conv_params(key, kernel, c, features, use_bias, kernel_init, bias_init)
        out, _, _ = _geometry(spatial, kernel, strides, padding)
        return (*out, features), params, ()

    def forward(params, state, x, *, key=None, train=False):
        check_leaves(name, "params", params, param_shapes(kernel, features, use_bias))
        check_leaves(name, "state", state, ())
        channels = params["w"].shape[-2]
        win.trace_check(name, x, kernel, check_padding, channels=channels)
        x, w = float_input(x, params["w"])
        _, _, edges = _geometry(x.shape[1:-1], kernel, strides, padding)
        y = _backend.conv_transpose(x, jnp.swapaxes(w, -1, -2), strides, edges)
        if use_bias:
            y = y + per_channel(params["b"], y.ndim)
        return y, state, x

    def backward(params, x, dy):
        x, w, dy = common_backward(x, params["w"], dy)
        _, pads, _ = _geometry(x.shape[1:-1], kernel, strides, padding)
        w_t = jnp.swapaxes(w, -1, -2)  # (*kernel, features, C)
        dx = _backend.conv(dy, w_t, strides, pads)
        dw_t = _backend.conv_weight_grad(dy, x, kernel, strides, pads)
        dparams = {"w": jnp.swapaxes(dw_t, -1, -2)}
        if use_bias:
            dparams["b"] = bias_grad(dy)
        return dparams, dx

    return Layer(init, forward, backward, name, scans_well=False)
