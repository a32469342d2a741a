"""Bad input gets a clear Python error naming the layer and the values at
fault, at init or at trace time (under jit too). This table is the README's
table of bad inputs; keep them in step."""

import jax
import jax.numpy as jnp
import pytest

from fnn import backprop, checkpoint, losses, optim, train
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


def cnn_init_with_batch_axis():
    model = L.serial(Conv(4, (3, 3)), L.Relu, L.Flatten(), L.Dense(2))
    return model.init(KEY, (5, 8, 8, 1))


def mlp_built_with_batch_axis_meets_data():
    model = L.serial(L.Flatten(), L.Dense(3), L.Relu, L.Dense(2))
    _, params, state = model.init(KEY, (5, 8, 8, 1))  # x.shape, not x.shape[1:]
    return jit_apply_with(model, params, state, jnp.ones((2, 8, 8, 1)))


def jit_apply_with(model, params, state, x, **kwargs):
    return jax.jit(lambda p, s, x: model.apply(p, s, x, **kwargs))(params, state, x)


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
        r"LSTM\(16\): expected input \(T, 10\), got \(5, 12\) per example",
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
        "a model called on data",
        lambda _: L.serial(L.Dense(2))(jnp.ones((1, 2))),
        TypeError,
        r"serial\(Dense\(2\)\) is not called on data: write y, state = "
        r"model.apply\(params, state, x\)",
    ),
    (
        "apply without the state",
        lambda _: L.Dense(2).apply(L.Dense(2).init(KEY, (3,))[1], jnp.ones((1, 3))),
        TypeError,
        r"Dense\(2\): apply takes \(params, state, x\); got two arguments, so "
        r"the state is missing",
    ),
    (
        "a value layer called like a constructor",
        lambda _: L.serial(L.Dense(2), L.Relu()),
        TypeError,
        r"Relu is already a layer, not a constructor: write Relu without the \(\)",
    ),
    (
        "init given x.shape, with the batch axis (a CNN)",
        lambda _: cnn_init_with_batch_axis(),
        ShapeError,
        r"serial layer \[0\] Conv.*init works for \(8, 8, 1\): did you pass "
        r"x.shape instead of x.shape\[1:\] to init\?",
    ),
    (
        "params built for x.shape meet data (an MLP)",
        lambda _: mlp_built_with_batch_axis_meets_data(),
        ShapeError,
        r"serial layer \[1\] Dense\(3\): expected input \(\.\.\., 320\), got "
        r"\(64,\).*built for input shape \(5, 8, 8, 1\): did you pass x.shape "
        r"instead of x.shape\[1:\] to init\?",
    ),
    (
        "an array given to init instead of its shape",
        lambda _: L.Dense(3).init(KEY, jnp.ones((1, 8, 8, 1))),
        ShapeError,
        r"got an array of shape \(1, 8, 8, 1\) and dtype float32; pass a shape, "
        r"e.g. x.shape\[1:\]",
    ),
    (
        "apply given another layer's params",
        lambda _: jit_apply_with(
            L.Dense(4), L.Dense(1).init(KEY, (2,))[1], (), jnp.ones((3, 2))
        ),
        ShapeError,
        r"Dense\(4\): params\['w'\] has shape \(2, 1\), but this layer needs "
        r"\(\?, 4\); were they made by another model's init\?",
    ),
    (
        "BatchNorm training on one value per channel",
        lambda _: jit_apply(
            L.serial(L.Dense(4), L.BatchNorm()), (3,), jnp.ones((1, 3)), train=True
        ),
        ShapeError,
        r"BatchNorm\(\): training needs more than one value per channel",
    ),
    (
        "an int seed where a PRNG key goes",
        lambda _: L.Dropout(0.5).apply((), (), jnp.ones((2, 3)), key=0, train=True),
        TypeError,
        r"Dropout\(0.5\): expected a PRNG key, got int 0; make one from a seed "
        r"with jax.random.key\(seed\)",
    ),
    (
        "a string where a loss goes (Keras' habit)",
        lambda _: backprop.value_and_grad(L.serial(L.Dense(3)), "mse"),
        TypeError,
        r"value_and_grad: loss must be a function loss\(pred, target\) -> scalar, "
        r"such as fnn.losses.softmax_cross_entropy, got 'mse'; for 'mse' write "
        r"fnn.losses.mse \(the function, no quotes\)",
    ),
    (
        "Keras' name of a loss",
        lambda _: train.make_step(L.Dense(3), "categorical_crossentropy", optim.adam()),
        TypeError,
        r"make_step: loss must be .* for 'categorical_crossentropy' write "
        r"fnn.losses.cross_entropy \(the function, no quotes\), on probabilities "
        r"as Keras' default; on logits \(from_logits=True\) "
        r"fnn.losses.softmax_cross_entropy",
    ),
    (
        "a string where the optimizer goes",
        lambda _: train.make_step(L.Dense(3), losses.mse, "adam"),
        TypeError,
        r"make_step: optimizer must be an optax.GradientTransformation such as "
        r"fnn.optim.adam\(1e-3\) or optax.sgd\(0.1\), got 'adam'; for 'adam' "
        r"write fnn.optim.adam\(1e-3\)",
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


def test_an_array_given_as_a_shape_is_named_not_printed():
    x = jnp.zeros((100, 8, 8, 1))
    with pytest.raises(ShapeError) as info:
        L.serial(L.Flatten(), L.Dense(3)).init(KEY, x)
    assert len(str(info.value)) < 300 and "0. 0." not in str(info.value)


def test_batch_axis_hint_only_when_it_is_the_cause():
    """A plain mismatch gets no batch-axis hint: the hint must not mislead."""
    model = L.serial(L.Flatten(), L.Dense(3))
    _, params, state = model.init(KEY, (4, 4, 1))
    with pytest.raises(ShapeError) as info:
        model.apply(params, state, jnp.ones((2, 8, 8, 1)))
    assert "x.shape" not in str(info.value)
    with pytest.raises(ShapeError) as info:
        L.serial(L.Dense(2)).init(KEY, 3)
    assert "x.shape[1:]" not in str(info.value)
