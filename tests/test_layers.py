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
        "residual-dense-shortcut",
        L.residual(L.Dense(3), L.Tanh, L.Dense(2), shortcut=L.Dense(2)),
        (4,),
        False,
    ),
    (
        "residual-bn-shortcut-train",
        L.residual(L.Dense(3), L.BatchNorm(), shortcut=L.serial(L.Dense(3), L.Tanh)),
        (2, 4),
        True,
    ),
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
        L.GeluTanh,
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


@pytest.mark.parametrize("make", [L.BatchNorm, L.LayerNorm], ids=["batch", "layer"])
def test_norm_statistics_of_float16_inputs_do_not_overflow(make):
    """``(x - mean)**2`` in float16 overflowed to inf from ``|x - mean| = 256``:
    every output collapsed to ``b`` (0) and BatchNorm's running variance
    turned inf. The statistics are now float32; the dtypes stay float16."""
    layer = make()
    _, params, state = layer.init(KEY, (2,))
    params = jax.tree.map(lambda p: p.astype(jnp.float16), params)
    x64 = np.array([[0.0, -300.0], [900.0, 300.0]])  # per column and per row
    x = jnp.asarray(x64, jnp.float16)
    axis = 0 if make is L.BatchNorm else -1
    mean, var = x64.mean(axis, keepdims=True), x64.var(axis, keepdims=True)
    y, new_state, cache = layer.forward(params, state, x, train=True)
    assert y.dtype == jnp.float16
    np.testing.assert_allclose(y, (x64 - mean) / np.sqrt(var + 1e-5), rtol=2e-3)
    if make is L.BatchNorm:
        assert new_state["var"].dtype == jnp.float32
        np.testing.assert_allclose(new_state["var"], 0.9 + 0.1 * var[0], rtol=1e-6)
    dy = jnp.asarray([[1.0, -2.0], [0.5, 3.0]], jnp.float16)
    dparams, dx = layer.backward(params, cache, dy)
    params32 = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    _, vjp = jax.vjp(
        lambda p, x: layer.apply(p, state, x, train=True)[0],
        params32,
        jnp.asarray(x64, jnp.float32),
    )
    want_dparams, want_dx = vjp(dy.astype(jnp.float32))
    assert dx.dtype == jnp.float16 and dparams["w"].dtype == jnp.float16
    np.testing.assert_allclose(dx, want_dx, rtol=2e-3, atol=1e-5)
    for k in ("w", "b"):
        np.testing.assert_allclose(dparams[k], want_dparams[k], rtol=2e-3, atol=1e-3)


def test_batchnorm_running_statistics_keep_the_state_dtype():
    """With x64 on, float64 batches turned the float32 running statistics
    into float64: ``fit``'s compiled epoch loop then failed with a bare
    'carry input and carry output must have equal types'."""
    layer = L.BatchNorm()
    _, params, state = layer.init(KEY, (2,))
    with jax.enable_x64(True):
        x = jnp.asarray([[1.0, 2.0], [3.0, 6.0]], jnp.float64)
        y, new = layer.apply(params, state, x, train=True)
        assert y.dtype == jnp.float64
        assert {a.dtype for a in jax.tree.leaves(new)} == {np.dtype(np.float32)}
        np.testing.assert_allclose(new["mean"], [0.2, 0.4], rtol=1e-6)
        np.testing.assert_allclose(new["var"], [1.0, 1.3], rtol=1e-6)


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


def test_train_flag_must_be_a_bool_known_at_trace_time():
    """``train="eval"`` (truthy) silently trained: batch statistics and
    dropout; a jit argument ``train`` was a bare TracerBoolConversionError."""
    model = L.serial(L.BatchNorm(), L.Dropout(0.5))
    _, params, state = model.init(KEY, (2,))
    x = jnp.asarray([[1.0, 2.0], [3.0, 5.0]])
    for bad in ("eval", None, 1):
        with pytest.raises(TypeError, match=r"BatchNorm\(\): train must be True or"):
            model.apply(params, state, x, key=KEY, train=bad)
        with pytest.raises(TypeError, match=r"Dropout\(0.5\): train must be True or"):
            L.Dropout(0.5).apply((), (), x, key=KEY, train=bad)
    with pytest.raises(TypeError, match=r"static_argnames='train'"):
        jax.jit(lambda t: model.apply(params, state, x, key=KEY, train=t))(True)
    y, new = model.apply(params, state, x, train=np.bool_(False))  # NumPy bools do
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-5), rtol=1e-6)
    assert new[0] is state[0]


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


