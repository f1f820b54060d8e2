"""Generic (CPU, and any non-NPU device) kernels for NsaCompress and its gradient.

The window tensor (``block / stride`` times the input) is never materialised. The work runs on chunks of
consecutive windows whose tokens (upcast into one reused token-major buffer of a few MiB, or the fp32 input
itself) are viewed as overlapping tiles of a few windows each, per head a strided ``[tiles, span, D]`` view
with row stride ``N * D``:

- forward: per chunk and head one ``bmm`` of the tile's banded (Toeplitz) weight matrix
  ``A_n [tile, span]`` with the tiles;
- grad_weight: per chunk and head one ``bmm`` ``X_n [span, D] @ G_n^T [D, tile]``, then the band
  ``token = i*d + j`` of each product is summed over windows;
- grad_input: for ``l % d == 0`` the sequence is viewed as blocks of ``d`` tokens and
  ``gi_blocks[i + m] += w[m*d:(m+1)*d] * g[i]`` is ``l / d`` large ``addcmul_`` calls; otherwise one strided
  ``addcmul_`` per window offset ``j``.

Numerics follow the Ascend kernels: fp16/bf16 operands are converted exactly to fp32, products and sums
are fp32 (fp64 for fp64), and there is one final cast. The forward rounds ties away from zero (the NPU
forward's CAST_ROUND); the backward rounds to nearest-even (its CAST_RINT), as torch's ``.to`` does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Optional

import torch

from .contract import sequence_spans, windows_in

# Windows per GEMM tile. A tile reads span = (tile-1)*d + l tokens for tile*l useful products per output
# element, so larger tiles waste more multiplications on the band's zeros and smaller ones make the GEMMs
# thinner. At l=32, d=16, 4 measured best or level with 2 and 8, except for the forward reading fp32 input
# in place, which is fastest with 2.
_TILE = 4
# Bytes of one chunk's fp32 tokens. Each chunk costs several multi-threaded calls, and on a loaded
# machine every parallel region can stall for a scheduler time slice, so chunks are as large as speed
# allows: 1 to 16 MiB measured within noise of each other, 32 MiB slower.
_CHUNK_BYTES = 1 << 23
# Below this many output elements the GEMM set-up (and one multi-threaded bmm call) costs more than the
# whole window-by-window loop, whose small calls stay single-threaded.
_SMALL = 1 << 15
# Windows per tile of the strided fallbacks (fp32 output tile of tile * N * D elements).
_STRIDED_TILE_BYTES = 1 << 18


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _window_runs(
    T: int, block: int, stride: int, actual_seq_len: Optional[Sequence[int]]
) -> list[tuple[int, int, int]]:
    """``(first_token, first_row, count)`` for each sequence that has at least one window."""
    runs, row = [], 0
    for start, end in sequence_spans(T, actual_seq_len):
        count = windows_in(end - start, block, stride)
        if count > 0:
            runs.append((start, row, count))
            row += count
    return runs


def _tiles(
    first_token: int, first_row: int, count: int, stride: int, tile: int
) -> Iterator[tuple[int, int, int]]:
    for i in range(0, count, tile):
        n = min(tile, count - i)
        yield first_token + i * stride, first_row + i, n


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


def _store_rounded(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` with the forward's ties-away rounding; may overwrite ``src`` (a scratch buffer)."""
    if dst.dtype == torch.bfloat16:
        # Setting the lowest fp32 bit whenever the first dropped bit (bit 15) is set turns an exact tie into
        # "just above half", which round-to-nearest-even (the cast) then rounds away from zero; non-ties,
        # infinities (bit 15 clear) and NaNs keep their rounding. Two in-place passes over a cached tile.
        bits = src.view(torch.int32)
        bits.bitwise_or_(torch.bitwise_right_shift(bits, 15).bitwise_and_(1))
        dst.copy_(src)
    elif dst.dtype == torch.float16:
        dst.copy_(round_half_away_from_zero(src, torch.float16))
    else:
        dst.copy_(src)


