"""nsa_graph: Native Sparse Attention KV compression (Ascend NsaCompress) as a graph-mode PyTorch op."""

from .contract import NsaCompressError, npu_unsupported_reason
from .ops import nsa_compress, nsa_compress_grad

__all__ = ["NsaCompressError", "npu_unsupported_reason", "nsa_compress", "nsa_compress_grad"]
__version__ = "0.1.0"
