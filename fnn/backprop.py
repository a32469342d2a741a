"""Gradients two ways, and the proof that they agree.

``value_and_grad(model, loss, method=...)`` gives the loss and its parameter
gradient either by JAX's autodiff (``method="autodiff"``) or by the chain rule
written by hand: each layer's ``backward`` called in reverse order from the
loss's own hand-written gradient (``method="manual"``). ``check`` and
``check_layer`` compare the two, and autodiff against central finite
differences in float64, leaf by leaf.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn.protocol import Layer, check_params, per_example_shape

METHODS = ("autodiff", "manual")

# Tolerances of `check`, all comparisons in float64. Manual and autodiff
# gradients differ only by round-off; central differences with step EPS carry
# O(EPS**2) truncation and O(|f| * 1e-16 / EPS) cancellation error, so their
# absolute tolerance scales with the function's value: FD_ATOL * max(1, |f|).
MANUAL_RTOL = 1e-6
FD_RTOL = 1e-5
ATOL = 1e-10
FD_ATOL = 1e-8
EPS = 1e-6


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _cast_floats(tree, dtype):
    """Casts the floating leaves of ``tree`` to ``dtype``; ints stay as they are."""

    def cast(leaf):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            return jnp.asarray(leaf).astype(dtype)
        return leaf

    return jax.tree.map(cast, tree)


def value_and_grad(
    model: Layer, loss, method: str = "autodiff", *, train=True, compute_dtype=None
):
    """Builds ``f(params, state, x, y, *, key=None) -> ((loss, new_state), grads)``.

    Args:
      model: a :class:`~fnn.protocol.Layer`, usually a ``serial`` network.
      loss: ``loss(pred, target) -> scalar``; for ``method="manual"`` it must
        also carry a hand-written ``loss.grad(pred, target)`` (all of
        :mod:`fnn.losses` do).
      method: ``"autodiff"`` (``jax.value_and_grad`` through ``model.apply``)
        or ``"manual"`` (``model.forward``, ``loss.grad``, ``model.backward``).
      train: runs the model in training mode (dropout on, batch statistics).
      compute_dtype: mixed precision, e.g. ``jnp.bfloat16``: the forward and
        backward passes run on parameters and inputs cast to it, while the
        loss is computed in float32 and the gradients come back in the
        parameters' own dtype (float32 master weights). ``None``: no casts.

    Returns:
      A pure function, ready for ``jax.jit`` and ``jax.vmap``; ``grads`` has
      the structure of ``params``. Its ``loss_scale`` keyword (a float or a
      traced scalar; see :func:`fnn.optim.dynamic_loss_scale`) multiplies
      the loss before the backward pass, so that float16 cotangents do not
      underflow: ``grads`` are then the scaled ones, while the loss returned
      stays unscaled.
    """
    _check_method(method)

    def lowered(params, x):
        if compute_dtype is None:
            return params, x
        return _cast_floats(params, compute_dtype), _cast_floats(x, compute_dtype)

    def loss_dtype(pred):
        return pred if compute_dtype is None else _cast_floats(pred, jnp.float32)

    if method == "autodiff":

        def objective(params, state, x, y, key, scale):
            check_params(model, params, state, per_example_shape(x))
            params, x = lowered(params, x)
            pred, new_state = model.apply(params, state, x, key=key, train=train)
            value = loss(loss_dtype(pred), y)
            return value * scale, (value, new_state)

        grad_fn = jax.grad(objective, has_aux=True)

        def autodiff(params, state, x, y, *, key=None, loss_scale=None):
            scale = 1.0 if loss_scale is None else loss_scale
            grads, aux = grad_fn(params, state, x, y, key, scale)
            return aux, grads

        return autodiff

    if not callable(getattr(loss, "grad", None)):
        raise TypeError(
            f"method='manual' needs a loss with a hand-written gradient "
            f"`loss.grad(pred, target)`; {loss!r} has none. Use a loss from "
            f"fnn.losses or method='autodiff'."
        )

    def manual(params, state, x, y, *, key=None, loss_scale=None):
        check_params(model, params, state, per_example_shape(x))
        low_params, x = lowered(params, x)
        pred, new_state, cache = model.forward(
            low_params, state, x, key=key, train=train
        )
        pred32 = loss_dtype(pred)
        dpred = loss.grad(pred32, y)
        if loss_scale is not None:
            dpred = dpred * loss_scale
        dpred = dpred.astype(pred.dtype)
        grads, _ = model.backward(low_params, cache, dpred)
        if compute_dtype is not None:  # back to the master weights' dtypes
            grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        return (loss(pred32, y), new_state), grads

    return manual


# --------------------------------------------------------------------------
# Checks


@dataclasses.dataclass(frozen=True)
class LeafCheck:
    """One row of a gradient report: a parameter leaf (or the input ``x``)."""

    path: str
    shape: tuple
    manual_abs: float  # max |manual - autodiff|
    manual_rel: float  # manual_abs / max |autodiff|
    fd_abs: float  # |<autodiff, t> - central difference along t|, NaN if skipped
    fd_rel: float
    fd_atol: float = FD_ATOL  # round-off allowance of the difference quotient

    @property
    def ok(self) -> bool:
        manual_ok = self.manual_abs <= ATOL or self.manual_rel <= MANUAL_RTOL
        fd_ok = (
            np.isnan(self.fd_abs)
            or self.fd_abs <= self.fd_atol
            or self.fd_rel <= FD_RTOL
        )
        return bool(manual_ok and fd_ok)


@dataclasses.dataclass(frozen=True)
class GradCheckReport:
    """Per-leaf comparison of manual, autodiff and finite-difference gradients.

    ``report.ok`` is true when every leaf passes; ``str(report)`` is a table.
    """

    rows: tuple[LeafCheck, ...]
    loss: float

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    def failures(self) -> tuple[LeafCheck, ...]:
        return tuple(row for row in self.rows if not row.ok)

    def __str__(self) -> str:
        width = max([len("leaf")] + [len(r.path) for r in self.rows])
        head = (
            f"{'leaf':<{width}}  {'shape':<14} {'manual-autodiff':>16} "
            f"{'(rel)':>9} {'autodiff-fd':>12} {'(rel)':>9}  ok"
        )
        lines = [f"gradient check, float64, loss {self.loss:.6g}", head]
        for r in self.rows:
            lines.append(
                f"{r.path:<{width}}  {str(r.shape):<14} {r.manual_abs:>16.2e} "
                f"{r.manual_rel:>9.1e} {r.fd_abs:>12.2e} {r.fd_rel:>9.1e}  "
                f"{'yes' if r.ok else 'NO'}"
            )
        verdict = "all leaves agree" if self.ok else f"{len(self.failures())} FAILED"
        lines.append(
            f"{verdict} (tolerances: manual rel {MANUAL_RTOL:g}, fd rel {FD_RTOL:g})"
        )
        return "\n".join(lines)


def _to_float64(tree):
    def cast(leaf):
        leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.astype(jnp.float64)
        return leaf

    return jax.tree.map(cast, tree)


def _errors(manual, autodiff) -> tuple[float, float]:
    """Max abs difference, and that relative to the largest autodiff entry."""
    manual, autodiff = np.asarray(manual), np.asarray(autodiff)
    if manual.shape != autodiff.shape:
        raise ValueError(
            f"manual gradient has shape {manual.shape}, autodiff {autodiff.shape}"
        )
    if manual.size == 0:
        return 0.0, 0.0
    err = float(np.max(np.abs(manual - autodiff)))
    return err, err / max(float(np.max(np.abs(autodiff))), 1e-300)


def _gradients_and_differences(scalar_fn, manual_fn, primals, directions, fd):
    """Everything a check needs, computed in one jitted float64 program.

    Returns ``(value, manual, autodiff, predicted, numeric)``: the scalar at
    ``primals``, the hand-written and autodiff gradients of it, and per leaf
    ``<autodiff_i, t_i>`` and the central difference of ``scalar_fn`` along
    the unit direction ``t_i`` (a leaf of ``directions``) that moves that
    leaf only.
    """
    value, autodiff = jax.value_and_grad(scalar_fn)(primals)
    manual = manual_fn(primals)
    leaves, treedef = jax.tree.flatten(primals)
    auto_leaves, dir_leaves = jax.tree.leaves(autodiff), jax.tree.leaves(directions)
    predicted, numeric = [], []
    for i, (leaf, a, t) in enumerate(zip(leaves, auto_leaves, dir_leaves)):
        if not (fd and leaf.size):
            predicted.append(jnp.nan)
            numeric.append(jnp.nan)
            continue

        def moved(sign, i=i, t=t):
            shifted = list(leaves)
            shifted[i] = leaves[i] + sign * EPS * t
            return scalar_fn(jax.tree.unflatten(treedef, shifted))

        predicted.append(jnp.vdot(a, t))
        numeric.append((moved(1.0) - moved(-1.0)) / (2 * EPS))
    return value, manual, autodiff, jnp.stack(predicted), jnp.stack(numeric)


def _compare(scalar_fn, manual_fn, primals, *, finite_differences, seed):
    """One :class:`LeafCheck` per leaf of ``primals``, and the scalar's value."""
    # Test vectors come from NumPy: random bits drawn inside the jitted
    # program would multiply its compile time for nothing.
    rng = np.random.default_rng(seed)
    directions = jax.tree.map(
        lambda leaf: _unit(rng.standard_normal(np.shape(leaf))), primals
    )
    run = jax.jit(
        lambda p, d: _gradients_and_differences(
            scalar_fn, manual_fn, p, d, finite_differences
        )
    )
    value, manual, autodiff, predicted, numeric = jax.device_get(
        run(primals, directions)
    )
    paths = [keystr for keystr, _ in _named_leaves(primals)]
    manual_leaves, auto_leaves = jax.tree.leaves(manual), jax.tree.leaves(autodiff)
    if len(manual_leaves) != len(paths):
        raise ValueError(
            f"manual gradient has {len(manual_leaves)} leaves where the "
            f"primals have {len(paths)}: a backward returned the wrong structure"
        )
    fd_atol = FD_ATOL * max(1.0, abs(float(value)))
    rows = []
    for path, m, a, p, n in zip(paths, manual_leaves, auto_leaves, predicted, numeric):
        m_abs, m_rel = _errors(m, a)
        f_abs = abs(float(p) - float(n))
        f_rel = f_abs / max(abs(float(p)), abs(float(n)), 1e-300)
        rows.append(
            LeafCheck(path, tuple(np.shape(a)), m_abs, m_rel, f_abs, f_rel, fd_atol)
        )
    return tuple(rows), float(value)


