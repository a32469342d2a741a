"""Convolution and pooling: ``Conv``, ``MaxPool``, ``AvgPool``, 1-D and 2-D.

Images are channels last: per example ``(L, C)`` in 1-D and ``(H, W, C)`` in
2-D (NWC / NHWC with the batch), kernels are ``(*kernel_size, C_in, C_out)``
(WIO / HWIO). The rank follows the window: an int ``kernel_size`` or
``window`` means 1-D, a tuple's length gives the rank.

Padding is ``"SAME"`` or ``"VALID"``. fnn turns it into explicit ``(lo, hi)``
pairs itself, with XLA's and TensorFlow's rule, so that forward and the
hand-written backward agree on every row::

    out   = ceil(n / s)                          # SAME
    total = max((out - 1) * s + k - n, 0)
    lo, hi = total // 2, total - lo             # the extra row goes last

    out   = (n - k) // s + 1,  lo = hi = 0      # VALID

With stride ``s`` an input row can fall outside every window (VALID, or the
last row when ``n + lo + hi - k`` is not a multiple of ``s``); it gets a zero
gradient.

In the formulas below one spatial axis stands for all of them; ``o`` runs
over output positions, ``k`` over window offsets, and ``x_pad[i] = x[i - lo]``
(zero, or ``-inf`` for max pooling, outside ``x``).
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from fnn import initializers
from fnn.dense import _shape_carrier
from fnn.protocol import (
    Layer,
    ShapeError,
    check_positive_int,
    check_shape,
    per_channel,
)

PADDINGS = ("SAME", "VALID")

# Per rank: the spatial letters of lax's dimension numbers, and how a
# per-example input reads in error messages.
_SPATIAL = {1: "W", 2: "HW"}
_LAYOUT = {1: "L", 2: "H, W"}

_LECUN_NORMAL = initializers.lecun_normal()


def _use_native() -> bool:
    """Whether to use XLA's own ``conv_general_dilated`` and ``reduce_window``
    for the pieces that have a measured-faster formulation on CPU.

    Decided at trace time. XLA's CPU backend runs a convolution's weight
    gradient and a max pool's gradient (``select_and_scatter``) far below
    matmul speed; there, shifted slices and matmuls win (numbers at each
    use, from ``benchmarks/conv_pieces.py``). Elsewhere (GPU, TPU) XLA's
    own ops are the ones tuned. Tests monkeypatch this to cover both paths.
    """
    return jax.default_backend() != "cpu"


# --------------------------------------------------------------------------
# Options and geometry (static Python ints, computed at trace time)


def _window_tuple(name, what, value):
    """An int (1-D) or a tuple of 1 or 2 positive ints; fixes the rank."""
    if isinstance(value, (tuple, list)):
        value = tuple(value)
        if len(value) not in _SPATIAL:
            raise ValueError(
                f"{name}: {what} must be an int (1-D) or a tuple of 1 or 2 "
                f"positive ints, got {value!r}"
            )
    else:
        value = (value,)
    for v in value:
        check_positive_int(name, what, v)
    return value


def _strides_tuple(name, value, rank):
    """An int (the same stride on every axis) or a tuple of ``rank`` ints."""
    if isinstance(value, (tuple, list)):
        value = tuple(value)
        if len(value) != rank:
            raise ValueError(
                f"{name}: strides must be an int or a tuple of {rank} ints "
                f"(one per spatial axis), got {value!r}"
            )
    else:
        value = (value,) * rank
    for v in value:
        check_positive_int(name, "strides", v)
    return value


def _padding_mode(name, padding):
    if not isinstance(padding, str) or padding.upper() not in PADDINGS:
        raise ValueError(f"{name}: padding must be 'SAME' or 'VALID', got {padding!r}")
    return padding.upper()


def _pads(spatial, window, strides, padding):
    """Explicit ``(lo, hi)`` padding per spatial axis (see the module doc)."""
    if padding == "VALID":
        return tuple((0, 0) for _ in spatial)
    pads = []
    for n, k, s in zip(spatial, window, strides, strict=True):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def _out_spatial(spatial, window, strides, pads):
    return tuple(
        (n + lo + hi - k) // s + 1
        for n, k, s, (lo, hi) in zip(spatial, window, strides, pads, strict=True)
    )


def _transpose_pads(spatial, out, window, strides, pads):
    """Pads that make a stride-1 window pass over ``dy`` dilated by ``s`` land
    exactly on ``x``: ``dx[p]`` collects ``dy[o]`` for ``o*s + k = p + lo``.

    Low ``k - 1 - lo``; high whatever gives back ``n`` rows (it also covers
    trailing input rows that no window reached).
    """
    return tuple(
        (k - 1 - lo, n + lo - (o - 1) * s - 1)
        for n, o, k, s, (lo, _) in zip(spatial, out, window, strides, pads, strict=True)
    )


def _describe(rank, c="C"):
    return f"({_LAYOUT[rank]}, {c})"


def _check_spatial(name, spatial, window, padding, got):
    """VALID needs every window to fit inside the input."""
    if padding == "VALID" and any(k > n for n, k in zip(spatial, window, strict=True)):
        raise ShapeError(
            f"{name}: window {window} is larger than the input {got} with "
            f"padding='VALID'; use a smaller window or padding='SAME'"
        )


def _init_check(name, input_shape, window, padding):
    """Validates ``input_shape`` at init; returns it."""
    rank = len(window)
    input_shape = check_shape(name, input_shape)
    if len(input_shape) != rank + 1:
        raise ShapeError(f"{name}: expected input {_describe(rank)}, got {input_shape}")
    _check_spatial(name, input_shape[:-1], window, padding, input_shape)
    return input_shape


def _trace_check(name, x, window, padding, channels=None):
    """Validates a batch ``x`` at trace time (so also under ``jax.jit``)."""
    rank = len(window)
    expected = _describe(rank, "C" if channels is None else channels)
    if x.ndim != rank + 2 or (channels is not None and x.shape[-1] != channels):
        raise ShapeError(
            f"{name}: expected input {expected} per example, got "
            f"{tuple(x.shape[1:])} (batch shape {tuple(x.shape)})"
        )
    _check_spatial(name, x.shape[1:-1], window, padding, tuple(x.shape[1:]))


def _name(head, options):
    shown = [f"{k}={v!r}" for k, v, default in options if v != default]
    return f"{head}{''.join(', ' + s for s in shown)})"


# --------------------------------------------------------------------------
# Shifted slices and matmuls: the CPU formulations (see _use_native)
#
# Measured with benchmarks/conv_pieces.py and whole training steps of the
# CNN workload (batch 128; 28x28x1->32 and 14x14x32->64, 3x3 SAME; jax
# 0.10.2 on 2 shared cores, tcmalloc, medians of interleaved jitted runs).
# The whole step decides, not the pieces alone: XLA's convolution is the
# fastest forward from 32 channels up (14x14x32->64: 12.5 ms against 19 for
# the patches), but autodiff of it computes dw with XLA's slow convolution
# (~35 ms) while autodiff of the patches forward gets a matmul, and the
# manual backward shares the forward's patches (XLA computes them once).
# Steps, manual / autodiff, in one (loaded) run: XLA's ops 129 / 164 ms;
# XLA's forward with patches dw 72 / 121; the patches forward 62 / 87; with
# the product-rule JVP of _conv_by_matmuls and the winner max pool, as here,
# 48 / 50 against PyTorch eager's 60 (run.py, cnn).
# Tried and dropped: patches built channels first, (|K| C, M) (a faster dw
# matmul alone, 24 against 27-33 ms, but autodiff then moved a transpose
# into the ReLU and pooling gradients: 142 ms step); im2col in two
# concatenations (rows, then columns: a tie) or as one gather (1.8x slower);
# lax.optimization_barrier to stop XLA re-fusing the forward into the
# backward (XLA:CPU drops the barriers before fusion); XLA's forward conv
# with channels-first patches, so that dw is a row-major matmul YNNPACK
# takes (82.6 / 80.4 ms against 74.1 / 71.7: that dw was no faster, 12 ms).

# Up to this many input channels the forward is a sum of per-offset matmuls
# (broadcast products for C = 1, fused by XLA into one loop): 28x28x1->32
# 1.1 ms against 3.8 for the patches and 2.3-6.7 for XLA's convolution; the
# whole step gains less (autodiff / manual 70.6 / 69.1 ms against 72.1 /
# 71.2 with the patches, one loaded run), as dw needs the patches anyway.
_OFFSET_SUM_MAX_CHANNELS = 1


def _pad_spatial(x, pads, fill):
    """``(N, *spatial, C)`` padded by ``pads`` (per spatial axis) with ``fill``."""
    config = [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)]
    return lax.pad(x, np.array(fill, x.dtype), config)


def _offsets(window):
    """Window offsets ``k`` in row-major order, the order of ``w``'s rows."""
    return list(itertools.product(*map(range, window)))


