"""Token embeddings and the sinusoidal position code of a transformer:
``Embedding`` and ``positional_encoding``."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fnn import initializers
from fnn.protocol import (
    Layer,
    ShapeError,
    check_leaves,
    check_positive_int,
    check_shape,
    layer_name,
)


def Embedding(vocab_size: int, features: int, embedding_init=None) -> Layer:
    """Looks up a learned ``features``-vector for each integer token id.

    Per example: integer ids of any shape ``S`` (a sequence ``(T,)``)
    ``-> S + (features,)``.

    Parameters: ``{"table": (vocab_size, features)}``, by default normal with
    standard deviation ``1 / sqrt(features)`` (flax's ``Embed`` default), so
    an embedding vector has about unit norm.

    Ids must lie in ``[0, vocab_size)``; negative ids do *not* count from
    the end (a ``-1`` is usually a padding id or a bug). Ids held in
    concrete arrays (eager calls) are checked: an id out of range raises
    ``ValueError``. Under ``jit`` the ids are not known when the program is
    built; an id out of range then gives a row of NaN, so the loss turns NaN
    (and :func:`fnn.train.fit` stops on it) instead of training silently on
    a clamped row, and it gets no gradient.

    Backward: a scatter-add, ``dtable[v] = sum over positions with id v of
    dy``, so a repeated id collects every one of its cotangents. The
    returned ``dx`` is ``None``: integer inputs have no gradient
    (:func:`fnn.backprop.check_layer` skips their row, and ``jax.custom_vjp``
    reads ``None`` as a zero cotangent).

    Args:
      vocab_size: the number of distinct ids, a positive int.
      features: the size of each embedding vector, a positive int.
      embedding_init: ``init(key, shape, dtype)`` for the table; default
        normal with standard deviation ``1 / sqrt(features)``.

    Returns:
      A :class:`~fnn.protocol.Layer` mapping int ``(N, *S)`` to
      ``(N, *S, features)``.

    Raises:
      ValueError: at construction, for sizes that are not positive ints;
        when called eagerly, for an id outside ``[0, vocab_size)``.
      TypeError: at trace time, for ids that are not integers.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> layer = Embedding(10, 4)
      >>> out_shape, params, state = layer.init(jax.random.key(0), (3,))
      >>> y, _ = layer.apply(params, state, jnp.array([[1, 2, 1]]))
      >>> out_shape, y.shape, bool((y[0, 0] == params["table"][1]).all())
      ((3, 4), (1, 3, 4), True)
    """
    vocab_size = check_positive_int("Embedding", "vocab_size", vocab_size)
    features = check_positive_int("Embedding", "features", features)
    name = layer_name(
        "Embedding", (vocab_size, features), [("embedding_init", embedding_init, None)]
    )
    if embedding_init is None:
        embedding_init = initializers.normal(stddev=1.0 / math.sqrt(features))

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape)
        table = embedding_init(key, (vocab_size, features), jnp.float32)
        return input_shape + (features,), {"table": table}, ()

    def checked_ids(x):
        """``x`` with ids out of range moved to ``vocab_size``, the one index
        that the lookup fills with NaN and the scatter drops."""
        # Range-check the ids as given, before jnp.asarray: with x64 off it
        # narrows int64 to int32, and an id of 2**32 + 1 would wrap to 1.
        ids = None if isinstance(x, jax.core.Tracer) else np.asarray(x)
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(
                f"{name}: expects integer token ids, got dtype {x.dtype} "
                f"(shape {tuple(x.shape)}); cast with x.astype(jnp.int32)"
            )
        if x.ndim < 1:
            raise ShapeError(f"{name}: expected a batch of ids, got a scalar")
        if ids is not None and ids.size:
            bad = ids[(ids < 0) | (ids >= vocab_size)]
            if bad.size:
                raise ValueError(
                    f"{name}: token ids must be in [0, {vocab_size}), got "
                    f"{bad.size} outside it (e.g. {bad[:5].tolist()}); raise "
                    f"vocab_size or map them to an id of the vocabulary"
                )
        if jnp.iinfo(x.dtype).bits < 32:  # vocab_size must fit the dtype
            x = x.astype(jnp.int32)
        return jnp.where((x < 0) | (x >= vocab_size), vocab_size, x)

    def forward(params, state, x, *, key=None, train=False):
        check_leaves(name, "params", params, {"table": (vocab_size, features)})
        ids = checked_ids(x)
        y = jnp.take(params["table"], ids, axis=0, mode="fill", fill_value=jnp.nan)
        return y, state, ids

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

    Args:
      length: the number of positions, a positive int.
      features: the size of each position's code, a positive int.
      dtype: the dtype of the result.

    Returns:
      An array ``(length, features)``; row ``p`` is position ``p``'s code.

    Raises:
      ValueError: for sizes that are not positive ints.
    """
    length = check_positive_int("positional_encoding", "length", length)
    features = check_positive_int("positional_encoding", "features", features)
    position = jnp.arange(length, dtype=jnp.float32)[:, None]
    rate = 10000.0 ** (-jnp.arange(0, features, 2, dtype=jnp.float32) / features)
    angle = position * rate[None, :]
    pe = jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1).reshape(length, -1)
    return pe[:, :features].astype(dtype)
