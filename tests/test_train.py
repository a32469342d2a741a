"""fnn.train: steps compile once, fit learns, stops early and on NaN."""

import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fnn import data, losses, optim, train
from fnn import layers as L

from terminal import run_in_a_terminal, screen

KEY = jax.random.key(0)


def classifier():
    return L.serial(
        L.Dense(64),
        L.Relu,
        L.Dense(64, use_bias=False),
        L.BatchNorm(),
        L.Relu,
        L.Dropout(0.1),
        L.Dense(3),
    )


def spirals():
    """384 examples of 3 classes: the train and test parts together."""
    (x, y), (xt, yt) = data.spirals(384, classes=3, noise=0.02)
    return jnp.concatenate([x, xt]), jnp.concatenate([y, yt])


class CountingLoss:
    """A loss that counts how often it is traced (called from Python)."""

    def __init__(self, loss):
        self.loss, self.traces = loss, 0

    def __call__(self, pred, y):
        self.traces += 1
        return self.loss(pred, y)

    def grad(self, pred, y):
        return self.loss.grad(pred, y)


@pytest.mark.parametrize("method", ["autodiff", "manual"])
def test_make_step_compiles_once_and_donates(method):
    model = classifier()
    x, y = spirals()
    _, params, state = model.init(KEY, (2,))
    loss = CountingLoss(losses.softmax_cross_entropy)
    opt = optim.adam(1e-2)
    step = train.make_step(model, loss, opt, method=method)
    opt_state = opt.init(params)
    values = []
    for i in range(5):
        old = params
        params, state, opt_state, value = step(
            params, state, opt_state, x[:64], y[:64], jax.random.key(i)
        )
        values.append(float(value))
    assert loss.traces == 1
    assert values[-1] < values[0]
    assert jax.tree.leaves(old)[0].is_deleted()  # the old parameters were donated


def test_fit_learns_spirals_and_records_history():
    model = classifier()
    x, y = spirals()
    _, params, state = model.init(KEY, (2,))
    result = train.fit(
        model,
        losses.softmax_cross_entropy,
        optim.adam(1e-2),
        params,
        state,
        (x, y),
        key=KEY,
        epochs=30,
        batch_size=32,
        validation_data=(x, y),
    )
    assert len(result.history["train_loss"]) == 30
    assert result.history["train_loss"][-1] < 0.5 * result.history["train_loss"][0]
    metrics = train.evaluate(
        model, losses.softmax_cross_entropy, result.params, result.state, x, y
    )
    assert metrics["accuracy"] > 0.85
    assert metrics["accuracy"] == pytest.approx(result.history["val_accuracy"][-1])
    assert result.stopped is None


def test_fit_traces_each_program_once_however_many_epochs():
    # The step and the validation metrics compile once per fit, not per
    # epoch: the loss is traced the same number of times for 1 and 5 epochs.
    model = classifier()
    x, y = spirals()
    _, params, state = model.init(KEY, (2,))
    traces = []
    for epochs in (1, 5):
        loss = CountingLoss(losses.softmax_cross_entropy)
        train.fit(
            model,
            loss,
            optim.adam(1e-2),
            params,
            state,
            (x, y),
            key=KEY,
            epochs=epochs,
            batch_size=64,
            validation_data=(x[:100], y[:100]),
        )
        traces.append(loss.traces)
    assert traces[0] == traces[1], traces


