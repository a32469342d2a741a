"""Window geometry shared by convolution and pooling (private).

Options (window, strides, padding) are checked and normalised here, padding
is made explicit, output sizes and the checks at ``init`` and trace time
are computed here, and the strided "window views" that the formulations of
:mod:`fnn._cpu` and the max pool's backward are built from live here.

Padding is ``"SAME"`` or ``"VALID"``, turned into explicit ``(lo, hi)``
pairs by :func:`jax.lax.padtype_to_pads` (XLA's and TensorFlow's rule), so
that a forward and its hand-written backward agree on every row::

    out   = ceil(n / s)                          # SAME
    total = max((out - 1) * s + k - n, 0)
    lo, hi = total // 2, total - lo             # the extra row goes last

    out   = (n - k) // s + 1,  lo = hi = 0      # VALID
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn.protocol import ShapeError, check_input, check_positive_int, check_shape

PADDINGS = ("SAME", "VALID")

# Per rank: the spatial letters of lax's dimension numbers, and how a
# per-example input reads in error messages.
SPATIAL = {1: "W", 2: "HW"}
LAYOUT = {1: "L", 2: "H, W"}


# --------------------------------------------------------------------------
# Options, checked when a layer is built


def is_sequence(value):
    """A tuple, list or 1-D NumPy array: one entry per spatial axis."""
    return isinstance(value, (tuple, list)) or (
        isinstance(value, np.ndarray) and value.ndim == 1
    )


def window_tuple(name, what, value):
    """An int (1-D) or a tuple of 1 or 2 positive ints; fixes the rank."""
    if is_sequence(value):
        value = tuple(value)
        if len(value) not in SPATIAL:
            raise ValueError(
                f"{name}: {what} must be an int (1-D) or a tuple of 1 or 2 "
                f"positive ints, got {value!r}"
            )
    else:
        value = (value,)
    return tuple(check_positive_int(name, what, v) for v in value)


def strides_tuple(name, value, rank, what="strides"):
    """An int (the same stride on every axis) or a tuple of ``rank`` ints."""
    if is_sequence(value):
        value = tuple(value)
        if len(value) != rank:
            raise ValueError(
                f"{name}: {what} must be an int or a tuple of {rank} ints "
                f"(one per spatial axis), got {value!r}"
            )
    else:
        value = (value,) * rank
    return tuple(check_positive_int(name, what, v) for v in value)


def padding_mode(name, padding):
    """``"SAME"`` or ``"VALID"``, case-insensitive."""
    if not isinstance(padding, str) or padding.upper() not in PADDINGS:
        raise ValueError(f"{name}: padding must be 'SAME' or 'VALID', got {padding!r}")
    return padding.upper()


# --------------------------------------------------------------------------
# Geometry (static Python ints, computed at trace time)


def pads(spatial, window, strides, padding):
    """Explicit ``(lo, hi)`` padding per spatial axis (see the module doc)."""
    return tuple(
        tuple(p) for p in lax.padtype_to_pads(spatial, window, strides, padding)
    )


def out_spatial(spatial, window, strides, pads):
    """Output positions per axis: ``(n + lo + hi - k) // s + 1``."""
    return tuple(
        (n + lo + hi - k) // s + 1
        for n, k, s, (lo, hi) in zip(spatial, window, strides, pads, strict=True)
    )


def transpose_pads(spatial, out, window, strides, pads):
    """Pads that make a stride-1 window pass over ``dy`` dilated by ``s`` land
    exactly on ``x``: ``dx[p]`` collects ``dy[o]`` for ``o*s + k = p + lo``.

    Low ``k - 1 - lo``; high whatever gives back ``n`` rows (it also covers
    trailing input rows that no window reached).
    """
    return tuple(
        (k - 1 - lo, n + lo - (o - 1) * s - 1)
        for n, o, k, s, (lo, _) in zip(spatial, out, window, strides, pads, strict=True)
    )


# --------------------------------------------------------------------------
# Shape checks at init and at trace time


