"""Python loops over windows: one slice and one reduction per window, joined by ``stack`` or ``cat``.

Dynamo unrolls the loop completely, so the graph holds W copies of ``x[i*d : i*d + l]`` -> weighted sum
-> ``stack``. Each copy is read with the ordinary recognisers (a slice of length ``l`` is a single window:
its sliced dim is the offset axis); the copies must then agree in everything but the window start, and
the starts must step by a constant ``d``. Matches, e.g.::

    y = torch.stack([(x[i * d : i * d + l] * w[:, :, None]).sum(0) for i in range(W)])         # TND golden
    y = torch.cat([(k[:, i * d : i * d + l] + pe).transpose(1, 2) @ w for i in range(W)], -1)   # [B, S, H], w [l, 1]
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.fx as fx

from .assembled_sources import decode_windows
from .candidate import OFFSET, UNIT, WINDOW, NotFused, Reduction, WindowSource, WindowView, x_label
from .layouts import layouts
from .nodes import fake_tensor, normalize_dim, op_name, static_int
from .reductions import REDUCTIONS
from .sequences import same_value

_JOINS = {torch.stack: "stack", torch.cat: "cat", torch.concat: "cat", torch.concatenate: "cat"}


def _window_slice(node: fx.Node) -> Optional[tuple[fx.Node, int, int, int]]:
    """``x[.., a:b, ..]`` (one static slice, full elsewhere) or ``x.narrow(dim, a, n)`` -> (x, dim, a, b)."""
    if node.op == "call_function" and getattr(node.target, "__name__", "") == "getitem" and len(node.args) == 2:
        x, index = node.args
        index = index if isinstance(index, tuple) else (index,)
        if not isinstance(x, fx.Node) or not all(isinstance(i, slice) and i.step in (None, 1) for i in index):
            return None
        ranged = [k for k, i in enumerate(index) if (i.start, i.stop) != (None, None)]
        if len(ranged) != 1:
            return None
        dim, part = ranged[0], index[ranged[0]]
        start, stop = static_int(part.start or 0), static_int(part.stop)
    elif op_name(node) is None and node.op == "call_method" and node.target == "narrow" and len(node.args) == 4:
        x, dim, start, length = node.args
        dim, start, length = static_int(dim), static_int(start), static_int(length)
        stop = None if start is None or length is None else start + length
    else:
        return None
    x_fake = fake_tensor(x) if isinstance(x, fx.Node) else None
    if x_fake is None or None in (dim, start, stop):
        return None
    size = static_int(x_fake.shape[dim])
    if size is None or not 0 <= start < stop <= size:
        return None
    return x, dim, start, stop


def _ancestors(node: fx.Node, depth: int = 6) -> list[fx.Node]:
    found, frontier = [], [node]
    for _ in range(depth):
        frontier = [a for n in frontier for a in n.all_input_nodes]
        found += frontier
    return list(dict.fromkeys(found))


def _piece(result: fx.Node) -> Optional[tuple[WindowSource, WindowView, Reduction]]:
    """The single-window reduction that produces ``result``, if any."""
    for node in _ancestors(result):
        sliced = _window_slice(node)
        if sliced is None:
            continue
        x, dim, start, stop = sliced
        ndim = fake_tensor(x).dim()
        labels = tuple(OFFSET if k == dim else x_label(k) for k in range(ndim))
        root = WindowView(node, labels, nodes=[node])
        for view in layouts(root):
            for user in view.node.users:
                for recognise in REDUCTIONS:
                    try:
                        reduction = recognise(view, user)
                    except NotFused:
                        continue
                    if reduction is not None and reduction.result is result:
                        source = WindowSource(node, x, dim, stop - start, 0, "slice", span=(start, stop))
                        return source, view, reduction
    return None


def _same(a: Reduction, b: Reduction, va: WindowView, vb: WindowView) -> bool:
    return (a.spelling == b.spelling and a.labels == b.labels and a.weight_labels == b.weight_labels
            and a.scale == b.scale and same_value(a.weight, b.weight) and va.labels == vb.labels
            and (va.cast is None) == (vb.cast is None) and len(va.biases) == len(vb.biases)
            and all(same_value(p, q) and la == lb for (p, la), (q, lb) in zip(va.biases, vb.biases)))


def window_loop(node: fx.Node) -> Optional[tuple[WindowSource, WindowView, Reduction]]:
    """``stack``/``cat`` of per-window reductions over slices ``x[a + i*d : a + i*d + l]``."""
    if node.op != "call_function" or node.target not in _JOINS or not node.args:
        return None
    tensors = node.args[0]
    dim: Any = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(tensors, (list, tuple)) or len(tensors) < 2 or not all(isinstance(t, fx.Node) for t in tensors):
        return None
    pieces = [_piece(t) for t in tensors]
    join = _JOINS[node.target]
    spelling = f"loop over {len(pieces)} windows joined by {join}"
    missing = [i for i, p in enumerate(pieces) if p is None]
    if missing:
        if len(pieces) - len(missing) >= 2:  # mostly windows: say which element is not one
            raise NotFused(f"{spelling}: element {missing[0]} is not a full window reduced the same way "
                           "(a partial tail window?)")
        return None
    src0, view0, red0 = pieces[0]
    starts = [p[0].span[0] for p in pieces]
    if any(p[0].x is not src0.x or p[0].seq_dim != src0.seq_dim or p[0].block != src0.block for p in pieces):
        raise NotFused(f"{spelling}: the windows come from different tensors, dims or lengths")
    if not all(_same(red0, red, view0, view) for _, view, red in pieces[1:]):
        raise NotFused(f"{spelling}: the windows are reduced differently (weights not provably equal)")
    # the window starts, read like gather indices: runs `d` apart are sequences (a loop over cu_seqlens
    # around the loop over windows packs several)
    length = static_int(fake_tensor(src0.x).shape[src0.seq_dim])
    index = torch.tensor(starts)[:, None] + torch.arange(src0.block)
    block, stride, span, bounds = decode_windows(index, length, spelling)
    if len(bounds) > 1 and src0.seq_dim != 0:
        raise NotFused(f"{spelling}: several sequences along dim {src0.seq_dim}; packed sequences must be "
                       "along dim 0 (TND)")
    dim = normalize_dim(static_int(dim), len(red0.labels) + (1 if join == "stack" else 0))
    if dim is None:
        return None
    if join == "stack":
        labels = red0.labels[:dim] + (WINDOW,) + red0.labels[dim:]
    elif red0.labels[dim] == UNIT:  # cat along a kept size-1 dim
        labels = red0.labels[:dim] + (WINDOW,) + red0.labels[dim + 1:]
    else:
        raise NotFused(f"{spelling}: cat along {red0.labels[dim]} mixes window results into another dim")
    source = WindowSource(node, src0.x, src0.seq_dim, block, stride, spelling, span=span,
                          seq_bounds=bounds if len(bounds) > 1 else None)
    nodes = [n for _, view, red in pieces for n in view.nodes + red.nodes]
    view = WindowView(node, view0.labels, cast=view0.cast, nodes=nodes, biases=view0.biases)
    reduction = Reduction(red0.spelling, node, labels, red0.weight, red0.weight_labels, red0.scale, [node])
    return source, view, reduction
