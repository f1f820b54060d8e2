"""What a recogniser finds: a window source, a reduction over its window axis, or a reason to leave it alone.

Dims of every tensor on the path from the source to the reduction carry *labels*: ``"W"`` (window index),
``"J"`` (offset inside the window), ``"x<k>"`` (dim ``k`` of the source tensor ``x``, passed through) or
``"1"`` (an inserted size-1 dim). Layout ops permute labels; a reduction must remove exactly ``"J"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.fx as fx

WINDOW, OFFSET, UNIT = "W", "J", "1"


def x_label(dim: int) -> str:
    return f"x{dim}"


def x_dim(label: str) -> Optional[int]:
    return int(label[1:]) if label.startswith("x") else None


class NotFused(Exception):
    """A candidate that must stay unfused; the message is the user-facing reason."""


@dataclass
class WindowSource:
    """Windows ``x[..., s + i*stride + j, ...]`` along ``seq_dim`` of ``x``, each fully inside x."""

    node: fx.Node
    x: fx.Node
    seq_dim: int
    block: int
    stride: int
    spelling: str
    #: only tokens ``[start, end)`` of the sequence dim are compressed (static)
    span: Optional[tuple[int, int]] = None
    #: prefix sums of the sequences inside the span (several sequences packed along the sequence dim)
    seq_bounds: Optional[list[int]] = None


@dataclass
class WindowView:
    """A tensor of windows in some layout: ``labels[i]`` names dim ``i`` of ``node``."""

    node: fx.Node
    labels: tuple[str, ...]
    #: the dtype conversion applied to the windows on the way (``u.float()``), if any
    cast: Optional[fx.Node] = None
    nodes: list[fx.Node] = field(default_factory=list)
    #: tensors added to the windows on the way (``u + pe``), each with the window labels at that point
    biases: tuple[tuple[fx.Node, tuple[str, ...]], ...] = ()

    @property
    def dtype(self) -> torch.dtype:
        from .nodes import fake_tensor

        return fake_tensor(self.node).dtype


@dataclass
class Reduction:
    """``Σ_j weight[j, head] * windows[..., j, ...]`` (times ``scale``) producing ``result``."""

    spelling: str
    result: fx.Node
    labels: tuple[str, ...]
    #: None means uniform weights (a mean): ``scale`` alone
    weight: Optional[fx.Node]
    #: per dim of ``weight``: OFFSET, an x label (the head dim) or UNIT
    weight_labels: tuple[str, ...] = ()
    scale: float = 1.0
    nodes: list[fx.Node] = field(default_factory=list)

    @property
    def head_label(self) -> Optional[str]:
        return next((lab for lab in self.weight_labels if lab not in (OFFSET, UNIT)), None)
