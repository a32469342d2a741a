"""Losses with hand-written gradients, weight penalties, and accuracy.

A loss is a :class:`Loss` record: call it for the value, ask ``.grad`` for the
hand-written gradient with respect to the prediction::

    loss = fnn.losses.softmax_cross_entropy
    value = loss(logits, labels)        # a scalar
    dlogits = loss.grad(logits, labels)  # shaped like logits, never jax.grad

Conventions
-----------
Every loss is a mean, so its size does not grow with the batch:

- ``mse``, ``mae``, ``hinge``, ``binary_cross_entropy`` and
  ``sigmoid_binary_cross_entropy`` average over *all* elements of ``pred``
  (the batch mean of the per-example mean over outputs); the gradient carries
  the matching ``1 / pred.size``.
- ``l2_error`` sums ``0.5 (p - t)^2`` over each example's outputs and averages
  over the batch axis 0: the gradient is ``(p - t) / N``, with no factor 2.
- ``softmax_cross_entropy`` sums over the class axis (last) and averages over
  all leading axes, so ``(N, C)`` and sequence ``(N, T, C)`` logits both work.

Targets must have exactly the shape the loss expects; a mismatch such as
``(N, 1)`` targets for ``(N,)`` predictions raises ``ValueError`` naming the
loss and both shapes, at trace time (so under ``jax.jit`` too). Losses never
broadcast. Float targets are cast to the prediction's dtype.

Kinks follow ``jax.grad`` of the value exactly: ``mae`` has gradient ``+1/n``
where ``pred == target`` (``jax.grad(jnp.abs)(0.) == 1``), ``hinge`` has
gradient 0 at margin exactly 1 (as ``relu'(0) = 0``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Params = Any  # a pytree of arrays

#: Probabilities are clipped to ``[BCE_EPS, 1 - BCE_EPS]`` in binary_cross_entropy.
BCE_EPS = 1e-7


# Frozen dataclasses rather than NamedTuples: ``jax.jit(loss)`` needs a weak
# reference to the callable, and a record of functions must not be a pytree.


@dataclasses.dataclass(frozen=True)
class Loss:
    """A loss: ``value(pred, target) -> scalar`` and its hand-written gradient.

    Attributes:
      value: ``(pred, target) -> scalar``, the mean loss.
      grad: ``(pred, target) -> d value / d pred``, shaped like ``pred``.
      name: how the loss reads in errors and reports.
    """

    value: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array]
    name: str

    def __call__(self, pred, target):
        return self.value(pred, target)

    def __repr__(self):
        return f"fnn.losses.{self.name}"


@dataclasses.dataclass(frozen=True)
class Penalty:
    """A weight penalty: ``value(params) -> scalar`` and its gradient tree.

    Attributes:
      value: ``params -> scalar``, summed over every leaf.
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


# Validation: Python shape checks, so they run at trace time.


def _batched(name, pred):
    pred = jnp.asarray(pred)
    if pred.ndim == 0 or pred.size == 0:
        raise ValueError(
            f"{name}: expected predictions with a non-empty leading batch axis, "
            f"got shape {pred.shape}"
        )
    return pred


def _same_shape(name, pred, target):
    """Checks that ``target`` has ``pred``'s shape; casts it to ``pred``'s dtype."""
    pred, target = _batched(name, pred), jnp.asarray(target)
    if target.shape != pred.shape:
        hint = ""
        if target.size == pred.size:
            hint = f"; reshape it first, e.g. target.reshape({pred.shape})"
        raise ValueError(
            f"{name}: target shape {target.shape} does not match pred shape "
            f"{pred.shape}; losses never broadcast{hint}"
        )
    return pred, target.astype(pred.dtype)


