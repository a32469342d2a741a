"""The proof that the two gradients agree: manual vs autodiff vs finite differences.

``check`` compares, leaf by leaf and in float64, a model's hand-written
gradient (:func:`fnn.backprop.value_and_grad` with ``method="manual"``) with
``jax.grad``, and ``jax.grad`` with central finite differences;
``check_layer`` does the same for one layer's ``backward``, parameters and
input. Both return a :class:`GradCheckReport` that prints as a table.

When a comparison passes
------------------------
A comparison passes when its absolute error is within the absolute
tolerance *or* its relative error within the relative tolerance. The
relative error divides by the size of the true gradient, so where that is
(close to) zero it means nothing: the bias of a layer followed by batch
norm has true gradient exactly 0, round-off of 1e-17 in both methods gives
a relative error of order 1, and the row passes on the absolute tolerance.
The report's ``passed on`` column says which test each row passed.

Round-off scales with the gradient, so the manual-vs-autodiff absolute
tolerance is ``ATOL`` (1e-12) times the largest autodiff entry of the
check (a fixed 1e-10 passed any backward where every gradient is below it,
near a loss of 0, or a zero gradient for a leaf 1e-11 times smaller than
the rest, deep in a network whose gradients vanish). A NaN or infinite
error never passes: it proves nothing.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fnn.protocol import Layer, check_params, per_example_shape

# Tolerances, all comparisons in float64. Manual and autodiff gradients
# differ by round-off only (below 1e-13 relative in every layer's test; 1e-6
# passed sqrt(2/pi) written 0.7978846, off by 5e-8): absolute tolerance ATOL
# times the gradient's largest entry. Central differences with step EPS
# carry O(EPS**2) truncation and O(|f| 1e-16 / EPS) cancellation error:
# absolute tolerance FD_ATOL * max(1, |f|).
MANUAL_RTOL = 1e-9
FD_RTOL = 1e-5
ATOL = 1e-12  # round-off reached 5e-16 x the scale in every test and example
FD_ATOL = 1e-8
EPS = 1e-6


def _verdict(
    abs_err: float, rel_err: float, atol: float, rtol: float, compared: bool = True
) -> str:
    """The test a comparison passed (``"abs"``, ``"rel"``), ``"FAIL"``, or
    ``"-"`` when it was not made. A NaN or infinite error fails: it must not
    read as agreement."""
    if not compared:
        return "-"
    if not np.isfinite(abs_err):
        return "FAIL"
    if abs_err <= atol:
        return "abs"
    return "rel" if rel_err <= rtol else "FAIL"


@dataclasses.dataclass(frozen=True)
class LeafCheck:
    """One row of a gradient report: a parameter leaf (or the input ``x``).

    Attributes:
      path: the leaf's path in the tree, e.g. ``"[0]['w']"``.
      shape: the leaf's shape.
      manual_abs: ``max |manual - autodiff|``.
      manual_rel: ``manual_abs / max |autodiff|``.
      fd_abs: ``|<autodiff, t> - (J(p + eps t) - J(p - eps t)) / (2 eps)|``
        along a random unit direction ``t``; NaN if skipped.
      fd_rel: ``fd_abs`` over the larger of the two directional derivatives.
      fd_atol: the absolute tolerance of the difference quotient,
        ``FD_ATOL * max(1, |J|)`` (its round-off grows with the value).
      fd_compared: False when the finite-difference comparison was not
        made (``finite_differences=False``, or an empty leaf): ``fd`` ``-``.
      manual_atol: the absolute tolerance of manual vs autodiff, ``ATOL``
        times the largest autodiff entry over every leaf of the check.
    """

    path: str
    shape: tuple
    manual_abs: float
    manual_rel: float
    fd_abs: float
    fd_rel: float
    fd_atol: float = FD_ATOL
    fd_compared: bool = True
    manual_atol: float = ATOL

    @property
    def manual_passed_on(self) -> str:
        """``"abs"``, ``"rel"`` or ``"FAIL"``: manual vs autodiff."""
        return _verdict(self.manual_abs, self.manual_rel, self.manual_atol, MANUAL_RTOL)

    @property
    def fd_passed_on(self) -> str:
        """``"abs"``, ``"rel"``, ``"FAIL"``, or ``"-"`` when not compared."""
        return _verdict(
            self.fd_abs, self.fd_rel, self.fd_atol, FD_RTOL, self.fd_compared
        )

    @property
    def ok(self) -> bool:
        return "FAIL" not in (self.manual_passed_on, self.fd_passed_on)


@dataclasses.dataclass(frozen=True)
class GradCheckReport:
    """Per-leaf comparison of manual, autodiff and finite-difference gradients.

    ``report.ok`` is true when every leaf passes; ``str(report)`` is a table
    whose ``passed on`` column names, for manual-vs-autodiff and for
    autodiff-vs-differences, the test each row passed (``abs`` or ``rel``),
    and a footer with every tolerance.
    """

    rows: tuple[LeafCheck, ...]
    loss: float

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    def failures(self) -> tuple[LeafCheck, ...]:
        return tuple(row for row in self.rows if not row.ok)

    def __str__(self) -> str:
        # Without finite differences (finite_differences=False) their columns
        # and tolerance would only show nan and "-": left out, so the table
        # fits an 80-column terminal.
        fd = any(r.fd_compared for r in self.rows)
        width = max([len("leaf")] + [len(r.path) for r in self.rows])
        head = f"{'leaf':<{width}}  {'shape':<14} {'manual-autodiff':>16} {'(rel)':>9}"
        head += f" {'autodiff-fd':>12} {'(rel)':>9}" if fd else ""
        lines = [
            f"gradient check, float64, loss {self.loss:.6g}",
            head + "  ok   passed on",
        ]
        for r in self.rows:
            line = (
                f"{r.path:<{width}}  {str(r.shape):<14} {r.manual_abs:>16.2e} "
                f"{r.manual_rel:>9.1e}"
            )
            line += f" {r.fd_abs:>12.2e} {r.fd_rel:>9.1e}" if fd else ""
            line += f"  {'yes' if r.ok else 'NO ':<4} manual {r.manual_passed_on}"
            lines.append(line + (f", fd {r.fd_passed_on}" if fd else ""))
        verdict = "all leaves agree" if self.ok else f"{len(self.failures())} FAILED"
        if not self.rows:  # not agreement: nothing was compared
            verdict = "no leaf to compare (check_layer also checks the input)"
        fd_atol = self.rows[0].fd_atol if self.rows else FD_ATOL
        atol = self.rows[0].manual_atol if self.rows else ATOL
        end = ";" if fd else "."
        lines += [
            verdict,
            "a comparison passes on abs (abs error <= atol) "
            "or rel (rel error <= rtol):",
            f"  manual-autodiff atol {atol:.3g} (= {ATOL:g} x max |autodiff|), "
            f"rtol {MANUAL_RTOL:g}{end}",
        ]
        if fd:
            lines.append(
                f"  autodiff-fd atol {fd_atol:.3g} (= {FD_ATOL:g} x max(1, |loss|)), "
                f"rtol {FD_RTOL:g}."
            )
        lines += [
            "A leaf whose true gradient is 0 (a bias before BatchNorm) passes on abs:",
            "its rel error divides round-off by ~0 and means nothing.",
        ]
        return "\n".join(lines)


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
    if not leaves:  # no parameters: nothing to stack (the report says so)
        return value, manual, autodiff, jnp.zeros(0), jnp.zeros(0)
    return value, manual, autodiff, jnp.stack(predicted), jnp.stack(numeric)


def _unit(t):
    return t / max(float(np.linalg.norm(t)), 1e-300)


def _named_leaves(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(jax.tree_util.keystr(path) or "(root)", leaf) for path, leaf in flat]


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
    manual_atol = ATOL * _scale(auto_leaves)
    rows = []
    for path, m, a, p, n in zip(paths, manual_leaves, auto_leaves, predicted, numeric):
        m_abs, m_rel = _errors(m, a)
        f_abs = abs(float(p) - float(n))
        f_rel = f_abs / max(abs(float(p)), abs(float(n)), 1e-300)
        shape, compared = tuple(np.shape(a)), bool(finite_differences and np.size(a))
        rows.append(
            LeafCheck(
                path, shape, m_abs, m_rel, f_abs, f_rel, fd_atol, compared, manual_atol
            )
        )
    return tuple(rows), float(value)


def _scale(leaves) -> float:
    """The largest ``|entry|`` over all leaves: the scale of the gradient,
    to which its round-off is proportional. NaN when an entry is not finite:
    no row then passes on an absolute tolerance made infinite or NaN."""
    sizes = [float(np.max(np.abs(leaf))) for leaf in leaves if np.size(leaf)]
    return max(sizes, default=0.0) if np.isfinite(sizes).all() else float("nan")


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
    regularizer=None,
) -> GradCheckReport:
    """Compares manual, autodiff and finite-difference gradients of a loss.

    The function checked is ``J(p) = loss(model(p, x), y) + R(p)`` (``R`` the
    regularizer, 0 without one). Everything runs in float64 (inside a scoped
    ``jax.enable_x64``), as one compiled program. For each parameter leaf
    the report holds the max abs and relative error of the manual gradient
    against autodiff, and of autodiff against the central difference
    ``(J(p + eps t) - J(p - eps t)) / (2 eps)`` along a random unit direction
    ``t`` moving that leaf only (as ``jax.test_util.check_vjp`` does), with
    ``eps = 1e-6``.

    Args:
      model: a :class:`~fnn.protocol.Layer`.
      loss: as for :func:`fnn.backprop.value_and_grad`; needs ``loss.grad``.
      params, state, x, y: the point to check at; a small batch is enough,
        of 2 or more examples (one cannot show a backward that mishandles
        the batch axis) and inputs of both signs (kinks: ReLU, max-pool).
      key: PRNG key for layers that need one in training. Every evaluation
        uses the same key, so dropout masks stay fixed.
      finite_differences: also compare autodiff with finite differences.
      train: check the training-mode gradient (dropout, batch statistics).
      seed: seeds the random finite-difference directions.
      regularizer: a regularizer with ``.grad``, as for ``value_and_grad``.

    Returns:
      A :class:`GradCheckReport`: ``report.ok``, ``print(report)``.

    Raises:
      ValueError, TypeError: as :func:`fnn.backprop.value_and_grad` for the
        manual method, and when a backward returns the wrong structure.
    """
    from fnn import backprop  # imports this module: resolved at call time

    manual_grad = backprop.value_and_grad(
        model, loss, "manual", train=train, regularizer=regularizer
    )
    with jax.enable_x64(True):
        params, state, x, y = backprop.cast_floats((params, state, x, y), jnp.float64)
        check_params(model, params, state, per_example_shape(x))

        def loss_of(p):
            pred = model.apply(p, state, x, key=key, train=train)[0]
            return loss(pred, y) + (0.0 if regularizer is None else regularizer(p))

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
    ``s(params, x) = <apply(params, x), c>``, which finite differences check
    in turn; all in float64, as one compiled program.

    Args:
      layer: the :class:`~fnn.protocol.Layer` to check.
      params, state, x: the point to check at (``x`` with a batch axis).
      key: PRNG key for layers that need one (dropout in training).
      train: check the training-mode backward.
      finite_differences: also compare autodiff with finite differences.
      seed: seeds the cotangent and the finite-difference directions.

    Returns:
      A :class:`GradCheckReport` with rows named ``['params']...`` and
      ``['x']`` (``['x'][i]`` for a tuple of inputs); an integer input
      (token ids) has no gradient and no row, the float inputs beside it
      still have theirs.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from fnn import gradcheck
      >>> from fnn.dense import Dense
      >>> layer = Dense(2)
      >>> _, params, state = layer.init(jax.random.key(0), (3,))
      >>> report = gradcheck.check_layer(layer, params, state, jnp.ones((2, 3)))
      >>> report.ok, [row.path for row in report.rows]
      (True, ["['params']['b']", "['params']['w']", "['x']"])
    """
    from fnn import backprop  # imports this module: resolved at call time

    with jax.enable_x64(True):
        params, state, x = backprop.cast_floats((params, state, x), jnp.float64)
        # Integer inputs (token ids) have no gradient; the float ones of a
        # tuple input are checked all the same, not skipped with them.
        x_leaves, x_def = jax.tree.flatten(x)
        floats = [jnp.issubdtype(v.dtype, jnp.inexact) for v in x_leaves]
        out = jax.eval_shape(
            lambda: layer.apply(params, state, x, key=key, train=train)[0]
        )
        rng = np.random.default_rng(seed + 1)
        cot = jax.tree.map(lambda o: rng.standard_normal(o.shape), out)

        def float_part(tree):  # an x-shaped tree, None at integer inputs
            parts = x_def.flatten_up_to(tree)
            return jax.tree.unflatten(
                x_def, [v if f else None for v, f in zip(parts, floats)]
            )

        def split(primals):
            given = x_def.flatten_up_to(primals["x"]) if any(floats) else x_leaves
            merged = [g if f else v for g, v, f in zip(given, x_leaves, floats)]
            return primals["params"], jax.tree.unflatten(x_def, merged)

        def scalar(primals):
            p, xx = split(primals)
            y, _ = layer.apply(p, state, xx, key=key, train=train)
            return sum(jax.tree.leaves(jax.tree.map(jnp.vdot, y, cot)))

        def manual(primals):
            p, xx = split(primals)
            _, _, cache = layer.forward(p, state, xx, key=key, train=train)
            dparams, dx = layer.backward(p, cache, cot)
            if not any(floats):
                return {"params": dparams}
            return {"params": dparams, "x": float_part(dx)}

        primals = {"params": params}
        if any(floats):
            primals["x"] = float_part(x)
        rows, value = _compare(
            scalar, manual, primals, finite_differences=finite_differences, seed=seed
        )
        return GradCheckReport(rows, value)
