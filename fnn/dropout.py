"""Inverted dropout: ``Dropout(rate)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnn.options import check_train
from fnn.protocol import (
    Layer,
    check_input,
    check_leaves,
    check_real,
    check_shape,
    layer_name,
    require_key,
)


def Dropout(rate: float) -> Layer:
    """Zeroes each unit with probability ``rate`` in training.

    ``rate`` is the probability that an element is *dropped* (haiku's
    meaning, not stax's). Kept units are scaled by ``1 / (1 - rate)`` so the
    expected activation is unchanged and evaluation is the identity.

    Per example: any shape, unchanged. No parameters, no state.

    Args:
      rate: the drop probability, in ``[0, 1)``; NumPy scalars are accepted.

    Returns:
      A :class:`~fnn.protocol.Layer`; training needs a PRNG ``key``
      (:class:`~fnn.protocol.MissingKeyError` otherwise).

    Raises:
      ValueError: at construction, for a ``rate`` outside ``[0, 1)``.
      TypeError: at trace time, for a ``train`` that is not a bool known
        then (see :func:`fnn.options.check_train`).

    Backward: the same mask and scale, ``dx = dy * mask / (1 - rate)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from fnn.dropout import Dropout
      >>> layer = Dropout(0.5)
      >>> x = jnp.ones((1, 8))
      >>> layer.apply((), (), x)[0].tolist()  # evaluation: the identity
      [[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]
      >>> y, _ = layer.apply((), (), x, key=jax.random.key(0), train=True)
      >>> sorted(set(y.ravel().tolist()))  # dropped, or kept and scaled by 2
      [0.0, 2.0]
    """
    try:
        rate = check_real("Dropout", "rate", rate, low=0.0, high=1.0, high_open=True)
    except ValueError:
        raise ValueError(f"Dropout: rate must be in [0, 1), got {rate!r}") from None
    name = layer_name("Dropout", (rate,))
    scale = 1.0 / (1.0 - rate)

    def init(key, input_shape):
        return check_shape(name, input_shape), (), ()

    def forward(params, state, x, *, key=None, train=False):
        check_leaves(name, "params", params, ())
        check_leaves(name, "state", state, ())
        check_input(name, x, (...,))
        if not check_train(name, train) or rate == 0.0:
            return x, state, ()
        keep = jax.random.bernoulli(require_key(name, key), 1.0 - rate, x.shape)
        return jnp.where(keep, x * scale, 0), state, keep

    def backward(params, keep, dy):
        if isinstance(keep, tuple):  # evaluation: the identity
            return (), dy
        return (), jnp.where(keep, dy * scale, 0)

    return Layer(init, forward, backward, name)