def test_calling_a_layer_says_what_to_write_instead():
    with pytest.raises(TypeError, match=r"Relu is already a layer.*write Relu without"):
        L.Relu()
    with pytest.raises(TypeError, match=r"Dense\(3\) is already a layer"):
        L.Dense(3)()
    model = L.serial(L.Dense(3))
    with pytest.raises(TypeError, match=r"write y, state = model.apply\(params, state"):
        model(jnp.ones((2, 4)))


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


# --------------------------------------------------------------------------
# Parameters that do not fit are refused at trace time (issue 12).


def apply_jitted(layer, params, state, x, **kwargs):
    return jax.jit(lambda p, s, x: layer.apply(p, s, x, **kwargs))(params, state, x)


def test_dense_refuses_another_dense_s_params():
    _, params_1, _ = L.Dense(1).init(KEY, (2,))
    with pytest.raises(ShapeError, match=r"Dense\(4\): params\['w'\] has shape \(2, 1"):
        apply_jitted(L.Dense(4), params_1, (), jnp.ones((3, 2)))
    model = L.serial(L.Dense(4), L.Relu)
    _, params, state = L.serial(L.Dense(1), L.Relu).init(KEY, (2,))
    with pytest.raises(ShapeError, match=r"serial layer \[0\] Dense\(4\): params"):
        model.apply(params, state, jnp.ones((3, 2)))


def test_batchnorm_refuses_state_of_other_channels():
    _, params, _ = L.BatchNorm().init(KEY, (4,))
    _, _, state_1 = L.BatchNorm().init(KEY, (1,))
    for train in (False, True):
        with pytest.raises(ShapeError, match=r"state\['mean'\] has shape \(1,\)"):
            apply_jitted(L.BatchNorm(), params, state_1, jnp.ones((3, 4)), train=train)


def test_extra_or_missing_keys_are_refused():
    _, params, _ = L.Dense(2).init(KEY, (3,))
    x = jnp.ones((2, 3))
    with pytest.raises(ShapeError, match=r"keys \['b', 'w'\], got a dict with keys"):
        L.Dense(2).apply({**params, "extra": jnp.ones(2)}, (), x)
    with pytest.raises(ShapeError, match=r"keys \['w'\], got"):
        L.Dense(2, use_bias=False).apply(params, (), x)
    _, ln, _ = L.LayerNorm().init(KEY, (3,))
    with pytest.raises(ShapeError, match=r"LayerNorm\(\): params must be a dict"):
        L.LayerNorm().apply({**ln, "scale": ln["w"]}, (), x)


def test_parameter_free_layers_refuse_params():
    _, params, _ = L.Dense(2).init(KEY, (2,))
    for layer in (L.Relu, L.Softmax, L.Flatten(), L.Dropout(0.5), L.fan_out(2)):
        with pytest.raises(ShapeError, match=r"has no params, got a dict"):
            layer.apply(params, (), jnp.ones((2, 2)))


def test_checks_cost_nothing_under_jit():
    """The checks read shapes only: the compiled program is the same."""
    model = L.serial(L.Dense(3), L.BatchNorm(), L.Relu)
    _, params, state = model.init(KEY, (4,))

    def bare(params, state, x):  # the same maths, without any layer
        y = x @ params[0]["w"] + params[0]["b"][None]
        mean, var = y.mean(0), y.var(0)
        y = (y - mean[None]) * jax.lax.rsqrt(var + 1e-5)[None]
        return jax.nn.relu(y * params[1]["w"][None] + params[1]["b"][None])

    x = jnp.ones((5, 4))
    ours = jax.jit(lambda p, s, x: model.apply(p, s, x, train=True)[0])
    text = ours.lower(params, state, x).as_text()
    assert "assert" not in text.lower() and "custom_call" not in text
    np.testing.assert_allclose(
        ours(params, state, x), jax.jit(bare)(params, state, x), atol=1e-5
    )