def describe(rank, c="C"):
    """How a per-example input of ``rank`` spatial axes reads: ``(H, W, C)``."""
    return f"({LAYOUT[rank]}, {c})"


def check_spatial(name, spatial, window, padding, got):
    """Every spatial axis needs a position, and VALID every window to fit
    inside the input."""
    if 0 in tuple(spatial):
        raise ShapeError(
            f"{name}: input {got} has an empty spatial axis; every spatial "
            f"axis needs at least one position"
        )
    if padding == "VALID" and any(k > n for n, k in zip(spatial, window, strict=True)):
        raise ShapeError(
            f"{name}: window {window} is larger than the input {got} with "
            f"padding='VALID'; use a smaller window or padding='SAME'"
        )


def init_check(name, input_shape, window, padding):
    """Validates ``input_shape`` at init; returns it."""
    rank = len(window)
    input_shape = check_shape(name, input_shape)
    if len(input_shape) != rank + 1:
        raise ShapeError(f"{name}: expected input {describe(rank)}, got {input_shape}")
    check_spatial(name, input_shape[:-1], window, padding, input_shape)
    return input_shape


def trace_check(name, x, window, padding, channels="C"):
    """Validates a batch ``x`` at trace time (so also under ``jax.jit``)."""
    check_input(name, x, (*LAYOUT[len(window)].split(", "), channels))
    check_spatial(name, x.shape[1:-1], window, padding, tuple(x.shape[1:]))


# --------------------------------------------------------------------------
# Window views: one strided slice of the padded input per window offset


def around(spatial, edge):
    """Extends a per-spatial-axis tuple with the batch and channel axes."""
    return (edge, *spatial, edge)


def lowest(dtype):
    """The identity of ``max`` in ``dtype``: ``False``, ``iinfo.min``, ``-inf``
    (``finfo.min`` for a float type without infinities)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return np.array(False)
    if jnp.issubdtype(dtype, jnp.integer):
        return np.array(jnp.iinfo(dtype).min, dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        value = np.array(-np.inf, dtype)
    return value if np.isinf(value) else np.array(jnp.finfo(dtype).min, dtype)


def pad_spatial(x, pads, fill):
    """``(N, *spatial, C)`` padded by ``pads`` (per spatial axis) with ``fill``."""
    config = [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)]
    return lax.pad(x, np.asarray(fill, x.dtype), config)


def offsets(window):
    """Window offsets ``k`` in row-major order, the order of a kernel's rows."""
    return list(itertools.product(*map(range, window)))


def shifted(xp, k, strides, out):
    """``xp[n, o*s + k, c]`` for ``o < out``: one strided slice of the padded
    ``(N, *spatial, C)`` input, shaped ``(N, *out, C)``."""
    limit = [ki + (oi - 1) * si + 1 for ki, oi, si in zip(k, out, strides, strict=True)]
    return lax.slice(
        xp, around(k, 0), (xp.shape[0], *limit, xp.shape[-1]), around(strides, 1)
    )


def place(part, k, strides, spatial, pads):
    """The transpose of one window view: ``part[o]`` goes back to input row
    ``o*s + k - lo``, zeros between; rows outside ``x`` are cropped."""
    config = [(0, 0, 0)]
    for ki, oi, si, ni, (lo, _) in zip(
        k, part.shape[1:-1], strides, spatial, pads, strict=True
    ):
        low = ki - lo
        config.append((low, ni - low - (oi - 1) * si - 1, si - 1))
    config.append((0, 0, 0))
    return lax.pad(part, np.zeros((), part.dtype), config)


def max_winner(x, window, strides, pads, out):
    """The window views of ``x_pad`` (padded with the dtype's lowest value)
    with their offsets, and ``winner[n, o, c]``: the index of the view
    holding the window's FIRST maximum (row-major order; a NaN counts as
    the maximum)."""
    xp = pad_spatial(x, pads, lowest(x.dtype))
    ks = offsets(window)
    views = [shifted(xp, k, strides, out) for k in ks]
    return ks, views, jnp.argmax(jnp.stack(views), axis=0)
