"""Token embeddings and self-attention: ``Embedding``, ``MultiHeadAttention``,
and the sinusoidal ``positional_encoding`` of a transformer.

Attention of one head, for queries ``Q``, keys ``K`` and values ``V`` of
shape ``(T, dh)``::

    S = Q K^T / sqrt(dh)        (T, T) scores; row t = query t
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

import math

import jax
import jax.numpy as jnp

from fnn import initializers
from fnn.protocol import (
    Layer,
    ShapeError,
    check_positive_int,
    check_sequence_shape,
    check_shape,
    per_channel,
)

# --------------------------------------------------------------------------
# Embedding


def Embedding(vocab_size: int, features: int, embedding_init=None) -> Layer:
    """Looks up a learned ``features``-vector for each integer token id.

    Per example: integer ids of any shape ``S`` (a sequence ``(T,)``)
    ``-> S + (features,)``.

    Parameters: ``{"table": (vocab_size, features)}``, by default normal with
    standard deviation ``1 / sqrt(features)`` (flax's ``Embed`` default), so
    an embedding vector has about unit norm.

    Ids in ``[0, vocab_size)`` select rows; negative ids count from the end
    as in NumPy. Other ids cannot be checked under ``jit``: they give rows of
    NaN (``jnp.take(..., mode="fill")``) and no gradient.

    Backward: a scatter-add, ``dtable[v] = sum over positions with id v of
    dy``, so a repeated id collects every one of its cotangents. The
    returned ``dx`` is ``None``: integer inputs have no gradient
    (:func:`fnn.backprop.check_layer` skips their row, and ``jax.custom_vjp``
    reads ``None`` as a zero cotangent).
    """
    vocab_size = check_positive_int("Embedding", "vocab_size", vocab_size)
    features = check_positive_int("Embedding", "features", features)
    name = f"Embedding({vocab_size}, {features})"
    if embedding_init is None:
        embedding_init = initializers.normal(stddev=1.0 / math.sqrt(features))

    def init(key, input_shape):
        if isinstance(input_shape, list):
            input_shape = tuple(input_shape)
        input_shape = check_shape(name, input_shape)
        table = embedding_init(key, (vocab_size, features), jnp.float32)
        return input_shape + (features,), {"table": table}, ()

    def forward(params, state, x, *, key=None, train=False):
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(
                f"{name}: expects integer token ids, got dtype {x.dtype} "
                f"(shape {tuple(x.shape)}); cast with x.astype(jnp.int32)"
            )
        if x.ndim < 1:
            raise ShapeError(f"{name}: expected a batch of ids, got a scalar")
        y = jnp.take(params["table"], x, axis=0, mode="fill")
        return y, state, x

    def backward(params, ids, dy):
        table = params["table"]
        dtable = jnp.zeros(table.shape, jnp.result_type(table, dy))
        return {"table": dtable.at[ids].add(dy, mode="drop")}, None

    return Layer(init, forward, backward, name)


def positional_encoding(length: int, features: int, dtype=jnp.float32) -> jax.Array:
    """The sinusoidal position code of "Attention is all you need".

    Returns an array ``(length, features)``; for position ``p`` and
    ``i < features / 2``::

        pe[p, 2i]     = sin(p / 10000 ** (2i / features))
        pe[p, 2i + 1] = cos(p / 10000 ** (2i / features))

    (an odd ``features`` drops the last cosine). Add it to token embeddings
    before attention, which on its own cannot tell positions apart.
    """
    length = check_positive_int("positional_encoding", "length", length)
    features = check_positive_int("positional_encoding", "features", features)
    position = jnp.arange(length, dtype=jnp.float32)[:, None]
    rate = 10000.0 ** (-jnp.arange(0, features, 2, dtype=jnp.float32) / features)
    angle = position * rate[None, :]
    pe = jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1).reshape(length, -1)
    return pe[:, :features].astype(dtype)


# --------------------------------------------------------------------------
# Multi-head self-attention


def MultiHeadAttention(num_heads: int, features: int, causal: bool = False) -> Layer:
    """Multi-head scaled dot-product self-attention.

    Per example: ``(T, d) -> (T, features)``. Queries, keys and values are
    projections of the same input, split into ``num_heads`` heads of size
    ``dh = features // num_heads``; the heads' outputs are concatenated and
    projected once more::

        q = x w_q + b_q,  k = x w_k + b_k,  v = x w_v + b_v     (T, features)
        o_h = softmax(q_h k_h^T / sqrt(dh) + mask) v_h           per head
        y = concat_h(o_h) w_o + b_o

    Parameters: ``{"w_q", "w_k", "w_v": (d, features), "w_o": (features,
    features), "b_q", "b_k", "b_v", "b_o": (features,)}``; weights
    Glorot-uniform (as PyTorch's ``MultiheadAttention``), biases 0.

    ``causal=True`` lets position ``t`` attend only to positions ``<= t``
    (a decoder): the other scores are replaced by ``jnp.finfo(dtype).min``,
    not ``-inf``, so a subtraction never makes ``inf - inf = NaN``; their
    ``exp`` underflows to exactly 0 in float32 and float64 alike. Every row
    keeps its diagonal, so no row is fully masked.

    Backward: the per-head formulas of the module docstring (masked entries
    of ``dS`` set to 0), then the projections as in ``Dense``::

        dw_o = o^T dy   db_o = sum dy   do = dy w_o^T
        dw_q = x^T dq   db_q = sum dq   (likewise k, v)
        dx = dq w_q^T + dk w_k^T + dv w_v^T

    Raises:
      ValueError: at construction, unless ``features % num_heads == 0``.
    """
    num_heads = check_positive_int("MultiHeadAttention", "num_heads", num_heads)
    features = check_positive_int("MultiHeadAttention", "features", features)
    name = f"MultiHeadAttention({num_heads}, {features}, causal={causal})"
    if not isinstance(causal, bool):
        raise ValueError(f"{name}: causal must be True or False, got {causal!r}")
    if features % num_heads:
        raise ValueError(
            f"{name}: features ({features}) must be divisible by num_heads "
            f"({num_heads}); each head gets features // num_heads of them"
        )
    head_dim = features // num_heads
    scale = 1.0 / math.sqrt(head_dim)

    def init(key, input_shape):
        input_shape = check_sequence_shape(name, input_shape)
        t, d = input_shape
        glorot = initializers.glorot_uniform()
        kq, kk, kv, ko = jax.random.split(key, 4)
        params = {
            "w_q": glorot(kq, (d, features), jnp.float32),
            "w_k": glorot(kk, (d, features), jnp.float32),
            "w_v": glorot(kv, (d, features), jnp.float32),
            "w_o": glorot(ko, (features, features), jnp.float32),
        }
        for b in ("b_q", "b_k", "b_v", "b_o"):
            params[b] = jnp.zeros((features,), jnp.float32)
        return (t, features), params, ()

    def check(params, x):
        d = params["w_q"].shape[0]
        if x.ndim == 3 and x.shape[-1] == d:
            return
        raise ShapeError(
            f"{name}: expected input (T, {d}) per example, got "
            f"{tuple(x.shape[1:])} (batch shape {tuple(x.shape)})"
        )

    def allowed(t):
        """``(1, 1, T, T)`` booleans: may query ``q`` see key ``k``?"""
        return jnp.tril(jnp.ones((t, t), bool)).reshape(1, 1, t, t)

    def heads(a):
        return a.reshape(a.shape[:2] + (num_heads, head_dim))

    def merge(a):
        return a.reshape(a.shape[:2] + (features,))

    def forward(params, state, x, *, key=None, train=False):
        check(params, x)

        def project(w, b):
            return heads(x @ params[w] + per_channel(params[b], 3))

        q, k, v = project("w_q", "b_q"), project("w_k", "b_k"), project("w_v", "b_v")
        s = jnp.einsum("nqhd,nkhd->nhqk", q, k) * scale
        if causal:
            s = jnp.where(allowed(s.shape[-1]), s, jnp.finfo(s.dtype).min)
        p = jax.nn.softmax(s, axis=-1)
        o = merge(jnp.einsum("nhqk,nkhd->nqhd", p, v))
        y = o @ params["w_o"] + per_channel(params["b_o"], 3)
        return y, state, (x, q, k, v, p, o)

    def backward(params, cache, dy):
        x, q, k, v, p, o = cache
        sum_nt = (0, 1)
        dparams = {
            "w_o": jnp.einsum("ntf,ntg->fg", o, dy),
            "b_o": jnp.sum(dy, axis=sum_nt),
        }
        do = heads(dy @ params["w_o"].T)
        dv = jnp.einsum("nhqk,nqhd->nkhd", p, do)
        dp = jnp.einsum("nqhd,nkhd->nhqk", do, v)
        ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))
        if causal:
            ds = jnp.where(allowed(ds.shape[-1]), ds, 0)
        dq = jnp.einsum("nhqk,nkhd->nqhd", ds, k) * scale
        dk = jnp.einsum("nhqk,nqhd->nkhd", ds, q) * scale
        dx = 0
        for w, b, dz in (("w_q", "b_q", dq), ("w_k", "b_k", dk), ("w_v", "b_v", dv)):
            dz = merge(dz)
            dparams[w] = jnp.einsum("ntd,ntf->df", x, dz)
            dparams[b] = jnp.sum(dz, axis=sum_nt)
            dx = dx + dz @ params[w].T
        return dparams, dx

    return Layer(init, forward, backward, name)
