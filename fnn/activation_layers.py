"""Activation layers: each :mod:`fnn.activations` function as a layer.

One rule (see :mod:`fnn.protocol`): layers that take no options are values,
layers with options are constructors. So ``serial(Dense(64), Relu)`` and
``serial(Dense(64), LeakyRelu(alpha=0.1))``; ``Relu()`` raises a
``TypeError`` that says to drop the ``()``. No parameters, no state; any
per-example shape (``Softmax`` and ``LogSoftmax``: rank 1 or more, over
the last axis).

========== ====================================== ==========================
value      ``y = f(x)``                           ``f'(x)``
========== ====================================== ==========================
Identity   ``x``                                  ``1``
Sigmoid    ``s(x) = 1 / (1 + exp(-x))``           ``s (1 - s)``
Tanh       ``tanh(x)``                            ``1 - tanh^2``
Relu       ``max(x, 0)``                          ``1 if x > 0 else 0``
Step       ``1 if x > 0 else 0``                  ``0``
Softsign   ``x / (1 + |x|)``                      ``1 / (1 + |x|)^2``
Silu       ``x s(x)``                             ``s (1 + x (1 - s))``
Softplus   ``log(1 + exp(x))``                    ``s(x)``
Gelu       ``x Phi(x)`` (exact, erf)              ``Phi(x) + x phi(x)``
GeluTanh   GELU, tanh approximation               see :func:`fnn.activations.gelu`
Softmax    ``exp(x_i) / sum_j exp(x_j)``          VJP ``y (dy - <dy, y>)``
LogSoftmax ``x_i - log sum_j exp(x_j)``           VJP ``dy - exp(y) sum(dy)``
========== ====================================== ==========================

Backward of an elementwise activation: ``dx = dy * f'(x)`` with the
hand-written derivative ``fnn.activations.derivative(f)``. Softmax and
log-softmax couple the features, and use their vector-Jacobian products.
A ``None`` cotangent (fnn's for inputs without a gradient: token ids, a
bool mask passed through ``Identity``) comes back as ``None``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from fnn.activation_layers import LeakyRelu, Relu
  >>> x = jnp.array([[-1.0, 0.0, 2.0]])
  >>> _, params, state = Relu.init(jax.random.key(0), x.shape[1:])
  >>> params, state
  ((), ())
  >>> y, state, cache = Relu.forward(params, state, x)
  >>> y.tolist()
  [[0.0, 0.0, 2.0]]
  >>> _, dx = Relu.backward(params, cache, jnp.ones_like(x))  # dy * relu'(x)
  >>> dx.tolist()
  [[0.0, 0.0, 1.0]]
  >>> [round(v, 4) for v in LeakyRelu(alpha=0.1).apply((), (), x)[0][0].tolist()]
  [-0.1, 0.0, 2.0]
"""

from __future__ import annotations

from fnn import activations as act
from fnn.protocol import (
    Layer,
    check_input,
    check_leaves,
    check_real,
    check_shape,
    layer_name,
)


def _no_params(name, params, state):
    check_leaves(name, "params", params, ())
    check_leaves(name, "state", state, ())


def _elementwise(name, fn, **options) -> Layer:
    derivative = act.derivative(fn)

    def init(key, input_shape):
        return check_shape(name, input_shape), (), ()

    def forward(params, state, x, *, key=None, train=False):
        _no_params(name, params, state)
        check_input(name, x, (...,))
        return fn(x, **options), state, x

    def backward(params, x, dy):
        if dy is None:  # no gradient flows here (token ids, a bool mask)
            return (), None
        return (), dy * derivative(x, **options)

    return Layer(init, forward, backward, name)


def _normalised_exp(name, fn, vjp) -> Layer:
    """Softmax-like layers over the last axis; the cache is the output."""

    def init(key, input_shape):
        return check_shape(name, input_shape, min_rank=1), (), ()

    def forward(params, state, x, *, key=None, train=False):
        _no_params(name, params, state)
        check_input(name, x, (..., "d"))
        y = fn(x, axis=-1)
        return y, state, y

    def backward(params, y, dy):
        return (), None if dy is None else vjp(y, dy, axis=-1)

    return Layer(init, forward, backward, name)


Identity = _elementwise("Identity", act.identity)
Sigmoid = _elementwise("Sigmoid", act.sigmoid)
Tanh = _elementwise("Tanh", act.tanh)
Relu = _elementwise("Relu", act.relu)
Step = _elementwise("Step", act.step)
Softsign = _elementwise("Softsign", act.softsign)
Silu = _elementwise("Silu", act.silu)
Softplus = _elementwise("Softplus", act.softplus)
Gelu = _elementwise("Gelu", act.gelu)
GeluTanh = _elementwise("GeluTanh", act.gelu, approximate=True)
Softmax = _normalised_exp("Softmax", act.softmax, act.softmax_vjp)
LogSoftmax = _normalised_exp("LogSoftmax", act.log_softmax, act.log_softmax_vjp)


def LeakyRelu(alpha: float = 0.01) -> Layer:
    """Leaky ReLU, ``y = x if x >= 0 else alpha * x``.

    Per example: any shape, unchanged. No parameters, no state.

    Args:
      alpha: the slope below zero (a finite number; NumPy scalars accepted).

    Returns:
      A :class:`~fnn.protocol.Layer`.

    Backward: ``dx = dy * (1 if x >= 0 else alpha)``; at 0 the slope is 1,
    as ``jax.grad(jax.nn.leaky_relu)`` gives.

    Example:
      >>> import jax.numpy as jnp
      >>> from fnn.activation_layers import LeakyRelu
      >>> layer = LeakyRelu(alpha=0.5)
      >>> layer
      LeakyRelu(alpha=0.5)
      >>> y, _ = layer.apply((), (), jnp.array([[-2.0, 3.0]]))
      >>> y.tolist()
      [[-1.0, 3.0]]
    """
    alpha = check_real("LeakyRelu", "alpha", alpha)
    name = layer_name("LeakyRelu", (), [("alpha", alpha, 0.01)])
    return _elementwise(name, act.leaky_relu, alpha=alpha)


def Elu(alpha: float = 1.0) -> Layer:
    """Exponential linear unit, ``y = x if x > 0 else alpha * (exp(x) - 1)``.

    Per example: any shape, unchanged. No parameters, no state.

    Args:
      alpha: the scale of the negative part (a finite number).

    Returns:
      A :class:`~fnn.protocol.Layer`.

    Backward: ``dx = dy * (1 if x > 0 else alpha * exp(x))``; at 0 the
    slope is ``alpha``, as ``jax.grad(jax.nn.elu)`` gives.
    """
    alpha = check_real("Elu", "alpha", alpha)
    name = layer_name("Elu", (), [("alpha", alpha, 1.0)])
    return _elementwise(name, act.elu, alpha=alpha)
