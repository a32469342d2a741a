"""Accuracy that reads predictions the way the loss that trained them does.

A network's outputs mean different things under different losses: class
logits under ``softmax_cross_entropy``, one logit under
``sigmoid_binary_cross_entropy``, one probability under
``binary_cross_entropy``, a signed score under ``hinge``. Each
:class:`fnn.losses.Loss` declares, in its ``decision`` attribute, how an
output becomes a predicted class:

=================  ===========================================  ===============
``decision``        predicted class                              target class
=================  ===========================================  ===============
``"argmax"``        ``argmax(pred, -1)`` (ties: lowest index)     the integer
                                                                  label, or the
                                                                  argmax of a
                                                                  one-hot row
``"logit"``         1 where ``pred > 0`` (``sigmoid > 0.5``)      1 where
                                                                  ``t > 0.5``
``"probability"``   1 where ``pred > 0.5``                        1 where
                                                                  ``t > 0.5``
``"sign"``          +1 where ``pred > 0``, else -1                ``t`` in
                                                                  {-1, +1}
=================  ===========================================  ===============

The three binary rules work elementwise, so a multi-label output ``(N, K)``
scores each of its ``N * K`` decisions; one output ``(N, 1)`` takes labels
``(N,)`` or ``(N, 1)``. Losses without a decision (``mse``, ``mae``,
``l2_error``, a plain function) and ``loss=None`` read several outputs by
argmax; one output per example is then ambiguous (a logit? a probability?)
and raises rather than guess. A prediction holding NaN is never counted
correct: a diverged model scores 0, not the share of class 0.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from fnn._targets import batched, check_members, check_within, class_targets

ARGMAX, LOGIT, PROBABILITY, SIGN = "argmax", "logit", "probability", "sign"
DECISIONS = (ARGMAX, LOGIT, PROBABILITY, SIGN)
_THRESHOLD = {LOGIT: 0.0, PROBABILITY: 0.5, SIGN: 0.0}


def _outputs(shape: tuple) -> int:
    return shape[-1] if len(shape) >= 2 else 1


def decision_of(loss, pred_shape: tuple) -> str | None:
    """How :func:`accuracy` turns predictions of ``pred_shape`` into classes.

    Args:
      loss: the training loss, or ``None``.
      pred_shape: the predictions' shape, batch axis included.

    Returns:
      ``loss.decision`` when the loss declares one; otherwise ``"argmax"`` for
      several outputs per example, and ``None`` (no rule) for one.
    """
    rule = getattr(loss, "decision", None)
    if rule is not None:
        return rule
    return ARGMAX if _outputs(tuple(pred_shape)) > 1 else None


def has_accuracy(loss, pred_shape: tuple, target_dtype) -> bool:
    """Whether an accuracy means something for this loss and these targets.

    True when ``loss`` declares a decision rule (every classification loss of
    :mod:`fnn.losses`), or when the targets are integer class indices and the
    predictions have several outputs per example. False for regression:
    ``mse`` on float targets, for instance.

    Args:
      loss: the training loss, or ``None``.
      pred_shape: the predictions' shape, batch axis included.
      target_dtype: the targets' dtype.

    Returns:
      A Python bool, decided from shapes and dtypes alone (safe under ``jit``).
    """
    if getattr(loss, "decision", None) is not None:
        return True
    integer = jnp.issubdtype(np.dtype(target_dtype), jnp.integer)
    return bool(integer and _outputs(tuple(pred_shape)) > 1)


def _ambiguous(loss, shape):
    what = (
        "accuracy was given no loss"
        if loss is None
        else f"{loss!r} has no decision rule"
    )
    return ValueError(
        f"accuracy: predictions of shape {shape} have one output per example, and "
        f"{what}: is it a logit, a probability or a score? Pass the training loss, "
        "e.g. loss=fnn.losses.sigmoid_binary_cross_entropy (logits, class 1 where "
        "pred > 0), binary_cross_entropy (probabilities, pred > 0.5) or hinge "
        "(scores, the sign)"
    )


def _binary_target(pred, target):
    if target.shape == pred.shape:
        return target
    if pred.shape == target.shape + (1,):
        return target[..., None]
    raise ValueError(
        f"accuracy: targets of shape {target.shape} fit neither predictions "
        f"{pred.shape} nor {pred.shape[:-1]} (one output per example)"
    )


def _argmax_hits(pred, target, raw_target):
    _, onehot = class_targets("accuracy", pred, raw_target)
    if target.shape != pred.shape:  # integer class indices, validated above
        labels = target
    else:
        labels = jnp.argmax(onehot, axis=-1)
    finite = ~jnp.any(jnp.isnan(pred), axis=-1)
    return (jnp.argmax(pred, axis=-1) == labels) & finite


def _binary_hits(rule, pred, target, raw_pred, raw_target):
    """Hits of a threshold rule; values are checked on the raw (concrete) inputs."""
    target = _binary_target(pred, target)
    if rule == SIGN:
        check_members("accuracy", "hinge labels", raw_target, (-1, 1))
    else:
        check_within("accuracy", "binary targets", raw_target, 0, 1)
    if rule == PROBABILITY:
        check_within(
            "accuracy",
            "probabilities",
            raw_pred,
            0,
            1,
            "; for logits pass loss=fnn.losses.sigmoid_binary_cross_entropy",
        )
    threshold = _THRESHOLD[rule]
    actual = target > (0 if rule == SIGN else 0.5)
    return ((pred > threshold) == actual) & ~jnp.isnan(pred)


def accuracy(pred, target, *, loss=None):
    """The fraction of predictions whose class matches the target's.

    The class of a prediction follows the loss (see the table above):
    ``argmax`` over several classes, ``pred > 0`` for logits, ``pred > 0.5``
    for probabilities, the sign for hinge scores. A NaN prediction is wrong.

    Args:
      pred: ``(..., C)`` scores, or ``(N,)``/``(N, K)`` for the binary rules.
      target: for ``argmax``, integer class indices ``(...)`` or one-hot rows
        ``(..., C)``; for the binary rules, targets shaped like ``pred`` (or
        ``(N,)`` for ``pred`` of shape ``(N, 1)``): 0/1 (soft targets count
        as class 1 above 0.5), or -1/+1 for ``hinge``.
      loss: the loss the model was trained with; its ``decision`` attribute
        picks the rule. ``None`` (or a loss without one): argmax, which needs
        several outputs per example.

    Returns:
      A scalar in ``[0, 1]``: the mean over all decisions (rows for argmax,
      elements for the binary rules).

    Raises:
      ValueError: at trace time, for shapes that do not fit the rule, for one
        output per example with no rule to read it, for a rule this function
        does not know; on concrete inputs, for labels out of range
        (``[0, C)``, ``{0, 1}``-ish targets outside ``[0, 1]``, hinge labels
        other than -1/+1) and probabilities outside ``[0, 1]``.

    Example:
      >>> import jax.numpy as jnp
      >>> from fnn import losses
      >>> logits = jnp.array([[2.0], [-1.0], [0.5], [-3.0]])
      >>> labels = jnp.array([1, 1, 0, 0])
      >>> float(losses.accuracy(logits, labels,
      ...                       loss=losses.sigmoid_binary_cross_entropy))
      0.5
    """
    raw_pred, raw_target = pred, target
    pred, target = batched("accuracy", pred), jnp.asarray(target)
    rule = decision_of(loss, pred.shape)
    if rule is None:
        raise _ambiguous(loss, pred.shape)
    if rule == ARGMAX:
        hits = _argmax_hits(pred, target, raw_target)
    elif rule in _THRESHOLD:
        hits = _binary_hits(rule, pred, target, raw_pred, raw_target)
    else:
        raise ValueError(
            f"accuracy: {loss!r} declares decision {rule!r}; known: {DECISIONS}"
        )
    return jnp.mean(hits)
