"""XLA's own convolution and pooling ops, channels last (private).

The formulations :mod:`fnn._backend` picks on GPU and TPU, where these are
the tuned ops, and, for the transposed convolution, on every backend.
Shapes: ``x`` is ``(N, *spatial, C)``, a kernel ``w`` is
``(*window, C, F)``, ``dy`` is ``(N, *out, F)``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from fnn._windows import SPATIAL, around, lowest


def _dims(rank):
    sp = SPATIAL[rank]
    return (f"N{sp}C", f"{sp}IO", f"N{sp}C")


def conv(x, w, strides, pads):
    """``conv_general_dilated``: ``y[n, o, f] = sum_{k, c} x_pad[n, o*s + k, c]
    w[k, c, f]``, ``(N, *spatial, C) -> (N, *out, F)``."""
    return lax.conv_general_dilated(
        x, w, strides, pads, dimension_numbers=_dims(x.ndim - 2)
    )


def conv_weight_grad(x, dy, window, strides, pads):
    """``dw[k, c, f] = sum_{n, o} x_pad[n, o*s + k, c] dy[n, o, f]`` as one
    convolution: ``x``'s examples become the contracted feature axis and its
    channels the batch; ``dy``, dilated by ``s``, plays the kernel. The high
    pad trims rows no window reached, so the result has exactly ``window``
    positions. Returns ``(*window, C, F)``."""
    rank = len(window)
    sp = SPATIAL[rank]
    dw_pads = tuple(
        (lo, k + (o - 1) * s - n - lo)
        for n, o, k, s, (lo, _) in zip(
            x.shape[1:-1], dy.shape[1:-1], window, strides, pads, strict=True
        )
    )
    return lax.conv_general_dilated(
        x,
        dy,
        (1,) * rank,
        dw_pads,
        rhs_dilation=strides,
        dimension_numbers=(f"C{sp}N", f"I{sp}O", f"{sp}NC"),
    )


def conv_transpose(dy, w, strides, edges):
    """The transposed convolution, ``dx[n, p, c] = sum_{o*s + k = p + lo}
    sum_f dy[n, o, f] w[k, c, f]``: ``dy`` dilated by ``s`` (``lhs_dilation``),
    padded by ``edges`` (``_windows.transpose_pads``), correlated with the
    kernel flipped in space and with ``C`` and ``F`` swapped. ``dy`` is
    ``(N, *out, F)``, ``w`` ``(*window, C, F)``; returns ``(N, *spatial, C)``.
    """
    rank = dy.ndim - 2
    w_t = jnp.swapaxes(jnp.flip(w, axis=tuple(range(rank))), -1, -2)
    return lax.conv_general_dilated(
        dy,
        w_t,
        (1,) * rank,
        edges,
        lhs_dilation=strides,
        dimension_numbers=_dims(rank),
    )


def max_pool(x, window, strides, pads):
    """``reduce_window`` max, padded with the dtype's lowest value (``-inf``,
    ``iinfo.min``, ``False``), so the padding never wins."""
    return lax.reduce_window(
        x,
        lowest(x.dtype),
        lax.max,
        around(window, 1),
        around(strides, 1),
        around(pads, (0, 0)),
    )
