"""Weight penalties: regularizers ``r(params) -> scalar`` with ``r.grad``.

A regularizer is added to the loss by :func:`fnn.backprop.value_and_grad`
(and ``make_step``, ``fit``) through their ``regularizer=`` keyword; the
manual gradient method adds ``r.grad(params)`` to the hand-written gradient,
so every penalty here carries one. All are re-exported by
:mod:`fnn.losses`, where users find them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn._targets import working_dtype

Array = jax.Array
Params = Any  # a pytree of arrays


@dataclasses.dataclass(frozen=True)
class Penalty:
    """A weight penalty: ``value(params) -> scalar`` and its gradient tree.

    Attributes:
      value: ``params -> scalar``, summed over every (selected) leaf.
      grad: ``params -> d value / d params``, a tree shaped like ``params``.
      name: how the penalty reads in errors and reports.
    """

    value: Callable[[Params], Array]
    grad: Callable[[Params], Params]
    name: str

    def __call__(self, params):
        return self.value(params)

    def __repr__(self):
        return f"fnn.losses.{self.name}"


def _total(params, term):
    """``sum term(w)`` over the leaves, each summed in float32 at least.

    A float16 sum of squares overflows past 65504 (a million weights of 0.3
    do), so float16 and bfloat16 leaves are widened before ``term``.
    """
    total = 0.0
    for w in jax.tree.leaves(params):
        w = jnp.asarray(w)
        total = total + jnp.sum(term(w.astype(working_dtype(w.dtype))))
    return jnp.asarray(total)


def _sign(w):
    """``sign(w)`` with ``+1`` at ``w = 0``, as ``jax.grad(jnp.abs)(0.) == 1``."""
    ones = jnp.ones_like(w)
    return jnp.where(w >= 0, ones, -ones)


def _l1_penalty(params):
    """``sum |w|`` over all leaves; gradient ``sign(w)``, ``+1`` at ``w = 0`` as JAX."""
    return _total(params, jnp.abs)


def _l1_penalty_grad(params):
    return jax.tree.map(_sign, params)


def _l2_penalty(params):
    """``0.5 sum w^2`` over all leaves; the 1/2 makes the gradient ``w`` itself."""
    return 0.5 * _total(params, jnp.square)


def _l2_penalty_grad(params):
    return jax.tree.map(jnp.asarray, params)


l1_penalty = Penalty(_l1_penalty, _l1_penalty_grad, "l1_penalty")
l2_penalty = Penalty(_l2_penalty, _l2_penalty_grad, "l2_penalty")


def _is_real(value) -> bool:
    """A Python int or float, or a 0-d integer or float array; no bool, no complex."""
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, int | float):
        return True
    dtype = getattr(value, "dtype", None)
    return (
        getattr(value, "shape", None) == ()
        and dtype is not None
        and (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating))
    )


def _strength(name: str, value) -> float:
    if not _is_real(value):
        raise TypeError(f"penalty: {name} must be a real number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"penalty: {name} must be finite and >= 0, got {value}")
    return value


def is_weight_matrix(leaf) -> bool:
    """A leaf with two or more axes: a dense kernel, a conv kernel, an embedding.

    Biases, batch-norm and layer-norm scales and shifts have one axis and are
    not weight matrices; ``penalty(..., weights_only=True)`` leaves them out.
    """
    return jnp.ndim(leaf) >= 2


def penalty(l1: float = 0.0, l2: float = 0.0, *, weights_only: bool = False) -> Penalty:
    """An elastic-net regularizer ``r(params) = l1 sum |w| + l2/2 sum w^2``.

    ``l2`` is the weight-decay rate: the gradient of the L2 term is
    ``l2 * w``, so plain SGD with learning rate ``lr`` shrinks every weight
    by the factor ``1 - lr * l2`` a step. The gradient of the L1 term is
    ``l1 * sign(w)``, with ``+1`` at ``w = 0`` (as ``jax.grad`` of ``|w|``).

    Args:
      l1: strength of the L1 (lasso) term, ``>= 0``.
      l2: strength of the L2 (ridge) term, ``>= 0``.
      weights_only: penalise only weight matrices (leaves with two or more
        axes: dense and conv kernels, embeddings), not biases or the scales
        and shifts of normalisation layers, whose size sets no complexity.
        Their gradient is zero.

    Returns:
      A :class:`Penalty`: ``r(params)`` is a scalar and ``r.grad(params)`` a
      tree shaped like ``params``; pass it as ``regularizer=`` to
      :func:`fnn.backprop.value_and_grad`, ``make_step`` or ``fit``.

    Raises:
      TypeError: ``l1`` or ``l2`` is not a real number.
      ValueError: ``l1`` or ``l2`` is negative, infinite or NaN.

    Example:
      >>> import jax.numpy as jnp
      >>> from fnn import losses
      >>> r = losses.penalty(l2=0.5, weights_only=True)
      >>> params = {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([3.0])}
      >>> float(r(params))  # 0.5 / 2 * (1 + 4); the bias is left out
      1.25
      >>> r.grad(params)["w"].tolist(), r.grad(params)["b"].tolist()
      ([[0.5, -1.0]], [0.0])
    """
    l1, l2 = _strength("l1", l1), _strength("l2", l2)

    def chosen(w):
        return (not weights_only) or is_weight_matrix(w)

    def value(params):
        kept = [w for w in jax.tree.leaves(params) if chosen(w)]
        total = jnp.asarray(0.0)
        if l1:
            total = total + l1 * _total(kept, jnp.abs)
        if l2:
            total = total + 0.5 * l2 * _total(kept, jnp.square)
        return total

    def grad(params):
        def one(w):
            w = jnp.asarray(w)
            g = jnp.zeros_like(w)
            if chosen(w) and l1:
                g = g + l1 * _sign(w)
            if chosen(w) and l2:
                g = g + l2 * w
            return g

        return jax.tree.map(one, params)

    name = f"penalty(l1={l1:g}, l2={l2:g}" + (
        ", weights_only=True)" if weights_only else ")"
    )
    return Penalty(value, grad, name)
