"""GE ``NsaCompress`` from ``nsa_graph::nsa_compress`` and from torch_npu's ``npu::npu_nsa_compress``.

Both ops have the torch_npu signature, so one lowering serves both::

    out = nsa_graph.nsa_compress(kv, w, 32, 16, actual_seq_len=[40, 104])   # or torch_npu.npu_nsa_compress
    # -> NsaCompress(input=kv, weight=w, actSeqLenOptional=Const([40, 104]);
    #                layoutOptional="TND", compressBlockSize=32, compressStride=16, actSeqLenType=0)
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torchair._ge_concrete_graph.fx2ge_converter import declare_supported, register_fx_node_ge_converter
from torchair._ge_concrete_graph.supported_declaration import BF16, F16, Support
from torchair.ge import Tensor, custom_op

from nsa_graph.contract import NsaCompressError, check_compress_args, output_rows

from ._common import check_npu_domain, compress_attrs, lower_torch_npu_op, seq_len_input

SUPPORTED = [
    Support(BF16(64, 4, 128), BF16(32, 4), 32, 16),
    Support(F16(64, 4, 128), F16(32, 4), 32, 16, actual_seq_len=[64]),
    Support(BF16(144, 8, 64), BF16(64, 8), 64, 16, actual_seq_len=[40, 40, 144]),
    Support(F16(96, 2, 256), F16(16, 2), 16, 16, actual_seq_len=[0, 50, 96]),
]


def nsa_compress_node(input: Tensor, weight: Tensor, block: int, stride: int, seq: Tensor) -> Tensor:
    """One ``NsaCompress`` node: inputs in the IR's order (GE matches attributes by name)."""
    return custom_op(
        "NsaCompress",
        inputs={"input": input, "weight": weight, "actSeqLenOptional": seq},
        attrs=compress_attrs(block, stride),
        outputs=["output"],
    )


def convert_nsa_compress(
    input: Tensor,
    weight: Tensor,
    compress_block_size: int,
    compress_stride: int,
    actual_seq_len: Union[None, Sequence[int], Tensor] = None,
    meta_outputs=None,
) -> Tensor:
    check_npu_domain(input, weight, compress_block_size, compress_stride, "NsaCompress")
    return nsa_compress_node(input, weight, compress_block_size, compress_stride,
                             seq_len_input(input, actual_seq_len))


declare_supported(SUPPORTED)(register_fx_node_ge_converter(torch.ops.nsa_graph.nsa_compress.default)(
    convert_nsa_compress))


def _npu_nsa_compress_fake(input, weight, compress_block_size, compress_stride, *, actual_seq_len=None):
    # torch_npu's kernel needs the list (it calls actual_seq_len.value()); say so at trace time
    if actual_seq_len is None:
        raise NsaCompressError("npu_nsa_compress: actual_seq_len=None is rejected by torch_npu; pass the prefix "
                               "sums, e.g. [T] for one sequence")
    check_compress_args(input, weight, compress_block_size, compress_stride, actual_seq_len, op="npu_nsa_compress")
    T, N, D = input.shape
    return input.new_empty((output_rows(T, compress_block_size, compress_stride, actual_seq_len), N, D))


def register_torch_npu() -> Optional[torch._ops.OpOverload]:
    """Lower ``torch.ops.npu.npu_nsa_compress`` too, and give it a fake impl if it has none; the op or None."""
    return lower_torch_npu_op("npu_nsa_compress", _npu_nsa_compress_fake, convert_nsa_compress, SUPPORTED)