# --------------------------------------------------------------------------
# Options as NumPy scalars; edge sizes (issue 12).


def test_numpy_scalar_options_are_accepted_as_python_numbers():
    assert L.Dense(np.int64(10)).name == "Dense(10)"
    assert L.Dropout(np.float32(0.5)).name == "Dropout(0.5)"
    assert L.Dropout(np.float32(0.1)).name == "Dropout(0.1)"  # not 0.10000000149
    assert L.BatchNorm(np.float64(0.5)).name == "BatchNorm(momentum=0.5)"
    assert L.LeakyRelu(np.float32(0.25)).name == "LeakyRelu(alpha=0.25)"
    assert L.fan_out(np.int32(2)).name == "fan_out(2)"
    assert L.Reshape(np.int64(6)).name == "Reshape((6,))"
    out, params, _ = L.Dense(3).init(KEY, (np.int64(4),))
    assert out == (3,) and type(out[0]) is int and params["w"].shape == (4, 3)


@pytest.mark.parametrize(
    "make",
    [
        lambda: L.Dropout(True),
        lambda: L.Dense(np.bool_(True)),
        lambda: L.BatchNorm(eps=float("inf")),
        lambda: L.BatchNorm(momentum=float("nan")),
        lambda: L.LeakyRelu("0.1"),
        lambda: L.Reshape((2, -1, -1)),
        lambda: L.Reshape((2.0, 3)),
        lambda: L.fan_in_concat(axis=1.0),
    ],
)
def test_bad_options_are_refused_at_construction(make):
    with pytest.raises(ValueError):
        make()


def test_zero_width_input_to_dense_gives_the_bias():
    layer = L.Dense(3, bias_init=jax.nn.initializers.ones)
    out, params, state = layer.init(KEY, (0,))
    assert out == (3,) and params["w"].shape == (0, 3)
    y, _ = layer.apply(params, state, jnp.ones((2, 0)))
    np.testing.assert_array_equal(y, np.ones((2, 3)))  # the empty sum, plus b
    _, cache = layer.forward(params, state, jnp.ones((2, 0)))[::2], jnp.ones((2, 0))
    dparams, dx = layer.backward(params, cache, jnp.ones((2, 3)))
    assert dparams["w"].shape == (0, 3) and dx.shape == (2, 0)
    np.testing.assert_array_equal(dparams["b"], [2.0, 2.0, 2.0])


def test_dense_draws_kernel_and_bias_from_different_keys():
    normal = jax.nn.initializers.normal(1.0)
    layer = L.Dense(3, kernel_init=normal, bias_init=normal)
    _, params, _ = layer.init(KEY, (1,))
    w, b = np.asarray(params["w"]), np.asarray(params["b"])
    assert not np.any(np.isclose(w[0], b)), (w, b)


@pytest.mark.parametrize("shape", [(1, 4), (1, 1, 1, 3), (0, 4)])
def test_batchnorm_training_needs_two_values_per_channel(shape):
    layer = L.BatchNorm()
    _, params, state = layer.init(KEY, shape[1:])
    with pytest.raises(ShapeError, match=r"more than one value per channel"):
        apply_jitted(layer, params, state, jnp.ones(shape), train=True)
    y, _ = layer.apply(params, state, jnp.ones(shape), train=False)  # eval is fine
    assert y.shape == shape


def test_layernorm_on_an_empty_last_axis_gives_an_empty_answer():
    layer = L.LayerNorm()
    _, params, state = layer.init(KEY, (3, 0))
    y, _ = layer.apply(params, state, jnp.ones((2, 3, 0)))
    assert y.shape == (2, 3, 0)