def _shifted(xp, k, strides, out):
    """``xp[n, o*s + k, c]`` for ``o < out``: one strided slice of the padded
    ``(N, *spatial, C)`` input, shaped ``(N, *out, C)``."""
    limit = [ki + (oi - 1) * si + 1 for ki, oi, si in zip(k, out, strides, strict=True)]
    return lax.slice(
        xp, _around(k, 0), (xp.shape[0], *limit, xp.shape[-1]), _around(strides, 1)
    )


def _patches(x, window, strides, pads, out):
    """im2col: ``(N, *spatial, C) -> (N, *out, |K| C)``, channel ``k C + c``
    holding ``x_pad[n, o*s + k, c]``; the shifted slices, concatenated."""
    xp = _pad_spatial(x, pads, 0.0)
    return jnp.concatenate(
        [_shifted(xp, k, strides, out) for k in _offsets(window)], -1
    )


def _conv_by_offsets(x, w, strides, pads):
    """``(N, *spatial, C) -> (N, *out, F)``: ``sum_k x_pad[o*s + k] @ w[k]``,
    one ``(C, F)`` matmul per window offset; ``w`` is ``(*window, C, F)``."""
    window = w.shape[:-2]
    out = _out_spatial(x.shape[1:-1], window, strides, pads)
    xp = _pad_spatial(x, pads, 0.0)
    return sum(jnp.dot(_shifted(xp, k, strides, out), w[k]) for k in _offsets(window))


