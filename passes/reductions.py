"""Reductions over the window axis with weights that depend only on (window offset, head).

Each recogniser takes a :class:`WindowView` and one of its users and returns a :class:`Reduction`
(``None``: this user is not that reduction). The weight's dims are matched against the window's dims
by label, so any layout, operand order and broadcast spelling is read the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Optional

import torch
import torch.fx as fx

from .candidate import OFFSET, UNIT, NotFused, Reduction, WindowView, x_dim
from .nodes import bind, fake_tensor, is_one, normalize_dim, op_name, proven_int, same_size, static_int


def _broadcast(weight: torch.Tensor, dim: int) -> bool:
    """An ``expand``-ed dim (stride 0): the weight is the same all along it, e.g. ``w[:, :, None].expand(l, N, D)``."""
    return static_int(weight.stride(dim)) == 0


def _weight_labels(view: WindowView, weight: torch.Tensor) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Align a broadcast weight with the windows (right-aligned): (labels of the product, labels of the weight).

    The weight may vary along the window offset and along at most one passed-through dim (the head);
    anything else would make it depend on the window index or mix more dims than the op can.
    """
    shape = fake_tensor(view.node).shape
    extra = weight.dim() - len(shape)
    for k in range(max(extra, 0)):
        if not is_one(weight.shape[k]):
            raise NotFused(f"the weight {tuple(weight.shape)} has more dims than the windows {tuple(shape)}")
    weight_labels, head = [], None
    product_labels = [UNIT] * max(extra, 0) + list(view.labels)
    for k in range(weight.dim()):
        i = k - weight.dim() + len(shape)
        if i < 0 or is_one(weight.shape[k]) or _broadcast(weight, k):
            weight_labels.append(UNIT)
            continue
        label = view.labels[i]
        if not same_size(weight.shape[k], shape[i]):
            raise NotFused(f"weight dim {k} (size {weight.shape[k]}) broadcasts against window dim {label} "
                           f"(size {shape[i]})")
        if label == OFFSET:
            weight_labels.append(OFFSET)
        elif x_dim(label) is not None and head is None:
            head = label
            weight_labels.append(label)
        elif x_dim(label) is not None:
            raise NotFused(f"the weight varies along two passed-through dims ({head}, {label}); the op has one "
                           "weight per (offset, head)")
        else:
            raise NotFused("the weight varies with the window index: it depends on the window, not only on "
                           "(offset, head)")
    return tuple(product_labels), tuple(weight_labels)


def _reduced_dims(node: fx.Node, ndim: int) -> Optional[tuple[list[int], bool, Any]]:
    """(dims, keepdim, dtype) of a ``sum``/``mean`` call, or None if it has no explicit dims."""
    args = bind(node, ("input", "dim", "keepdim"), {"dim": None, "keepdim": False, "dtype": None})
    if args is None:
        args = bind(node, ("input", "dim", "keepdim", "dtype"), {"dim": None, "keepdim": False, "dtype": None})
    if args is None or args["dim"] is None:
        return None
    dims = args["dim"] if isinstance(args["dim"], (list, tuple)) else [args["dim"]]
    norm = [normalize_dim(static_int(d), ndim) for d in dims]
    if any(d is None for d in norm) or not isinstance(args["keepdim"], bool):
        return None
    return norm, args["keepdim"], args.get("dtype")


def _after_reduction(labels: Sequence[str], dims: list[int], keepdim: bool, what: str) -> tuple[str, ...]:
    if [labels[d] for d in dims] != [OFFSET]:
        reduced = ", ".join(labels[d] for d in dims)
        raise NotFused(f"{what} reduces dims ({reduced}), not exactly the window offset axis")
    j = dims[0]
    return tuple(labels[:j]) + ((UNIT,) if keepdim else ()) + tuple(labels[j + 1:])


def _window_length(size) -> int:
    """The window length as an int (a mean's weight is a constant ``1 / l`` in the graph)."""
    block = proven_int(size)
    if block is None:
        raise NotFused(f"the window length {size} is not a known int")
    return block


