"""Dense (fully connected) layers and shape plumbing: ``Dense``, ``Flatten``,
``Reshape``.

A dense layer computes ``z = x @ w + b`` per example: the course's
``z = W a + b`` with the weight stored transposed, ``w`` of shape
``(in_features, features)``, so that a batch ``x`` of shape ``(N, ..., d)``
multiplies on the left without a transpose.
"""

from __future__ import annotations

import jax.numpy as jnp

from fnn import initializers
from fnn.protocol import (
    Layer,
    ShapeError,
    check_positive_int,
    check_shape,
    per_channel,
    size,
)


def _leading_axes(x) -> tuple[int, ...]:
    """Every axis but the last: the batch and any extra per-example axes."""
    return tuple(range(x.ndim - 1))


def Dense(
    features: int,
    use_bias: bool = True,
    kernel_init=initializers.lecun_normal(),
    bias_init=initializers.zeros,
) -> Layer:
    """A fully connected layer, ``y = x @ w + b``.

    Per example: ``(..., d) -> (..., features)``; extra leading axes (a
    sequence ``(T, d)``) share the weights.

    Parameters: ``{"w": (d, features), "b": (features,)}``, without ``"b"``
    when ``use_bias=False``.

    Backward, with sums over every axis but the last:
      ``dw = x^T dy``, ``db = sum(dy)``, ``dx = dy w^T``.
    """
    features = check_positive_int("Dense", "features", features)
    name = f"Dense({features})"

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape, min_rank=1)
        d = input_shape[-1]
        params = {"w": kernel_init(key, (d, features), jnp.float32)}
        if use_bias:
            params["b"] = bias_init(key, (features,), jnp.float32)
        return input_shape[:-1] + (features,), params, ()

    def check(params, x):
        d = params["w"].shape[0]
        if x.ndim >= 2 and x.shape[-1] == d:
            return
        hint = ""
        if x.ndim > 2 and size(x.shape[1:]) == d:
            hint = "; add Flatten() before it"
        raise ShapeError(
            f"{name}: expected input (..., {d}), got {tuple(x.shape[1:])} per "
            f"example (batch shape {tuple(x.shape)}){hint}"
        )

    def forward(params, state, x, *, key=None, train=False):
        check(params, x)
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


def _shape_carrier(x):
    """A zero-size array that carries ``x``'s per-example shape in a cache.

    Caches must hold arrays (they cross ``jax.custom_vjp``), not Python ints;
    an array of shape ``(0, *x.shape[1:])`` costs no memory.
    """
    return jnp.zeros((0, *x.shape[1:]), x.dtype)


def _reshape_layer(name, resolve) -> Layer:
    """A parameter-free reshape; ``resolve(input_shape)`` gives the output shape."""

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape)
        return resolve(input_shape), (), ()

    def forward(params, state, x, *, key=None, train=False):
        if x.ndim < 1:
            raise ShapeError(f"{name}: expected a batch, got a scalar")
        out = resolve(tuple(x.shape[1:]))
        return x.reshape(x.shape[:1] + out), state, _shape_carrier(x)

    def backward(params, carrier, dy):
        return (), dy.reshape(dy.shape[:1] + carrier.shape[1:])

    return Layer(init, forward, backward, name)


def Flatten() -> Layer:
    """Flattens each example: ``(d1, d2, ...) -> (d1 * d2 * ...,)``. No parameters."""
    return _reshape_layer("Flatten()", lambda shape: (size(shape),))


def Reshape(shape) -> Layer:
    """Reshapes each example to ``shape`` (one entry may be ``-1``). No parameters."""
    shape = tuple(shape)
    name = f"Reshape({shape})"
    if sum(d == -1 for d in shape) > 1 or any(
        not isinstance(d, int) or d < -1 or d == 0 for d in shape
    ):
        raise ValueError(f"{name}: shape needs positive ints and at most one -1")

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
