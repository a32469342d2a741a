"""Normalisation layers: ``BatchNorm`` (running statistics as explicit state)
and ``LayerNorm``.

Both normalise ``x_hat = (x - mean) / sqrt(var + eps)`` and then scale and
shift, ``y = w * x_hat + b``. The variance is computed in two passes,
``mean((x - mean)**2)``, which cannot go negative as the one-pass
``E[x^2] - E[x]^2`` can by round-off (the NaN of google/flax#1491).

Parameter names follow one convention across fnn: ``w`` multiplies, ``b``
adds (``Dense``, ``Conv``, the recurrent layers, and here the scale ``w``,
PyTorch's ``weight``, and the shift ``b``). Before this convention the norm
layers named them ``scale`` and ``bias``; see :func:`rename_legacy` for
checkpoints saved then.

Backward, with ``m`` the number of values each statistic averages over::

    db = sum(dy),  dw = sum(dy * x_hat)
    dx = w / sqrt(var + eps) * (dy - db / m - x_hat * dw / m)

when the statistics come from ``x`` itself (training batch norm, layer
norm), and ``dx = w / sqrt(var + eps) * dy`` when they are constants
(batch norm in evaluation, on running statistics).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from fnn.options import check_train
from fnn.protocol import (
    Layer,
    ShapeError,
    check_input,
    check_leaves,
    check_real,
    check_shape,
    layer_name,
    per_channel,
)

_LEGACY = {"scale": "w", "bias": "b"}


def _affine_init(name):
    """``init`` of the scale ``w`` (ones) and shift ``b`` (zeros), per channel."""

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape, min_rank=1)
        c = input_shape[-1]
        params = {"w": jnp.ones((c,), jnp.float32), "b": jnp.zeros((c,), jnp.float32)}
        return input_shape, params, c

    return init


def _check_affine(name, params, x) -> int:
    """Checks ``params`` and ``x`` at trace time; returns the channel count."""
    check_leaves(name, "params", params, {"w": (None,), "b": (None,)})
    c = params["w"].shape[0]
    check_leaves(name, "params", params, {"w": (c,), "b": (c,)})
    check_input(name, x, (..., c))
    return c


def _affine(params, x_hat):
    ndim = x_hat.ndim
    return x_hat * per_channel(params["w"], ndim) + per_channel(params["b"], ndim)


def _standardise(x, axes, eps):
    """``(x_hat, inv, mean, var)`` from ``x``'s own statistics over ``axes``.

    The statistics are taken in float32 or wider, as flax does: in float16,
    ``(x - mean)**2`` overflows to inf from ``|x - mean| = 256``, which made
    every ``x_hat`` 0 and the running variance inf. ``x_hat`` (at most
    ``sqrt(m)`` in size) comes back in ``x``'s float dtype, so the layer's
    output dtype is unchanged; ``inv``, ``mean`` and ``var`` (kept dims) stay
    wide.
    """
    xs = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = jnp.mean(xs, axis=axes, keepdims=True)
    centred = xs - mean
    var = jnp.mean(jnp.square(centred), axis=axes, keepdims=True)
    inv = jax.lax.rsqrt(var + eps)
    x_hat = centred * inv
    if jnp.issubdtype(x.dtype, jnp.floating):
        x_hat = x_hat.astype(x.dtype)
    return x_hat, inv, mean, var


def _widened(inv, dy, x_hat):
    """``dy`` and ``x_hat`` in the statistics' (wide) dtype or ``dy``'s, for
    the backward."""
    wide = jnp.result_type(inv, dy, x_hat)
    return dy.astype(wide), x_hat.astype(wide)


def _narrowed(params, dy, x_hat, dw, db, dx):
    """The backward's results in the dtypes of the plain formulas on ``dy``."""
    dparams = {"w": dw.astype(jnp.result_type(dy, x_hat)), "b": db.astype(dy.dtype)}
    return dparams, dx.astype(jnp.result_type(params["w"], x_hat, dy))