def test_fit_manual_and_autodiff_train_alike():
    model = L.serial(L.Dense(16), L.Tanh, L.Dense(3))
    x, y = spirals()
    _, params, state = model.init(KEY, (2,))
    runs = [
        train.fit(
            model,
            losses.softmax_cross_entropy,
            optim.sgd(0.1),
            params,
            state,
            (x, y),
            key=KEY,
            epochs=3,
            batch_size=64,
            method=m,
        )
        for m in ("autodiff", "manual")
    ]
    for a, b in zip(jax.tree.leaves(runs[0].params), jax.tree.leaves(runs[1].params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_scanned_and_looped_epochs_train_alike():
    """Both epoch forms walk the same minibatches with the same dropout keys."""
    x, y = spirals()
    _, params, state = classifier().init(KEY, (2,))
    results = [
        train.fit(classifier(), losses.softmax_cross_entropy, optim.adam(1e-2),
                  params, state, (x, y), key=KEY, epochs=2, batch_size=64,
                  scan=scan)
        for scan in (True, False)
    ]  # fmt: skip
    scanned, looped = (r.history["train_loss"] for r in results)
    np.testing.assert_allclose(scanned, looped, rtol=1e-5)
    trained = [jax.tree.leaves((r.params, r.state)) for r in results]
    for a, b in zip(*trained):  # parameters and batch-norm running statistics
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_evaluate_matches_a_direct_computation():
    model = L.serial(L.Dense(3))
    x, y = spirals()
    _, params, state = model.init(KEY, (2,))
    metrics = train.evaluate(
        model, losses.softmax_cross_entropy, params, state, x, y, batch_size=100
    )  # uneven last batch
    logits, _ = model.apply(params, state, x)
    assert metrics["loss"] == pytest.approx(
        float(losses.softmax_cross_entropy(logits, y)), rel=1e-5
    )
    assert metrics["accuracy"] == pytest.approx(float(jnp.mean(logits.argmax(-1) == y)))


def test_early_stopping_returns_the_best_parameters():
    model = L.serial(L.Dense(64), L.Relu, L.Dense(64), L.Relu, L.Dense(3))
    x, y = spirals()
    _, params, state = model.init(KEY, (2,))
    # Validation labels are noise, so validation loss soon stops improving.
    y_noise = jax.random.randint(KEY, y.shape, 0, 3)
    result = train.fit(
        model,
        losses.softmax_cross_entropy,
        optim.adam(3e-2),
        params,
        state,
        (x, y),
        key=KEY,
        epochs=50,
        batch_size=32,
        validation_data=(x, y_noise),
        patience=3,
    )
    history = result.history["val_loss"]
    assert result.stopped and "early stopping" in result.stopped
    assert "the validation loss has not improved for" in result.stopped
    assert len(history) < 50
    best = int(np.argmin(history))
    assert len(history) == best + 1 + 3
    final = train.evaluate(
        model, losses.softmax_cross_entropy, result.params, result.state, x, y_noise
    )
    assert final["loss"] == pytest.approx(history[best], rel=1e-5)


def test_fit_rejects_mismatched_data_and_bad_batch_size():
    model = L.serial(L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    with pytest.raises(ValueError, match="x has 10 examples but y has 9"):
        train.fit(
            model,
            losses.mse,
            optim.sgd(0.1),
            params,
            state,
            (jnp.ones((10, 2)), jnp.ones((9, 3))),
            key=KEY,
        )
    with pytest.raises(ValueError, match="batch_size"):
        train.fit(
            model,
            losses.mse,
            optim.sgd(0.1),
            params,
            state,
            (jnp.ones((10, 2)), jnp.ones((10, 3))),
            key=KEY,
            batch_size=11,
        )


@pytest.mark.parametrize("method", ["autodiff", "manual"])
def test_bfloat16_compute_keeps_float32_master_weights(method):
    from fnn import backprop

    model = classifier()
    x, y = spirals()
    _, params, state = model.init(KEY, (2,))
    f32 = backprop.value_and_grad(model, losses.softmax_cross_entropy, method)
    bf16 = backprop.value_and_grad(
        model, losses.softmax_cross_entropy, method, compute_dtype=jnp.bfloat16
    )
    (l32, s32), g32 = jax.jit(f32)(params, state, x[:64], y[:64], key=KEY)
    (l16, s16), g16 = jax.jit(bf16)(params, state, x[:64], y[:64], key=KEY)
    assert l16.dtype == jnp.float32
    assert jax.tree.map(lambda a: a.dtype, (g16, s16)) == jax.tree.map(
        lambda a: a.dtype, (g32, s32)
    )
    assert float(l16) == pytest.approx(float(l32), rel=3e-2)
    for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)):
        assert float(jnp.linalg.norm(a - b)) <= 0.1 * float(jnp.linalg.norm(b)) + 1e-3
    result = train.fit(
        model,
        losses.softmax_cross_entropy,
        optim.adam(1e-2),
        params,
        state,
        (x, y),
        key=KEY,
        epochs=15,
        batch_size=32,
        method=method,
        compute_dtype=jnp.bfloat16,
    )
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(result.params))
    assert result.history["train_loss"][-1] < 0.6 * result.history["train_loss"][0]


# --------------------------------------------------------------------------
# Non-finite losses: roll back to parameters whose own loss was finite


def _diverging(rate, scan=True, epochs=3):
    model = L.serial(L.Dense(1, kernel_init=jax.nn.initializers.ones))
    x, y = jnp.ones((64, 4)), jnp.zeros((64, 1))
    _, params, state = model.init(KEY, (4,))
    # optax's own sgd: fnn.optim.sgd refuses a NaN rate when built.
    result = train.fit(model, losses.mse, optax.sgd(rate), params, state, (x, y),
                       key=KEY, epochs=epochs, batch_size=16, scan=scan)  # fmt: skip
    return model, params, state, (x, y), result


def _point(stopped):
    """``(epoch, step)`` of the point a rollback message returns."""
    stopped = stopped.split("returning")[1]
    m = re.search(r"after epoch (\d+), step (\d+)", stopped)
    if m:
        return tuple(map(int, m.groups()))
    m = re.search(r"at the start of epoch (\d+)", stopped)
    assert m, stopped
    return int(m.group(1)), 0


def _finite(tree):
    return all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "rate, scan", [(1e3, True), (1e3, False), (float("nan"), True), (1e30, True)]
)
def test_fit_rolls_back_to_the_last_parameters_with_a_finite_loss(rate, scan):
    model, params, state, (x, y), result = _diverging(rate, scan)
    m = re.search(r"non-finite loss \S+ at epoch (\d+), step (\d+)", result.stopped)
    assert m, result.stopped
    epoch, step = map(int, m.groups())
    computed_from = f"after epoch {epoch}, step {step - 1}" if step > 1 else (
        f"at the start of epoch {epoch}")  # fmt: skip
    assert f"computed from the parameters {computed_from}; " in result.stopped
    assert len(result.history["train_loss"]) == epoch - 1  # finished epochs only
    assert _finite((result.params, result.state, result.opt_state))
    pred, _ = model.apply(result.params, result.state, x)
    assert np.isfinite(float(losses.mse(pred, y)))  # every batch is x, y here
    # The point named is the one after step k - 2, replayed by hand.
    e, s = _point(result.stopped)
    assert (e - 1) * 4 + s == (epoch - 1) * 4 + step - 2 or (rate != rate and s == 0)
    p = jax.tree.map(jnp.copy, params)
    for _ in range((e - 1) * 4 + s):
        p = jax.tree.map(lambda w, g: w - rate * g, p,
                         jax.grad(lambda q: losses.mse(model.apply(q, state, x[:16])[0],
                                                       y[:16]))(p))  # fmt: skip
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(result.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_fit_returns_the_start_when_its_first_loss_is_not_finite():
    model = L.serial(L.Dense(1))
    _, params, state = model.init(KEY, (2,))
    x = jnp.full((8, 2), jnp.inf)
    y = jnp.zeros((8, 1))
    result = train.fit(model, losses.mse, optim.sgd(0.1), params, state, (x, y),
                       key=KEY, epochs=2, batch_size=4)  # fmt: skip
    assert "fit started from already give a non-finite loss" in result.stopped
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(result.params)):
        np.testing.assert_array_equal(a, b)