def _targets(name, logits, labels):
    """One-hot (or probability) targets shaped like ``logits``, from ``labels``.

    Integer ``labels`` are class indices shaped ``logits.shape[:-1]``; any other
    dtype is read as one-hot rows or class probabilities shaped like ``logits``.
    Out-of-range indices are caught only when ``labels`` are concrete: under
    ``jit`` they become all-zero rows (zero loss, zero gradient).
    """
    logits, labels = _batched(name, logits), jnp.asarray(labels)
    n = logits.shape[-1]
    if jnp.issubdtype(labels.dtype, jnp.integer) and labels.shape != logits.shape:
        if labels.shape != logits.shape[:-1]:
            raise ValueError(
                f"{name}: integer labels must have shape {logits.shape[:-1]} "
                f"(logits shape {logits.shape} without the class axis), got "
                f"{labels.shape}"
            )
        if not isinstance(labels, jax.core.Tracer):
            values = np.asarray(labels)
            if values.size and (values.min() < 0 or values.max() >= n):
                raise ValueError(
                    f"{name}: labels must lie in [0, {n}) for {n} classes, got "
                    f"values from {values.min()} to {values.max()}"
                )
        return logits, jax.nn.one_hot(labels, n, dtype=logits.dtype)
    if labels.shape != logits.shape:
        hint = ""
        if labels.shape == logits.shape[:-1]:
            hint = "; class indices must be integers, e.g. labels.astype(jnp.int32)"
        raise ValueError(
            f"{name}: labels of shape {labels.shape} fit neither logits "
            f"{logits.shape} (one-hot or probabilities) nor {logits.shape[:-1]} "
            f"(integer class indices){hint}"
        )
    return logits, labels.astype(logits.dtype)


# Regression losses.


def _mse(pred, target):
    """``mean((p - t)^2)`` over all elements; gradient ``2 (p - t) / n``."""
    pred, target = _same_shape("mse", pred, target)
    return jnp.mean(jnp.square(pred - target))


def _mse_grad(pred, target):
    pred, target = _same_shape("mse", pred, target)
    return (pred - target) * (2 / pred.size)


def _mae(pred, target):
    """``mean(|p - t|)``; gradient ``sign(p - t) / n`` with ``+1`` at ``p == t``."""
    pred, target = _same_shape("mae", pred, target)
    return jnp.mean(jnp.abs(pred - target))


def _mae_grad(pred, target):
    pred, target = _same_shape("mae", pred, target)
    ones = jnp.ones_like(pred)
    return jnp.where(pred >= target, ones, -ones) / pred.size


def _l2_error(pred, target):
    """``sum(0.5 (p - t)^2) / N`` with ``N = pred.shape[0]``; gradient ``(p - t) / N``.

    The 1/2 cancels the 2 of the square, so the gradient is the plain residual.
    """
    pred, target = _same_shape("l2_error", pred, target)
    return 0.5 * jnp.sum(jnp.square(pred - target)) / pred.shape[0]


def _l2_error_grad(pred, target):
    pred, target = _same_shape("l2_error", pred, target)
    return (pred - target) / pred.shape[0]


# Classification losses.


def _inside(prob):
    """Where ``prob`` lies inside the clip range ``[BCE_EPS, 1 - BCE_EPS]``."""
    return (prob >= BCE_EPS) & (prob <= 1 - BCE_EPS)


def _binary_cross_entropy(prob, target):
    """``-mean(t log p + (1 - t) log(1 - p))`` on probabilities ``p``.

    ``p`` is clipped to ``[BCE_EPS, 1 - BCE_EPS]`` so that ``log`` stays finite;
    the gradient ``((1 - t) / (1 - p) - t / p) / n`` is zero where the clip
    is active, as autodiff of the clipped value gives. Prefer
    ``sigmoid_binary_cross_entropy`` on logits: it needs no clipping.
    """
    prob, target = _same_shape("binary_cross_entropy", prob, target)
    p = jnp.where(_inside(prob), prob, jnp.clip(prob, BCE_EPS, 1 - BCE_EPS))
    return -jnp.mean(target * jnp.log(p) + (1 - target) * jnp.log1p(-p))


def _binary_cross_entropy_grad(prob, target):
    prob, target = _same_shape("binary_cross_entropy", prob, target)
    p = jnp.clip(prob, BCE_EPS, 1 - BCE_EPS)
    dp = ((1 - target) / (1 - p) - target / p) / prob.size
    return jnp.where(_inside(prob), dp, jnp.zeros_like(dp))


def _sigmoid_binary_cross_entropy(logits, target):
    """Binary cross-entropy of ``sigmoid(z)``, computed from the logits ``z``.

    Per element ``softplus(z) - z t = max(z, 0) - z t + log1p(exp(-|z|))``,
    finite for any finite ``z``; averaged over all elements. Gradient
    ``(sigmoid(z) - t) / n``. Targets may be soft, in ``[0, 1]``.
    """
    logits, target = _same_shape("sigmoid_binary_cross_entropy", logits, target)
    return jnp.mean(jax.nn.softplus(logits) - logits * target)


def _sigmoid_binary_cross_entropy_grad(logits, target):
    logits, target = _same_shape("sigmoid_binary_cross_entropy", logits, target)
    return (jax.nn.sigmoid(logits) - target) / logits.size