def _unit(t):
    return t / max(float(np.linalg.norm(t)), 1e-300)


def _named_leaves(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(jax.tree_util.keystr(path) or "(root)", leaf) for path, leaf in flat]


def check(
    model: Layer,
    loss,
    params,
    state,
    x,
    y,
    *,
    key=None,
    finite_differences=True,
    train=True,
    seed=0,
) -> GradCheckReport:
    """Compares manual, autodiff and finite-difference gradients of a loss.

    Everything runs in float64 (inside a scoped ``jax.enable_x64``), as one
    compiled program. For each parameter leaf the report holds the max abs
    and relative error of the manual gradient against autodiff, and of
    autodiff against a central finite difference along a random unit
    direction (as ``jax.test_util.check_vjp`` does).

    Args:
      model, loss: as for :func:`value_and_grad`.
      params, state, x, y: the point to check at; a small batch is enough.
      key: PRNG key for layers that need one in training. Every evaluation
        uses the same key, so dropout masks stay fixed.
      finite_differences: also compare autodiff with finite differences.
      train: check the training-mode gradient (dropout, batch statistics).
      seed: seeds the random finite-difference directions.

    Returns:
      A :class:`GradCheckReport`: ``report.ok``, ``print(report)``.
    """
    manual_grad = value_and_grad(model, loss, "manual", train=train)
    with jax.enable_x64(True):
        params, state, x, y = _to_float64((params, state, x, y))
        check_params(model, params, state, per_example_shape(x))

        def loss_of(p):
            return loss(model.apply(p, state, x, key=key, train=train)[0], y)

        def manual(p):
            return manual_grad(p, state, x, y, key=key)[1]

        rows, value = _compare(
            loss_of, manual, params, finite_differences=finite_differences, seed=seed
        )
        return GradCheckReport(rows, value)


