"""An epoch of training steps, run in parts, and the rollback after a bad step.

``fit`` runs an epoch as calls ``run(carry, x, y, batches, keys, start,
stop)``: steps ``start .. stop - 1`` of the epoch, from ``carry = (params,
state, opt_state)``. Two forms give the same results:

- ``scanned``: one compiled ``lax.fori_loop`` over the steps, the
  minibatches gathered from the data on the device. The bounds are traced,
  so one program serves the whole epoch in one call (no progress shown) and
  the same epoch cut into parts (a progress bar advancing between them).
  The loop compiles to the same XLA ``while`` as a ``lax.scan``.
- ``looped``: a Python loop of jitted steps, one dispatch each; XLA's CPU
  convolutions run several times slower inside a loop body.

Neither invalidates the ``carry`` it is given (the scan donates nothing, the
loop copies it once per call before donating its steps' inputs), so ``fit``
can hold the parameters at the start of an epoch and roll back to them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# The augmentation key of a step is fold_in(step key, _AUGMENT): a stream
# apart from the step key itself, which feeds dropout unchanged.
_AUGMENT = 0x61756720  # "aug "


def step_key(key, epoch, i):
    """The key of step ``i`` (from 0) of epoch ``epoch``: ``fold_in(fold_in(key,
    epoch), i)``. It does not depend on how many steps the epoch has, so a
    stream of batches of unknown length draws the same keys as arrays."""
    return jax.random.fold_in(jax.random.fold_in(key, epoch), i)


@partial(jax.jit, static_argnums=2)
def step_keys(key, epoch, num_steps: int):
    """The ``num_steps`` step keys of epoch ``epoch`` (:func:`step_key`)."""
    return jax.vmap(lambda i: step_key(key, epoch, i))(jnp.arange(num_steps))


def shuffled_batches(seed, epoch: int, n: int, batch_size: int, num_steps: int):
    """Epoch ``epoch``'s minibatch indices, ``(num_steps, batch_size)`` int32.

    Drawn by NumPy from ``seed`` (the fit key's bits) and ``epoch``, so every
    epoch has its own order: XLA's CPU sort makes ``jax.random.permutation``
    cost 3.1 ms for 6,400 examples and 38 ms for 60,000 (NumPy: 0.05 and
    0.6 ms), half of an epoch on small models. The data stays on the device;
    only the indices travel. The last ``n % batch_size`` of the permutation
    sit out this epoch (drawn afresh each epoch).
    """
    perm = np.random.default_rng([*seed, epoch]).permutation(n)
    kept = perm[: num_steps * batch_size]
    return kept.reshape(num_steps, batch_size).astype(np.int32)


def _batch(x, y, batches, keys, i, augment):
    """Step ``i``'s minibatch and key, augmented by ``augment`` if given."""
    idx, key = batches[i], keys[i]
    xb, yb = x[idx], y[idx]
    if augment is not None:
        xb = augment(jax.random.fold_in(key, _AUGMENT), xb)
    return xb, yb, key


@jax.jit
def copy(tree):
    """A copy of ``tree`` that owns its buffers, in one dispatch."""
    return jax.tree.map(jnp.copy, tree)


def _unshared(trees):
    """``trees`` with each array that appears again in them replaced, from
    its second time on, by a copy: XLA cannot donate one buffer twice."""
    seen = set()

    def own(a):
        if isinstance(a, jax.Array) and id(a) in seen:
            return jnp.copy(a)
        seen.add(id(a))
        return a

    return jax.tree.map(own, trees)


class DonatingStep:
    """``fnn.train.make_step``'s step: the jitted ``step(params, state,
    opt_state, x, y, key)`` donating its first three arguments, whose other
    attributes (``lower``, ``trace``...) it passes on.

    ``optax.contrib.prodigy`` (``params0``) and ``mechanize`` (``x0``) keep
    the very arrays of ``params`` in the state ``init`` returns, and XLA
    refuses to donate one buffer twice (a bare runtime error). So an
    ``opt_state`` other than the one this step last returned is checked
    first, and its arrays shared with ``params`` are copied; should XLA
    still refuse (arrays sharing a buffer), the call is run again on copies.
    """

    def __init__(self, jitted):
        self.jitted = jitted
        self.returned = None  # id() of the opt_state returned last

    def __call__(self, params, state, opt_state, x, y, key):
        args = (params, state, opt_state)
        if id(opt_state) != self.returned:  # e.g. fresh from init: ~0.1 ms
            args = _unshared(args)
        try:
            out = self.jitted(*args, x, y, key)
        except (jax.errors.JaxRuntimeError, ValueError) as e:  # jit's fast path
            if "donate the same buffer twice" not in str(e):  # raises ValueError
                raise
            out = self.jitted(*copy(args), x, y, key)
        self.returned = id(out[2])
        return out

    def __getattr__(self, name):
        if name == "jitted":  # not set yet (copy.copy): no endless recursion
            raise AttributeError(name)
        return getattr(self.jitted, name)


def scanned(step: Callable, augment=None) -> Callable:
    """``run(carry, x, y, batches, keys, start, stop) -> (carry, losses)``, compiled.

    ``losses`` is a NumPy array of the ``stop - start`` step losses; reading
    it waits for the steps to finish.
    """

    @jax.jit
    def run_steps(carry, x, y, batches, keys, start, stop):
        def body(i, loop):
            carry, values = loop
            xb, yb, key = _batch(x, y, batches, keys, i, augment)
            *carry, value = step(*carry, xb, yb, key)
            return tuple(carry), values.at[i].set(value.astype(values.dtype))

        values = jnp.zeros(batches.shape[0], jnp.result_type(float))
        return jax.lax.fori_loop(start, stop, body, (carry, values))

    def run(carry, x, y, batches, keys, start, stop):
        carry, values = run_steps(
            carry, x, y, batches, keys, np.int32(start), np.int32(stop)
        )
        return carry, np.asarray(values)[start:stop]

    return run


def looped(step: Callable, augment=None) -> Callable:
    """The same ``run`` as a Python loop of jitted steps, one dispatch each."""

    def one_step(carry, x, y, batches, keys, i):
        xb, yb, key = _batch(x, y, batches, keys, i, augment)
        *carry, value = step(*carry, xb, yb, key)
        # As the scan stores it: a loss in bfloat16 would else be averaged
        # in bfloat16 (10048 for the scan's 10040).
        return tuple(carry), value.astype(jnp.result_type(float))

    one_step = jax.jit(one_step, donate_argnums=0)

    def run(carry, x, y, batches, keys, start, stop):
        carry, values = copy(carry), []  # the caller keeps its carry
        for i in range(start, stop):
            carry, value = one_step(carry, x, y, batches, keys, np.int32(i))
            values.append(value)
        return carry, np.asarray(jnp.stack(values))

    return run


@jax.jit
def _all_finite(tree):
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)
              if jnp.issubdtype(a.dtype, jnp.inexact)]  # fmt: skip
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def all_finite(tree) -> bool:
    """Whether every floating leaf of ``tree`` is finite."""
    return bool(_all_finite(tree))


