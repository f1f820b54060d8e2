"""Window sources: nodes whose value is the tensor of windows ``x[.., s + i*stride + j, ..]``, and the
layout ops that carry such a tensor to its reduction.

A source returns a :class:`WindowView` whose dims are labelled (see :mod:`.candidate`); ``None`` means
"not a window source at all", :class:`NotFused` means "a window source that cannot be fused, because ...".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Callable, Optional

import torch
import torch.fx as fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from nsa_graph.contract import windows_in

from .candidate import OFFSET, UNIT, WINDOW, NotFused, WindowSource, WindowView, x_label
from .nodes import (
    bind, cast_dtype, fake_tensor, normalize_dim, op_name, proven_int, same_size, static_int, varargs,
)


def _labels_of_x(ndim: int) -> list[str]:
    return [x_label(k) for k in range(ndim)]


def unfold_windows(node: fx.Node) -> Optional[tuple[WindowSource, WindowView]]:
    """``x.unfold(seq_dim, l, d)``: windows along any dim of any layout, the window axis appended last.

    Matches, e.g.::

        u = k.unfold(1, 32, 16)            # BSND -> [B, W, N, D, 32]
        u = k.unfold(0, 32, 16)            # TND, one sequence
        u = k.transpose(1, 2).unfold(2, l, d)   # BNSD
        u = h.view(B, S, N, D).unfold(1, l, d)  # [B, S, H] viewed as heads
    """
    if op_name(node) != "unfold":
        return None
    args = bind(node, ("self", "dimension", "size", "step"), {})
    if args is None or not isinstance(args["self"], fx.Node):
        return None
    x = fake_tensor(args["self"])
    if x is None:
        return None
    seq_dim = normalize_dim(static_int(args["dimension"]), max(x.dim(), 1))
    block, stride = static_int(args["size"]), static_int(args["step"])
    spelling = f"unfold({args['dimension']}, {args['size']}, {args['step']})"
    if seq_dim is None or block is None or stride is None:
        raise NotFused(f"{spelling}: dim, window size and step must be static ints")
    if x.dim() < 1:
        raise NotFused(f"{spelling}: a 0-d tensor has no sequence dim")
    labels = _labels_of_x(x.dim())
    labels[seq_dim] = WINDOW
    source = WindowSource(node, args["self"], seq_dim, block, stride, spelling)
    return source, WindowView(node, tuple(labels) + (OFFSET,), nodes=[node])


def block_view_windows(node: fx.Node) -> Optional[tuple[WindowSource, WindowView]]:
    """Non-overlapping blocks (block == stride): one dim split in two by ``view``/``reshape``.

    Matches, e.g.::

        kb = k.view(B, S // 64, 64, N, D)                    # then .mean(2) or (kb * w).sum(2)
        kb = k[:, : S // 64 * 64].reshape(B, -1, 64, N, D)   # a truncating slice first: x is the slice
        kb = einops.rearrange(k, 'b (w n) h d -> b w n h d', n=64)

    Every other dim must map one-to-one, and the split dim must be exactly (blocks x block): a padded
    or partial tail block never reaches here.
    """
    if op_name(node) not in ("view", "reshape"):
        return None
    source_node = node.args[0] if node.args else None
    if not isinstance(source_node, fx.Node):
        return None
    x, out = fake_tensor(source_node), fake_tensor(node)
    if x is None or out is None or out.dim() != x.dim() + 1:
        return None
    # the last dim is the feature dim in every layout: splitting it (H -> N, D) is a head view, not blocks
    for seq_dim in range(x.dim() - 1):
        block = proven_int(out.shape[seq_dim + 1])
        if block is None or block < 2:
            continue
        others = [(out.shape[k], x.shape[k]) for k in range(seq_dim)]
        others += [(out.shape[k + 1], x.shape[k]) for k in range(seq_dim + 1, x.dim())]
        if not all(same_size(a, b) for a, b in others):
            continue
        # a view keeps the element count: with every other dim equal and non-zero, blocks * block == S
        if not (same_size(out.shape[seq_dim] * block, x.shape[seq_dim])
                or all(statically_known_true(b != 0) for _, b in others)):
            continue
        labels = _labels_of_x(x.dim())
        labels[seq_dim] = WINDOW
        labels.insert(seq_dim + 1, OFFSET)
        spelling = f"{node.target if node.op == 'call_method' else 'reshape'} into blocks of {block}"
        source = WindowSource(node, source_node, seq_dim, block, block, spelling)
        return source, WindowView(node, tuple(labels), nodes=[node])
    return None


def strided_windows(node: fx.Node) -> Optional[tuple[WindowSource, WindowView]]:
    """``as_strided`` windows: one output dim steps ``d`` tokens, another steps 1 token, ``l`` of them.

    Matches, e.g.::

        u = k.as_strided((B, H, W, l, D), (k.stride(0), k.stride(1), d * k.stride(2), k.stride(2), k.stride(3)))

    Every other output dim must be a whole dim of ``x`` (same size and stride), and the windows must lie
    inside the sequence (``as_strided`` would otherwise read the next row's memory).
    """
    if op_name(node) != "as_strided":
        return None
    args = bind(node, ("self", "size", "stride", "storage_offset"), {"storage_offset": None})
    if args is None or not isinstance(args["self"], fx.Node) or fake_tensor(args["self"]) is None:
        return None
    x = fake_tensor(args["self"])
    sizes = [static_int(v) for v in args["size"]] if isinstance(args["size"], (list, tuple)) else [None]
    strides = [static_int(v) for v in args["stride"]] if isinstance(args["stride"], (list, tuple)) else [None]
    x_sizes, x_strides = [static_int(v) for v in x.shape], [static_int(v) for v in x.stride()]
    offset = args["storage_offset"]
    spelling = f"as_strided({tuple(args['size'])}, {tuple(args['stride'])})"
    if None in sizes + strides + x_sizes + x_strides or len(sizes) != len(strides):
        raise NotFused(f"{spelling}: sizes and strides must be static")
    if offset is not None and static_int(offset) != static_int(x.storage_offset()):
        raise NotFused(f"{spelling}: a storage offset other than x's shifts the windows")
    dims = sorted((x_strides[j], x_sizes[j]) for j in range(x.dim()) if x_sizes[j] > 1)
    if any(outer < inner * size for (inner, size), (outer, _) in zip(dims, dims[1:])):
        raise NotFused(f"{spelling}: x overlaps itself; its strides do not name its dims")
    labels: list[Optional[str]] = [None] * len(sizes)
    used: set[int] = set()
    for k, (size, stride) in enumerate(zip(sizes, strides)):
        matches = [j for j in range(x.dim()) if x_strides[j] == stride and x_sizes[j] == size and size > 1]
        if size == 1:  # size-1 dims carry no stride information: pair them with x's size-1 dims in order
            ones = [j for j in range(x.dim()) if x_sizes[j] == 1 and j not in used]
            labels[k] = x_label(ones[0]) if ones else UNIT
            used.update(ones[:1])
        elif len(matches) == 1 and matches[0] not in used:
            labels[k] = x_label(matches[0])
            used.add(matches[0])
    rest = [k for k, lab in enumerate(labels) if lab is None]
    for seq_dim in (j for j in range(x.dim()) if j not in used):
        unit = x_strides[seq_dim]
        j_dims = [k for k in rest if strides[k] == unit]
        w_dims = [k for k in rest if k not in j_dims and strides[k] % unit == 0 and strides[k] > 0]
        if len(rest) != 2 or len(j_dims) != 1 or len(w_dims) != 1:
            continue
        block, windows, stride = sizes[j_dims[0]], sizes[w_dims[0]], strides[w_dims[0]] // unit
        if (windows - 1) * stride + block > x_sizes[seq_dim]:
            raise NotFused(f"{spelling}: the last window ends past the sequence (reads another row's memory)")
        labels[j_dims[0]], labels[w_dims[0]] = OFFSET, WINDOW
        if used != set(range(x.dim())) - {seq_dim}:
            raise NotFused(f"{spelling}: the view drops or repeats dims of x")
        span = (0, (windows - 1) * stride + block)
        source = WindowSource(node, args["self"], seq_dim, block, stride, spelling,
                              span=None if span[1] == x_sizes[seq_dim] else span)
        return source, WindowView(node, tuple(labels), nodes=[node])
    raise NotFused(f"{spelling}: no dim of x is read as (window step d, offset 1)")


def _gather(node: fx.Node) -> Optional[tuple[fx.Node, fx.Node]]:
    """``x[idx]`` or ``x.index_select(0, idx)`` with a tensor index on dim 0 -> (x, idx)."""
    if node.op != "call_function" and node.op != "call_method":
        return None
    if getattr(node.target, "__name__", None) == "getitem" and len(node.args) == 2:
        x, index = node.args
        index = index[0] if isinstance(index, tuple) and len(index) == 1 else index
    elif op_name(node) == "index_select" and len(node.args) == 3 and static_int(node.args[1]) == 0:
        x, index = node.args[0], node.args[2]
    else:
        return None
    if not isinstance(x, fx.Node) or not isinstance(index, fx.Node) or fake_tensor(index) is None:
        return None
    if fake_tensor(x) is None or fake_tensor(index).dtype in (torch.bool, torch.uint8):
        return None
    return x, index


def _decode_windows(index: torch.Tensor, length: int, spelling: str) -> tuple[int, int, tuple[int, int], list[int]]:
    """Read ``[rows, l]`` token indices as windows: (l, d, (start, end), sequence prefix sums in the span)."""
    rows, block = index.shape
    if rows == 0 or block == 0:
        raise NotFused(f"{spelling}: no windows")
    if not bool((index == index[:, :1] + torch.arange(block)).all()):
        raise NotFused(f"{spelling}: the gathered rows are not runs of consecutive tokens")
    starts = index[:, 0].tolist()
    if starts[0] < 0 or starts[-1] + block > length:
        raise NotFused(f"{spelling}: indices outside [0, {length})")
    diffs = [b - a for a, b in zip(starts, starts[1:])]
    positive = [g for g in diffs if g > 0]
    stride = max(set(positive), key=positive.count) if positive else block
    # runs of windows `stride` apart are sequences; each sequence ends where the next one starts
    bounds, run_start, count = [], starts[0], 1
    for prev, nxt in zip(starts, starts[1:]):
        if nxt - prev == stride:
            count += 1
            continue
        end_min = prev + block  # the run's last window must end inside its sequence
        if nxt < end_min:
            raise NotFused(f"{spelling}: windows of consecutive sequences overlap (a window at {nxt} starts "
                           f"before the previous one ends at {end_min})")
        seq_len = nxt - run_start
        if seq_len - block >= count * stride:  # room for one more window: the gap is its own sequence
            if nxt - end_min >= block:
                raise NotFused(f"{spelling}: tokens [{end_min}, {nxt}) are skipped although they hold a window")
            bounds.append(end_min - starts[0])
        bounds.append(nxt - starts[0])
        run_start, count = nxt, 1
    end = starts[-1] + block
    bounds.append(end - starts[0])
    return block, stride, (starts[0], end), bounds


def gathered_windows(node: fx.Node) -> Optional[tuple[WindowSource, WindowView]]:
    """A gather whose indices are compile-time constants enumerating full windows ``s_b + i*d + j``.

    Matches, e.g.::

        idx = torch.arange(0, S - l + 1, d)[:, None] + torch.arange(l)      # [W, l]
        u = k[idx]                                                           # TND -> [W, l, N, D]
        u = k.index_select(0, idx.flatten()).view(-1, l, N, D)               # MiniCPM4 CompressK style

    Several runs of windows become packed sequences (``actual_seq_len``). Indices computed from a graph
    input (e.g. ``cu_seqlens`` passed as a tensor) are opaque: reported, not fused.
    """
    from .constants import constant_value

    view = None
    found = _gather(node)
    if found is None and op_name(node) in ("view", "reshape") and isinstance(node.args[0], fx.Node):
        found, view = _gather(node.args[0]), node
        if found is None or fake_tensor(found[1]).dim() != 1:
            return None
    if found is None:
        return None
    x_node, index_node = found
    x = fake_tensor(x_node)
    spelling = "gather " + ("+ view " if view is not None else "") + "of windows"
    if view is None and fake_tensor(index_node).dim() != 2:
        return None  # a 1-D gather is windows only once viewed as [rows, l]
    index = constant_value(index_node)
    length = static_int(x.shape[0])
    if not isinstance(index, torch.Tensor) or length is None:
        raise NotFused(f"{spelling}: the indices are not compile-time constants (computed from an input)")
    if view is not None:
        out = fake_tensor(view)
        block = static_int(out.shape[1]) if out.dim() == x.dim() + 1 else None
        tail_ok = out.dim() == x.dim() + 1 and all(same_size(a, b) for a, b in zip(out.shape[2:], x.shape[1:]))
        if block is None or not tail_ok or index.numel() % block:
            return None
        index = index.reshape(-1, block)
    block, stride, span, bounds = _decode_windows(index, length, spelling)
    labels = (WINDOW, OFFSET) + tuple(x_label(k) for k in range(1, x.dim()))
    source_node = view if view is not None else node
    source = WindowSource(source_node, x_node, 0, block, stride, spelling,
                          span=None if span == (0, length) else span, seq_bounds=bounds)
    nodes = [node] if view is None else [view.args[0], view]
    return source, WindowView(source_node, labels, nodes=nodes)


def _full_slices_but(index, dim: int) -> Optional[slice]:
    """The slice at ``dim`` of an index tuple whose other entries are all ``:``, else None."""
    index = index if isinstance(index, tuple) else (index,)
    if not all(isinstance(i, slice) for i in index) or dim >= len(index) + 1:
        return None
    if any(i != slice(None) for k, i in enumerate(index) if k != dim):
        return None
    return index[dim] if dim < len(index) else slice(None)


def _leading(part: Optional[slice]) -> Optional[int]:
    """``n`` for a slice ``[:n]`` (or ``[0:n]``), -1 for ``[:]``, else None."""
    if part is None or part.step not in (None, 1) or static_int(part.start or 0) != 0:
        return None
    return -1 if part.stop is None else static_int(part.stop)


def _rolled_piece(piece: fx.Node, seq: int):
    """One ``roll(x, -k*d)[.., :W*d].reshape(.., W, d, ..)[.., :m]`` -> (x, shift, W, d, m) or None."""
    m = None
    node = piece
    if getattr(node.target, "__name__", "") == "getitem" and len(node.args) == 2:
        m = _leading(_full_slices_but(node.args[1], seq + 1))
        node = node.args[0]
        if m is None or not isinstance(node, fx.Node):
            return None
    if op_name(node) not in ("view", "reshape") or not isinstance(node.args[0], fx.Node):
        return None
    blocks, q = fake_tensor(node), fake_tensor(node.args[0])
    if blocks is None or q is None or blocks.dim() != q.dim() + 1:
        return None
    windows, stride = static_int(blocks.shape[seq]), static_int(blocks.shape[seq + 1])
    if windows is None or stride is None or static_int(q.shape[seq]) != windows * stride:
        return None
    if not all(same_size(a, b) for a, b in zip(blocks.shape[:seq], q.shape[:seq])) or not all(
            same_size(a, b) for a, b in zip(blocks.shape[seq + 2:], q.shape[seq + 1:])):
        return None
    node = node.args[0]
    if getattr(node.target, "__name__", "") == "getitem" and len(node.args) == 2:
        if _leading(_full_slices_but(node.args[1], seq)) not in (-1, windows * stride):
            return None
        node = node.args[0]
    shift = 0
    if node.op == "call_function" and node.target in (torch.roll, torch.Tensor.roll) or (
            node.op == "call_method" and node.target == "roll"):
        args = bind(node, ("input", "shifts", "dims"), {"dims": None})
        one = lambda v: v[0] if isinstance(v, (list, tuple)) and len(v) == 1 else v  # noqa: E731
        if args is None or static_int(one(args["dims"])) is None:
            return None
        x = fake_tensor(args["input"])
        if x is None or normalize_dim(static_int(one(args["dims"])), x.dim()) != seq:
            return None
        length, amount = static_int(x.shape[seq]), static_int(one(args["shifts"]))
        if length is None or amount is None:
            return None
        shift, node = (-amount) % length, args["input"]
    m = stride if m in (None, -1) else min(m, stride)
    return node, shift, windows, stride, m


def rolled_windows(node: fx.Node) -> Optional[tuple[WindowSource, WindowView]]:
    """Roll-and-concatenate windows: ``cat`` of shifted block views, one per ``stride`` of the window.

    Matches, e.g.::

        blocks = [torch.roll(x, -k * d, dims=1)[:, : W * d].reshape(B, W, d, N, D)[:, :, : min(d, l - k * d)]
                  for k in range(ceil(l / d))]
        u = torch.cat(blocks, dim=2)                              # [B, W, l, N, D]

    The roll never wraps into a used token when the last window fits: that is checked.
    """
    if node.op != "call_function" or node.target not in (torch.cat, torch.concat, torch.concatenate):
        return None
    tensors = node.args[0] if node.args else None
    out = fake_tensor(node)
    dim = normalize_dim(static_int(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)),
                        out.dim() if out is not None else 1)
    if not isinstance(tensors, (list, tuple)) or out is None or dim is None or dim == 0:
        return None
    if not all(isinstance(t, fx.Node) for t in tensors):
        return None
    pieces = [_rolled_piece(t, dim - 1) for t in tensors]
    if any(p is None for p in pieces):
        return None
    x_node, _, windows, stride, _ = pieces[0]
    block = sum(p[4] for p in pieces)
    spelling = f"roll + cat windows ({len(pieces)} shifted blocks)"
    for k, (x_k, shift, w_k, d_k, m_k) in enumerate(pieces):
        if x_k is not x_node or (w_k, d_k) != (windows, stride) or shift != k * stride:
            raise NotFused(f"{spelling}: block {k} is not x shifted by {k} strides")
        if m_k != min(stride, block - k * stride):
            raise NotFused(f"{spelling}: block {k} keeps {m_k} offsets, not min(d, l - k*d)")
    seq_dim = dim - 1
    length = static_int(fake_tensor(x_node).shape[seq_dim])
    if length is None or (windows - 1) * stride + block > length:
        raise NotFused(f"{spelling}: the last window wraps around the end of the sequence")
    labels = [x_label(k) for k in range(fake_tensor(x_node).dim())]
    labels[seq_dim] = WINDOW
    labels.insert(seq_dim + 1, OFFSET)
    end = (windows - 1) * stride + block
    source = WindowSource(node, x_node, seq_dim, block, stride, spelling,
                          span=None if windows == windows_in(length, block, stride) else (0, end))
    return source, WindowView(node, tuple(labels), nodes=[node])


WINDOW_SOURCES: tuple[Callable[[fx.Node], Optional[tuple[WindowSource, WindowView]]], ...] = (
    unfold_windows,
    gathered_windows,  # before block views: a gather + view is windows of x, not blocks of the gathered copy
    block_view_windows,
    strided_windows,
    rolled_windows,
)


# --- layout ops between the source and the reduction ------------------------------------------------

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
