"""Pooling: ``MaxPool``, ``AvgPool`` (1-D and 2-D) and ``GlobalAvgPool``.

Per example the input is channels last, ``(L, C)`` or ``(H, W, C)``; the
rank follows the window (an int means 1-D, a tuple's length gives the
rank). Pooling acts on each channel alone and has no parameters.

In the formulas one spatial axis stands for all of them; ``o`` runs over
output positions, ``k`` over window offsets, ``|K| = prod(window)``, and
``x_pad[i] = x[i - lo]`` outside ``x`` is the padding value (the dtype's
lowest for max pooling, zero for average pooling).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn import _backend
from fnn import _windows as win
from fnn.protocol import (
    Layer,
    ShapeError,
    check_input,
    check_leaves,
    check_shape,
    layer_name,
    shape_carrier,
)


def _pool(kind, window, strides, padding, reduce, unreduce) -> Layer:
    """A parameter-free pooling layer.

    ``reduce(x, window, strides, pads) -> (y, cache)`` and
    ``unreduce(cache, dy, window, strides, pads) -> dx``; ``cache`` is an
    array whose shape is ``x``'s, so backward recomputes ``pads`` from it.
    """
    window = win.window_tuple(kind, "window", window)
    rank = len(window)
    strides = window if strides is None else win.strides_tuple(kind, strides, rank)
    padding = win.padding_mode(kind, padding)
    name = layer_name(
        kind,
        (window,),
        [("strides", strides, window), ("padding", padding, "VALID")],
    )

    def init(key, input_shape):
        input_shape = win.init_check(name, input_shape, window, padding)
        spatial = input_shape[:-1]
        pads = win.pads(spatial, window, strides, padding)
        out = win.out_spatial(spatial, window, strides, pads)
        return (*out, input_shape[-1]), (), ()

    def forward(params, state, x, *, key=None, train=False):
        check_leaves(name, "params", params, ())
        check_leaves(name, "state", state, ())
        win.trace_check(name, x, window, padding)
        pads = win.pads(x.shape[1:-1], window, strides, padding)
        y, cache = reduce(x, window, strides, pads)
        return y, state, cache

    def backward(params, cache, dy):
        pads = win.pads(cache.shape[1:-1], window, strides, padding)
        return (), unreduce(cache, dy, window, strides, pads)

    return Layer(init, forward, backward, name)


# --------------------------------------------------------------------------
# Max pooling


def _max_reduce(x, window, strides, pads):
    # Complex numbers have no order: XLA's max compared them
    # lexicographically while the CPU formulation died in a bare TypeError.
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(
            f"MaxPool: got a {x.dtype} input, and complex numbers have no "
            "maximum; pool jnp.abs(x) or the real part instead"
        )
    return _backend.max_pool(x, window, strides, pads), x


def _max_unreduce(x, dy, window, strides, pads):
    offsets, _, winner = win.max_winner(x, window, strides, pads, dy.shape[1:-1])
    zero = jnp.zeros_like(dy)
    return sum(
        win.place(jnp.where(winner == i, dy, zero), k, strides, x.shape[1:-1], pads)
        for i, k in enumerate(offsets)
    )


def MaxPool(window, strides=None, padding: str = "VALID") -> Layer:
    """Max pooling over each window, per channel.

    Per example: ``(L, C) -> (L', C)`` (int ``window``) or
    ``(H, W, C) -> (H', W', C)`` (pair), ``L' = ceil(L / s)`` (SAME) or
    ``(L - k) // s + 1`` (VALID). No parameters. Every dtype pools exactly,
    in its own dtype: SAME pads with the dtype's lowest value (``-inf``,
    ``iinfo.min`` for integers, ``False`` for bool), so padding never wins.

    Forward: ``y[n, o, c] = max_k x_pad[n, o*s + k, c]``.

    Backward: each window sends ``dy[n, o, c]`` to its arg-max ``k*``,
    ``dx[n, p, c] = sum_{o*s + k* = p + lo} dy[n, o, c]``, summed where
    overlapping windows share a winner. Ties go to the FIRST maximum in
    row-major window order, as ``jax.vjp`` of ``reduce_window`` max does
    (``select_and_scatter_add`` with ``ge``); a NaN counts as the maximum.
    No select-and-scatter here: the window views of ``x`` (one strided
    slice per offset) are stacked, ``argmax`` picks the winner, and each
    view's share of ``dy`` is padded back into place.

    Args:
      window: an int (1-D) or a tuple of 1 or 2 positive ints.
      strides: an int or one int per spatial axis; ``None`` (the default)
        means ``window`` (non-overlapping windows).
      padding: ``"VALID"`` (the default) or ``"SAME"``; case-insensitive.

    Returns:
      A parameter-free :class:`fnn.protocol.Layer`.

    Raises:
      ValueError: at construction, for an option out of its domain.
      ShapeError: at init or trace time, for an input of the wrong rank or a
        VALID window larger than the input.
      TypeError: at trace time, for a complex input (no order).

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
      >>> MaxPool((2, 2)).apply((), (), x)[0][0, :, :, 0].tolist()
      [[5.0, 7.0], [13.0, 15.0]]
    """
    return _pool("MaxPool", window, strides, padding, _max_reduce, _max_unreduce)


# --------------------------------------------------------------------------
# Average pooling


def _averaged(x):
    """``x`` in the float type its mean has (``jnp.mean``'s rule: integers
    and bool are averaged in the default float type, not summed in their own,
    where ``int8`` would wrap)."""
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return x
    return x.astype(jnp.result_type(float))


def _summed(dtype):
    """The type window sums of ``dtype`` run in: float32 at least, as
    ``jnp.mean`` sums float16 and bfloat16 (an 8x8 bfloat16 window summed in
    its own type was off by 7 units of its last place, not 1)."""
    return jnp.promote_types(dtype, jnp.float32)


def _avg_reduce(x, window, strides, pads):
    x = _averaged(x)
    acc = x.astype(_summed(x.dtype))
    total = lax.reduce_window(
        acc,
        np.zeros((), acc.dtype),
        lax.add,
        win.around(window, 1),
        win.around(strides, 1),
        win.around(pads, (0, 0)),
    )
    return (total / math.prod(window)).astype(x.dtype), shape_carrier(x)


def _avg_unreduce(carrier, dy, window, strides, pads):
    spatial, out = carrier.shape[1:-1], dy.shape[1:-1]
    edges = win.transpose_pads(spatial, out, window, strides, pads)
    config = [(lo, hi, s - 1) for (lo, hi), s in zip(edges, strides, strict=True)]
    acc = dy.astype(_summed(dy.dtype))
    zero = np.zeros((), acc.dtype)
    spread = lax.pad(acc / math.prod(window), zero, win.around(config, (0, 0, 0)))
    ones = win.around((1,) * len(window), 1)
    dx = lax.reduce_window(spread, zero, lax.add, win.around(window, 1), ones, "VALID")
    return dx.astype(dy.dtype)


def AvgPool(window, strides=None, padding: str = "VALID") -> Layer:
    """Average pooling over each window, per channel.

    Per example and options as :func:`MaxPool`. The divisor is always the
    window size ``|K| = prod(window)``: with SAME, padded zeros count, as in
    flax's ``avg_pool(count_include_pad=True)`` (its default), so edge
    outputs lean towards zero. Integer and bool inputs are averaged in the
    default float type (``jnp.mean``'s rule), so the output is float and no
    sum wraps around; float16 and bfloat16 windows are summed in float32
    (``jnp.mean``'s rule too) and the mean rounded once to the input's type.

    Forward: ``y[n, o, c] = sum_k x_pad[n, o*s + k, c] / |K|``.

    Backward: ``dx[n, p, c] = sum_{o*s + k = p + lo} dy[n, o, c] / |K|``, the
    transposed window sum: ``dy / |K|`` dilated by ``s`` (``lax.pad``
    interior), padded by ``_windows.transpose_pads`` and summed over
    stride-1 windows (``reduce_window`` add), which lands exactly on
    ``x``'s shape.

    Args:
      window: an int (1-D) or a tuple of 1 or 2 positive ints.
      strides: an int or one int per spatial axis; ``None`` (the default)
        means ``window``.
      padding: ``"VALID"`` (the default) or ``"SAME"`` (padded zeros count
        in the divisor); case-insensitive.

    Returns:
      A parameter-free :class:`fnn.protocol.Layer`.

    Raises:
      ValueError: at construction, for an option out of its domain.
      ShapeError: at init or trace time, as :func:`MaxPool`.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
      >>> AvgPool((2, 2)).apply((), (), x)[0][0, :, :, 0].tolist()
      [[2.5, 4.5], [10.5, 12.5]]
    """
    return _pool("AvgPool", window, strides, padding, _avg_reduce, _avg_unreduce)


# --------------------------------------------------------------------------
# Global average pooling


def GlobalAvgPool() -> Layer:
    """The mean over every spatial position, per channel.

    Per example: ``(H, W, C) -> (C,)`` (also ``(L, C) -> (C,)``: every axis
    but the last is averaged). No parameters. Integer and bool inputs are
    averaged in the default float type.

    Forward: ``y[n, c] = sum_p x[n, p, c] / P`` with ``P`` the number of
    spatial positions (``H * W``).

    Backward: ``dx[n, p, c] = dy[n, c] / P`` at every position ``p``.

    Returns:
      A parameter-free :class:`fnn.protocol.Layer`.

    Raises:
      ShapeError: at init or trace time, for an input with fewer than two
        axes per example, or with no spatial positions.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.arange(8.0).reshape(1, 2, 2, 2)
      >>> GlobalAvgPool().apply((), (), x)[0].tolist()
      [[3.0, 4.0]]
    """
    name = "GlobalAvgPool()"

    def no_positions(shape):
        return f"{name}: got {shape} per example, with no spatial positions to average"

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape, min_rank=2)
        if math.prod(input_shape[:-1]) == 0:
            raise ShapeError(no_positions(input_shape))
        return input_shape[-1:], (), ()

    def forward(params, state, x, *, key=None, train=False):
        check_leaves(name, "params", params, ())
        check_leaves(name, "state", state, ())
        check_input(name, x, (..., "H", "C"))
        if math.prod(x.shape[1:-1]) == 0:
            raise ShapeError(no_positions(tuple(x.shape[1:])))
        x = _averaged(x)
        axes = tuple(range(1, x.ndim - 1))
        return jnp.mean(x, axis=axes), state, shape_carrier(x)

    def backward(params, carrier, dy):
        spatial = carrier.shape[1:-1]
        scaled = dy / math.prod(spatial)
        per_position = scaled.reshape(dy.shape[0], *(1,) * len(spatial), dy.shape[-1])
        return (), jnp.broadcast_to(per_position, (dy.shape[0], *carrier.shape[1:]))

    return Layer(init, forward, backward, name)
