"""GE ``NsaCompressGrad`` from ``nsa_graph::nsa_compress_grad`` and torch_npu's ``npu::npu_nsa_compress_grad``.

The backward of :func:`nsa_graph.nsa_compress` is one ``nsa_compress_grad`` call, so a training graph gets::

    grad_kv, grad_w = nsa_graph.nsa_compress_grad(g, kv, w, 32, 16)
    # -> NsaCompressGrad(outputGrad=g, input=kv, weight=w, actSeqLenOptional=Const([T]);
    #                    compressBlockSize=32, compressStride=16, actSeqLenType=0, layoutOptional="TND")
    #    outputs inputGrad, weightGrad

The IR lists its attributes in a different order from the forward's (layout last); that order matters only to
the positional form of ``custom_op``, which these converters do not use.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torchair._ge_concrete_graph.fx2ge_converter import declare_supported, register_fx_node_ge_converter
from torchair._ge_concrete_graph.supported_declaration import BF16, F16, Support
from torchair.ge import Tensor, custom_op

from nsa_graph.contract import NsaCompressError, check_compress_args

from ._common import check_npu_domain, compress_attrs, lower_torch_npu_op, seq_len_input

SUPPORTED = [
    Support(BF16(3, 4, 128), BF16(64, 4, 128), BF16(32, 4), 32, 16),
    Support(F16(3, 4, 128), F16(64, 4, 128), F16(32, 4), 32, 16, actual_seq_len=[64]),
    Support(BF16(3, 8, 64), BF16(144, 8, 64), BF16(64, 8), 64, 16, actual_seq_len=[40, 40, 144]),
]


def nsa_compress_grad_node(grad: Tensor, input: Tensor, weight: Tensor, block: int, stride: int,
                           seq: Tensor) -> tuple[Tensor, Tensor]:
    """One ``NsaCompressGrad`` node: inputs in the IR's order (GE matches attributes by name)."""
    input_grad, weight_grad = custom_op(
        "NsaCompressGrad",
        inputs={"outputGrad": grad, "input": input, "weight": weight, "actSeqLenOptional": seq},
        attrs=compress_attrs(block, stride),
        outputs=["inputGrad", "weightGrad"],
    )
    return input_grad, weight_grad


def convert_nsa_compress_grad(
    grad: Tensor,
    input: Tensor,
    weight: Tensor,
    compress_block_size: int,
    compress_stride: int,
    actual_seq_len: Union[None, Sequence[int], Tensor] = None,
    meta_outputs=None,
) -> tuple[Tensor, Tensor]:
    check_npu_domain(input, weight, compress_block_size, compress_stride, "NsaCompressGrad")
    return nsa_compress_grad_node(grad, input, weight, compress_block_size, compress_stride,
                                  seq_len_input(input, actual_seq_len))


declare_supported(SUPPORTED)(register_fx_node_ge_converter(torch.ops.nsa_graph.nsa_compress_grad.default)(
    convert_nsa_compress_grad))


def _npu_nsa_compress_grad_fake(grad, input, weight, compress_block_size, compress_stride, *,
                                actual_seq_len=None):
    if actual_seq_len is None:
        raise NsaCompressError("npu_nsa_compress_grad: actual_seq_len=None is rejected by torch_npu; pass the "
                               "prefix sums, e.g. [T] for one sequence")
    check_compress_args(input, weight, compress_block_size, compress_stride, actual_seq_len,
                        op="npu_nsa_compress_grad")
    return input.new_empty(input.shape), weight.new_empty(weight.shape)


def register_torch_npu() -> Optional[torch._ops.OpOverload]:
    """Lower ``torch.ops.npu.npu_nsa_compress_grad`` too, with a fake impl if it has none; the op or None."""
    return lower_torch_npu_op("npu_nsa_compress_grad", _npu_nsa_compress_grad_fake, convert_nsa_compress_grad,
                              SUPPORTED)
