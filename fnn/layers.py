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
from fnn.attention import Embedding, MultiHeadAttention, positional_encoding
from fnn.combinators import (
    fan_in_concat,
    fan_in_sum,
    fan_out,
    parallel,
    residual,
    serial,
    summary,
)
from fnn.conv import AvgPool, Conv, MaxPool
from fnn.dense import Dense, Flatten, Reshape
from fnn.dropout import Dropout
from fnn.normalization import BatchNorm, LayerNorm
from fnn.protocol import Layer, MissingKeyError, ShapeError
from fnn.recurrent import GRU, LSTM, SimpleRNN

__all__ = [
    "AvgPool",
    "BatchNorm",
    "Conv",
    "Embedding",
    "GRU",
    "LSTM",
    "MaxPool",
    "MultiHeadAttention",
    "SimpleRNN",
    "positional_encoding",
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