class Segment(NamedTuple):
    """A run of steps ``fit`` can replay: an epoch, or a part of a stream.

    Attributes:
      carry: ``(params, state, opt_state)`` before its first step.
      epoch: the epoch it belongs to.
      start: the steps of that epoch done before it.
      losses: the loss of each of its steps run so far, a NumPy array.
      rerun: ``(carry, count) -> carry`` after its first ``count`` steps.
    """

    carry: Any
    epoch: int
    start: int
    losses: np.ndarray
    rerun: Callable


def rollback(segments: list[Segment]):
    """The last point before a non-finite loss whose own loss was finite.

    The loss of step ``k`` is computed from the parameters after step
    ``k - 1``; when it is not finite, those parameters are not to be trusted
    either. The point returned is the one after step ``k - 2``: its loss
    (step ``k - 1``'s) was finite; its parameters and state are checked to
    be finite too, stepping back further if they are not.

    Args:
      segments: the last two segments run (or one, at the start of a fit),
        the last one holding the first non-finite loss.

    Returns:
      ``(carry, point)``: ``point = (e, s, loss)``, the carry after step
      ``s`` of epoch ``e`` (``s = 0``: at its start) and the finite loss it
      gave; ``point = None`` when even the first carry gave a non-finite loss
      (the carry is then that first one).
    """
    last = segments[-1]
    bad = int(np.argmin(np.isfinite(last.losses)))
    candidates = [(last, count) for count in range(bad - 1, -1, -1)]
    if len(segments) > 1:
        prev = segments[-2]
        candidates += [(prev, c) for c in range(len(prev.losses) - 1, -1, -1)]
    for segment, count in candidates:
        carry = segment.rerun(segment.carry, count) if count else segment.carry
        if all_finite(carry[:2]):
            point = (segment.epoch, segment.start + count, float(segment.losses[count]))
            return carry, point
    return segments[0].carry, None


