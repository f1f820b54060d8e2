"""torch.compile backends that fuse NSA compression before handing the graph to an inner backend.

- ``torch.compile(model, backend="nsa_graph")``: fuse, then Inductor with the op decomposed (one loop).
- ``torch.compile(model, backend=nsa_graph.backend(inner=..., target=...))``: fuse, then any backend:
  ``"inductor"``, ``"aot_eager"``, any registered name, or a callable such as
  ``torchair.get_npu_backend(compiler_config=cfg)``.
- ``nsa_graph.install_inductor_pass()``: for plain ``backend="inductor"`` users, the same pass as
  Inductor's ``pre_grad_custom_pass``, with a ``uuid()`` over the pass and op sources so compiled-graph
  caches are keyed on them.

The pass runs on Dynamo's graph, before AOTAutograd: the backward of a fused op is ``nsa_compress_grad``
for every inner backend.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import torch
import torch.fx as fx

from .passes import fuse_nsa_compress

log = logging.getLogger(__name__)

Inner = Union[str, Callable[..., Any]]
TargetChoice = Literal["auto", "npu", "generic"]


def _is_torchair(inner: Inner) -> bool:
    func = inner.func if isinstance(inner, functools.partial) else inner
    return str(getattr(func, "__module__", "") or "").startswith("torchair")


def _resolve_target(target: TargetChoice, inner: Inner, example_inputs) -> str:
    if target not in ("auto", "npu", "generic"):
        raise ValueError(f"nsa_graph.backend: target={target!r} must be 'auto', 'npu' or 'generic'")
    if target != "auto":
        return target
    on_npu = any(isinstance(t, torch.Tensor) and t.device.type == "npu" for t in example_inputs)
    return "npu" if on_npu or _is_torchair(inner) else "generic"


def _inductor(gm: fx.GraphModule, example_inputs, mode=None, options=None, dynamic=None):
    """Inductor with the op (and its gradient) decomposed, the decomposition scoped to this compile."""
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.decomposition import select_decomp_table

    from .decompositions import decompositions

    config = torch._TorchCompileInductorWrapper(mode, options, dynamic).config
    table = {**select_decomp_table(), **decompositions()}
    return compile_fx(gm, example_inputs, config_patches=config, decompositions=table)


def _call_inner(inner: Inner, gm: fx.GraphModule, example_inputs, kwargs: dict[str, Any]):
    if inner == "inductor":
        return _inductor(gm, example_inputs, **kwargs)
    if isinstance(inner, str):
        from torch._dynamo.backends.registry import lookup_backend

        inner = lookup_backend(inner)
    return inner(gm, example_inputs, **kwargs)


def backend(
    inner: Inner = "inductor",
    target: TargetChoice = "auto",
    **inner_kwargs: Any,
) -> Callable[..., Any]:
    """A ``torch.compile`` backend: fuse NSA compression in the Dynamo graph, then run ``inner``.

    Args:
        inner: ``"inductor"`` (with the op decomposed into one loop), ``"aot_eager"``, any registered
            backend name, or a backend callable (``torchair.get_npu_backend(compiler_config=...)``).
        target: ``"npu"`` fuses only cases inside the Ascend kernel's domain (the others are reported with
            the reason); ``"generic"`` fuses everything provable; ``"auto"`` picks ``"npu"`` for a torchair
            inner backend or NPU inputs.
        inner_kwargs: passed to ``inner`` (e.g. ``mode``/``options`` for Inductor); ``torch.compile``'s own
            ``mode=``/``options=`` are forwarded as well.
    """

    def nsa_graph_compile(gm: fx.GraphModule, example_inputs, **kwargs: Any):
        fuse_nsa_compress(gm, target=_resolve_target(target, inner, example_inputs))
        return _call_inner(inner, gm, example_inputs, {**inner_kwargs, **kwargs})

    nsa_graph_compile.__name__ = f"nsa_graph[{inner if isinstance(inner, str) else 'custom'}]"
    return nsa_graph_compile


def nsa_graph_backend(gm: fx.GraphModule, example_inputs, **kwargs: Any):
    """``backend="nsa_graph"`` (entry point ``torch_dynamo_backends``): fuse, then Inductor with the op decomposed."""
    return backend()(gm, example_inputs, **kwargs)


# --- plain backend="inductor" -----------------------------------------------------------------------

_PACKAGE = Path(__file__).resolve().parent


def _behaviour_files() -> tuple[str, ...]:
    """Every source whose change can change a fused graph or its compiled code."""
    from . import passes

    files = sorted(Path(passes.__file__).resolve().parent.glob("*.py"))
    files += [_PACKAGE / name for name in ("ops.py", "contract.py", "kernels.py", "decompositions.py")]
    return tuple(str(f) for f in files if f.exists())


try:
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
except ImportError:  # pragma: no cover - older torch
    CustomGraphPass, get_hash_for_files = object, None


class NsaCompressPreGradPass(CustomGraphPass):
    """The fusion pass as Inductor's ``pre_grad_custom_pass`` (runs on the same torch-IR graph)."""

    def __init__(self, target: str = "generic"):
        self.target = target

    def __call__(self, graph: fx.Graph) -> None:
        fuse_nsa_compress(graph, target=self.target)

    def uuid(self) -> Optional[Any]:
        # the cache key must change whenever the pass or the op's Python behaviour (fake, autograd,
        # kernels) changes: Inductor's caches do not hash custom-op sources themselves
        return get_hash_for_files(_behaviour_files(), extra=f"{torch.__version__}:{self.target}").hex()


def install_inductor_pass(target: str = "generic") -> NsaCompressPreGradPass:
    """Run the fusion pass in every ``backend="inductor"`` compile (``config.pre_grad_custom_pass``).

    Passes already installed there are kept. Returns the installed pass. Inductor then calls the op's
    kernel for the fused node (no decomposition); use ``backend="nsa_graph"`` for a fused generated loop.
    """
    from torch._inductor import config

    current = config.pre_grad_custom_pass
    passes = list(current) if isinstance(current, (list, tuple)) else ([current] if current else [])
    passes = [p for p in passes if not isinstance(p, NsaCompressPreGradPass)]
    installed = NsaCompressPreGradPass(target)
    config.pre_grad_custom_pass = installed if not passes else passes + [installed]
    return installed
