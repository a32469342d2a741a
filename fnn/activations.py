"""Activation functions and their hand-written derivatives.

Each activation is a plain function of an array; the forward values come from
``jax.nn``/``jnp``. Its derivative, written by hand from the formula in the
docstring (never ``jax.grad``), is :func:`derivative` of it::

    dy_dx = derivative(relu)(x)                   # relu'(x), shaped like x
    derivative(leaky_relu)(x, alpha=0.2)          # same options as leaky_relu
    derivative(softmax)(x)                        # Jacobian, x.shape + (n,)

Elementwise derivatives have ``x``'s shape. ``softmax`` and ``log_softmax``
have a full Jacobian instead; layers use :func:`softmax_vjp` and
:func:`log_softmax_vjp`, which never build it.

Kinks follow ``jax.grad`` of the forward exactly: ``relu'(0) = 0``,
``leaky_relu'(0) = 1``, ``elu'(0) = alpha``, ``step' = 0`` everywhere.
Derivatives are finite for any finite ``x`` (``|x|`` in the thousands included).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import erfc

Array = jax.Array

_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715  # the cubic coefficient of gelu's tanh approximation
_GELU_FLAT = 10.0  # |x| past which the tanh gelu's slope is exactly 0 or 1


def identity(x: Array) -> Array:
    """``f(x) = x``; ``f'(x) = 1``."""
    return x


def sigmoid(x: Array) -> Array:
    """``s(x) = 1 / (1 + exp(-x))``; ``s' = s (1 - s)``, from ``s`` so no overflow.

    Args:
      x: any array.

    Returns:
      ``s(x)``, shaped like ``x``.

    Example:
      >>> import jax.numpy as jnp
      >>> from fnn import activations
      >>> x = jnp.array([-1.0, 0.0, 2.0])
      >>> [round(v, 4) for v in activations.sigmoid(x).tolist()]
      [0.2689, 0.5, 0.8808]
      >>> ds = activations.derivative(activations.sigmoid)(x)  # s (1 - s)
      >>> [round(v, 4) for v in ds.tolist()]
      [0.1966, 0.25, 0.105]
    """
    return jax.nn.sigmoid(x)


def tanh(x: Array) -> Array:
    """``tanh(x) = 2 s(2x) - 1``; ``tanh' = 1 - tanh^2``."""
    return jnp.tanh(x)


def relu(x: Array) -> Array:
    """``max(x, 0)``; derivative ``1 if x > 0 else 0``: ``relu'(0) = 0``, as JAX."""
    return jax.nn.relu(x)


def leaky_relu(x: Array, alpha: float = 0.01) -> Array:
    """``x if x >= 0 else alpha x``; derivative ``1 if x >= 0 else alpha``.

    At ``x = 0`` the derivative is 1, as ``jax.grad(jax.nn.leaky_relu)`` gives.
    """
    return jax.nn.leaky_relu(x, negative_slope=alpha)


def step(x: Array) -> Array:
    """Heaviside step: ``1 if x > 0 else 0`` (``step(0) = 0``); ``step' = 0``.

    The derivative is 0 everywhere, the kink included, as autodiff through
    ``jnp.where`` gives: no gradient flows through a step.
    """
    return jnp.where(x > 0, jnp.ones_like(x), jnp.zeros_like(x))


def softsign(x: Array) -> Array:
    """``x / (1 + |x|)``; derivative ``1 / (1 + |x|)^2``."""
    return jax.nn.soft_sign(x)


def softmax(x: Array, axis: int = -1) -> Array:
    """``exp(x_i) / sum_j exp(x_j)`` along ``axis`` (max-shifted, so stable).

    With ``s = softmax(x)`` the Jacobian is ``ds_i/dx_j = s_i (delta_ij - s_j)``;
    the vector-Jacobian product is :func:`softmax_vjp`.
    """
    return jax.nn.softmax(x, axis=axis)


def log_softmax(x: Array, axis: int = -1) -> Array:
    """``x_i - log sum_j exp(x_j)`` along ``axis`` (log-sum-exp, stable).

    The Jacobian is ``dy_i/dx_j = delta_ij - softmax(x)_j``; the
    vector-Jacobian product is :func:`log_softmax_vjp`.
    """
    return jax.nn.log_softmax(x, axis=axis)