def _conv_by_patches(x, w, strides, pads):
    """``(N, *spatial, C) -> (N, *out, F)``: ``patches @ w`` with ``w``
    ``(*window, C, F)`` flattened to ``(|K| C, F)``: one matmul."""
    window = w.shape[:-2]
    out = _out_spatial(x.shape[1:-1], window, strides, pads)
    return jnp.dot(_patches(x, window, strides, pads, out), w.reshape(-1, w.shape[-1]))


def _native_conv(x, w, strides, pads):
    """XLA's ``conv_general_dilated``, channels last: ``(N, *spatial, C)``
    with ``(*window, C, F)`` -> ``(N, *out, F)``."""
    sp = _SPATIAL[x.ndim - 2]
    dims = (f"N{sp}C", f"{sp}IO", f"N{sp}C")
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=dims)


def _patches_times(x, w, strides, pads):
    """``patches(x) @ w``, ``(N, *spatial, C)`` with ``(*window, C, F)`` ->
    ``(N, *out, F)``, written as ``(w^T @ patches^T)^T``: the same product,
    but JAX transposes it (w.r.t. ``w``) to ``patches^T @ dy`` read in
    place, where the plain ``patches @ w`` made XLA copy ``dy`` transposed
    first (28x28x1->32: 3.3 ms copy + 7.2 ms dot, against a 1.8 ms dot)."""
    window = w.shape[:-2]
    out = _out_spatial(x.shape[1:-1], window, strides, pads)
    p = _patches(x, window, strides, pads, out)
    p2 = p.reshape(-1, p.shape[-1])
    w2 = w.reshape(-1, w.shape[-1])
    return (w2.T @ p2.T).T.reshape(*p.shape[:-1], w.shape[-1])


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_by_matmuls(x, w, strides, pads):
    """The CPU forward: per-offset products up to
    ``_OFFSET_SUM_MAX_CHANNELS`` input channels, ``patches @ w`` above.

    Its JVP is the product rule of a bilinear map, ``conv(dx, w) +
    conv(x, dw)``, with each term written in the formulation whose
    *transpose* is fast on CPU, because ``jax.grad`` (``method="autodiff"``)
    gets its backward by transposing this JVP:

    - ``conv(dx, w)`` as XLA's convolution, which transposes to XLA's
      transposed convolution for ``dx`` (the op the manual backward uses);
      differentiating the patches instead gives a 9-way sum of padded
      slices (col2im) that XLA fuses into the pooling and ReLU gradients:
      28 ms against 15 for the transposed conv (14x14x32->64);
    - ``conv(x, dw)`` as ``patches(x) @ dw``, which transposes to one
      matmul, ``patches^T @ dy``; XLA's convolution transposes to its slow
      weight-gradient convolution (37 ms against 16).

    Nothing here is a hand-written backward: JAX still transposes the JVP
    itself, and ``backprop.check`` compares the result with ``Conv``'s
    manual backward and with float64 finite differences.
    """
    if x.shape[-1] <= _OFFSET_SUM_MAX_CHANNELS:
        return _conv_by_offsets(x, w, strides, pads)
    return _conv_by_patches(x, w, strides, pads)