def _softmax_cross_entropy(logits, labels):
    """``-sum_c t_c log_softmax(z)_c``, averaged over all leading axes.

    Args:
      logits: ``(..., C)``, e.g. ``(N, C)`` or ``(N, T, C)``.
      labels: integer class indices of shape ``(...)``, or one-hot rows or
        class probabilities of shape ``(..., C)``.

    The gradient is ``(softmax(z) sum_c t_c - t) / M`` with ``M`` the number of
    rows, i.e. ``(softmax(z) - t) / M`` for one-hot or probability targets.
    Log-sum-exp keeps it finite for logits in the tens of thousands.
    """
    logits, t = _targets("softmax_cross_entropy", logits, labels)
    rows = logits.size // logits.shape[-1]
    return -jnp.sum(t * jax.nn.log_softmax(logits, axis=-1)) / rows


def _softmax_cross_entropy_grad(logits, labels):
    logits, t = _targets("softmax_cross_entropy", logits, labels)
    rows = logits.size // logits.shape[-1]
    total = jnp.sum(t, axis=-1, keepdims=True)
    return (jax.nn.softmax(logits, axis=-1) * total - t) / rows


def _hinge(pred, target):
    """``mean(max(0, 1 - t p))`` with labels ``t`` in ``{-1, +1}``.

    Gradient ``-t / n`` where the margin ``t p < 1``, else 0; at margin exactly
    1 it is 0, as ``relu'(0) = 0``. Labels are not checked to be ``±1``.
    """
    pred, target = _same_shape("hinge", pred, target)
    return jnp.mean(jax.nn.relu(1 - target * pred))


def _hinge_grad(pred, target):
    pred, target = _same_shape("hinge", pred, target)
    active = 1 - target * pred > 0
    return jnp.where(active, -target, jnp.zeros_like(target)) / pred.size


mse = Loss(_mse, _mse_grad, "mse")
mae = Loss(_mae, _mae_grad, "mae")
l2_error = Loss(_l2_error, _l2_error_grad, "l2_error")
binary_cross_entropy = Loss(
    _binary_cross_entropy, _binary_cross_entropy_grad, "binary_cross_entropy"
)
sigmoid_binary_cross_entropy = Loss(
    _sigmoid_binary_cross_entropy,
    _sigmoid_binary_cross_entropy_grad,
    "sigmoid_binary_cross_entropy",
)
softmax_cross_entropy = Loss(
    _softmax_cross_entropy, _softmax_cross_entropy_grad, "softmax_cross_entropy"
)
hinge = Loss(_hinge, _hinge_grad, "hinge")

#: Every loss of this module, in order.
LOSSES = (
    mse,
    mae,
    l2_error,
    binary_cross_entropy,
    sigmoid_binary_cross_entropy,
    softmax_cross_entropy,
    hinge,
)


# Penalties: sums over every leaf of a parameter tree.


def _total(params, term):
    total = 0.0
    for w in jax.tree.leaves(params):
        total = total + jnp.sum(term(jnp.asarray(w)))
    return jnp.asarray(total)


def _l1_penalty(params):
    """``sum |w|`` over all leaves; gradient ``sign(w)``, ``+1`` at ``w = 0`` as JAX."""
    return _total(params, jnp.abs)


def _l1_penalty_grad(params):
    def sign(w):
        ones = jnp.ones_like(w)
        return jnp.where(w >= 0, ones, -ones)

    return jax.tree.map(sign, params)


def _l2_penalty(params):
    """``0.5 sum w^2`` over all leaves; the 1/2 makes the gradient ``w`` itself."""
    return 0.5 * _total(params, jnp.square)


def _l2_penalty_grad(params):
    return jax.tree.map(jnp.asarray, params)


l1_penalty = Penalty(_l1_penalty, _l1_penalty_grad, "l1_penalty")
l2_penalty = Penalty(_l2_penalty, _l2_penalty_grad, "l2_penalty")


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of rows whose argmax matches the label.

    Args:
      logits: ``(..., C)`` scores (logits or probabilities).
      labels: integer class indices ``(...)``, or one-hot rows ``(..., C)``
        (their argmax is the class).

    Returns:
      A scalar in ``[0, 1]``, averaged over all leading axes. Ties in
      ``logits`` go to the lowest class index.
    """
    logits, t = _targets("accuracy", logits, labels)
    labels = jnp.asarray(labels)
    if labels.shape != logits.shape:  # class indices, validated above
        t = labels
    else:
        t = jnp.argmax(t, axis=-1)
    return jnp.mean(jnp.argmax(logits, axis=-1) == t)
