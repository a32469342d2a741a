"""Gradients two ways: JAX's autodiff, and the chain rule written by hand.

``value_and_grad(model, loss, method=...)`` gives the loss and its parameter
gradient either by autodiff (``method="autodiff"``) or by each layer's
``backward`` called in reverse order from the loss's own hand-written
gradient (``method="manual"``). ``manual_vjp`` makes autodiff itself call a
layer's hand-written backward.

The rest of the gradient toolbox lives beside this file and is re-exported
here, so ``fnn.backprop.<name>`` reaches all of it:

- :mod:`fnn.gradcheck`: ``check``, ``check_layer`` and their reports (manual
  vs autodiff vs finite differences, in float64);
- :mod:`fnn.per_example`: ``per_example_grads``, ``per_example_norms``;
- :mod:`fnn.diagnostics`: ``grad_norms`` and the other per-layer health
  figures.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fnn._targets import scalar_loss
from fnn.diagnostics import grad_norms, is_chain, kind_of, unwrap
from fnn.losses import check_loss
from fnn.protocol import Layer, check_params, per_example_shape

METHODS = ("autodiff", "manual")


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def cast_floats(tree, dtype):
    """Casts the floating leaves of ``tree`` to ``dtype``; other leaves stay.

    Args:
      tree: a pytree of arrays or array-likes (Python floats and NumPy arrays
        too; integer leaves, such as labels or token ids, are left alone).
      dtype: the floating dtype to cast to, e.g. ``jnp.bfloat16``.

    Returns:
      A tree of the same structure, every leaf a JAX array.
    """

    def cast(leaf):
        leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.astype(dtype)
        return leaf

    return jax.tree.map(cast, tree)


# --------------------------------------------------------------------------
# A loss that applies softmax (or sigmoid) itself, after a model that did.


def _last_layer(model: Layer) -> Layer:
    """The layer whose output is the model's, down nested ``serial`` chains."""
    while is_chain(model):
        model = unwrap(model).layers[-1]
    return model


def _refuse_double_link(model: Layer, loss) -> None:
    """Raises when ``loss`` applies the link function the model ends with."""
    if getattr(loss, "expects", None) != "logits":
        return
    name = kind_of(_last_layer(model))
    if name in ("Softmax", "Sigmoid"):
        fix = "cross_entropy" if name == "Softmax" else "binary_cross_entropy"
        raise ValueError(
            f"value_and_grad: the model ends in a {name} layer and {loss!r} "
            f"applies {name.lower()} itself, so it would be applied twice "
            f"(the loss stays high and the gradient vanishes). Drop the final "
            f"{name} layer and keep {loss!r} on logits (numerically stable), or "
            f"keep the layer and use fnn.losses.{fix} (on probabilities)."
        )


# --------------------------------------------------------------------------
# The gradient builders


def _check_regularizer(regularizer, method):
    if regularizer is None:
        return
    if not callable(regularizer):
        raise TypeError(
            f"regularizer must be a callable params -> scalar, such as "
            f"fnn.losses.penalty(l2=1e-4); got {regularizer!r}"
        )
    if method == "manual" and not callable(getattr(regularizer, "grad", None)):
        raise TypeError(
            f"method='manual' needs a regularizer with a hand-written gradient "
            f"`regularizer.grad(params)`; {regularizer!r} has none. Build one with "
            f"fnn.losses.penalty(l1=..., l2=...), or use method='autodiff'."
        )


