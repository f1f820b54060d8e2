"""Replace a proven candidate with one ``nsa_compress`` call, in the user's layout and dtype.

x ``[..batch.., S, ..head/features..]`` is permuted to ``[batch, S, head, features]`` and flattened to
TND: batch dims fold into T with ``actual_seq_len = [S, 2S, ..]`` when their count is static, else they
fold into D (windows never cross a batch row either way). The weight becomes ``[l, N]``. The op's output
is unflattened and permuted back to the reduction's layout. New nodes carry fake values, so later
passes (and this one) read them like Dynamo's own nodes. Building is transactional: on any error
the inserted nodes are erased and the graph is as before.
"""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.fx as fx

from nsa_graph.contract import NsaCompressError

from .candidate import OFFSET, UNIT, WINDOW, NotFused, Reduction, WindowSource, x_dim, x_label
from .checks import batch_dims
from .nodes import fake, fake_tensor, same_size, static_int

_N1 = "N1"  # the size-1 head dim inserted when the weight is shared by all heads


class GraphBuilder:
    """Inserts nodes before ``anchor``, computing each one's fake value; ``rollback`` erases them all."""

    def __init__(self, graph: fx.Graph, anchor: fx.Node, fake_mode: Any, meta_from: fx.Node):
        self.graph, self.anchor, self.fake_mode = graph, anchor, fake_mode
        self.meta = {k: meta_from.meta[k] for k in ("stack_trace", "nn_module_stack") if k in meta_from.meta}
        self.inserted: list[fx.Node] = []

    def _value(self, arg: Any) -> Any:
        return fx.node.map_arg(arg, fake)

    def function(self, target: Any, *args: Any, **kwargs: Any) -> fx.Node:
        with self.graph.inserting_before(self.anchor):
            node = self.graph.call_function(target, tuple(args), kwargs)
        return self._finish(node, lambda: target(*self._value(args), **self._value(kwargs)))

    def method(self, name: str, *args: Any, **kwargs: Any) -> fx.Node:
        with self.graph.inserting_before(self.anchor):
            node = self.graph.call_method(name, tuple(args), kwargs)
        self_value, rest = self._value(args[0]), self._value(args[1:])
        return self._finish(node, lambda: getattr(self_value, name)(*rest, **self._value(kwargs)))

    def _finish(self, node: fx.Node, compute) -> fx.Node:
        self.inserted.append(node)
        node.meta.update(self.meta)
        # Computing the new nodes' metadata must not add guards (a view of a size that might be 0 or 1 would):
        # whatever the rewritten graph needs, AOTAutograd's own trace of it installs.
        env = getattr(self.fake_mode, "shape_env", None)
        with self.fake_mode, (env.suppress_guards() if env is not None else contextlib.nullcontext()):
            node.meta["example_value"] = compute()
        return node

    def size(self, node: fx.Node, dim: int) -> Any:
        """``node.size(dim)``: an int when static, else a ``sym_size`` node."""
        value = fake_tensor(node).shape[dim]
        static = static_int(value)
        return static if static is not None else self.function(torch.ops.aten.sym_size.int, node, dim)

    def rollback(self) -> None:
        for node in reversed(self.inserted):
            if not node.users:
                self.graph.erase_node(node)
        self.inserted.clear()


@dataclass
class Plan:
    """How one candidate maps onto the op."""

    source: WindowSource
    reduction: Reduction
    head: Optional[int]  # x dim used as N (None: weight shared by heads, N = 1)
    dtype: torch.dtype  # the op's dtype
    replaced: fx.Node  # the node whose uses the op's result takes over
    #: tensors added inside the windows before the reduction, with the window labels where they were added
    view_biases: tuple = ()


def _permute(b: GraphBuilder, node: fx.Node, order: list[int]) -> fx.Node:
    return node if order == sorted(order) else b.method("permute", node, order)


