"""nsa_graph: Native Sparse Attention KV compression (Ascend NsaCompress) as a graph-mode PyTorch op."""

from .contract import NsaCompressError, npu_unsupported_reason
from .ops import nsa_compress, nsa_compress_grad

__all__ = ["NsaCompressError", "npu_unsupported_reason", "nsa_compress", "nsa_compress_grad"]
__version__ = "0.1.0"

# the compile-time API is imported on first use: importing the op never imports the fusion pass
_LAZY = {"backend": "backends", "install_inductor_pass": "backends", "explain": "fusion_report"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register_torchair_converters() -> None:
    # GE converters, only when torchair is already in use (real with torch_npu, or the offline copy);
    # torch_npu is never imported here and a failure never breaks `import nsa_graph`
    try:
        from .converters import register

        register()
    except Exception as exc:  # pragma: no cover - depends on the installed torchair
        import logging

        logging.getLogger("nsa_graph").warning("torchair converters not registered: %s", exc)


_register_torchair_converters()
