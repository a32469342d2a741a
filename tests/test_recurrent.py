"""Recurrent layers: backpropagation through time against jax.vjp and finite
differences (float64), forward passes against step-by-step NumPy loops with
the gate equations written out, and shape errors that name the layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import backprop, losses
from fnn import layers as L
from fnn.protocol import ShapeError
from fnn.recurrent import GRU, LSTM, SimpleRNN
from fnn.sequence import LastStep

KEY = jax.random.key(0)
N, D, H = 2, 3, 4
LAYERS = {"SimpleRNN": SimpleRNN, "LSTM": LSTM, "GRU": GRU}


def _normal(seed, shape, scale=1.0):
    """Test data from NumPy: no jax.random program to compile per shape."""
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape))


def _setup(kind, t, n=N):
    """A layer with every parameter (biases included) moved off its init."""
    layer = LAYERS[kind](H)
    out_shape, params, state = layer.init(KEY, (t, D))
    params = {
        name: p + _normal(i, p.shape, 0.3)
        for i, (name, p) in enumerate(sorted(params.items()))
    }
    return layer, out_shape, params, state, _normal(99, (n, t, D))


# ---------------------------------------------------------------------------
# NumPy references: one Python loop over time, the gates spelled out.


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _simple_rnn_reference(p, x):
    h, out = np.zeros((x.shape[0], H)), []
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ p["w_x"] + h @ p["w_h"] + p["b"])
        out.append(h)
    return np.stack(out, axis=1)


def _lstm_reference(p, x):
    w_x, w_h, b = p["w_x"], p["w_h"], p["b"]
    gate = {name: slice(k * H, (k + 1) * H) for k, name in enumerate("ifgo")}
    h, c, out = np.zeros((x.shape[0], H)), np.zeros((x.shape[0], H)), []
    for t in range(x.shape[1]):

        def pre(name, t=t, h=h):
            s = gate[name]
            return x[:, t] @ w_x[:, s] + h @ w_h[:, s] + b[s]

        i, f, o = _sigmoid(pre("i")), _sigmoid(pre("f")), _sigmoid(pre("o"))
        g = np.tanh(pre("g"))
        c = f * c + i * g
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out, axis=1)


def _gru_reference(p, x):
    """PyTorch's ``nn.GRU`` equations, with ``b_hr = b_hz = 0``."""
    w_x, w_h, b, b_hn = p["w_x"], p["w_h"], p["b"], p["b_hn"]
    r_, z_, n_ = (slice(k * H, (k + 1) * H) for k in range(3))
    h, out = np.zeros((x.shape[0], H)), []
    for t in range(x.shape[1]):
        xt = x[:, t]
        r = _sigmoid(xt @ w_x[:, r_] + b[r_] + h @ w_h[:, r_])
        z = _sigmoid(xt @ w_x[:, z_] + b[z_] + h @ w_h[:, z_])
        n = np.tanh(xt @ w_x[:, n_] + b[n_] + r * (h @ w_h[:, n_] + b_hn))
        h = (1 - z) * n + z * h
        out.append(h)
    return np.stack(out, axis=1)


REFERENCES = {
    "SimpleRNN": _simple_rnn_reference,
    "LSTM": _lstm_reference,
    "GRU": _gru_reference,
}

CASES = [(kind, t) for kind in LAYERS for t in (1, 5)]


@pytest.mark.parametrize("kind, t", CASES, ids=[f"{k}-T{t}" for k, t in CASES])
def test_backward_matches_autodiff_and_finite_differences(kind, t):
    layer, out_shape, params, state, x = _setup(kind, t)
    y, _ = jax.eval_shape(layer.apply, params, state, x)
    assert y.shape == (N, *out_shape) == (N, t, H)
    report = backprop.check_layer(layer, params, state, x)
    assert report.ok, str(report)


@pytest.mark.parametrize("kind", LAYERS)
def test_forward_matches_numpy_step_loop(kind):
    layer, _, params, state, x = _setup(kind, 5, n=3)
    y, _ = jax.jit(layer.apply)(params, state, x)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    expected = REFERENCES[kind](p, np.asarray(x, np.float64))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", LAYERS)
def test_output_at_t_ignores_later_inputs(kind):
    layer, _, params, state, x = _setup(kind, 5)
    apply = jax.jit(layer.apply)
    y, _ = apply(params, state, x)
    later = x.at[:, 3:].add(1.0)
    y_later, _ = apply(params, state, later)
    np.testing.assert_array_equal(y_later[:, :3], y[:, :3])
    assert not np.allclose(y_later[:, 3:], y[:, 3:])