def value_and_grad(
    model: Layer,
    loss,
    method: str = "autodiff",
    *,
    regularizer=None,
    train: bool = True,
    compute_dtype=None,
) -> Callable:
    """Builds ``f(params, state, x, y, *, key=None) -> ((loss, new_state), grads)``.

    The objective is ``J(params) = loss(model(params, x), y) + R(params)``
    with ``R`` the regularizer (0 without one). ``method="autodiff"`` takes
    ``jax.grad`` of ``J``. ``method="manual"`` runs ``model.forward``, starts
    the chain rule from the loss's hand-written ``dL/dpred = loss.grad(pred,
    y)``, pulls it back through ``model.backward`` (each layer's
    vector-Jacobian product, last to first) and adds ``R.grad(params)``:
    ``dJ/dparams = backward(dL/dpred) + dR/dparams``.

    Args:
      model: a :class:`~fnn.protocol.Layer`, usually a ``serial`` network.
      loss: ``loss(pred, target) -> scalar``; for ``method="manual"`` it must
        also carry a hand-written ``loss.grad(pred, target)`` (all of
        :mod:`fnn.losses` do).
      method: ``"autodiff"`` or ``"manual"``.
      regularizer: ``None``, or a callable ``params -> scalar`` added to the
        loss, such as ``fnn.losses.penalty(l2=1e-4)``; for
        ``method="manual"`` it must carry ``regularizer.grad(params)``. It
        sees the float32 master parameters, also under ``compute_dtype``.
      train: runs the model in training mode (dropout on, batch statistics).
      compute_dtype: mixed precision, e.g. ``jnp.bfloat16``: the forward and
        backward passes run on parameters and inputs cast to it, while the
        loss is computed in float32 and the gradients come back in the
        parameters' own dtype (float32 master weights). ``None``: no casts.

    Returns:
      A pure function, ready for ``jax.jit`` and ``jax.vmap``; the loss it
      returns is ``J`` (regularizer included) and ``grads`` has the structure
      of ``params``. Its ``loss_scale`` keyword (a float or a traced scalar)
      multiplies ``J`` before the backward pass, so that float16 cotangents
      do not underflow: ``grads`` are then the scaled ones, while the loss
      returned stays unscaled. :func:`fnn.optim.gradient_step` is the one
      place that passes it (see :func:`fnn.optim.dynamic_loss_scale`).

    Raises:
      ValueError: an unknown ``method``; a model that ends in a ``Softmax``
        (or ``Sigmoid``) layer paired with a loss on logits, which applies
        it a second time.
      TypeError: ``method="manual"`` with a loss or regularizer that has no
        ``.grad``; a regularizer that is not callable.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from fnn import backprop, losses
      >>> from fnn.activation_layers import Relu
      >>> from fnn.combinators import serial
      >>> from fnn.dense import Dense
      >>> model = serial(Dense(2), Relu, Dense(1))
      >>> _, params, state = model.init(jax.random.key(0), (3,))
      >>> x, y = jnp.ones((4, 3)), jnp.zeros((4, 1))
      >>> auto = backprop.value_and_grad(model, losses.mse)
      >>> manual = backprop.value_and_grad(model, losses.mse, "manual")
      >>> (loss, state), grads = auto(params, state, x, y)
      >>> loss.shape, jax.tree.map(jnp.shape, grads)
      ((), ({'b': (2,), 'w': (3, 2)}, (), {'b': (1,), 'w': (2, 1)}))
      >>> _, grads_manual = manual(params, state, x, y)
      >>> jax.tree.all(jax.tree.map(jnp.allclose, grads, grads_manual))
      True
    """
    _check_method(method)
    check_loss("value_and_grad", loss)
    _check_regularizer(regularizer, method)
    _refuse_double_link(model, loss)

    def lowered(params, x):
        if compute_dtype is None:
            return params, x
        return cast_floats(params, compute_dtype), cast_floats(x, compute_dtype)

    def to_loss_dtype(pred):
        return pred if compute_dtype is None else cast_floats(pred, jnp.float32)

    def total(value, params):
        # No "+ 0.0" without a regularizer: the step stays the hand-written one.
        return value if regularizer is None else value + regularizer(params)

    if method == "autodiff":

        def objective(params, state, x, y, key, scale):
            low_params, x = lowered(params, x)
            pred, new_state = model.apply(low_params, state, x, key=key, train=train)
            value = scalar_loss("value_and_grad", loss, loss(to_loss_dtype(pred), y))
            value = total(value, params)
            return value * scale, (value, new_state)

        grad_fn = jax.grad(objective, has_aux=True)

        def autodiff(params, state, x, y, *, key=None, loss_scale=None):
            # Before jax.grad, which refuses integer params with a bare error.
            check_params(model, params, state, per_example_shape(x))
            scale = 1.0 if loss_scale is None else loss_scale
            grads, aux = grad_fn(params, state, x, y, key, scale)
            return aux, grads

        return autodiff

    if not callable(getattr(loss, "grad", None)):
        raise TypeError(
            f"method='manual' needs a loss with a hand-written gradient "
            f"`loss.grad(pred, target)`; {loss!r} has none. Use a loss from "
            f"fnn.losses or method='autodiff'."
        )

    def manual(params, state, x, y, *, key=None, loss_scale=None):
        check_params(model, params, state, per_example_shape(x))
        low_params, x = lowered(params, x)
        pred, new_state, cache = model.forward(
            low_params, state, x, key=key, train=train
        )
        pred32 = to_loss_dtype(pred)
        value = scalar_loss("value_and_grad", loss, loss(pred32, y))
        scale = 1.0 if loss_scale is None else loss_scale
        dpred = loss.grad(pred32, y)
        if loss_scale is not None:
            dpred = dpred * loss_scale
        grads, _ = model.backward(low_params, cache, dpred.astype(pred.dtype))
        # Back to the (master) weights' dtypes, as autodiff gives them: a
        # backward's formulas promote (bfloat16 w, float32 x: float32 dw),
        # and float32 grads of bfloat16 params broke fit's compiled loop.
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        if regularizer is not None:
            grads = jax.tree.map(
                lambda g, r: g + (scale * r).astype(g.dtype),
                grads,
                regularizer.grad(params),
            )
        return (total(value, params), new_state), grads

    return manual