def test_rollback_picks_the_point_before_the_last_finite_loss():
    from fnn._epoch import Segment, rollback

    # The carry counts steps; its parameters turn NaN at count 6.
    def rerun(carry, count):
        total = carry[0] + count
        return total, jnp.where(total >= 6, jnp.nan, total), ()

    def at(count):
        return jnp.float32(count), jnp.float32(count), ()

    nan = np.nan
    epoch1 = Segment(at(0), 1, 0, np.array([0.0, 1, 2, 3]), rerun)

    def back(losses2, first=False):
        segments = [Segment(at(0), 1, 0, np.array(losses2), rerun)] if first else [
            epoch1, Segment(at(4), 2, 0, np.array(losses2), rerun)]  # fmt: skip
        carry, point = rollback(segments)
        return int(carry[0]), point

    # Step k's loss comes from the carry after step k - 1: go back to k - 2.
    assert back([4, 5, nan, nan]) == (5, (2, 1, 5.0))
    assert back([4, nan]) == (4, (2, 0, 4.0))  # the start of epoch 2
    assert back([nan]) == (3, (1, 3, 3.0))  # back into epoch 1
    assert back([nan], first=True) == (0, None)  # nothing before the start
    assert back([0, nan], first=True) == (0, (1, 0, 0.0))
    # The candidate after 6 steps has NaN parameters: one step further back.
    assert back([4, 5, 6, nan]) == (5, (2, 1, 5.0))


# --------------------------------------------------------------------------
# patience: the best epoch's parameters, state and optimizer state together


def _bn_problem():
    model = L.serial(L.Dense(16, use_bias=False), L.BatchNorm(), L.Relu, L.Dense(3))
    x, y = spirals()
    _, params, state = model.init(KEY, (2,))
    return model, params, state, x[:256], y[:256]


def test_patience_and_divergence_return_one_consistent_epoch():
    model, params, state, x, y = _bn_problem()
    n = 4  # steps per epoch
    rate = lambda count: jnp.where(count < 3 * n, 0.05, jnp.nan)  # noqa: E731
    kwargs = dict(key=KEY, batch_size=64, validation_data=(x, y))
    loss = losses.softmax_cross_entropy
    result = train.fit(model, loss, optim.sgd(rate), params, state, (x, y),
                       epochs=6, patience=10, **kwargs)  # fmt: skip
    assert "non-finite loss" in result.stopped and "at epoch 4" in result.stopped
    best = int(np.argmin(result.history["val_loss"])) + 1
    assert f"after epoch {best}, the best (validation loss " in result.stopped
    again = train.fit(model, losses.softmax_cross_entropy, optim.sgd(rate),
                      params, state, (x, y), epochs=best, **kwargs)  # fmt: skip
    for a, b in zip(jax.tree.leaves(result[:3]), jax.tree.leaves(again[:3])):
        np.testing.assert_array_equal(a, b)  # params, state, opt_state


# --------------------------------------------------------------------------
# Bad input, caught on the host before anything compiles


