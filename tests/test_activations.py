"""Activations: hand-written derivatives against jax.grad, worked values."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import activations as A

# (id, activation, keyword options): every elementwise activation and option.
ELEMENTWISE_CASES = [
    ("identity", A.identity, {}),
    ("sigmoid", A.sigmoid, {}),
    ("tanh", A.tanh, {}),
    ("relu", A.relu, {}),
    ("leaky_relu", A.leaky_relu, {}),
    ("leaky_relu_alpha", A.leaky_relu, {"alpha": 0.2}),
    ("step", A.step, {}),
    ("softsign", A.softsign, {}),
    ("gelu_exact", A.gelu, {}),
    ("gelu_tanh", A.gelu, {"approximate": True}),
    ("silu", A.silu, {}),
    ("elu", A.elu, {}),
    ("elu_alpha", A.elu, {"alpha": 0.5}),
    ("softplus", A.softplus, {}),
]

# Zero (every kink), tiny values either side, a dense range, and far tails.
GRID = np.concatenate(
    [np.linspace(-50, 50, 101), [0.0, 1e-3, -1e-3, 1000, -1000, 5000, -5000]]
)

RNG = np.random.default_rng(0)

DTYPES = [("float32", 1e-5), ("float64", 1e-12)]


def test_cases_cover_every_elementwise_activation():
    assert {fn for _, fn, _ in ELEMENTWISE_CASES} == set(A.ELEMENTWISE)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize(
    "fn,opts", [c[1:] for c in ELEMENTWISE_CASES], ids=[c[0] for c in ELEMENTWISE_CASES]
)
def test_derivative_matches_autodiff(fn, opts, dtype, tol):
    with jax.enable_x64(dtype == "float64"):
        x = jnp.asarray(GRID, dtype=dtype)
        f = functools.partial(fn, **opts)

        @jax.jit
        def run(x):
            return f(x), A.derivative(fn)(x, **opts), jax.vmap(jax.grad(f))(x)

        y, got, want = run(x)
        assert got.shape == x.shape and got.dtype == x.dtype
        assert np.all(np.isfinite(got)), GRID[~np.isfinite(got)]
        assert np.all(np.isfinite(y)), GRID[~np.isfinite(y)]
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# (activation, options, x, f(x), f'(x)): values at and around the kinks.
KINKS = [
    (A.relu, {}, 0.0, 0.0, 0.0),
    (A.relu, {}, 2.0, 2.0, 1.0),
    (A.leaky_relu, {"alpha": 0.2}, 0.0, 0.0, 1.0),
    (A.leaky_relu, {"alpha": 0.2}, -2.0, -0.4, 0.2),
    (A.step, {}, 0.0, 0.0, 0.0),
    (A.step, {}, 1e-3, 1.0, 0.0),
    (A.elu, {"alpha": 0.5}, 0.0, 0.0, 0.5),
    (A.elu, {"alpha": 0.5}, 1000.0, 1000.0, 1.0),
    (A.softsign, {}, 0.0, 0.0, 1.0),
    (A.gelu, {}, 0.0, 0.0, 0.5),
    (A.softplus, {}, 0.0, np.log(2.0), 0.5),
]


@pytest.mark.parametrize("fn,opts,x,fx,dfx", KINKS)
def test_known_values_at_kinks(fn, opts, x, fx, dfx):
    x = jnp.float32(x)
    np.testing.assert_allclose(fn(x, **opts), fx, rtol=1e-6)
    np.testing.assert_allclose(A.derivative(fn)(x, **opts), dfx, rtol=1e-6)


def test_every_derivative_is_finite_for_large_inputs_in_16_bit_floats():
    """The tanh gelu's slope was ``0 * inf = NaN`` once ``x * x`` overflowed:
    float16 from ``|x| = 710`` (float32 from ``5e19``), though it is exactly
    1 (or 0) there, as the float32 slope at ``|x| = 50`` already is."""
    big = np.array([50.0, 710.0, 3e4, 6e4])
    for dtype in (jnp.float16, jnp.bfloat16):
        x = jnp.asarray(np.concatenate([big, -big]), dtype)
        for _, fn, opts in ELEMENTWISE_CASES:
            d = np.asarray(A.derivative(fn)(x, **opts), np.float32)
            assert np.isfinite(d).all(), (fn.__name__, opts, dtype, d)
        d = A.derivative(A.gelu)(x, approximate=True)
        assert d.dtype == dtype
        np.testing.assert_array_equal(np.asarray(d, np.float32), [1] * 4 + [0] * 4)
    x = jnp.array([1e20, -1e20, 3e38, -3e38], jnp.float32)
    d = A.derivative(A.gelu)(x, approximate=True)
    np.testing.assert_array_equal(d, [1, 0, 1, 0])


@pytest.mark.parametrize("fn", [A.softmax, A.log_softmax], ids=["softmax", "log"])
@pytest.mark.parametrize("shape", [(4,), (2, 3, 5)])
def test_softmax_jacobian_matches_autodiff(fn, shape):
    with jax.enable_x64(True):
        x = jnp.asarray(RNG.normal(size=shape) * 3)
        n = shape[-1]
        # A positive axis naming the last one is the same Jacobian.
        jac = jax.jit(A.derivative(fn), static_argnums=1)
        got, got_positive = jac(x, -1), jac(x, len(shape) - 1)
        rows = x.reshape(-1, n)
        want = jax.jit(jax.vmap(jax.jacobian(fn)))(rows).reshape(shape + (n,))
        assert got.shape == shape + (n,)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(got_positive, got)


@pytest.mark.parametrize("fn", [A.softmax, A.log_softmax], ids=["softmax", "log"])
def test_softmax_jacobian_rejects_other_axes(fn):
    with pytest.raises(ValueError, match=r"axis=0 .* shape \(2, 3\)"):
        A.derivative(fn)(jnp.ones((2, 3)), axis=0)


# (forward, vjp helper)
VJPS = [(A.softmax, A.softmax_vjp), (A.log_softmax, A.log_softmax_vjp)]


@pytest.mark.parametrize("fn,vjp", VJPS, ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_vjp_helpers_match_jax_vjp(fn, vjp, axis):
    with jax.enable_x64(True):
        x = jnp.asarray(RNG.normal(size=(3, 4, 5)) * 2)
        dy = jnp.asarray(RNG.normal(size=x.shape))

        @jax.jit
        def run(x, dy):
            y, pullback = jax.vjp(lambda x: fn(x, axis=axis), x)
            return vjp(y, dy, axis=axis), pullback(dy)[0]

        got, want = run(x, dy)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_softmax_worked_example():
    s = A.softmax(jnp.array([3.0, 0.0, 1.0]))
    np.testing.assert_array_equal(np.round(s, 2), np.array([0.84, 0.04, 0.11], "f4"))
    np.testing.assert_allclose(jnp.exp(A.log_softmax(jnp.array([3.0, 0, 1]))), s)


@pytest.mark.parametrize("c", [-100.0, 5.0, 1000.0])
def test_softmax_is_shift_invariant(c):
    # Multiples of 1/8 so that x + c is exact in float32: only softmax can err.
    x = jnp.asarray(np.round(RNG.normal(size=(3, 6)) * 8) / 8, jnp.float32)
    np.testing.assert_allclose(A.softmax(x + c), A.softmax(x), rtol=1e-6)


def test_tanh_is_a_rescaled_sigmoid():
    z = jnp.linspace(-10, 10, 201)
    np.testing.assert_allclose(A.tanh(z), 2 * A.sigmoid(2 * z) - 1, atol=1e-6)


def test_step_is_heaviside_with_step_zero_at_zero():
    x = jnp.array([-2.0, -1e-3, 0.0, 1e-3, 2.0])
    np.testing.assert_array_equal(A.step(x), [0, 0, 0, 1, 1])


def test_derivative_by_name_and_identity():
    assert A.derivative("relu") is A.derivative(A.relu)
    x = jnp.arange(3.0)
    assert A.identity(x) is x


@pytest.mark.parametrize("fn", [jnp.sin, "swish", jnp.ones(2)], ids=str)
def test_derivative_of_unknown_function_lists_known_names(fn):
    with pytest.raises(ValueError, match="not an fnn activation; known: identity"):
        A.derivative(fn)
