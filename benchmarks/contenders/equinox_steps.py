"""Equinox: modules called per example under ``jax.vmap``, ``eqx.filter_jit``.

Equinox layers take one example; the batch is a ``jax.vmap`` (with
``axis_name="batch"`` for ``BatchNorm``, whose statistics are a collective
over that axis). Convolutions are channels-first, so the CNN's batch is
stored ``NCHW``. The step donates the model and the optimizer state
(``donate="all-except-first"``: the first argument carries the batch and key).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from benchmarks import workloads as wl
from benchmarks.contenders.common import device_batch, key_cycle, needs_key
from benchmarks.contenders.jax_steps import loss_fn

_ACT = {"relu": jax.nn.relu, "tanh": jnp.tanh}


class _Net(eqx.Module):
    layers: tuple

    def __call__(self, x, state, key):
        """One example ``x``; returns ``(output, state)``."""
        keys = iter(jax.random.split(key, 8)) if key is not None else None
        for layer in self.layers:
            if isinstance(layer, eqx.nn.BatchNorm):
                x, state = layer(x, state)
            elif isinstance(layer, eqx.nn.Dropout):
                x = layer(x, key=next(keys))
            else:
                x = layer(x)
        return x, state


def _layers(workload, key):
    keys = iter(jax.random.split(key, 8))
    if workload.kind == "cnn":
        out = []
        for _, ci, co, _ in wl.CNN_CONVS:
            out += [
                eqx.nn.Conv2d(ci, co, 3, padding="SAME", key=next(keys)),
                eqx.nn.Lambda(jax.nn.relu),
                eqx.nn.MaxPool2d(2, 2),
            ]
        (i0, o0), (i1, o1) = wl.CNN_DENSE
        return out + [
            eqx.nn.Lambda(jnp.ravel),
            eqx.nn.Linear(i0, o0, key=next(keys)),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Linear(i1, o1, key=next(keys)),
        ]
    sizes = workload.layer_sizes()
    out = []
    for d_in, d_out in zip(sizes[:-2], sizes[1:-1]):
        out.append(eqx.nn.Linear(d_in, d_out, key=next(keys)))
        if workload.bn_dropout:
            out.append(
                eqx.nn.BatchNorm(
                    d_out,
                    axis_name="batch",
                    momentum=wl.BN_MOMENTUM,
                    eps=wl.BN_EPS,
                    mode="batch",
                )
            )
        out.append(eqx.nn.Lambda(_ACT[workload.activation]))
        if workload.bn_dropout:
            out.append(eqx.nn.Dropout(wl.DROPOUT_RATE))
    return out + [eqx.nn.Linear(sizes[-2], sizes[-1], key=next(keys))]


def filter_jit(workload):
    model, state = eqx.nn.make_with_state(_Net)(
        tuple(_layers(workload, jax.random.key(0)))
    )
    tx = optax.adam(wl.LEARNING_RATE)
    opt_state = tx.init(eqx.filter(model, eqx.is_array))
    x, y = device_batch(workload, layout="NCHW")
    keys = key_cycle() if needs_key(workload) else None
    batched = jax.vmap(
        lambda m, xi, s, k: m(xi, s, k),
        in_axes=(None, 0, None, 0 if keys is not None else None),
        out_axes=(0, None),
        axis_name="batch",
    )

    @eqx.filter_jit(donate="all-except-first")
    def step(batch, model, state, opt_state):
        x, y, key = batch
        example_keys = jax.random.split(key, len(x)) if key is not None else None

        def objective(model, state):
            out, state = batched(model, x, state, example_keys)
            return loss_fn(workload, out, y), state

        (loss, state), grads = eqx.filter_value_and_grad(objective, has_aux=True)(
            model, state
        )
        updates, opt_state = tx.update(
            grads, opt_state, eqx.filter(model, eqx.is_array)
        )
        return eqx.apply_updates(model, updates), state, opt_state, loss

    def run():
        nonlocal model, state, opt_state
        key = next(keys) if keys is not None else None
        model, state, opt_state, loss = step((x, y, key), model, state, opt_state)
        return loss

    return run
