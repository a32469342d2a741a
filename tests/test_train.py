"""fnn.train: steps compile once, fit learns, stops early and on NaN."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import data, losses, optim, train
from fnn import layers as L

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
    x, y = data.spirals(384, classes=3, noise=0.02)
    return jnp.asarray(x), jnp.asarray(y)


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


def test_convolutional_models_loop_on_cpu():
    from fnn.conv import Conv

    assert train._scan_by_default(classifier())
    cnn = L.serial(L.residual(Conv(4, (3, 3))), L.Flatten(), L.Dense(2))
    assert train._scan_by_default(cnn) == (jax.default_backend() != "cpu")


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
    assert len(history) < 50
    best = int(np.argmin(history))
    assert len(history) == best + 1 + 3
    final = train.evaluate(
        model, losses.softmax_cross_entropy, result.params, result.state, x, y_noise
    )
    assert final["loss"] == pytest.approx(history[best], rel=1e-5)


@pytest.mark.parametrize("scan", [True, False])
def test_fit_stops_on_a_non_finite_loss_keeping_the_last_finite_parameters(scan):
    model = L.serial(L.Dense(1, kernel_init=jax.nn.initializers.ones))
    x = jnp.ones((64, 4))
    y = jnp.zeros((64, 1))
    _, params, state = model.init(KEY, (4,))
    # Plain gradient descent with a huge rate diverges geometrically to inf.
    result = train.fit(
        model,
        losses.mse,
        optim.sgd(1e3),
        params,
        state,
        (x, y),
        key=KEY,
        epochs=3,
        batch_size=16,
        scan=scan,
    )
    match = re.search(r"non-finite loss \S+ at epoch (\d+), step (\d+)", result.stopped)
    assert match, result.stopped
    epoch, step = map(int, match.groups())
    assert len(result.history["train_loss"]) == epoch - 1  # finished epochs only
    assert all(
        bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(result.params)
    )
    # Every batch is the same here, so the returned (finite) parameters are the
    # ones on which the failing step saw its non-finite loss.
    pred, _ = model.apply(result.params, result.state, x)
    assert not np.isfinite(float(losses.mse(pred, y)))


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