def BatchNorm(momentum: float = 0.9, eps: float = 1e-5) -> Layer:
    """Batch normalisation per channel (the last axis).

    Per example: ``(..., C) -> (..., C)``; statistics are taken over the
    batch and every other axis (the spatial axes of an image).

    Training normalises with the batch's mean and (biased) variance and
    returns the updated running values,
    ``running = momentum * running + (1 - momentum) * batch``, in the
    state's dtype; the running variance averages that same biased variance
    (as Keras and flax do; PyTorch's ``momentum`` is our ``1 - momentum``
    and its running variance is the unbiased one). Evaluation normalises
    with the running values and leaves them alone. Statistics are taken in
    float32 (or wider) also for float16 and bfloat16 inputs.
    Training needs more than one value per channel (a batch of one vector
    would normalise to the constant ``b``): fewer raise a
    :class:`~fnn.protocol.ShapeError` at trace time, as PyTorch does.

    Args:
      momentum: the weight of the old running value, in ``[0, 1]``.
      eps: added to the variance, ``> 0``.

    Returns:
      A :class:`~fnn.protocol.Layer` with parameters
      ``{"w": (C,), "b": (C,)}`` (scale and shift, starting at 1 and 0) and
      state ``{"mean": (C,), "var": (C,)}`` (starting at 0 and 1).

    Raises:
      ValueError: at construction, for a ``momentum`` outside ``[0, 1]`` or
        an ``eps <= 0``.
      ShapeError: for a training batch of one value per channel, or inputs,
        params or state that do not fit.
      TypeError: for a ``train`` that is not a bool known at trace time.

    Backward: the module's formulas, with ``m = N * (spatial size)``; in
    evaluation ``dx = w / sqrt(running_var + eps) * dy``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from fnn.normalization import BatchNorm
      >>> layer = BatchNorm(momentum=0.9)
      >>> _, params, state = layer.init(jax.random.key(0), (2,))
      >>> x = jnp.array([[0.0, 1.0], [2.0, 3.0]])  # batch mean (1, 2), var (1, 1)
      >>> y, state = layer.apply(params, state, x, train=True)
      >>> [[round(v, 4) for v in row] for row in y.tolist()]
      [[-1.0, -1.0], [1.0, 1.0]]
      >>> [round(v, 4) for v in state["mean"].tolist()]  # 0.9 * 0 + 0.1 * mean
      [0.1, 0.2]
      >>> y, _ = layer.apply(params, state, x)  # evaluation: running statistics
      >>> [[round(v, 4) for v in row] for row in y.tolist()]
      [[-0.1, 0.8], [1.9, 2.8]]
    """
    momentum = check_real("BatchNorm", "momentum", momentum, low=0.0, high=1.0)
    eps = check_real("BatchNorm", "eps", eps, low=0.0, low_open=True)
    options = [("momentum", momentum, 0.9), ("eps", eps, 1e-5)]
    name = layer_name("BatchNorm", (), options)
    init_params = _affine_init(name)

    def init(key, input_shape):
        shape, params, c = init_params(key, input_shape)
        state = {
            "mean": jnp.zeros((c,), jnp.float32),
            "var": jnp.ones((c,), jnp.float32),
        }
        return shape, params, state

    def forward(params, state, x, *, key=None, train=False):
        c = _check_affine(name, params, x)
        check_leaves(name, "state", state, {"mean": (c,), "var": (c,)})
        axes = tuple(range(x.ndim - 1))
        if check_train(name, train):
            if c and x.size // c <= 1:
                raise ShapeError(
                    f"{name}: training needs more than one value per channel to "
                    f"take a batch variance, got input of batch shape "
                    f"{tuple(x.shape)}; use a batch of 2 or more, or train=False"
                )
            x_hat, inv, mean, var = _standardise(x, axes, eps)
            # The running values keep the state's dtype: float64 batch
            # statistics (x64 on) must not turn float32 state into float64,
            # which broke fit's compiled loop (carry dtypes must match).
            new_state = {
                k: (momentum * state[k] + (1 - momentum) * v.reshape(c)).astype(
                    state[k].dtype
                )
                for k, v in (("mean", mean), ("var", var))
            }
            cache = {"batch": (x_hat, inv.reshape(c))}
        else:
            inv = jax.lax.rsqrt(state["var"] + eps)
            x_hat = (x - per_channel(state["mean"], x.ndim)) * per_channel(inv, x.ndim)
            y = _affine(params, x_hat)  # wide: x_hat is not bounded here
            if jnp.issubdtype(x.dtype, jnp.floating):
                # The dtypes of training: the float32 state must not widen y.
                x_hat = x_hat.astype(x.dtype)
                y = y.astype(jnp.result_type(x_hat, params["w"], params["b"]))
            return y, state, {"running": (x_hat, inv)}
        return _affine(params, x_hat), new_state, cache

    def backward(params, cache, dy):
        ((mode, (x_hat, inv)),) = cache.items()
        axes = tuple(range(dy.ndim - 1))
        dyw, xh = _widened(inv, dy, x_hat)
        db = jnp.sum(dyw, axis=axes)
        dw = jnp.sum(dyw * xh, axis=axes)
        gain = per_channel(params["w"] * inv, dy.ndim)
        if mode == "batch":
            m = dy.size // dy.shape[-1]
            dx = gain * (
                dyw - per_channel(db / m, dy.ndim) - xh * per_channel(dw / m, dy.ndim)
            )
        else:
            dx = gain * dyw
        return _narrowed(params, dy, x_hat, dw, db, dx)

    return Layer(init, forward, backward, name)


