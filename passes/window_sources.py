"""Window sources that are views of x: ``unfold``, ``view``/``reshape`` into blocks, ``as_strided``.

A source returns the :class:`WindowSource` and a :class:`WindowView` whose dims are labelled (see
:mod:`.candidate`); ``None`` means "not a window source at all", :class:`NotFused` means "a window source
that cannot be fused, because ...". Gathers and roll-and-concatenate are in :mod:`.assembled_sources`.
"""

from __future__ import annotations

from typing import Optional

import torch.fx as fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .candidate import OFFSET, UNIT, WINDOW, NotFused, WindowSource, WindowView, x_label
from .nodes import bind, fake_tensor, normalize_dim, op_name, proven_int, same_size, static_int


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
