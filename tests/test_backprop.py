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
    assert [r.path for r in report.rows] == [
        "[0]['b']",
        "[0]['w']",
        "[1]['bias']",
        "[1]['scale']",
        "[4]['b']",
        "[4]['w']",
    ]
    assert "all leaves agree" in str(report)


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


def test_per_example_grads_refuse_batch_norm():
    model, params, state, x, y = setup()
    f = backprop.per_example_grads(model, losses.softmax_cross_entropy)
    with pytest.raises(ValueError, match="couples the examples"):
        f(params, state, x, y, key=KEY)
