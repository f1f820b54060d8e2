"""Windows assembled from pieces: gathers with compile-time indices, and roll-and-concatenate.

Both materialise the windows from index arithmetic rather than a view; each recogniser proves from the
indices (evaluated, they are constants) or the shifts that the result is exactly the tensor of full
windows ``x[.., s + i*d + j, ..]``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.fx as fx

from nsa_graph.contract import windows_in

from .candidate import OFFSET, WINDOW, NotFused, WindowSource, WindowView, x_label
from .nodes import bind, fake_tensor, normalize_dim, op_name, same_size, static_int


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


def decode_windows(index: torch.Tensor, length: int, spelling: str) -> tuple[int, int, tuple[int, int], list[int]]:
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
    block, stride, span, bounds = decode_windows(index, length, spelling)
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
