"""The contenders: one training step per library, all of the same math.

A contender is a builder ``build(workload) -> step`` where ``step()`` runs
one training step (forward, backward, Adam update) on the workload's
resident batch, keeps the new parameters and optimizer state for the next
call, and returns what the caller blocks on (the loss; every output of one
jitted call comes from one XLA execution, so they are ready together).

A builder raises :class:`Unavailable` when its library cannot be imported
or cannot build the workload; the runner prints the reason and goes on.
``run.py`` builds and times each contender module's steps in a process of
its own (``benchmarks/worker.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

Step = Callable[[], Any]


class Unavailable(Exception):
    """A contender that cannot run here (library missing, layer missing)."""


# name -> (module under benchmarks.contenders, builder function, family).
# Families group contenders for the targets: "fnn", "jax" (the floor), "peer".
CONTENDERS = {
    "fnn-autodiff": ("fnn_steps", "autodiff", "fnn"),
    "fnn-manual": ("fnn_steps", "manual", "fnn"),
    "jax": ("jax_steps", "plain", "jax"),
    "flax-linen": ("flax_steps", "linen", "peer"),
    "flax-nnx": ("flax_steps", "nnx_jit", "peer"),
    "flax-nnx-cached": ("flax_steps", "nnx_cached_partial", "peer"),
    "flax-nnx-split": ("flax_steps", "nnx_split_merge", "peer"),
    "equinox": ("equinox_steps", "filter_jit", "peer"),
    "torch": ("torch_steps", "eager", "peer"),
    "torch-1thread": ("torch_steps", "eager_1thread", "peer"),
    "torch-channels-last": ("torch_steps", "eager_channels_last", "peer"),
}

# What each contender is, for the legend under the table.
DESCRIPTIONS = {
    "fnn-autodiff": "fnn.train.make_step(method='autodiff'), fnn.optim.adam",
    "fnn-manual": "fnn.train.make_step(method='manual'): hand-written backward",
    "jax": "plain JAX: dict params, jax.value_and_grad, optax.adam, jax.jit "
    "with donated params/state/opt state (the floor)",
    "flax-linen": "flax.linen module, jax.jit step with donation, optax.adam",
    "flax-nnx": "flax.nnx module + nnx.Optimizer, @nnx.jit step",
    "flax-nnx-cached": "as flax-nnx, step wrapped in nnx.cached_partial",
    "flax-nnx-split": "flax.nnx, nnx.split once; jax.jit step merges/splits "
    "inside (functional loop), donated state",
    "equinox": "equinox modules (vmapped per example), eqx.filter_jit step "
    "with donation, optax.adam",
    "torch": "PyTorch eager, torch.optim.Adam, set_num_threads(cores); "
    "images NCHW-contiguous",
    "torch-1thread": "as torch, set_num_threads(1) (see torch_steps.py: OpenMP "
    "barriers on a busy machine)",
    "torch-channels-last": "as torch, model and images in "
    "torch.channels_last memory format (oneDNN's fast CPU path; cnn only)",
}


def builder(name: str) -> Callable[..., Step]:
    """The builder of contender ``name``; raises :class:`Unavailable` if its
    module (and so its library) cannot be imported."""
    module_name, function, _ = CONTENDERS[name]
    try:
        module = importlib.import_module(f"benchmarks.contenders.{module_name}")
    except ImportError as e:
        raise Unavailable(f"cannot import {e.name or e}") from None
    return getattr(module, function)


def family(name: str) -> str:
    return CONTENDERS[name][2]
