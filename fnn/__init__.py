"""fnn: a functional neural-network library on JAX.

Models are pure functions over parameter pytrees; every layer has a
hand-written backward pass that :func:`fnn.backprop.check` proves equal to
``jax.grad``. Start with :mod:`fnn.layers`, :mod:`fnn.losses` and
:mod:`fnn.train`.
"""

from fnn import activations, backprop, initializers, layers, losses
from fnn.protocol import Layer

__version__ = "0.1.0"

__all__ = ["Layer", "activations", "backprop", "initializers", "layers", "losses"]
