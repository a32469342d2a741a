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
broadcast.

Dtypes: a loss and its gradient are computed in float32 at least and
returned in the prediction's dtype. float16 or bfloat16 predictions are
widened first (in float16, ``1 / n`` for more than 65504 elements is
``inf``, and ``1 - BCE_EPS`` rounds to 1); integer or bool predictions
compute, and return, in the default float dtype. Targets are cast to that
working dtype, so float targets are never truncated to integers.

Values are checked too, but only where they are known, on concrete
(non-traced) inputs: class indices outside ``[0, C)``, probabilities or 0/1
targets outside ``[0, 1]``, hinge labels other than -1/+1 raise
``ValueError``. Under ``jit`` nothing can look at the numbers;
``fit``/``evaluate`` check their data before compiling.

Kinks follow ``jax.grad`` of the value exactly: ``mae`` has gradient ``+1/n``
where ``pred == target`` (``jax.grad(jnp.abs)(0.) == 1``), ``hinge`` has
gradient 0 at margin exactly 1 (as ``relu'(0) = 0``).

Each loss also says what it reads (``expects``: ``"logits"``,
``"probabilities"``, ``"scores"`` or ``"values"``) and how an output becomes
a class (``decision``, read by :func:`fnn.metrics.accuracy`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fnn import metrics
from fnn._targets import (
    check_members,
    check_targets,
    check_within,
    class_targets,
    same_shape,
    widened,
)
from fnn.metrics import accuracy
from fnn.penalties import Penalty, l1_penalty, l2_penalty, penalty

Array = jax.Array
Params = Any  # a pytree of arrays

#: Probabilities are clamped to at least ``PROB_EPS`` before any ``log``.
PROB_EPS = 1e-7
#: Probabilities are clipped to ``[BCE_EPS, 1 - BCE_EPS]`` in binary_cross_entropy.
BCE_EPS = PROB_EPS

__all__ = [
    "LOSSES",
    "Loss",
    "Penalty",
    "accuracy",
    "binary_cross_entropy",
    "check_loss",
    "check_targets",
    "cross_entropy",
    "hinge",
    "l1_penalty",
    "l2_error",
    "l2_penalty",
    "mae",
    "mse",
    "penalty",
    "sigmoid_binary_cross_entropy",
    "softmax_cross_entropy",
]


# Frozen dataclasses rather than NamedTuples: ``jax.jit(loss)`` needs a weak
# reference to the callable, and a record of functions must not be a pytree.


@dataclasses.dataclass(frozen=True)
class Loss:
    """A loss: ``value(pred, target) -> scalar`` and its hand-written gradient.

    Attributes:
      value: ``(pred, target) -> scalar``, the mean loss.
      grad: ``(pred, target) -> d value / d pred``, shaped like ``pred``.
      name: how the loss reads in errors and reports.
      expects: what ``pred`` must be: ``"logits"`` (the loss applies softmax
        or sigmoid itself, so the model must not), ``"probabilities"``,
        ``"scores"`` (hinge) or ``"values"`` (regression).
      decision: how :func:`fnn.metrics.accuracy` reads an output as a class:
        ``"argmax"``, ``"logit"``, ``"probability"``, ``"sign"``, or ``None``
        for regression losses.
    """

    value: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array]
    name: str
    expects: str = "values"
    decision: str | None = None

    def __call__(self, pred, target):
        return self.value(pred, target)

    def __repr__(self):
        return f"fnn.losses.{self.name}"


# Regression losses.


@widened
def _mse(pred, target):
    """``mean((p - t)^2)`` over all elements; gradient ``2 (p - t) / n``."""
    pred, target = same_shape("mse", pred, target)
    return jnp.mean(jnp.square(pred - target))


@widened
def _mse_grad(pred, target):
    pred, target = same_shape("mse", pred, target)
    return (pred - target) * (2 / pred.size)


@widened
def _mae(pred, target):
    """``mean(|p - t|)``; gradient ``sign(p - t) / n`` with ``+1`` at ``p == t``."""
    pred, target = same_shape("mae", pred, target)
    return jnp.mean(jnp.abs(pred - target))


@widened
def _mae_grad(pred, target):
    pred, target = same_shape("mae", pred, target)
    ones = jnp.ones_like(pred)
    return jnp.where(pred >= target, ones, -ones) / pred.size


@widened
def _l2_error(pred, target):
    """``sum(0.5 (p - t)^2) / N`` with ``N = pred.shape[0]``; gradient ``(p - t) / N``.

    The 1/2 cancels the 2 of the square, so the gradient is the plain residual.
    """
    pred, target = same_shape("l2_error", pred, target)
    return 0.5 * jnp.sum(jnp.square(pred - target)) / pred.shape[0]


@widened
def _l2_error_grad(pred, target):
    pred, target = same_shape("l2_error", pred, target)
    return (pred - target) / pred.shape[0]


# Classification losses. Each ``_x_inputs`` checks shapes (trace time) and,
# on concrete inputs, values; the value and its gradient share it.

_PROBABILITIES_HINT = "; for logits use sigmoid_binary_cross_entropy"
_HINGE_HINT = "; for 0/1 labels y pass 2 * y - 1"


def _bce_inputs(prob, target):
    name = "binary_cross_entropy"
    checked = same_shape(name, prob, target)
    check_within(name, "probabilities", prob, 0, 1, _PROBABILITIES_HINT)
    check_within(name, "targets", target, 0, 1)
    return checked


def _inside(prob):
    """Where ``prob`` is not clipped: in ``[BCE_EPS, 1 - BCE_EPS]``, or NaN.

    A NaN is "inside" so that it reaches the gradient as NaN, as in jax.grad.
    """
    return ~((prob < BCE_EPS) | (prob > 1 - BCE_EPS))


@widened
def _binary_cross_entropy(prob, target):
    """``-mean(t log p + (1 - t) log(1 - p))`` on probabilities ``p``.

    ``p`` is clipped to ``[BCE_EPS, 1 - BCE_EPS]`` so that ``log`` stays finite;
    the gradient ``((1 - t) / (1 - p) - t / p) / n`` is zero where the clip
    is active, as autodiff of the clipped value gives. Prefer
    ``sigmoid_binary_cross_entropy`` on logits: it needs no clipping.
    """
    prob, target = _bce_inputs(prob, target)
    p = jnp.where(_inside(prob), prob, jnp.clip(prob, BCE_EPS, 1 - BCE_EPS))
    return -jnp.mean(target * jnp.log(p) + (1 - target) * jnp.log1p(-p))


@widened
def _binary_cross_entropy_grad(prob, target):
    prob, target = _bce_inputs(prob, target)
    p = jnp.clip(prob, BCE_EPS, 1 - BCE_EPS)
    dp = ((1 - target) / (1 - p) - target / p) / prob.size
    return jnp.where(_inside(prob), dp, jnp.zeros_like(dp))


def _sbce_inputs(logits, target):
    name = "sigmoid_binary_cross_entropy"
    checked = same_shape(name, logits, target)
    check_within(name, "targets", target, 0, 1)
    return checked


@widened
def _sigmoid_binary_cross_entropy(logits, target):
    """Binary cross-entropy of ``sigmoid(z)``, computed from the logits ``z``.

    Per element ``softplus(z) - z t = max(z, 0) - z t + log1p(exp(-|z|))``,
    finite for any finite ``z``; averaged over all elements. Gradient
    ``(sigmoid(z) - t) / n``. Targets may be soft, in ``[0, 1]``.
    """
    logits, target = _sbce_inputs(logits, target)
    return jnp.mean(jax.nn.softplus(logits) - logits * target)


@widened
def _sigmoid_binary_cross_entropy_grad(logits, target):
    logits, target = _sbce_inputs(logits, target)
    return (jax.nn.sigmoid(logits) - target) / logits.size


@widened
def _softmax_cross_entropy(logits, labels):
    """``-sum_c t_c log_softmax(z)_c``, averaged over all leading axes.

    Args:
      logits: ``(..., C)`` with ``C >= 2``, e.g. ``(N, C)`` or ``(N, T, C)``.
      labels: integer class indices of shape ``(...)``, or one-hot rows or
        class probabilities of shape ``(..., C)``.

    The gradient is ``(softmax(z) sum_c t_c - t) / M`` with ``M`` the number of
    rows, i.e. ``(softmax(z) - t) / M`` for one-hot or probability targets.
    Log-sum-exp keeps it finite for logits in the tens of thousands, and a
    class masked out with a ``-inf`` logit costs nothing where its target is 0.
    """
    logits, t = class_targets("softmax_cross_entropy", logits, labels)
    rows = logits.size // logits.shape[-1]
    # A class masked with a -inf logit has log-probability -inf; where its
    # target is 0 it costs 0, not 0 * -inf = NaN (as PyTorch and optax's
    # integer-label loss), which also matches the gradient below.
    terms = jnp.where(t != 0, t * jax.nn.log_softmax(logits, axis=-1), 0)
    return -jnp.sum(terms) / rows


@widened
def _softmax_cross_entropy_grad(logits, labels):
    logits, t = class_targets("softmax_cross_entropy", logits, labels)
    rows = logits.size // logits.shape[-1]
    total = jnp.sum(t, axis=-1, keepdims=True)
    return (jax.nn.softmax(logits, axis=-1) * total - t) / rows


def _ce_inputs(prob, labels):
    name = "cross_entropy"
    checked, t = class_targets(name, prob, labels)
    check_within(
        name, "probabilities", prob, 0, 1, "; for logits use softmax_cross_entropy"
    )
    return checked, t, checked.size // checked.shape[-1]


@widened
def _cross_entropy(prob, labels):
    """``-1/M sum_rows sum_c y_c log(max(p_c, PROB_EPS))`` on probabilities.

    The course's cross-entropy, for a model that ends in ``Softmax``. The
    clamp: a float32 softmax rounds a class more than ~88 logits below the
    best to exactly 0, and ``log 0 = -inf`` would make the loss infinite and
    the gradient NaN. Clamped at ``PROB_EPS = 1e-7``, such a class costs
    ``-log(1e-7) ~ 16.1`` and passes no gradient. Where ``p >= PROB_EPS`` the
    gradient is ``-y / (M p)``, else 0 (autodiff of the clamped value gives
    the same). A NaN probability is not clamped: the loss is NaN, as the
    formula gives. Prefer ``softmax_cross_entropy`` on logits: it needs no
    clamp, and its gradient ``softmax(z) - y`` never vanishes on a wrong answer.
    """
    prob, t, rows = _ce_inputs(prob, labels)
    # prob < eps, not ~(prob >= eps): a NaN (a diverged model) stays NaN.
    p = jnp.where(prob < PROB_EPS, PROB_EPS, prob)
    return -jnp.sum(t * jnp.log(p)) / rows


@widened
def _cross_entropy_grad(prob, labels):
    prob, t, rows = _ce_inputs(prob, labels)
    inside = ~(prob < PROB_EPS)  # NaN included: its gradient is NaN
    dp = -t / (jnp.where(inside, prob, PROB_EPS) * rows)
    return jnp.where(inside, dp, jnp.zeros_like(dp))


def _hinge_inputs(pred, target):
    checked = same_shape("hinge", pred, target)
    check_members("hinge", "labels", target, (-1, 1), _HINGE_HINT)
    return checked


@widened
def _hinge(pred, target):
    """``mean(max(0, 1 - t p))`` with labels ``t`` in ``{-1, +1}``.

    Gradient ``-t / n`` where the margin ``t p < 1``, else 0; at margin exactly
    1 it is 0, as ``relu'(0) = 0``. Concrete labels other than -1/+1 raise
    (a 0 label would cost a constant 1 and pass no gradient); under ``jit``
    they cannot be checked.
    """
    pred, target = _hinge_inputs(pred, target)
    return jnp.mean(jax.nn.relu(1 - target * pred))


@widened
def _hinge_grad(pred, target):
    pred, target = _hinge_inputs(pred, target)
    active = 1 - target * pred > 0
    return jnp.where(active, -target, jnp.zeros_like(target)) / pred.size


mse = Loss(_mse, _mse_grad, "mse")
mae = Loss(_mae, _mae_grad, "mae")
l2_error = Loss(_l2_error, _l2_error_grad, "l2_error")
binary_cross_entropy = Loss(
    _binary_cross_entropy,
    _binary_cross_entropy_grad,
    "binary_cross_entropy",
    "probabilities",
    metrics.PROBABILITY,
)
sigmoid_binary_cross_entropy = Loss(
    _sigmoid_binary_cross_entropy,
    _sigmoid_binary_cross_entropy_grad,
    "sigmoid_binary_cross_entropy",
    "logits",
    metrics.LOGIT,
)
softmax_cross_entropy = Loss(
    _softmax_cross_entropy,
    _softmax_cross_entropy_grad,
    "softmax_cross_entropy",
    "logits",
    metrics.ARGMAX,
)
cross_entropy = Loss(
    _cross_entropy,
    _cross_entropy_grad,
    "cross_entropy",
    "probabilities",
    metrics.ARGMAX,
)
hinge = Loss(_hinge, _hinge_grad, "hinge", "scores", metrics.SIGN)

#: Every loss of this module, in order.
LOSSES = (
    mse,
    mae,
    l2_error,
    binary_cross_entropy,
    sigmoid_binary_cross_entropy,
    softmax_cross_entropy,
    cross_entropy,
    hinge,
)


# Keras' and PyTorch's names for the losses above, for the error a string
# where a loss goes gets: the habit names the fix. Keras' cross-entropies
# take probabilities by default (from_logits=False), so they map to fnn's
# losses on probabilities, and the hint adds the one on logits.
_ON_LOGITS = {
    "cross_entropy": "softmax_cross_entropy",
    "binary_cross_entropy": "sigmoid_binary_cross_entropy",
}
_OTHER_NAMES = {
    "mean_squared_error": "mse",
    "mseloss": "mse",
    "mean_absolute_error": "mae",
    "l1loss": "mae",
    "categorical_crossentropy": "cross_entropy",
    "sparse_categorical_crossentropy": "cross_entropy",
    "crossentropyloss": "softmax_cross_entropy",
    "binary_crossentropy": "binary_cross_entropy",
    "bcewithlogitsloss": "sigmoid_binary_cross_entropy",
    "bceloss": "binary_cross_entropy",
    "hinge_loss": "hinge",
}


def check_loss(who: str, loss) -> None:
    """Refuses anything but a function ``loss(pred, target) -> scalar``.

    A string (Keras' ``loss="mse"`` habit) gets the fnn function to write
    instead, found under its fnn, Keras or PyTorch name.

    Args:
      who: the function asking, for the message (``"fit"``).
      loss: what the caller passed as the loss.

    Raises:
      TypeError: when ``loss`` is not callable.
    """
    if callable(loss):
        return
    hint = ""
    if isinstance(loss, str):
        key = loss.strip().lower().replace("-", "_").replace(" ", "_")
        name = _OTHER_NAMES.get(key, key)
        if any(f.name == name for f in LOSSES):
            hint = f"; for {loss!r} write fnn.losses.{name} (the function, no quotes)"
            if name in _ON_LOGITS and key != name:
                hint += (
                    f", on probabilities as Keras' default; on logits "
                    f"(from_logits=True) fnn.losses.{_ON_LOGITS[name]}"
                )
    raise TypeError(
        f"{who}: loss must be a function loss(pred, target) -> scalar, such as "
        f"fnn.losses.softmax_cross_entropy, got {loss!r}{hint}"
    )