def test_parameter_shapes_and_initial_biases():
    expected = {
        "SimpleRNN": {"w_x": (D, H), "w_h": (H, H), "b": (H,)},
        "LSTM": {"w_x": (D, 4 * H), "w_h": (H, 4 * H), "b": (4 * H,)},
        "GRU": {"w_x": (D, 3 * H), "w_h": (H, 3 * H), "b": (3 * H,), "b_hn": (H,)},
    }
    for kind, shapes in expected.items():
        out_shape, params, state = LAYERS[kind](H).init(KEY, (7, D))
        assert out_shape == (7, H) and state == ()
        assert {k: v.shape for k, v in params.items()} == shapes, kind
        # Each gate's (H, H) block of w_h is orthogonal.
        for blk in np.split(np.asarray(params["w_h"]), params["w_h"].shape[1] // H, 1):
            np.testing.assert_allclose(blk.T @ blk, np.eye(H), atol=1e-5)
    _, params, _ = LSTM(H).init(KEY, (7, D))
    forget_one = np.r_[np.zeros(H), np.ones(H), np.zeros(2 * H)]
    np.testing.assert_array_equal(params["b"], forget_one)


# ---------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("kind", LAYERS)
def test_init_rejects_input_that_is_not_a_sequence(kind):
    with pytest.raises(
        ShapeError, match=rf"{kind}\(4\): expected input \(T, d\) per example.*\(10,\)"
    ):
        LAYERS[kind](H).init(KEY, (10,))


@pytest.mark.parametrize("kind", LAYERS)
def test_forward_names_expected_and_actual_feature_size_under_jit(kind):
    layer = LAYERS[kind](H)
    _, params, state = layer.init(KEY, (5, D))
    with pytest.raises(
        ShapeError,
        match=rf"{kind}\(4\): expected input \(T, 3\).* got \(5, 2\)",
    ):
        jax.jit(lambda x: layer.apply(params, state, x))(jnp.ones((N, 5, 2)))
    with pytest.raises(ShapeError, match=rf"{kind}\(4\).*got \(3,\)"):
        layer.apply(params, state, jnp.ones((N, 3)))


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_non_positive_hidden_size_is_rejected(bad):
    for kind, make in LAYERS.items():
        with pytest.raises(ValueError, match=f"{kind}: hidden must be a positive int"):
            make(bad)


def test_hidden_size_given_as_a_numpy_integer_is_accepted():
    for kind, make in LAYERS.items():
        layer = make(np.int64(H))
        assert layer.name == f"{kind}({H})"
        out_shape, params, _ = layer.init(KEY, (5, D))
        assert out_shape == (5, H) and type(out_shape[1]) is int
    with pytest.raises(ValueError, match="LSTM: hidden must be a positive int"):
        LSTM(True)


@pytest.mark.parametrize("kind", LAYERS)
def test_empty_sequence_gives_empty_output_and_zero_gradients(kind):
    layer, out_shape, params, state, x = _setup(kind, 0)
    assert out_shape == (0, H)
    y, _, cache = jax.jit(layer.forward)(params, state, x)
    assert y.shape == (N, 0, H)
    dparams, dx = jax.jit(layer.backward)(params, cache, y)
    assert dx.shape == (N, 0, D)
    for g in jax.tree.leaves(dparams):
        np.testing.assert_array_equal(g, 0.0)


PARAMS_OF_ANOTHER_LAYER = [
    (LSTM(4), LSTM(8), r"LSTM\(8\): params\['w_x'\] has shape \(3, 16\)"),
    (SimpleRNN(4), GRU(4), r"GRU\(4\): params must be a dict with keys \['b', 'b_hn'"),
    (GRU(4), SimpleRNN(4), r"SimpleRNN\(4\): params must be a dict with keys \['b',"),
    (SimpleRNN(4), LSTM(1), r"LSTM\(1\): params\['w_h'\] has shape \(4, 4\)"),
]


@pytest.mark.parametrize(
    "source, target, match",
    PARAMS_OF_ANOTHER_LAYER,
    ids=[f"{s.name}-into-{t.name}" for s, t, _ in PARAMS_OF_ANOTHER_LAYER],
)
def test_params_of_another_layer_are_refused_at_trace_time(source, target, match):
    _, params, state = source.init(KEY, (5, D))
    with pytest.raises(ShapeError, match=match):
        jax.jit(lambda p, x: target.apply(p, state, x))(params, jnp.ones((N, 5, D)))


# ---------------------------------------------------------------------------
# LastStep


def test_last_step_keeps_the_last_element_and_sends_the_gradient_there():
    layer = LastStep()
    out_shape, params, state = layer.init(KEY, (4, 3))
    assert out_shape == (3,) and params == () and state == ()
    x = _normal(1, (N, 4, 3))
    y, _, cache = jax.jit(layer.forward)(params, state, x)
    np.testing.assert_array_equal(y, x[:, -1])
    dy = _normal(2, (N, 3))
    _, dx = layer.backward(params, cache, dy)
    np.testing.assert_array_equal(dx[:, -1], dy)
    np.testing.assert_array_equal(dx[:, :-1], 0.0)
    report = backprop.check_layer(layer, params, state, _normal(3, (N, 4, 2, 3)))
    assert report.ok, str(report)


def test_sequence_classifier_with_last_step_passes_backprop_check():
    model = L.serial(LSTM(H), LastStep(), L.Dense(2))
    _, params, state = model.init(KEY, (5, D))
    params = jax.tree.map(lambda p: p + _normal(7, p.shape, 0.3), params)
    x, y = _normal(8, (N, 5, D)), jnp.array([0, 1])
    report = backprop.check(model, losses.softmax_cross_entropy, params, state, x, y)
    assert report.ok, str(report)


def test_last_step_of_an_empty_or_unsequenced_input_is_an_error():
    layer = LastStep()
    with pytest.raises(ShapeError, match=r"LastStep\(\): .*T >= 1, got \(0, 3\)"):
        layer.init(KEY, (0, 3))
    with pytest.raises(ShapeError, match=r"LastStep\(\): .*got \(\)"):
        layer.init(KEY, ())
    with pytest.raises(ShapeError, match=r"LastStep\(\): .*got \(0, 3\)"):
        jax.jit(lambda x: layer.apply((), (), x))(jnp.ones((N, 0, 3)))
