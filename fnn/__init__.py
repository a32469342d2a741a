"""fnn: a functional neural-network library on JAX.

Models are pure functions over parameter pytrees; every layer has a
hand-written backward pass that :func:`fnn.backprop.check` proves equal to
``jax.grad``. Start with :mod:`fnn.layers`, :mod:`fnn.losses` and
:mod:`fnn.train`.

Every public module is an attribute of the package, so ``import fnn`` is
enough to write ``fnn.train.fit``, ``fnn.checkpoint.save`` or
``fnn.augment.random_shift``:

>>> import fnn
>>> callable(fnn.train.fit) and callable(fnn.data.digits)
True
"""

# Each module imports what it needs itself (``from fnn import backprop``
# inside ``fnn.train`` works while this file is still running), so the order
# here breaks no cycle. The modules of the public contract are named; every
# other public module (no leading underscore) is imported below too, so
# that ``fnn.<module>`` works for all of them, whatever files come and go.
import importlib as _importlib
import pkgutil as _pkgutil

from fnn import (
    activations,
    augment,
    backprop,
    checkpoint,
    data,
    diagnostics,
    initializers,
    layers,
    losses,
    optim,
    parallel,
    protocol,
    train,
)
from fnn.protocol import Layer

# Kept equal to ``[project] version`` in pyproject.toml (tests/test_examples.py
# checks it against the file).
__version__ = "0.1.0"


def _public_modules() -> list[str]:
    return sorted(
        m.name
        for m in _pkgutil.iter_modules(__path__)
        if not m.name.startswith("_") and not m.ispkg
    )


for _name in _public_modules():
    _importlib.import_module(f"{__name__}.{_name}")
del _name

__all__ = [
    "Layer",
    "__version__",
    "activations",
    "augment",
    "backprop",
    "checkpoint",
    "data",
    "diagnostics",
    "initializers",
    "layers",
    "losses",
    "optim",
    "parallel",
    "protocol",
    "train",
]
__all__ += [m for m in _public_modules() if m not in __all__]
