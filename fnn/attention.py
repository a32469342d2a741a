"""Attention: ``MultiHeadAttention``, self- and cross-attention with causal
and padding masks. (``Embedding`` and ``positional_encoding``, which live in
:mod:`fnn.embedding`, are re-exported here.)

Attention of one head, for ``T`` queries ``Q (T, dh)`` and ``S`` keys and
values ``K, V (S, dh)``::

    S = Q K^T / sqrt(dh)        (T, S) scores; row t = query t
    P = softmax(S, axis=-1)     each row sums to 1
    O = P V                     (T, dh)

Its hand-written backward, for the output cotangent ``dO``::

    dV = P^T dO                 dP = dO V^T
    dS = P * (dP - rowsum(dP * P))          (the softmax's Jacobian)
    dQ = dS K / sqrt(dh)        dK = dS^T Q / sqrt(dh)

Heads run side by side: ``einsum`` with explicit batch ``n``, head ``h``,
query ``q`` and key ``k`` axes.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from fnn import initializers
from fnn.embedding import Embedding, positional_encoding
from fnn.protocol import (
    Layer,
    ShapeError,
    check_input,
    check_leaves,
    check_positive_int,
    check_sequence_shape,
    check_shape,
    is_shape,
    layer_name,
    per_channel,
)

__all__ = ["Embedding", "MultiHeadAttention", "positional_encoding"]

# --------------------------------------------------------------------------
# Multi-head attention


def _flag(name, what, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: {what} must be True or False, got {value!r}")
    return bool(value)


def _first_dim(params, key):
    """``params[key].shape[0]`` where that is a matrix, else ``None`` (any)."""
    if isinstance(params, dict) and jnp.ndim(params.get(key, 0)) == 2:
        return jnp.shape(params[key])[0]
    return None


def MultiHeadAttention(
    num_heads: int,
    features: int,
    causal: bool = False,
    *,
    cross: bool = False,
    padding_mask: bool = False,
) -> Layer:
    """Multi-head scaled dot-product attention: self- or cross-attention.

    Queries are projections of the input ``x``; keys and values are
    projections of the same ``x`` (self-attention) or, with ``cross=True``,
    of another sequence, the ``context`` (the encoder's output that a
    transformer decoder reads). They are split into ``num_heads`` heads of
    size ``dh = features // num_heads``; the heads' outputs are concatenated
    and projected once more::

        q = x w_q + b_q,  k = c w_k + b_k,  v = c w_v + b_v   (c = x, or context)
        o_h = softmax(q_h k_h^T / sqrt(dh) + mask) v_h         per head
        y = concat_h(o_h) w_o + b_o

    Inputs, per example (``T`` queries, ``S`` keys; ``S = T`` without
    ``cross``), by the options the layer was built with:

    =====================  ====================================  ===========
    options                input                                 output
    =====================  ====================================  ===========
    (none), ``causal``     ``x (T, d)``                          ``(T, F)``
    ``padding_mask``       ``(x (T, d), mask (T,))``             ``(T, F)``
    ``cross``              ``(x (T, d), context (S, e))``        ``(T, F)``
    ``cross`` and mask     ``(x, context (S, e), mask (S,))``    ``(T, F)``
    =====================  ====================================  ===========

    ``init`` takes the matching tuple of per-example shapes, e.g.
    ``((T, d), (S, e), (S,))``. ``F`` is ``features``.

    Masks. ``mask`` is a bool array, ``True`` for a real token and ``False``
    for padding (as Keras' and flax's masks; PyTorch's ``key_padding_mask``
    means the opposite). No query attends to a padded key; the outputs *at*
    padded query positions are computed all the same, so leave them out of
    the loss. ``causal=True`` lets query ``t`` see keys ``<= t`` only (a
    decoder). Masked scores are replaced by ``jnp.finfo(dtype).min``, not
    ``-inf``, so no ``inf - inf = NaN`` arises; their ``exp`` underflows to
    exactly 0. A query that sees no key at all (every key padded, or every
    earlier one with ``causal``) attends to nothing: its ``o_h`` is 0, so
    its output is ``b_o``, with zero gradient, never NaN.

    Parameters: ``{"w_q": (d, F), "w_k", "w_v": (e, F), "w_o": (F, F),
    "b_q", "b_k", "b_v", "b_o": (F,)}`` (``e = d`` without ``cross``);
    each weight matrix Glorot-uniform on its own fans, biases 0. (PyTorch's
    ``MultiheadAttention`` draws ``w_q, w_k, w_v`` as one ``(3F, d)``
    matrix, a bound ``sqrt(2)`` smaller when ``d = F``, and ``w_o`` as a
    ``Linear`` layer.)

    Backward: per head, with ``P`` the (masked) attention weights::

        dV = P^T dO      dP = dO V^T      dS = P * (dP - rowsum(dP * P))
        dQ = dS K / sqrt(dh)              dK = dS^T Q / sqrt(dh)

    (``dS`` vanishes wherever ``P`` is 0, so masked entries need no extra
    care), then the projections as in ``Dense``::

        dw_o = o^T dy   db_o = sum dy   do = dy w_o^T
        dw_q = x^T dq   db_q = sum dq   dw_k = c^T dk   dw_v = c^T dv
        dx = dq w_q^T   dc = dk w_k^T + dv w_v^T     (self: dx = dx + dc)

    The mask is not differentiated: its cotangent is ``None``, as for
    :func:`Embedding`'s token ids.

    Args:
      num_heads: the number of heads, a positive int dividing ``features``.
      features: ``F``, the size of ``q``, ``k``, ``v`` and of the output.
      causal: mask the future (self-attention only).
      cross: attend over a second input, the ``context``.
      padding_mask: take a last input, the bool mask over the keys.

    Returns:
      A :class:`~fnn.protocol.Layer`.

    Raises:
      ValueError: at construction, unless ``features % num_heads == 0``, or
        for ``causal`` with ``cross``.
      ShapeError: at ``init`` or trace time, for inputs of the wrong number,
        rank or size, a mask of another length than the keys, or an empty
        context; TypeError for a mask that is not bool.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> layer = MultiHeadAttention(2, 8, cross=True, padding_mask=True)
      >>> out_shape, params, _ = layer.init(jax.random.key(0), ((5, 4), (7, 3), (7,)))
      >>> out_shape, params["w_k"].shape
      ((5, 8), (3, 8))
      >>> x, context = jnp.ones((2, 5, 4)), jnp.ones((2, 7, 3))
      >>> mask = jnp.arange(7)[None, :] < jnp.array([[7], [4]])  # lengths 7, 4
      >>> layer.apply(params, (), (x, context, mask))[0].shape
      (2, 5, 8)
    """
    num_heads = check_positive_int("MultiHeadAttention", "num_heads", num_heads)
    features = check_positive_int("MultiHeadAttention", "features", features)
    name = f"MultiHeadAttention({num_heads}, {features})"
    causal = _flag(name, "causal", causal)
    cross = _flag(name, "cross", cross)
    padding_mask = _flag(name, "padding_mask", padding_mask)
    name = layer_name(
        "MultiHeadAttention",
        (num_heads, features),
        [("causal", causal, False), ("cross", cross, False)]
        + [("padding_mask", padding_mask, False)],
    )
    if features % num_heads:
        raise ValueError(
            f"{name}: features ({features}) must be divisible by num_heads "
            f"({num_heads}); each head gets features // num_heads of them"
        )
    if causal and cross:
        raise ValueError(
            f"{name}: causal applies to self-attention; in cross-attention every "
            "query sees the whole context. Mask the decoder's own sequence in "
            "a causal self-attention layer before this one"
        )
    head_dim = features // num_heads
    scale = 1.0 / math.sqrt(head_dim)
    parts = ("x",) + ("context",) * cross + ("mask",) * padding_mask
    empty_context = f"{name}: the context is empty (S = 0): no key to attend to"
    wanted = parts[0] if len(parts) == 1 else f"a tuple ({', '.join(parts)})"

    def split(x, what):
        """``(x, context, mask)`` from the input (or its shape); ``context`` is
        ``x`` in self-attention and ``mask`` ``None`` without one."""
        if what == "shape" and isinstance(x, list) and is_shape(tuple(x)):
            x = tuple(x)  # a list of ints is one shape, as check_shape reads it
        if len(parts) == 1:
            if isinstance(x, (tuple, list)) and not (what == "shape" and is_shape(x)):
                raise ShapeError(
                    f"{name}: expected one {what} for x, got a tuple of {len(x)}; "
                    "build the layer with cross=True or padding_mask=True to "
                    "pass a context or a mask"
                )
            return x, x, None
        if (
            not isinstance(x, (tuple, list))
            or len(x) != len(parts)
            or (what == "shape" and is_shape(x))
        ):
            got = f"an array of shape {x.shape}" if hasattr(x, "shape") else repr(x)
            raise ShapeError(f"{name}: expected {wanted} of {what}s, got {got:.80}")
        return x[0], x[1] if cross else x[0], x[-1] if padding_mask else None

    def init(key, input_shape):
        x_shape, c_shape, m_shape = split(input_shape, "shape")
        t, d = check_sequence_shape(name, x_shape)
        s, e = check_sequence_shape(name, c_shape)
        if cross and s == 0:
            raise ShapeError(empty_context)
        if padding_mask and check_shape(name, m_shape) != (s,):
            raise ShapeError(
                f"{name}: expected mask shape ({s},), one per key, got {m_shape}"
            )
        # draw: a zero-width input (d = 0) gives an empty matrix, where
        # Glorot's fan-in of 0 would divide by zero.
        glorot = functools.partial(initializers.draw, initializers.glorot_uniform())
        kq, kk, kv, ko = jax.random.split(key, 4)
        params = {
            "w_q": glorot(kq, (d, features), jnp.float32),
            "w_k": glorot(kk, (e, features), jnp.float32),
            "w_v": glorot(kv, (e, features), jnp.float32),
            "w_o": glorot(ko, (features, features), jnp.float32),
        }
        for b in ("b_q", "b_k", "b_v", "b_o"):
            params[b] = jnp.zeros((features,), jnp.float32)
        return (t, features), params, ()

    def check(params, xq, ctx, mask):
        d = _first_dim(params, "w_q")
        e = _first_dim(params, "w_k") if cross else d
        shapes = {"w_q": (d, features), "w_k": (e, features), "w_v": (e, features)}
        shapes |= {"w_o": (features, features)}
        shapes |= {f"b_{c}": (features,) for c in "qkvo"}
        check_leaves(name, "params", params, shapes)
        check_input(name, xq, ("T", d))
        if cross:
            check_input(name, ctx, ("S", e), what="context")
            if ctx.shape[1] == 0:
                raise ShapeError(empty_context)
        if mask is not None:
            check_input(name, mask, (ctx.shape[1],), what="mask")
            if mask.dtype != jnp.bool_:
                raise TypeError(
                    f"{name}: the mask must be bool (True for a real token, False "
                    f"for padding), got dtype {mask.dtype}; cast with mask.astype(bool)"
                )
        batch = {a.shape[0] for a in (xq, ctx, mask) if a is not None}
        if len(batch) != 1:
            raise ShapeError(
                f"{name}: the inputs have different batch sizes {sorted(batch)}"
            )

    def visible(tq, tk, mask):
        """``None`` (all visible) or bools ``(N or 1, 1, Tq, Tk)``: may query
        ``q`` see key ``k``?"""
        allowed = None
        if causal:
            allowed = jnp.tril(jnp.ones((tq, tk), bool)).reshape(1, 1, tq, tk)
        if mask is not None:
            keys = mask.reshape(mask.shape[0], 1, 1, tk)
            allowed = keys if allowed is None else allowed & keys
        return allowed

    def heads(a):
        return a.reshape(a.shape[:2] + (num_heads, head_dim))

    def merge(a):
        return a.reshape(a.shape[:2] + (features,))

    def project(params, a, c):
        return heads(a @ params[f"w_{c}"] + per_channel(params[f"b_{c}"], 3))

    def forward(params, state, x, *, key=None, train=False):
        xq, ctx, mask = split(x, "array")
        check(params, xq, ctx, mask)
        q = project(params, xq, "q")
        k, v = project(params, ctx, "k"), project(params, ctx, "v")
        s = jnp.einsum("nqhd,nkhd->nhqk", q, k) * scale
        allowed = visible(q.shape[1], k.shape[1], mask)
        if allowed is not None:
            s = jnp.where(allowed, s, jnp.finfo(s.dtype).min)
        p = jax.nn.softmax(s, axis=-1)
        if allowed is not None:  # a query that sees no key attends to nothing
            p = jnp.where(allowed, p, 0)
        o = merge(jnp.einsum("nhqk,nkhd->nqhd", p, v))
        y = o @ params["w_o"] + per_channel(params["b_o"], 3)
        inputs = (xq, ctx) if cross else (xq,)
        return y, state, (inputs, q, k, v, p, o)

    def backward(params, cache, dy):
        inputs, q, k, v, p, o = cache
        xq, ctx = inputs[0], inputs[-1]
        sum_nt = (0, 1)
        dparams = {
            "w_o": jnp.einsum("ntf,ntg->fg", o, dy),
            "b_o": jnp.sum(dy, axis=sum_nt),
        }
        do = heads(dy @ params["w_o"].T)
        dv = jnp.einsum("nhqk,nqhd->nkhd", p, do)
        dp = jnp.einsum("nqhd,nkhd->nhqk", do, v)
        ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))
        dq = jnp.einsum("nhqk,nkhd->nqhd", ds, k) * scale
        dk = jnp.einsum("nhqk,nqhd->nkhd", ds, q) * scale
        dctx = 0
        for c, a, dz in (("q", xq, dq), ("k", ctx, dk), ("v", ctx, dv)):
            dz = merge(dz)
            dparams[f"w_{c}"] = jnp.einsum("ntd,ntf->df", a, dz)
            dparams[f"b_{c}"] = jnp.sum(dz, axis=sum_nt)
            if c == "q":
                dxq = dz @ params["w_q"].T
            else:
                dctx = dctx + dz @ params[f"w_{c}"].T
        dx = (dxq, dctx) if cross else (dxq + dctx,)
        dx = dx + ((None,) if padding_mask else ())
        return dparams, dx if len(parts) > 1 else dx[0]

    return Layer(init, forward, backward, name)