def check_sum_dtype(node: fx.Node, dtype: Any, windows: torch.Tensor, what: str) -> None:
    out = fake_tensor(node)
    if dtype is not None or out is None or out.dtype != windows.dtype:
        raise NotFused(f"{what} changes the dtype ({windows.dtype} -> {out.dtype if out is not None else '?'})")


def weighted_sum(view: WindowView, user: fx.Node) -> Optional[Reduction]:
    """Multiply by a broadcast weight, then sum (or mean) over the window axis.

    Matches, e.g.::

        y = (u * w.t()[None, None, :, None, :]).sum(-1)         # w [l, N], u = x.unfold(1, l, d)
        y = torch.sum(w[None, :, None, None, :] * u, dim=-1)   # w [N, l], BNSD
        y = (u.float() * w.float()[:, None]).sum(-1).to(x.dtype)   # w [l] shared, fp32 accumulation
        y = (kb * w[:, :, None]).sum(2)                        # blocks kb = k.view(B, S // l, l, N, D)
        y = (u * w).mean(-1)                                   # a weighted mean (weight / l)
    """
    if op_name(user) != "mul" or len(user.args) != 2 or user.kwargs:
        return None
    a, b = user.args
    if a is view.node and b is view.node:
        raise NotFused("the windows are multiplied by themselves: the weight depends on the content")
    other = b if a is view.node else a
    windows = fake_tensor(view.node)
    scale, weight, weight_labels = 1.0, None, ()
    if isinstance(other, (int, float)) and not isinstance(other, bool):
        scale, product_labels = float(other), view.labels
    elif isinstance(other, fx.Node) and fake_tensor(other) is not None:
        w = fake_tensor(other)
        if w.dtype != windows.dtype:
            raise NotFused(f"type promotion: weight dtype {w.dtype} differs from window dtype {windows.dtype}")
        product_labels, weight_labels = _weight_labels(view, w)
        weight = other
    else:
        return None
    product = fake_tensor(user)
    if product is None or product.dim() != len(product_labels):
        return None
    reducers = [u for u in user.users if op_name(u) in ("sum", "mean") and u.args and u.args[0] is user]
    if not reducers:
        raise NotFused(f"the windows are multiplied (line: {user.format_node()}), but nothing sums the product "
                       "over the window axis")
    reducer = reducers[0]
    parsed = _reduced_dims(reducer, product.dim())
    if parsed is None:
        raise NotFused(f"`{reducer.target if isinstance(reducer.target, str) else 'sum'}` over all dims is not a "
                       "reduction over the window axis")
    dims, keepdim, dtype = parsed
    name = op_name(reducer)
    labels = _after_reduction(product_labels, dims, keepdim, name)
    check_sum_dtype(reducer, dtype, windows, name)
    if name == "mean":
        scale /= _window_length(product.shape[dims[0]])
    what = "weighted mean" if name == "mean" else "weighted sum"
    return Reduction(f"mul + {name} ({what})", reducer, labels, weight, weight_labels, scale, [user, reducer])


def window_mean(view: WindowView, user: fx.Node) -> Optional[Reduction]:
    """Mean (or plain sum) over the window axis: uniform weights ``1 / l`` (or 1).

    Matches, e.g.::

        y = k.unfold(1, 32, 16).mean(-1)
        y = k.view(B, S // 64, 64, N, D).mean(2)                 # fla / MoBA style blocks
        y = einops.reduce(k, 'b (w n) h d -> b w h d', 'mean', n=64)
        y = k.unfold(0, l, d).sum(-1)
    """
    name = op_name(user)
    if name not in ("mean", "sum") or not user.args or user.args[0] is not view.node:
        return None
    parsed = _reduced_dims(user, len(view.labels))
    if parsed is None:
        raise NotFused(f"{name} over all dims is not a reduction over the window axis")
    dims, keepdim, dtype = parsed
    labels = _after_reduction(view.labels, dims, keepdim, name)
    check_sum_dtype(user, dtype, fake_tensor(view.node), name)
    block = _window_length(fake_tensor(view.node).shape[dims[0]])
    return Reduction(name, user, labels, None, (), 1.0 / block if name == "mean" else 1.0, [user])


