"""Activation layers: each :mod:`fnn.activations` function as a layer.

Layers without options are values (``Relu``); those with options are
constructors (``LeakyRelu(alpha=0.1)``). Calling a value with no arguments
returns it, so ``Relu()`` works too. No parameters, no state.

Backward of an elementwise activation ``y = f(x)``: ``dx = dy * f'(x)`` with
the hand-written derivative ``fnn.activations.derivative(f)``. Softmax and
log-softmax couple the features, and use their vector-Jacobian products.
"""

from __future__ import annotations

from fnn import activations as act
from fnn.protocol import Layer, check_shape


def _elementwise(name, fn, **options) -> Layer:
    derivative = act.derivative(fn)

    def init(key, input_shape):
        return check_shape(name, input_shape), (), ()

    def forward(params, state, x, *, key=None, train=False):
        return fn(x, **options), state, x

    def backward(params, x, dy):
        return (), dy * derivative(x, **options)

    return Layer(init, forward, backward, name)


def _normalised_exp(name, fn, vjp) -> Layer:
    """Softmax-like layers over the last axis; the cache is the output."""

    def init(key, input_shape):
        return check_shape(name, input_shape, min_rank=1), (), ()

    def forward(params, state, x, *, key=None, train=False):
        y = fn(x, axis=-1)
        return y, state, y

    def backward(params, y, dy):
        return (), vjp(y, dy, axis=-1)

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
Softmax = _normalised_exp("Softmax", act.softmax, act.softmax_vjp)
LogSoftmax = _normalised_exp("LogSoftmax", act.log_softmax, act.log_softmax_vjp)


def LeakyRelu(alpha: float = 0.01) -> Layer:
    """``max(x, alpha * x)``: ReLU with slope ``alpha`` below zero."""
    return _elementwise(f"LeakyRelu({alpha})", act.leaky_relu, alpha=alpha)


def Elu(alpha: float = 1.0) -> Layer:
    """``x`` above zero, ``alpha * (exp(x) - 1)`` below."""
    return _elementwise(f"Elu({alpha})", act.elu, alpha=alpha)


def GeluTanh() -> Layer:
    """GELU with the tanh approximation (``Gelu`` is the exact, erf form)."""
    return _elementwise("GeluTanh", act.gelu, approximate=True)
