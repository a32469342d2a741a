"""Weight initialisers: JAX's own, re-exported under one roof, with names.

Each is ``init(key, shape, dtype=jnp.float32) -> array``. Xavier (Glorot)
initialisation keeps activation variance constant for tanh/sigmoid
networks; He (Kaiming) doubles it for ReLU networks, whose units are zero
half of the time.

The functions are ``jax.nn.initializers``' own, wrapped in
:class:`Initializer` only so that they read well where they show: in
``help(fnn.layers.Dense)`` (``kernel_init=lecun_normal()``), in layer names
(``Dense(3, kernel_init=he_normal())``) and in error messages. Any plain
``(key, shape, dtype) -> array`` function works wherever one is expected.

Example:
  >>> from fnn import initializers
  >>> initializers.he_normal()
  he_normal()
  >>> initializers.normal(0.5) == initializers.normal(0.5)
  True
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax.nn import initializers as _jax


class Initializer:
    """A JAX initialiser with a readable ``repr``, compared by that name.

    Args:
      fn: ``(key, shape, dtype) -> array``.
      name: how it reads: the call that builds it, e.g. ``"normal(0.5)"``.
    """

    __slots__ = ("fn", "name")

    def __init__(self, fn, name: str):
        self.fn = fn
        self.name = name

    def __call__(self, key, shape, dtype=jnp.float32):
        return self.fn(key, shape, dtype)

    def __repr__(self):
        return self.name

    def __eq__(self, other):
        if isinstance(other, Initializer):
            return self.name == other.name
        return other is self.fn

    def __hash__(self):
        return hash(self.name)


def _named(factory):
    """Wraps a ``jax.nn.initializers`` factory so that what it returns has a name."""

    @functools.wraps(factory)
    def make(*args, **kwargs):
        shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        return Initializer(
            factory(*args, **kwargs), f"{factory.__name__}({', '.join(shown)})"
        )

    return make


def draw(init, key, shape, dtype=jnp.float32):
    """Calls ``init(key, shape, dtype)``; an empty ``shape`` gives zeros.

    An array with no elements is the same whatever the draw, and the
    variance-scaling initialisers would divide by a fan-in of 0.
    """
    if 0 in tuple(shape):
        return jnp.zeros(shape, dtype)
    return init(key, shape, dtype)


constant = _named(_jax.constant)
glorot_normal = _named(_jax.glorot_normal)
glorot_uniform = _named(_jax.glorot_uniform)
he_normal = _named(_jax.he_normal)
he_uniform = _named(_jax.he_uniform)
lecun_normal = _named(_jax.lecun_normal)
lecun_uniform = _named(_jax.lecun_uniform)
normal = _named(_jax.normal)
orthogonal = _named(_jax.orthogonal)
truncated_normal = _named(_jax.truncated_normal)
uniform = _named(_jax.uniform)
variance_scaling = _named(_jax.variance_scaling)
zeros = Initializer(_jax.zeros, "zeros")
ones = Initializer(_jax.ones, "ones")

xavier_normal = glorot_normal
xavier_uniform = glorot_uniform
kaiming_normal = he_normal
kaiming_uniform = he_uniform

__all__ = [
    "Initializer",
    "constant",
    "draw",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "ones",
    "orthogonal",
    "truncated_normal",
    "uniform",
    "variance_scaling",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
]
