"""The proof obligations a candidate must meet before it is rewritten.

The recognisers already establish the window structure and that the weight depends only on (offset,
head). What remains is graph-level: no tensor involved is written in place (torch IR is not
functional), and the dims the op would fold are consistent with one TND call.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.fx as fx

from .candidate import OFFSET, UNIT, WINDOW, NotFused, Reduction, WindowSource, WindowView, x_dim, x_label
from .nodes import cast_dtype, fake_tensor, is_inplace, op_name, source_line

# ops whose result aliases their first argument: a write to either is a write to both
_VIEW_OPS = {"view", "reshape", "permute", "transpose", "movedim", "unsqueeze", "unfold", "contiguous", "t",
             "squeeze", "expand", "flatten", "unflatten", "narrow", "select", "as_strided", "detach", "view_as"}


def _aliases(node: fx.Node) -> set[fx.Node]:
    """The node, the views it was taken from and every view taken of those."""
    roots, seen = [node], set()
    while roots:
        n = roots.pop()
        if n in seen:
            continue
        seen.add(n)
        name = op_name(n) or (n.target if n.op == "call_method" else getattr(n.target, "__name__", ""))
        if (name in _VIEW_OPS or name == "getitem") and n.args and isinstance(n.args[0], fx.Node):
            roots.append(n.args[0])
        for user in n.users:
            uname = op_name(user) or (user.target if user.op == "call_method" else getattr(user.target, "__name__", ""))
            if (uname in _VIEW_OPS or uname == "getitem") and user.args and user.args[0] is n:
                roots.append(user)
    return seen


def inplace_writes(graph: fx.Graph) -> dict[fx.Node, fx.Node]:
    """Every node aliasing a tensor that is written in place -> the node that writes it.

    Computed once per pass run (linear in the graph), so checking a candidate is a set lookup; the rewrite
    adds no in-place ops and never removes one, so the map stays valid while the pass runs.
    """
    written: dict[fx.Node, fx.Node] = {}
    for user in graph.nodes:
        if is_inplace(user) and user.args and isinstance(user.args[0], fx.Node):
            for alias in _aliases(user.args[0]):
                written.setdefault(alias, user)
    return written


def check_no_mutation(nodes: list[fx.Node], written: dict[fx.Node, fx.Node]) -> None:
    """Reject if any tensor read by the candidate (or an alias of it) is written in place anywhere in the graph."""
    for node in nodes:
        writer = written.get(node)
        if writer is not None:
            raise NotFused(f"{node.name} (or a view of it) is modified in place by `{writer.format_node()}` "
                           f"({source_line(writer)}); the fused op would read a different value")


_PADS = {torch._C._nn.pad, torch.nn.functional.pad, torch.constant_pad_nd}


def check_not_padded(source: WindowSource) -> None:
    """Reject windows over a sequence that the code zero-pads first (fla-style ``F.pad`` to a multiple of l).

    The rewrite would be exact (the op over the padded tensor), but the tail window is then partial: it
    averages real tokens with padding, which is not NsaCompress's semantics, so the spelling is left as is.
    """
    x = source.x
    if x.op != "call_function" or x.target not in _PADS or len(x.args) < 2:
        return
    pad, ndim = x.args[1], fake_tensor(x).dim()
    if not isinstance(pad, (list, tuple)):
        return
    k = ndim - 1 - source.seq_dim  # pads are (last dim left, right, second-last left, right, ...)
    if len(pad) > 2 * k and any(p != 0 for p in pad[2 * k : 2 * k + 2]):
        raise NotFused(f"the sequence is padded ({source_line(x)}) before windowing: the tail window is partial "
                       "(NsaCompress has only full windows)")


def check_result(source: WindowSource, view: WindowView, reduction: Reduction) -> None:
    """The reduced tensor holds exactly the windows and every passed-through dim of x, once each."""
    x = fake_tensor(source.x)
    expected = {WINDOW} | {x_label(k) for k in range(x.dim()) if k != source.seq_dim}
    kept = [lab for lab in reduction.labels if lab != UNIT]
    if sorted(kept) != sorted(expected):
        raise NotFused(f"the reduction keeps dims {kept}, expected each of {sorted(expected)} once")
    if OFFSET in reduction.labels:
        raise NotFused("the window offset axis survives the reduction")
    if source.block <= 0 or source.stride <= 0:
        raise NotFused(f"window size {source.block} and step {source.stride} must be positive")


def batch_dims(seq_dim: int, head: Optional[int], ndim: int) -> list[int]:
    """The x dims folded into T as separate sequences: dim 0 of a 3-D or larger x when it precedes the
    sequence dim (B of BSND, BNSD, [B, C, S]); every other passed-through dim is a channel (folded into D)."""
    return [0] if ndim >= 3 and seq_dim > 0 and head != 0 else []


def head_dim(source: WindowSource, reduction: Reduction, ndim: int) -> Optional[int]:
    """The x dim the op treats as heads: the one the weight varies along.

    A weight shared by all heads (``[l]``, or a mean) takes the first dim that is neither batch, sequence
    nor the last channel dim (BSND's and BNSD's N, TND's N), so the op sees ``[T, N, D]`` as written
    rather than ``[T, 1, N*D]``.
    """
    label = reduction.head_label
    if label is not None:
        return x_dim(label)
    channels = [k for k in range(ndim) if k != source.seq_dim and k not in batch_dims(source.seq_dim, None, ndim)]
    return channels[0] if len(channels) >= 2 else None


def cast_back(view: WindowView, reduction: Reduction, x: torch.Tensor) -> Optional[fx.Node]:
    """The ``.to(x.dtype)`` that ends an upcast-compute-downcast spelling, when it can be folded into the op.

    ``(u.float() * w.float()).sum(-1).to(x.dtype)`` equals the op on x and w in x's dtype, because the op
    converts both exactly to fp32, accumulates in fp32 and rounds once. That holds only if the weight was
    itself in x's dtype before its upcast (rounding an fp32 weight down would change the result).
    """
    if view.cast is None or len(reduction.result.users) != 1:
        return None
    user = next(iter(reduction.result.users))
    if cast_dtype(user) != x.dtype or not user.args or user.args[0] is not reduction.result:
        return None
    if reduction.weight is not None and not upcast_from(reduction.weight, x.dtype):
        return None
    return user


def upcast_from(weight: fx.Node, dtype: torch.dtype) -> bool:
    """Whether the weight's values are exactly representable in ``dtype``: it is a view of an upcast from it.

    ``w.float()[:, None]`` with ``w`` bf16 qualifies; an fp32 parameter does not.
    """
    node = weight
    while isinstance(node, fx.Node):
        t = fake_tensor(node)
        if t is not None and t.dtype == dtype:
            return True
        name = op_name(node) or (node.target if node.op == "call_method" else getattr(node.target, "__name__", ""))
        if cast_dtype(node) is None and name not in _VIEW_OPS and name != "getitem":
            return False
        node = node.args[0] if node.args else None
    return False
