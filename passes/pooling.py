"""Pooling ops that are a window source and a uniform reduction in one node."""

from __future__ import annotations

from typing import Optional

import torch.fx as fx

from .candidate import WINDOW, NotFused, Reduction, WindowSource, WindowView, x_label
from .nodes import bind, fake_tensor, op_name, static_int
from .reductions import check_sum_dtype


_POOL_DIMS = {"avg_pool1d": 1, "avg_pool2d": 2, "avg_pool3d": 3}


def average_pool(node: fx.Node) -> Optional[tuple[WindowSource, WindowView, Reduction]]:
    """``avg_pool1d/2d/3d`` pooling one dim (kernel and stride 1 elsewhere), no padding: windows and mean.

    Matches, e.g.::

        y = F.avg_pool1d(k.reshape(B, S, N * D).transpose(1, 2), 32, 16)        # [B, N*D, W]
        y = F.avg_pool3d(k, [64, 1, 1], [64, 1, 1], ceil_mode=True)             # k [B, S, H, D] read as (C, D, H, W)

    ``ceil_mode`` is accepted only when the windows tile the sequence exactly (no partial tail window).
    """
    name = op_name(node)
    if name not in _POOL_DIMS:
        return None
    spatial = _POOL_DIMS[name]
    args = bind(node, ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                       "divisor_override")[: 6 if spatial == 1 else 7],
                {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                 "divisor_override": None})
    if args is None or not isinstance(args["input"], fx.Node) or fake_tensor(args["input"]) is None:
        return None
    x = fake_tensor(args["input"])

    def per_dim(value, default):
        value = default if value is None or value == [] or value == () else value
        values = list(value) if isinstance(value, (list, tuple)) else [value] * spatial
        values = values * spatial if len(values) == 1 else values
        return [static_int(v) for v in values] if len(values) == spatial else [None] * spatial

    kernel = per_dim(args["kernel_size"], None)
    stride = per_dim(args["stride"], args["kernel_size"])
    padding = per_dim(args["padding"], 0)
    spelling = f"{name}({args['kernel_size']}, {args['stride']})"
    if None in kernel + stride + padding:
        raise NotFused(f"{spelling}: kernel size, stride and padding must be static ints")
    if any(padding):
        raise NotFused(f"{spelling}: padding={args['padding']} averages padded windows (the op has none)")
    if args.get("divisor_override") is not None:
        raise NotFused(f"{spelling}: divisor_override changes the weights")
    pooled = [i for i in range(spatial) if (kernel[i], stride[i]) != (1, 1)]
    if len(pooled) != 1:
        raise NotFused(f"{spelling}: pools {len(pooled)} dims; the op windows exactly one")
    seq_dim = x.dim() - spatial + pooled[0]
    block, step = kernel[pooled[0]], stride[pooled[0]]
    if args["ceil_mode"] is not False:
        # ceil_mode adds a partial tail window unless the windows tile the sequence exactly
        length = static_int(x.shape[seq_dim])
        if args["ceil_mode"] is not True or length is None or length < block or (length - block) % step:
            raise NotFused(f"{spelling}: ceil_mode keeps a partial tail window (the op has only full windows)")
    labels = tuple(x_label(k) if k != seq_dim else WINDOW for k in range(x.dim()))
    source = WindowSource(node, args["input"], seq_dim, block, step, spelling)
    view = WindowView(args["input"], tuple(x_label(k) for k in range(x.dim())), nodes=[])
    check_sum_dtype(node, None, x, name)
    return source, view, Reduction("mean", node, labels, None, (), 1.0 / block, [node])