def _after(epoch, step) -> str:
    """A point of training in words."""
    if step == 0:
        return f"at the start of epoch {epoch}"
    return f"after epoch {epoch}, step {step}"


def diverged(segments: list[Segment], best, what="monitored loss") -> tuple[Any, str]:
    """The carry ``fit`` returns after a non-finite loss, and its message.

    Args:
      segments: as for :func:`rollback`.
      best: ``(carry, epoch, monitored loss)`` of the best epoch so far when
        ``fit`` has ``patience``, else ``None``.
      what: the monitored loss's name, e.g. ``"validation loss"``.
    """
    last = segments[-1]
    bad = int(np.argmin(np.isfinite(last.losses)))
    step = last.start + bad + 1
    head = f"non-finite loss {last.losses[bad]} at epoch {last.epoch}, step {step}"
    if best is not None:
        carry, epoch, monitored = best
        return carry, (
            f"{head}; returning the parameters, state and optimizer state after "
            f"epoch {epoch}, the best ({what} {monitored:.6g})"
        )
    carry, point = rollback(segments)
    if point is None:
        return carry, (
            f"{head}: the parameters fit started from already give a non-finite "
            f"loss; returning them unchanged"
        )
    epoch, point_step, value = point
    return carry, (
        f"{head}, computed from the parameters {_after(last.epoch, step - 1)}; "
        f"returning the parameters, state and optimizer state "
        f"{_after(epoch, point_step)}, the last point whose own loss was finite "
        f"({value:.6g})"
    )


def run_in_parts(run, carry, inputs, display, num_steps):
    """Runs one epoch in parts, as many as the display wants (one when none).

    Returns:
      ``(carry, losses)``; stops after the first part holding a non-finite
      loss, so ``losses`` ends at or after the first bad step.
    """
    done, parts = 0, []
    while done < num_steps:
        stop = min(num_steps, done + display.part())
        carry, values = run(carry, *inputs, done, stop)
        parts.append(values)
        done = stop
        display.advance(done, float(values[-1]))
        if not np.all(np.isfinite(values)):
            break
    return carry, np.concatenate(parts)


class InMemory:
    """Training data held as arrays: each epoch a fresh permutation of them.

    Args:
      x, y: device arrays with a leading example axis.
      key: the fit's PRNG key.
      batch_size: examples per step.
      step: the pure training step.
      scan: run epochs as one compiled loop (else a loop of jitted steps).
      augment: ``aug(key, xb)`` for training batches, or ``None``.

    Attributes:
      probe: the batch ``fit(..., diagnostics=True)`` looks at: the first
        ``batch_size`` examples.
    """

    def __init__(self, x, y, key, batch_size, step, scan, augment):
        self.x, self.y, self.key, self.batch_size = x, y, key, batch_size
        self.num_steps = len(x) // batch_size
        self.seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
        self.run = (scanned if scan else looped)(step, augment)
        self.segments: list[Segment] = []

    @property
    def probe(self):
        """The first ``batch_size`` examples (sliced only when asked)."""
        return self.x[: self.batch_size], self.y[: self.batch_size]

    def inputs(self, epoch):
        """``(x, y, batches, keys)`` of epoch ``epoch``."""
        n, b, steps = len(self.x), self.batch_size, self.num_steps
        batches = shuffled_batches(self.seed, epoch, n, b, steps)
        return self.x, self.y, jnp.asarray(batches), step_keys(self.key, epoch, steps)

    @staticmethod
    def mean_loss(losses: np.ndarray) -> float:
        """An epoch's training loss: every step has ``batch_size`` examples."""
        return float(losses.mean())

    def run_epoch(self, carry, epoch, display):
        """``(carry, losses)`` after epoch ``epoch``, run from ``carry``."""
        inputs = self.inputs(epoch)
        start = carry
        carry, losses = run_in_parts(self.run, carry, inputs, display, self.num_steps)

        def rerun(carry, count):
            return self.run(carry, *inputs, 0, count)[0]

        self.segments = [*self.segments[-1:], Segment(start, epoch, 0, losses, rerun)]
        return carry, losses