@functools.partial(_conv_by_matmuls.defjvp, symbolic_zeros=True)
def _conv_by_matmuls_jvp(strides, pads, primals, tangents):
    x, w = primals
    dx, dw = tangents
    y = _conv_by_matmuls(x, w, strides, pads)
    terms = []
    if not isinstance(dx, SymbolicZero):
        terms.append(_native_conv(dx, w, strides, pads))
    if not isinstance(dw, SymbolicZero):
        terms.append(_patches_times(x, dw, strides, pads))
    if not terms:
        return y, jnp.zeros_like(y)
    return y, sum(terms[1:], terms[0])


def _dw_by_patches(x, dy, window, strides, pads):
    """``dw[k, c, f] = sum_{n, o} x_pad[n, o*s + k, c] dy[n, o, f]`` as one
    matmul, ``patches^T (|K| C, M) @ dy (M, F)`` with ``M = N prod(out)``.

    ``x`` is ``(N, *spatial, C)``, ``dy`` ``(N, *out, F)``; returns
    ``(*window, C, F)``. Alone (patches built here): 28x28x1->32 5 ms against
    10-13 for XLA's dw convolution, 14x14x32->64 27-33 against 36-41; nine
    per-offset matmuls took 11 and 31 ms.
    """
    p = _patches(x, window, strides, pads, dy.shape[1:-1])
    dw = p.reshape(-1, p.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])
    return dw.reshape(*window, x.shape[-1], dy.shape[-1])


# --------------------------------------------------------------------------
# Convolution


