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


# --------------------------------------------------------------------------
# fit(..., diagnostics=True)


def _deep_sigmoid_problem():
    """A dead ReLU layer (bias -100), then 8 sigmoid layers whose Dense
    weights are all 0.1: backward, each multiplies the gradient by
    ``4 * 0.1 * s'(z)`` with ``z`` ~ 0.2, about 0.099, so the first layers'
    gradients vanish."""
    from fnn import optim

    dense = L.Dense(4, kernel_init=jax.nn.initializers.constant(0.1))
    model = L.serial(
        L.Dense(4, bias_init=jax.nn.initializers.constant(-100.0)),
        L.Relu,
        *[dense, L.Sigmoid] * 8,
        L.Dense(1),
    )
    _, params, state = model.init(jax.random.key(0), (3,))
    x = np.random.default_rng(0).uniform(size=(32, 3)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True)
    return model, params, state, x, y, optim.sgd(0.1)


def test_fit_records_each_layers_health_and_trains_the_same():
    from fnn import losses, train

    model, params, state, x, y, opt = _deep_sigmoid_problem()

    def fit(**kw):
        return train.fit(model, losses.mse, opt, params, state, (x, y), key=0,
                         epochs=2, batch_size=16, **kw)  # fmt: skip

    plain, seen = fit(), fit(diagnostics=True)
    # The training step is the same program: bit for bit the same result.
    assert plain.history["train_loss"] == seen.history["train_loss"]
    for a, b in zip(jax.tree.leaves(plain[:3]), jax.tree.leaves(seen[:3])):
        np.testing.assert_array_equal(a, b)
    assert "grad_norm" not in plain.history
    history = seen.history
    for name in ("grad_norm", "update_ratio", "gradient_flags", "activations"):
        assert len(history[name]) == 2, name
    denses = ["[0]", *[f"[{i}]" for i in range(2, 18, 2)], "[18]"]
    assert list(history["grad_norm"][-1]) == denses  # the model's order

    # The last epoch's figures, from its parameters on the first batch.
    _, grads = backprop.value_and_grad(model, losses.mse)(
        seen.params, seen.state, x[:16], y[:16]
    )
    norms = {k: float(v) for k, v in diagnostics.grad_norms(grads).items()}
    weights = diagnostics.grad_norms(seen.params)
    for layer in denses:
        got = history["grad_norm"][-1][layer]
        np.testing.assert_allclose(got, norms[layer], rtol=1e-5, atol=1e-30)
        np.testing.assert_allclose(  # plain SGD: |u| / |w| = lr |g| / |w|
            history["update_ratio"][-1][layer], 0.1 * norms[layer] / weights[layer],
            rtol=1e-5, atol=1e-30,
        )  # fmt: skip
    # Below the dead ReLU no gradient at all; each sigmoid layer ~0.099x
    # (from [4] on: [2]'s input is the dead ReLU's 0, so only its bias learns;
    # the last layers' weights have moved a little from 0.1 in training).
    assert history["grad_norm"][-1]["[0]"] == 0.0
    for deeper, shallower in zip(denses[3:-1], denses[2:-2]):
        ratio = norms[shallower] / norms[deeper]
        assert 0.08 < ratio < 0.11, (shallower, ratio)
    flags = history["gradient_flags"][-1]
    assert flags == {k: "vanishing" if norms[k] < 1e-7 else "ok" for k in denses}
    assert flags["[0]"] == flags["[2]"] == "vanishing" and flags["[18]"] == "ok"
    assert history["activations"][-1] == {
        "[1]": {"relu_dead": 1.0},
        **{f"[{i}]": {"sigmoid_saturated": 0.0} for i in range(3, 19, 2)},
    }


def test_fit_records_diagnostics_of_a_stream_too():
    from fnn import losses, optim, train

    model = L.serial(L.Dense(3), L.Tanh, L.Dense(2))
    _, params, state = model.init(jax.random.key(0), (2,))
    x = np.full((8, 2), 100.0, np.float32)  # tanh saturated on every unit...
    y = np.zeros(8, np.int32)
    result = train.fit(model, losses.softmax_cross_entropy, optim.sgd(0.0), params,
                       state, [(x, y)] * 3, key=0, epochs=2,
                       diagnostics=True)  # fmt: skip
    health = result.history["activations"]
    # ...unless a unit's two weights cancel out: count them by hand.
    w, b = params[0]["w"], params[0]["b"]
    expected = float(np.mean(np.abs(np.tanh(100.0 * w.sum(0) + b)) >= 0.99))
    assert health == [{"[1]": {"tanh_saturated": expected}}] * 2
    assert result.history["update_ratio"][0] == {"[0]": 0.0, "[2]": 0.0}  # lr 0


def test_norms_of_float16_gradients_do_not_overflow():
    # float16 squares overflow past 65504: a norm of 600 read as inf, and
    # gradient_flags called a healthy layer "exploding".
    grads = ({"w": jnp.full((4,), 300.0, jnp.float16)}, ())
    norms = diagnostics.grad_norms(grads)
    np.testing.assert_allclose(norms["[0]"], 600.0, rtol=1e-6)
    assert diagnostics.gradient_flags(norms) == {"[0]": "ok"}
    ratios = diagnostics.update_ratios(grads, jax.tree.map(lambda g: g / 2, grads))
    np.testing.assert_allclose(ratios["[0]"], 2.0, rtol=1e-6)
    per_example = jax.tree.map(lambda g: g[None], grads)
    np.testing.assert_allclose(backprop.per_example_norms(per_example), [600.0])


def test_saturation_thresholds_are_the_slopes_the_docstring_names():
    # Sigmoid slope s (1 - s) at s = 0.01 is ~4% of its peak 1/4; tanh's
    # 1 - t**2 at t = 0.99 is ~2% of its peak 1.
    low, _ = diagnostics.SATURATION["Sigmoid"]
    np.testing.assert_allclose(low * (1 - low) / 0.25, 0.0396, rtol=1e-9)
    _, high = diagnostics.SATURATION["Tanh"]
    np.testing.assert_allclose(1 - high**2, 0.0199, rtol=1e-9)
    doc = diagnostics.activation_health.__doc__
    assert "below 4% of its peak" in doc and "below 2%" in doc
