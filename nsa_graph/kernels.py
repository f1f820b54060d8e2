"""Generic (CPU, and any non-NPU device) kernels for NsaCompress and its gradient.

Both loop over the window offset ``j`` and update strided views of the input, so the
``block / stride``-times larger window tensor is never materialised:

    out[i] = Σ_j w[j] * x[s + i*d + j]        ->  out += w[j] * x[s+j : s+j+(W-1)*d+1 : d]   for each j

Numerics follow the Ascend kernels: fp16/bf16 operands are converted exactly to fp32, products and sums
are fp32 (fp64 for fp64), and there is one final cast. The forward rounds ties away from zero (the NPU
forward's CAST_ROUND); the backward rounds to nearest-even (its CAST_RINT), as torch's ``.to`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch

from .contract import sequence_spans, windows_in

# Windows per tile: the fp32 output tile (tile * N * D * 4 bytes) stays in cache while all `l`
# offsets accumulate into it, instead of streaming the whole output through memory `l` times.
_TILE_BYTES = 1 << 18


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _window_runs(T: int, block: int, stride: int, actual_seq_len: Optional[Sequence[int]]):
    """``(first_token, first_row, count)`` for each sequence that has at least one window."""
    row = 0
    for start, end in sequence_spans(T, actual_seq_len):
        count = windows_in(end - start, block, stride)
        if count > 0:
            yield start, row, count
            row += count


def _tiles(first_token: int, first_row: int, count: int, stride: int, tile: int):
    for i in range(0, count, tile):
        n = min(tile, count - i)
        yield first_token + i * stride, first_row + i, n


def _tile_windows(row_bytes: int) -> int:
    return max(1, _TILE_BYTES // max(1, row_bytes))


def round_half_away_from_zero(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast fp32 ``x`` to fp16/bf16 rounding ties away from zero (AscendC ``CAST_ROUND``).

    Works on the fp32 bit pattern: adding half a destination ULP to the magnitude and truncating rounds
    ties away from zero; the final ``.to`` is then exact. fp16 subnormals have a fixed ULP of 2**-24.
    """
    if dtype not in (torch.float16, torch.bfloat16):
        return x.to(dtype)
    x = x.float()
    bits = x.view(torch.int32)
    if dtype == torch.bfloat16:
        rounded = ((bits + 0x8000) & ~0xFFFF).view(torch.float32)
    else:
        rounded = ((bits + 0x1000) & ~0x1FFF).view(torch.float32)
        # no data-dependent branch: the function is also traced into decompositions
        subnormal = torch.floor(x.abs() * 2.0**24 + 0.5) * 2.0**-24
        rounded = torch.where(x.abs() < 2.0**-14, subnormal.copysign(x), rounded)
    rounded = torch.where(torch.isfinite(x), rounded, x)
    return rounded.to(dtype)


def compress_forward(
    input: torch.Tensor,
    weight: torch.Tensor,
    compress_block_size: int,
    compress_stride: int,
    actual_seq_len: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """``out[r, n, :] = Σ_j weight[j, n] * input[start_b + i*stride + j, n, :]`` (contract in contract.py)."""
    T, N, D = input.shape
    l, d = compress_block_size, compress_stride
    acc = accumulation_dtype(input.dtype)
    runs = list(_window_runs(T, l, d, actual_seq_len))
    rows = sum(count for _, _, count in runs)
    out = torch.zeros((rows, N, D), dtype=acc, device=input.device)
    if rows:
        w = weight.to(acc).unsqueeze(-1)  # [l, N, 1]: broadcast over D
        tile = _tile_windows(N * D * out.element_size())
        for first_token, first_row, count in runs:
            for t0, r0, n in _tiles(first_token, first_row, count, d, tile):
                span = (n - 1) * d + 1
                # upcast one tile at a time: the fp32 copy stays in cache instead of doubling the input
                x = input[t0 : t0 + span + l - 1].to(acc)
                dst = out[r0 : r0 + n]
                for j in range(l):
                    dst.addcmul_(x[j : j + span : d], w[j])
    if acc == input.dtype:
        return out
    return round_half_away_from_zero(out, input.dtype)


def compress_backward(
    grad: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    compress_block_size: int,
    compress_stride: int,
    actual_seq_len: Optional[Sequence[int]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_input, grad_weight)``; grad_input is zero for tokens that no window covers."""
    T, N, D = input.shape
    l, d = compress_block_size, compress_stride
    acc = accumulation_dtype(input.dtype)
    grad_input = torch.zeros((T, N, D), dtype=acc, device=input.device)
    grad_weight = torch.zeros((l, N), dtype=acc, device=input.device)
    runs = list(_window_runs(T, l, d, actual_seq_len))
    if runs:
        w = weight.to(acc).unsqueeze(-1)
        tile = _tile_windows(N * D * grad_input.element_size())
        product = torch.empty((tile, N, D), dtype=acc, device=input.device)
        for first_token, first_row, count in runs:
            for t0, r0, n in _tiles(first_token, first_row, count, d, tile):
                span = (n - 1) * d + 1
                g = grad[r0 : r0 + n].to(acc)
                x = input[t0 : t0 + span + l - 1].to(acc)
                dst = grad_input[t0 : t0 + span + l - 1]
                p = product[:n]
                for j in range(l):
                    dst[j : j + span : d].addcmul_(g, w[j])
                    # grad_weight[j, n] = Σ over windows and D of g * x (per head)
                    torch.mul(g, x[j : j + span : d], out=p)
                    grad_weight[j] += p.sum((0, 2))
    return grad_input.to(input.dtype), grad_weight.to(weight.dtype)
