"""Bad input gets a clear Python error naming the layer and the values at
fault, at init or at trace time (under jit too). This table is the README's
table of bad inputs; keep them in step."""

import jax
import jax.numpy as jnp
import pytest

from fnn import backprop, checkpoint, losses
from fnn import layers as L
from fnn.attention import Embedding, MultiHeadAttention
from fnn.checkpoint import CheckpointError
from fnn.conv import Conv, MaxPool
from fnn.protocol import MissingKeyError, ShapeError
from fnn.recurrent import LSTM

KEY = jax.random.key(0)


def jit_apply(layer, input_shape, x, **kwargs):
    _, params, state = layer.init(KEY, input_shape)
    return jax.jit(lambda x: layer.apply(params, state, x, **kwargs))(x)


def params_of_another_model():
    f = backprop.value_and_grad(L.serial(L.Dense(4)), losses.mse)
    _, params, state = L.serial(L.Dense(5)).init(KEY, (2,))
    return jax.jit(f)(params, state, jnp.ones((3, 2)), jnp.ones((3, 4)))


def checkpoint_roundtrip(tmp_path, like, cut=None):
    path = tmp_path / "c.fnn"
    checkpoint.save(path, {"w": jnp.ones((64, 10))})
    if cut:
        path.write_bytes(path.read_bytes()[:cut])
    return checkpoint.load(path, like)


# (what goes wrong, how, the error, a regex its message matches)
BAD_INPUTS = [
    (
        "Dense given images",
        lambda _: jit_apply(L.Dense(10), (784,), jnp.ones((2, 28, 28, 1))),
        ShapeError,
        r"Dense\(10\): expected input \(\.\.\., 784\), got \(28, 28, 1\).*Flatten\(\)",
    ),
    (
        "2-D Conv given a flat vector",
        lambda _: Conv(32, (3, 3)).init(KEY, (784,)),
        ShapeError,
        r"Conv\(32, \(3, 3\)\): expected input \(H, W, C\), got \(784,\)",
    ),
    (
        "Conv given other channels than at init",
        lambda _: jit_apply(Conv(8, (3, 3)), (8, 8, 1), jnp.ones((2, 8, 8, 3))),
        ShapeError,
        r"Conv\(8, \(3, 3\)\): expected input \(H, W, 1\).*got \(8, 8, 3\)",
    ),
    (
        "pool window larger than the input",
        lambda _: MaxPool((4, 4)).init(KEY, (3, 3, 1)),
        ShapeError,
        r"MaxPool\(\(4, 4\)\): window \(4, 4\) is larger than the input",
    ),
    (
        "LSTM given the wrong feature size",
        lambda _: jit_apply(LSTM(16), (5, 10), jnp.ones((2, 5, 12))),
        ShapeError,
        r"LSTM\(16\): expected input \(T, 10\) per example, got \(5, 12\)",
    ),
    (
        "attention heads that do not divide the features",
        lambda _: MultiHeadAttention(3, 16),
        ValueError,
        r"features \(16\) must be divisible by num_heads \(3\)",
    ),
    (
        "Embedding given float ids",
        lambda _: jit_apply(Embedding(10, 4), (5,), jnp.ones((2, 5))),
        TypeError,
        r"Embedding\(10, 4\): expects integer token ids, got dtype float32",
    ),
    (
        "dropout rate outside [0, 1)",
        lambda _: L.Dropout(1.0),
        ValueError,
        r"Dropout: rate must be in \[0, 1\), got 1.0",
    ),
    (
        "a non-positive feature count",
        lambda _: L.Dense(0),
        ValueError,
        r"Dense: features must be a positive int, got 0",
    ),
    (
        "a non-positive conv feature count",
        lambda _: Conv(-1, (3, 3)),
        ValueError,
        r"Conv: features must be a positive int, got -1",
    ),
    (
        "training dropout without a key",
        lambda _: L.Dropout(0.5).apply((), (), jnp.ones((2, 3)), train=True),
        MissingKeyError,
        r"Dropout\(0.5\): needs a PRNG key in training.*key=jax.random.key\(0\)",
    ),
    (
        "labels (N, 1) for logits (N, C)",
        lambda _: jax.jit(losses.softmax_cross_entropy)(
            jnp.ones((4, 3)), jnp.zeros((4, 1), jnp.int32)
        ),
        ValueError,
        r"softmax_cross_entropy: integer labels must have shape \(4,\).*got \(4, 1\)",
    ),
    (
        "regression targets (N,) for predictions (N, 1)",
        lambda _: losses.mse(jnp.ones((4, 1)), jnp.ones((4,))),
        ValueError,
        r"mse: target shape \(4,\) does not match pred shape \(4, 1\)",
    ),
    (
        "parameters from another model",
        lambda _: params_of_another_model(),
        ValueError,
        r"params\[0\]\['b'\] has shape \(5,\), but .* needs \(4,\)",
    ),
    (
        "state of the wrong structure",
        lambda _: L.serial(L.Dense(2)).apply(
            L.serial(L.Dense(2)).init(KEY, (2,))[1], (), jnp.ones((1, 2))
        ),
        ValueError,
        r"state must be a tuple with one entry per layer \(1\)",
    ),
    (
        "a constructor passed uncalled",
        lambda _: L.serial(L.Flatten, L.Dense(2)),
        TypeError,
        r"did you mean Flatten\(\)\?",
    ),
    (
        "a checkpoint of other shapes",
        lambda tmp: checkpoint_roundtrip(tmp, {"w": jnp.ones((32, 10))}),
        CheckpointError,
        r"leaf \['w'\] has shape \(64, 10\) in .* but \(32, 10\) in like",
    ),
    (
        "a truncated checkpoint",
        lambda tmp: checkpoint_roundtrip(tmp, {"w": jnp.ones((64, 10))}, cut=100),
        CheckpointError,
        r"is truncated",
    ),
]


@pytest.mark.parametrize(
    "make, error, message", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_gets_a_clear_error(make, error, message, tmp_path):
    with pytest.raises(error, match=message):
        make(tmp_path)