def gelu(x: Array, approximate: bool = False) -> Array:
    """Gaussian error linear unit, ``x Phi(x)`` (note: exact by default).

    Exact: ``f = x Phi(x)``, ``f' = Phi(x) + x phi(x)`` with ``Phi`` the standard
    normal CDF and ``phi`` its density. ``approximate=True`` uses
    ``f = x (1 + tanh(u)) / 2``, ``u = sqrt(2/pi) (x + 0.044715 x^3)``, so
    ``f' = (1 + tanh u) / 2 + x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2) / 2``.
    """
    return jax.nn.gelu(x, approximate=approximate)


def silu(x: Array) -> Array:
    """``x s(x)`` (swish); derivative ``s (1 + x (1 - s))`` with ``s = sigmoid(x)``."""
    return jax.nn.silu(x)


def elu(x: Array, alpha: float = 1.0) -> Array:
    """``x if x > 0 else alpha (exp(x) - 1)``; derivative ``1 if x > 0 else alpha e^x``.

    At ``x = 0`` the derivative is ``alpha``, as ``jax.grad(jax.nn.elu)`` gives.
    """
    return jax.nn.elu(x, alpha=alpha)


def softplus(x: Array) -> Array:
    """``log(1 + exp(x))``, computed stably; derivative ``sigmoid(x)``."""
    return jax.nn.softplus(x)


# Hand-written derivatives, one line per formula in the docstrings above.


def _d_identity(x):
    return jnp.ones_like(x)


def _d_sigmoid(x):
    s = jax.nn.sigmoid(x)
    return s * (1 - s)


def _d_tanh(x):
    t = jnp.tanh(x)
    return 1 - t * t


def _d_relu(x):
    return jnp.where(x > 0, jnp.ones_like(x), jnp.zeros_like(x))


def _d_leaky_relu(x, alpha=0.01):
    return jnp.where(x >= 0, jnp.ones_like(x), jnp.full_like(x, alpha))


def _d_step(x):
    return jnp.zeros_like(x)


def _d_softsign(x):
    return 1 / jnp.square(1 + jnp.abs(x))


def _d_gelu(x, approximate=False):
    if approximate:
        # Past |x| = 10, u > 40: tanh(u) is +-1 to the last bit in every float
        # dtype, so f' is exactly 1 or 0. Clipping x there keeps x**3 and x*x
        # finite (they overflow in float16 from |x| of a few hundred, in
        # float32 from about 5e19), which made (1 - t*t) * du = 0 * inf = NaN.
        x = jnp.clip(x, -_GELU_FLAT, _GELU_FLAT)
        t = jnp.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x**3))
        du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * x * x)
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du
    cdf = 0.5 * erfc(-x / _SQRT_2)  # erfc keeps Phi accurate for x << 0
    pdf = jnp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return cdf + x * pdf


def _d_silu(x):
    s = jax.nn.sigmoid(x)
    return s * (1 + x * (1 - s))


def _d_elu(x, alpha=1.0):
    # exp only of the non-positive part: exp(1000) would overflow to inf, and
    # where() would still carry it into gradients of this derivative.
    negative = jnp.where(x > 0, jnp.zeros_like(x), x)
    return jnp.where(x > 0, jnp.ones_like(x), alpha * jnp.exp(negative))


def _d_softplus(x):
    return jax.nn.sigmoid(x)


def _last_axis(name, x, axis):
    x = jnp.asarray(x)
    if axis not in (-1, x.ndim - 1):
        raise ValueError(
            f"derivative({name}): the Jacobian is only built along the last axis "
            f"(axis=-1), got axis={axis} for x of shape {x.shape}; move the axis "
            f"last with jnp.moveaxis, or use {name}_vjp, which takes any axis"
        )
    n = x.shape[-1]
    return x, jnp.eye(n, dtype=x.dtype).reshape((1,) * (x.ndim - 1) + (n, n))


def _d_softmax(x, axis=-1):
    """Jacobian ``J[..., i, j] = s_i (delta_ij - s_j)``, shape ``x.shape + (n,)``."""
    x, eye = _last_axis("softmax", x, axis)
    s = jax.nn.softmax(x, axis=-1)
    return s[..., :, None] * (eye - s[..., None, :])


