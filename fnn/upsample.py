"""Nearest-neighbour upsampling: ``Upsample``.

Each input position is repeated ``factor`` times along every spatial axis:
the parameter-free counterpart of :func:`fnn.conv_transpose.ConvTranspose`
in a decoder, and the transpose of a sum pooling.
"""

from __future__ import annotations

import jax.numpy as jnp

from fnn import _windows as win
from fnn.protocol import (
    Layer,
    ShapeError,
    check_input,
    check_leaves,
    check_shape,
    shape_carrier,
)


def _interleave(spatial, factors):
    """``(n1, f1, n2, f2, ...)``: the spatial axes, each followed by its
    repetition axis (row-major, so ``i * f + a`` reads as ``(i, a)``)."""
    return tuple(d for n, f in zip(spatial, factors, strict=True) for d in (n, f))


def Upsample(factor) -> Layer:
    """Nearest-neighbour upsampling by an integer factor per spatial axis.

    Per example: ``(H, W, C) -> (H * f, W * f, C)`` (also ``(L, C) ->
    (L * f, C)``). No parameters.

    Forward: ``y[n, i*f + a, j*g + b, c] = x[n, i, j, c]`` for ``0 <= a <
    f``, ``0 <= b < g`` (``f``, ``g`` the factors of the two axes).

    Backward: each input position collects the cotangents of its copies,
    ``dx[n, i, j, c] = sum_{a < f, b < g} dy[n, i*f + a, j*g + b, c]``
    (a sum pooling of ``dy`` over ``f x g`` windows).

    Args:
      factor: a positive int (the same factor on every spatial axis, of a
        1-D or 2-D input) or a tuple of 1 or 2 positive ints (one per
        spatial axis, which fixes the rank).

    Returns:
      A parameter-free :class:`fnn.protocol.Layer`.

    Raises:
      ValueError: at construction, for a factor that is not a positive int.
      ShapeError: at init or trace time, for an input of the wrong rank.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
      >>> Upsample(2).apply((), (), x)[0][0, :, :, 0].tolist()[1:3]
      [[1.0, 1.0, 2.0, 2.0], [3.0, 3.0, 4.0, 4.0]]
      >>> Upsample((3,)).init(None, (2, 5))[0]
      (6, 5)
    """
    # A 1-D NumPy array is a tuple of factors too, as for a conv's window.
    if win.is_sequence(factor):
        factors = win.window_tuple("Upsample", "factor", factor)
        name = f"Upsample({factors})"
    else:
        factors = None
        (f,) = win.window_tuple("Upsample", "factor", factor)
        name = f"Upsample({f})"

    def factors_for(rank):
        return factors if factors is not None else (f,) * rank

    def layout(shape, got):
        """The number of spatial axes of a per-example ``shape``."""
        rank = len(factors) if factors is not None else len(shape) - 1
        if len(shape) != rank + 1 or rank not in win.LAYOUT:
            ranks = [rank] if factors is not None else list(win.LAYOUT)
            expected = " or ".join(win.describe(r) for r in ranks)
            raise ShapeError(f"{name}: expected input {expected}, got {got}")
        return rank

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape)
        rank = layout(input_shape, input_shape)
        spatial = input_shape[:-1]
        out = tuple(n * g for n, g in zip(spatial, factors_for(rank), strict=True))
        return (*out, input_shape[-1]), (), ()

    def forward(params, state, x, *, key=None, train=False):
        check_leaves(name, "params", params, ())
        check_leaves(name, "state", state, ())
        check_input(name, x, (..., "C"))
        rank = layout(tuple(x.shape[1:]), f"{tuple(x.shape[1:])} per example")
        spatial, fs = x.shape[1:-1], factors_for(rank)
        n, c = x.shape[0], x.shape[-1]
        spread = x.reshape(n, *_interleave(spatial, (1,) * rank), c)
        y = jnp.broadcast_to(spread, (n, *_interleave(spatial, fs), c))
        out = tuple(a * g for a, g in zip(spatial, fs, strict=True))
        return y.reshape(n, *out, c), state, shape_carrier(x)

    def backward(params, carrier, dy):
        rank = carrier.ndim - 2
        spatial, fs = carrier.shape[1:-1], factors_for(rank)
        n, c = dy.shape[0], dy.shape[-1]
        blocks = dy.reshape(n, *_interleave(spatial, fs), c)
        return (), blocks.sum(axis=tuple(range(2, 2 * rank + 1, 2)))

    return Layer(init, forward, backward, name)
