"""fnn.diagnostics: per-layer gradient norms, update ratios, flags, and dead or
saturated units, each against values computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import backprop, diagnostics
from fnn import layers as L


def test_update_ratios_are_update_norm_over_param_norm_per_layer():
    params = ({"w": jnp.array([[3.0, 4.0]]), "b": jnp.zeros(2)}, (), {"w": jnp.ones(4)})
    updates = (
        {"w": jnp.array([[0.3, 0.0]]), "b": jnp.array([0.4, 0.0])},
        (),
        {"w": jnp.full(4, 0.01)},
    )
    ratios = diagnostics.update_ratios(updates, params)
    assert list(ratios) == ["[0]", "[2]"]  # layers without parameters left out
    np.testing.assert_allclose(ratios["[0]"], 0.5 / 5.0, rtol=1e-6)
    np.testing.assert_allclose(ratios["[2]"], 0.02 / 2.0, rtol=1e-6)


def test_gradient_flags_read_norms_against_the_thresholds():
    norms = {"[0]": 1e-9, "[2]": 0.5, "[4]": 1e4, "[5]": float("nan")}
    assert diagnostics.gradient_flags(norms) == {
        "[0]": "vanishing",
        "[2]": "ok",
        "[4]": "exploding",
        "[5]": "exploding",
    }
    assert diagnostics.gradient_flags(norms, vanishing=1e-10)["[0]"] == "ok"


def _network():
    """Inputs in [0, 1]; weights set so that the answers are known."""
    model = L.serial(
        L.Dense(3),
        L.Relu,
        L.serial(L.Dense(2), backprop.manual_vjp(L.Tanh)),
        L.Dense(1),
        L.Sigmoid,
    )
    _, params, state = model.init(jax.random.key(0), (2,))
    relu_in = {  # unit 0 < 0 always (dead), unit 1 > 0, unit 2 both signs
        "w": jnp.array([[-1.0, 1.0, 1.0], [-1.0, 1.0, -1.0]]),
        "b": jnp.array([-0.1, 0.1, 0.0]),
    }
    tanh_in = {  # unit 0 huge pre-activations (saturated), unit 1 near 0
        "w": jnp.array([[0.0, 0.0], [50.0, 0.01], [0.0, 0.0]]),
        "b": jnp.array([10.0, 0.0]),
    }
    sigmoid_in = {"w": jnp.zeros((2, 1)), "b": jnp.array([8.0])}  # s(8) > 0.99
    params = (relu_in, (), (tanh_in, ()), sigmoid_in, ())
    x = jax.random.uniform(jax.random.key(1), (16, 2))
    return model, params, state, x


def test_activation_health_counts_dead_and_saturated_units():
    model, params, state, x = _network()
    health = jax.jit(lambda p, x: diagnostics.activation_health(model, p, state, x))(
        params, x
    )
    assert list(health) == ["[1]", "[2][1]", "[4]"]
    np.testing.assert_allclose(health["[1]"]["relu_dead"], 1 / 3)
    # found nested, and inside manual_vjp
    np.testing.assert_allclose(health["[2][1]"]["tanh_saturated"], 1 / 2)
    np.testing.assert_allclose(health["[4]"]["sigmoid_saturated"], 1.0)


def test_activation_health_of_a_healthy_network_is_zero():
    model, params, state, x = _network()
    params = (
        {"w": jnp.eye(2, 3), "b": jnp.full(3, 0.5)},
        (),
        ({"w": jnp.full((3, 2), 0.1), "b": jnp.zeros(2)}, ()),
        {"w": jnp.ones((2, 1)), "b": jnp.zeros(1)},
        (),
    )
    health = diagnostics.activation_health(model, params, state, x)
    assert [float(v) for v in jax.tree.leaves(health)] == [0, 0, 0]


@pytest.mark.parametrize("layer, kind", [(L.Relu, "Relu"), (L.Softmax, "Softmax")])
def test_layers_are_told_apart_by_identity_not_name(layer, kind):
    assert diagnostics.kind_of(layer) == kind
    assert diagnostics.kind_of(backprop.manual_vjp(layer)) == kind
    assert diagnostics.kind_of(layer._replace(name="Other")) == kind
    assert diagnostics.kind_of(L.Identity._replace(name=kind)) is None


def test_snapshot_gathers_the_figures_of_one_training_step():
    from fnn import losses, optim

    model, params, state, x = _network()
    y = (x[:, :1] > 0.5).astype(jnp.float32)
    opt = optim.sgd(0.1)
    loss = losses.mse
    snap = jax.jit(
        lambda p, o, x, y: diagnostics.snapshot(model, loss, opt, p, state, o, x, y)
    )(params, opt.init(params), x, y)
    _, grads = backprop.value_and_grad(model, loss)(params, state, x, y)
    assert list(snap["grad_norm"]) == ["[0]", "[2]", "[3]"]
    for key, norm in diagnostics.grad_norms(grads).items():
        np.testing.assert_allclose(snap["grad_norm"][key], norm, rtol=1e-5)
        # plain SGD: |update| / |w| = lr |g| / |w|
        w_norm = diagnostics.grad_norms(params)[key]
        np.testing.assert_allclose(
            snap["update_ratio"][key], 0.1 * norm / w_norm, rtol=1e-5
        )
    np.testing.assert_allclose(snap["activations"]["[1]"]["relu_dead"], 1 / 3)
