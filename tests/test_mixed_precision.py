"""float16 compute with dynamic loss scaling (``fnn.optim.dynamic_loss_scale``).

The model is linear and every number in it is a small multiple of a power of
two, so float16 and float32 compute it exactly: any gradient difference
comes from float16's range, which is what loss scaling is for.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fnn import backprop, loss_scaling, losses, optim, train
from fnn import layers as L

N = 64
TINY = 2.0**-20  # the residual: dL/dpred = 2 * TINY / N = 2**-25, below float16's


def linear_problem():
    """A 2-layer linear net and a target 2**-20 off its prediction."""
    model = L.serial(L.Dense(3), L.Dense(1))
    _, params, state = model.init(jax.random.key(0), (4,))
    # Multiples of 1/8 and 1/4: products and sums stay exact in float16.
    params = jax.tree.map(lambda p: jnp.round(p * 8) / 8, params)
    params[0]["b"] = jnp.array([0.25, -0.5, 0.125])
    params[1]["b"] = jnp.array([0.5])
    u = jax.random.uniform(jax.random.key(1), (N, 4), minval=-1, maxval=1)
    x = jnp.round(u * 4) / 4
    pred, _ = model.apply(params, state, x)
    return model, params, state, x, pred - TINY


@pytest.mark.parametrize("method", ["autodiff", "manual"])
def test_loss_scale_rescues_float16_gradients_from_underflow(method):
    model, params, state, x, y = linear_problem()
    g32 = backprop.value_and_grad(model, losses.mse, method)(params, state, x, y)[1]
    f16 = jax.jit(
        backprop.value_and_grad(model, losses.mse, method, compute_dtype=jnp.float16)
    )
    (loss16, _), g16 = f16(params, state, x, y)
    (scaled_loss, _), scaled = f16(params, state, x, y, loss_scale=2.0**15)

    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g32))
    # Unscaled, every float16 cotangent flushes to zero: training would stall.
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(g16))
    # Scaled by 2**15, the float16 gradients are float32's, bit for bit.
    for got, want in zip(jax.tree.leaves(scaled), jax.tree.leaves(g32)):
        assert got.dtype == jnp.float32
        np.testing.assert_array_equal(got / 2.0**15, want)
    assert float(scaled_loss) == float(loss16)  # the loss comes back unscaled


def _scaled_step(via, model, opt, method):
    """The float16 step, by ``make_step`` or straight from ``optim.gradient_step``."""
    if via == "make_step":
        return train.make_step(
            model, losses.mse, opt, method=method, compute_dtype=jnp.float16
        )
    grad_fn = backprop.value_and_grad(
        model, losses.mse, method, compute_dtype=jnp.float16
    )
    return jax.jit(optim.gradient_step(grad_fn, opt))


@pytest.mark.parametrize("via", ["make_step", "gradient_step"])
@pytest.mark.parametrize("method", ["autodiff", "manual"])
def test_dynamic_scale_skips_overflowing_steps_then_grows(method, via):
    model, params, state, x, y = linear_problem()
    # Plain SGD moves the parameters by ~1e-7 a step, so the residual, and
    # with it which scales overflow, stays put for the five steps.
    opt = optim.dynamic_loss_scale(
        optim.sgd(1.0), initial_scale=2.0**50, growth_interval=2, factor=2.0**10
    )
    step = _scaled_step(via, model, opt, method)
    opt_state = opt.init(params)
    trail = []
    for _ in range(5):
        before = jax.tree.map(np.asarray, params)
        params, state, opt_state, _ = step(params, state, opt_state, x, y, None)
        changed = any(
            np.any(np.asarray(a) != b)
            for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(before))
        )
        trail.append((float(opt_state.scale), changed))
    # At 2**50 and 2**40 the bias gradient, 64 * 2**-25 * scale, overflows
    # float16 (max 65504): skipped, scale / 2**10. At 2**30 it fits: two
    # finite steps, then the scale grows, overflows again and backs off.
    assert trail == [
        (2.0**40, False),
        (2.0**30, False),
        (2.0**30, True),
        (2.0**40, True),
        (2.0**30, False),
    ]
    assert int(opt_state.inner.total_notfinite) == 3


@pytest.mark.parametrize("method", ["autodiff", "manual"])
def test_loss_scaling_in_float32_follows_the_plain_optimizer_exactly(method):
    model, params, state, x, y = linear_problem()
    y = y + 0.3  # ordinary-size gradients
    plain = train.make_step(model, losses.mse, optim.adam(1e-2), method=method)
    scaled_opt = optim.dynamic_loss_scale(optim.adam(1e-2), growth_interval=3)
    scaled = train.make_step(model, losses.mse, scaled_opt, method=method)
    p1, s1, o1 = params, state, optim.adam(1e-2).init(params)
    p2, s2, o2 = jax.tree.map(jnp.copy, params), state, scaled_opt.init(params)
    for _ in range(7):
        p1, s1, o1, l1 = plain(p1, s1, o1, x, y, None)
        p2, s2, o2, l2 = scaled(p2, s2, o2, x, y, None)
        assert float(l1) == float(l2)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_array_equal(a, b)  # powers of two scale exactly
    assert float(o2.scale) == 2.0**15 * 4  # grew after steps 3 and 6


def test_fit_trains_in_float16_with_dynamic_loss_scaling():
    model = L.serial(L.Dense(16), L.Tanh, L.Dense(2))
    _, params, state = model.init(jax.random.key(0), (2,))
    x = jax.random.normal(jax.random.key(1), (256, 2))
    y = (x[:, 0] * x[:, 1] > 0).astype(jnp.int32)
    opt = optim.dynamic_loss_scale(optim.adam(3e-2))
    result = train.fit(
        model,
        losses.softmax_cross_entropy,
        opt,
        params,
        state,
        (x, y),
        key=jax.random.key(2),
        epochs=20,
        batch_size=32,
        compute_dtype=jnp.float16,
        verbose=False,
    )
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(result.params))
    losses_ = result.history["train_loss"]
    assert np.all(np.isfinite(losses_)) and losses_[-1] < 0.5 * losses_[0]
    scales, skipped = result.history["loss_scale"], result.history["skipped_steps"]
    assert len(scales) == len(skipped) == 20 and scales[-1] >= 1.0
    assert skipped == sorted(skipped)  # a running count
    # 160 steps at the default 2**15, growth every 2,000: no step overflowed.
    assert scales[-1] == 2.0**15 and skipped[-1] == 0


def test_dynamic_loss_scale_rejects_bad_options_and_a_nested_place():
    with pytest.raises(ValueError, match="factor > 1"):
        optim.dynamic_loss_scale(optim.sgd(0.1), factor=1.0)
    model, params, state, x, y = linear_problem()
    # Inside a chain the step could not find the scale, while the wrapper
    # would still divide the gradients by it: 2**15 times too small.
    nested = optax.chain(
        optax.clip_by_global_norm(1.0), optim.dynamic_loss_scale(optim.sgd(0.1))
    )
    step = train.make_step(model, losses.mse, nested)
    with pytest.raises(ValueError, match="outermost"):
        step(params, state, nested.init(params), x, y, None)
    # Wrapped twice, the loss was multiplied by the outer scale only and the
    # gradients divided by both: every step 2**15 times too small.
    twice = optim.dynamic_loss_scale(optim.dynamic_loss_scale(optim.sgd(0.1)))
    with pytest.raises(ValueError, match="wraps another dynamic_loss_scale"):
        optim.gradient_step(None, twice)(params, state, twice.init(params), x, y, None)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_gradients_are_unscaled_in_float32(dtype):
    # Half-precision master weights give half-precision gradients. The scale
    # was cast to their dtype: 2**16 is inf in float16 (g / inf = 0, a finite
    # zero step, and the scale kept growing), and 3000 rounds to 3008 in
    # bfloat16 (every step 0.27% short).
    params = {"w": jnp.ones(3, dtype)}
    grads = jnp.array([0.3, -0.7, 2.0**-10], jnp.float32)
    for scale in (2.0**16, 3000.0):
        opt = optim.dynamic_loss_scale(optax.sgd(1.0), initial_scale=scale)
        scaled = {"w": (grads * scale).astype(dtype)}
        updates, _ = opt.update(scaled, opt.init(params), params)
        want = (-(scaled["w"].astype(jnp.float32) / scale)).astype(dtype)
        assert updates["w"].dtype == jnp.dtype(dtype)
        np.testing.assert_array_equal(updates["w"], want)
        assert np.all(np.asarray(updates["w"], np.float32) != 0)


def test_the_scale_stops_growing_before_it_breaks():
    # Past 2**126 the float32 division flushed the gradients to 0 on CPU,
    # and one doubling more the scale was inf: every step overflowed and was
    # skipped, with the scale stuck at inf / 2 = inf, for ever.
    opt = optim.dynamic_loss_scale(
        optax.sgd(1.0), initial_scale=2.0**125, growth_interval=1
    )
    params = {"w": jnp.ones(4)}
    state = opt.init(params)
    grads = jnp.array([1e-3, -2e-3, 3e-3, 0.5])
    for _ in range(3):
        scaled = {"w": grads * state.scale}
        updates, state = opt.update(scaled, state, params)
        np.testing.assert_allclose(updates["w"], -grads, rtol=1e-6)
    assert float(state.scale) == loss_scaling.MAX_SCALE == 2.0**126
    assert int(state.inner.total_notfinite) == 0


def test_a_skipped_step_leaves_scale_below_one_and_optimizer_state_alone():
    # An initial scale below 1 "shrank" to 1 on an overflow: it grew.
    opt = optim.dynamic_loss_scale(optim.adam(0.1), initial_scale=0.5)
    params = {"w": jnp.ones(2)}
    state = opt.init(params)
    _, state = opt.update({"w": jnp.array([0.5, -0.5])}, state, params)
    inner_before = jax.tree.map(np.asarray, state.inner.inner_state)
    updates, state = opt.update({"w": jnp.array([jnp.nan, 1.0])}, state, params)
    assert float(state.scale) == 0.5
    np.testing.assert_array_equal(updates["w"], [0.0, 0.0])
    # Adam's count and moments as they were: the skipped step never happened.
    jax.tree.map(np.testing.assert_array_equal, state.inner.inner_state, inner_before)


@pytest.mark.parametrize(
    "options, error, fragment",
    [
        # inf was accepted: loss * inf overflowed every step, none ever trained.
        ({"initial_scale": float("inf")}, ValueError, "0 < initial_scale <= 2"),
        ({"factor": float("inf")}, ValueError, "finite factor > 1"),
        ({"growth_interval": 2.5}, TypeError, "growth_interval must be an int"),
        ({"initial_scale": "8"}, TypeError, "initial_scale must be a number"),
    ],
)
def test_dynamic_loss_scale_checks_its_options_when_built(options, error, fragment):
    with pytest.raises(error, match=f"dynamic_loss_scale: .*{fragment}"):
        optim.dynamic_loss_scale(optim.sgd(0.1), **options)
