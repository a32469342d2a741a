"""The benchmark workloads: architectures, batch sizes, synthetic data, FLOPs.

Every contender builds the same network from a :class:`Workload`:

- an MLP, ``Dense(h) -> [BatchNorm] -> act -> [Dropout(0.2)]`` per hidden
  width ``h``, then ``Dense(outputs)``; or
- the CNN ``Conv 3x3x32 (SAME) -> ReLU -> MaxPool 2 -> Conv 3x3x64 (SAME) ->
  ReLU -> MaxPool 2 -> Flatten -> Dense 128 -> ReLU -> Dense 10``;

trained with Adam(1e-3) on softmax cross-entropy with integer labels, or
on the mean squared error for ``tiny``. Data are synthetic, float32, made
once and resident in memory; every step reuses the same batch.

FLOPs count multiply-adds of the matmuls and convolutions as 2 FLOPs:

- forward: ``F = 2 B sum_l (fan_in_l * fan_out_l)`` (a convolution's fan-in
  is ``kh * kw * c_in`` and it runs at every output pixel);
- backward: ``dW`` costs ``F`` again, ``dX`` costs ``F`` minus the first
  layer's share, ``F_1``, since nobody differentiates the input data.

So one step is ``3 F - F_1`` (the "~3x forward" rule, made exact). Element-
wise work (activations, batch norm, Adam) is left out of the count.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

DROPOUT_RATE = 0.2
BN_MOMENTUM = 0.9  # running = m * running + (1 - m) * batch (torch: 1 - m)
BN_EPS = 1e-5
LEARNING_RATE = 1e-3

# The CNN: (kernel, in channels, out channels, output height/width) per conv.
CNN_CONVS = ((3, 1, 32, 28), (3, 32, 64, 14))
CNN_DENSE = ((7 * 7 * 64, 128), (128, 10))


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark problem.

    Attributes:
      name: the ``--workloads`` name.
      kind: ``"mlp"`` or ``"cnn"``.
      input_shape: per-example input shape, channels last.
      hidden: hidden widths of an MLP (unused by the CNN).
      outputs: output width.
      batch: examples per step.
      activation: ``"relu"`` or ``"tanh"`` (MLPs).
      loss: ``"xent"`` (softmax cross-entropy, integer labels) or ``"mse"``.
      bn_dropout: BatchNorm and Dropout after every hidden layer (training mode).
      note: one line for the README and the table's legend.
    """

    name: str
    kind: str
    input_shape: tuple[int, ...]
    hidden: tuple[int, ...]
    outputs: int
    batch: int
    activation: str = "relu"
    loss: str = "xent"
    bn_dropout: bool = False
    note: str = ""

    def layer_sizes(self) -> tuple[int, ...]:
        """``(d_in, h1, ..., outputs)`` of an MLP."""
        return (math.prod(self.input_shape), *self.hidden, self.outputs)

    def layer_flops(self) -> list[int]:
        """Forward FLOPs of each matmul/conv layer, first layer first."""
        b = self.batch
        if self.kind == "cnn":
            convs = [2 * b * hw * hw * co * k * k * ci for k, ci, co, hw in CNN_CONVS]
            return convs + [2 * b * i * o for i, o in CNN_DENSE]
        sizes = self.layer_sizes()
        return [2 * b * i * o for i, o in zip(sizes[:-1], sizes[1:])]

    def step_flops(self) -> int:
        """Matmul/conv FLOPs of forward + backward: ``3 F - F_1``."""
        per_layer = self.layer_flops()
        return 3 * sum(per_layer) - per_layer[0]

    def flop_formula(self) -> str:
        """The FLOP count written out, for the README and ``--list``."""
        b = self.batch
        if self.kind == "cnn":
            terms = " + ".join(
                f"{hw}*{hw}*{co}*{k}*{k}*{ci}" for k, ci, co, hw in CNN_CONVS
            )
            terms += " + " + " + ".join(f"{i}*{o}" for i, o in CNN_DENSE)
            first = "28*28*32*3*3*1"
        else:
            sizes = self.layer_sizes()
            terms = " + ".join(f"{i}*{o}" for i, o in zip(sizes[:-1], sizes[1:]))
            first = f"{sizes[0]}*{sizes[1]}"
        return (
            f"F = 2*{b}*({terms}); step = 3F - 2*{b}*{first} "
            f"= {self.step_flops() / 1e9:.4g} GFLOP"
        )

    def data(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """A synthetic batch ``(x, y)`` in NumPy, channels last.

        ``x`` is float32 ``(batch, *input_shape)``; ``y`` int32 labels
        ``(batch,)`` for cross-entropy, float32 ``(batch, outputs)`` for MSE.
        """
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.batch, *self.input_shape), dtype=np.float32)
        if self.loss == "mse":
            y = rng.standard_normal((self.batch, self.outputs), dtype=np.float32)
        else:
            y = rng.integers(0, self.outputs, self.batch).astype(np.int32)
        return x, y


WORKLOADS = {
    w.name: w
    for w in (
        Workload(
            "mlp",
            "mlp",
            (784,),
            (512, 512),
            10,
            128,
            note="784-512-512-10 ReLU, softmax cross-entropy, batch 128",
        ),
        Workload(
            "mlp_bn_dropout",
            "mlp",
            (784,),
            (512, 512),
            10,
            128,
            bn_dropout=True,
            note="mlp with Dense -> BatchNorm -> ReLU -> Dropout(0.2) per hidden "
            "layer, training mode",
        ),
        Workload(
            "cnn",
            "cnn",
            (28, 28, 1),
            (),
            10,
            128,
            note="28x28x1 -> Conv3x3x32 SAME -> ReLU -> MaxPool2 -> Conv3x3x64 -> "
            "ReLU -> MaxPool2 -> Flatten -> Dense128 -> ReLU -> Dense10, batch 128",
        ),
        Workload(
            "tiny",
            "mlp",
            (2,),
            (16, 16),
            1,
            32,
            activation="tanh",
            loss="mse",
            note="2-16-16-1 tanh, MSE, batch 32 (dispatch-bound)",
        ),
        Workload(
            "large",
            "mlp",
            (784,),
            (1024, 1024),
            10,
            1024,
            note="784-1024-1024-10 ReLU, softmax cross-entropy, batch 1024 "
            "(compute-bound)",
        ),
    )
}