def check_layer(
    layer: Layer,
    params,
    state,
    x,
    *,
    key=None,
    train=False,
    finite_differences=True,
    seed=0,
) -> GradCheckReport:
    """Checks one layer's hand-written ``backward``, for params and input.

    A random cotangent ``c`` shaped like the layer's output is pulled back by
    ``layer.backward``; autodiff gives the same pull-back as the gradient of
    ``<apply(params, x), c>``, which finite differences check in turn; all in
    float64, as one compiled program. Rows are named ``['params']...`` and
    ``['x']``; an integer ``x`` (token ids) has no gradient and no row.
    """
    with jax.enable_x64(True):
        params, state, x = _to_float64((params, state, x))
        diff_x = all(jnp.issubdtype(v.dtype, jnp.inexact) for v in jax.tree.leaves(x))
        out = jax.eval_shape(
            lambda: layer.apply(params, state, x, key=key, train=train)[0]
        )
        rng = np.random.default_rng(seed + 1)
        cot = jax.tree.map(lambda o: rng.standard_normal(o.shape), out)

        def split(primals):
            return primals["params"], primals["x"] if diff_x else x

        def scalar(primals):
            p, xx = split(primals)
            y, _ = layer.apply(p, state, xx, key=key, train=train)
            return sum(jax.tree.leaves(jax.tree.map(jnp.vdot, y, cot)))

        def manual(primals):
            p, xx = split(primals)
            _, _, cache = layer.forward(p, state, xx, key=key, train=train)
            dparams, dx = layer.backward(p, cache, cot)
            return {"params": dparams, "x": dx} if diff_x else {"params": dparams}

        primals = {"params": params, "x": x} if diff_x else {"params": params}
        rows, value = _compare(
            scalar, manual, primals, finite_differences=finite_differences, seed=seed
        )
        return GradCheckReport(rows, value)


