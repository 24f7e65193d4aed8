"""Shared builders for the model tests."""

from typing import NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def random_boxes(n, size=200.0, generator=None):
    """(n, 4) boxes with sides of 1..size/2+1 pixels inside roughly [0, 1.5 size]."""
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


class Op(NamedTuple):
    name: str  # aten's, without the overload ("addcmul", "_to_copy")
    kwargs: dict
    is_view: bool  # a view launches no kernel
    sizes: list[int]  # elements of each tensor it made


class DispatchedOps(TorchDispatchMode):
    """Every aten op dispatched inside the context, in order (`ops`): what a computation costs
    and what its memory peak is made of, counted on a CPU."""

    def __init__(self):
        super().__init__()
        self.ops: list[Op] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.ops.append(Op(func.overloadpacket.__name__, kwargs or {}, func.is_view, sizes))
        return out

    def largest(self) -> int:
        """The most elements of any tensor the ops made."""
        return max(size for op in self.ops for size in op.sizes)


def sorted_rows(x):
    """Rows of a (N, D) tensor in lexicographic order, to compare sets of boxes."""
    for col in reversed(range(x.shape[1])):
        x = x[torch.sort(x[:, col], stable=True).indices]
    return x


# a small FPN pyramid P2..P5 for the ROI stages
STRIDES = (4, 8, 16, 32)
SIDE = 256
CHANNELS = 8


def features(generator, batch=2):
    """[P_l (batch, CHANNELS, SIDE / stride, SIDE / stride)] of random values."""
    return [
        torch.randn(batch, CHANNELS, SIDE // s, SIDE // s, generator=generator) for s in STRIDES
    ]