def _d_log_softmax(x, axis=-1):
    """Jacobian ``J[..., i, j] = delta_ij - s_j``, shape ``x.shape + (n,)``."""
    x, eye = _last_axis("log_softmax", x, axis)
    s = jax.nn.softmax(x, axis=-1)
    return eye - s[..., None, :]


def softmax_vjp(y: Array, dy: Array, axis: int = -1) -> Array:
    """Pulls ``dy`` back through ``y = softmax(x, axis)``: ``dx = y (dy - <dy, y>)``.

    Args:
      y: the softmax output, any shape.
      dy: the output cotangent, shaped like ``y``.
      axis: the softmax axis.

    Returns:
      ``dx = y * (dy - sum(dy * y, axis, keepdims=True))``, shaped like ``y``.
    """
    return y * (dy - jnp.sum(dy * y, axis=axis, keepdims=True))


def log_softmax_vjp(y: Array, dy: Array, axis: int = -1) -> Array:
    """Pulls ``dy`` back through ``y = log_softmax(x, axis)``.

    Args:
      y: the log-softmax output, any shape; ``exp(y)`` is the softmax.
      dy: the output cotangent, shaped like ``y``.
      axis: the softmax axis.

    Returns:
      ``dx = dy - exp(y) * sum(dy, axis, keepdims=True)``, shaped like ``y``.
    """
    return dy - jnp.exp(y) * jnp.sum(dy, axis=axis, keepdims=True)


_DERIVATIVES: dict[Callable, Callable] = {
    identity: _d_identity,
    sigmoid: _d_sigmoid,
    tanh: _d_tanh,
    relu: _d_relu,
    leaky_relu: _d_leaky_relu,
    step: _d_step,
    softsign: _d_softsign,
    softmax: _d_softmax,
    log_softmax: _d_log_softmax,
    gelu: _d_gelu,
    silu: _d_silu,
    elu: _d_elu,
    softplus: _d_softplus,
}

#: The elementwise activations (all but softmax and log_softmax), in order.
ELEMENTWISE = (
    identity, sigmoid, tanh, relu, leaky_relu, step, softsign, gelu, silu, elu, softplus
)  # fmt: skip


def derivative(fn: Callable) -> Callable:
    """The hand-written derivative of an fnn activation.

    Args:
      fn: one of this module's activations, or its name (``"relu"``).

    Returns:
      A function taking ``fn``'s arguments and keyword options. For elementwise
      activations, ``derivative(fn)(x, **opts)`` is ``f'(x)``, shaped like
      ``x``. For ``softmax`` and ``log_softmax``, ``derivative(fn)(x, axis=-1)``
      is the Jacobian ``J[..., i, j] = dy_i / dx_j`` of shape ``x.shape + (n,)``
      with ``n = x.shape[-1]``; other axes raise ``ValueError``.

    Raises:
      ValueError: ``fn`` is not an fnn activation.

    Example:
      >>> import jax.numpy as jnp
      >>> from fnn import activations
      >>> x = jnp.array([-1.0, 0.0, 2.0])
      >>> activations.derivative(activations.relu)(x).tolist()
      [0.0, 0.0, 1.0]
      >>> d_leaky = activations.derivative("leaky_relu")  # by name works too
      >>> [round(v, 4) for v in d_leaky(x, alpha=0.1).tolist()]
      [0.1, 1.0, 1.0]
      >>> activations.derivative(activations.softmax)(jnp.zeros(2)).tolist()
      [[0.25, -0.25], [-0.25, 0.25]]
    """
    by_name = {f.__name__: d for f, d in _DERIVATIVES.items()}
    try:
        found = by_name.get(fn) if isinstance(fn, str) else _DERIVATIVES.get(fn)
    except TypeError:  # unhashable, e.g. an array passed by mistake
        found = None
    if found is None:
        raise ValueError(
            f"derivative: {fn!r} is not an fnn activation; known: "
            f"{', '.join(by_name)}. Wrap a custom activation as a layer with its "
            "own backward instead."
        )
    return found