def test_reshape_and_flatten_edge_shapes():
    assert L.Flatten().init(KEY, ())[0] == (1,)
    y, _ = L.Flatten().apply((), (), jnp.arange(3.0))  # a batch of scalars
    assert y.shape == (3, 1)
    scalar = r"Flatten\(\): expected input \(\.\.\.\), got a scalar"
    with pytest.raises(ShapeError, match=scalar):
        L.Flatten().apply((), (), jnp.float32(1.0))
    with pytest.raises(ShapeError, match=r"Reshape\(\(4, -1\)\): cannot reshape \(6"):
        L.Reshape((4, -1)).init(KEY, (6,))
    with pytest.raises(ShapeError, match=r"Reshape\(\(4,\)\): cannot reshape \(5,\)"):
        L.Reshape(4).apply((), (), jnp.ones((2, 5)))


# --------------------------------------------------------------------------
# residual with a projection shortcut (issue 15)


def test_residual_shortcut_adds_the_projection():
    model = L.residual(L.Dense(3), L.Tanh, shortcut=L.Dense(3, use_bias=False))
    assert model.name == "residual(Dense(3), Tanh, shortcut=Dense(3, use_bias=False))"
    out, params, state = model.init(KEY, (5,))
    assert out == (3,) and set(params) == {"layers", "shortcut"}
    x = jax.random.normal(KEY, (4, 5))
    y, _ = model.apply(params, state, x)
    f = jnp.tanh(x @ params["layers"][0]["w"] + params["layers"][0]["b"][None])
    expected = f + x @ params["shortcut"]["w"]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    text = L.summary(model, (5,))
    assert "shortcut: Dense(3, use_bias=False)" in text
    assert "total parameters: 33" in text
    with pytest.raises(ShapeError, match=r"but the shortcut to \(2,\)"):
        L.residual(L.Dense(3), shortcut=L.Dense(2)).init(KEY, (5,))


def test_residual_conv_shortcut_passes_backprop_check_in_float64():
    from fnn import losses
    from fnn.conv import Conv

    model = L.serial(
        L.residual(
            Conv(4, (3, 3), strides=2),
            L.BatchNorm(),
            L.Relu,
            shortcut=Conv(4, (1, 1), strides=2),
        ),
        L.Flatten(),
        L.Dense(2),
    )
    _, params, state = model.init(KEY, (4, 4, 2))
    x = jax.random.normal(jax.random.key(1), (3, 4, 4, 2))
    y = jnp.array([0, 1, 1])
    report = backprop.check(
        model, losses.softmax_cross_entropy, params, state, x, y, train=True
    )
    assert report.ok, str(report)
    assert "['shortcut']" in str(report)


# --------------------------------------------------------------------------
# Names and defaults read well (issues 13, 16)


def test_names_show_every_non_default_option_the_same_way():
    from fnn import initializers

    assert L.Dense(256).name == "Dense(256)"
    assert L.Dense(256, use_bias=False).name == "Dense(256, use_bias=False)"
    he = L.Dense(8, kernel_init=initializers.he_normal())
    assert he.name == "Dense(8, kernel_init=he_normal())"
    assert L.Dense(8, bias_init=jax.nn.initializers.zeros).name == "Dense(8)"
    assert L.BatchNorm().name == "BatchNorm()"
    assert L.BatchNorm(eps=1e-3).name == "BatchNorm(eps=0.001)"
    assert L.LayerNorm().name == "LayerNorm()"
    assert L.LeakyRelu().name == "LeakyRelu()" and L.Elu(0.5).name == "Elu(alpha=0.5)"
    assert L.fan_in_concat().name == "fan_in_concat()"
    assert L.fan_in_concat(axis=0).name == "fan_in_concat(axis=0)"
    text = L.summary(L.serial(L.Dense(4, use_bias=False), L.GeluTanh), (3,))
    assert "Dense(4, use_bias=False)" in text and "GeluTanh" in text


def test_help_shows_readable_defaults():
    import inspect

    signature = str(inspect.signature(L.Dense))
    assert "kernel_init=lecun_normal(), bias_init=zeros" in signature
    assert "<function" not in signature


