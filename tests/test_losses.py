"""Losses: values against NumPy formulas, hand-written gradients against jax.grad."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import losses as L

RNG = np.random.default_rng(0)


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _xent(z, t):
    return -np.sum(t * _log_softmax(z)) / (z.size // z.shape[-1])


# Input makers: (shape) -> (pred, target), float64 NumPy arrays.
def _regression(shape):
    return RNG.normal(size=shape), RNG.normal(size=shape)


def _probabilities(shape):
    return RNG.uniform(0.02, 0.98, shape), RNG.uniform(0, 1, shape)


def _binary_logits(shape):
    return RNG.normal(size=shape) * 3, RNG.integers(0, 2, shape).astype(float)


def _signed(shape):
    pred = RNG.normal(size=shape) * 2
    return pred, RNG.choice([-1.0, 1.0], shape)


def _int_labels(shape):
    return RNG.normal(size=shape) * 3, RNG.integers(0, shape[-1], shape[:-1])


def _one_hot(shape):
    z, labels = _int_labels(shape)
    return z, np.eye(shape[-1])[labels]


def _soft_labels(shape):
    t = RNG.uniform(0, 1, shape)
    return RNG.normal(size=shape) * 3, t / t.sum(-1, keepdims=True)


def _unnormalised(shape):
    return RNG.normal(size=shape) * 3, RNG.uniform(0, 1, shape)


ELEMENT_SHAPES = [(5,), (4, 3), (2, 3, 4)]
CLASS_SHAPES = [(5, 3), (2, 3, 4), (1, 2)]

# (id, loss, input maker, NumPy reference of the value, shapes)
CASES = [
    ("mse", L.mse, _regression, lambda p, t: np.mean((p - t) ** 2), ELEMENT_SHAPES),
    ("mae", L.mae, _regression, lambda p, t: np.mean(np.abs(p - t)), ELEMENT_SHAPES),
    (
        "l2_error",
        L.l2_error,
        _regression,
        lambda p, t: 0.5 * np.sum((p - t) ** 2) / p.shape[0],
        ELEMENT_SHAPES,
    ),
    (
        "bce",
        L.binary_cross_entropy,
        _probabilities,
        lambda p, t: -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)),
        ELEMENT_SHAPES,
    ),
    (
        "sigmoid_bce",
        L.sigmoid_binary_cross_entropy,
        _binary_logits,
        lambda z, t: (
            -np.mean(t * np.log(_sigmoid(z)) + (1 - t) * np.log(1 - _sigmoid(z)))
        ),
        ELEMENT_SHAPES,
    ),
    (
        "hinge",
        L.hinge,
        _signed,
        lambda p, t: np.mean(np.maximum(0, 1 - t * p)),
        ELEMENT_SHAPES,
    ),
    ("xent_int", L.softmax_cross_entropy, _int_labels, None, CLASS_SHAPES),
    ("xent_one_hot", L.softmax_cross_entropy, _one_hot, _xent, CLASS_SHAPES),
    ("xent_soft", L.softmax_cross_entropy, _soft_labels, _xent, CLASS_SHAPES),
    ("xent_unnormalised", L.softmax_cross_entropy, _unnormalised, _xent, CLASS_SHAPES),
]


def _int_reference(z, labels):
    return _xent(z, np.eye(z.shape[-1])[labels])


PARAMS = [
    pytest.param(loss, make, ref or _int_reference, shape, id=f"{name}-{shape}")
    for name, loss, make, ref, shapes in CASES
    for shape in shapes
]


def _value_grad_autodiff(loss):
    return jax.jit(lambda p, t: (loss(p, t), loss.grad(p, t), jax.grad(loss)(p, t)))


def test_cases_cover_every_loss():
    assert {case[1] for case in CASES} == set(L.LOSSES)


@pytest.mark.parametrize("loss,make,reference,shape", PARAMS)
def test_loss_value_and_grad(loss, make, reference, shape):
    pred, target = make(shape)
    with jax.enable_x64(True):
        value, grad, autodiff = _value_grad_autodiff(loss)(pred, target)
    assert value.shape == () and grad.shape == pred.shape
    np.testing.assert_allclose(value, reference(pred, target), rtol=1e-12)
    np.testing.assert_allclose(grad, autodiff, rtol=1e-12, atol=1e-15)


# (loss, pred, target, expected gradient): points on the kinks, as jax.grad.
KINKS = [
    (L.mae, [1.0, 2.0, 3.0], [1.0, 0.0, 5.0], [1 / 3, 1 / 3, -1 / 3]),
    (L.hinge, [1.0, -1.0, 0.5, 2.0], [1.0, -1.0, 1.0, 1.0], [0, 0, -1 / 4, 0]),
    (L.binary_cross_entropy, [0.0, 1.0, 0.5], [1.0, 0.0, 1.0], [0, 0, -2 / 3]),
    (L.sigmoid_binary_cross_entropy, [0.0, 0.0], [1.0, 0.0], [-1 / 4, 1 / 4]),
]


@pytest.mark.parametrize("loss,pred,target,expected", KINKS, ids=repr)
def test_gradient_conventions_at_kinks(loss, pred, target, expected):
    pred, target = jnp.array(pred), jnp.array(target)
    value, grad, autodiff = _value_grad_autodiff(loss)(pred, target)
    assert np.isfinite(value)
    np.testing.assert_allclose(grad, expected, rtol=1e-6)
    np.testing.assert_allclose(autodiff, expected, rtol=1e-6)


@pytest.mark.parametrize("scale", [1000.0, 5000.0])
def test_sigmoid_bce_is_exact_for_huge_logits(scale):
    z = jnp.array([1.0, 1.0, -1.0, -1.0], jnp.float32) * scale
    t = jnp.array([1.0, 0.0, 1.0, 0.0], jnp.float32)
    value, grad, autodiff = _value_grad_autodiff(L.sigmoid_binary_cross_entropy)(z, t)
    # Confident and right costs 0; confident and wrong costs |z|.
    np.testing.assert_allclose(value, (0 + scale + scale + 0) / 4)
    np.testing.assert_allclose(grad, [0, 1 / 4, -1 / 4, 0])
    np.testing.assert_allclose(autodiff, grad)


def test_softmax_cross_entropy_is_finite_for_huge_logits():
    z = jnp.array([[1e4, 0.0, -1e4], [0.0, 1e4, 2e4]], jnp.float32)
    labels = jnp.array([0, 0])
    value, grad, autodiff = _value_grad_autodiff(L.softmax_cross_entropy)(z, labels)
    np.testing.assert_allclose(value, (0 + 2e4) / 2)
    np.testing.assert_allclose(grad, [[0, 0, 0], [-0.5, 0, 0.5]], atol=1e-7)
    np.testing.assert_allclose(autodiff, grad, atol=1e-7)


def test_grad_keeps_pred_dtype():
    with jax.enable_x64(True):
        pred = jnp.ones((3, 2), jnp.float32)
        grad = L.mse.grad(pred, np.zeros((3, 2)))  # float64 target
    assert grad.dtype == jnp.float32
    np.testing.assert_allclose(grad, np.full((3, 2), 2 / 6))


# (loss, pred shape, target shape, target dtype, message fragment)
MISMATCHES = [
    (L.mse, (4,), (4, 1), float, "target shape (4, 1) does not match pred shape (4,)"),
    (L.mae, (4, 1), (4,), float, "target shape (4,) does not match pred shape (4, 1)"),
    (L.l2_error, (3, 2), (2, 3), float, "(2, 3) does not match pred shape (3, 2)"),
    (L.binary_cross_entropy, (4,), (4, 1), float, "(4, 1) does not match"),
    (L.sigmoid_binary_cross_entropy, (4,), (4, 1), float, "(4, 1) does not match"),
    (L.hinge, (4, 1), (1, 4), float, "(1, 4) does not match pred shape (4, 1)"),
    (L.mse, (), (), float, "non-empty leading batch axis, got shape ()"),
    (L.softmax_cross_entropy, (4, 3), (4, 1), int, "must have shape (4,)"),
    (L.softmax_cross_entropy, (4, 3), (3,), int, "got (3,)"),
    (L.softmax_cross_entropy, (4, 3), (4,), float, "must be integers"),
    (L.softmax_cross_entropy, (4, 3), (4, 2), float, "labels of shape (4, 2)"),
    (L.softmax_cross_entropy, (2, 5, 3), (2, 3), int, "(2, 5)"),
]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("loss,pred_shape,target_shape,dtype,fragment", MISMATCHES)
def test_shape_mismatch_raises_naming_loss_and_shapes(
    loss, pred_shape, target_shape, dtype, fragment, jit
):
    pred, target = np.zeros(pred_shape), np.zeros(target_shape, dtype)
    for fn in (loss.value, loss.grad):
        fn = jax.jit(fn) if jit else fn
        with pytest.raises(ValueError, match=f"^{loss.name}: .*{re.escape(fragment)}"):
            fn(pred, target)


def test_out_of_range_labels_raise_when_concrete_and_zero_out_under_jit():
    z = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    labels = jnp.array([2, 3])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).* 2 to 3"):
        L.softmax_cross_entropy(z, labels)
    # Under jit they cannot be checked: the bad row adds no loss and no gradient.
    value = jax.jit(L.softmax_cross_entropy)(z, labels)
    grad = jax.jit(L.softmax_cross_entropy.grad)(z, labels)
    np.testing.assert_allclose(value, -_log_softmax(np.array([1.0, 2, 3]))[2] / 2)
    np.testing.assert_array_equal(grad[1], [0, 0, 0])


PARAM_TREES = [
    (),
    {"w": np.array([[1.0, -2.0], [0.0, 3.0]])},
    {
        "dense": {"w": RNG.normal(size=(3, 4)), "b": np.zeros(4)},
        "out": [RNG.normal(size=2)],
    },
]

# (penalty, NumPy reference per leaf)
PENALTIES = [
    (L.l1_penalty, lambda w: np.sum(np.abs(w))),
    (L.l2_penalty, lambda w: 0.5 * np.sum(w**2)),
]


@pytest.mark.parametrize("params", PARAM_TREES, ids=["empty", "small", "nested"])
@pytest.mark.parametrize("penalty,reference", PENALTIES, ids=["l1", "l2"])
def test_penalty_value_and_grad(penalty, reference, params):
    with jax.enable_x64(True):
        params = jax.tree.map(jnp.asarray, params)
        run = jax.jit(lambda p: (penalty(p), penalty.grad(p), jax.grad(penalty)(p)))
        value, grad, autodiff = run(params)
    want = sum((reference(np.asarray(w)) for w in jax.tree.leaves(params)), 0.0)
    np.testing.assert_allclose(value, want, rtol=1e-12)
    assert jax.tree.structure(grad) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, grad, autodiff)


def test_l1_gradient_at_zero_is_plus_one_like_jax():
    grad = L.l1_penalty.grad({"w": jnp.array([-1.0, 0.0, 2.0])})
    np.testing.assert_array_equal(grad["w"], [-1, 1, 1])


ACCURACY = [
    ([[1, 2, 0], [3, 0, 0], [0, 0, 5], [1, 0, 0]], [1, 0, 1, 0], 0.75),
    ([[1, 2, 0], [3, 0, 0], [0, 0, 5], [1, 0, 0]], np.eye(3)[[1, 0, 1, 0]], 0.75),
    ([[[1, 0], [0, 1]], [[0, 1], [1, 0]]], [[0, 0], [1, 1]], 0.5),
    ([[1, 1, 0]], [0], 1.0),  # ties go to the lowest index
]


@pytest.mark.parametrize("logits,labels,expected", ACCURACY)
def test_accuracy(logits, labels, expected):
    logits, labels = jnp.array(logits, jnp.float32), jnp.array(labels)
    assert jax.jit(L.accuracy)(logits, labels) == pytest.approx(expected)


def test_loss_records_call_and_read():
    pred, target = jnp.array([1.0, 3.0]), jnp.array([0.0, 0.0])
    assert L.mse(pred, target) == L.mse.value(pred, target) == 5.0
    assert jax.jit(L.mse)(pred, target) == 5.0  # jit takes the record itself
    np.testing.assert_array_equal(jax.jit(L.mse.grad)(pred, target), [1.0, 3.0])
    assert jax.tree.leaves(L.mse) == [L.mse]  # a record, not a pytree of functions
    assert repr(L.softmax_cross_entropy) == "fnn.losses.softmax_cross_entropy"
    assert L.l2_penalty({"w": pred}) == 5.0
