"""Decompositions of ``nsa_compress`` and ``nsa_compress_grad`` into aten ops, for Inductor.

Without them Inductor calls the op's Python kernel as an extern (several times slower on CPU than a
generated loop); with them the op becomes one fused loop. They are handed to Inductor *scoped*, through
``compile_fx(..., decompositions=...)`` in :mod:`nsa_graph.backends`, never registered globally (that would
also strip the single op node from graphs meant for torchair).

Numerics follow the kernels: operands are converted to fp32 (fp64 stays fp64), products and sums are
accumulated there, and the result is cast once.

``grad_input`` is a *gather*: each token sums over the at most ``ceil(l/d)`` windows that cover it, so
the generated code writes every output element once (no scatter-add, no atomics)::

    gi[s + p] = Σ_{m < ceil(l/d)} w[p % d + m*d] * g[o + p // d - m]   over the valid (window, offset) pairs
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Optional

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .contract import sequence_spans, windows_in
from .kernels import accumulation_dtype


def _windows(seq: torch.Tensor, block: int, stride: int, count) -> torch.Tensor:
    """``[count, N, D, block]`` windows of one sequence (no copy when the length is known to fit)."""
    if statically_known_true(seq.shape[0] >= block):
        return seq.unfold(0, block, stride)
    # length not known to hold a window: strided slices stay valid (empty) for count == 0, no guard needed
    span = (count - 1) * stride + 1
    return torch.stack([seq[j : j + span : stride] for j in range(block)], dim=-1)


def nsa_compress_decomposition(
    input: torch.Tensor,
    weight: torch.Tensor,
    compress_block_size: int,
    compress_stride: int,
    *,
    actual_seq_len: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    l, d = compress_block_size, compress_stride
    acc = accumulation_dtype(input.dtype)
    w = weight.to(acc).t()[:, None, :]  # [N, 1, l]
    pieces = []
    for start, end in sequence_spans(input.shape[0], actual_seq_len):
        count = windows_in(end - start, l, d)
        u = _windows(input[start:end], l, d, count)
        pieces.append((u.to(acc) * w).sum(-1))
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    return out.to(input.dtype)


def nsa_compress_grad_decomposition(
    grad: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    compress_block_size: int,
    compress_stride: int,
    *,
    actual_seq_len: Optional[Sequence[int]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    l, d = compress_block_size, compress_stride
    acc = accumulation_dtype(input.dtype)
    T, N, D = input.shape
    g_all, w = grad.to(acc), weight.to(acc)
    covering = -(-l // d)  # windows covering one token: ceil(l / d)
    grad_inputs, grad_weight = [], None
    row = 0
    for start, end in sequence_spans(T, actual_seq_len):
        count = windows_in(end - start, l, d)
        g = g_all[row : row + count]
        row = row + count
        # gather: token p of this sequence reads window p // d - m at offset p % d + m * d
        g_padded = torch.cat([g, g.new_zeros((1, N, D))])  # row `count` is the zero window
        p = torch.arange(end - start, device=input.device)
        gi = None
        for m in range(covering):
            window = p // d - m
            offset = p % d + m * d
            valid = (window >= 0) & (window < count) & (offset < l)
            rows = torch.where(valid, window, count)
            term = w[offset.clamp(max=l - 1)][:, :, None] * g_padded[rows]
            gi = term if gi is None else gi + term
        grad_inputs.append(gi)
        # grad_weight[j, n] = Σ_i Σ_D g[i, n, :] * x[s + i*d + j, n, :]
        u = _windows(input[start:end], l, d, count).to(acc)  # [count, N, D, l]
        gw = (u * g[..., None]).sum((0, 2)).t()  # [l, N]
        grad_weight = gw if grad_weight is None else grad_weight + gw
    grad_input = grad_inputs[0] if len(grad_inputs) == 1 else torch.cat(grad_inputs)
    return grad_input.to(input.dtype), grad_weight.to(weight.dtype)


def decompositions() -> dict[torch._ops.OpOverload, Callable]:
    """The table to merge into Inductor's (``select_decomp_table()``) for a scoped compile."""
    return {
        torch.ops.nsa_graph.nsa_compress.default: nsa_compress_decomposition,
        torch.ops.nsa_graph.nsa_compress_grad.default: nsa_compress_grad_decomposition,
    }


__all__ = ["decompositions", "nsa_compress_decomposition", "nsa_compress_grad_decomposition"]