def build_input(b: GraphBuilder, plan: Plan) -> tuple[fx.Node, Optional[list[Any]], list[str]]:
    """x as TND, its ``actual_seq_len`` and the labels of the op output's unflattened dims."""
    src = plan.source
    x = src.x
    if src.span is not None:
        start, end = src.span
        x = b.method("narrow", x, src.seq_dim, start, end - start)
    if fake_tensor(x).dtype != plan.dtype:
        x = b.method("to", x, plan.dtype)
    ndim = fake_tensor(x).dim()
    batch = batch_dims(src.seq_dim, plan.head, ndim)
    features = [k for k in range(ndim) if k not in (src.seq_dim, plan.head) and k not in batch]
    batch_sizes = [static_int(fake_tensor(x).shape[k]) for k in batch]
    fold_into_t = all(size is not None for size in batch_sizes)
    if not fold_into_t:  # a dynamic batch: keep one sequence, batch rows become channels
        features, batch = batch + features, []
    heads = [plan.head] if plan.head is not None else []
    xt = _permute(b, x, batch + [src.seq_dim] + heads + features)
    if plan.head is None:
        xt = b.method("unsqueeze", xt, len(batch) + 1)
    if batch:
        xt = b.method("flatten", xt, 0, len(batch))
    if not features:
        xt = b.method("unsqueeze", xt, -1)
    elif len(features) > 1:
        xt = b.method("flatten", xt, 2)
    seq_len = None
    rows = 1
    for size in (static_int(fake_tensor(x).shape[k]) for k in batch):
        rows *= size
    if src.seq_bounds is not None and batch:
        raise NotFused("packed sequences inside a batched tensor are not supported")
    if src.seq_bounds is not None and len(src.seq_bounds) > 1:
        seq_len = list(src.seq_bounds)
    if rows > 1:
        S = b.size(x, src.seq_dim)
        seq_len = [S * (i + 1) if isinstance(S, int) else b.function(operator.mul, S, i + 1) for i in range(rows)]
    head_labels = [x_label(plan.head)] if plan.head is not None else [_N1]
    out_labels = [x_label(k) for k in batch] + [WINDOW] + head_labels + [x_label(k) for k in features]
    return xt, seq_len, out_labels


def build_weight(b: GraphBuilder, plan: Plan, xt: fx.Node) -> fx.Node:
    """The ``[l, N]`` weight in the op's dtype (times the reduction's scale)."""
    red, block = plan.reduction, plan.source.block
    N = b.size(xt, 1)
    if red.weight is None:
        return b.method("new_full", xt, (block, N), red.scale)
    w = red.weight
    labels = list(red.weight_labels)
    for k, label in enumerate(labels):  # an expanded (stride-0) dim: one slice holds every value
        if label == UNIT and static_int(fake_tensor(w).shape[k]) != 1:
            w = b.method("narrow", w, k, 0, 1)
    order = [labels.index(OFFSET)] if OFFSET in labels else []
    if red.head_label is not None:
        order.append(labels.index(red.head_label))
    order += [k for k in range(len(labels)) if k not in order]
    w = _permute(b, w, order)
    w = b.method("reshape", w, (block if OFFSET in labels else 1, N if red.head_label is not None else 1))
    if OFFSET not in labels or red.head_label is None:
        w = b.method("expand", w, (block, N))
    if fake_tensor(w).dtype != plan.dtype:
        w = b.method("to", w, plan.dtype)
    if red.scale != 1.0:
        w = b.function(operator.mul, w, red.scale)
    if not fake_tensor(w).is_contiguous():
        w = b.method("contiguous", w)
    return w


def build_output(b: GraphBuilder, plan: Plan, out: fx.Node, out_labels: list[str], x: fx.Node) -> fx.Node:
    """The op's ``[rows, N, D]`` output in the reduction's layout."""
    labels = list(out_labels)
    sizes: list[Any] = []
    n_batch = labels.index(WINDOW)
    rows = 1
    for label in labels[:n_batch]:
        size = static_int(fake_tensor(x).shape[x_dim(label)])
        sizes.append(size)
        rows *= size
    windows = b.size(out, 0)
    if n_batch:
        windows = windows // rows if isinstance(windows, int) else b.function(operator.floordiv, windows, rows)
    sizes.append(windows)
    for label in labels[n_batch + 1:]:
        sizes.append(1 if label == _N1 else b.size(x, x_dim(label)))
    if _N1 in labels:
        del sizes[labels.index(_N1)]
        labels.remove(_N1)
    y = out
    if len(sizes) != 3 or _N1 in out_labels:
        y = b.method("view", out, tuple(sizes))
    target = [lab for lab in plan.reduction.labels if lab != UNIT]
    order = [labels.index(lab) for lab in target]
    if order != sorted(order):
        y = b.method("contiguous", b.method("permute", y, order))
    for k, lab in enumerate(plan.reduction.labels):
        if lab == UNIT:
            y = b.method("unsqueeze", y, k)
    return y


