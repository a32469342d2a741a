"""All of fnn's layers and combinators, in one namespace.

See :mod:`fnn.protocol` for what a layer is. CamelCase names build layers
(``Dense``, ``BatchNorm``); snake_case names combine them (``serial``).
Layers without options are values (``Relu``), the others constructors
(``Dense(10)``, ``Flatten()``).
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
from fnn.attention import MultiHeadAttention
from fnn.combinators import fan_in_concat, fan_in_sum, fan_out, parallel, serial
from fnn.conv import Conv
from fnn.conv_transpose import ConvTranspose
from fnn.dense import Dense, Flatten, Reshape
from fnn.dropout import Dropout
from fnn.embedding import Embedding, positional_encoding
from fnn.normalization import BatchNorm, LayerNorm
from fnn.pool import AvgPool, GlobalAvgPool, MaxPool
from fnn.protocol import Layer, MissingKeyError, ShapeError
from fnn.recurrent import GRU, LSTM, SimpleRNN
from fnn.remat import remat
from fnn.residual import residual
from fnn.sequence import LastStep
from fnn.summary import summary
from fnn.upsample import Upsample

__all__ = [
    "AvgPool",
    "BatchNorm",
    "Conv",
    "ConvTranspose",
    "Dense",
    "Dropout",
    "Elu",
    "Embedding",
    "Flatten",
    "GRU",
    "Gelu",
    "GeluTanh",
    "GlobalAvgPool",
    "Identity",
    "LSTM",
    "LastStep",
    "Layer",
    "LayerNorm",
    "LeakyRelu",
    "LogSoftmax",
    "MaxPool",
    "MissingKeyError",
    "MultiHeadAttention",
    "Relu",
    "Reshape",
    "ShapeError",
    "Sigmoid",
    "SimpleRNN",
    "Silu",
    "Softmax",
    "Softplus",
    "Softsign",
    "Step",
    "Tanh",
    "Upsample",
    "fan_in_concat",
    "fan_in_sum",
    "fan_out",
    "parallel",
    "positional_encoding",
    "remat",
    "residual",
    "serial",
    "summary",
]