class _ChunkReader:
    """Rows ``[start, start + size)`` of ``src`` in the accumulation dtype, token-major (row stride N * D).

    A view of ``src`` when it can be read in place; otherwise the ``valid`` rows are upcast into one reused
    buffer (rows past ``valid`` hold zeros or an earlier chunk's values: the callers never use their results).
    """

    def __init__(self, src: torch.Tensor, size: int, acc: torch.dtype):
        self.src, self.size, self.acc = src, size, acc
        self.direct = src.dtype == acc and src.is_contiguous()
        self.buf: Optional[torch.Tensor] = None

    def read(self, start: int, valid: int) -> torch.Tensor:
        if self.direct and start + self.size <= self.src.shape[0]:
            return self.src[start : start + self.size]
        if self.buf is None:
            self.buf = torch.zeros((self.size, *self.src.shape[1:]), dtype=self.acc, device=self.src.device)
        self.buf[:valid].copy_(self.src[start : start + valid])
        return self.buf


def _forward_gemm(input: torch.Tensor, weight: torch.Tensor, l: int, d: int, runs, out: torch.Tensor) -> None:
    """Per chunk and head, one ``bmm`` of the tile's banded weights with the chunk's overlapping tiles.

    The chunk stays token-major (a plain upcast copy, or the fp32 input itself): each head's tiles are a
    strided view with row stride ``N * D``, so no transposing copy is needed.
    """
    T, N, D = input.shape
    acc = accumulation_dtype(input.dtype)
    direct = input.dtype == acc and input.is_contiguous()  # the tile views assume the row stride N * D
    # reading straight from the input favours thinner tiles (fewer wasted products on the band's zeros)
    tile = max(2 if direct else _TILE, -(-(l - d) // d))
    span = (tile - 1) * d + l
    windows = max(count for _, _, count in runs)
    tiles = max(1, min(_CHUNK_BYTES // (tile * d * N * D * 4), -(-windows // tile)))
    need = (tiles - 1) * tile * d + span  # tokens read by one chunk's tiles
    reader = _ChunkReader(input, need, acc)
    # banded weights of one tile, band[n, i, i*d + j] = w[j, n], the same for every tile
    band = torch.zeros((N, tile, span), dtype=acc, device=input.device)
    w = weight.to(acc).t()
    for i in range(tile):
        band[:, i, i * d : i * d + l] = w
    band = band[:, None].expand(N, tiles, tile, span)
    result = torch.empty((N, tiles, tile, D), dtype=acc, device=input.device)
    for first_token, first_row, count in runs:
        for t0, r0, n in _tiles(first_token, first_row, count, d, tiles * tile):
            # tiles past the sequence's last window read other tokens; their rows are never stored
            src = reader.read(t0, (n - 1) * d + l)
            for h in range(N):
                tiles_h = src[:, h].as_strided((tiles, span, D), (tile * d * N * D, N * D, 1))
                torch.bmm(band[h], tiles_h, out=result[h])
            # rounding the cached chunk result directly into the output beats keeping an fp32 copy of the
            # whole output (its allocation alone costs page faults) and rounding that once
            _store_rounded(out[r0 : r0 + n], result.view(N, tiles * tile, D)[:, :n].transpose(0, 1))


def _forward_strided(
    input: torch.Tensor, weight: torch.Tensor, l: int, d: int, runs, out: torch.Tensor
) -> None:
    """``out += w[j] * x[j::d]`` per window offset: each output depends only on its own window's tokens."""
    T, N, D = input.shape
    acc = accumulation_dtype(input.dtype)
    w = weight.to(acc).unsqueeze(-1)  # [l, N, 1]: broadcast over D
    tile = max(1, _STRIDED_TILE_BYTES // (N * D * 4))
    buf = torch.empty((tile, N, D), dtype=acc, device=input.device)
    for first_token, first_row, count in runs:
        for t0, r0, n in _tiles(first_token, first_row, count, d, tile):
            span = (n - 1) * d + 1
            x = input[t0 : t0 + span + l - 1].to(acc)
            dst = buf[:n]
            torch.mul(x[0:span:d], w[0], out=dst)
            for j in range(1, l):
                dst.addcmul_(x[j : j + span : d], w[j])
            _store_rounded(out[r0 : r0 + n], dst)


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
    runs = _window_runs(T, l, d, actual_seq_len)
    rows = sum(count for _, _, count in runs)
    out = torch.empty((rows, N, D), dtype=input.dtype, device=input.device)
    if rows * N * D <= _SMALL:
        _forward_strided(input, weight, l, d, runs, out)
        return out
    _forward_gemm(input, weight, l, d, runs, out)
    # The GEMM also multiplies the band's zeros with the tile's other tokens: an inf or NaN token would
    # turn its neighbours' outputs into NaN. Only then (any NaN makes the sum NaN), recompute window by
    # window.
    if torch.isnan(out.sum()):
        _forward_strided(input, weight, l, d, runs, out)
    return out


def _grad_weight_gemm(grad: torch.Tensor, input: torch.Tensor, l: int, d: int, runs) -> torch.Tensor:
    """``gw[j, n] = Σ_i <g[i, n, :], x[s + i*d + j, n, :]>`` as ``[N, l]``.

    Per chunk and head, one ``bmm`` of the overlapping token tiles with the tile's gradient rows
    (``[span, D] @ [D, tile]``, both strided views of token-major chunks); the band
    ``token = i*d + j`` of each product holds window i's terms.
    """
    T, N, D = input.shape
    acc = accumulation_dtype(input.dtype)
    tile = max(_TILE, -(-(l - d) // d))
    span = (tile - 1) * d + l
    windows = max(count for _, _, count in runs)
    tiles = max(1, min(_CHUNK_BYTES // (tile * d * N * D * 4), -(-windows // tile)))
    need = (tiles - 1) * tile * d + span
    x_reader, g_reader = _ChunkReader(input, need, acc), _ChunkReader(grad, tiles * tile, acc)
    products = torch.empty((N, tiles, span, tile), dtype=acc, device=input.device)
    # products[n, p, i*d + j, i] is window (p, i)'s term for offset j
    band = products.as_strided((N, tiles, tile, l), (tiles * span * tile, span * tile, d * tile + 1, tile))
    gw = torch.zeros((N, l), dtype=acc, device=input.device)
    for first_token, first_row, count in runs:
        for t0, r0, n in _tiles(first_token, first_row, count, d, tiles * tile):
            # columns and tokens past the sequence's last window are computed but never summed
            x = x_reader.read(t0, (n - 1) * d + l)
            g = g_reader.read(r0, n)
            for h in range(N):
                x_h = x[:, h].as_strided((tiles, span, D), (tile * d * N * D, N * D, 1))
                g_h = g[:, h].as_strided((tiles, D, tile), (tile * N * D, 1, N * D))
                torch.bmm(x_h, g_h, out=products[h])
            full, rest = divmod(n, tile)
            gw += band[:, :full].sum((1, 2))
            if rest:
                gw += band[:, full, :rest].sum(1)
    return gw


def _grad_weight_strided(grad: torch.Tensor, input: torch.Tensor, l: int, d: int, runs) -> torch.Tensor:
    """Small problems: one product and sum per window offset ``j``, as ``[N, l]``."""
    T, N, D = input.shape
    acc = accumulation_dtype(input.dtype)
    gw = torch.zeros((l, N), dtype=acc, device=input.device)
    for first_token, first_row, count in runs:
        span = (count - 1) * d + 1
        g = grad[first_row : first_row + count].to(acc)
        x = input[first_token : first_token + span + l - 1].to(acc)
        for j in range(l):
            gw[j] += (g * x[j : j + span : d]).sum((0, 2))
    return gw.t()


def _grad_input_blocks(grad, weight, l, d, runs, grad_input) -> None:
    """``l % d == 0``: ``gi_blocks[i + m] += w[m*d:(m+1)*d] * g[i]`` for the ``k = l/d`` block offsets m."""
    T, N, D = grad_input.shape
    k = l // d
    acc = accumulation_dtype(grad_input.dtype)
    w = weight.to(acc).view(k, d, N, 1)
    direct = grad_input.dtype == acc
    tile = max(1, _CHUNK_BYTES // (d * N * D * 4))  # blocks per tile
    buf = None if direct else torch.empty((tile, d, N, D), dtype=acc, device=grad_input.device)
    g_buf = None if direct else torch.empty((tile + k - 1, N, D), dtype=acc, device=grad_input.device)
    for first_token, first_row, count in runs:
        blocks = grad_input[first_token : first_token + (count + k - 1) * d].view(count + k - 1, d, N, D)
        for b0 in range(0, count + k - 1, tile):
            b1 = min(count + k - 1, b0 + tile)
            dst = blocks[b0:b1] if direct else buf[: b1 - b0]
            # windows feeding blocks [b0, b1): i in [b0 - k + 1, b1), clipped to the sequence
            i0, i1 = max(0, b0 - k + 1), min(count, b1)
            g = grad[first_row + i0 : first_row + i1]
            if g.dtype != acc:
                g = g_buf[: i1 - i0].copy_(g)
            for m in range(k):
                lo, hi = max(b0, i0 + m), min(b1, i1 + m)
                if m == 0 and (lo, hi) == (b0, b1):
                    torch.mul(g[lo - i0 : hi - i0, None], w[0], out=dst)  # covers the whole tile: no zero pass
                    continue
                if m == 0:
                    dst.zero_()
                if hi > lo:
                    dst[lo - b0 : hi - b0].addcmul_(g[lo - m - i0 : hi - m - i0, None], w[m])
            if not direct:
                blocks[b0:b1].copy_(dst)


def _grad_input_strided(grad, weight, l, d, runs, grad_input_acc) -> None:
    T, N, D = grad_input_acc.shape
    acc = grad_input_acc.dtype
    w = weight.to(acc).unsqueeze(-1)
    tile = max(1, _STRIDED_TILE_BYTES // (N * D * 4))
    for first_token, first_row, count in runs:
        for t0, r0, n in _tiles(first_token, first_row, count, d, tile):
            span = (n - 1) * d + 1
            g = grad[r0 : r0 + n].to(acc)
            dst = grad_input_acc[t0 : t0 + span + l - 1]
            for j in range(l):
                dst[j : j + span : d].addcmul_(g, w[j])


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
    runs = _window_runs(T, l, d, actual_seq_len)
    if not runs or N * D == 0:
        return (torch.zeros_like(input, memory_format=torch.contiguous_format),
                torch.zeros((l, N), dtype=weight.dtype, device=input.device))
    if l % d == 0:
        grad_input = torch.empty((T, N, D), dtype=input.dtype, device=input.device)
        # every covered token is written; zero only what no window covers
        covered_end = 0
        for first_token, _, count in runs:
            grad_input[covered_end:first_token].zero_()
            covered_end = first_token + (count - 1) * d + l
        grad_input[covered_end:].zero_()
        _grad_input_blocks(grad, weight, l, d, runs, grad_input)
    else:
        grad_input = torch.zeros((T, N, D), dtype=acc, device=input.device)
        _grad_input_strided(grad, weight, l, d, runs, grad_input)
        grad_input = grad_input.to(input.dtype)
    small = grad.shape[0] * N * D <= _SMALL
    grad_weight = (_grad_weight_strided if small else _grad_weight_gemm)(grad, input, l, d, runs)
    return grad_input, grad_weight.t().to(weight.dtype).contiguous()
