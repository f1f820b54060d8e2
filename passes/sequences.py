"""Python loops over static sequence boundaries: per-sequence fused ops joined by ``cat`` become ONE op.

Dynamo unrolls the loop; after the recognisers have fused each iteration, the graph holds
``cat([nsa_compress(x[s0:e0], w, l, d), nsa_compress(x[s1:e1], w, l, d), ...])``. That equals
``nsa_compress(x[s0:e_last], w, l, d, actual_seq_len=...)`` when the slices are in order, do not overlap,
and every gap between them is shorter than one window (a skipped short sequence: as its own sequence it
yields no rows). The matched user code::

    for b in range(len(cu) - 1):
        s, e = cu[b], cu[b + 1]
        if e - s >= l:
            outs.append((x[s:e].unfold(0, l, d) * w.t()[:, None, :]).sum(-1))
    y = torch.cat(outs)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.fx as fx

from .nodes import fake_tensor, is_inplace, normalize_dim, static_int

_OP = torch.ops.nsa_graph.nsa_compress.default
_CATS = (torch.cat, torch.concat, torch.concatenate)


@dataclass
class Piece:
    op: fx.Node
    x: fx.Node
    start: int
    end: int


def _span(node: fx.Node) -> Optional[tuple[fx.Node, int, int]]:
    """``x[s:e]`` on dim 0 with static bounds (step 1) -> (x, s, e)."""
    if node.op != "call_function" or getattr(node.target, "__name__", "") != "getitem" or len(node.args) != 2:
        return None
    x, index = node.args
    index = index[0] if isinstance(index, tuple) and len(index) == 1 else index
    x_fake = fake_tensor(x) if isinstance(x, fx.Node) else None
    if not isinstance(index, slice) or x_fake is None or index.step not in (None, 1):
        return None
    length = static_int(x_fake.shape[0])
    start = 0 if index.start is None else static_int(index.start)
    end = length if index.stop is None else static_int(index.stop)
    if start is None or end is None or length is None or not 0 <= start <= end <= length:
        return None  # negative or out-of-range bounds: leave to the general case
    return x, start, end


def _piece(node: Any) -> Optional[Piece]:
    if not isinstance(node, fx.Node) or node.target is not _OP or node.kwargs.get("actual_seq_len"):
        return None
    if len(node.users) != 1 or not isinstance(node.args[0], fx.Node):
        return None
    span = _span(node.args[0])
    return None if span is None else Piece(node, *span)


def same_value(a: Any, b: Any, depth: int = 8) -> bool:
    """Whether two graph values are provably equal: the same node, or the same pure op on equal args."""
    if a is b:
        return True
    if isinstance(a, fx.Node) and isinstance(b, fx.Node):
        if depth == 0 or a.op != b.op or a.target != b.target or a.op in ("placeholder", "get_attr", "output"):
            return False
        if is_inplace(a) or is_inplace(b) or a.kwargs.keys() != b.kwargs.keys():
            return False
        return same_value(a.args, b.args, depth - 1) and all(
            same_value(a.kwargs[k], b.kwargs[k], depth - 1) for k in a.kwargs)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_value(x, y, depth) for x, y in zip(a, b))
    if isinstance(a, fx.Node) or isinstance(b, fx.Node):
        return False
    return type(a) is type(b) and a == b


def merge_reason(pieces: list[Piece]) -> Optional[str]:
    """Why these per-sequence ops cannot become one op (None: they can)."""
    first = pieces[0]
    l, d = first.op.args[2], first.op.args[3]
    for p in pieces[1:]:
        if p.x is not first.x:
            return "the pieces compress different tensors"
        if p.op.args[2:4] != (l, d):
            return "the pieces use different window sizes or strides"
        if not same_value(p.op.args[1], first.op.args[1]):
            return "the pieces use weights that are not provably the same"
    for prev, nxt in zip(pieces, pieces[1:]):
        if nxt.start < prev.end:
            return f"sequence [{nxt.start}, {nxt.end}) overlaps or precedes [{prev.start}, {prev.end})"
        if nxt.start - prev.end >= l:
            return (f"the tokens [{prev.end}, {nxt.start}) between two pieces would hold a window: the loop "
                    "skips a sequence long enough to compress")
    return None


def merge_sequence_loops(graph: fx.Graph) -> list[tuple[fx.Node, list[fx.Node], Optional[str]]]:
    """Merge every ``cat`` of per-sequence ops; returns (cat node, the pieces' ops, reason if not merged)."""
    results = []
    for cat in list(graph.nodes):
        if cat.op != "call_function" or cat.target not in _CATS:
            continue
        tensors = cat.args[0] if cat.args else None
        dim = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or len(tensors) < 2:
            continue
        pieces = [_piece(t) for t in tensors]
        if any(p is None for p in pieces) or normalize_dim(dim, 3) != 0:
            continue
        reason = merge_reason(pieces)
        results.append((cat, [p.op for p in pieces], reason))
        if reason is None:
            _merge(graph, cat, pieces)
    return results


def _merge(graph: fx.Graph, cat: fx.Node, pieces: list[Piece]) -> None:
    first, last = pieces[0], pieces[-1]
    bounds, position = [], first.start
    for p in pieces:
        if p.start > position:  # a skipped short sequence: its own (empty) sequence
            bounds.append(p.start - first.start)
        bounds.append(p.end - first.start)
        position = p.end
    fake_mode = fake_tensor(first.x).fake_mode
    with graph.inserting_before(cat):
        x = graph.call_function(first.op.args[0].target, (first.x, slice(first.start, last.end, None)))
        op = graph.call_function(_OP, (x,) + tuple(first.op.args[1:]), {"actual_seq_len": bounds})
    env = fake_mode.shape_env
    with fake_mode, (env.suppress_guards() if env is not None else contextlib.nullcontext()):
        x.meta["example_value"] = fake_tensor(first.x)[first.start:last.end]
        op.meta["example_value"] = _OP(x.meta["example_value"], fake_tensor(first.op.args[1]), *first.op.args[2:4],
                                       actual_seq_len=bounds)
    for key in ("stack_trace", "nn_module_stack"):
        if key in cat.meta:
            x.meta[key] = op.meta[key] = cat.meta[key]
    expected, got = fake_tensor(cat), op.meta["example_value"]
    if got.shape != expected.shape or got.dtype != expected.dtype:
        graph.erase_node(op)
        graph.erase_node(x)
        raise RuntimeError(f"merged sequence op has shape {tuple(got.shape)}, the cat {tuple(expected.shape)}")
    candidates = [n for p in pieces for n in ancestors(p.op)] + [cat]
    cat.replace_all_uses_with(op)
    erase_if_dead(graph, candidates)


def ancestors(node: fx.Node, depth: int = 8) -> list[fx.Node]:
    """The node and its inputs up to ``depth`` levels up."""
    found, frontier = [node], [node]
    for _ in range(depth):
        frontier = [a for n in frontier for a in n.all_input_nodes]
        found += frontier
    return found


def erase_if_dead(graph: fx.Graph, nodes: list[fx.Node]) -> None:
    """Erase those of ``nodes`` that nothing uses (repeatedly), never placeholders or in-place ops."""
    pending = list(dict.fromkeys(nodes))
    changed = True
    while changed:
        changed = False
        for node in pending:
            if getattr(node, "_erased", False) or node.users or node.op not in ("call_function", "call_method"):
                continue
            if is_inplace(node):
                continue
            graph.erase_node(node)
            changed = True