def Conv(
    features: int,
    kernel_size,
    strides=1,
    padding: str = "SAME",
    use_bias: bool = True,
    kernel_init=_LECUN_NORMAL,
    bias_init=initializers.zeros,
) -> Layer:
    """A convolution (cross-correlation, as in every deep-learning library).

    Per example: 1-D ``(L, C) -> (L', features)`` for an int or length-1
    ``kernel_size``, 2-D ``(H, W, C) -> (H', W', features)`` for a pair.

    Parameters: ``{"w": (*kernel_size, C, features), "b": (features,)}``,
    without ``"b"`` when ``use_bias=False``.

    Forward, with stride ``s``::

        y[n, o, f] = b[f] + sum_{k, c} x_pad[n, o*s + k, c] w[k, c, f]

    Backward::

        db[f]       = sum_{n, o} dy[n, o, f]
        dw[k, c, f] = sum_{n, o} x_pad[n, o*s + k, c] dy[n, o, f]
        dx[n, p, c] = sum_{o*s + k = p + lo} sum_f dy[n, o, f] w[k, c, f]

    ``dw`` correlates ``x`` with ``dy`` dilated by ``s`` (the examples are
    the contracted axis); ``dx`` is the transposed convolution: ``dy``
    dilated by ``s``, padded by ``_transpose_pads``, correlated with the
    kernel flipped in space and with ``C`` and ``features`` swapped. On CPU
    (see ``_use_native``) the forward is ``patches @ w`` (per-offset
    matmuls for one input channel) and ``dw`` is ``patches^T @ dy``, with
    ``patches`` the im2col of ``x_pad``; the forward's JVP is stated so that
    ``jax.grad`` reaches the same two ops (see ``_conv_by_matmuls``).

    Args:
      features: output channels.
      kernel_size: an int (1-D) or a tuple of 1 or 2 ints.
      strides: an int or one int per spatial axis.
      padding: ``"SAME"`` (output ``ceil(n / s)``) or ``"VALID"`` (windows
        inside the input only); case-insensitive.
      use_bias: add a learned ``b`` per output channel.
      kernel_init, bias_init: ``init(key, shape, dtype)``; the default LeCun
        normal draws with variance ``1 / (C * prod(kernel_size))``.
    """
    features = check_positive_int("Conv", "features", features)
    kernel = _window_tuple(
        f"Conv({features}, {kernel_size!r})", "kernel_size", kernel_size
    )
    rank = len(kernel)
    strides = _strides_tuple(f"Conv({features}, {kernel})", strides, rank)
    padding = _padding_mode(f"Conv({features}, {kernel})", padding)
    name = _name(
        f"Conv({features}, {kernel}",
        [("strides", strides, (1,) * rank), ("padding", padding, "SAME")],
    )
    sp = _SPATIAL[rank]
    dims = (f"N{sp}C", f"{sp}IO", f"N{sp}C")
    # Native dw as a convolution: x's examples become the contracted feature
    # axis and its channels the batch; dy plays the kernel. On CPU it beat
    # conv_general_dilated_patches(x) contracted with dy (14x14x32->64: 48
    # against 104 ms; that extraction is itself a conv with an identity
    # kernel C*9 wide) but loses to _dw_by_patches, used there instead.
    dw_dims = (f"C{sp}N", f"I{sp}O", f"{sp}NC")
    ones = (1,) * rank

    def init(key, input_shape):
        input_shape = _init_check(name, input_shape, kernel, padding)
        spatial, c = input_shape[:-1], input_shape[-1]
        pads = _pads(spatial, kernel, strides, padding)
        w_key, b_key = jax.random.split(key)
        params = {"w": kernel_init(w_key, (*kernel, c, features), jnp.float32)}
        if use_bias:
            params["b"] = bias_init(b_key, (features,), jnp.float32)
        out = _out_spatial(spatial, kernel, strides, pads)
        return (*out, features), params, ()

    def forward(params, state, x, *, key=None, train=False):
        _trace_check(name, x, kernel, padding, channels=params["w"].shape[-2])
        pads = _pads(x.shape[1:-1], kernel, strides, padding)
        if _use_native():
            y = _native_conv(x, params["w"], strides, pads)
        else:
            y = _conv_by_matmuls(x, params["w"], strides, pads)
        if use_bias:
            y = y + per_channel(params["b"], y.ndim)
        return y, state, x

    def backward(params, x, dy):
        spatial, out = x.shape[1:-1], dy.shape[1:-1]
        pads = _pads(spatial, kernel, strides, padding)
        if _use_native():
            # dw: window o*s + k over x_pad; the high pad trims rows no
            # window reached, so the result has exactly kernel_size positions.
            dw_pads = tuple(
                (lo, k + (o - 1) * s - n - lo)
                for n, o, k, s, (lo, _) in zip(
                    spatial, out, kernel, strides, pads, strict=True
                )
            )
            dw = lax.conv_general_dilated(
                x, dy, ones, dw_pads, rhs_dilation=strides, dimension_numbers=dw_dims
            )
        else:
            dw = _dw_by_patches(x, dy, kernel, strides, pads)
        # dx: the transposed convolution, XLA's on every backend: on CPU it
        # beat both matmul formulations (dy @ w_k^T placed back per offset,
        # and im2col of dy times the flipped kernel), 14x14x32->64: 14.6 ms
        # against 17.6 and 18.5.
        w_t = jnp.swapaxes(jnp.flip(params["w"], axis=tuple(range(rank))), -1, -2)
        dx = lax.conv_general_dilated(
            dy,
            w_t,
            ones,
            _transpose_pads(spatial, out, kernel, strides, pads),
            lhs_dilation=strides,
            dimension_numbers=dims,
        )
        dparams = {"w": dw}
        if use_bias:
            dparams["b"] = jnp.sum(dy, axis=tuple(range(dy.ndim - 1)))
        return dparams, dx

    return Layer(init, forward, backward, name)


