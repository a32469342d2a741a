"""Training: one jitted step, a whole epoch as one compiled scan, and ``fit``.

``make_step`` returns the step a JAX user would write by hand::

    (loss, state), grads = value_and_grad(params, state, x, y, key=key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

jitted once, with the old parameters, state and optimizer state donated so
XLA updates them in place. ``fit`` runs each epoch as one compiled
``lax.scan`` over shuffled minibatches gathered from the data on the device,
so an epoch costs one Python call, not one per minibatch.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn import backprop, losses, optim
from fnn.protocol import Layer


def _step_fn(
    model: Layer, loss, optimizer, method: str, compute_dtype=None
) -> Callable:
    grad_fn = backprop.value_and_grad(model, loss, method, compute_dtype=compute_dtype)

    def step(params, state, opt_state, x, y, key):
        scale = optim.loss_scale_of(opt_state)  # None unless float16 loss scaling
        (value, state), grads = grad_fn(params, state, x, y, key=key, loss_scale=scale)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, value

    return step


def make_step(
    model: Layer,
    loss,
    optimizer: optax.GradientTransformation,
    *,
    method: str = "autodiff",
    compute_dtype=None,
) -> Callable:
    """A jitted training step.

    ``compute_dtype`` (e.g. ``jnp.bfloat16``) runs forward and backward at
    that precision with float32 master weights, loss and optimizer state;
    see :func:`fnn.backprop.value_and_grad`. For ``jnp.float16``, whose
    range is narrow, wrap the optimizer in
    :func:`fnn.optim.dynamic_loss_scale`: the step then scales the loss by
    the scale held in ``opt_state``.

    Returns:
      ``step(params, state, opt_state, x, y, key) -> (params, state,
      opt_state, loss)``. ``params``, ``state`` and ``opt_state`` are donated:
      do not use the ones you passed in after the call. ``key`` feeds
      dropout; pass a fresh one each step (``None`` when the model has no
      randomness).
    """
    return jax.jit(
        _step_fn(model, loss, optimizer, method, compute_dtype),
        donate_argnums=(0, 1, 2),
    )


# --------------------------------------------------------------------------
# Evaluation


def evaluate(
    model: Layer, loss, params, state, x, y, *, batch_size: int = 1024
) -> dict[str, float]:
    """Mean loss (and accuracy, for integer labels) in evaluation mode.

    Runs over ``x`` in batches of ``batch_size`` so large test sets fit in
    memory; the result weighs each batch by its size.

    Returns:
      ``{"loss": float, "accuracy": float}``; ``accuracy`` only when ``y``
      holds integer class labels.
    """
    n = len(x)
    if n != len(y):
        raise ValueError(f"evaluate: x has {n} examples but y has {len(y)}")
    classify = jnp.issubdtype(jnp.asarray(y[:1]).dtype, jnp.integer)
    fn = _eval_fn(model, loss, classify)
    totals = np.zeros(2)
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        totals += len(xb) * np.asarray(fn(params, state, xb, yb))
    out = {"loss": float(totals[0] / n)}
    if classify:
        out["accuracy"] = float(totals[1] / n)
    return out


@lru_cache(maxsize=64)
def _eval_fn(model, loss, classify):
    # Cached: fit evaluates every epoch, and a fresh jitted function would
    # recompile each time (digits LSTM: 12 compiles, 9 of fit's 13 s).
    @jax.jit
    def metrics(params, state, x, y):
        pred, _ = model.apply(params, state, x, train=False)
        acc = losses.accuracy(pred, y) if classify else jnp.float32(0)
        return jnp.stack([loss(pred, y), acc])

    return metrics


# --------------------------------------------------------------------------
# fit


class FitResult(NamedTuple):
    """What ``fit`` returns."""

    params: Any  # the best parameters (lowest monitored loss) when patience is set
    state: Any  # the model state that goes with them
    opt_state: Any  # the optimizer state at the end of training
    # Per-epoch lists: "train_loss", "val_loss", "val_accuracy", "time"; with
    # optim.dynamic_loss_scale also "loss_scale" and "skipped_steps" (so far).
    history: dict
    stopped: str | None  # why training stopped early, or None


@partial(jax.jit, static_argnums=2)
def _step_keys(key, epoch, num_steps: int):
    """The ``num_steps`` dropout keys of epoch ``epoch``."""
    return jax.random.split(jax.random.fold_in(key, epoch), num_steps)


def _shuffled_batches(seed, epoch: int, n: int, batch_size: int, num_steps: int):
    """Epoch ``epoch``'s minibatch indices, ``(num_steps, batch_size)`` int32.

    Drawn by NumPy from ``seed`` (the fit key's bits) and ``epoch``: XLA's
    CPU sort makes ``jax.random.permutation`` cost 3.1 ms for 6,400 examples
    and 38 ms for 60,000 (NumPy: 0.05 and 0.6 ms), half of an epoch on small
    models. The data stays on the device; only the indices travel.
    """
    perm = np.random.default_rng([*seed, epoch]).permutation(n)
    return (
        perm[: num_steps * batch_size].reshape(num_steps, batch_size).astype(np.int32)
    )


def _scanned_epoch_fn(step) -> Callable:
    """An epoch as one compiled scan over the minibatches ``batches``.

    Nothing is donated: the inputs stay valid, so ``fit`` can roll back to
    them after a non-finite loss without copying them every epoch.
    """

    def epoch(params, state, opt_state, x, y, batches, keys):
        def body(carry, batch):
            idx, k = batch
            params, state, opt_state, value = step(*carry, x[idx], y[idx], k)
            return (params, state, opt_state), value

        carry, values = jax.lax.scan(body, (params, state, opt_state), (batches, keys))
        return (*carry, values)

    return jax.jit(epoch)


def _looped_epoch_fn(step) -> Callable:
    """The same epoch as a Python loop of jitted steps.

    Each step gathers its minibatch on the device, so the loop pays one
    dispatch per step and nothing else.
    """

    def step_at(params, state, opt_state, x, y, batches, keys, i):
        idx = batches[i]
        return step(params, state, opt_state, x[idx], y[idx], keys[i])

    step_at = jax.jit(step_at, donate_argnums=(0, 1, 2))

    def epoch(params, state, opt_state, x, y, batches, keys):
        batches, values = jnp.asarray(batches), []
        for i in range(len(batches)):
            params, state, opt_state, value = step_at(
                params, state, opt_state, x, y, batches, keys, i
            )
            values.append(value)
        return params, state, opt_state, jnp.stack(values)

    return epoch


def _loss_scale_record(opt_state: optim.LossScaleState) -> tuple[float, int]:
    """The loss scale now, and the steps skipped for overflow so far."""
    return float(opt_state.scale), int(opt_state.inner.total_notfinite)


def _has_conv(model: Layer) -> bool:
    return model.name.startswith("Conv") or any(map(_has_conv, model.layers))


def _scan_by_default(model: Layer) -> bool:
    """Whether a compiled-scan epoch is the faster choice for ``model``.

    It is everywhere we measured (``benchmarks/epochs.py``) except for
    convolutions on XLA's CPU backend, which run 4-10x slower inside a loop
    body than at the top level of a program (jax-ml/jax#12868). fnn.conv's
    CPU formulation keeps one XLA convolution (the transposed one, for
    ``dx``), and a CNN epoch still ran 1.25x slower scanned with autodiff
    (2.9 against 2.3 s for 32 steps; a tie with the manual backward).
    """
    return not (jax.default_backend() == "cpu" and _has_conv(model))


def _epoch_fn(step, scan: bool) -> Callable:
    return (_scanned_epoch_fn if scan else _looped_epoch_fn)(step)


@jax.jit
def _copy(tree):
    # Kept results must own their buffers: the next step donates its inputs.
    # One jitted call copies the whole tree (not one dispatch per leaf).
    return jax.tree.map(jnp.copy, tree)


def _progress(enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()

    def show(epoch, epochs, text):
        if enabled:
            done = int(30 * epoch / epochs)
            bar = "#" * done + "." * (30 - done)
            end = "\n" if epoch == epochs else ""
            print(f"\r[{bar}] epoch {epoch}/{epochs} {text}", end=end, file=sys.stderr)

    return show


def fit(
    model: Layer,
    loss,
    optimizer: optax.GradientTransformation,
    params,
    state,
    train_data: tuple,
    *,
    key: jax.Array,
    epochs: int = 10,
    batch_size: int = 128,
    validation_data: tuple | None = None,
    method: str = "autodiff",
    patience: int | None = None,
    opt_state=None,
    initial_epoch: int = 0,
    compute_dtype=None,
    scan: bool | None = None,
    progress: bool | None = None,
    verbose: bool = False,
) -> FitResult:
    """Trains ``model`` on ``train_data = (x, y)`` with shuffled minibatches.

    Each epoch is one compiled ``lax.scan`` over ``len(x) // batch_size``
    minibatches drawn from a fresh permutation; the last partial
    batch is left out of that epoch (a different one each epoch). With
    ``scan=False`` the same minibatches run as a Python loop of jitted steps.

    Args:
      model, loss, optimizer: what to train, on which loss, how.
      params, state: where to start (``model.init``'s output).
      train_data: ``(x, y)`` arrays with a leading example axis.
      key: PRNG key for shuffling and dropout.
      epochs, batch_size: how long, in how large steps.
      validation_data: ``(x, y)`` evaluated after every epoch.
      method: ``"autodiff"`` or ``"manual"`` gradients.
      patience: stop when the monitored loss (validation loss, else training
        loss) has not improved for this many epochs, and return the
        parameters of the best epoch.
      opt_state: resume from this optimizer state (default: a fresh one).
      initial_epoch: the number of epochs already done, when resuming. Epoch
        ``e`` shuffles and drops out as ``(key, e)`` dictate, so ``epochs=N``
        in one run equals ``epochs=k``, a checkpoint, and ``epochs=N,
        initial_epoch=k`` with the restored state, bit for bit.
      compute_dtype: mixed precision for forward and backward (see
        :func:`make_step`).
      scan: run each epoch as one compiled scan (``True``) or as a loop of
        jitted steps (``False``). Both give the same result; the default
        picks the faster: the scan, except for convolutional models on CPU.
      progress: show a progress bar on stderr (default: when it is a tty).
      verbose: print one line per epoch to stdout.

    Returns:
      A :class:`FitResult`. If a step's loss is not finite, training stops,
      ``stopped`` names the epoch and step, and the parameters are those
      after the last finite step.
    """
    x, y = (jnp.asarray(a) for a in train_data)
    if len(x) != len(y):
        raise ValueError(f"fit: x has {len(x)} examples but y has {len(y)}")
    num_steps = len(x) // batch_size
    if batch_size <= 0 or num_steps == 0:
        raise ValueError(
            f"fit: batch_size must be in [1, {len(x)}] (the number of examples), "
            f"got {batch_size}"
        )
    step = _step_fn(model, loss, optimizer, method, compute_dtype)
    scan = _scan_by_default(model) if scan is None else scan
    run_epoch = _epoch_fn(step, scan)
    opt_state = optimizer.init(params) if opt_state is None else opt_state
    params, state, opt_state = _copy((params, state, opt_state))
    history = {"train_loss": [], "time": []}
    if validation_data is not None:
        history.update(val_loss=[], val_accuracy=[])
    best, best_loss, since_best, stopped = None, math.inf, 0, None
    show = _progress(progress)
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()

    for epoch in range(initial_epoch + 1, epochs + 1):
        batches = _shuffled_batches(seed, epoch, len(x), batch_size, num_steps)
        keys = _step_keys(key, epoch, num_steps)
        # The looped epoch donates its inputs; keep them for a rollback.
        before = (
            (params, state, opt_state) if scan else _copy((params, state, opt_state))
        )
        tic = time.perf_counter()
        params, state, opt_state, values = run_epoch(
            params, state, opt_state, x, y, batches, keys
        )
        values = np.asarray(values)
        history["time"].append(time.perf_counter() - tic)
        if not np.all(np.isfinite(values)):
            bad = int(np.argmin(np.isfinite(values)))
            stopped = (
                f"non-finite loss {values[bad]} at epoch {epoch}, step {bad + 1}; "
                f"returning the parameters after step {bad}"
            )
            params, state, opt_state = before
            if bad:
                params, state, opt_state, _ = run_epoch(
                    params, state, opt_state, x, y, batches[:bad], keys[:bad]
                )
            history["time"].pop()
            break
        history["train_loss"].append(float(values.mean()))
        monitored = history["train_loss"][-1]
        text = f"train loss {monitored:.4f}"
        if validation_data is not None:
            metrics = evaluate(model, loss, params, state, *validation_data)
            history["val_loss"].append(metrics["loss"])
            history["val_accuracy"].append(metrics.get("accuracy", math.nan))
            monitored = metrics["loss"]
            text += f"  val loss {metrics['loss']:.4f}"
            if "accuracy" in metrics:
                text += f"  val accuracy {metrics['accuracy']:.4f}"
        if isinstance(opt_state, optim.LossScaleState):
            scale, skipped = _loss_scale_record(opt_state)
            history.setdefault("loss_scale", []).append(scale)
            history.setdefault("skipped_steps", []).append(skipped)
            text += f"  loss scale {scale:g} ({skipped} steps skipped in all)"
        show(epoch, epochs, text)
        if verbose:
            print(f"epoch {epoch:3d}  {text}  ({history['time'][-1]:.2f} s)")
        if patience is not None:
            if monitored < best_loss:
                best, best_loss, since_best = _copy((params, state)), monitored, 0
            else:
                since_best += 1
                if since_best >= patience:
                    stopped = (
                        f"early stopping at epoch {epoch}: no improvement in "
                        f"{patience} epochs"
                    )
                    break
    if stopped and progress is not False and sys.stderr.isatty():
        print(file=sys.stderr)
    if stopped and verbose:
        print(stopped)
    if patience is not None and best is not None:
        params, state = best
    return FitResult(params, state, opt_state, history, stopped)
