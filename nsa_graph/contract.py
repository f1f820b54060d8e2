"""The NsaCompress contract: argument rules, window arithmetic and the NPU kernel's domain.

Everything here works on real tensors, FakeTensors and SymInts alike, so the eager kernels, the fake
impls (trace time) and the fusion pass share one definition of "valid" and one window count.

Layout TND: ``input [T, N, D]``, ``weight [compress_block_size, N]``. ``actual_seq_len`` holds prefix sums
of the sequence lengths without a leading 0 (a leading 0 is an empty first sequence); ``None`` means one
sequence of length T. Sequence b spans ``[a[b-1], a[b])`` and yields ``(S_b - l) // d + 1`` windows when
``S_b >= l``, else none; windows never cross a sequence boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional, Union

import torch

IntLike = Union[int, torch.SymInt]

#: dtypes the CPU (generic) kernels accept
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: dtypes the Ascend kernel accepts
NPU_DTYPES = (torch.float16, torch.bfloat16)


class NsaCompressError(ValueError):
    """An argument violates the NsaCompress contract. The message names the argument, value and rule."""


def _require(cond: Union[bool, torch.SymBool], message: Callable[[], str]) -> None:
    # torch._check_with decides SymBools without failing the trace: statically known results are used
    # directly, backed symbols get a guard, unbacked ones a runtime assert.
    torch._check_with(NsaCompressError, cond, message)


def _show(value: object) -> str:
    """A value for an error message; a symbolic size shows its current value and its symbol."""
    if isinstance(value, torch.SymInt):
        expr, hint = value.node.expr, getattr(value.node, "hint", None)
        return f"{hint} ({expr})" if hint is not None else str(expr)
    return str(value)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_compress_args(
    input: torch.Tensor,
    weight: torch.Tensor,
    compress_block_size: int,
    compress_stride: int,
    actual_seq_len: Optional[Sequence[IntLike]],
    *,
    op: str = "nsa_compress",
) -> None:
    """Raise :class:`NsaCompressError` if the arguments break the contract (any device)."""
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise NsaCompressError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise NsaCompressError(
                f"{op}: {name}.dtype={_dtype_name(t.dtype)} is not supported; "
                f"expected one of {', '.join(map(_dtype_name, SUPPORTED_DTYPES))}"
            )
    if weight.dtype != input.dtype:
        raise NsaCompressError(
            f"{op}: weight.dtype={_dtype_name(weight.dtype)} must equal "
            f"input.dtype={_dtype_name(input.dtype)}"
        )
    if input.dim() != 3:
        raise NsaCompressError(
            f"{op}: input must be 3-D [T, N, D] (layout TND), got shape {tuple(input.shape)}"
        )
    if weight.dim() != 2:
        raise NsaCompressError(
            f"{op}: weight must be 2-D [compress_block_size, N], got shape {tuple(weight.shape)}"
        )
    for name, value in (("compress_block_size", compress_block_size), ("compress_stride", compress_stride)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise NsaCompressError(f"{op}: {name} must be an int, got {value!r}")
        if value <= 0:
            raise NsaCompressError(f"{op}: {name}={value} must be positive")
    T, N, D = input.shape
    for name, size in (("T", T), ("N", N), ("D", D)):
        _require(size > 0, lambda name=name, size=size: (
            f"{op}: input is empty (shape {tuple(input.shape)}); {name} must be > 0"))
    _require(weight.shape[0] == compress_block_size, lambda: (
        f"{op}: weight.shape[0]={_show(weight.shape[0])} must equal compress_block_size={compress_block_size} "
        f"(weight is [compress_block_size, N])"))
    _require(weight.shape[1] == N, lambda: (
        f"{op}: weight.shape[1]={_show(weight.shape[1])} must equal the number of heads N=input.shape[1]={_show(N)}"))
    if actual_seq_len is not None:
        check_actual_seq_len(actual_seq_len, T, op=op)


def check_actual_seq_len(actual_seq_len: Sequence[IntLike], T: IntLike, *, op: str = "nsa_compress") -> None:
    """Prefix sums: non-empty, every value >= 0, non-decreasing, last value equal to T."""
    if isinstance(actual_seq_len, torch.Tensor) or not isinstance(actual_seq_len, (list, tuple)):
        raise NsaCompressError(
            f"{op}: actual_seq_len must be a list of ints (prefix sums), got {type(actual_seq_len).__name__}"
        )
    if len(actual_seq_len) == 0:
        raise NsaCompressError(
            f"{op}: actual_seq_len=[] is empty; pass None for one sequence of length T, "
            "or the prefix sums of the sequence lengths"
        )
    prev: IntLike = 0
    for i, value in enumerate(actual_seq_len):
        if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
            raise NsaCompressError(f"{op}: actual_seq_len[{i}]={value!r} must be an int")
        if i == 0:
            _require(value >= 0, lambda: f"{op}: actual_seq_len[0]={_show(value)} must be >= 0")
        else:
            _require(value >= prev, lambda i=i, value=value, prev=prev: (
                f"{op}: actual_seq_len must be non-decreasing (prefix sums), but "
                f"actual_seq_len[{i}]={_show(value)} < actual_seq_len[{i - 1}]={_show(prev)}"))
        prev = value
    _require(prev == T, lambda: (
        f"{op}: actual_seq_len[-1]={_show(prev)} must equal T=input.shape[0]={_show(T)} "
        "(the last prefix sum is the total token count)"))


def windows_in(seq_len: IntLike, block: int, stride: int) -> IntLike:
    """Number of full windows in one sequence: ``max(0, (S - l) // d + 1)``, SymInt-safe."""
    # sym_max, never Python max: a Python comparison on a SymInt would install a guard (or fail for
    # unbacked lengths from .tolist()).
    return torch.sym_max(0, (seq_len - block) // stride + 1)


def sequence_spans(T: IntLike, actual_seq_len: Optional[Sequence[IntLike]]) -> list[tuple[IntLike, IntLike]]:
    """``[(start, end)]`` of every sequence, in order."""
    if actual_seq_len is None:
        return [(0, T)]
    spans, start = [], 0
    for end in actual_seq_len:
        spans.append((start, end))
        start = end
    return spans


def output_rows(T: IntLike, block: int, stride: int, actual_seq_len: Optional[Sequence[IntLike]]) -> IntLike:
    """Total window count W = Σ_b windows_in(S_b): the first dimension of the output."""
    rows: IntLike = 0
    for start, end in sequence_spans(T, actual_seq_len):
        rows = rows + windows_in(end - start, block, stride)
    return rows


# --- the Ascend kernel's own domain -------------------------------------------------------------------

NPU_MAX_HEADS = 128
NPU_MAX_HEAD_DIM = 256
NPU_MAX_BLOCK = 128
NPU_ALIGN = 16
NPU_MAX_ELEMENTS = 2**32 - 1  # the kernel counts T*N*D in uint32


def _static(value: IntLike) -> Optional[int]:
    """The int value if it is known without a guard, else None."""
    if isinstance(value, int):
        return value
    return value.node.maybe_as_int() if hasattr(value, "node") else None


def npu_unsupported_reason(
    input: torch.Tensor,
    weight: torch.Tensor,
    compress_block_size: int,
    compress_stride: int,
) -> Optional[str]:
    """Why this case is outside the Ascend NsaCompress kernel's domain, or ``None`` if it is inside.

    Works without an NPU (real, fake or meta tensors). The rules are the documented ones of
    aclnnNsaCompress: fp16/bf16, ``compress_block_size`` and ``compress_stride`` multiples of 16 with
    ``stride <= block <= 128``, N <= 128, D a multiple of 16 and <= 256, ``T*N*D`` < 2**32. A size that is
    symbolic (dynamic) and not provably inside the domain counts as outside: nothing here installs guards.
    A dynamic T is the exception (it is the usual dynamic dimension): its element-count rule is enforced
    when the NPU kernel runs. The general contract (:func:`check_compress_args`) must hold as well.
    """
    l, d = compress_block_size, compress_stride
    if input.dtype not in NPU_DTYPES:
        return f"dtype {_dtype_name(input.dtype)} is not fp16/bf16 (the NPU kernel supports only those)"
    if l % NPU_ALIGN or d % NPU_ALIGN:
        return f"compress_block_size={l} and compress_stride={d} must both be multiples of {NPU_ALIGN}"
    if d > l:
        return f"compress_stride={d} must be <= compress_block_size={l}"
    if l > NPU_MAX_BLOCK:
        return f"compress_block_size={l} must be <= {NPU_MAX_BLOCK}"
    if input.dim() != 3:
        return f"input must be 3-D [T, N, D], got {input.dim()}-D"
    T, N, D = input.shape
    n, dim = _static(N), _static(D)
    if n is None:
        return f"number of heads N={N} is dynamic; the NPU kernel needs N <= {NPU_MAX_HEADS} proven"
    if dim is None:
        return f"head dim D={D} is dynamic; the NPU kernel needs D % {NPU_ALIGN} == 0 and D <= {NPU_MAX_HEAD_DIM}"
    if n > NPU_MAX_HEADS:
        return f"N={n} heads exceeds the NPU kernel's maximum of {NPU_MAX_HEADS}"
    if dim % NPU_ALIGN or dim > NPU_MAX_HEAD_DIM:
        return f"head dim D={dim} must be a multiple of {NPU_ALIGN} and <= {NPU_MAX_HEAD_DIM}"
    t = _static(T)
    if t is not None and t * n * dim > NPU_MAX_ELEMENTS:
        return f"T*N*D={t * n * dim} exceeds the NPU kernel's uint32 element count"
    if weight.dtype != input.dtype:
        return f"weight dtype {_dtype_name(weight.dtype)} differs from input dtype {_dtype_name(input.dtype)}"
    return None