# --------------------------------------------------------------------------
# Pooling


def _around(spatial, edge):
    """Extends a per-spatial-axis tuple with the batch and channel axes."""
    return (edge, *spatial, edge)


def _pool(kind, window, strides, padding, reduce, unreduce) -> Layer:
    """A parameter-free pooling layer.

    ``reduce(x, window, strides, pads) -> (y, cache)`` and
    ``unreduce(cache, dy, window, strides, pads) -> dx``; ``cache`` is an
    array whose shape is ``x``'s, so backward recomputes ``pads`` from it.
    """
    window = _window_tuple(kind, "window", window)
    rank = len(window)
    strides = window if strides is None else _strides_tuple(kind, strides, rank)
    padding = _padding_mode(kind, padding)
    name = _name(
        f"{kind}({window}",
        [("strides", strides, window), ("padding", padding, "VALID")],
    )

    def init(key, input_shape):
        input_shape = _init_check(name, input_shape, window, padding)
        spatial = input_shape[:-1]
        pads = _pads(spatial, window, strides, padding)
        return (*_out_spatial(spatial, window, strides, pads), input_shape[-1]), (), ()

    def forward(params, state, x, *, key=None, train=False):
        _trace_check(name, x, window, padding)
        pads = _pads(x.shape[1:-1], window, strides, padding)
        y, cache = reduce(x, window, strides, pads)
        return y, state, cache

    def backward(params, cache, dy):
        pads = _pads(cache.shape[1:-1], window, strides, padding)
        return (), unreduce(cache, dy, window, strides, pads)

    return Layer(init, forward, backward, name)


def _window_views(xp, window, strides, out):
    """``xp[n, o*s + k, c]`` for each window offset ``k`` in row-major order:
    one strided slice per offset, each shaped like the pooled output."""
    for k in _offsets(window):
        yield k, _shifted(xp, k, strides, out)


def _place(part, k, strides, spatial, pads):
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


def _max_reduce(x, window, strides, pads):
    if _use_native():
        return _max_reduce_window(x, window, strides, pads), x
    return _max_by_views(x, window, strides, pads), x


def _max_reduce_window(x, window, strides, pads):
    lowest = np.array(-np.inf, x.dtype)
    return lax.reduce_window(
        x,
        lowest,
        lax.max,
        _around(window, 1),
        _around(strides, 1),
        _around(pads, (0, 0)),
    )


def _max_winner(x, window, strides, pads, out):
    """The window views of ``x_pad`` (``-inf`` outside ``x``) with their
    offsets, and ``winner[n, o, c]``: the index of the view holding the
    window's FIRST maximum (row-major order; a NaN counts as the maximum)."""
    xp = _pad_spatial(x, pads, -np.inf)
    offsets, views = zip(*_window_views(xp, window, strides, out), strict=True)
    return offsets, views, jnp.argmax(jnp.stack(views), axis=0)