def _parse_einsum(node: fx.Node) -> Optional[tuple[str, list[Any]]]:
    if not node.args or not isinstance(node.args[0], str) or node.kwargs:
        return None
    operands = list(node.args[1:])
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    return node.args[0].replace(" ", ""), operands


def window_einsum(view: WindowView, user: fx.Node) -> Optional[Reduction]:
    """``einsum`` of the windows with a weight over (offset, head), any letters and operand order.

    Matches, e.g.::

        y = torch.einsum('bwndl,ln->bwnd', k.unfold(1, l, d), w)          # w [l, N]
        y = torch.einsum('hk,bhnkd->bnhd', w, windows)                     # w [N, l], operands swapped
        y = einops.einsum(u, w, 'b w n d l, l n -> b w n d')               # einops renames the letters
    """
    if op_name(user) != "einsum":
        return None
    parsed = _parse_einsum(user)
    if parsed is None:
        return None
    equation, operands = parsed
    if len(operands) != 2 or sum(op is view.node for op in operands) != 1:
        raise NotFused("einsum must have exactly two operands: the windows and a weight")
    if "..." in equation:
        raise NotFused(f"einsum '{equation}' uses '...'; only explicit subscripts are recognised")
    inputs, _, output = equation.partition("->")
    subs = inputs.split(",")
    if len(subs) != 2:
        return None
    if "->" not in equation:
        letters = "".join(subs)
        output = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    w_index = 1 if operands[0] is view.node else 0
    window_subs, weight_subs = subs[1 - w_index], subs[w_index]
    weight = operands[w_index]
    w = fake_tensor(weight) if isinstance(weight, fx.Node) else None
    if w is None:
        raise NotFused("the einsum weight is not a tensor")
    windows = fake_tensor(view.node)
    if len(window_subs) != windows.dim() or len(weight_subs) != w.dim():
        return None
    if len(set(window_subs)) != len(window_subs) or len(set(weight_subs)) != len(weight_subs):
        raise NotFused(f"einsum '{equation}' repeats a letter inside one operand (a diagonal)")
    if w.dtype != windows.dtype:
        raise NotFused(f"type promotion: weight dtype {w.dtype} differs from window dtype {windows.dtype}")
    label_of = dict(zip(window_subs, view.labels))
    for letter in weight_subs:
        if letter not in label_of:
            raise NotFused(f"einsum '{equation}': weight letter '{letter}' is not a window dim")
    j_letter = window_subs[view.labels.index(OFFSET)]
    for letter in window_subs:
        if letter not in output and letter != j_letter:
            raise NotFused(f"einsum '{equation}' also sums over '{letter}' ({label_of[letter]}), not only the "
                           "window offset")
    if j_letter in output:
        raise NotFused(f"einsum '{equation}' keeps the window offset '{j_letter}' in its output")
    if any(letter not in label_of for letter in output):
        return None
    # the weight product: a view of the weight in the windows' dim order, right-aligned
    weight_labels = []
    for k, letter in enumerate(weight_subs):
        label = label_of[letter]
        size = windows.shape[window_subs.index(letter)]
        if is_one(w.shape[k]) or _broadcast(w, k):
            weight_labels.append(UNIT)
        elif not same_size(w.shape[k], size):
            raise NotFused(f"einsum weight dim '{letter}' has size {w.shape[k]}, the windows {size}")
        elif label == OFFSET or x_dim(label) is not None:
            weight_labels.append(label)
        else:
            raise NotFused("the einsum weight varies with the window index, not only with (offset, head)")
    heads = [lab for lab in weight_labels if lab not in (OFFSET, UNIT)]
    if len(heads) > 1:
        raise NotFused(f"einsum weight varies along {heads}: the op has one weight per (offset, head)")
    labels = tuple(label_of[letter] for letter in output)
    return Reduction(f"einsum '{equation}'", user, labels, weight, tuple(weight_labels), 1.0, [user])


