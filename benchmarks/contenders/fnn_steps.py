"""fnn's own training step: ``fnn.train.make_step`` with either gradient."""

from __future__ import annotations

import jax

import fnn.optim
import fnn.train
from benchmarks import workloads as wl
from benchmarks.contenders.common import device_batch, key_cycle, needs_key
from fnn import layers as nn
from fnn import losses
from fnn.conv import Conv
from fnn.pool import MaxPool


def model(workload):
    """The workload's network as an fnn ``serial`` layer."""
    if workload.kind == "cnn":
        return nn.serial(
            Conv(32, (3, 3)),
            nn.Relu,
            MaxPool((2, 2)),
            Conv(64, (3, 3)),
            nn.Relu,
            MaxPool((2, 2)),
            nn.Flatten(),
            nn.Dense(128),
            nn.Relu,
            nn.Dense(10),
        )
    act = {"relu": nn.Relu, "tanh": nn.Tanh}[workload.activation]
    body = []
    for h in workload.hidden:
        body.append(nn.Dense(h))
        if workload.bn_dropout:
            body.append(nn.BatchNorm(momentum=wl.BN_MOMENTUM, eps=wl.BN_EPS))
        body.append(act)
        if workload.bn_dropout:
            body.append(nn.Dropout(wl.DROPOUT_RATE))
    return nn.serial(*body, nn.Dense(workload.outputs))


def loss_of(workload):
    return {"xent": losses.softmax_cross_entropy, "mse": losses.mse}[workload.loss]


def jitted_step(workload, method):
    """fnn's jitted step and its first arguments ``(params, state, opt_state,
    x, y, key)``, for timing and for reading its compiled program."""
    net = model(workload)
    _, params, state = net.init(jax.random.key(0), workload.input_shape)
    optimizer = fnn.optim.adam(wl.LEARNING_RATE)
    opt_state = optimizer.init(params)
    step = fnn.train.make_step(net, loss_of(workload), optimizer, method=method)
    x, y = device_batch(workload)
    key = jax.random.key(1) if needs_key(workload) else None
    return step, (params, state, opt_state, x, y, key)


def _build(workload, method):
    step, (params, state, opt_state, x, y, _) = jitted_step(workload, method)
    keys = key_cycle() if needs_key(workload) else None

    def run():
        nonlocal params, state, opt_state
        key = next(keys) if keys is not None else None
        params, state, opt_state, loss = step(params, state, opt_state, x, y, key)
        return loss

    return run


def autodiff(workload):
    return _build(workload, "autodiff")


def manual(workload):
    return _build(workload, "manual")
