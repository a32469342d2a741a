"""Early stopping as a value: the best metric so far and the epochs since.

Modelled on flax's ``flax/training/early_stopping.py``: an immutable record
whose :meth:`EarlyStopping.update` returns the next record, so the policy is
a pure function of the metrics seen, testable alone::

    stop = EarlyStopping(patience=3)
    for epoch, loss in enumerate(val_losses, 1):
        stop = stop.update(loss, epoch)
        if stop.has_improved:
            best = params        # keep what goes with stop.best_epoch
        if stop.should_stop:
            break
"""

from __future__ import annotations

import dataclasses
import math
import numbers


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop when a metric to minimise has not improved for ``patience`` epochs.

    Attributes:
      patience: epochs without improvement after which ``should_stop`` is
        set, an int ``>= 0`` (0 stops at the first, as 1 does).
      min_delta: an improvement must lower the metric by more than this,
        finite and ``>= 0`` (a negative one would count a worse metric as
        an improvement, and training would never stop).
      best_metric: the lowest metric so far (``inf`` before any).
      best_epoch: the epoch that reached it (``None`` before any).
      patience_count: epochs since the last improvement.
      should_stop: whether ``patience_count`` has reached ``patience``.
      has_improved: whether the last ``update`` improved on the best.
    """

    patience: int
    min_delta: float = 0.0
    best_metric: float = math.inf
    best_epoch: int | None = None
    patience_count: int = 0
    should_stop: bool = False
    has_improved: bool = False

    def __post_init__(self):
        """Checks ``patience`` and ``min_delta``.

        Raises:
          TypeError: ``patience`` not an int (a bool, a float), or
            ``min_delta`` not a real number.
          ValueError: ``patience < 0``, or ``min_delta`` negative or NaN.
        """
        if isinstance(self.patience, bool) or not isinstance(
            self.patience, numbers.Integral
        ):
            raise TypeError(
                f"EarlyStopping: patience must be an int, got {self.patience!r}"
            )
        if self.patience < 0:
            raise ValueError(
                f"EarlyStopping: patience must be >= 0, got {self.patience}"
            )
        delta = self.min_delta
        if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
            raise TypeError(
                f"EarlyStopping: min_delta must be a real number, got {delta!r}"
            )
        if not (math.isfinite(delta) and delta >= 0):
            raise ValueError(
                f"EarlyStopping: min_delta must be finite and >= 0, got {delta!r}"
            )

    def update(self, metric: float, epoch: int) -> EarlyStopping:
        """The record after seeing ``metric`` at ``epoch``.

        A non-finite (NaN) metric never counts as an improvement.

        Example:
          >>> s = EarlyStopping(patience=2)
          >>> for e, m in enumerate([3.0, 2.0, 2.5, 2.1], 1):
          ...     s = s.update(m, e)
          >>> s.best_metric, s.best_epoch, s.should_stop
          (2.0, 2, True)
        """
        if metric < self.best_metric - self.min_delta:
            return dataclasses.replace(
                self, best_metric=metric, best_epoch=epoch, patience_count=0,
                should_stop=False, has_improved=True,
            )  # fmt: skip
        count = self.patience_count + 1
        return dataclasses.replace(
            self, patience_count=count, should_stop=count >= self.patience,
            has_improved=False,
        )  # fmt: skip

    def message(self, epoch: int, what: str = "monitored loss") -> str:
        """Why training stopped at ``epoch``, and which epoch is returned.

        Args:
          epoch: the epoch just finished.
          what: the metric's name, e.g. ``"validation loss"``.

        Example:
          >>> s = EarlyStopping(patience=1).update(2.0, 1).update(2.5, 2)
          >>> s.message(2, "validation loss")  # doctest: +NORMALIZE_WHITESPACE
          'early stopping after epoch 2: the validation loss has not improved for
          1 epoch; returning the parameters, state and optimizer state after
          epoch 1, the best (validation loss 2)'
        """
        count = self.patience_count  # not patience: 0 also stops after one
        epochs = "1 epoch" if count == 1 else f"{count} epochs"
        text = (
            f"early stopping after epoch {epoch}: the {what} has not improved for "
            f"{epochs}"
        )
        if self.best_epoch is None:  # every metric was NaN
            return f"{text} (it was never finite)"
        return (
            f"{text}; returning the parameters, state and optimizer state after "
            f"epoch {self.best_epoch}, the best ({what} {self.best_metric:.6g})"
        )