def _matmul_operands(node: fx.Node) -> Optional[tuple[Any, Any, str]]:
    name = op_name(node)
    if name == "matmul" and len(node.args) == 2 and not node.kwargs:
        return node.args[0], node.args[1], "matmul"
    if name == "linear":
        args = bind(node, ("input", "weight", "bias"), {"bias": None})
        if args is None or args["bias"] is not None or not isinstance(args["weight"], fx.Node):
            return None
        w = fake_tensor(args["weight"])
        if w is None or w.dim() not in (1, 2):
            return None
        return args["input"], args["weight"], "linear"
    return None


def window_matmul(view: WindowView, user: fx.Node) -> Optional[Reduction]:
    """Matrix product of the windows (offset axis last) with a weight column, or ``F.linear`` with one output.

    Matches, e.g.::

        y = (u @ w.t().unsqueeze(-1)).squeeze(-1)        # per-head column: [N, l, 1] against [.., N, D, l]
        y = u @ w                                        # w [l] shared by heads
        y = F.linear(u, w.view(1, l)).squeeze(-1)        # one output feature
    """
    operands = _matmul_operands(user)
    if operands is None:
        return None
    a, b, kind = operands
    if a is not view.node:
        if b is view.node:
            raise NotFused(f"the windows are the right operand of {kind}: only windows @ weight is recognised")
        return None
    windows, w = fake_tensor(view.node), fake_tensor(b) if isinstance(b, fx.Node) else None
    if w is None:
        raise NotFused(f"the {kind} weight is not a tensor")
    if view.labels[-1] != OFFSET:
        raise NotFused(f"{kind} contracts the last dim ({view.labels[-1]}), not the window offset axis")
    if w.dtype != windows.dtype:
        raise NotFused(f"type promotion: weight dtype {w.dtype} differs from window dtype {windows.dtype}")
    if kind == "linear" and w.dim() == 2:  # F.linear(u, W[1, l]) == u @ W.t()
        if not is_one(w.shape[0]):
            raise NotFused(f"linear with {w.shape[0]} outputs mixes the window into several features")
        return Reduction("linear", user, view.labels[:-1] + (UNIT,), b, (UNIT, OFFSET), 1.0, [user])
    if w.dim() == 1:
        return Reduction(kind, user, view.labels[:-1], b, (OFFSET,), 1.0, [user])
    if not is_one(w.shape[-1]):
        raise NotFused(f"{kind} with a weight of {w.shape[-1]} columns mixes the window into several features")
    if windows.dim() < 2 or w.dim() - 2 > windows.dim() - 2:
        raise NotFused(f"{kind} weight {tuple(w.shape)} has more batch dims than the windows")
    # the weight's batch dims broadcast against the windows' batch dims (all but the last two)
    batch_labels = view.labels[:-2]
    weight_labels = []
    for k in range(w.dim() - 2):
        i = len(batch_labels) - (w.dim() - 2) + k
        label = batch_labels[i]
        if is_one(w.shape[k]):
            weight_labels.append(UNIT)
        elif not same_size(w.shape[k], windows.shape[i]):
            return None
        elif x_dim(label) is not None:
            weight_labels.append(label)
        else:
            raise NotFused(f"the {kind} weight varies with the window index, not only with (offset, head)")
    if len([lab for lab in weight_labels if lab != UNIT]) > 1:
        raise NotFused(f"the {kind} weight varies along more than one passed-through dim")
    weight_labels += [OFFSET, UNIT]
    return Reduction(kind, user, view.labels[:-1] + (UNIT,), b, tuple(weight_labels), 1.0, [user])


REDUCTIONS: tuple[Callable[[WindowView, fx.Node], Optional[Reduction]], ...] = (
    weighted_sum,
    window_einsum,
    window_mean,
    window_matmul,
)
