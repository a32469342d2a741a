"""Pieces the JAX-based contenders share: device data and dropout keys."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

# Keys drawn ahead of time, so a step's call does no host work to make one.
NUM_KEYS = 64


def device_batch(workload, layout: str = "NHWC"):
    """The workload's synthetic batch as device arrays.

    ``layout="NCHW"`` moves the channel axis of image inputs first, for
    libraries whose convolutions are channels-first.
    """
    x, y = workload.data()
    if layout == "NCHW" and x.ndim == 4:
        x = x.transpose(0, 3, 1, 2)
    return jax.device_put(jnp.asarray(x)), jax.device_put(jnp.asarray(y))


def key_cycle(seed: int = 0):
    """An endless iterator over pre-split PRNG keys (one per step)."""
    keys = jax.random.split(jax.random.key(seed), NUM_KEYS)
    return itertools.cycle([keys[i] for i in range(NUM_KEYS)])


def needs_key(workload) -> bool:
    return workload.bn_dropout