def _max_by_views(x, window, strides, pads):
    """The max pool as ``sum_k where(winner == k, view_k, 0)``.

    Its autodiff is then the first-maximum rule, one select per view
    (``where(winner == k, dy, 0)``) padded back into place: the manual
    backward's own formula. A running chain of selects was the faster
    forward (0.85 against 1.3-2.5 ms, 28x28x32) but transposes to nested
    selects that XLA:CPU fused into a scalar loop with the ReLU and conv
    gradients (18 ms against 1.7 in the CNN step); reduce_window's
    ``select_and_scatter`` took 28 ms.
    """
    out = _out_spatial(x.shape[1:-1], window, strides, pads)
    _, views, winner = _max_winner(x, window, strides, pads, out)
    zero = jnp.zeros_like(views[0])
    return sum(jnp.where(winner == i, v, zero) for i, v in enumerate(views))


def _max_unreduce(x, dy, window, strides, pads):
    offsets, _, winner = _max_winner(x, window, strides, pads, dy.shape[1:-1])
    zero = jnp.zeros_like(dy)
    return sum(
        _place(jnp.where(winner == i, dy, zero), k, strides, x.shape[1:-1], pads)
        for i, k in enumerate(offsets)
    )


def MaxPool(window, strides=None, padding: str = "VALID") -> Layer:
    """Max pooling over each window, per channel.

    Per example: ``(L, C) -> (L', C)`` (int ``window``) or
    ``(H, W, C) -> (H', W', C)`` (pair). No parameters. ``strides``
    defaults to ``window`` (non-overlapping windows); SAME pads with
    ``-inf``, so padding never wins.

    Forward: ``y[n, o, c] = max_k x_pad[n, o*s + k, c]``.

    Backward: each window sends ``dy[n, o, c]`` to its arg-max ``k*``,
    ``dx[n, p, c] = sum_{o*s + k* = p + lo} dy[n, o, c]``, summed where
    overlapping windows share a winner. Ties go to the FIRST maximum in
    row-major window order, as ``jax.vjp`` of ``reduce_window`` max does
    (``select_and_scatter_add`` with ``ge``; checked on CPU). No
    select-and-scatter here: the window views of ``x`` (one strided slice
    per offset) are stacked, ``argmax`` picks the winner, and each view's
    share of ``dy`` is padded back into place.
    """
    return _pool("MaxPool", window, strides, padding, _max_reduce, _max_unreduce)


def _avg_reduce(x, window, strides, pads):
    total = lax.reduce_window(
        x,
        np.zeros((), x.dtype),
        lax.add,
        _around(window, 1),
        _around(strides, 1),
        _around(pads, (0, 0)),
    )
    return total / math.prod(window), _shape_carrier(x)


def _avg_unreduce(carrier, dy, window, strides, pads):
    spatial, out = carrier.shape[1:-1], dy.shape[1:-1]
    edges = _transpose_pads(spatial, out, window, strides, pads)
    config = [(lo, hi, s - 1) for (lo, hi), s in zip(edges, strides, strict=True)]
    zero = np.zeros((), dy.dtype)
    spread = lax.pad(dy / math.prod(window), zero, _around(config, (0, 0, 0)))
    ones = _around((1,) * len(window), 1)
    return lax.reduce_window(spread, zero, lax.add, _around(window, 1), ones, "VALID")


def AvgPool(window, strides=None, padding: str = "VALID") -> Layer:
    """Average pooling over each window, per channel.

    Per example and options as :func:`MaxPool`. The divisor is always the
    window size ``|K| = prod(window)``: with SAME, padded zeros count, as in
    flax's ``avg_pool(count_include_pad=True)`` (its default), so edge
    outputs lean towards zero.

    Forward: ``y[n, o, c] = sum_k x_pad[n, o*s + k, c] / |K|``.

    Backward: ``dx[n, p, c] = sum_{o*s + k = p + lo} dy[n, o, c] / |K|``, the
    transposed window sum: ``dy / |K|`` dilated by ``s`` (``lax.pad``
    interior), padded by ``_transpose_pads`` and summed over stride-1
    windows (``reduce_window`` add), which lands exactly on ``x``'s shape.
    """
    return _pool("AvgPool", window, strides, padding, _avg_reduce, _avg_unreduce)
