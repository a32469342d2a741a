"""evaluate: the losses it accepts and the ones it refuses, with a clear message."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fnn import losses, train
from fnn.dense import Dense


@dataclasses.dataclass
class Scaled:
    """A loss with an option: a plain (unfrozen) dataclass, so not hashable."""

    factor: float

    def __call__(self, pred, target):
        return self.factor * losses.mse(pred, target)


def _setup():
    model = Dense(2)
    _, params, state = model.init(jax.random.key(0), (3,))
    x = np.arange(15, dtype=np.float32).reshape(5, 3) / 10
    return model, params, state, x


def test_evaluate_takes_a_loss_that_cannot_be_hashed():
    model, params, state, x = _setup()
    y = np.ones((5, 2), np.float32)
    # Was TypeError: unhashable type: 'Scaled' (fit: after a whole epoch).
    result = train.evaluate(model, Scaled(3.0), params, state, x, y, batch_size=2)
    pred, _ = model.apply(params, state, x)
    assert result == {"loss": pytest.approx(3 * float(losses.mse(pred, y)), rel=1e-6)}


def test_evaluate_refuses_a_per_example_loss():
    model, params, state, x = _setup()
    labels = np.array([0, 1, 1, 0, 1])
    per_example = optax.softmax_cross_entropy_with_integer_labels
    # Was a bare "Cannot stack arrays with different numbers of dimensions".
    with pytest.raises(
        ValueError, match=r"^evaluate: the loss .* returned shape \(2,\)"
    ):
        train.evaluate(model, per_example, params, state, x, labels, batch_size=2)

    def mean(pred, y):
        return jnp.mean(per_example(pred, y))

    result = train.evaluate(model, mean, params, state, x, labels, batch_size=2)
    pred, _ = model.apply(params, state, x)
    assert result["loss"] == pytest.approx(float(mean(pred, labels)), rel=1e-6)
    assert result["accuracy"] == pytest.approx(np.mean(pred.argmax(-1) == labels))
