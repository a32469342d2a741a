"""Whole-model checks of ``params`` and ``state`` against a model's ``init``.

Run where a whole model meets its parameters (``fnn.backprop``), and on
the error path of ``serial`` to name the likely mistake. Each layer also
checks its own parameters at trace time (``protocol.check_leaves``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnn.protocol import BATCH_AXIS_HINT, Layer, ShapeError, is_shape


def _param_shapes(layer: Layer, input_shape):
    """Shapes of ``init``'s params and state, traced: nothing is allocated."""
    _, params, state = jax.eval_shape(
        lambda key: layer.init(key, input_shape), jax.random.key(0)
    )
    return params, state


def check_params(layer: Layer, params, state, input_shape) -> None:
    """Checks that ``params`` and ``state`` fit ``layer`` for ``input_shape``.

    Compares tree structure and leaf shapes with what ``layer.init`` returns
    (traced with ``jax.eval_shape``: nothing is allocated), and names the
    first leaf that differs. Catches parameters from another model, or from
    the same model built for another input size, before they meet an XLA
    error or, worse, broadcast into silent garbage.

    Args:
      layer: the :class:`~fnn.protocol.Layer` the trees are meant for.
      params, state: the trees to check.
      input_shape: the per-example input shape (no batch axis).

    Raises:
      ShapeError: (a ValueError) naming the model and the first leaf that
        differs, as the layers themselves raise for parameters of another model.
      TypeError: naming a parameter leaf that is not floating point (an
        integer ``w`` has no gradient: autodiff failed with a bare JAX
        error, the manual method returned float gradients for it).

    Example:
      >>> import jax.numpy as jnp
      >>> from fnn.dense import Dense
      >>> from fnn.params_check import check_params
      >>> params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
      >>> check_params(Dense(2), params, (), (3,))  # fits: returns None
      >>> check_params(Dense(2), params, (), (4,))  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      fnn.protocol.ShapeError: Dense(2): params['w'] has shape (3, 2), ... needs (4, 2)
    """
    want_params, want_state = _param_shapes(layer, input_shape)
    for what, got, want in (
        ("params", params, want_params),
        ("state", state, want_state),
    ):
        got_leaves = jax.tree_util.tree_flatten_with_path(got)[0]
        want_leaves = jax.tree_util.tree_flatten_with_path(want)[0]
        got_paths = [jax.tree_util.keystr(p) for p, _ in got_leaves]
        want_paths = [jax.tree_util.keystr(p) for p, _ in want_leaves]
        if got_paths != want_paths:
            missing = [p for p in want_paths if p not in got_paths]
            extra = [p for p in got_paths if p not in want_paths]
            raise ShapeError(
                f"{layer.name}: {what} do not match the model: missing "
                f"{missing[:3] or 'nothing'}, unexpected {extra[:3] or 'nothing'}. "
                f"Were they made by another model's init?"
            )
        for (path, g), (_, w) in zip(got_leaves, want_leaves):
            dtype = jnp.result_type(g)
            if what == "params" and not jnp.issubdtype(dtype, jnp.inexact):
                raise TypeError(
                    f"{layer.name}: params{jax.tree_util.keystr(path)} has dtype "
                    f"{dtype}; parameters must be floating point (init makes "
                    f"{w.dtype}), e.g. params = jax.tree.map(lambda a: "
                    f"a.astype(jnp.float32), params)"
                )
            if tuple(jnp.shape(g)) != tuple(w.shape):
                hint = batch_axis_hint(layer, params, state, input_shape)
                raise ShapeError(
                    f"{layer.name}: {what}{jax.tree_util.keystr(path)} has shape "
                    f"{tuple(jnp.shape(g))}, but for input shape {input_shape} the "
                    f"model needs {tuple(w.shape)}" + (f"; {hint}" if hint else "")
                )


def batch_axis_hint(layer: Layer, params, state, input_shape) -> str:
    """Says so when ``params`` were built by ``init(key, x.shape)``.

    Run only on the error path. Finds ``n`` from how the parameter shapes
    grow with a leading axis of 1 and 2, then checks that
    ``init(key, (n, *input_shape))`` gives exactly the shapes of ``params``
    and ``state``.

    Returns:
      The hint (naming the shape init was given), or ``""``.
    """
    if not is_shape(input_shape):
        return ""
    got = [tuple(jnp.shape(a)) for a in jax.tree.leaves((params, state))]
    try:
        one, two = (
            [a.shape for a in jax.tree.leaves(_param_shapes(layer, (n, *input_shape)))]
            for n in (1, 2)
        )
        candidates = {
            (g - a) // (b - a) + 1
            for ga, sa, sb in zip(got, one, two, strict=True)
            for g, a, b in zip(ga, sa, sb, strict=True)
            if b != a and g > a and (g - a) % (b - a) == 0
        }
        for n in sorted(candidates):
            want = jax.tree.leaves(_param_shapes(layer, (n, *input_shape)))
            if [tuple(w.shape) for w in want] == got:
                return (
                    f"these params were built for input shape {(n, *input_shape)}: "
                    f"{BATCH_AXIS_HINT}"
                )
    except (ValueError, TypeError):  # another structure: not this mistake
        return ""
    return ""