def LayerNorm(eps: float = 1e-5) -> Layer:
    """Layer normalisation over the last axis of each example.

    Per example: ``(..., d) -> (..., d)``, each length-``d`` vector
    normalised on its own statistics; the same in training and evaluation.

    Args:
      eps: added to the variance, ``> 0``.

    Returns:
      A :class:`~fnn.protocol.Layer` with parameters
      ``{"w": (d,), "b": (d,)}`` (scale and shift, starting at 1 and 0) and
      no state.

    Backward, per vector, with ``g = w * dy``:
      ``dx = inv * (g - mean(g) - x_hat * mean(g * x_hat))``,
      ``dw = sum(dy * x_hat)``, ``db = sum(dy)`` over the leading axes.
    """
    eps = check_real("LayerNorm", "eps", eps, low=0.0, low_open=True)
    name = layer_name("LayerNorm", (), [("eps", eps, 1e-5)])
    init_params = _affine_init(name)

    def init(key, input_shape):
        shape, params, _ = init_params(key, input_shape)
        return shape, params, ()

    def forward(params, state, x, *, key=None, train=False):
        _check_affine(name, params, x)
        check_leaves(name, "state", state, ())
        x_hat, inv, _, _ = _standardise(x, -1, eps)
        return _affine(params, x_hat), state, (x_hat, inv)

    def backward(params, cache, dy):
        x_hat, inv = cache
        axes = tuple(range(dy.ndim - 1))
        dyw, xh = _widened(inv, dy, x_hat)
        g = dyw * per_channel(params["w"], dy.ndim)
        dx = inv * (
            g
            - jnp.mean(g, axis=-1, keepdims=True)
            - xh * jnp.mean(g * xh, axis=-1, keepdims=True)
        )
        dw, db = jnp.sum(dyw * xh, axis=axes), jnp.sum(dyw, axis=axes)
        return _narrowed(params, dy, x_hat, dw, db, dx)

    return Layer(init, forward, backward, name)


def rename_legacy(tree):
    """Renames old norm-layer parameters, ``scale``/``bias`` -> ``w``/``b``.

    For trees saved before the norm layers took ``w``/``b``: every dict
    whose keys are exactly ``{"scale", "bias"}`` is renamed; everything else
    is left alone. A checkpoint saved then fails ``checkpoint.load`` against
    today's params (a ``CheckpointError`` naming the missing ``['w']``);
    load it against the old names and rename what comes back::

      old = checkpoint.load(path, legacy_like(like))
      tree = rename_legacy(old)

    Args:
      tree: a params pytree (dicts, tuples, lists, arrays).

    Returns:
      The same tree with the norm layers' keys renamed.
    """
    return _rename(tree, _LEGACY)


def legacy_like(tree):
    """The inverse of :func:`rename_legacy`: ``w``/``b`` of norm layers back
    to ``scale``/``bias``, for a ``like`` that matches an old checkpoint.

    Only dicts whose keys are exactly ``{"w", "b"}`` and whose two leaves
    are vectors of one length are renamed; a ``Dense`` or ``Conv`` layer's
    ``w`` is a matrix or larger, so it is left alone.
    """
    inverse = {v: k for k, v in _LEGACY.items()}
    return _rename(tree, inverse, vectors_only=True)


def _rename(tree, names, vectors_only=False):
    if isinstance(tree, Mapping):
        if set(tree) == set(names) and not (
            vectors_only and any(jnp.ndim(v) != 1 for v in tree.values())
        ):
            return {names[k]: v for k, v in tree.items()}
        return {k: _rename(v, names, vectors_only) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(_rename(v, names, vectors_only) for v in tree)
    return tree