# --------------------------------------------------------------------------
# Using the hand-written backward from autodiff


def _zero_cotangent(tree):
    """Zero cotangents for inputs that are not differentiated (state, keys)."""

    def zero(leaf):
        leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            return jnp.zeros_like(leaf)
        return np.zeros(leaf.shape, dtype=jax.dtypes.float0)

    return jax.tree.map(zero, tree)


def manual_vjp(layer: Layer) -> Layer:
    """The same layer, whose autodiff runs its hand-written ``backward``.

    ``apply`` is wrapped in ``jax.custom_vjp``: ``jax.grad`` of a model built
    from ``manual_vjp`` layers never differentiates their forward, it calls
    ``layer.backward`` on the cache instead. Mixing wrapped and plain layers
    in one model is fine; ``state`` and ``key`` get zero cotangents.
    """

    def apply(params, state, x, key, train):
        @jax.custom_vjp
        def run(params, state, x, key):
            y, new_state, _ = layer.forward(params, state, x, key=key, train=train)
            return y, new_state

        def run_fwd(params, state, x, key):
            y, new_state, cache = layer.forward(params, state, x, key=key, train=train)
            return (y, new_state), (params, state, key, cache)

        def run_bwd(residuals, cotangents):
            params, state, key, cache = residuals
            dy, _ = cotangents  # the new state is not differentiated
            dparams, dx = layer.backward(params, cache, dy)
            return dparams, _zero_cotangent(state), dx, _zero_cotangent(key)

        run.defvjp(run_fwd, run_bwd)
        return run(params, state, x, key)

    def forward(params, state, x, *, key=None, train=False):
        y, new_state = apply(params, state, x, key, train)
        # The cache of the wrapped layer is still what its backward needs.
        _, _, cache = layer.forward(params, state, x, key=key, train=train)
        return y, new_state, cache

    return Layer(
        layer.init, forward, layer.backward, f"manual_vjp({layer.name})", (layer,)
    )


# --------------------------------------------------------------------------
# Inspecting gradients


def grad_norms(grads) -> dict[str, jax.Array]:
    """The L2 norm of each layer's gradient, keyed like ``'[2]'`` or ``"['w']"``.

    For a ``serial`` model's gradient (a tuple, one entry per layer) this is
    one norm per layer; layers without parameters are left out. Any other
    tree gives one norm per top-level entry.
    """
    if isinstance(grads, (tuple, list)):
        items = [(jax.tree_util.SequenceKey(i), g) for i, g in enumerate(grads)]
    elif isinstance(grads, dict):
        items = [(jax.tree_util.DictKey(k), g) for k, g in grads.items()]
    else:
        return {"(root)": optax.tree.norm(grads)}
    return {
        jax.tree_util.keystr((k,)): optax.tree.norm(g)
        for k, g in items
        if jax.tree.leaves(g)
    }


# --------------------------------------------------------------------------
# Per-example gradients


def per_example_grads(model: Layer, loss, method: str = "autodiff", *, train=True):
    """Builds ``f(params, state, x, y, *, key=None) -> (losses, grads)``.

    ``losses`` has shape ``(N,)`` and every leaf of ``grads`` a leading axis
    of ``N``: the gradient of each example's loss on its own, by
    ``jax.vmap`` over batches of one (either gradient method). Their mean is
    the batch gradient. Undefined for batch norm, which couples the examples
    of a batch: a model with state is refused. Each example gets its own
    dropout key, split from ``key``.
    """
    grad_fn = value_and_grad(model, loss, method, train=train)

    def one(params, state, x, y, key):
        (value, _), grads = grad_fn(params, state, x[None], y[None], key=key)
        return value, grads

    def f(params, state, x, y, *, key=None):
        if jax.tree.leaves(state):
            raise ValueError(
                "per_example_grads: the model has state (batch norm?), which "
                "couples the examples of a batch; per-example gradients are "
                "undefined. Use LayerNorm, or no normalisation."
            )
        keys = None if key is None else jax.random.split(key, len(x))
        return jax.vmap(
            one, in_axes=(None, None, 0, 0, 0 if keys is not None else None)
        )(params, state, x, y, keys)

    return f


def per_example_norms(grads) -> jax.Array:
    """Global L2 norm of each example's gradient: shape ``(N,)``."""
    squares = [
        jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1)
        for g in jax.tree.leaves(grads)
    ]
    return jnp.sqrt(sum(squares))
