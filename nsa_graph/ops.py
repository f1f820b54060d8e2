"""The ``nsa_graph::nsa_compress`` / ``nsa_graph::nsa_compress_grad`` custom ops: kernels, fake impls, autograd.

``actual_seq_len`` is ``SymInt[]?`` (torch_npu's own schema has ``int[]?``, which would burn every list
value into a compiled graph): with ``dynamic=True`` one graph serves every list of the same length.

Dispatch: NPU tensors go to ``torch_npu.npu_nsa_compress{,_grad}`` (torch_npu is necessarily imported
once an NPU tensor exists, so nothing here imports it eagerly); every other device runs the strided
kernels of :mod:`nsa_graph.kernels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch

from . import kernels
from .contract import NsaCompressError, _show, check_compress_args, npu_unsupported_reason, output_rows

_FORWARD_SCHEMA = (
    "(Tensor input, Tensor weight, int compress_block_size, int compress_stride, "
    "*, SymInt[]? actual_seq_len=None) -> Tensor"
)
_GRAD_SCHEMA = (
    "(Tensor grad, Tensor input, Tensor weight, int compress_block_size, int compress_stride, "
    "*, SymInt[]? actual_seq_len=None) -> (Tensor, Tensor)"
)


def _check_npu_domain(input: torch.Tensor, weight: torch.Tensor, l: int, d: int, op: str) -> None:
    if input.device.type == "npu":
        reason = npu_unsupported_reason(input, weight, l, d)
        if reason is not None:
            raise NsaCompressError(f"{op}: outside the NPU kernel's domain: {reason}")


def _check_grad(grad: torch.Tensor, input: torch.Tensor, l: int, d: int, seq) -> None:
    T, N, D = input.shape
    expected = (output_rows(T, l, d, seq), N, D)
    if grad.dtype != input.dtype:
        raise NsaCompressError(
            f"nsa_compress_grad: grad.dtype={grad.dtype} must equal input.dtype={input.dtype}"
        )
    if grad.dim() != 3:
        raise NsaCompressError(f"nsa_compress_grad: grad must be 3-D [W, N, D], got shape {tuple(grad.shape)}")
    for axis, (got, want) in enumerate(zip(grad.shape, expected)):
        torch._check_with(NsaCompressError, got == want, lambda axis=axis, got=got, want=want: (
            f"nsa_compress_grad: grad.shape[{axis}]={_show(got)} must be {_show(want)} "
            f"(grad has the forward output's shape {tuple(expected)})"))


def _npu_seq(input: torch.Tensor, seq: Optional[Sequence[int]]) -> list[int]:
    # torch_npu requires an explicit list; None means one sequence of length T.
    return [int(input.shape[0])] if seq is None else [int(s) for s in seq]


def _torch_npu():
    import torch_npu  # an NPU tensor exists, so torch_npu is already imported

    return torch_npu


# --- forward ----------------------------------------------------------------------------------------


@torch.library.custom_op("nsa_graph::nsa_compress", mutates_args=(), schema=_FORWARD_SCHEMA)
def _nsa_compress(
    input: torch.Tensor,
    weight: torch.Tensor,
    compress_block_size: int,
    compress_stride: int,
    *,
    actual_seq_len: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    check_compress_args(input, weight, compress_block_size, compress_stride, actual_seq_len)
    if input.device.type == "npu":
        _check_npu_domain(input, weight, compress_block_size, compress_stride, "nsa_compress")
        return _torch_npu().npu_nsa_compress(
            input, weight, compress_block_size, compress_stride, actual_seq_len=_npu_seq(input, actual_seq_len)
        )
    return kernels.compress_forward(input, weight, compress_block_size, compress_stride, actual_seq_len)


@_nsa_compress.register_fake
def _nsa_compress_fake(input, weight, compress_block_size, compress_stride, *, actual_seq_len=None):
    check_compress_args(input, weight, compress_block_size, compress_stride, actual_seq_len)
    _check_npu_domain(input, weight, compress_block_size, compress_stride, "nsa_compress")
    T, N, D = input.shape
    rows = output_rows(T, compress_block_size, compress_stride, actual_seq_len)
    return input.new_empty((rows, N, D))  # contiguous, like the kernels (never empty_like)


# --- gradient -------------------------------------------------------------------------------------


@torch.library.custom_op("nsa_graph::nsa_compress_grad", mutates_args=(), schema=_GRAD_SCHEMA)
def _nsa_compress_grad(
    grad: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    compress_block_size: int,
    compress_stride: int,
    *,
    actual_seq_len: Optional[Sequence[int]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_compress_args(input, weight, compress_block_size, compress_stride, actual_seq_len, op="nsa_compress_grad")
    _check_grad(grad, input, compress_block_size, compress_stride, actual_seq_len)
    if input.device.type == "npu":
        _check_npu_domain(input, weight, compress_block_size, compress_stride, "nsa_compress_grad")
        return _torch_npu().npu_nsa_compress_grad(
            grad, input, weight, compress_block_size, compress_stride,
            actual_seq_len=_npu_seq(input, actual_seq_len),
        )
    return kernels.compress_backward(grad, input, weight, compress_block_size, compress_stride, actual_seq_len)


@_nsa_compress_grad.register_fake
def _nsa_compress_grad_fake(grad, input, weight, compress_block_size, compress_stride, *, actual_seq_len=None):
    check_compress_args(input, weight, compress_block_size, compress_stride, actual_seq_len, op="nsa_compress_grad")
    _check_grad(grad, input, compress_block_size, compress_stride, actual_seq_len)
    _check_npu_domain(input, weight, compress_block_size, compress_stride, "nsa_compress_grad")
    return input.new_empty(input.shape), weight.new_empty(weight.shape)


# --- autograd -------------------------------------------------------------------------------------


def _setup_context(ctx, inputs, keyword_only_inputs, output):
    input, weight, l, d = inputs
    ctx.save_for_backward(input, weight)  # never the windows, never the output
    ctx.block, ctx.stride = l, d
    ctx.actual_seq_len = keyword_only_inputs.get("actual_seq_len")


def _backward(ctx, grad):
    input, weight = ctx.saved_tensors
    grad_input, grad_weight = torch.ops.nsa_graph.nsa_compress_grad(
        grad.contiguous(), input, weight, ctx.block, ctx.stride, actual_seq_len=ctx.actual_seq_len
    )
    need_input, need_weight = ctx.needs_input_grad[:2]
    return (grad_input if need_input else None, grad_weight if need_weight else None, None, None, None)


_nsa_compress.register_autograd(_backward, setup_context=_setup_context)


def _setup_grad_context(ctx, inputs, keyword_only_inputs, output):
    grad, input, weight, l, d = inputs
    ctx.save_for_backward(grad, input, weight)
    ctx.block, ctx.stride = l, d
    ctx.actual_seq_len = keyword_only_inputs.get("actual_seq_len")


def _grad_backward(ctx, grad_grad_input, grad_grad_weight):
    """Double backward. The gradient is bilinear, so its derivatives are the two ops again:

    grad_input  = G_x(grad, weight)   ->  d/dgrad = nsa_compress(ggi, weight),  d/dweight = G_w(grad, ggi)
    grad_weight = G_w(grad, input)    ->  d/dgrad = nsa_compress(input, ggw),   d/dinput  = G_x(grad, ggw)
    """
    grad, input, weight = ctx.saved_tensors
    l, d, seq = ctx.block, ctx.stride, ctx.actual_seq_len
    need_grad, need_input, need_weight = ctx.needs_input_grad[:3]
    d_grad = d_input = d_weight = None
    if grad_grad_input is not None:
        if need_grad:
            d_grad = torch.ops.nsa_graph.nsa_compress(grad_grad_input, weight, l, d, actual_seq_len=seq)
        if need_weight:
            d_weight = torch.ops.nsa_graph.nsa_compress_grad(grad, grad_grad_input, weight, l, d, actual_seq_len=seq)[1]
    if grad_grad_weight is not None:
        if need_grad:
            extra = torch.ops.nsa_graph.nsa_compress(input, grad_grad_weight, l, d, actual_seq_len=seq)
            d_grad = extra if d_grad is None else d_grad + extra
        if need_input:
            d_input = torch.ops.nsa_graph.nsa_compress_grad(grad, input, grad_grad_weight, l, d, actual_seq_len=seq)[0]
    return d_grad, d_input, d_weight, None, None


_nsa_compress_grad.register_autograd(_grad_backward, setup_context=_setup_grad_context)


# --- public API -------------------------------------------------------------------------------------


def nsa_compress(
    input: torch.Tensor,
    weight: torch.Tensor,
    compress_block_size: int,
    compress_stride: int,
    *,
    actual_seq_len: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Compress a TND key/value sequence: one weighted-sum token per window (``torch_npu.npu_nsa_compress``).

    Same signature and semantics as ``torch_npu.npu_nsa_compress``, so code can switch with one import;
    it runs on every device and traces under ``torch.compile``.

    Args:
        input: ``[T, N, D]`` tokens (layout TND), fp16/bf16/fp32/fp64 (fp16/bf16 only on NPU).
        weight: ``[compress_block_size, N]`` per-head weights, same dtype as ``input``.
        compress_block_size: window length ``l`` (> 0; on NPU a multiple of 16, <= 128).
        compress_stride: distance ``d`` between window starts (> 0; on NPU a multiple of 16, <= l).
        actual_seq_len: prefix sums of the sequence lengths, last value == T; ``None`` = one sequence.
            A sequence shorter than ``l`` gives no rows; windows never cross sequence boundaries.

    Returns:
        ``[W, N, D]`` with ``W = Σ_b max(0, (S_b - l) // d + 1)``, rows batch-major, windows in order;
        ``out[r, n, :] = Σ_j weight[j, n] * input[start_b + i*d + j, n, :]`` accumulated in fp32.

    Raises:
        NsaCompressError: (a ``ValueError``) naming the argument, its value and the rule it breaks.
    """
    if not torch.compiler.is_compiling():
        # friendlier than the dispatcher's schema errors; under torch.compile the fake impl checks instead
        check_compress_args(input, weight, compress_block_size, compress_stride, actual_seq_len)
    if actual_seq_len is not None:
        actual_seq_len = list(actual_seq_len)
    return torch.ops.nsa_graph.nsa_compress(
        input, weight, compress_block_size, compress_stride, actual_seq_len=actual_seq_len
    )


def nsa_compress_grad(
    grad: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    compress_block_size: int,
    compress_stride: int,
    *,
    actual_seq_len: Optional[Sequence[int]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_input, grad_weight)`` of :func:`nsa_compress` (``torch_npu.npu_nsa_compress_grad``)."""
    if not torch.compiler.is_compiling():
        check_compress_args(input, weight, compress_block_size, compress_stride, actual_seq_len, op="nsa_compress_grad")
    if actual_seq_len is not None:
        actual_seq_len = list(actual_seq_len)
    return torch.ops.nsa_graph.nsa_compress_grad(
        grad, input, weight, compress_block_size, compress_stride, actual_seq_len=actual_seq_len
    )
