"""Per-example gradients: one gradient per example of a batch, by ``jax.vmap``.

The building block of differentially private SGD (clip each example's
gradient, then add noise) and of per-example diagnostics.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from fnn.diagnostics import at_least_float32
from fnn.protocol import Layer


def per_example_grads(
    model: Layer, loss, method: str = "autodiff", *, train: bool = True
) -> Callable:
    """Builds ``f(params, state, x, y, *, key=None) -> (losses, grads)``.

    For a batch of ``N`` examples, ``losses[i] = loss(model(params, x[i:i+1]),
    y[i:i+1])`` and ``grads[i] = d losses[i] / d params``, computed by
    ``jax.vmap`` over batches of one with either gradient method. Their mean
    is the batch gradient.

    Args:
      model: a :class:`~fnn.protocol.Layer` without state.
      loss: as for :func:`fnn.backprop.value_and_grad`.
      method: ``"autodiff"`` or ``"manual"``.
      train: training mode (dropout on). Each example gets its own dropout
        key, split from ``key``.

    Returns:
      ``f``, whose ``losses`` has shape ``(N,)`` and whose every leaf of
      ``grads`` has a leading axis of ``N``.

    Raises:
      ValueError: when called with a model that has state (batch norm):
        it couples the examples of a batch, so per-example gradients are
        undefined; or with arrays of ``x`` and ``y`` (tuples of arrays for
        several inputs are fine) of different lengths, or without a batch
        axis.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from fnn import losses
      >>> from fnn.dense import Dense
      >>> from fnn.per_example import per_example_grads, per_example_norms
      >>> model = Dense(1)
      >>> _, params, state = model.init(jax.random.key(0), (3,))
      >>> f = per_example_grads(model, losses.mse)
      >>> x, y = jnp.ones((5, 3)), jnp.zeros((5, 1))
      >>> example_losses, grads = f(params, state, x, y)
      >>> example_losses.shape, jax.tree.map(jnp.shape, grads)
      ((5,), {'b': (5, 1), 'w': (5, 3, 1)})
      >>> per_example_norms(grads).shape
      (5,)
    """
    from fnn import backprop  # imports this module: resolved at call time

    grad_fn = backprop.value_and_grad(model, loss, method, train=train)

    def one(params, state, x, y, key):
        x, y = jax.tree.map(lambda a: a[None], (x, y))  # a batch of one
        (value, _), grads = grad_fn(params, state, x, y, key=key)
        return value, grads

    def f(params, state, x, y, *, key=None):
        if jax.tree.leaves(state):
            raise ValueError(
                "per_example_grads: the model has state (batch norm?), which "
                "couples the examples of a batch; per-example gradients are "
                "undefined. Use LayerNorm, or no normalisation."
            )
        n = _batch_size(x, y)
        keys = None if key is None else jax.random.split(key, n)
        return jax.vmap(
            one, in_axes=(None, None, 0, 0, 0 if keys is not None else None)
        )(params, state, x, y, keys)

    return f


def _batch_size(x, y) -> int:
    """The common length of every array of ``x`` and ``y`` (first axis).

    Checked here: ``jax.vmap`` would say only "inconsistent sizes".
    """
    sizes = {}
    for name, tree in (("x", x), ("y", y)):
        for path, a in jax.tree_util.tree_flatten_with_path(tree)[0]:
            where = name + jax.tree_util.keystr(path)
            if not jnp.shape(a):
                raise ValueError(
                    f"per_example_grads: {where} has shape (), no batch axis; "
                    "x and y are batches of examples along their first axis"
                )
            sizes.setdefault(jnp.shape(a)[0], where)
    if len(sizes) > 1:
        (a, where_a), (b, where_b) = list(sizes.items())[:2]
        raise ValueError(
            f"per_example_grads: {where_a} has {a} examples but {where_b} has "
            f"{b}; x and y need the same number of examples (first axis)"
        )
    return next(iter(sizes), 0)


def per_example_norms(grads) -> jax.Array:
    """Global L2 norm of each example's gradient.

    ``norms[i] = sqrt(sum over leaves and entries of grads[leaf][i]**2)``.

    Args:
      grads: per-example gradients, every leaf with a leading axis ``N``
        (as :func:`per_example_grads` returns).

    Returns:
      An array of shape ``(N,)``, float32 for float16 or bfloat16 gradients
      (whose squares overflow float16 from a norm of 256 on).
    """
    squares = [
        jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1)
        for g in jax.tree.leaves(at_least_float32(grads))
    ]
    return jnp.sqrt(sum(squares))
