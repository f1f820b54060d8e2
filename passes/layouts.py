"""Layout ops between a window source and its reduction: they move the labelled dims, not the data.

permute / transpose / movedim / unsqueeze / contiguous / clone / a float cast carry the labels along;
``u + pe`` records a positional embedding that the rewrite turns into a bias after the op.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import torch
import torch.fx as fx

from .candidate import UNIT, WindowView
from .nodes import cast_dtype, fake_tensor, normalize_dim, op_name, same_size, static_int, varargs


def _permutation(node: fx.Node, ndim: int) -> Optional[list[int]]:
    """Which input dim each output dim of a permute/transpose/movedim comes from (static dims only)."""
    name = op_name(node)
    def resolve(value):
        if isinstance(value, (list, tuple)):
            items = [resolve(v) for v in value]
            return None if any(v is None for v in items) else type(value)(items)
        return static_int(value)

    dims = resolve(varargs(node))
    if dims is None:
        return None
    probe = torch.empty(tuple(range(2, ndim + 2)), device="meta")  # distinct sizes identify the dims
    try:
        if name == "permute":
            moved = probe.permute(*dims)
        elif name == "transpose":
            moved = probe.transpose(*dims)
        elif name == "movedim":
            moved = probe.movedim(*dims)
        else:
            return None
    except (RuntimeError, TypeError, IndexError):
        return None
    return [size - 2 for size in moved.shape]


def follow_layout(view: WindowView, user: fx.Node) -> Optional[WindowView]:
    """The windows after a layout op (permute, transpose, movedim, unsqueeze, contiguous, a float cast)."""
    if op_name(user) == "add":
        return _added_bias(view, user)
    if not user.args or user.args[0] is not view.node:
        return None
    if any(arg is view.node for arg in list(user.args[1:]) + list(user.kwargs.values())):
        return None
    name, ndim = op_name(user), len(view.labels)
    labels: Optional[list[str]] = None
    cast = view.cast
    if name in ("permute", "transpose", "movedim"):
        perm = _permutation(user, ndim)
        labels = None if perm is None else [view.labels[p] for p in perm]
    elif name == "unsqueeze":
        dim = normalize_dim(static_int(varargs(user)[0]) if varargs(user) else None, ndim + 1)
        labels = None if dim is None else list(view.labels[:dim]) + [UNIT] + list(view.labels[dim:])
    elif name in ("contiguous", "clone") and len(user.args) == 1 and not user.kwargs:
        labels = list(view.labels)
    else:
        dtype = cast_dtype(user)
        if dtype is not None and dtype.is_floating_point and cast is None:
            labels, cast = list(view.labels), user
    if labels is None:
        return _added_bias(view, user)
    out = fake_tensor(user)
    if out is None or out.dim() != len(labels):
        return None
    return WindowView(user, tuple(labels), cast=cast, nodes=view.nodes + [user], biases=view.biases)


def _added_bias(view: WindowView, user: fx.Node) -> Optional[WindowView]:
    """``u + pe``: a positional embedding added inside every window.

    ``Σ_j w_j (x_j + pe_j) = Σ_j w_j x_j + Σ_j w_j pe_j``: the op computes the first sum, the rewrite adds
    the second as a bias after it. ``pe`` may broadcast along any dim, but must not enlarge the windows.
    """
    if op_name(user) != "add" or len(user.args) != 2 or user.kwargs:
        return None
    a, b = user.args
    pe = b if a is view.node else a
    if not isinstance(pe, fx.Node) or pe is view.node:
        return None
    windows, bias, out = fake_tensor(view.node), fake_tensor(pe), fake_tensor(user)
    if bias is None or out is None or bias.dim() > windows.dim() or out.dtype != windows.dtype:
        return None
    if out.dim() != windows.dim() or not all(same_size(o, w) for o, w in zip(out.shape, windows.shape)):
        return None  # the add broadcasts the windows themselves: not a bias inside each window
    return WindowView(user, view.labels, cast=view.cast, nodes=view.nodes + [user],
                      biases=view.biases + ((pe, view.labels),))


def layouts(view: WindowView) -> Iterator[WindowView]:
    """The view itself and every layout of it reachable through layout ops, breadth first."""
    pending = [view]
    while pending:
        current = pending.pop(0)
        yield current
        for user in current.node.users:
            nxt = follow_layout(current, user)
            if nxt is not None:
                pending.append(nxt)
