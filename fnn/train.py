"""Training: one jitted step, a whole epoch as one compiled loop, and ``fit``.

``make_step`` returns the step a JAX user would write by hand::

    (loss, state), grads = value_and_grad(params, state, x, y, key=key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

jitted once, with the old parameters, state and optimizer state donated so
XLA updates them in place. ``fit`` runs each epoch as one compiled loop
over shuffled minibatches gathered from the data on the device
(``fnn._epoch``), so an epoch costs one Python call, not one per
minibatch. Around it, ``fit`` is a short loop over small pieces: the checks
of its arguments (``fnn._train_checks``), the display
(:mod:`fnn.progress`), the rollback after a non-finite loss
(``fnn._epoch.rollback``) and early stopping
(:mod:`fnn.early_stopping`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from fnn import _backend, _epoch, backprop, losses, optim
from fnn import _train_checks as checks
from fnn.diagnostics import recorder
from fnn.early_stopping import EarlyStopping
from fnn.evaluation import evaluate, evaluate_checked
from fnn.progress import Progress, summary
from fnn.protocol import Layer

__all__ = ["FitResult", "evaluate", "fit", "make_step"]


def _step_fn(
    model: Layer, loss, optimizer, method: str, compute_dtype=None, regularizer=None
) -> Callable:
    """The pure step ``make_step`` jits (``fnn.parallel`` shards the same one).

    Loss scaling, and the loss passed as ``value=`` to optimizers that take
    extra arguments, happen in :func:`fnn.optim.gradient_step`, in one place.
    """
    grad_fn = backprop.value_and_grad(
        model, loss, method, regularizer=regularizer, compute_dtype=compute_dtype
    )
    return optim.gradient_step(grad_fn, optimizer)


def make_step(
    model: Layer,
    loss,
    optimizer: optax.GradientTransformation,
    *,
    method: str = "autodiff",
    compute_dtype=None,
    regularizer=None,
) -> Callable:
    """A jitted training step, with its inputs donated.

    Args:
      model: the network, a :class:`~fnn.protocol.Layer`.
      loss: ``loss(pred, target) -> scalar``; for ``method="manual"`` it also
        needs ``loss.grad`` (every loss of :mod:`fnn.losses` has one).
      optimizer: an ``optax.GradientTransformation``. One taking extra
        arguments (``optax.GradientTransformationExtraArgs``, e.g. a chain
        holding ``optax.contrib.reduce_on_plateau``) receives the step's loss
        as ``value=``.
      method: ``"autodiff"`` or ``"manual"`` gradients.
      compute_dtype: e.g. ``jnp.bfloat16``: forward and backward at that
        precision, with float32 master weights, loss and optimizer state
        (see :func:`fnn.backprop.value_and_grad`). For ``jnp.float16``, whose
        range is narrow, wrap the optimizer in
        :func:`fnn.optim.dynamic_loss_scale`.
      regularizer: ``r(params) -> scalar`` added to the loss, e.g.
        ``fnn.losses.penalty(l2=1e-4)``; ``method="manual"`` needs its
        ``r.grad(params)`` too.

    Returns:
      ``step(params, state, opt_state, x, y, key) -> (params, state,
      opt_state, loss)``, compiled on its first call. **The ``params``,
      ``state`` and ``opt_state`` passed in are donated**: XLA reuses their
      buffers for the results, and using them after the call raises
      "Array has been deleted". Keep the returned ones (or pass copies,
      ``jax.tree.map(jnp.copy, params)``, to keep the originals). Where
      ``opt_state`` holds the very arrays of ``params`` (e.g.
      ``optax.contrib.prodigy``'s, fresh from ``init``), those are copied
      first: XLA cannot donate one buffer twice. ``key``
      feeds dropout: pass a fresh one each step (``None`` when the model
      has no randomness).

      The step cannot check label values: they are traced. An integer label
      outside ``[0, C)`` for ``C`` classes silently trains as an all-zero
      target (loss 0). ``fit`` and ``evaluate`` check labels before they
      compile; with ``make_step``, check them yourself once, e.g.
      ``assert 0 <= y.min() and y.max() < C``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from fnn import losses, train
      >>> from fnn.dense import Dense
      >>> model, opt = Dense(1), optax.sgd(0.1)
      >>> _, params, state = model.init(jax.random.key(0), (3,))
      >>> opt_state = opt.init(params)
      >>> step = train.make_step(model, losses.mse, opt)
      >>> x, y = jnp.ones((4, 3)), jnp.ones((4, 1))
      >>> params, state, opt_state, loss0 = step(params, state, opt_state, x, y, None)
      >>> params, state, opt_state, loss1 = step(params, state, opt_state, x, y, None)
      >>> bool(loss1 < loss0)  # keep the returned trees: the inputs are donated
      True
    """
    losses.check_loss("make_step", loss)
    optim.check_optimizer("make_step", optimizer)
    return _epoch.DonatingStep(
        jax.jit(
            _step_fn(model, loss, optimizer, method, compute_dtype, regularizer),
            donate_argnums=(0, 1, 2),
        )
    )


# --------------------------------------------------------------------------
# fit


class FitResult(NamedTuple):
    """What ``fit`` returns.

    ``params``, ``state`` and ``opt_state`` always belong together: the
    same point of training (with ``patience``, the best epoch; after a
    non-finite loss, the point ``stopped`` names).

    ``history`` holds one entry per finished epoch under each key:

    - ``"train_loss"``: the mean loss over the epoch's training examples:
      its step losses (each computed in training mode, before its step's
      update) weighted by their batch sizes, which only differ in a stream
      (e.g. its last, partial batch); with a ``regularizer`` the step's
      objective, loss plus penalty, is what is averaged;
    - ``"time"``: seconds the epoch's steps took (validation excluded;
      the first epoch of a ``fit`` includes compiling);
    - ``"val_loss"``, ``"val_accuracy"``: with ``validation_data``, the
      evaluation after the epoch (``val_accuracy`` is NaN when the loss has
      no accuracy, e.g. ``mse``); the loss alone, without any regularizer's
      penalty, so it says how well the model fits the held-out data;
    - ``"loss_scale"``, ``"skipped_steps"``: with
      :func:`fnn.optim.dynamic_loss_scale`, the scale after the epoch and
      the steps skipped for overflow so far;
    - with ``diagnostics=True`` (see :func:`fit`), one dict per epoch
      keyed by layer path (``"[0]"``, nested ``"[2][1]"``):
      ``"grad_norm"`` (``{layer: |g|}``), ``"update_ratio"``
      (``{layer: |update| / |params|}``), ``"gradient_flags"``
      (``{layer: "vanishing" | "ok" | "exploding"}``) and
      ``"activations"`` (``{layer: {"relu_dead": fraction}}``, or
      ``"sigmoid_saturated"`` / ``"tanh_saturated"``).
    """

    params: Any
    state: Any
    opt_state: Any
    history: dict
    stopped: str | None  # why training stopped early, or None


def _loss_scale_record(opt_state) -> tuple[float, int] | None:
    """The loss scale now and the steps skipped for overflow so far, with
    :func:`fnn.optim.dynamic_loss_scale`; else ``None``."""
    if not isinstance(opt_state, optim.LossScaleState):
        return None
    return float(opt_state.scale), int(opt_state.inner.total_notfinite)


def _record(history, train_loss, seconds, metrics_, opt_state) -> None:
    """Appends one finished epoch to ``history`` (the keys of :class:`FitResult`)."""
    history["train_loss"].append(train_loss)
    history["time"].append(seconds)
    if metrics_ is not None:
        history["val_loss"].append(metrics_["loss"])
        history["val_accuracy"].append(metrics_.get("accuracy", math.nan))
    if (record := _loss_scale_record(opt_state)) is not None:
        scale, skipped = record
        history.setdefault("loss_scale", []).append(scale)
        history.setdefault("skipped_steps", []).append(skipped)


def fit(
    model: Layer,
    loss,
    optimizer: optax.GradientTransformation,
    params,
    state,
    train_data: tuple,
    *,
    key: jax.Array | int,
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
    regularizer=None,
    augment: Callable | None = None,
    diagnostics: bool = False,
) -> FitResult:
    """Trains ``model`` on ``train_data = (x, y)`` with shuffled minibatches.

    Each epoch runs ``len(x) // batch_size`` steps as one compiled loop over
    minibatches drawn from a fresh permutation; the last ``len(x) %
    batch_size`` examples of the permutation are left out of that epoch
    (drawn at random, afresh each epoch). With ``scan=False`` the same
    minibatches run as a Python loop of jitted steps.

    Args:
      model, loss, optimizer: what to train, on which loss, how (see
        :func:`make_step`).
      params, state: where to start (``model.init``'s output). Not donated.
      train_data: ``(x, y)`` arrays (or lists) with a leading example axis;
        binary labels ``(N,)`` are read as ``(N, 1)`` as in :func:`evaluate`.
        ``x`` reaches the model as it is: uint8 pixels are not scaled
        (divide them by 255 first).
        Or a stream, for data larger than memory: an iterable of ``(x, y)``
        batches (iterated afresh each epoch), or a function ``epoch ->
        iterable of (x, y)``; see ``fnn._stream``. Each batch is checked
        on the host; consecutive batches of one shape run in chunks of up
        to 16 steps, each one compiled loop (``scan=False``: one jitted
        call per step), put on the device ahead of their steps. A stream
        of the same batches in the same order trains exactly as arrays
        with the same ``scan``.
      key: a PRNG key (``jax.random.key(0)``) or an int seed, for shuffling,
        dropout and augmentation. Epoch ``e`` uses ``fold_in(key, e)``.
      epochs: the number of the last epoch (as in Keras): training runs
        epochs ``initial_epoch + 1 .. epochs``.
      batch_size: examples per step, an int in ``[1, len(x)]`` (a stream's
        batches have their own size).
      validation_data: ``(x, y)`` evaluated after every epoch (never
        augmented).
      method: ``"autodiff"`` or ``"manual"`` gradients.
      patience: stop when the monitored loss (validation loss, else training
        loss) has not improved for this many epochs, and return the
        parameters, state and optimizer state of the best epoch.
      opt_state: resume from this optimizer state (default: a fresh one).
      initial_epoch: the number of epochs already done, when resuming. Epoch
        ``e`` shuffles, drops out and augments as ``(key, e)`` dictate, so
        ``epochs=N`` in one run equals ``epochs=k``, a checkpoint, and
        ``epochs=N, initial_epoch=k`` with the restored state, bit for bit.
      compute_dtype: mixed precision for forward and backward (see
        :func:`make_step`).
      scan: run each epoch as one compiled loop (``True``; a stream, as
        compiled loops over chunks of its batches) or as a loop of jitted
        steps (``False``). Both give the same result to float rounding; the
        default picks the faster (``fnn._backend.scan_by_default``).
      progress: a live progress bar on stderr when it is a terminal, else a
        line per epoch (``True``); nothing (``False``); the bar on a
        terminal only (``None``, the default).
      verbose: print one line per epoch (and why training stopped) to stdout.
      regularizer: ``r(params) -> scalar`` added to the loss (see
        :func:`make_step`).
      augment: ``aug(key, x_batch) -> x_batch`` applied to each training
        batch inside the compiled epoch, e.g. from :mod:`fnn.augment`; its
        key is folded from the step's key, so resuming stays exact.
      diagnostics: after each epoch, record in ``history`` how each layer
        learns (:func:`fnn.diagnostics.snapshot`), from one batch (the
        first ``batch_size`` examples, or a stream's first batch; the same
        every epoch) and the epoch's final parameters:

        - ``"grad_norm"``: ``{layer: |g|}``, the L2 norm of the layer's
          gradient (in float32, and in training mode: dropout draws a key
          of its own);
        - ``"update_ratio"``: ``{layer: |u| / |w|}``, the optimizer's next
          update against the parameters (~1e-3 is healthy);
        - ``"gradient_flags"``: ``{layer: "vanishing" | "ok" |
          "exploding"}``, norms below 1e-7, or above 1e3 or not finite
          (:func:`fnn.diagnostics.gradient_flags`);
        - ``"activations"``: ``{layer: {"relu_dead": f}}`` per ReLU layer,
          the fraction of units that output 0 on every example of the
          batch (in evaluation mode); ``{"sigmoid_saturated": f}`` or
          ``{"tanh_saturated": f}`` per sigmoid or tanh layer, units
          outside [0.01, 0.99] or [-0.99, 0.99] on every example.

        Layers are keyed by their path in the ``serial`` model (``"[0]"``,
        nested ``"[2][1]"``); layers without parameters have no gradient
        entries. The figures are one jitted call after the epoch, outside
        its timing, and the training step is the same program either way:
        results are bit for bit those of ``diagnostics=False``.

    Returns:
      A :class:`FitResult`. If a step's loss is not finite, training stops
      and ``stopped`` says where; the loss of step ``k`` is computed from
      the parameters after step ``k - 1``, so the result rolls back to the
      point after step ``k - 2``, whose own loss was finite (or, with
      ``patience``, to the best epoch).

    Raises:
      TypeError, ValueError: for bad arguments, before anything compiles.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from fnn import losses, train
      >>> from fnn.dense import Dense
      >>> model = Dense(1)
      >>> _, params, state = model.init(jax.random.key(0), (3,))
      >>> x = jax.random.normal(jax.random.key(1), (8, 3))
      >>> y = x @ jnp.ones((3, 1))
      >>> result = train.fit(model, losses.mse, optax.sgd(0.1), params, state,
      ...                    (x, y), key=0, epochs=1, batch_size=4)
      >>> len(result.history["train_loss"]), result.stopped
      (1, None)
    """
    losses.check_loss("fit", loss)
    optim.check_optimizer("fit", optimizer)
    epochs, initial_epoch = checks.epochs(epochs, initial_epoch)
    key = checks.prng_key(key)
    scan = checks.flag("fit", "scan", scan, none=True)
    progress = checks.flag("fit", "progress", progress, none=True)
    verbose = checks.flag("fit", "verbose", verbose)
    diagnostics = checks.flag("fit", "diagnostics", diagnostics)
    checks.callable_or_none("augment", augment)
    if patience is not None:
        patience = checks.count("fit", "patience", patience)
    step = _step_fn(model, loss, optimizer, method, compute_dtype, regularizer)
    scan = _backend.scan_by_default(model) if scan is None else scan
    source, validation = checks.sources(model, loss, params, state, train_data,
                                        validation_data, key, batch_size, step,
                                        scan, augment)  # fmt: skip
    opt_state = checks.opt_state(optimizer, params, opt_state)
    carry = _epoch.copy((params, state, opt_state))
    history = {"train_loss": [], "time": []}
    if validation is not None:
        history.update(val_loss=[], val_accuracy=[])
    display = Progress(epochs, source.num_steps, show=progress, verbose=verbose)
    record = None
    if diagnostics:
        record = recorder(model, loss, optimizer, method=method,
                          regularizer=regularizer)  # fmt: skip
        history.update(grad_norm=[], update_ratio=[], gradient_flags=[],
                       activations=[])  # fmt: skip
    stopper = None if patience is None else EarlyStopping(patience)
    best, stopped = None, None
    what = "training loss" if validation is None else "validation loss"
    for epoch in range(initial_epoch + 1, epochs + 1):
        display.start_epoch(epoch, compiling=epoch == initial_epoch + 1)
        tic = time.perf_counter()
        carry, losses_ = source.run_epoch(carry, epoch, display)
        seconds = time.perf_counter() - tic
        if not np.all(np.isfinite(losses_)):
            carry, stopped = _epoch.diverged(source.segments, best, what)
            break
        train_loss, metrics_ = source.mean_loss(losses_), None
        if validation is not None:
            display.note("validating")
            metrics_ = evaluate_checked(model, loss, carry[0], carry[1], *validation)
        _record(history, train_loss, seconds, metrics_, carry[2])
        if record is not None:
            record(history, carry, source.probe, _epoch.step_key(key, epoch, 0))
        scale = _loss_scale_record(carry[2])
        display.end_epoch(summary(epoch, train_loss, metrics_, scale, seconds))
        if stopper is not None:
            monitored = train_loss if metrics_ is None else metrics_["loss"]
            stopper = stopper.update(monitored, epoch)
            if stopper.has_improved:
                best = (carry, epoch, monitored)
            if stopper.should_stop:
                stopped = stopper.message(epoch, what)
                break
    if best is not None:
        carry = best[0]
    display.finish(stopped)
    return FitResult(*carry, history, stopped)
