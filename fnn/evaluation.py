"""Evaluation: mean loss and accuracy of a model on data, in evaluation mode.

``fnn.train.evaluate`` is this module's :func:`evaluate`; ``fit`` calls
:func:`evaluate_checked` on its validation data after every epoch, having
checked that data once.
"""

from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _train_checks as checks
from fnn import losses, metrics
from fnn._targets import scalar_loss
from fnn.protocol import Layer


def evaluate(
    model: Layer, loss, params, state, x, y, *, batch_size: int = 1024
) -> dict[str, float]:
    """Mean loss, and accuracy where it means something, in evaluation mode.

    Runs over ``x`` in batches of ``batch_size`` so large test sets fit in
    memory; the result weighs each batch by its size. The accuracy reads
    predictions as the loss does (:func:`fnn.metrics.accuracy`): argmax of
    several class scores, ``pred > 0`` for ``sigmoid_binary_cross_entropy``
    logits, ``pred > 0.5`` for ``binary_cross_entropy`` probabilities, the
    sign for ``hinge``.

    Args:
      model, loss: the network and the loss it was trained with.
      params, state: the trained parameters and state.
      x, y: the examples and targets, arrays (or nested lists) with a
        leading example axis of the same, non-zero length. For a one-output
        model under a binary loss, labels ``(N,)`` are read as ``(N, 1)``.
      batch_size: examples per compiled call, a positive int.

    Returns:
      ``{"loss": float, "accuracy": float}``; ``accuracy`` only for a
      classification loss, or integer labels with several outputs.

    Raises:
      ValueError: for empty or mismatched data, labels out of range, or a
        loss that returns more than a scalar (a per-example loss).
      TypeError: for a ``batch_size`` that is not an int.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from fnn import losses, train
      >>> from fnn.dense import Dense
      >>> model = Dense(2)
      >>> _, params, state = model.init(jax.random.key(0), (3,))
      >>> zero = jax.tree.map(jnp.zeros_like, params)  # logits 0: p = 1/2 each
      >>> x, labels = jnp.ones((5, 3)), jnp.array([0, 1, 0, 1, 1])
      >>> result = train.evaluate(model, losses.softmax_cross_entropy, zero, state,
      ...                         x, labels, batch_size=2)
      >>> round(result["loss"], 4), sorted(result)  # loss log 2
      (0.6931, ['accuracy', 'loss'])
    """
    losses.check_loss("evaluate", loss)
    batch_size = checks.count("evaluate", "batch_size", batch_size)
    x, y = checks.arrays("evaluate", (x, y), "data")
    pred_shape = checks.output_shape(model, params, state, x)
    y = checks.binary_column(loss, pred_shape, y)
    checks.targets("evaluate", model, loss, pred_shape, y)
    return evaluate_checked(model, loss, params, state, x, y, batch_size, pred_shape)


def evaluate_checked(model, loss, params, state, x, y, batch_size, pred_shape):
    """``evaluate`` on data already checked, as ``fit`` validates each epoch.

    Args:
      model, loss, params, state, x, y, batch_size: as for :func:`evaluate`,
        ``x`` and ``y`` arrays whose labels fit the model.
      pred_shape: the model's per-example output shape.

    Returns:
      What :func:`evaluate` returns.
    """
    classify = metrics.has_accuracy(loss, (1, *pred_shape), y.dtype)
    fn = _eval_fn(model, loss, classify)
    totals = np.zeros(2)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        totals += len(xb) * np.asarray(fn(params, state, xb, yb))
    out = {"loss": float(totals[0] / len(x))}
    if classify:
        out["accuracy"] = float(totals[1] / len(x))
    return out


def _eval_fn(model, loss, classify):
    """The jitted ``(params, state, x, y) -> [loss, accuracy]`` of one batch.

    Cached: fit evaluates every epoch, and a fresh jitted function would
    recompile each time (digits LSTM: 12 compiles, 9 of fit's 13 s). A loss
    or model that cannot be hashed (an instance of a plain ``@dataclass``
    with a ``__call__``) gets a fresh one instead of a bare ``TypeError``.
    """
    try:
        hash((model, loss))
    except TypeError:
        return _batch_metrics(model, loss, classify)
    return _cached_batch_metrics(model, loss, classify)


def _batch_metrics(model, loss, classify):
    @jax.jit
    def batch_metrics(params, state, x, y):
        pred, _ = model.apply(params, state, x, train=False)
        value = scalar_loss("evaluate", loss, loss(pred, y))
        acc = metrics.accuracy(pred, y, loss=loss) if classify else jnp.float32(0)
        # float32 at least, float64 if the loss is: a float16 loss of one batch
        # is rounded once here, never summed in float16.
        dtype = jnp.promote_types(value.dtype, jnp.float32)
        return jnp.stack([value.astype(dtype), acc.astype(dtype)])

    return batch_metrics


_cached_batch_metrics = lru_cache(maxsize=64)(_batch_metrics)
