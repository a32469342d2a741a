"""Property-based gradient checks: hypothesis draws layer options and shapes,
and manual backward must equal autodiff (and finite differences) for each.

Every drawn case compiles anew, so the example counts stay small; the
parametrized tables in the other test files cover each option on purpose.
"""

import jax
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fnn import backprop
from fnn import layers as L

SETTINGS = settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

ACTIVATIONS = [
    L.Identity,
    L.Sigmoid,
    L.Tanh,
    L.Relu,
    L.LeakyRelu(0.2),
    L.Softsign,
    L.Softmax,
    L.LogSoftmax,
    L.Gelu,
    L.Silu,
    L.Elu(),
    L.Softplus,
]


def assert_checks(layer, shape, batch, seed, train=False):
    _, params, state = layer.init(jax.random.key(seed), shape)
    x = jax.random.normal(jax.random.key(seed + 1), (batch, *shape))
    report = backprop.check_layer(
        layer, params, state, x, key=jax.random.key(seed + 2), train=train
    )
    assert report.ok, str(report)


shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


@SETTINGS
@given(
    features=st.integers(1, 5),
    shape=shapes,
    batch=st.integers(1, 4),
    use_bias=st.booleans(),
    activation=st.sampled_from(ACTIVATIONS),
    seed=st.integers(0, 2**16),
)
def test_dense_and_activation(features, shape, batch, use_bias, activation, seed):
    assert_checks(
        L.serial(L.Dense(features, use_bias=use_bias), activation), shape, batch, seed
    )


@SETTINGS
@given(
    shape=shapes,
    batch=st.integers(2, 5),
    momentum=st.floats(0.0, 1.0),
    eps=st.sampled_from([1e-5, 1e-3, 0.1]),
    train=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_batchnorm(shape, batch, momentum, eps, train, seed):
    assert_checks(L.BatchNorm(momentum, eps), shape, batch, seed, train)


@SETTINGS
@given(
    shape=shapes,
    batch=st.integers(1, 4),
    eps=st.sampled_from([1e-5, 0.1]),
    rate=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**16),
)
def test_layernorm_then_dropout(shape, batch, eps, rate, seed):
    assert_checks(
        L.serial(L.LayerNorm(eps), L.Dropout(rate)), shape, batch, seed, train=True
    )


@SETTINGS
@given(
    width=st.integers(1, 4),
    depth=st.integers(1, 3),
    branches=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_residual_of_parallel_branches(width, depth, branches, seed):
    branch = L.serial(*[L.serial(L.Dense(width), L.Tanh) for _ in range(depth)])
    block = L.serial(
        L.fan_out(branches), L.parallel(*[branch] * branches), L.fan_in_sum()
    )
    assert_checks(L.residual(block), (width,), 3, seed)


def test_property_tests_can_fail():
    """The machinery above rejects a wrong backward (a guard on the guards)."""
    good = L.Dense(3)
    bad = L.Layer(
        good.init,
        good.forward,
        lambda p, c, dy: (p, good.backward(p, c, dy)[1]),
        "ParamsNotGrads",
    )
    _, params, state = bad.init(jax.random.key(0), (2,))
    x = np.ones((2, 2), np.float32)
    assert not backprop.check_layer(bad, params, state, x).ok
