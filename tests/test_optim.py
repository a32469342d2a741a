"""fnn.optim against optax's own optimisers, and optax composing with fnn."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fnn import layers as L
from fnn import losses, optim, train

KEY = jax.random.key(0)

# (id, fnn optimiser, optax reference)
OPTIMIZERS = [
    ("sgd", optim.sgd(0.05), optax.sgd(0.05)),
    ("momentum", optim.momentum(0.05, beta=0.9), optax.sgd(0.05, momentum=0.9)),
    (
        "nesterov",
        optim.momentum(0.05, beta=0.8, nesterov=True),
        optax.sgd(0.05, momentum=0.8, nesterov=True),
    ),
    ("adam", optim.adam(1e-2), optax.adam(1e-2)),
    (
        "adam-betas",
        optim.adam(3e-3, b1=0.8, b2=0.99, eps=1e-6),
        optax.adam(3e-3, b1=0.8, b2=0.99, eps=1e-6),
    ),
    (
        "adam-schedule",
        optim.adam(optax.exponential_decay(1e-2, 10, 0.5)),
        optax.adam(optax.exponential_decay(1e-2, 10, 0.5)),
    ),
]


def problem():
    model = L.serial(L.Dense(16), L.Tanh, L.Dense(3))
    _, params, state = model.init(KEY, (5,))
    x = jax.random.normal(jax.random.key(1), (32, 5))
    y = jax.random.randint(jax.random.key(2), (32,), 0, 3)
    return model, params, state, x, y


def run(optimizer, steps=100, method="autodiff"):
    model, params, state, x, y = problem()
    step = train.make_step(
        model, losses.softmax_cross_entropy, optimizer, method=method
    )
    opt_state = optimizer.init(params)
    for _ in range(steps):
        params, state, opt_state, loss = step(params, state, opt_state, x, y, None)
    return params, float(loss)


@pytest.mark.parametrize(
    "ours, reference", [c[1:] for c in OPTIMIZERS], ids=[c[0] for c in OPTIMIZERS]
)
def test_matches_optax_over_100_steps(ours, reference):
    mine, loss = run(ours)
    theirs, _ = run(reference)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert loss < 1.0  # it trained


def test_sgd_is_w_minus_lr_grad():
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([0.5, 0.25])}
    opt = optim.sgd(0.1)
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(
        optax.apply_updates(params, updates)["w"], [0.95, -2.025]
    )


def test_adam_first_step_moves_each_weight_by_the_learning_rate():
    # With bias correction, step 1 is lr * g / (|g| + eps): lr in the sign of g.
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([0.5, -1e-3, 20.0])}
    opt = optim.adam(0.01)
    updates, state = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.01, 0.01, -0.01], rtol=1e-4)
    assert int(state[0].count) == 1


def test_optax_transformations_compose_with_fnn_optimisers():
    clipped = optax.chain(optax.clip_by_global_norm(0.1), optim.adam(1e-2))
    reference = optax.chain(optax.clip_by_global_norm(0.1), optax.adam(1e-2))
    mine, _ = run(clipped, steps=20)
    theirs, _ = run(reference, steps=20)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_any_optax_optimiser_works_in_make_step_with_manual_gradients():
    _, loss = run(optax.adamw(1e-2, weight_decay=1e-4), steps=50, method="manual")
    assert loss < 1.0