# --------------------------------------------------------------------------
# Using the hand-written backward from autodiff


def _zero_cotangent(tree):
    """Zero cotangents for inputs that are not differentiated (state, keys)."""

    def zero(leaf):
        leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            return jnp.zeros_like(leaf)
        return np.zeros(leaf.shape, dtype=jax.dtypes.float0)

    return jax.tree.map(zero, tree)


def _like_primal(carrier, d):
    """``d`` cast to a floating primal's dtype (held by a zero-size
    ``carrier``); ``None`` and the cotangents of integer inputs unchanged."""
    if d is None or not jnp.issubdtype(carrier.dtype, jnp.inexact):
        return d
    return d.astype(carrier.dtype)


def manual_vjp(layer: Layer) -> Layer:
    """The same layer, whose autodiff runs its hand-written ``backward``.

    ``apply`` is wrapped in ``jax.custom_vjp``: ``jax.grad`` of a model built
    from ``manual_vjp`` layers never differentiates their forward, it calls
    ``layer.backward`` on the cache instead: for ``y = f(params, x)`` and an
    output cotangent ``dy``, ``(dparams, dx) = layer.backward(params, cache,
    dy)`` stands for ``(dy^T df/dparams, dy^T df/dx)``. Mixing wrapped and
    plain layers in one model is fine; ``state`` and ``key`` get zero
    cotangents.

    Args:
      layer: any :class:`~fnn.protocol.Layer`.

    Returns:
      A :class:`~fnn.protocol.Layer` with the same ``init``, ``backward``
      and outputs, named ``manual_vjp(<name>)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from fnn.backprop import manual_vjp
      >>> from fnn.dense import Dense
      >>> layer = manual_vjp(Dense(2))
      >>> layer
      manual_vjp(Dense(2))
      >>> _, params, state = layer.init(jax.random.key(0), (3,))
      >>> x = jnp.ones((4, 3))
      >>> grads = jax.grad(lambda p: layer.apply(p, state, x)[0].sum())(params)
      >>> grads["w"].tolist()  # Dense's backward: dw = x^T dy, dy = ones
      [[4.0, 4.0], [4.0, 4.0], [4.0, 4.0]]
    """

    def apply(params, state, x, key, train):
        @jax.custom_vjp
        def run(params, state, x, key):
            y, new_state, _ = layer.forward(params, state, x, key=key, train=train)
            return y, new_state

        def run_fwd(params, state, x, key):
            y, new_state, cache = layer.forward(params, state, x, key=key, train=train)
            x_dtypes = jax.tree.map(lambda a: jnp.zeros((0,), a.dtype), x)
            return (y, new_state), (params, state, key, cache, x_dtypes)

        def run_bwd(residuals, cotangents):
            params, state, key, cache, x_dtypes = residuals
            dy, _ = cotangents  # the new state is not differentiated
            dparams, dx = layer.backward(params, cache, dy)
            # Cotangents in their primals' dtypes, as jax.grad gives them
            # (a backward's formulas promote: bfloat16 x, float32 w).
            dparams = jax.tree.map(lambda g, p: g.astype(p.dtype), dparams, params)
            dx = jax.tree.map(_like_primal, x_dtypes, dx)
            return dparams, _zero_cotangent(state), dx, _zero_cotangent(key)

        run.defvjp(run_fwd, run_bwd)
        return run(params, state, x, key)

    def forward(params, state, x, *, key=None, train=False):
        y, new_state = apply(params, state, x, key, train)
        # The cache of the wrapped layer is still what its backward needs.
        _, _, cache = layer.forward(params, state, x, key=key, train=train)
        return y, new_state, cache

    return Layer(
        layer.init,
        forward,
        layer.backward,
        f"manual_vjp({layer.name})",
        (layer,),
        layer.scans_well,
        kind="manual_vjp",
    )


# --------------------------------------------------------------------------
# The rest of the toolbox, reachable as fnn.backprop.<name> (DESIGN.md). These
# modules call value_and_grad above, so they are imported after it
# (grad_norms, from fnn.diagnostics, is imported at the top).

from fnn.gradcheck import (  # noqa: E402
    ATOL,
    EPS,
    FD_ATOL,
    FD_RTOL,
    MANUAL_RTOL,
    GradCheckReport,
    LeafCheck,
    check,
    check_layer,
)
from fnn.per_example import per_example_grads, per_example_norms  # noqa: E402

__all__ = [
    "ATOL",
    "EPS",
    "FD_ATOL",
    "FD_RTOL",
    "MANUAL_RTOL",
    "METHODS",
    "GradCheckReport",
    "LeafCheck",
    "cast_floats",
    "check",
    "check_layer",
    "grad_norms",
    "manual_vjp",
    "per_example_grads",
    "per_example_norms",
    "value_and_grad",
]
