"""Convolution and max pooling from shifted slices and matmuls (private).

XLA's CPU backend runs a convolution's forward and weight gradient, and a
max pool's gradient (``select_and_scatter``), far below matmul speed; these
formulations compute the same values with strided slices and matmuls, and
:mod:`fnn._backend` picks them on CPU. The timings that chose each one,
and the variants tried and dropped, are in ``benchmarks/README.md``
("Convolutions at matrix-multiply speed").

Shapes: ``x`` is ``(N, *spatial, C)``, a kernel ``w`` is ``(*window, C, F)``,
``dy`` is ``(N, *out, F)``; ``patches`` is the im2col of ``x_pad``,
``(N, *out, |K| C)``, channel ``k C + c`` holding ``x_pad[n, o*s + k, c]``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from fnn import _native, _winograd
from fnn._windows import max_winner, offsets, out_spatial, pad_spatial, shifted

# Up to this many input channels the forward is a sum of per-offset matmuls
# (broadcast products for C = 1, fused by XLA into one loop); above it, one
# ``patches @ w`` matmul.
OFFSET_SUM_MAX_CHANNELS = 1


def patches(x, window, strides, pads, out):
    """im2col: ``(N, *spatial, C) -> (N, *out, |K| C)``; the shifted slices
    of ``x_pad``, concatenated."""
    xp = pad_spatial(x, pads, 0.0)
    return jnp.concatenate([shifted(xp, k, strides, out) for k in offsets(window)], -1)


def _views_first(x, window, strides, pads, out):
    """The im2col of a one-channel ``x`` with the offsets first,
    ``(|K|, M)`` with ``M = N prod(out)``: for ``C = 1`` a stack of the
    shifted slices, with no transpose, so that ``dw = views @ dy`` is a
    row-major matmul (XLA:CPU hands those to YNNPACK, and ``patches^T @
    dy``, which contracts the leading axis of both, to a slower Eigen
    kernel)."""
    xp = pad_spatial(x, pads, 0.0)
    views = [shifted(xp, k, strides, out)[..., 0] for k in offsets(window)]
    return jnp.stack(views).reshape(len(views), x.shape[0] * math.prod(out))


def _conv_by_offsets(x, w, strides, pads):
    """``sum_k x_pad[o*s + k] @ w[k]``: one ``(C, F)`` matmul per offset.

    The sum runs in float32 at least and is rounded once: a float16 or
    bfloat16 partial sum rounded at every offset was several units of the
    last place off where XLA's convolution, and ``patches @ w``, are one.
    """
    window = w.shape[:-2]
    out = out_spatial(x.shape[1:-1], window, strides, pads)
    xp = pad_spatial(x, pads, 0.0)
    acc = jnp.promote_types(x.dtype, jnp.float32)
    y = sum(
        jnp.dot(shifted(xp, k, strides, out), w[k], preferred_element_type=acc)
        for k in offsets(window)
    )
    return y.astype(x.dtype)


def _conv_by_patches(x, w, strides, pads):
    """``patches @ w`` with ``w`` flattened to ``(|K| C, F)``: one matmul."""
    window = w.shape[:-2]
    out = out_spatial(x.shape[1:-1], window, strides, pads)
    return jnp.dot(patches(x, window, strides, pads, out), w.reshape(-1, w.shape[-1]))


def _patches_times(x, w, strides, pads):
    """``patches(x) @ w`` written as ``(w^T @ patches^T)^T``: the same
    product, but JAX transposes it (w.r.t. ``w``) to ``patches^T @ dy`` read
    in place, where the plain ``patches @ w`` made XLA copy ``dy``
    transposed first."""
    window = w.shape[:-2]
    out = out_spatial(x.shape[1:-1], window, strides, pads)
    p = patches(x, window, strides, pads, out)
    p2 = p.reshape(-1, p.shape[-1])
    w2 = w.reshape(-1, w.shape[-1])
    return (w2.T @ p2.T).T.reshape(*p.shape[:-1], w.shape[-1])


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def conv(x, w, strides, pads):
    """The convolution, ``(N, *spatial, C) -> (N, *out, F)``: per-offset
    products up to ``OFFSET_SUM_MAX_CHANNELS`` input channels, Winograd's
    F(2x2, 3x3) where :func:`fnn._winograd.applies`, ``patches @ w`` else.

    Its JVP is the product rule of a bilinear map, ``conv(dx, w) +
    conv(x, dw)``, with each term written in the formulation whose
    *transpose* is fast on CPU, because ``jax.grad`` (``method="autodiff"``)
    gets its backward by transposing this JVP:

    - ``conv(dx, w)`` as XLA's convolution, which transposes to XLA's
      transposed convolution for ``dx`` (the op the manual backward uses);
    - ``conv(x, dw)`` as ``patches(x) @ dw``, which transposes to one
      matmul, ``patches^T @ dy`` (for one input channel as ``views^T @
      dw``, which transposes to the row-major ``views @ dy``);
    - with Winograd, each term as the transpose of Winograd's ``dx`` or
      ``dw`` (:func:`fnn._winograd.conv_tangent_x`, ``conv_tangent_w``),
      which JAX transposes back to those two.

    Nothing here is a hand-written backward: JAX still transposes the JVP
    itself, and ``backprop.check`` compares the result with ``Conv``'s
    manual backward and with float64 finite differences.
    """
    if x.shape[-1] <= OFFSET_SUM_MAX_CHANNELS:
        return _conv_by_offsets(x, w, strides, pads)
    if _winograd.applies(w.shape, strides, x.dtype):
        return _winograd.conv(x, w, pads)
    return _conv_by_patches(x, w, strides, pads)


@functools.partial(conv.defjvp, symbolic_zeros=True)
def _conv_jvp(strides, pads, primals, tangents):
    x, w = primals
    dx, dw = tangents
    y = conv(x, w, strides, pads)
    winograd = _winograd.applies(w.shape, strides, y.dtype)
    terms = []
    if not isinstance(dx, SymbolicZero):
        if winograd:
            terms.append(_winograd.conv_tangent_x(dx, w, pads, y))
        else:
            terms.append(_native.conv(dx, w, strides, pads))
    if not isinstance(dw, SymbolicZero):
        if winograd:
            terms.append(_winograd.conv_tangent_w(x, dw, pads, y))
        elif x.shape[-1] == 1:
            views = _views_first(x, w.shape[:-2], strides, pads, y.shape[1:-1])
            dw2 = dw.reshape(-1, dw.shape[-1])
            terms.append((views.T @ dw2).reshape(y.shape))
        else:
            terms.append(_patches_times(x, dw, strides, pads))
    if not terms:
        return y, jnp.zeros_like(y)
    return y, sum(terms[1:], terms[0])


def conv_weight_grad(x, dy, window, strides, pads):
    """``dw[k, c, f] = sum_{n, o} x_pad[n, o*s + k, c] dy[n, o, f]`` as one
    matmul, ``patches^T (|K| C, M) @ dy (M, F)`` with ``M = N prod(out)``
    (``views (|K|, M) @ dy`` for one input channel, see
    :func:`_views_first`); returns ``(*window, C, F)``."""
    out, f = dy.shape[1:-1], dy.shape[-1]
    if x.shape[-1] == 1:
        dw = _views_first(x, window, strides, pads, out) @ dy.reshape(-1, f)
        return dw.reshape(*window, 1, f)
    p = patches(x, window, strides, pads, out)
    dw = p.reshape(-1, p.shape[-1]).T @ dy.reshape(-1, f)
    return dw.reshape(*window, x.shape[-1], f)


def max_pool(x, window, strides, pads):
    """The max pool as ``sum_k where(winner == k, view_k, 0)``.

    Its autodiff is then the first-maximum rule, one select per view
    (``where(winner == k, dy, 0)``) padded back into place: the manual
    backward's own formula (``fnn.pool``), where ``reduce_window``'s
    gradient is XLA:CPU's slow ``select_and_scatter``. Exact for every
    dtype: the padding is the dtype's lowest value, and a bool pool runs on
    ``uint8`` (a sum of bools would count).
    """
    if x.dtype == jnp.bool_:
        return max_pool(x.astype(jnp.uint8), window, strides, pads).astype(jnp.bool_)
    out = out_spatial(x.shape[1:-1], window, strides, pads)
    _, views, winner = max_winner(x, window, strides, pads, out)
    zero = jnp.zeros_like(views[0])
    return sum(jnp.where(winner == i, v, zero) for i, v in enumerate(views))