def test_summary_does_not_parse_names():
    """A user layer named like a block is not expanded; blocks are by kind."""
    fake = L.Layer(*L.Dense(2)[:3], name="serial(Dense(2))")
    text = L.summary(L.serial(fake), (3,))
    assert "\n  serial(Dense(2))  " in text  # its own row, under its own name
    assert L.serial(L.Relu).kind == "serial" and L.residual(L.Relu).kind == "residual"


def test_norm_layers_name_their_parameters_w_and_b(tmp_path):
    from fnn import checkpoint
    from fnn.normalization import legacy_like, rename_legacy

    model = L.serial(L.Dense(3), L.BatchNorm(), L.LayerNorm())
    _, params, _ = model.init(KEY, (2,))
    assert [sorted(p) for p in params] == [["b", "w"]] * 3
    # A checkpoint saved with the old names loads through legacy_like.
    old = legacy_like(params)
    assert sorted(old[0]) == ["b", "w"] and sorted(old[1]) == ["bias", "scale"]
    checkpoint.save(tmp_path / "old.fnn", old)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(tmp_path / "old.fnn", params)
    back = rename_legacy(checkpoint.load(tmp_path / "old.fnn", legacy_like(params)))
    assert jax.tree.structure(back) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, back, params)


def test_combinators_refuse_to_broadcast_at_trace_time():
    skip = L.residual(L.Flatten())  # keeps (4,), but not (2, 2)
    _, params, state = skip.init(KEY, (4,))
    with pytest.raises(ShapeError, match=r"give \(3, 4\) but the input \(3, 2, 2\)"):
        skip.apply(params, state, jnp.ones((3, 2, 2)))
    concat = L.fan_in_concat()
    with pytest.raises(ShapeError, match=r"inputs differ off the concat axis"):
        concat.apply((), (), (jnp.ones((2, 3, 1)), jnp.ones((2, 4, 1))))
    with pytest.raises(ShapeError, match=r"different batch sizes"):
        concat.apply((), (), (jnp.ones((2, 3)), jnp.ones((5, 3))))


def test_a_list_given_as_input_is_named():
    _, params, state = L.Dense(2).init(KEY, (3,))
    with pytest.raises(TypeError, match=r"expected input as an array, got a list"):
        L.Dense(2).apply(params, state, [[1.0, 2.0, 3.0]])


def test_activation_layers_pass_a_none_cotangent_through():
    """``None`` is the cotangent of inputs without a gradient (token ids, a
    bool mask): an ``Identity`` beside them must not multiply it."""
    ids = jnp.array([[1, 2]])
    for layer in (L.Identity, L.Relu, L.Softmax):
        _, _, cache = layer.forward((), (), ids)
        assert layer.backward((), cache, None) == ((), None)


def test_evaluate_refuses_another_model_s_parameters():
    from fnn import losses, train

    model = L.serial(L.Dense(4), L.BatchNorm(), L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    other = L.serial(L.Dense(4), L.BatchNorm(), L.Dense(1)).init(KEY, (2,))[1]
    x, y = jnp.ones((5, 2)), jnp.zeros((5,), jnp.int32)
    for p in (other, (params[0], params[1], {**params[2], "extra": params[2]["b"]})):
        with pytest.raises(ShapeError, match=r"serial layer \[2\] Dense\(3\): params"):
            train.evaluate(model, losses.softmax_cross_entropy, p, state, x, y)
    bad_state = (state[0], {"mean": state[1]["mean"][:1], "var": state[1]["var"][:1]})
    bad_state += state[2:]
    with pytest.raises(ShapeError, match=r"BatchNorm\(\): state\['mean'\] has shape"):
        train.evaluate(model, losses.softmax_cross_entropy, params, bad_state, x, y)


@pytest.mark.parametrize("value", [2, None, "no", 0.5])
def test_use_bias_is_a_bool_or_0_or_1(value):
    # Dense(use_bias=2) used to build a biased layer without a word.
    with pytest.raises(
        TypeError, match=f"Dense: use_bias must be True or False, got {value!r}"
    ):
        L.Dense(3, use_bias=value)
    assert L.Dense(3, use_bias=0).name == "Dense(3, use_bias=False)"
    assert L.Dense(3, use_bias=np.bool_(True)).name == "Dense(3)"
