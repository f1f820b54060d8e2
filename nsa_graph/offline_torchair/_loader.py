"""Load torchair: the real one where torch_npu works, else the fetched copy over the GE stand-in."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import sys
import threading
import types
from typing import Iterator, Optional

from . import _fetch, _stand_in

log = logging.getLogger("nsa_graph.offline_torchair")

_lock = threading.RLock()
_offline: Optional[bool] = None  # None until loaded; then whether the offline copy is in use
_eager_depth = 0


def _purge(prefix: str) -> None:
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]


def _torch_npu_works() -> bool:
    if "torch_npu" in sys.modules:
        return True
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        import torch_npu  # noqa: F401  (installed: use it only if it loads, i.e. CANN is there)
    except Exception as exc:  # ImportError without CANN; OSError/RuntimeError from its native libraries
        log.info("torch_npu is installed but does not load (%s); using the offline torchair", exc)
        _purge("torch_npu")
        return False
    return True


def _require_protobuf() -> None:
    if importlib.util.find_spec("google.protobuf") is None:
        raise ImportError("torchair needs protobuf (its GE graphs are protobuf messages): pip install protobuf")


def _load_offline(fetch: bool) -> types.ModuleType:
    if not _fetch.is_fetched():
        if not fetch:
            raise _fetch.TorchairNotFetched(
                f"the offline torchair for torch_npu {_fetch.torch_npu_version()} is not in "
                f"{_fetch.cache_dir()}; run `{_fetch.fetch_command()}` (or load_torchair(fetch=True))"
            )
        _fetch.fetch()
    _require_protobuf()
    # anything that sees a torch_npu entry point must not auto-load it (it breaks `import torch` without CANN)
    os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
    package_dir = _fetch.torchair_dir()
    spec = importlib.util.spec_from_file_location(
        "torchair", package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[_stand_in.MODULE_NAME] = _stand_in.module()
    sys.modules["torchair"] = module
    handlers = _signal_handlers()
    try:
        spec.loader.exec_module(module)
    except BaseException:
        _purge("torchair")
        raise
    finally:
        _restore(handlers)
    module.core._torchair = sys.modules[_stand_in.MODULE_NAME]
    _install_eager_fallback(module)
    return module


def _signal_handlers() -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore(handlers: dict) -> None:
    # torchair installs SIGINT/SIGTERM handlers that finalize GE and then ignore the signal; offline there
    # is no GE to finalize, and Ctrl-C (or a CI timeout's SIGTERM) must keep working
    for sig, handler in handlers.items():
        if handler is not None:  # None: installed outside Python, nothing we can put back
            signal.signal(sig, handler)


def load_torchair(fetch: bool = False) -> types.ModuleType:
    """torchair, with nsa_graph's GE converters registered.

    The real torchair when torch_npu imports (CANN present); otherwise the copy fetched from the matching
    torch_npu wheel, loaded as top-level ``torchair`` over the GE stand-in. The offline copy must already be
    fetched (``nsa-graph fetch-torchair``) unless ``fetch`` is true. Idempotent.
    """
    global _offline
    with _lock:
        if _offline is None:
            if _torch_npu_works():
                import torchair

                _offline = False
            else:
                _load_offline(fetch)
                _offline = True
        module = sys.modules["torchair"]
        from nsa_graph.converters import register

        register()
        return module


def is_offline() -> bool:
    """Whether :func:`load_torchair` loaded the offline copy (False before it ran)."""
    return bool(_offline)


@contextlib.contextmanager
def eager_fallback() -> Iterator[None]:
    """Execute GE graphs with the FX graph torchair converted, after recording them at the load boundary.

    Without a GE runtime the first compiled forward stops at :class:`GeRuntimeUnavailable`, so a training
    step never reaches its backward graph. Inside this context, each GE graph is still built, loaded
    (recorded and IR-checked), then run the way torchair's ``debug.run_eagerly`` runs it: by its FX graph
    on the CPU kernels. Results come from those kernels, never from GE.
    """
    global _eager_depth
    with _lock:
        _eager_depth += 1
    try:
        yield
    finally:
        with _lock:
            _eager_depth -= 1


def _install_eager_fallback(torchair: types.ModuleType) -> None:
    from torchair._ge_concrete_graph.fx2ge_converter import GeConcreteGraph

    original = GeConcreteGraph.__call__

    def __call__(self, *args, **kwargs):
        if _eager_depth == 0:
            return original(self, *args, **kwargs)
        if not getattr(self, "_nsa_graph_loaded_offline", False):
            try:
                original(self, *args, **kwargs)  # builds inputs, loads (records, checks), then needs GE
            except _stand_in.GeRuntimeUnavailable:
                pass
            self._nsa_graph_loaded_offline = True
        return self.fx_graph(*args, **kwargs)

    GeConcreteGraph.__call__ = __call__
