"""Decompositions of ``nsa_compress`` and ``nsa_compress_grad`` into aten ops, for Inductor.

Without them Inductor calls the op's Python kernel as an extern (several times slower on CPU than a
generated loop); with them the op becomes one fused loop. They are handed to Inductor *scoped*, through
``compile_fx(..., decompositions=...)`` in :mod:`nsa_graph.backends`, never registered globally (that would
also strip the single op node from graphs meant for torchair).

Numerics follow the kernels: operands are converted to fp32 (fp64 stays fp64), products and sums are
accumulated there, and the result is cast once (round to nearest-even; the kernels' forward rounds ties
away from zero, so the two differ by one ulp on exact ties).

``grad_input`` is a *gather*: each token sums over the at most ``ceil(l/d)`` windows that cover it, so
the generated code writes every output element once (no scatter-add, no atomics)::

    gi[s + p] = Σ_{m < ceil(l/d)} w[p % d + m*d] * g[o + p // d - m]   over the valid (window, offset) pairs
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Optional

import torch

from .contract import sequence_spans, windows_in
from .kernels import accumulation_dtype


def _static(*values) -> bool:
    return all(isinstance(v, int) for v in values)


def _windows(input: torch.Tensor, start, end, block: int, stride: int, count) -> torch.Tensor:
    """``[count, N, D, block]`` windows of the sequence ``[start, end)``.

    Static bounds: an ``unfold`` view of a slice. Symbolic bounds: a gather with absolute indices, which
    needs no slicing of symbolic ranges (slices clamp their bounds, and clamping installs guards).
    """
    if _static(start, end):
        if end - start < block:
            return input.new_empty((0, *input.shape[1:], block))
        return input[start:end].unfold(0, block, stride)
    index = start + torch.arange(count, device=input.device)[:, None] * stride + torch.arange(block, device=input.device)
    return input[index].permute(0, 2, 3, 1)  # [count, l, N, D] -> [count, N, D, l]


def nsa_compress_decomposition(
    input: torch.Tensor,
    weight: torch.Tensor,
    compress_block_size: int,
    compress_stride: int,
    *,
    actual_seq_len: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    l, d = compress_block_size, compress_stride
    # Inductor computes fp16/bf16 arithmetic in fp32 and casts once at the store, so the product and sum
    # written in the input dtype are exactly the kernels' fp32 accumulation, fused into the reduction
    # loop; an explicit upcast would make it materialise an fp32 result and convert it in a second loop.
    # Where intermediate casts are emulated (`emulate_precision_casts`), the upcast is written out.
    from torch._inductor import config

    acc = accumulation_dtype(input.dtype) if config.emulate_precision_casts else input.dtype
    w = weight.to(acc).t()[:, None, :]  # [N, 1, l]
    pieces = []
    for start, end in sequence_spans(input.shape[0], actual_seq_len):
        u = _windows(input, start, end, l, d, windows_in(end - start, l, d))
        pieces.append((u.to(acc) * w).sum(-1))
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    # the final cast rounds to nearest-even: one ulp from the kernels' ties-away result on exact ties only
    # (emulating ties-away here costs ~20% of the bf16 forward); the accumulation order differs anyway
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
    rows_total = grad.shape[0]
    g_padded = torch.cat([grad.to(acc), grad.new_zeros((1, N, D), dtype=acc)])  # last row: "no window"
    w = weight.to(acc)
    covering = -(-l // d)  # windows covering one token: ceil(l / d)
    grad_inputs, grad_weight = [], None
    row = 0
    for start, end in sequence_spans(T, actual_seq_len):
        count = windows_in(end - start, l, d)
        # gather: token p of this sequence reads window p // d - m at offset p % d + m * d
        p = torch.arange(end - start, device=input.device)
        gi = None
        for m in range(covering):
            window = p // d - m
            offset = p % d + m * d
            valid = (window >= 0) & (window < count) & (offset < l)
            rows = torch.where(valid, row + window, rows_total)
            term = w[offset.clamp(max=l - 1)][:, :, None] * g_padded[rows]
            gi = term if gi is None else gi + term
        grad_inputs.append(gi)
        # grad_weight[j, n] = Σ_i Σ_D g[i, n, :] * x[s + i*d + j, n, :]
        u = _windows(input, start, end, l, d, count).to(acc)  # [count, N, D, l]
        g = g_padded[row + torch.arange(count, device=input.device)]  # [count, N, D]
        gw = (u * g[..., None]).sum((0, 2)).t()  # [l, N]
        grad_weight = gw if grad_weight is None else grad_weight + gw
        row = row + count
    grad_input = grad_inputs[0] if len(grad_inputs) == 1 else torch.cat(grad_inputs)
    return grad_input.to(input.dtype), grad_weight.to(weight.dtype)


def decompositions() -> dict[torch._ops.OpOverload, Callable]:
    """The table to merge into Inductor's (``select_decomp_table()``) for a scoped compile."""
    return {
        torch.ops.nsa_graph.nsa_compress.default: nsa_compress_decomposition,
        torch.ops.nsa_graph.nsa_compress_grad.default: nsa_compress_grad_decomposition,
    }


__all__ = ["decompositions", "nsa_compress_decomposition", "nsa_compress_grad_decomposition"]
