"""Property-based gradient checks: hypothesis draws layer options and shapes,
and manual backward must equal autodiff (and finite differences) for each.

Every drawn case compiles anew, so the example counts stay small; the
parametrized tables in the other test files cover each option on purpose.
"""

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
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


@SETTINGS
@given(
    width_in=st.integers(1, 4),
    width_out=st.integers(1, 4),
    batch=st.integers(2, 4),
    seed=st.integers(0, 2**16),
)
def test_residual_with_a_projection_shortcut(width_in, width_out, batch, seed):
    model = L.residual(
        L.Dense(width_out), L.Tanh, shortcut=L.Dense(width_out, use_bias=False)
    )
    assert_checks(model, (width_in,), batch, seed)


@SETTINGS
@given(
    built=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    used=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    norm=st.booleans(),
)
def test_params_for_other_sizes_never_give_an_answer(built, used, norm):
    """Params of ``Dense(f)`` (and a norm) built for width ``d`` fit only
    ``Dense(f)`` on width ``d``: every other pairing is a ShapeError."""
    d, f = built
    d2, f2 = used

    def model(features):
        tail = (L.BatchNorm(),) if norm else ()
        return L.serial(L.Dense(features), *tail)

    _, params, state = model(f).init(jax.random.key(0), (d,))
    x = np.ones((2, d2), np.float32)
    if (d, f) == (d2, f2):
        model(f2).apply(params, state, x)
    else:
        with pytest.raises(L.ShapeError):
            model(f2).apply(params, state, x)


@SETTINGS
@given(
    features=st.integers(1, 64),
    rate=st.floats(0.0, 0.99),
    integer=st.sampled_from([np.int32, np.int64, np.uint8, int]),
    real=st.sampled_from([np.float16, np.float32, np.float64, float]),
)
def test_numpy_scalar_options_build_the_same_layer(features, rate, integer, real):
    rate = real(rate)
    assume(float(rate) < 1.0)  # float16 rounds 0.99... up to 1.0
    assert L.Dense(integer(features)).name == L.Dense(features).name
    assert L.Dropout(rate).name == f"Dropout({rate!s})"  # as the number prints
