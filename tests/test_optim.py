"""fnn.optim against optax's own optimisers, and optax composing with fnn."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fnn import backprop, losses, optim, train
from fnn import layers as L

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


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_adam_matches_optax_bit_for_bit_over_20_steps(dtype):
    # The bias correction 1 - b**t was computed in float32: in float64 the
    # steps drifted from optax (and PyTorch) by ~3e-6 over 20 steps.
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        params = {"w": jnp.asarray(rng.normal(size=(3, 4)), dtype)}
        grads = [{"w": jnp.asarray(rng.normal(size=(3, 4)), dtype)} for _ in range(20)]
        ours, theirs = optim.adam(1e-2, b1=0.8), optax.adam(1e-2, b1=0.8)
        results = []
        for opt in (ours, theirs):
            p, state = params, opt.init(params)
            update = jax.jit(opt.update)
            for g in grads:
                u, state = update(g, state, p)
                p = optax.apply_updates(p, u)
            results.append(p["w"])
    assert results[0].dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(results[0], results[1])


def _moment_leaves(opt_state):
    """Every array the optimizer state holds, but the scalar step counters."""
    return [a for a in jax.tree.leaves(opt_state) if np.ndim(a) > 0]


@pytest.mark.parametrize(
    "trainable",
    [
        (False, (), True),  # a prefix: one bool per layer
        lambda path, leaf: not path.startswith("[0]"),  # a predicate on the path
        ({"w": False, "b": False}, (), {"w": True, "b": True}),  # like params
    ],
    ids=["prefix", "predicate", "full"],
)
def test_freeze_gives_frozen_leaves_zero_update_and_no_moments(trainable):
    model = L.serial(L.Dense(4), L.Tanh, L.Dense(3))
    _, params, state = model.init(KEY, (5,))
    x = jax.random.normal(jax.random.key(1), (8, 5))
    y = jnp.arange(8) % 3
    opt = optim.freeze(optim.adam(1e-2), trainable)
    opt_state = opt.init(params)
    # Adam moments (mu, nu) for the head's w and b only: 2 * (4*3 + 3) numbers.
    assert sum(np.size(a) for a in _moment_leaves(opt_state)) == 2 * (4 * 3 + 3)
    step = train.make_step(model, losses.softmax_cross_entropy, opt)
    before = jax.tree.map(np.array, params)
    grads = jax.grad(
        lambda p: losses.softmax_cross_entropy(model.apply(p, state, x)[0], y)
    )(params)
    updates, _ = opt.update(grads, opt.init(params), params)
    jax.tree.map(lambda u: np.testing.assert_array_equal(u, 0.0), updates[0])
    first = optim.adam(1e-2).update(grads[2], optim.adam(1e-2).init(params[2]))[0]
    jax.tree.map(np.testing.assert_array_equal, updates[2], first)
    for _ in range(3):
        params, state, opt_state, _ = step(params, state, opt_state, x, y, None)
    jax.tree.map(np.testing.assert_array_equal, params[0], before[0])  # bit for bit
    assert not np.allclose(params[2]["w"], before[2]["w"])


def test_freeze_rejects_a_trainable_tree_that_does_not_fit():
    params = ({"w": jnp.ones((2, 2))}, {"w": jnp.ones((2, 2))})
    with pytest.raises(
        ValueError, match="freeze: trainable must be shaped like params"
    ):
        optim.freeze(optim.sgd(0.1), (True, True, False)).init(params)
    with pytest.raises(TypeError, match="trainable leaves must be bools"):
        optim.freeze(optim.sgd(0.1), (1, 0)).init(params)
    with pytest.raises(TypeError, match="must return a Python bool"):
        optim.freeze(optim.sgd(0.1), lambda path, leaf: leaf).init(params)


def test_gradient_step_passes_the_loss_to_optimizers_with_extra_args():
    seen = []

    def update(updates, state, params=None, *, value=None, **extra):
        seen.append(value)
        return updates, value

    recorder = optax.GradientTransformationExtraArgs(lambda p: jnp.zeros(()), update)
    opt = optax.chain(recorder, optim.sgd(0.1))
    model, params, state, x, y = problem()
    loss = losses.softmax_cross_entropy
    grad_fn = backprop.value_and_grad(model, loss)
    step = jax.jit(optim.gradient_step(grad_fn, opt))
    _, _, opt_state, value = step(params, state, opt.init(params), x, y, None)
    assert float(opt_state[0]) == float(value) > 0  # the optimizer saw the loss
    # reduce_on_plateau, the course's "lower the rate when the cost stalls", runs.
    plateau = optax.chain(optim.sgd(0.1), optax.contrib.reduce_on_plateau(patience=1))
    step = jax.jit(optim.gradient_step(grad_fn, plateau))
    step(params, state, plateau.init(params), x, y, None)


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (lambda: optim.sgd(float("nan")), ValueError, "sgd: learning_rate must be"),
        (lambda: optim.sgd(-0.1), ValueError, "got -0.1"),
        (lambda: optim.sgd("0.1"), TypeError, "must be a real number"),
        (
            lambda: optim.momentum(0.1, beta=1.0),
            ValueError,
            "beta must be finite and in",
        ),
        (lambda: optim.adam(b2=1.5), ValueError, "adam: b2"),
        (lambda: optim.adam(True), TypeError, "adam: learning_rate"),
        # A third number was taken as nesterov=True: Nesterov, silently.
        (lambda: optim.momentum(0.1, 0.9, 0.5), TypeError, "nesterov must be a bool"),
    ],
)
def test_optimizer_options_are_checked_when_built(make, error, fragment):
    with pytest.raises(error, match=fragment):
        make()
    # A schedule and NumPy scalars are fine.
    optim.adam(optax.linear_schedule(1e-2, 0.0, 10), b1=np.float32(0.9))


def _run_steps(opt, params, grads, new_learning_rate_at=None):
    """``params`` after one jitted update per gradient in ``grads``."""
    state, update = opt.init(params), jax.jit(opt.update)
    for i, g in enumerate(grads):
        if i == new_learning_rate_at:
            state.hyperparams["learning_rate"] = jnp.asarray(1e-3)
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
    return params


@pytest.mark.parametrize(
    "ours, theirs, options",
    [
        (optim.adam, optax.adam, {"b1": 0.8}),
        (optim.momentum, optax.sgd, None),
    ],
    ids=["adam", "momentum"],
)
def test_inject_hyperparams_changes_the_rate_as_it_does_for_optax(
    ours, theirs, options
):
    # optax.inject_hyperparams hands every option over as a 0-d array: adam's
    # b1 and momentum's beta were refused ("must be a real number").
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)}
    grads = [{"w": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)} for _ in range(6)]
    if options is None:  # momentum(lr, beta) against optax.sgd(lr, momentum=beta)
        mine = optax.inject_hyperparams(ours)(learning_rate=1e-2, beta=0.8)
        reference = optax.inject_hyperparams(theirs)(learning_rate=1e-2, momentum=0.8)
    else:
        mine = optax.inject_hyperparams(ours)(learning_rate=1e-2, **options)
        reference = optax.inject_hyperparams(theirs)(learning_rate=1e-2, **options)
    got = _run_steps(mine, params, grads, new_learning_rate_at=3)
    want = _run_steps(reference, params, grads, new_learning_rate_at=3)
    np.testing.assert_array_equal(got["w"], want["w"])


def test_array_learning_rates_are_checked_like_floats():
    # A jax.Array learning rate went through unchecked: -0.1 climbed the
    # loss, and a (2,) array broadcast over the leaf's last axis.
    with pytest.raises(ValueError, match="sgd: learning_rate must be finite and >= 0"):
        optim.sgd(jnp.array(-0.1))
    with pytest.raises(ValueError, match="adam: learning_rate must be finite"):
        optim.adam(jnp.array(jnp.nan))
    with pytest.raises(TypeError, match="0-d real array, got an array of float32"):
        optim.momentum(jnp.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="adam: b1 must be finite and in"):
        optim.adam(1e-3, b1=np.array(1.0))
    params, grads = {"w": jnp.ones(2)}, {"w": jnp.array([0.5, 0.25])}
    opt = optim.sgd(np.array(0.1))  # a 0-d NumPy array was refused
    np.testing.assert_allclose(
        opt.update(grads, opt.init(params))[0]["w"], [-0.05, -0.025]
    )


def test_check_optimizer_names_the_call_for_a_factory_or_an_optax_name():
    with pytest.raises(TypeError, match=r"a function: call it, adam\(\.\.\.\)"):
        optim.check_optimizer("fit", optim.adam)
    with pytest.raises(TypeError, match=r"for 'rmsprop' write optax.rmsprop\("):
        optim.check_optimizer("fit", "rmsprop")


# fnn.early_stopping: the policy fit's ``patience`` runs.


@pytest.mark.parametrize(
    "options, error, fragment",
    [
        # min_delta=-1 counted 3.0 -> 4.5 as improvements: it never stopped.
        ({"min_delta": -1.0}, ValueError, "min_delta must be finite and >= 0"),
        (
            {"min_delta": float("nan")},
            ValueError,
            "min_delta must be finite and >= 0, got nan",
        ),
        ({"patience": -1}, ValueError, "patience must be >= 0, got -1"),
        ({"patience": 1.5}, TypeError, "patience must be an int, got 1.5"),
        ({"patience": True}, TypeError, "patience must be an int, got True"),
    ],
)
def test_early_stopping_refuses_options_that_change_its_meaning(
    options, error, fragment
):
    from fnn.early_stopping import EarlyStopping

    with pytest.raises(error, match=f"EarlyStopping: {fragment}"):
        EarlyStopping(**{"patience": 2, **options})


def test_early_stopping_message_counts_the_epochs_without_improvement():
    from fnn.early_stopping import EarlyStopping

    # patience=0 stops at the first epoch without improvement, as 1 does; the
    # message said "has not improved for 0 epochs".
    s = EarlyStopping(patience=0).update(2.0, 1).update(2.0, 2)  # a tie: no gain
    assert s.should_stop and s.best_epoch == 1
    assert "has not improved for 1 epoch;" in s.message(2)
    s = EarlyStopping(patience=3)
    for epoch, metric in enumerate([2.0, 2.5, 2.0, 3.0], 1):
        s = s.update(metric, epoch)
    assert s.should_stop and "has not improved for 3 epochs;" in s.message(4)
