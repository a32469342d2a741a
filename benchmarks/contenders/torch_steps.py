"""PyTorch eager on the CPU: ``nn.Sequential``, ``torch.optim.Adam``.

The same architecture in PyTorch's layout (``NCHW`` images); batch norm's
``momentum=0.1`` is PyTorch's spelling of our running-average factor 0.9.
The step runs synchronously, so its result needs no blocking.

``eager_channels_last`` is ``eager`` with the model and the images in
``torch.channels_last`` memory format, the layout a PyTorch user tuning for
the CPU picks (oneDNN's convolutions then skip their NCHW reorders; about
1.4x faster on the CNN step, issue 17); it builds the ``cnn`` workload only.

``eager`` uses as many intra-op threads as the machine has cores;
``eager_1thread`` uses one. PyTorch's OpenMP workers wait for each other at
a barrier after every parallel operator: when other processes occupy the
cores, a descheduled worker stalls the rest, so on a busy machine one
thread can be many times faster than two. The thread count is set per step
(checking it costs ~0.1 us), since both variants share the process.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from benchmarks import workloads as wl
from benchmarks.contenders import Unavailable

CORES = os.cpu_count() or 1

_ACT = {"relu": nn.ReLU, "tanh": nn.Tanh}


def _model(workload) -> nn.Module:
    if workload.kind == "cnn":
        convs = []
        for k, ci, co, _ in wl.CNN_CONVS:
            convs += [nn.Conv2d(ci, co, k, padding="same"), nn.ReLU(), nn.MaxPool2d(2)]
        (i0, o0), (i1, o1) = wl.CNN_DENSE
        return nn.Sequential(
            *convs, nn.Flatten(), nn.Linear(i0, o0), nn.ReLU(), nn.Linear(i1, o1)
        )
    sizes = workload.layer_sizes()
    layers = []
    for d_in, d_out in zip(sizes[:-2], sizes[1:-1]):
        layers.append(nn.Linear(d_in, d_out))
        if workload.bn_dropout:
            layers.append(
                nn.BatchNorm1d(d_out, eps=wl.BN_EPS, momentum=1 - wl.BN_MOMENTUM)
            )
        layers.append(_ACT[workload.activation]())
        if workload.bn_dropout:
            layers.append(nn.Dropout(wl.DROPOUT_RATE))
    return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))


def _build(workload, threads, channels_last=False):
    if channels_last and workload.kind != "cnn":
        raise Unavailable("channels_last is a layout of images: cnn only")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = _model(workload).train()
    x, y = workload.data()
    if x.ndim == 4:
        x = x.transpose(0, 3, 1, 2).copy()
    x = torch.from_numpy(x)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=wl.LEARNING_RATE)
    y = torch.from_numpy(y).long() if workload.loss == "xent" else torch.from_numpy(y)
    criterion = nn.CrossEntropyLoss() if workload.loss == "xent" else nn.MSELoss()

    def run():
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return run


def eager(workload):
    return _build(workload, CORES)


def eager_1thread(workload):
    return _build(workload, 1)


def eager_channels_last(workload):
    return _build(workload, CORES, channels_last=True)
