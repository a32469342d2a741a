"""Core layers and combinators: hand-written backward against jax.vjp and
finite differences (float64) for every option, forward values against
formulas and known answers, and shape errors that name the layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import backprop
from fnn import layers as L
from fnn.protocol import MissingKeyError, ShapeError

KEY = jax.random.key(0)

# (id, layer, per-example input shape, train)
CASES = [
    ("dense", L.Dense(3), (4,), False),
    ("dense-no-bias", L.Dense(3, use_bias=False), (4,), False),
    ("dense-sequence", L.Dense(3), (2, 4), False),
    ("flatten", L.Flatten(), (2, 3, 2), False),
    ("reshape", L.Reshape((3, -1)), (6,), False),
    ("batchnorm-2d-train", L.BatchNorm(), (5,), True),
    ("batchnorm-2d-eval", L.BatchNorm(), (5,), False),
    ("batchnorm-4d-train", L.BatchNorm(momentum=0.5), (3, 3, 2), True),
    ("batchnorm-4d-eval", L.BatchNorm(), (3, 3, 2), False),
    ("layernorm", L.LayerNorm(), (6,), False),
    ("layernorm-sequence", L.LayerNorm(), (3, 6), True),
    ("dropout-0.5-train", L.Dropout(0.5), (7,), True),
    ("dropout-0.1-train", L.Dropout(0.1), (2, 7), True),
    ("dropout-0-train", L.Dropout(0.0), (7,), True),
    ("dropout-eval", L.Dropout(0.5), (7,), False),
    ("serial", L.serial(L.Dense(5), L.Tanh, L.Dense(2)), (4,), False),
    (
        "serial-bn-dropout",
        L.serial(L.Dense(5), L.BatchNorm(), L.Relu, L.Dropout(0.3)),
        (4,),
        True,
    ),
    ("residual", L.residual(L.Dense(4), L.Tanh), (4,), False),
    ("residual-single", L.residual(L.Dense(4)), (4,), False),
    (
        "fan-out-parallel-sum",
        L.serial(L.fan_out(2), L.parallel(L.Dense(3), L.Dense(3)), L.fan_in_sum()),
        (4,),
        False,
    ),
    (
        "fan-out-parallel-concat",
        L.serial(
            L.fan_out(3),
            L.parallel(L.Dense(3), L.Dense(2), L.Identity),
            L.fan_in_concat(),
        ),
        (4,),
        False,
    ),
    ("concat-axis-0", L.serial(L.fan_out(2), L.fan_in_concat(axis=0)), (2, 3), False),
] + [
    (f"activation-{layer.name}", layer, (9,), False)
    for layer in (
        L.Identity,
        L.Sigmoid,
        L.Tanh,
        L.Relu,
        L.LeakyRelu(0.1),
        L.Step,
        L.Softsign,
        L.Softmax,
        L.LogSoftmax,
        L.Gelu,
        L.GeluTanh(),
        L.Silu,
        L.Elu(0.7),
        L.Softplus,
    )
]


@pytest.mark.parametrize(
    "layer, shape, train", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_backward_matches_autodiff_and_finite_differences(layer, shape, train):
    out_shape, params, state = layer.init(KEY, shape)
    x = jax.random.normal(jax.random.key(1), (6, *shape))
    y, _ = layer.apply(params, state, x, key=jax.random.key(2), train=train)
    assert y.shape[1:] == out_shape
    report = backprop.check_layer(
        layer, params, state, x, key=jax.random.key(2), train=train
    )
    assert report.ok, str(report)


def test_dense_with_ones_gives_known_answer():
    layer = L.Dense(3, kernel_init=jax.nn.initializers.ones)
    _, params, state = layer.init(KEY, (4,))
    y, _ = layer.apply(params, state, jnp.ones((2, 4)))
    np.testing.assert_array_equal(y, np.full((2, 3), 4.0))


def test_dense_computes_wx_plus_b():
    layer = L.Dense(2)
    _, params, state = layer.init(KEY, (3,))
    params["b"] = jnp.array([0.5, -2.0])  # init's zeros would hide a lost bias
    x = jax.random.normal(KEY, (5, 3))
    y, _ = layer.apply(params, state, x)
    x64, w64, b64 = (np.asarray(a, np.float64) for a in (x, params["w"], params["b"]))
    expected = x64 @ w64 + b64
    # A float32 sum of 3 products and a bias is off by at most a few ulps of
    # the terms' magnitudes, not of the result, which may nearly cancel.
    bound = 4 * np.finfo(np.float32).eps * (np.abs(x64) @ np.abs(w64) + np.abs(b64))
    assert np.all(np.abs(np.asarray(y, np.float64) - expected) <= bound)


def test_batchnorm_running_mean_update_rule():
    momentum = 0.8
    layer = L.BatchNorm(momentum=momentum)
    _, params, state = layer.init(KEY, (2,))
    x = jnp.array([[1.0, 10.0], [3.0, 20.0], [5.0, 60.0]])
    y, new = layer.apply(params, state, x, train=True)
    batch_mean, batch_var = x.mean(0, keepdims=True), x.var(0, keepdims=True)
    np.testing.assert_allclose(new["mean"], (1 - momentum) * batch_mean[0], rtol=1e-6)
    np.testing.assert_allclose(
        new["var"], momentum + (1 - momentum) * batch_var[0], rtol=1e-6
    )
    np.testing.assert_allclose(
        y, (x - batch_mean) / np.sqrt(batch_var + 1e-5), rtol=1e-5
    )
    # Evaluation uses the running statistics and leaves them alone.
    y_eval, same = layer.apply(params, new, x, train=False)
    mean, var = np.asarray(new["mean"]), np.asarray(new["var"])
    np.testing.assert_allclose(
        y_eval, (np.asarray(x) - mean) / np.sqrt(var + 1e-5), rtol=1e-5
    )
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), same, new))


def test_batchnorm_normalises_images_per_channel():
    layer = L.BatchNorm()
    _, params, state = layer.init(KEY, (4, 4, 3))
    x = 5.0 + 3.0 * jax.random.normal(KEY, (8, 4, 4, 3))
    y, _ = layer.apply(params, state, x, train=True)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1.0, rtol=1e-3)


def test_layernorm_normalises_each_example():
    layer = L.LayerNorm()
    _, params, state = layer.init(KEY, (16,))
    x = 2.0 + 4.0 * jax.random.normal(KEY, (3, 16))
    y, _ = layer.apply(params, state, x)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_dropout_drops_rate_and_scales_the_rest():
    rate = 0.25
    layer = L.Dropout(rate)
    x = jnp.ones((100, 100))
    y, _ = layer.apply((), (), x, key=KEY, train=True)
    dropped = float(jnp.mean(y == 0))
    assert abs(dropped - rate) < 0.02
    np.testing.assert_allclose(y[y != 0], 1 / (1 - rate), rtol=1e-6)
    y_eval, _ = layer.apply((), (), x, train=False)
    np.testing.assert_array_equal(y_eval, x)


def test_dropout_without_key_in_training_names_the_fix():
    with pytest.raises(MissingKeyError, match=r"Dropout\(0.5\).*key=jax.random.key"):
        L.Dropout(0.5).apply((), (), jnp.ones((2, 3)), train=True)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, "0.5"])
def test_dropout_rejects_rates_outside_unit_interval(rate):
    with pytest.raises(ValueError, match="Dropout"):
        L.Dropout(rate)


def test_dense_shape_error_names_layer_and_suggests_flatten():
    model = L.Dense(10)
    _, params, state = model.init(KEY, (784,))
    with pytest.raises(
        ShapeError, match=r"Dense\(10\): expected input \(\.\.\., 784\).*Flatten"
    ):
        jax.jit(lambda x: model.apply(params, state, x))(jnp.ones((2, 28, 28, 1)))


def test_serial_shape_error_says_which_layer():
    model = L.serial(L.Dense(4), L.Relu, L.Dense(3))
    _, params, state = model.init(KEY, (5,))
    with pytest.raises(ShapeError, match=r"serial layer \[0\] Dense\(4\)"):
        model.apply(params, state, jnp.ones((2, 6)))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_non_positive_feature_count_is_rejected(bad):
    with pytest.raises(ValueError, match="Dense: features must be a positive int"):
        L.Dense(bad)


def test_init_rejects_shape_with_batch_axis_mistakes():
    with pytest.raises(ShapeError, match="Dense"):
        L.Dense(3).init(KEY, 784)


def test_residual_needs_shape_preserving_inner_layers():
    with pytest.raises(ShapeError, match="keep the shape"):
        L.residual(L.Dense(3)).init(KEY, (4,))


def test_serial_rejects_uncalled_constructor():
    with pytest.raises(TypeError, match=r"did you mean Flatten\(\)"):
        L.serial(L.Flatten, L.Dense(2))


def test_value_layers_are_callable_for_convenience():
    assert L.Relu() is L.Relu


def test_fan_out_and_fan_in_sum_add_branches():
    model = L.serial(L.fan_out(3), L.fan_in_sum())
    x = jnp.arange(6.0).reshape(2, 3)
    y, _ = model.apply(*model.init(KEY, (3,))[1:], x)
    np.testing.assert_array_equal(y, 3 * x)


def test_residual_adds_the_input():
    inner = L.Dense(3)
    model = L.residual(inner)
    _, params, state = model.init(KEY, (3,))
    x = jax.random.normal(KEY, (2, 3))
    y, _ = model.apply(params, state, x)
    fx, _ = inner.apply(params, state, x)
    np.testing.assert_allclose(y, x + fx, rtol=1e-6)


def test_summary_lists_layers_shapes_and_counts():
    model = L.serial(
        L.Flatten(), L.Dense(32), L.Relu, L.residual(L.Dense(32), L.Tanh), L.Dense(10)
    )
    text = L.summary(model, (8, 8, 1))
    assert "Flatten()" in text and "(64,)" in text
    assert "Dense(32)" in text and f"{64 * 32 + 32:,}" in text
    total = (64 * 32 + 32) + (32 * 32 + 32) + (32 * 10 + 10)
    assert f"total parameters: {total:,}" in text


def test_state_of_the_wrong_structure_is_an_error_not_a_skip():
    model = L.serial(L.Dense(2), L.Relu)
    _, params, _ = model.init(KEY, (2,))
    with pytest.raises(
        ValueError, match=r"state must be a tuple with one entry per layer \(2\)"
    ):
        model.apply(params, (), jnp.ones((3, 2)))


def test_params_from_another_model_are_named():
    from fnn import backprop, losses

    a = L.serial(L.Dense(4), L.Relu, L.Dense(3))
    b = L.serial(L.Dense(5), L.Relu, L.Dense(3))
    _, params_b, state_b = b.init(KEY, (2,))
    f = backprop.value_and_grad(a, losses.softmax_cross_entropy)
    with pytest.raises(
        ValueError, match=r"params\[0\]\['b'\] has shape \(5,\).*needs \(4,\)"
    ):
        jax.jit(f)(params_b, state_b, jnp.ones((3, 2)), jnp.zeros((3,), jnp.int32))
    c = L.serial(L.Dense(4), L.Relu, L.Dense(3, use_bias=False))
    _, params_c, state_c = c.init(KEY, (2,))
    with pytest.raises(ValueError, match=r"missing \[\"\[2\]\['b'\]\"\]"):
        f(params_c, state_c, jnp.ones((3, 2)), jnp.zeros((3,), jnp.int32))