def build_bias(b: GraphBuilder, plan: Plan, w: fx.Node, pe: fx.Node, labels: tuple[str, ...]) -> fx.Node:
    """``Σ_j w[j, head] * pe[.., j, ..]`` in the reduction's layout, for ``pe`` added to windows labelled ``labels``."""
    ndim = len(labels)
    pe_full = b.function(operator.getitem, pe, (None,) * (ndim - fake_tensor(pe).dim()) + (Ellipsis,))
    j = labels.index(OFFSET)
    head = labels.index(x_label(plan.head)) if plan.head is not None else None
    if head is not None and head < j:
        w = b.method("t", w)  # [N, l]: the weight's dims in the windows' order
    shape = [1] * ndim
    shape[j] = plan.source.block
    if head is not None:
        shape[head] = b.size(w, 0 if head < j else 1)
    w_full = b.method("reshape", w, tuple(shape))
    bias = b.method("sum", b.function(operator.mul, pe_full, w_full), j)
    kept = [lab for k, lab in enumerate(labels) if k != j]
    units = tuple(k for k, lab in enumerate(kept) if lab == UNIT)
    if units:
        bias = b.method("squeeze", bias, units)
    kept = [lab for lab in kept if lab != UNIT]
    # a label the bias lacks (W, when the bias was added to one window of a loop) is a broadcast dim
    target = [lab for lab in plan.reduction.labels if lab in kept]
    order = [kept.index(lab) for lab in target]
    if order != sorted(order):
        bias = b.method("permute", bias, order)
    for k, lab in enumerate(plan.reduction.labels):
        if lab not in kept:
            bias = b.method("unsqueeze", bias, k)
    return bias


def apply(graph: fx.Graph, plan: Plan, domain_check: Optional[Callable[..., Optional[str]]] = None) -> fx.Node:
    """Insert the op for ``plan`` and redirect the replaced node's users to it; returns the op node.

    ``domain_check(input, weight, l, d)`` (fake TND input and weight) may veto with a reason (NotFused).
    """
    src = plan.source
    x_fake = fake_tensor(src.x)
    b = GraphBuilder(graph, plan.replaced, x_fake.fake_mode, plan.reduction.result)
    try:
        xt, seq_len, out_labels = build_input(b, plan)
        w = build_weight(b, plan, xt)
        if domain_check is not None:
            reason = domain_check(fake_tensor(xt), fake_tensor(w), src.block, src.stride)
            if reason is not None:
                raise NotFused(f"outside the NPU kernel's domain: {reason}")
        kwargs = {"actual_seq_len": seq_len} if seq_len is not None else {}
        op = b.function(torch.ops.nsa_graph.nsa_compress.default, xt, w, src.block, src.stride, **kwargs)
        y = build_output(b, plan, op, out_labels, src.x)
        for pe, labels in plan.view_biases:
            y = b.function(operator.add, y, build_bias(b, plan, w, pe, labels))
        expected, got = fake_tensor(plan.replaced), fake_tensor(y)
        if got.dtype != expected.dtype or got.dim() != expected.dim() or not all(
            same_size(a, e) for a, e in zip(got.shape, expected.shape)
        ):
            raise RuntimeError(f"rewritten result {tuple(got.shape)} {got.dtype} differs from the original "
                               f"{tuple(expected.shape)} {expected.dtype}")
    except NsaCompressError as exc:  # the op's own contract refuses the case: report it, do not fail
        b.rollback()
        raise NotFused(f"nsa_compress rejects this case: {exc}") from exc
    except BaseException:
        b.rollback()
        raise
    plan.replaced.replace_all_uses_with(y)
    return op


def erase_dead(graph: fx.Graph, nodes: list[fx.Node]) -> None:
    """Erase the candidate's old nodes that nothing uses any more (latest first)."""
    for node in reversed(nodes):
        if not getattr(node, "_erased", False) and node.graph is graph and not node.users:
            graph.erase_node(node)
