"""GE converters for torchair: one module per GE operator.

In torchair's max-autotune mode every FX node becomes a GE node through a converter registered on its
OpOverload. ``nsa_compress`` lowers ``nsa_graph::nsa_compress`` (and torch_npu's ``npu_nsa_compress``) to
``NsaCompress``; ``nsa_compress_grad`` lowers the gradient ops to ``NsaCompressGrad``.

torchair is optional: :func:`register` runs when nsa_graph is imported (and from
:func:`nsa_graph.offline_torchair.load_torchair`) and does nothing unless torchair is already loaded.
"""

from __future__ import annotations

import sys
import threading

_lock = threading.Lock()
_registered = False
_torch_npu_ops: list = []


def torchair_loaded() -> bool:
    """torchair is in use: imported (real or offline), or torch_npu (which provides it) is loaded."""
    return "torchair" in sys.modules or "torch_npu" in sys.modules


def register() -> bool:
    """Register the converters with torchair if it is loaded; idempotent. Returns whether they are registered.

    Never imports torch_npu. torch_npu's own ops (``torch.ops.npu.npu_nsa_compress{,_grad}``) are lowered
    too when they exist, and get fake impls if torch_npu provides none.
    """
    global _registered
    with _lock:
        if not _registered and not torchair_loaded():
            return False
        from . import nsa_compress, nsa_compress_grad  # importing registers nsa_graph's ops

        _registered = True
        if len(_torch_npu_ops) < 2:  # torch_npu's ops may be defined after the first call
            _torch_npu_ops[:] = [op for op in (nsa_compress.register_torch_npu(),
                                               nsa_compress_grad.register_torch_npu()) if op is not None]
        return True
