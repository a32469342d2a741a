"""Losses: values against NumPy formulas, hand-written gradients against jax.grad."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fnn import losses as L
from fnn import metrics

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


def _class_probabilities(shape):
    z, labels = _int_labels(shape)
    p = np.exp(_log_softmax(z))
    return p, labels


def _ce(p, labels):
    t = np.eye(p.shape[-1])[labels]
    return -np.sum(t * np.log(p)) / (p.size // p.shape[-1])


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
    ("cross_entropy", L.cross_entropy, _class_probabilities, _ce, CLASS_SHAPES),
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


# (loss, pred, target, message fragment): wrong values, caught on concrete inputs.
BAD_VALUES = [
    (
        L.binary_cross_entropy,
        [2.0, -1.0],
        [1.0, 0.0],
        "probabilities must lie in [0, 1], got values from -1.0 to 2.0; for logits",
    ),
    (L.binary_cross_entropy, [0.5, 0.5], [1.0, 2.0], "targets must lie in [0, 1]"),
    (
        L.sigmoid_binary_cross_entropy,
        [0.5, 0.5],
        [-1.0, 1.0],
        "targets must lie in [0, 1]",
    ),
    (
        L.hinge,
        [0.5, 0.5],
        [0.0, 1.0],
        "labels must be one of [-1, 1], got [0.0]; for 0/1 labels",
    ),
    (L.softmax_cross_entropy, [[1.0, 0.0]], [[-0.5, 1.5]], "targets must be >= 0"),
    (
        L.softmax_cross_entropy,
        [[1.0], [2.0]],
        [0, 0],
        "one class: softmax over one class is always 1",
    ),
    (
        L.softmax_cross_entropy,
        [1.0, 2.0],
        [0.0, 1.0],
        "a batch axis and a class axis, e.g. (N, C), got shape (2,)",
    ),
    (L.cross_entropy, [[2.0, -1.0]], [0], "probabilities must lie in [0, 1]"),
    (L.cross_entropy, [[0.5, 0.5]], [2], "labels must lie in [0, 2)"),
]


@pytest.mark.parametrize("loss,pred,target,fragment", BAD_VALUES)
def test_wrong_values_raise_when_concrete(loss, pred, target, fragment):
    pred, target = jnp.array(pred), jnp.array(target)
    for fn in (loss.value, loss.grad):
        with pytest.raises(ValueError, match=f"^{loss.name}: .*{re.escape(fragment)}"):
            fn(pred, target)


def test_hinge_labels_are_not_checked_under_jit_but_documented():
    # Under jit the values are unknown: the loss computes with what it gets.
    pred, target = jnp.array([0.5, 0.5]), jnp.array([0.0, 1.0])
    assert jax.jit(L.hinge)(pred, target) == pytest.approx((1 + 0.5) / 2)


def test_cross_entropy_after_softmax_is_softmax_cross_entropy():
    z = jnp.array([[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]])
    labels = jnp.array([0, 1])
    p = jax.nn.softmax(z)
    np.testing.assert_allclose(
        L.cross_entropy(p, labels), L.softmax_cross_entropy(z, labels), rtol=1e-6
    )
    # The course's formula, -1/N sum y log p, by hand: -(log p[0,0] + log p[1,1]) / 2.
    by_hand = -(np.log(p[0, 0]) + np.log(p[1, 1])) / 2
    np.testing.assert_allclose(L.cross_entropy(p, labels), by_hand, rtol=1e-6)


def test_cross_entropy_clamps_a_zero_probability():
    p = jnp.array([[0.0, 1.0], [0.25, 0.75]])
    labels = jnp.array([0, 1])
    value, grad, autodiff = _value_grad_autodiff(L.cross_entropy)(p, labels)
    np.testing.assert_allclose(value, (-np.log(1e-7) - np.log(0.75)) / 2, rtol=1e-6)
    # No gradient through the clamp; -y / (N p) elsewhere.
    np.testing.assert_allclose(grad, [[0, 0], [0, -1 / (2 * 0.75)]], rtol=1e-6)
    np.testing.assert_allclose(autodiff, grad, rtol=1e-6)


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
@pytest.mark.parametrize("loss", [None, L.softmax_cross_entropy, L.mse])
def test_accuracy_by_argmax(logits, labels, expected, loss):
    logits, labels = jnp.array(logits, jnp.float32), jnp.array(labels)
    fn = jax.jit(lambda z, t: L.accuracy(z, t, loss=loss))
    assert fn(logits, labels) == pytest.approx(expected)


# Right on rows 0 and 3 only: a model right half the time scores 0.5.
BINARY = [
    (L.sigmoid_binary_cross_entropy, [2.0, -1.0, 0.5, -3.0], [1, 1, 0, 0]),
    (L.sigmoid_binary_cross_entropy, [0.1, 0.0, 1e-3, -0.1], [1.0, 1.0, 0.0, 0.0]),
    (L.binary_cross_entropy, [0.9, 0.4, 0.6, 0.1], [1, 1, 0, 0]),
    (L.binary_cross_entropy, [0.51, 0.5, 0.7, 0.0], [1, 1, 0, 0]),
    (L.hinge, [2.0, -1.0, 0.5, -3.0], [1, 1, -1, -1]),
    (L.hinge, [0.3, 0.0, 1e-3, -0.2], [1.0, 1.0, -1.0, -1.0]),
]


@pytest.mark.parametrize("loss,pred,target", BINARY)
@pytest.mark.parametrize("labels_shape", ["(N,)", "(N, 1)"])
def test_accuracy_of_one_output_follows_the_loss(loss, pred, target, labels_shape):
    pred = jnp.array(pred, jnp.float32)[:, None]  # (N, 1), one output
    target = jnp.array(target)
    if labels_shape == "(N, 1)":
        target = target[:, None]
    assert L.accuracy(pred, target, loss=loss) == 0.5
    assert jax.jit(lambda p, t: L.accuracy(p, t, loss=loss))(pred, target) == 0.5


def test_accuracy_of_several_binary_outputs_counts_each_decision():
    logits = jnp.array([[1.0, -1.0, 3.0], [-1.0, -1.0, 2.0]])
    targets = jnp.array([[1, 0, 0], [1, 0, 1]])  # right: 2 of 3, then 2 of 3
    got = L.accuracy(logits, targets, loss=L.sigmoid_binary_cross_entropy)
    assert got == pytest.approx(4 / 6)


def test_accuracy_never_counts_a_nan_prediction_as_right():
    # argmax([nan, 0]) is 0, the label: a diverged model used to score 1.0.
    logits = jnp.array([[jnp.nan, 0.0], [1.0, 0.0]])
    assert L.accuracy(logits, jnp.array([0, 0])) == 0.5
    single = jnp.array([[jnp.nan], [1.0]])
    assert (
        L.accuracy(single, jnp.array([0, 1]), loss=L.sigmoid_binary_cross_entropy)
        == 0.5
    )


@pytest.mark.parametrize("loss", [None, L.mse, L.l2_error])
def test_accuracy_of_one_output_without_a_rule_raises(loss):
    with pytest.raises(
        ValueError, match=r"accuracy: .*\(4, 1\) have one output.*loss="
    ):
        L.accuracy(jnp.zeros((4, 1)), jnp.zeros((4, 1), jnp.int32), loss=loss)


# (loss, pred, target, message fragment)
BAD_ACCURACY = [
    (
        L.sigmoid_binary_cross_entropy,
        [[1.0], [0.0]],
        [2, 0],
        "binary targets must lie in [0, 1]",
    ),
    (L.hinge, [[1.0], [0.0]], [1, 0], "hinge labels must be one of [-1, 1], got [0]"),
    (
        L.binary_cross_entropy,
        [[1.5], [0.0]],
        [1, 0],
        "probabilities must lie in [0, 1]",
    ),
    (
        L.sigmoid_binary_cross_entropy,
        [[1.0], [0.0]],
        [[1, 0]],
        "targets of shape (1, 2)",
    ),
    (L.softmax_cross_entropy, [[1.0, 0.0]], [2], "labels must lie in [0, 2)"),
    (L.softmax_cross_entropy, [[1.0], [0.0]], [0, 0], "one class"),
]


@pytest.mark.parametrize("loss,pred,target,fragment", BAD_ACCURACY)
def test_accuracy_refuses_targets_that_do_not_fit_the_loss(
    loss, pred, target, fragment
):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        L.accuracy(jnp.array(pred), jnp.array(target), loss=loss)


def test_decision_rules_and_when_an_accuracy_exists():
    assert metrics.decision_of(L.sigmoid_binary_cross_entropy, (4, 1)) == "logit"
    assert metrics.decision_of(L.binary_cross_entropy, (4, 1)) == "probability"
    assert metrics.decision_of(L.hinge, (4,)) == "sign"
    assert metrics.decision_of(L.cross_entropy, (4, 3)) == "argmax"
    assert metrics.decision_of(L.mse, (4, 3)) == "argmax"
    assert metrics.decision_of(None, (4, 1)) is None
    assert metrics.has_accuracy(L.sigmoid_binary_cross_entropy, (4, 1), jnp.float32)
    assert metrics.has_accuracy(L.mse, (4, 3), jnp.int32)
    assert not metrics.has_accuracy(L.mse, (4, 3), jnp.float32)
    assert not metrics.has_accuracy(L.mse, (4, 1), jnp.int32)


def test_loss_records_call_and_read():
    pred, target = jnp.array([1.0, 3.0]), jnp.array([0.0, 0.0])
    assert L.mse(pred, target) == L.mse.value(pred, target) == 5.0
    assert jax.jit(L.mse)(pred, target) == 5.0  # jit takes the record itself
    np.testing.assert_array_equal(jax.jit(L.mse.grad)(pred, target), [1.0, 3.0])
    assert jax.tree.leaves(L.mse) == [L.mse]  # a record, not a pytree of functions
    assert repr(L.softmax_cross_entropy) == "fnn.losses.softmax_cross_entropy"
    assert L.l2_penalty({"w": pred}) == 5.0


def test_check_targets_runs_the_loss_checks_without_computing():
    labels = np.array([0, 9, 10])  # 10 is out of range for 10 classes
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        L.check_targets(L.softmax_cross_entropy, (3, 10), labels)
    with pytest.raises(ValueError, match="target shape"):
        L.check_targets(L.sigmoid_binary_cross_entropy, (3, 1), np.zeros(3))
    with pytest.raises(ValueError, match="hinge: labels must be one of"):
        L.check_targets(L.hinge, (3,), np.array([1.0, 0.0, -1.0]))
    L.check_targets(L.softmax_cross_entropy, (3, 10), labels % 10)  # fine: no error
    # A custom loss's own checks run too.
    L.check_targets(lambda p, t: jnp.mean((p - t) ** 2), (3,), np.zeros(3))


@pytest.mark.parametrize("loss", L.LOSSES, ids=repr)
def test_an_empty_batch_raises_instead_of_a_nan_mean(loss):
    shape = (0, 3)
    target = np.zeros((0,), np.int32) if loss.decision == "argmax" else np.zeros(shape)
    with pytest.raises(ValueError, match=f"^{loss.name}: expected predictions"):
        loss(jnp.zeros(shape), target)
    with pytest.raises(ValueError, match="^accuracy: expected predictions"):
        L.accuracy(jnp.zeros(shape), target, loss=loss)


NETWORK_PARAMS = (
    {"w": np.array([[1.0, -2.0], [0.0, 3.0]]), "b": np.array([0.5, -0.5])},
    (),
    {"scale": np.array([2.0, -1.0]), "shift": np.array([1.0, 1.0])},
    {"w": np.array([[[[-1.0]]]]), "b": np.array([4.0])},  # a 1x1 conv kernel
)


@pytest.mark.parametrize("weights_only", [False, True])
def test_penalty_is_l1_plus_half_l2_and_its_grad_is_autodiffs(weights_only):
    r = L.penalty(l1=0.3, l2=0.5, weights_only=weights_only)
    with jax.enable_x64(True):
        params = jax.tree.map(jnp.asarray, NETWORK_PARAMS)
        value, grad, autodiff = jax.jit(lambda p: (r(p), r.grad(p), jax.grad(r)(p)))(
            params
        )
    kept = [
        w for w in jax.tree.leaves(NETWORK_PARAMS) if w.ndim >= 2 or not weights_only
    ]
    by_hand = sum(0.3 * np.abs(w).sum() + 0.25 * (w**2).sum() for w in kept)
    # weights only: kernels [[1,-2],[0,3]] and [-1]: 0.3 * 7 + 0.25 * 15 = 5.85
    if weights_only:
        assert by_hand == pytest.approx(5.85)
    np.testing.assert_allclose(value, by_hand, rtol=1e-12)
    jax.tree.map(np.testing.assert_array_equal, grad, autodiff)
    if weights_only:  # biases and norm scales feel nothing
        np.testing.assert_array_equal(grad[0]["b"], 0.0)
        np.testing.assert_array_equal(grad[2]["scale"], 0.0)
    np.testing.assert_allclose(
        grad[0]["w"], 0.3 * np.sign([[1, -2], [1, 3]]) + 0.5 * NETWORK_PARAMS[0]["w"]
    )


def test_penalty_options_are_checked():
    with pytest.raises(ValueError, match="penalty: l2 must be finite and >= 0"):
        L.penalty(l2=-1e-4)
    with pytest.raises(TypeError, match="penalty: l1 must be a real number"):
        L.penalty(l1="0.1")
    assert repr(L.penalty(l2=1e-4, weights_only=True)) == (
        "fnn.losses.penalty(l1=0, l2=0.0001, weights_only=True)"
    )


# Dtypes the losses once got wrong: float16 (1 / n overflowed past 65504
# elements, 1 - BCE_EPS rounded to 1, a sum over a batch overflowed), and
# integer predictions (float targets were truncated to them).

BIG = 70_000  # more elements than float16 can count (its largest value: 65504)


def _big_inputs(loss):
    """``(pred, target)`` in float32 with more than 65504 elements (or rows)."""
    rows = np.arange(BIG)
    if loss.decision == "argmax":
        z = np.where(rows[:, None] % 3 == np.arange(3), 2.0, -1.0)
        pred = np.exp(_log_softmax(z)) if loss.expects == "probabilities" else z
        return pred.astype(np.float32), (rows + 1) % 3  # every row wrong, ~3 each
    if loss.decision == "sign":
        return np.full(BIG, 0.25, np.float32), np.ones(BIG, np.float32)
    if loss.expects == "probabilities":
        return np.full(BIG, 0.25, np.float32), (rows % 2).astype(np.float32)
    return np.full(BIG, 1.5, np.float32), (rows % 2).astype(np.float32)


@pytest.mark.parametrize("loss", L.LOSSES, ids=repr)
def test_float16_predictions_give_float32_values_and_gradients(loss):
    pred, target = _big_inputs(loss)
    want, want_grad = loss(pred, target), loss.grad(pred, target)
    value, grad = (
        loss(pred.astype(np.float16), target),
        loss.grad(pred.astype(np.float16), target),
    )
    assert value.dtype == grad.dtype == jnp.float16
    # Was: inf (a float16 sum), or a gradient of exactly 0 (1 / 70000 = 1 / inf).
    np.testing.assert_allclose(value, want, rtol=2e-3)
    # float16 gradients of ~1e-5 are subnormal: spaced 6e-8 apart.
    np.testing.assert_allclose(grad, want_grad, rtol=2e-3, atol=1e-7)
    assert np.all(grad != 0) if loss.decision != "argmax" else np.any(grad != 0)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["f16", "bf16"])
def test_binary_cross_entropy_is_finite_at_0_and_1_in_low_precision(dtype):
    p, t = jnp.array([1.0, 0.0, 0.5], dtype), jnp.array([0.0, 1.0, 1.0], dtype)
    value, grad = L.binary_cross_entropy(p, t), L.binary_cross_entropy.grad(p, t)
    # Clipped in float32: -log(1 - 0.99999988) = 15.94, -log(1e-7) = 16.12.
    want = L.binary_cross_entropy(p.astype(jnp.float32), t.astype(jnp.float32))
    assert np.isfinite(float(value))  # was inf: 1 - 1e-7 rounds to 1 in float16
    np.testing.assert_allclose(float(value), float(want), rtol=1e-2)
    np.testing.assert_allclose(grad.astype(float), [0, 0, -2 / 3], rtol=1e-2)


def test_integer_predictions_do_not_truncate_float_targets():
    pred, target = jnp.array([1, 2]), jnp.array([0.5, 1.5])
    # Was 1.0 and 1.0: the targets became the ints [0, 1].
    assert L.mse(pred, target) == 0.25 and L.mse(pred, target).dtype == jnp.float32
    assert L.mae(pred, target) == 0.5
    np.testing.assert_array_equal(L.mse.grad(pred, target), [0.5, 0.5])
    assert (
        L.mse(jnp.array([True, False]), target) == (0.5**2 + 1.5**2) / 2
    )  # was an error


def test_softmax_cross_entropy_ignores_a_class_masked_with_minus_inf():
    z = jnp.array([[2.0, -jnp.inf, 0.0], [1.0, 0.0, -jnp.inf]])
    labels = jnp.array([0, 1])
    want = optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()
    for t in (labels, jax.nn.one_hot(labels, 3)):
        value, grad, autodiff = _value_grad_autodiff(L.softmax_cross_entropy)(z, t)
        np.testing.assert_allclose(value, want, rtol=1e-6)  # was NaN: 0 * -inf
        np.testing.assert_allclose(grad, autodiff, rtol=1e-6)
        np.testing.assert_array_equal(grad[:, 1:][[0, 1], [0, 1]], 0.0)


def test_penalty_sums_float16_weights_without_overflow():
    params = {"w": jnp.full((1000, 1000), 0.25, jnp.float16), "b": jnp.ones(3)}
    # 0.5 * 0.0625 * 1e6 + 1.5: the float16 sum (62500 + ...) overflowed past 65504.
    np.testing.assert_allclose(L.l2_penalty(params), 31251.5)
    np.testing.assert_allclose(L.penalty(l1=1.0, l2=2.0)(params), 250003 + 62503)
    np.testing.assert_allclose(L.l1_penalty(params), 250003)


def test_penalty_refuses_bool_and_complex_strengths():
    for value in (np.bool_(True), np.array(True), np.complex64(1j)):
        with pytest.raises(TypeError, match="penalty: l2 must be a real number"):
            L.penalty(l2=value)
    assert L.penalty(l1=np.float32(0.5), l2=np.int64(1)).name == (
        "penalty(l1=0.5, l2=1)"
    )


def test_a_nan_does_not_hide_an_out_of_range_value():
    t = jnp.array([0.0, 1.0, 1.0])
    # Was accepted: NumPy's min and max of [nan, 0.2, 1.5] are both nan.
    with pytest.raises(ValueError, match=r"got values from 0\.2 to 1\.5; for logits"):
        L.binary_cross_entropy(jnp.array([np.nan, 0.2, 1.5]), t)
    with pytest.raises(ValueError, match="binary targets must lie in"):
        L.accuracy(jnp.array([0.1, 0.2]), [np.nan, 2.0], loss=L.binary_cross_entropy)
    assert np.isnan(L.binary_cross_entropy(jnp.array([np.nan, 0.2, 0.5]), t))


def test_a_nan_probability_gives_a_nan_loss_and_gradient_like_jax_grad():
    p, labels = jnp.array([[np.nan, 0.5, 0.5], [0.2, 0.3, 0.5]]), jnp.array([0, 2])
    value, grad, autodiff = _value_grad_autodiff(L.cross_entropy)(p, labels)
    assert np.isnan(value)  # was 8.4: the NaN clamped to 1e-7 cost -log(1e-7)
    np.testing.assert_array_equal(grad, autodiff)
    assert np.isnan(grad[0, 0]) and np.isfinite(grad[1]).all()
    q, t = jnp.array([np.nan, 0.3]), jnp.array([1.0, 0.0])
    value, grad, autodiff = _value_grad_autodiff(L.binary_cross_entropy)(q, t)
    assert np.isnan(value)
    np.testing.assert_array_equal(grad, autodiff)  # grad was [0, 0.71]
    np.testing.assert_allclose(grad[1], 1 / 0.7 / 2, rtol=1e-6)
