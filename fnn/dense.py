"""Dense (fully connected) layers and shape plumbing: ``Dense``, ``Flatten``,
``Reshape``.

A dense layer computes ``z = x @ w + b`` per example: the course's
``z = W a + b`` with the weight stored transposed, ``w`` of shape
``(in_features, features)``, so that a batch ``x`` of shape ``(N, ..., d)``
multiplies on the left without a transpose.
"""

from __future__ import annotations

import numbers

import jax.numpy as jnp

from fnn import initializers
from fnn.options import check_bool
from fnn.protocol import (
    Layer,
    ShapeError,
    check_input,
    check_key,
    check_leaves,
    check_positive_int,
    check_shape,
    layer_name,
    per_channel,
    shape_carrier,
    size,
)

_KERNEL_INIT = initializers.lecun_normal()


def _leading_axes(x) -> tuple[int, ...]:
    """Every axis but the last: the batch and any extra per-example axes."""
    return tuple(range(x.ndim - 1))


def _flatten_hint(d):
    """The hint for a ``Dense`` given an unflattened input of ``d`` values."""

    def hint(per_example):
        if len(per_example) > 1 and size(per_example) == d:
            return "add Flatten() before it"
        return None

    return hint


def Dense(
    features: int,
    use_bias: bool = True,
    kernel_init=_KERNEL_INIT,
    bias_init=initializers.zeros,
) -> Layer:
    """A fully connected layer, ``y = x @ w + b``.

    Per example: ``(..., d) -> (..., features)``; extra leading axes (a
    sequence ``(T, d)``) share the weights. A zero-width input (``d = 0``)
    gives ``y = b``, as the empty sum says.

    Args:
      features: the output width, a positive int.
      use_bias: add the bias ``b``.
      kernel_init: ``(key, shape, dtype) -> array`` for ``w``; LeCun normal
        by default (variance ``1 / d``).
      bias_init: the same for ``b``; zeros by default. ``w`` and ``b`` are
        drawn from independent keys.

    Returns:
      A :class:`~fnn.protocol.Layer` with parameters
      ``{"w": (d, features), "b": (features,)}`` (no ``"b"`` when
      ``use_bias=False``) and no state.

    Backward, with sums over every axis but the last:
      ``dw = x^T dy``, ``db = sum(dy)``, ``dx = dy w^T``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> layer = Dense(3, use_bias=False)
      >>> layer
      Dense(3, use_bias=False)
      >>> out_shape, params, state = layer.init(jax.random.key(0), (4,))
      >>> out_shape, params["w"].shape
      ((3,), (4, 3))
    """
    features = check_positive_int("Dense", "features", features)
    use_bias = check_bool("Dense", "use_bias", use_bias)
    name = layer_name(
        "Dense",
        (features,),
        [
            ("use_bias", use_bias, True),
            ("kernel_init", kernel_init, _KERNEL_INIT),
            ("bias_init", bias_init, initializers.zeros),
        ],
    )
    shapes = {"w": (None, features)}
    if use_bias:
        shapes["b"] = (features,)

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape, min_rank=1)
        d = input_shape[-1]
        key_w, key_b = initializers.split(check_key(name, key), 2)
        params = {"w": initializers.draw(kernel_init, key_w, (d, features))}
        if use_bias:
            params["b"] = initializers.draw(bias_init, key_b, (features,))
        return input_shape[:-1] + (features,), params, ()

    def forward(params, state, x, *, key=None, train=False):
        check_leaves(name, "params", params, shapes)
        check_leaves(name, "state", state, ())
        d = params["w"].shape[0]
        check_input(name, x, (..., d), hint=_flatten_hint(d))
        y = x @ params["w"]
        if use_bias:
            y = y + per_channel(params["b"], y.ndim)
        return y, state, x

    def backward(params, x, dy):
        axes = _leading_axes(dy)
        dparams = {"w": jnp.tensordot(x, dy, axes=(axes, axes))}
        if use_bias:
            dparams["b"] = jnp.sum(dy, axis=axes)
        return dparams, dy @ params["w"].T

    return Layer(init, forward, backward, name)


def _reshape_layer(name, resolve) -> Layer:
    """A parameter-free reshape; ``resolve(input_shape)`` gives the output shape."""

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape)
        return resolve(input_shape), (), ()

    def forward(params, state, x, *, key=None, train=False):
        check_leaves(name, "params", params, ())
        check_leaves(name, "state", state, ())
        check_input(name, x, (...,))
        out = resolve(tuple(x.shape[1:]))
        return x.reshape(x.shape[:1] + out), state, shape_carrier(x)

    def backward(params, carrier, dy):
        return (), dy.reshape(dy.shape[:1] + carrier.shape[1:])

    return Layer(init, forward, backward, name)


def Flatten() -> Layer:
    """Flattens each example into a vector.

    Per example: ``(d1, d2, ...) -> (d1 * d2 * ...,)``; a scalar example
    ``()`` becomes ``(1,)``. No parameters, no state.

    Returns:
      A :class:`~fnn.protocol.Layer`.

    Backward: ``dx = dy`` reshaped back to the input's shape.
    """
    return _reshape_layer("Flatten()", lambda shape: (size(shape),))


def Reshape(shape) -> Layer:
    """Reshapes each example to ``shape``.

    Per example: ``(d1, ...) -> shape``, with as many elements; one entry of
    ``shape`` may be ``-1``, and takes the size that keeps the count. No
    parameters, no state.

    Args:
      shape: the per-example output shape (no batch axis): positive ints and
        at most one ``-1``; an int ``n`` means ``(n,)``.

    Returns:
      A :class:`~fnn.protocol.Layer`.

    Raises:
      ValueError: at construction, for other entries or two ``-1``.
      ShapeError: at init or trace time, when the element counts differ.

    Backward: ``dx = dy`` reshaped back to the input's shape.
    """
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(
            f"Reshape: shape must be a tuple of ints, got {shape!r}"
        ) from None
    integral = all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in shape
    )
    if not integral or any(d < -1 or d == 0 for d in shape) or shape.count(-1) > 1:
        raise ValueError(
            f"Reshape: shape needs positive ints and at most one -1, got {shape!r}"
        )
    shape = tuple(int(d) for d in shape)
    name = layer_name("Reshape", (shape,))

    def resolve(input_shape):
        n = size(input_shape)
        known = size(tuple(d for d in shape if d != -1))
        out = tuple(n // known if d == -1 else d for d in shape)
        if size(out) != n or (n % known):
            raise ShapeError(
                f"{name}: cannot reshape {input_shape} ({n} elements per "
                f"example) to {shape}"
            )
        return out

    return _reshape_layer(name, resolve)
