"""Flax: a linen step, and three ways to run an NNX step.

NNX keeps arrays inside Python objects, so ``@nnx.jit`` walks the object
graph on every call; Flax's performance guide offers ``nnx.cached_partial``
(caches the walk) and a functional loop (``nnx.split`` once, ``jax.jit`` a
function that merges, steps and splits again) to cut that overhead. All
three are timed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import linen as fl
from flax import nnx

from benchmarks import workloads as wl
from benchmarks.contenders.common import device_batch, key_cycle, needs_key
from benchmarks.contenders.jax_steps import loss_fn

_ACT = {"relu": jax.nn.relu, "tanh": jnp.tanh}


# --------------------------------------------------------------------------
# linen


class _LinenNet(fl.Module):
    workload: wl.Workload

    @fl.compact
    def __call__(self, x, train: bool):
        w = self.workload
        if w.kind == "cnn":
            for _, _, co, _ in wl.CNN_CONVS:
                x = fl.Conv(co, (3, 3), padding="SAME")(x)
                x = fl.max_pool(jax.nn.relu(x), (2, 2), (2, 2))
            x = x.reshape(x.shape[0], -1)
            x = jax.nn.relu(fl.Dense(128)(x))
            return fl.Dense(10)(x)
        for h in w.hidden:
            x = fl.Dense(h)(x)
            if w.bn_dropout:
                x = fl.BatchNorm(
                    use_running_average=not train,
                    momentum=wl.BN_MOMENTUM,
                    epsilon=wl.BN_EPS,
                )(x)
            x = _ACT[w.activation](x)
            if w.bn_dropout:
                x = fl.Dropout(wl.DROPOUT_RATE, deterministic=not train)(x)
        return fl.Dense(w.outputs)(x)


def linen(workload):
    net = _LinenNet(workload)
    x, y = device_batch(workload)
    variables = net.init(jax.random.key(0), x, train=False)
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    tx = optax.adam(wl.LEARNING_RATE)
    opt_state = tx.init(params)
    keys = key_cycle() if needs_key(workload) else None

    def objective(params, stats, x, y, key):
        if workload.bn_dropout:
            out, mutated = net.apply(
                {"params": params, "batch_stats": stats},
                x,
                train=True,
                rngs={"dropout": key},
                mutable=["batch_stats"],
            )
            return loss_fn(workload, out, y), mutated["batch_stats"]
        out = net.apply({"params": params}, x, train=True)
        return loss_fn(workload, out, y), stats

    def step(params, stats, opt_state, x, y, key):
        (loss, stats), grads = jax.value_and_grad(objective, has_aux=True)(
            params, stats, x, y, key
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1, 2))

    def run():
        nonlocal params, stats, opt_state
        key = next(keys) if keys is not None else None
        params, stats, opt_state, loss = step(params, stats, opt_state, x, y, key)
        return loss

    return run


# --------------------------------------------------------------------------
# NNX


class _NnxNet(nnx.Module):
    def __init__(self, workload, rngs: nnx.Rngs):
        self.workload = workload
        self.act = _ACT[workload.activation]
        if workload.kind == "cnn":
            self.convs = nnx.List(
                [
                    nnx.Conv(ci, co, (3, 3), padding="SAME", rngs=rngs)
                    for _, ci, co, _ in wl.CNN_CONVS
                ]
            )
            self.dense = nnx.List(
                [nnx.Linear(i, o, rngs=rngs) for i, o in wl.CNN_DENSE]
            )
            return
        sizes = workload.layer_sizes()
        self.dense = nnx.List(
            [nnx.Linear(i, o, rngs=rngs) for i, o in zip(sizes[:-1], sizes[1:])]
        )
        if workload.bn_dropout:
            self.bn = nnx.List(
                [
                    nnx.BatchNorm(
                        h, momentum=wl.BN_MOMENTUM, epsilon=wl.BN_EPS, rngs=rngs
                    )
                    for h in workload.hidden
                ]
            )
            self.dropout = nnx.Dropout(wl.DROPOUT_RATE, rngs=rngs)

    def __call__(self, x):
        if self.workload.kind == "cnn":
            for conv in self.convs:
                x = nnx.max_pool(jax.nn.relu(conv(x)), (2, 2), (2, 2))
            x = x.reshape(x.shape[0], -1)
            return self.dense[1](jax.nn.relu(self.dense[0](x)))
        for i, dense in enumerate(self.dense[:-1]):
            x = dense(x)
            if self.workload.bn_dropout:
                x = self.bn[i](x)
            x = self.act(x)
            if self.workload.bn_dropout:
                x = self.dropout(x)
        return self.dense[-1](x)


def _nnx_setup(workload):
    model = _NnxNet(workload, nnx.Rngs(0, dropout=1))
    model.train()
    optimizer = nnx.Optimizer(model, optax.adam(wl.LEARNING_RATE), wrt=nnx.Param)
    return model, optimizer


def _nnx_train_step(workload):
    def train_step(model, optimizer, x, y):
        def objective(model):
            return loss_fn(workload, model(x), y)

        loss, grads = nnx.value_and_grad(objective)(model)
        optimizer.update(model, grads)
        return loss

    return train_step


def nnx_jit(workload):
    model, optimizer = _nnx_setup(workload)
    x, y = device_batch(workload)
    step = nnx.jit(_nnx_train_step(workload))

    def run():
        return step(model, optimizer, x, y)

    return run


def nnx_cached_partial(workload):
    model, optimizer = _nnx_setup(workload)
    x, y = device_batch(workload)
    step = nnx.cached_partial(nnx.jit(_nnx_train_step(workload)), model, optimizer)

    def run():
        return step(x, y)

    return run


def nnx_split_merge(workload):
    model, optimizer = _nnx_setup(workload)
    x, y = device_batch(workload)
    graphdef, state = nnx.split((model, optimizer))
    train_step = _nnx_train_step(workload)

    def _step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        loss = train_step(model, optimizer, x, y)
        return nnx.state((model, optimizer)), loss

    step = jax.jit(_step, donate_argnums=(0,))

    def run():
        nonlocal state
        state, loss = step(state, x, y)
        return loss

    return run
