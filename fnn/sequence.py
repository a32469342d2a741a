"""``LastStep``: the layer that keeps a sequence's last element."""

from __future__ import annotations

import jax.numpy as jnp

from fnn.protocol import Layer, ShapeError, check_shape, shape_carrier


def LastStep() -> Layer:
    """The last element of a sequence: per example ``(T, ...) -> (...)``.

    ``y = x[T - 1]``. After a recurrent layer, which returns every hidden
    state, it keeps the final one, the summary of the whole sequence that a
    classifier reads: ``serial(LSTM(32), LastStep(), Dense(10))``. No
    parameters. Padded sequences keep their padding: ``x[T - 1]`` is the
    last position, not the last real token.

    Backward: the cotangent goes to the last step only,
    ``dx_{T-1} = dy`` and ``dx_t = 0`` for ``t < T - 1``.

    Returns:
      A :class:`~fnn.protocol.Layer` mapping ``(N, T, ...)`` to ``(N, ...)``.

    Raises:
      ShapeError: at ``init`` or trace time, for an input without a time
        axis or with ``T = 0`` (an empty sequence has no last step).

    Example:
      >>> import jax.numpy as jnp
      >>> layer = LastStep()
      >>> layer.init(None, (5, 3))[0]
      (3,)
      >>> y, _ = layer.apply((), (), jnp.arange(6.0).reshape(1, 3, 2))
      >>> y.tolist()
      [[4.0, 5.0]]
    """
    name = "LastStep()"

    def check(shape):
        if len(shape) < 1 or shape[0] < 1:
            raise ShapeError(
                f"{name}: expected a sequence (T, ...) per example with T >= 1, "
                f"got {shape}"
            )

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape)
        check(input_shape)
        return input_shape[1:], (), ()

    def forward(params, state, x, *, key=None, train=False):
        check(tuple(x.shape[1:]))
        return x[:, -1], state, shape_carrier(x)

    def backward(params, carrier, dy):
        dx = jnp.zeros(dy.shape[:1] + carrier.shape[1:], jnp.result_type(dy, carrier))
        return (), dx.at[:, -1].set(dy)

    return Layer(init, forward, backward, name)
