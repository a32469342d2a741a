"""fnn.backprop: both gradient paths agree, under jit and vmap; check()
catches a wrong backward; manual_vjp routes autodiff through backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import backprop, losses
from fnn import layers as L
from fnn.protocol import Layer

KEY = jax.random.key(0)


def mlp():
    return L.serial(L.Dense(8), L.BatchNorm(), L.Relu, L.Dropout(0.2), L.Dense(3))


def setup(model=None, n=16):
    model = model or mlp()
    _, params, state = model.init(KEY, (4,))
    x = jax.random.normal(jax.random.key(1), (n, 4))
    y = jnp.arange(n) % 3
    return model, params, state, x, y


def test_check_passes_on_a_deep_network_with_batchnorm_and_dropout():
    model, params, state, x, y = setup()
    report = backprop.check(
        model, losses.softmax_cross_entropy, params, state, x, y, key=jax.random.key(3)
    )
    assert report.ok, str(report)
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    assert [r.path for r in report.rows] == [jax.tree_util.keystr(p) for p, _ in paths]
    assert len(report.rows) == 6
    assert "all leaves agree" in str(report)


def test_report_says_a_zero_gradient_leaf_passes_on_the_absolute_tolerance():
    # Dense -> BatchNorm: the Dense bias is subtracted out again by the batch
    # mean, so its true gradient is exactly 0 and its rel error is noise / 0.
    model = L.serial(L.Dense(3), L.BatchNorm(), L.Dense(2))
    _, params, state, x, y = setup(model)
    report = backprop.check(
        model, losses.softmax_cross_entropy, params, state, x, y % 2
    )
    bias = report.rows[0]
    assert bias.path == "[0]['b']" and bias.ok
    assert bias.manual_abs <= bias.manual_atol < bias.manual_rel  # rel: noise / 0
    assert bias.manual_passed_on == "abs"
    text = str(report)
    line = next(s for s in text.splitlines() if s.startswith("[0]['b']"))
    assert f"{bias.manual_rel:9.1e}" in line  # the large rel error is shown...
    assert "yes  manual abs, fd " in line  # ...and why the row passes
    # The atol is ATOL times the gradient's largest entry (round-off scales).
    grad = backprop.value_and_grad(model, losses.softmax_cross_entropy)
    grads = grad(params, state, x, y % 2)[1]
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads))
    np.testing.assert_allclose(bias.manual_atol, backprop.ATOL * scale, rtol=1e-4)
    atol = f"{bias.manual_atol:.3g}"
    assert f"manual-autodiff atol {atol} (= 1e-12 x max |autodiff|)" in text
    assert "rtol 1e-09" in text
    assert "autodiff-fd atol" in text and "rtol 1e-05" in text
    assert "true gradient is 0 (a bias before BatchNorm) passes on abs" in text


def test_report_names_the_failing_comparison():
    model = L.serial(L.Dense(5), L.Tanh, wrong_dense(3, 1.01))
    _, params, state, x, y = setup(model)
    report = backprop.check(model, losses.softmax_cross_entropy, params, state, x, y)
    line = next(s for s in str(report).splitlines() if s.startswith("[2]['w']"))
    assert "NO   manual FAIL, fd abs" in line  # autodiff and fd still agree
    assert "1 FAILED" in str(report)


def wrong_dense(features, factor):
    """A Dense whose backward scales dw by ``factor``: a deliberate bug."""
    good = L.Dense(features)

    def backward(params, cache, dy):
        dparams, dx = good.backward(params, cache, dy)
        return {**dparams, "w": factor * dparams["w"]}, dx

    return Layer(good.init, good.forward, backward, "WrongDense")


@pytest.mark.parametrize("factor", [1.01, 0.0, -1.0])
def test_check_catches_a_wrong_backward(factor):
    model = L.serial(L.Dense(5), L.Tanh, wrong_dense(3, factor))
    _, params, state, x, y = setup(model)
    report = backprop.check(model, losses.softmax_cross_entropy, params, state, x, y)
    assert not report.ok
    assert [r.path for r in report.failures()] == ["[2]['w']"]
    assert "1 FAILED" in str(report)


def scaled_backward(layer, fn, name):
    """``layer`` with ``fn(dparams, dx) -> (dparams, dx)`` after its backward."""
    return Layer(
        layer.init,
        layer.forward,
        lambda p, c, dy: fn(*layer.backward(p, c, dy)),
        name,
    )


def test_check_fails_a_backward_that_returns_nan():
    # A NaN error used to read as "not compared" ("-") and the row passed.
    nan_w = scaled_backward(
        L.Dense(3), lambda dp, dx: ({**dp, "w": dp["w"].at[0, 0].set(jnp.nan)}, dx),
        "NanDense",
    )  # fmt: skip
    model = L.serial(L.Dense(4), L.Tanh, nan_w)
    _, params, state, x, y = setup(model, n=6)
    report = backprop.check(model, losses.softmax_cross_entropy, params, state, x, y)
    assert [r.path for r in report.failures()] == ["[2]['w']"]
    assert report.failures()[0].manual_passed_on == "FAIL"
    assert "1 FAILED" in str(report)
    # Skipped comparisons still read "-" and pass.
    skipped = backprop.check(
        L.serial(L.Dense(2)), losses.mse, *setup(L.serial(L.Dense(2)))[1:4],
        jnp.zeros((16, 2)), finite_differences=False,
    )  # fmt: skip
    assert skipped.ok and {r.fd_passed_on for r in skipped.rows} == {"-"}


def test_check_fails_a_doubled_backward_where_every_gradient_is_tiny():
    # At a near-perfect fit every gradient is ~1e-11: a fixed atol of 1e-10
    # passed a backward off by a factor 2. The atol now scales with them.
    doubled = scaled_backward(
        L.Dense(1), lambda dp, dx: ({**dp, "w": 2 * dp["w"]}, dx), "DoubleDense"
    )
    _, params, state = doubled.init(KEY, (3,))
    params = jax.tree.map(jnp.zeros_like, params)  # pred = 0 exactly
    x = jax.random.normal(KEY, (5, 3))
    y = jnp.full((5, 1), 1e-11)
    report = backprop.check(doubled, losses.mse, params, state, x, y)
    assert [r.path for r in report.failures()] == ["['w']"]
    assert report.rows[1].manual_abs < 1e-10  # what the fixed atol let through


def test_a_report_with_no_leaf_does_not_say_they_agree():
    # check() of a model without parameters failed with a bare NumPy "Need at
    # least one array to stack."; its report must not claim agreement.
    _, params, state, x, _ = setup(L.serial(L.Tanh))
    text = str(backprop.check(L.serial(L.Tanh), losses.mse, params, state, x, x))
    assert "all leaves agree" not in text and "no leaf to compare" in text


def test_check_catches_zeros_for_a_leaf_whose_gradient_is_tiny():
    # Layer 0's gradient is ~1e-11 of layer 1's (its output is scaled by
    # 1e-11, as deep in a network whose gradients vanish): a backward giving
    # it zeros passed the fixed atol 1e-10. Round-off is ~1e-16 of the scale.
    zeros = scaled_backward(
        L.Dense(2), lambda dp, dx: (jax.tree.map(jnp.zeros_like, dp), dx), "Zeros"
    )
    model = L.serial(zeros, L.Tanh, L.Dense(2))
    _, params, state, x, y = setup(model, n=4)
    params = (params[0], (), {**params[2], "w": 1e-11 * params[2]["w"]})
    report = backprop.check(model, losses.mse, params, state, x, jnp.ones((4, 2)))
    assert [r.path for r in report.failures()] == ["[0]['b']", "[0]['w']"]
    assert all(r.manual_abs < 1e-10 for r in report.failures())  # passed before


def test_check_catches_a_backward_off_by_a_truncated_constant():
    # sqrt(2/pi) written to 7 digits in a backward is off by 5e-8 relative:
    # it passed MANUAL_RTOL = 1e-6. In float64, round-off is below 1e-13.
    off = 0.7978846 / np.sqrt(2 / np.pi)
    assert 1e-8 < off - 1 < 1e-6
    truncated = scaled_backward(L.Tanh, lambda dp, dx: (dp, off * dx), "Truncated")
    x = jax.random.normal(KEY, (3, 4))
    report = backprop.check_layer(truncated, (), (), x)
    assert [r.path for r in report.failures()] == ["['x']"]
    assert report.failures()[0].manual_rel < 1e-6  # what the old rtol passed


def test_check_layer_checks_the_float_input_beside_token_ids():
    # A tuple input with token ids: the float input's row was dropped with
    # the ids', and a dx off by 3x read "all leaves agree".
    tripled = scaled_backward(L.Dense(2), lambda dp, dx: (dp, 3 * dx), "TripleDx")
    model = L.serial(L.parallel(L.Embedding(5, 2), tripled), L.fan_in_sum())
    _, params, state = model.init(KEY, ((), (3,)))
    x = (jnp.array([0, 1, 4]), jax.random.normal(KEY, (3, 3)))
    report = backprop.check_layer(model, params, state, x)
    assert [r.path for r in report.failures()] == ["['x'][1]"]
    good = L.serial(L.parallel(L.Embedding(5, 2), L.Dense(2)), L.fan_in_sum())
    assert backprop.check_layer(good, params, state, x).ok


def test_check_layer_catches_a_wrong_input_gradient():
    good = L.Tanh
    bad = Layer(
        good.init,
        good.forward,
        lambda p, c, dy: (p, 1.001 * good.backward(p, c, dy)[1]),
        "BadTanh",
    )
    x = jax.random.normal(KEY, (3, 4))
    assert backprop.check_layer(good, (), (), x).ok
    report = backprop.check_layer(bad, (), (), x)
    assert [r.path for r in report.failures()] == ["['x']"]


@pytest.mark.parametrize("method", backprop.METHODS)
def test_jit_gives_the_same_numbers_as_eager(method):
    model, params, state, x, y = setup()
    f = backprop.value_and_grad(model, losses.softmax_cross_entropy, method)
    eager = f(params, state, x, y, key=KEY)
    jitted = jax.jit(f)(params, state, x, y, key=KEY)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_manual_and_autodiff_agree_in_float32():
    model, params, state, x, y = setup()
    auto = backprop.value_and_grad(model, losses.softmax_cross_entropy, "autodiff")
    manual = backprop.value_and_grad(model, losses.softmax_cross_entropy, "manual")
    (la, sa), ga = jax.jit(auto)(params, state, x, y, key=KEY)
    (lm, sm), gm = jax.jit(manual)(params, state, x, y, key=KEY)
    np.testing.assert_allclose(la, lm, rtol=1e-6)
    for a, b in zip(jax.tree.leaves((sa, ga)), jax.tree.leaves((sm, gm))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_manual_vjp_makes_jax_grad_use_the_hand_written_backward():
    model, params, state, x, y = setup()
    wrapped = backprop.manual_vjp(model)
    f_auto = backprop.value_and_grad(model, losses.softmax_cross_entropy, "autodiff")
    f_wrapped = backprop.value_and_grad(
        wrapped, losses.softmax_cross_entropy, "autodiff"
    )
    (_, _), g1 = jax.jit(f_auto)(params, state, x, y, key=KEY)
    (_, _), g2 = jax.jit(f_wrapped)(params, state, x, y, key=KEY)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # A wrong backward shows through jax.grad once wrapped: the wrapper really
    # calls backward instead of differentiating forward.
    bad = backprop.manual_vjp(L.serial(L.Dense(5), wrong_dense(3, 2.0)))
    _, p, s = bad.init(KEY, (4,))
    f_bad = backprop.value_and_grad(bad, losses.softmax_cross_entropy, "autodiff")
    f_ref = backprop.value_and_grad(bad, losses.softmax_cross_entropy, "manual")
    np.testing.assert_allclose(
        f_bad(p, s, x, y)[1][1]["w"], f_ref(p, s, x, y)[1][1]["w"], rtol=1e-5
    )


def test_manual_needs_a_loss_with_a_gradient():
    with pytest.raises(TypeError, match="hand-written gradient"):
        backprop.value_and_grad(mlp(), lambda p, t: jnp.mean((p - t) ** 2), "manual")


@pytest.mark.parametrize("method", backprop.METHODS)
def test_integer_params_are_refused_by_name(method):
    # autodiff failed with JAX's bare "grad requires real- or complex-valued
    # inputs"; manual silently returned float gradients for int weights.
    model = L.serial(L.Dense(2))
    _, params, state = model.init(KEY, (3,))
    params = ({**params[0], "w": jnp.zeros((3, 2), jnp.int32)},)
    f = backprop.value_and_grad(model, losses.mse, method)
    message = r"serial\(Dense\(2\)\): params\[0\]\['w'\] has dtype int32; param"
    with pytest.raises(TypeError, match=message):
        f(params, state, jnp.ones((4, 3)), jnp.ones((4, 2)))


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="method must be one of"):
        backprop.value_and_grad(mlp(), losses.mse, "numeric")


def test_grad_norms_one_per_layer_with_params():
    model, params, state, x, y = setup()
    f = backprop.value_and_grad(model, losses.softmax_cross_entropy)
    _, grads = f(params, state, x, y, key=KEY)
    norms = backprop.grad_norms(grads)
    assert list(norms) == ["[0]", "[1]", "[4]"]
    expected = np.sqrt(sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads[4])))
    np.testing.assert_allclose(norms["[4]"], expected, rtol=1e-6)


@pytest.mark.parametrize("method", backprop.METHODS)
def test_per_example_grads_match_one_example_at_a_time(method):
    model = L.serial(L.Dense(6), L.Tanh, L.Dropout(0.3), L.Dense(3))
    _, params, state, x, y = setup(model, n=4)
    f = backprop.per_example_grads(model, losses.softmax_cross_entropy, method)
    values, grads = jax.jit(f)(params, state, x, y, key=KEY)
    assert values.shape == (4,)
    keys = jax.random.split(KEY, 4)
    single = backprop.value_and_grad(model, losses.softmax_cross_entropy, method)
    for i in range(4):
        (value, _), g = single(params, state, x[i : i + 1], y[i : i + 1], key=keys[i])
        np.testing.assert_allclose(values[i], value, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(g)):
            np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-6)
    norms = backprop.per_example_norms(grads)
    expected = [
        np.sqrt(sum(float(jnp.sum(leaf[i] ** 2)) for leaf in jax.tree.leaves(grads)))
        for i in range(4)
    ]
    np.testing.assert_allclose(norms, expected, rtol=1e-5)


def test_per_example_grads_of_a_two_input_model_and_mismatched_lengths():
    # A tuple x (one array per input) failed with "tuple indices must be
    # integers"; x and y of different lengths with a bare vmap error.
    model = L.serial(L.parallel(L.Dense(2), L.Dense(2)), L.fan_in_sum())
    _, params, state = model.init(KEY, ((3,), (1,)))
    x = (jax.random.normal(KEY, (3, 3)), jnp.arange(3.0)[:, None])
    y = jnp.ones((3, 2))
    f = backprop.per_example_grads(model, losses.mse)
    values, grads = f(params, state, x, y)
    single = backprop.value_and_grad(model, losses.mse)
    for i in range(3):
        one = jax.tree.map(lambda a, i=i: a[i : i + 1], (x, y))
        (value, _), g = single(params, state, *one)
        np.testing.assert_allclose(values[i], value, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(g)):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"per_example_grads: x\[0\] has 3 "
                       r"examples but y has 2"):  # fmt: skip
        f(params, state, x, y[:2])


def test_per_example_grads_refuse_batch_norm():
    model, params, state, x, y = setup()
    f = backprop.per_example_grads(model, losses.softmax_cross_entropy)
    with pytest.raises(ValueError, match="couples the examples"):
        f(params, state, x, y, key=KEY)


# --------------------------------------------------------------------------
# Regularizers


def test_regularizer_manual_and_autodiff_agree_and_match_differences():
    model = L.serial(L.Dense(5), L.LayerNorm(), L.Tanh, L.Dense(3))
    _, params, state, x, y = setup(model, n=8)
    reg = losses.penalty(l1=0.01, l2=0.1, weights_only=True)
    loss = losses.softmax_cross_entropy
    auto = backprop.value_and_grad(model, loss, "autodiff", regularizer=reg)
    manual = backprop.value_and_grad(model, loss, "manual", regularizer=reg)
    (la, _), ga = jax.jit(auto)(params, state, x, y)
    (lm, _), gm = jax.jit(manual)(params, state, x, y)
    plain = float(loss(model.apply(params, state, x, train=True)[0], y))
    np.testing.assert_allclose([la, lm], plain + float(reg(params)), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gm)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # The penalty moved the kernels' gradients, not the biases' (weights_only).
    (_, _), g0 = jax.jit(backprop.value_and_grad(model, loss, "manual"))(
        params, state, x, y
    )
    np.testing.assert_allclose(
        gm[3]["w"] - g0[3]["w"], reg.grad(params)[3]["w"], rtol=1e-4, atol=1e-7
    )
    np.testing.assert_array_equal(gm[3]["b"], g0[3]["b"])
    report = backprop.check(model, loss, params, state, x, y, regularizer=reg)
    assert report.ok, str(report)


def test_manual_regularizer_needs_a_grad_and_must_be_callable():
    with pytest.raises(TypeError, match=r"regularizer.grad\(params\)"):
        backprop.value_and_grad(mlp(), losses.mse, "manual", regularizer=lambda p: 0.0)
    with pytest.raises(TypeError, match="regularizer must be a callable"):
        backprop.value_and_grad(mlp(), losses.mse, regularizer=0.1)
    # autodiff differentiates a plain callable itself
    backprop.value_and_grad(mlp(), losses.mse, regularizer=lambda p: 0.0)


# --------------------------------------------------------------------------
# A final Softmax (or Sigmoid) layer under a loss that applies it again


@pytest.mark.parametrize(
    "model, loss",
    [
        (L.serial(L.Dense(3), L.Softmax), losses.softmax_cross_entropy),
        (L.serial(L.serial(L.Dense(3), L.Softmax)), losses.softmax_cross_entropy),
        (
            L.serial(L.Dense(3), backprop.manual_vjp(L.Softmax)),
            losses.softmax_cross_entropy,
        ),
        (L.serial(L.Dense(1), L.Sigmoid), losses.sigmoid_binary_cross_entropy),
    ],
    ids=["softmax", "nested", "manual_vjp", "sigmoid"],
)
@pytest.mark.parametrize("method", backprop.METHODS)
def test_a_model_ending_in_its_loss_link_is_refused(model, loss, method):
    with pytest.raises(ValueError, match="applied twice"):
        backprop.value_and_grad(model, loss, method)


def test_softmax_then_cross_entropy_is_the_softmax_cross_entropy_of_the_logits():
    logits_model = L.serial(L.Dense(3))
    _, params, state, x, y = setup(logits_model, n=6)
    prob_model = L.serial(L.Dense(3), L.Softmax)
    prob_params = (params[0], ())
    want = backprop.value_and_grad(logits_model, losses.softmax_cross_entropy)(
        params, state, x, y
    )
    for method in backprop.METHODS:
        f = backprop.value_and_grad(prob_model, losses.cross_entropy, method)
        (value, _), grads = f(prob_params, ((), ()), x, y)
        np.testing.assert_allclose(value, want[0][0], rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(want[1][0])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # A Softmax anywhere but last is fine.
    backprop.value_and_grad(
        L.serial(L.Softmax, L.Dense(3)), losses.softmax_cross_entropy
    )


@pytest.mark.parametrize("method", ["autodiff", "manual"])
def test_a_per_example_loss_is_refused_with_what_to_write(method):
    # optax's losses return one value per example; jax.grad used to fail
    # with a bare "Gradient only defined for scalar-output functions".
    import optax

    def per_example(pred, y):
        return optax.softmax_cross_entropy_with_integer_labels(pred, y)

    per_example.grad = losses.softmax_cross_entropy.grad  # for "manual"
    model = L.serial(L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    f = backprop.value_and_grad(model, per_example, method)
    with pytest.raises(ValueError, match=r"returned shape \(4,\), not a scalar.*"
                       r"jnp.mean\(loss\(p, y\)\)"):  # fmt: skip
        f(params, state, jnp.ones((4, 2)), jnp.array([0, 1, 2, 0]))


def test_another_models_params_raise_shape_error_through_value_and_grad():
    # apply raised ShapeError, value_and_grad a plain ValueError: an
    # `except ShapeError` missed one of the two for the same mistake.
    from fnn.protocol import ShapeError

    model = L.serial(L.Dense(4))
    _, params, state = L.serial(L.Dense(5)).init(KEY, (2,))
    f = backprop.value_and_grad(model, losses.mse)
    x, y = jnp.ones((3, 2)), jnp.ones((3, 4))
    with pytest.raises(ShapeError, match=r"params\[0\]\['b'\] has shape \(5,\)"):
        f(params, state, x, y)
    with pytest.raises(ShapeError):
        model.apply(params, state, x)


def test_a_report_without_finite_differences_leaves_their_columns_out():
    # Their columns held only nan and "-", and pushed rows past 80 columns.
    model = L.serial(L.Dense(4), L.Tanh, L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    x, y = jnp.ones((4, 2)), jnp.array([0, 1, 2, 0])
    loss = losses.softmax_cross_entropy
    report = backprop.check(model, loss, params, state, x, y, finite_differences=False)
    text = str(report)
    assert "autodiff-fd" not in text and "nan" not in text, text
    assert max(map(len, text.splitlines())) <= 80, text
    assert "[0]['w']  (2, 4)" in text and "yes  manual abs" in text
