"""Pieces shared by the NsaCompress converters: the ``actSeqLenOptional`` input and torch_npu op lookup."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
from torchair._ge_concrete_graph import ge_apis as ge
from torchair._ge_concrete_graph import ge_ir_pb2
from torchair._ge_concrete_graph.fx2ge_converter import declare_supported, register_fx_node_ge_converter
from torchair.ge import Const, DataType, Tensor, attr

from nsa_graph.contract import NPU_DTYPES, NsaCompressError, npu_unsupported_reason

LAYOUT = "TND"  # the only layout torch_npu passes (and the kernel accepts)
ACT_SEQ_LEN_TYPE = 0  # prefix sums; the only value the forward and grad kernels accept


def seq_len_input(input: Tensor, actual_seq_len: Union[None, Sequence[int], Tensor]) -> Tensor:
    """The int64 ``actSeqLenOptional`` tensor for ``actual_seq_len`` as torchair passes it to a converter.

    - a list of ints: a host ``Const`` (GE's InferShape reads its value, so the output shape stays static);
    - a ``ge.Tensor``: the ``Pack`` torchair builds when the list holds SymInts, used as-is (int64);
    - ``None`` (one sequence of length T): ``Const([T])``, or ``Gather(Shape(input), [0])`` when T is dynamic.
    The kernel always reads this input (it has no "absent" path), so it is always fed.
    """
    if isinstance(actual_seq_len, Tensor):
        if _is_int64(actual_seq_len):
            return actual_seq_len
        return ge.Cast(actual_seq_len, dst_type=DataType.DT_INT64)
    if actual_seq_len is not None:
        values = list(actual_seq_len)
        if not all(isinstance(v, int) for v in values):
            raise TypeError(f"actual_seq_len={values!r}: expected ints or a packed ge.Tensor")
        return Const(values, dtype=DataType.DT_INT64)
    tokens = _static_dim0(input)
    if tokens is not None:
        return Const([tokens], dtype=DataType.DT_INT64)
    shape = ge.Shape(input, dtype=DataType.DT_INT64)
    return ge.Gather(shape, Const([0], dtype=DataType.DT_INT64))


def _is_int64(tensor: Tensor) -> bool:
    # torchair sets .dtype from the FX meta; a tensor built directly carries it only in its descriptor
    return tensor.dtype == DataType.DT_INT64 or tensor.desc.dtype == ge_ir_pb2.DataType.Value("DT_INT64")


def _static_dim0(input: Tensor) -> Optional[int]:
    sizes = input.symsize
    if sizes is not None:
        t = sizes[0]
        return t if isinstance(t, int) else t.node.maybe_as_int()  # a SymInt may still be a constant
    dims = list(input.desc.shape.dim)  # a GE tensor built by hand: -1 marks a dynamic dim
    return dims[0] if dims and dims[0] >= 0 else None


def check_npu_domain(input: Tensor, weight: Tensor, block: int, stride: int, op_type: str) -> None:
    """Refuse, when the graph is built, a lowering the NPU kernel would reject (fp32, unaligned l/d, D > 256...).

    Uses the FX meta torchair attaches to each GE tensor. With a dynamic N or D only the dtypes can be
    checked here; the kernel checks the sizes once they are known.
    """
    x, w = input.meta, weight.meta
    if not (isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor)):
        return  # a GE tensor built by hand: there is no torch meta to check
    heads_and_dim = list(x.shape[1:]) if x.dim() == 3 else []
    if any(isinstance(s, torch.SymInt) and s.node.maybe_as_int() is None for s in heads_and_dim):
        reason = None
        if x.dtype not in NPU_DTYPES or w.dtype != x.dtype:
            reason = f"input/weight dtypes {x.dtype}/{w.dtype}: the NPU kernel takes fp16 or bf16, the same for both"
    else:
        reason = npu_unsupported_reason(x, w, block, stride)
    if reason is not None:
        raise NsaCompressError(f"cannot lower to GE {op_type}: outside the NPU kernel's domain: {reason}")


def compress_attrs(block: int, stride: int) -> dict[str, Any]:
    """The attributes NsaCompress and NsaCompressGrad share (GE matches attributes by name)."""
    return {
        "compressBlockSize": attr.Int(block),
        "compressStride": attr.Int(stride),
        "actSeqLenType": attr.Int(ACT_SEQ_LEN_TYPE),
        "layoutOptional": attr.Str(LAYOUT),
    }


def lower_torch_npu_op(name: str, fake: Callable, converter: Callable, supported: list) -> Optional[torch._ops.OpOverload]:
    """Lower ``torch.ops.npu.<name>`` with ``converter`` too, giving it ``fake`` if torch_npu has no fake impl.

    Returns the op, or None when torch_npu (or anything else) has not defined it.
    """
    op = torch_npu_op(name)
    if op is None:
        return None
    if not has_fake_impl(op):
        torch.library.register_fake(op._schema.name, fake)
    declare_supported(supported)(register_fx_node_ge_converter(op)(converter))
    return op


def torch_npu_op(name: str) -> Optional[torch._ops.OpOverload]:
    """``torch.ops.npu.<name>.default`` if torch_npu (or anything else) defined it, else None."""
    try:
        return getattr(torch.ops.npu, name).default
    except (AttributeError, RuntimeError):
        return None


def has_fake_impl(op: torch._ops.OpOverload) -> bool:
    """Whether tracing ``op`` with FakeTensors already works (a Meta kernel or a registered fake impl)."""
    name = op._schema.name
    if torch._C._dispatch_has_kernel_for_dispatch_key(name, "Meta"):
        return True
    if torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeImplicitAutograd"):
        return True
    entry = torch._library.simple_registry.singleton.find(name)
    return entry.fake_impl.kernel is not None
