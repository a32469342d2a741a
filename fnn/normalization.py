"""Normalisation layers: ``BatchNorm`` (running statistics as explicit state)
and ``LayerNorm``.

Both normalise ``x_hat = (x - mean) / sqrt(var + eps)`` and then scale and
shift, ``y = scale * x_hat + bias``. The variance is computed in two passes,
``mean((x - mean)**2)``, which cannot go negative as the one-pass
``E[x^2] - E[x]^2`` can by round-off (the NaN of google/flax#1491).

Backward, with ``m`` the number of values each statistic averages over:
  ``dbias = sum(dy)``, ``dscale = sum(dy * x_hat)``,
  ``dx = scale / sqrt(var + eps) * (dy - dbias / m - x_hat * dscale / m)``
when the statistics come from ``x`` itself (training batch norm, layer
norm), and ``dx = scale / sqrt(var + eps) * dy`` when they are constants
(batch norm in evaluation, on running statistics).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnn.protocol import Layer, ShapeError, check_shape, per_channel


def _check_eps(name, eps):
    if not eps > 0:
        raise ValueError(f"{name}: eps must be > 0, got {eps!r}")


def _check_channels(name, params, x):
    c = params["scale"].shape[0]
    if x.ndim < 2 or x.shape[-1] != c:
        raise ShapeError(
            f"{name}: expected input (batch, ..., {c}) with {c} channels last, "
            f"got {tuple(x.shape)}"
        )


def _scale_and_bias_init(name):
    def init(key, input_shape):
        input_shape = check_shape(name, input_shape, min_rank=1)
        c = input_shape[-1]
        params = {
            "scale": jnp.ones((c,), jnp.float32),
            "bias": jnp.zeros((c,), jnp.float32),
        }
        return input_shape, params, c

    return init


def BatchNorm(momentum: float = 0.9, eps: float = 1e-5) -> Layer:
    """Batch normalisation per channel (the last axis).

    Per example: ``(..., C) -> (..., C)``; statistics are taken over the
    batch and every other axis (the spatial axes of an image).

    Parameters: ``{"scale": (C,), "bias": (C,)}``.
    State: ``{"mean": (C,), "var": (C,)}``, starting at 0 and 1.

    Training normalises with the batch's mean and (biased) variance and
    returns the updated running values,
    ``running = momentum * running + (1 - momentum) * batch``;
    evaluation normalises with the running values and leaves them alone.
    """
    name = f"BatchNorm(momentum={momentum}, eps={eps})"
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{name}: momentum must be in [0, 1], got {momentum!r}")
    _check_eps(name, eps)
    init_params = _scale_and_bias_init(name)

    def init(key, input_shape):
        shape, params, c = init_params(key, input_shape)
        state = {
            "mean": jnp.zeros((c,), jnp.float32),
            "var": jnp.ones((c,), jnp.float32),
        }
        return shape, params, state

    def forward(params, state, x, *, key=None, train=False):
        _check_channels(name, params, x)
        axes = tuple(range(x.ndim - 1))
        if train:
            mean = jnp.mean(x, axis=axes)
            centred = x - per_channel(mean, x.ndim)
            var = jnp.mean(jnp.square(centred), axis=axes)
            inv = jax.lax.rsqrt(var + eps)
            x_hat = centred * per_channel(inv, x.ndim)
            new_state = {
                "mean": momentum * state["mean"] + (1 - momentum) * mean,
                "var": momentum * state["var"] + (1 - momentum) * var,
            }
            cache = {"batch": (x_hat, inv)}
        else:
            inv = jax.lax.rsqrt(state["var"] + eps)
            x_hat = (x - per_channel(state["mean"], x.ndim)) * per_channel(inv, x.ndim)
            new_state, cache = state, {"running": (x_hat, inv)}
        y = x_hat * per_channel(params["scale"], x.ndim) + per_channel(
            params["bias"], x.ndim
        )
        return y, new_state, cache

    def backward(params, cache, dy):
        ((mode, (x_hat, inv)),) = cache.items()
        axes = tuple(range(dy.ndim - 1))
        dbias = jnp.sum(dy, axis=axes)
        dscale = jnp.sum(dy * x_hat, axis=axes)
        gain = per_channel(params["scale"] * inv, dy.ndim)
        if mode == "batch":
            m = dy.size // dy.shape[-1]
            dx = gain * (
                dy
                - per_channel(dbias / m, dy.ndim)
                - x_hat * per_channel(dscale / m, dy.ndim)
            )
        else:
            dx = gain * dy
        return {"scale": dscale, "bias": dbias}, dx

    return Layer(init, forward, backward, name)


def LayerNorm(eps: float = 1e-5) -> Layer:
    """Layer normalisation over the last axis of each example.

    Per example: ``(..., d) -> (..., d)``, each length-``d`` vector
    normalised on its own statistics; the same in training and evaluation.

    Parameters: ``{"scale": (d,), "bias": (d,)}``.
    """
    name = f"LayerNorm(eps={eps})"
    _check_eps(name, eps)
    init_params = _scale_and_bias_init(name)

    def init(key, input_shape):
        shape, params, _ = init_params(key, input_shape)
        return shape, params, ()

    def forward(params, state, x, *, key=None, train=False):
        _check_channels(name, params, x)
        centred = x - jnp.mean(x, axis=-1, keepdims=True)
        inv = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + eps)
        x_hat = centred * inv
        y = x_hat * per_channel(params["scale"], x.ndim) + per_channel(
            params["bias"], x.ndim
        )
        return y, state, (x_hat, inv)

    def backward(params, cache, dy):
        x_hat, inv = cache
        axes = tuple(range(dy.ndim - 1))
        dx_hat = dy * per_channel(params["scale"], dy.ndim)
        dx = inv * (
            dx_hat
            - jnp.mean(dx_hat, axis=-1, keepdims=True)
            - x_hat * jnp.mean(dx_hat * x_hat, axis=-1, keepdims=True)
        )
        dparams = {
            "scale": jnp.sum(dy * x_hat, axis=axes),
            "bias": jnp.sum(dy, axis=axes),
        }
        return dparams, dx

    return Layer(init, forward, backward, name)
