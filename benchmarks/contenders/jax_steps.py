"""The floor: the training step a JAX user writes by hand.

Parameters are a dict of dicts, the forward pass is plain ``jnp``/``lax``,
gradients come from ``jax.value_and_grad``, the update from ``optax.adam``,
and the whole step is one ``jax.jit`` with the parameters, the batch-norm
state and the optimizer state donated. A workload without batch norm or
dropout gets a step with neither state nor key arguments: nothing to carry.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax import lax

from benchmarks import workloads as wl
from benchmarks.contenders.common import device_batch, key_cycle, needs_key

_lecun = jax.nn.initializers.lecun_normal()


def _dense(key, d_in, d_out):
    return {"w": _lecun(key, (d_in, d_out)), "b": jnp.zeros((d_out,))}


def init(workload, key):
    """``(params, state)``: dicts keyed ``dense0``, ``bn0``, ``conv0`` ..."""
    params, state = {}, {}
    if workload.kind == "cnn":
        keys = jax.random.split(key, 4)
        for i, (k, ci, co, _) in enumerate(wl.CNN_CONVS):
            params[f"conv{i}"] = {
                "w": _lecun(keys[i], (k, k, ci, co)),
                "b": jnp.zeros((co,)),
            }
        for i, (d_in, d_out) in enumerate(wl.CNN_DENSE):
            params[f"dense{i}"] = _dense(keys[2 + i], d_in, d_out)
        return params, state
    sizes = workload.layer_sizes()
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"dense{i}"] = _dense(keys[i], d_in, d_out)
    if workload.bn_dropout:
        for i, h in enumerate(workload.hidden):
            params[f"bn{i}"] = {"scale": jnp.ones((h,)), "bias": jnp.zeros((h,))}
            state[f"bn{i}"] = {"mean": jnp.zeros((h,)), "var": jnp.ones((h,))}
    return params, state


def _batch_norm(p, s, x):
    mean = jnp.mean(x, axis=0)
    var = jnp.mean(jnp.square(x - mean), axis=0)
    y = (x - mean) * lax.rsqrt(var + wl.BN_EPS) * p["scale"] + p["bias"]
    m = wl.BN_MOMENTUM
    return y, {
        "mean": m * s["mean"] + (1 - m) * mean,
        "var": m * s["var"] + (1 - m) * var,
    }


def _dropout(key, x):
    keep = jax.random.bernoulli(key, 1.0 - wl.DROPOUT_RATE, x.shape)
    return jnp.where(keep, x / (1.0 - wl.DROPOUT_RATE), 0.0)


def _conv(p, x):
    y = lax.conv_general_dilated(
        x, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + p["b"]


def _max_pool(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def apply(workload, params, state, x, key):
    """Training-mode forward pass: ``(outputs, new_state)``."""
    if workload.kind == "cnn":
        x = _max_pool(jax.nn.relu(_conv(params["conv0"], x)))
        x = _max_pool(jax.nn.relu(_conv(params["conv1"], x)))
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(x @ params["dense0"]["w"] + params["dense0"]["b"])
        return x @ params["dense1"]["w"] + params["dense1"]["b"], state
    act = {"relu": jax.nn.relu, "tanh": jnp.tanh}[workload.activation]
    new_state = {}
    n = len(workload.hidden)
    keys = jax.random.split(key, n) if workload.bn_dropout else None
    for i in range(n):
        p = params[f"dense{i}"]
        x = x @ p["w"] + p["b"]
        if workload.bn_dropout:
            x, new_state[f"bn{i}"] = _batch_norm(params[f"bn{i}"], state[f"bn{i}"], x)
        x = act(x)
        if workload.bn_dropout:
            x = _dropout(keys[i], x)
    p = params[f"dense{n}"]
    return x @ p["w"] + p["b"], new_state


def loss_fn(workload, out, y):
    if workload.loss == "mse":
        return jnp.mean(jnp.square(out - y))
    logp = jax.nn.log_softmax(out)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))


def jitted_step(workload):
    """The plain JAX jitted step and its first arguments: ``(params, state,
    opt_state, x, y, key)`` with batch norm or dropout, else ``(params,
    opt_state, x, y)``."""
    params, state = init(workload, jax.random.key(0))
    tx = optax.adam(wl.LEARNING_RATE)
    opt_state = tx.init(params)
    x, y = device_batch(workload)

    def objective(params, state, x, y, key):
        out, new_state = apply(workload, params, state, x, key)
        return loss_fn(workload, out, y), new_state

    def full_step(params, state, opt_state, x, y, key):
        (loss, state), grads = jax.value_and_grad(objective, has_aux=True)(
            params, state, x, y, key
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    if needs_key(workload):
        step = jax.jit(full_step, donate_argnums=(0, 1, 2))
        return step, (params, state, opt_state, x, y, jax.random.key(1))

    def bare_step(params, opt_state, x, y):
        params, _, opt_state, loss = full_step(params, {}, opt_state, x, y, None)
        return params, opt_state, loss

    return jax.jit(bare_step, donate_argnums=(0, 1)), (params, opt_state, x, y)


def plain(workload):
    step, args = jitted_step(workload)
    if needs_key(workload):
        params, state, opt_state, x, y, _ = args
        keys = key_cycle()

        def run():
            nonlocal params, state, opt_state
            params, state, opt_state, loss = step(
                params, state, opt_state, x, y, next(keys)
            )
            return loss

        return run

    params, opt_state, x, y = args

    def run():
        nonlocal params, opt_state
        params, opt_state, loss = step(params, opt_state, x, y)
        return loss

    return run
