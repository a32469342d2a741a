"""All of fnn's layers and combinators, in one namespace.

See :mod:`fnn.protocol` for what a layer is. CamelCase names build layers
(``Dense``, ``BatchNorm``); snake_case names combine them (``serial``).
"""

from fnn.activation_layers import (
    Elu,
    Gelu,
    GeluTanh,
    Identity,
    LeakyRelu,
    LogSoftmax,
    Relu,
    Sigmoid,
    Silu,
    Softmax,
    Softplus,
    Softsign,
    Step,
    Tanh,
)
from fnn.combinators import (
    fan_in_concat,
    fan_in_sum,
    fan_out,
    parallel,
    residual,
    serial,
    summary,
)
from fnn.dense import Dense, Flatten, Reshape
from fnn.dropout import Dropout
from fnn.normalization import BatchNorm, LayerNorm
from fnn.protocol import Layer, MissingKeyError, ShapeError

__all__ = [
    "BatchNorm",
    "Dense",
    "Dropout",
    "Elu",
    "Flatten",
    "Gelu",
    "GeluTanh",
    "Identity",
    "Layer",
    "LayerNorm",
    "LeakyRelu",
    "LogSoftmax",
    "MissingKeyError",
    "Relu",
    "Reshape",
    "ShapeError",
    "Sigmoid",
    "Silu",
    "Softmax",
    "Softplus",
    "Softsign",
    "Step",
    "Tanh",
    "fan_in_concat",
    "fan_in_sum",
    "fan_out",
    "parallel",
    "residual",
    "serial",
    "summary",
]