@pytest.mark.parametrize("bad", [3, -1])
def test_fit_and_evaluate_reject_labels_out_of_range(bad):
    model = L.serial(L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    x, y = jnp.ones((8, 2)), jnp.zeros(8, jnp.int32).at[5].set(bad)
    msg = r"class indices in \[0, 3\) for a model with 3 outputs"
    with pytest.raises(ValueError, match=msg):
        train.fit(model, losses.softmax_cross_entropy, optim.sgd(0.1), params,
                  state, (x, y), key=KEY, epochs=1, batch_size=4)  # fmt: skip
    with pytest.raises(ValueError, match=msg):
        train.fit(model, losses.softmax_cross_entropy, optim.sgd(0.1), params,
                  state, (x, y.at[5].set(0)), key=KEY, epochs=1, batch_size=4,
                  validation_data=(x, y))  # fmt: skip
    with pytest.raises(ValueError, match=msg):
        train.evaluate(model, losses.softmax_cross_entropy, params, state, x, y)


def test_fit_rejects_bad_arguments_clearly():
    model = L.serial(L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    data = (jnp.ones((10, 2)), jnp.zeros(10, jnp.int32))

    def fit(train_data=data, **kwargs):
        kwargs = {"key": KEY, "epochs": 1, "batch_size": 5, **kwargs}
        train.fit(model, losses.softmax_cross_entropy, optim.sgd(0.1), params,
                  state, train_data, **kwargs)  # fmt: skip

    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        fit(batch_size=0)
    with pytest.raises(TypeError, match=r"batch_size must be an int, got 32.0"):
        fit(batch_size=32.0)
    with pytest.raises(TypeError, match="batch_size must be an int, got True"):
        fit(batch_size=True)
    msg = r"key must be a PRNG key such as jax.random.key\(0\), or an int seed"
    with pytest.raises(TypeError, match=msg):
        fit(key="0")
    with pytest.raises(ValueError, match="initial_epoch=3 >= epochs=3.*pass "
                                         "epochs=6, initial_epoch=3"):  # fmt: skip
        fit(epochs=3, initial_epoch=3)
    with pytest.raises(TypeError, match="patience must be an int"):
        fit(patience=2.5)
    # Truthy strings and numbers used to pick a form or a display silently.
    with pytest.raises(TypeError, match="fit: scan must be True, False or None"):
        fit(scan="no")
    with pytest.raises(TypeError, match="fit: verbose must be True or False, got 2"):
        fit(verbose=2)  # Keras' one line per epoch: fnn's verbose=True
    # Bare NumPy, JAX and C errors before: now named, before anything compiles.
    with pytest.raises(ValueError, match="train_data's x is not a rectangular array"):
        fit(train_data=([[1.0, 2.0], [3.0]] * 5, [0] * 10))
    with pytest.raises(TypeError, match="train_data's y must hold numbers, got"):
        fit(train_data=(np.ones((10, 2)), ["cat"] * 10))
    from fnn._train_checks import arrays  # NumPy's kind of bfloat16 is "V"

    bf16 = np.ones((10, 2), jnp.bfloat16)
    assert arrays("fit", (bf16, np.zeros(10, bool)), "train_data")[0] is bf16
    with pytest.raises(TypeError, match="fit: augment must be a function or None"):
        fit(augment=True)  # was "'bool' object is not callable", from the trace
    with pytest.raises(ValueError, match=r"int seed must be in \[-2\*\*63, 2\*\*63\)"):
        fit(key=2**64)


def test_fit_takes_an_int_seed_as_its_key():
    model = L.serial(L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    x, y = spirals()
    runs = [train.fit(model, losses.softmax_cross_entropy, optim.sgd(0.1), params,
                      state, (x, y), key=k, epochs=1, batch_size=128)
            for k in (7, jax.random.key(7), jax.random.PRNGKey(7))]  # fmt: skip
    for run in runs[1:]:  # an int seed, a typed key and a legacy raw key agree
        for a, b in zip(jax.tree.leaves(runs[0].params), jax.tree.leaves(run.params)):
            np.testing.assert_array_equal(a, b)


def test_evaluate_refuses_empty_data_and_takes_lists():
    model = L.serial(L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    loss = losses.softmax_cross_entropy
    with pytest.raises(ValueError, match="evaluate: data has no examples"):
        train.evaluate(model, loss, params, state, jnp.ones((0, 2)),
                       jnp.zeros(0, jnp.int32))  # fmt: skip
    with pytest.raises(TypeError, match="evaluate: batch_size must be an int"):
        train.evaluate(model, loss, params, state, jnp.ones((4, 2)),
                       jnp.zeros(4, jnp.int32), batch_size=2.0)  # fmt: skip
    x, y = [[0.5, -1.0], [2.0, 1.0], [0.0, 3.0]], [0, 2, 1]
    as_lists = train.evaluate(model, loss, params, state, x, y)
    as_arrays = train.evaluate(model, loss, params, state, jnp.array(x), jnp.array(y))
    assert as_lists == as_arrays


# --------------------------------------------------------------------------
# Accuracy follows the loss


@pytest.mark.parametrize(
    "loss, head, labels",
    [
        (losses.sigmoid_binary_cross_entropy, (), [1, 1, 0, 0]),
        (losses.binary_cross_entropy, (L.Sigmoid,), [1, 1, 0, 0]),
        (losses.hinge, (), [1, 1, -1, -1]),
    ],
)
@pytest.mark.parametrize("column", [False, True])
def test_binary_accuracy_follows_the_loss(loss, head, labels, column):
    # One output, right on examples 0 and 3 only: accuracy 0.5 (was 1.0).
    model = L.serial(L.Dense(1), *head)
    _, params, state = model.init(KEY, (1,))
    params = jax.tree.map(jnp.ones_like, params)
    params = [{**params[0], "b": jnp.zeros(1)}, *params[1:]]
    x = jnp.array([[1.0], [-3.0], [2.0], [-2.0]])
    y = jnp.array(labels, jnp.float32)
    y = y[:, None] if column else y
    metrics = train.evaluate(model, loss, params, state, x, y)
    assert metrics["accuracy"] == 0.5


# --------------------------------------------------------------------------
# Each epoch draws its own shuffle and dropout keys


def _probe(seen):
    """A layer that records each training batch and a draw from its key."""

    def init(key, input_shape):
        return input_shape, (), ()

    def forward(params, state, x, *, key=None, train=False):
        if train:
            jax.debug.callback(lambda a, u: seen.append((a.sum(), float(u))),
                               x[:, 0], jax.random.uniform(key))  # fmt: skip
        return x, state, ()

    def backward(params, cache, dy):
        return (), dy

    return L.Layer(init, forward, backward, name="probe")


@pytest.mark.parametrize("scan", [True, False])
def test_every_epoch_draws_a_new_shuffle_and_new_keys(scan):
    seen = []
    model = L.serial(_probe(seen), L.Dense(3))
    x, y = spirals()
    x = x + jnp.arange(len(x), dtype=x.dtype)[:, None]  # each row its own sum
    _, params, state = model.init(KEY, (2,))
    train.fit(model, losses.softmax_cross_entropy, optim.sgd(0.0), params, state,
              (x, y), key=KEY, epochs=2, batch_size=64, scan=scan)  # fmt: skip
    jax.effects_barrier()
    steps = len(x) // 64
    assert len(seen) == 2 * steps
    first, second = seen[:steps], seen[steps:]
    assert {round(float(s), 3) for s, _ in first}.isdisjoint(
        {round(float(s), 3) for s, _ in second}
    )  # other batches
    assert {u for _, u in first}.isdisjoint({u for _, u in second})  # other keys


# --------------------------------------------------------------------------
# The scan-or-loop choice follows the layers' scans_well


def _compiled(fit, caplog):
    import logging

    caplog.clear()
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        fit()
    return set(re.findall(r"Compiling (jit\(\w+\))", caplog.text))


@pytest.mark.parametrize("scans_well", [True, False])
def test_default_epoch_form_follows_scans_well(scans_well, caplog):
    layer = L.Dense(3)._replace(scans_well=scans_well)
    model = L.serial(L.Dense(4), L.serial(layer))
    _, params, state = model.init(KEY, (2,))
    x, y = spirals()

    def fit(scan):
        return lambda: train.fit(model, losses.softmax_cross_entropy, optim.sgd(0.1),
                                 params, state, (x[:64], y[:64]), key=KEY, epochs=1,
                                 batch_size=32, scan=scan)  # fmt: skip

    default = _compiled(fit(None), caplog)
    loops = scans_well is False and jax.default_backend() == "cpu"
    same, other = (fit(False), fit(True)) if loops else (fit(True), fit(False))
    assert _compiled(same, caplog) <= default
    assert not _compiled(other, caplog) <= default


# --------------------------------------------------------------------------
# Optimizers with extra arguments, regularizers, augmentation


def test_reduce_on_plateau_gets_the_loss_inside_fit():
    model = L.serial(L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    x, y = spirals()
    # Asking the loss to fall below (1 - rtol) * best = 0, every step is a plateau.
    opt = optax.chain(optim.sgd(0.1), optax.contrib.reduce_on_plateau(
        factor=0.5, patience=1, rtol=1.0, accumulation_size=1))  # fmt: skip
    result = train.fit(model, losses.softmax_cross_entropy, opt, params, state,
                       (x, y), key=KEY, epochs=1, batch_size=64)  # fmt: skip
    assert float(result.opt_state[1].scale) < 0.5


def test_augment_touches_training_batches_only():
    traced = []

    def aug(key, xb):
        traced.append(xb.shape)
        return xb + 0.1 * jax.random.normal(key, xb.shape, xb.dtype)

    model = L.serial(L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    x, y = spirals()
    kwargs = dict(key=KEY, epochs=2, batch_size=64, validation_data=(x[:50], y[:50]))
    plain, augmented = (
        train.fit(model, losses.softmax_cross_entropy, optim.sgd(0.1), params, state,
                  (x, y), augment=a, **kwargs)
        for a in (None, aug)
    )  # fmt: skip
    assert traced == [(64, 2)]  # once, in the compiled epoch, on training batches
    assert plain.history["train_loss"][0] != augmented.history["train_loss"][0]
    val = train.evaluate(model, losses.softmax_cross_entropy, augmented.params,
                         augmented.state, x[:50], y[:50])  # fmt: skip
    assert val["loss"] == pytest.approx(augmented.history["val_loss"][-1], rel=1e-6)


# --------------------------------------------------------------------------
# The display: fits the width, one line per epoch, no duplicates


def test_bar_lines_fit_every_width():
    from fnn.progress import bar_line

    for width in (20, 40, 79, 80, 120, 200):
        for done in (0, 7, 20):
            line = bar_line(12, 100, done, 20, width, rate=1234.5, loss=0.123456)
            assert len(line) <= width - 1, (width, line)
            assert line.startswith(f"epoch 12/100 {done}/20")
    assert bar_line(1, 2, 5, 20, 80, rate=2.0) == (
        "epoch 1/2 5/20 [=====...............] 2.0 steps/s ETA 0:08"
    )
    # The bar keeps its width on 80 columns as the rate and loss appear...
    full = bar_line(10, 100, 120, 469, 80, rate=812.3, loss=0.2315)
    assert full == ("epoch 10/100 120/469 [=====...............] 812.3 steps/s "
                    "ETA 0:00 loss 0.2315")  # fmt: skip
    # ...and a diverging loss does not print 25 digits.
    assert bar_line(1, 2, 5, None, 80, rate=0.5, loss=4e24) == (
        "epoch 1/2 step 5 2.00 s/step loss 4e+24"
    )


def test_an_epoch_in_parts_equals_the_epoch_in_one_call():
    # What a live bar runs (parts) is bit for bit what a pipe runs (one call).
    from fnn import _epoch

    model, params, state, x, y = _bn_problem()
    opt = optim.adam(1e-2)
    source = _epoch.InMemory(x, y, KEY, 32, train._step_fn(
        model, losses.softmax_cross_entropy, opt, "autodiff"), True, None)  # fmt: skip
    carry = (params, state, opt.init(params))
    whole, losses_ = source.run(carry, *source.inputs(1), 0, 8)
    parts = carry
    for start, stop in ((0, 3), (3, 4), (4, 8)):
        parts, _ = source.run(parts, *source.inputs(1), start, stop)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(parts)):
        np.testing.assert_array_equal(a, b)
    assert len(losses_) == 8


def test_early_stopping_record():
    from fnn.early_stopping import EarlyStopping

    s = EarlyStopping(patience=2, min_delta=0.1)
    seen = []
    for epoch, metric in enumerate([1.0, 0.95, 0.5, float("nan"), 0.45, 0.44], 1):
        s = s.update(metric, epoch)
        seen.append((s.has_improved, s.should_stop))
    assert seen == [(True, False), (False, False), (True, False), (False, False),
                    (False, True), (False, True)]  # fmt: skip
    assert (s.best_metric, s.best_epoch) == (0.5, 3)


def test_off_a_terminal_one_line_per_epoch(capsys):
    model = L.serial(L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    x, y = spirals()

    def fit(**kwargs):
        train.fit(model, losses.softmax_cross_entropy, optim.sgd(0.1), params,
                  state, (x, y), key=KEY, epochs=2, batch_size=128,
                  **kwargs)  # fmt: skip
        return capsys.readouterr()

    out = fit(progress=True)
    assert out.out == "" and "\r" not in out.err
    assert re.findall(r"(?m)^epoch +(\d+)  train loss", out.err) == ["1", "2"]
    out = fit(progress=True, verbose=True)  # the same lines, once, on stdout
    assert out.err == ""
    assert re.findall(r"(?m)^epoch +(\d+)  train loss", out.out) == ["1", "2"]
    assert fit() == ("", "")


PTY_SCRIPT = """
import sys
import jax, jax.numpy as jnp
from fnn import data, losses, optim, train
from fnn import layers as L
(x, y), _ = data.spirals(800, classes=3)  # 640 to train on
model = L.serial(L.Dense(8), L.Relu, L.Dense(3))
_, params, state = model.init(jax.random.key(0), (2,))
for verbose in (True, False):
    train.fit(model, losses.softmax_cross_entropy, optim.adam(1e-2), params, state,
              (x, y), key=0, epochs=2, batch_size=32, validation_data=(x, y),
              verbose=verbose)
    print("--- end of fit", flush=True)
"""


def test_progress_under_an_80_column_terminal():
    raw = run_in_a_terminal([sys.executable, "-c", PTY_SCRIPT], 80)
    runs = raw.split("--- end of fit\n")
    assert len(runs) == 3 and runs[2] == "", raw
    for run in runs[:2]:  # verbose=True, then verbose=False
        lines, redraws = screen(run)
        assert max(map(len, redraws)) <= 80, max(redraws, key=len)
        for epoch in ("1", "2"):  # each epoch's line shows once
            shown = [s for s in lines if re.match(rf"epoch +{epoch}  train loss", s)]
            assert len(shown) == 1, lines
        assert "compiling" in run  # said while the first epoch compiled
        assert re.search(r"epoch 1/2 ([1-9]|1[0-9])/20 \[", run)  # mid-epoch
        assert re.search(r"epoch 2/2 \d+/20 \[=*\.*\] .*steps/s ETA", run)


# --------------------------------------------------------------------------
# Streams of batches


@pytest.mark.parametrize(
    "scan, chunk_bytes", [(True, None), (True, 400), (False, None)]
)
def test_a_stream_trains_exactly_as_arrays_do(scan, chunk_bytes, monkeypatch):
    # scan: 25 steps an epoch run as a chunk of 16 steps and one of 9; with
    # chunks of at most 400 bytes (a batch holds 120), as 8 of 3 and one of 1.
    from fnn import _stream
    from fnn._epoch import shuffled_batches

    if chunk_bytes is not None:
        monkeypatch.setattr(_stream, "CHUNK_BYTES", chunk_bytes)
        batch = np.zeros((10, 2), np.float32), np.zeros(10, np.int32)
        assert _stream.chunk_steps(*batch) == 3

    model, params, state, x, y = _bn_problem()
    model = L.serial(model, L.Dropout(0.2))
    _, params, state = model.init(KEY, (2,))
    seed = np.asarray(jax.random.key_data(KEY)).ravel().tolist()
    xs, ys = np.asarray(x), np.asarray(y)

    def stream(epoch):  # fit's own order, read from host arrays
        for idx in shuffled_batches(seed, epoch, len(xs), 10, len(xs) // 10):
            yield xs[idx], ys[idx]

    loss, opt = losses.softmax_cross_entropy, optim.adam(1e-2)
    arrays = train.fit(model, loss, opt, params, state, (x, y), key=KEY, epochs=2,
                       batch_size=10, scan=scan)  # fmt: skip
    streamed = train.fit(model, loss, opt, params, state, stream, key=KEY, epochs=2,
                         scan=scan)  # fmt: skip
    assert arrays.history["train_loss"] == streamed.history["train_loss"]
    for a, b in zip(jax.tree.leaves(arrays[:3]), jax.tree.leaves(streamed[:3])):
        np.testing.assert_array_equal(a, b)


def test_a_stream_is_checked_and_rolled_back_like_arrays():
    model = L.serial(L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    xb = np.ones((4, 2), np.float32)
    bad = [(xb, np.array([0, 1, 2, 3]))]
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        train.fit(model, losses.softmax_cross_entropy, optim.sgd(0.1), params, state,
                  bad, key=KEY, epochs=1)  # fmt: skip
    once = ((xb, np.zeros(4, np.int32)) for _ in range(3))
    with pytest.raises(ValueError, match="yielded no batches in epoch 2"):
        train.fit(model, losses.softmax_cross_entropy, optim.sgd(0.1), params, state,
                  once, key=KEY, epochs=2)  # fmt: skip
    # Divergence inside a stream: the same rollback as for arrays.
    model = L.serial(L.Dense(1, kernel_init=jax.nn.initializers.ones))
    _, params, state = model.init(KEY, (4,))
    x, y = np.ones((16, 4), np.float32), np.zeros((16, 1), np.float32)
    result = train.fit(model, losses.mse, optax.sgd(1e3), params, state,
                       [(x, y)] * 40, key=KEY, epochs=2)  # fmt: skip
    assert "non-finite loss" in result.stopped
    pred, _ = model.apply(result.params, result.state, x)
    assert _finite(result.params) and np.isfinite(float(losses.mse(pred, y)))
    # Arrays of 40 copies of the batch (any shuffle gives the same batches):
    # the same stop, message and rolled-back state, bit for bit.
    arrays = train.fit(model, losses.mse, optax.sgd(1e3), params, state,
                       (np.tile(x, (40, 1)), np.tile(y, (40, 1))), key=KEY,
                       epochs=2, batch_size=16)  # fmt: skip
    assert result.stopped == arrays.stopped
    for a, b in zip(jax.tree.leaves(result[:3]), jax.tree.leaves(arrays[:3])):
        np.testing.assert_array_equal(a, b)


def test_a_list_of_two_batches_is_a_stream_however_each_batch_is_written():
    # [[x0, y0], [x1, y1]] used to be read as arrays x = [x0, y0], y = [x1, y1].
    model = L.serial(L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(4, 2)).astype(np.float32), np.array([0, 1, 2, 0]))
               for _ in range(2)]  # fmt: skip
    loss, opt = losses.softmax_cross_entropy, optim.sgd(0.1)
    fits = [
        train.fit(model, loss, opt, params, state, data, key=KEY, epochs=1)
        for data in (batches, [list(b) for b in batches], iter(batches))
    ]
    first = jax.tree.leaves(fits[0].params)
    for result in fits[1:]:
        assert result.history["train_loss"] == fits[0].history["train_loss"]
        for a, b in zip(jax.tree.leaves(result.params), first):
            np.testing.assert_array_equal(a, b)
    # Arrays written as lists of rows are still arrays.
    x, y = [[0.0, 1.0], [1.0, 0.0]], [0, 1]
    result = train.fit(model, loss, opt, params, state, [x, y], key=KEY, epochs=1,
                       batch_size=2)  # fmt: skip
    assert len(result.history["train_loss"]) == 1


def test_prefetch_puts_batches_on_the_device_ahead_of_their_step():
    from fnn._stream import prefetch

    pulled = []

    def batches():
        for i in range(5):
            pulled.append(i)
            yield np.full((2, 1), i, np.float32), np.zeros(2, np.int32)

    for i, (host, (xb, _)) in enumerate(prefetch(batches(), size=2)):
        assert isinstance(xb, jax.Array) and float(xb[0, 0]) == i
        assert host[0][0, 0] == i
        assert len(pulled) == min(5, i + 3)  # two more already transferred


def test_fit_streams_from_memory_mapped_files_as_from_memory(tmp_path):
    # fnn.data.memmap_batches end to end: the batches read from .npy files
    # train bit for bit as the same batches gathered from arrays in memory.
    (x, y), _ = data.spirals(120, classes=3)  # 96 to train on
    x, y = np.asarray(x), np.asarray(y)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)

    def from_files(epoch):
        files = (tmp_path / "x.npy", tmp_path / "y.npy")
        return data.memmap_batches(*files, 32, seed=5, epoch=epoch,
                                   drop_remainder=True)  # fmt: skip

    def from_memory(epoch):
        order = np.random.default_rng([5, epoch]).permutation(len(x))
        return [(x[i], y[i]) for i in order[:96].reshape(3, 32)]

    model = L.serial(L.Dense(8), L.Relu, L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    loss, opt = losses.softmax_cross_entropy, optim.adam(1e-2)
    results = [train.fit(model, loss, opt, params, state, source, key=KEY, epochs=3)
               for source in (from_files, from_memory)]  # fmt: skip
    files, memory = results
    assert len(files.history["train_loss"]) == 3
    assert files.history["train_loss"] == memory.history["train_loss"]
    for a, b in zip(jax.tree.leaves(files[:3]), jax.tree.leaves(memory[:3])):
        np.testing.assert_array_equal(a, b)
    assert files.history["train_loss"][-1] < files.history["train_loss"][0]


def test_a_nan_target_does_not_hide_an_out_of_range_one():
    # NumPy's min and max of [nan, 2] are nan, so 2 used to pass the check.
    model = L.serial(L.Dense(1))
    _, params, state = model.init(KEY, (2,))
    x, y = np.ones((4, 2), np.float32), np.array([[np.nan], [2.0], [0.0], [1.0]])
    with pytest.raises(
        ValueError, match=r"targets in \[0, 1\], got values from 0.0 to 2.0"
    ):
        train.fit(model, losses.sigmoid_binary_cross_entropy, optim.sgd(0.1), params,
                  state, (x, y), key=KEY, epochs=1, batch_size=4)  # fmt: skip


def test_validation_batches_are_refused_not_read_as_arrays():
    # [(x0, y0), (x1, y1)] used to be read as x = [x0, y0], y = [x1, y1]: for
    # an autoencoder (y shaped like x) it evaluated those 2 "examples" of
    # shape (4, 2) and reported a validation loss of other data.
    model = L.serial(L.Dense(2))
    _, params, state = model.init(KEY, (2,))
    x = np.arange(16, dtype=np.float32).reshape(8, 2) / 16
    batches = [(x[:4], x[:4]), (x[4:], x[4:])]
    with pytest.raises(TypeError, match=r"validation_data must be \(x, y\) arrays"):
        train.fit(model, losses.mse, optim.sgd(0.1), params, state, (x, x), key=KEY,
                  epochs=1, batch_size=4, validation_data=batches)  # fmt: skip


def test_a_streams_train_loss_is_the_mean_over_its_examples():
    # A stream's last batch is often smaller (memmap_batches keeps it by
    # default): its 2 examples used to weigh as much as the 4 of each other
    # batch. With a learning rate of 0 every step sees the start's
    # parameters, so the epoch's loss is evaluate's on the same examples.
    model = L.serial(L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 2)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    batches = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]
    loss = losses.softmax_cross_entropy
    expected = train.evaluate(model, loss, params, state, x, y)["loss"]
    step_mean = np.mean([train.evaluate(model, loss, params, state, *b)["loss"]
                         for b in batches])  # fmt: skip
    assert abs(step_mean - expected) > 1e-3  # the old figure is told apart
    for scan in (True, False):
        result = train.fit(model, loss, optim.sgd(0.0), params, state, batches,
                           key=KEY, epochs=1, scan=scan)  # fmt: skip
        np.testing.assert_allclose(result.history["train_loss"], [expected],
                                   rtol=1e-6)  # fmt: skip


def test_make_step_steps_an_optimizer_whose_state_holds_the_params():
    # prodigy's init keeps the very arrays of params (params0): donating both
    # trees donated one buffer twice, and the first step failed with XLA's
    # "Attempt to donate the same buffer twice".
    model = L.serial(L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    opt = optax.contrib.prodigy()
    opt_state = opt.init(params)
    shared = {id(a) for a in jax.tree.leaves(params)}
    assert any(id(a) in shared for a in jax.tree.leaves(opt_state))
    x, y = jnp.ones((4, 2)), jnp.array([0, 1, 2, 0])
    loss = losses.softmax_cross_entropy
    reference = jax.jit(train._step_fn(model, loss, opt, "autodiff"))(
        params, state, opt_state, x, y, None
    )  # not donated: params and opt_state stay valid
    step = train.make_step(model, loss, opt)
    kept = jax.tree.map(jnp.copy, params)
    out = step(params, state, opt_state, x, y, None)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(a, b)
    second = step(*out[:3], x, y, None)  # and on, from its own outputs
    assert np.isfinite(float(second[3]))
    assert step.lower(*second[:3], x, y, None).compile() is not None
    # Sharing missed by the check (here: skipped) is caught from XLA's error.
    opt_state = opt.init(kept)
    step.returned = id(opt_state)
    again = step(kept, state, opt_state, x, y, None)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(a, b)


def test_bar_stays_in_its_brackets_when_a_stream_outruns_its_len(monkeypatch):
    from fnn import progress

    # A sized stream yielding more batches than len() said: the bar was
    # drawn past its brackets and the time left went negative ("-1:59:59").
    assert progress.bar_line(1, 2, 12, 10, 80, rate=2.0) == (
        "epoch 1/2 12/10 [====================] 2.0 steps/s ETA 0:00"
    )
    # An empty list of batches (0 steps) divided by zero on a terminal,
    # before fit could say "yielded no batches".
    assert progress.bar_line(1, 2, 0, 0, 80) == "epoch 1/2 0/0"
    # A terminal reporting 0 columns: lines were cut at [:-1], not to a width.
    monkeypatch.setattr(progress.os, "get_terminal_size",
                        lambda *a: progress.os.terminal_size((0, 24)))  # fmt: skip
    monkeypatch.setenv("COLUMNS", "100")

    class Terminal:
        def fileno(self):
            return 2

    assert progress._columns(Terminal()) == 100


def test_memmap_batches_refuses_switches_that_are_not_bools(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    np.save(tmp_path / "y.npy", np.zeros(4, np.int32))
    files = (tmp_path / "x.npy", tmp_path / "y.npy")
    # shuffle="no" used to shuffle: any truthy value read as True.
    with pytest.raises(TypeError, match="shuffle must be True or False, got 'no'"):
        data.memmap_batches(*files, 2, shuffle="no")
    with pytest.raises(TypeError, match="drop_remainder must be True or False"):
        data.memmap_batches(*files, 3, drop_remainder=1)
    assert len(list(data.memmap_batches(*files, 3, drop_remainder=np.True_))) == 1


def test_a_bfloat16_loss_is_averaged_alike_in_both_epoch_forms():
    # The looped form kept a bfloat16 loss in bfloat16, and NumPy averaged
    # the epoch in it: 10048 where the scan (which stores float32) said 10040.
    model = L.serial(L.Dense(1))
    _, params, state = model.init(KEY, (3,))
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    y = x.sum(1, keepdims=True) + 100

    def loss(pred, target):
        return losses.mse(pred, target).astype(jnp.bfloat16)

    def fit(scan):
        return train.fit(model, loss, optim.sgd(0.0), params, state, (x, y),
                         key=KEY, epochs=1, batch_size=8, scan=scan)  # fmt: skip

    scanned, looped = fit(True), fit(False)
    assert looped.history["train_loss"] == scanned.history["train_loss"]


def test_validation_targets_the_loss_refuses_stop_fit_before_training():
    # Validation runs after an epoch: (N, 1) class indices used to be refused
    # only then, after a whole epoch of training.
    model = L.serial(L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    x, y = np.ones((6, 2), np.float32), np.array([0, 1, 2, 0, 1, 2])
    epochs_run = []

    def stream(epoch):
        epochs_run.append(epoch)
        return [(x, y)]

    with pytest.raises(
        ValueError, match=r"labels must have shape \(6,\).*got \(6, 1\)"
    ):
        train.fit(model, losses.softmax_cross_entropy, optim.sgd(0.1), params, state,
                  stream, key=KEY, epochs=1,
                  validation_data=(x, y[:, None]))  # fmt: skip
    assert epochs_run == []


def test_fit_refuses_an_opt_state_of_another_optimizer_or_model():
    model = L.serial(L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    x, y = np.ones((4, 2), np.float32), np.array([0, 1, 2, 0])
    adam = optim.adam(1e-2)

    def fit(opt_state):
        return train.fit(model, losses.softmax_cross_entropy, adam, params, state,
                         (x, y), key=KEY, epochs=1, batch_size=4,
                         opt_state=opt_state, scan=False)  # fmt: skip

    # SGD's state resumed under Adam: a bare optax error inside the trace.
    with pytest.raises(ValueError, match="opt_state does not fit this optimizer"):
        fit(optim.sgd(0.1).init(params))
    # Adam's state for a narrower layer: its moments broadcast against the
    # gradients and the looped form trained on without a word.
    _, narrow, _ = L.serial(L.Dense(1)).init(KEY, (2,))
    with pytest.raises(
        ValueError, match=r"opt_state\[0\].mu\[0\]\['b'\] has shape \(1,\)"
    ):
        fit(adam.init(narrow))
    resumed = fit(adam.init(params))  # the right one still resumes
    assert np.isfinite(resumed.history["train_loss"][0])


def test_train_loss_holds_the_penalty_and_val_loss_does_not():
    # As the docstring says; a learning rate of 0 keeps the params where the
    # formulas below are evaluated.
    model = L.serial(L.Dense(3))
    _, params, state = model.init(KEY, (2,))
    x, y = np.asarray(jax.random.normal(KEY, (8, 2))), np.array([0, 1, 2, 0] * 2)
    penalty = losses.penalty(l2=0.5)
    result = train.fit(model, losses.softmax_cross_entropy, optim.sgd(0.0), params,
                       state, (x, y), key=KEY, epochs=1, batch_size=8,
                       validation_data=(x, y), regularizer=penalty)  # fmt: skip
    fit_loss = float(losses.softmax_cross_entropy(model.apply(params, state, x)[0], y))
    np.testing.assert_allclose(result.history["val_loss"][0], fit_loss, rtol=1e-6)
    with_penalty = fit_loss + float(penalty(params))
    np.testing.assert_allclose(result.history["train_loss"][0], with_penalty, rtol=1e-6)
    assert float(penalty(params)) > 0.1  # the two differ by much more than rtol
