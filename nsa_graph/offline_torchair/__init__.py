"""The real torchair on machines without CANN: graph mode for NsaCompress, checked up to the GE load boundary.

torchair (the ``npu`` torch.compile backend) ships only inside torch_npu wheels, and torch_npu cannot load
without CANN. This module fetches torchair's Python sources from the torch_npu wheel paired with the
installed torch and loads them as top-level ``torchair``, replacing only its GE extension
(``torchair.core._torchair``). Dynamo, AOTAutograd, torchair's FX passes, the converters and the GE graph
passes all run for real; the graph torchair hands to GE is recorded, checked against the real
NsaCompress/NsaCompressGrad prototypes, and compiling or running it raises :class:`GeRuntimeUnavailable`.
Where torch_npu works, :func:`load_torchair` returns the real torchair instead::

    $ nsa-graph fetch-torchair                      # once per torch version
    >>> from nsa_graph import offline_torchair as ota
    >>> torchair = ota.load_torchair()
    >>> backend = torchair.get_npu_backend(compiler_config=torchair.CompilerConfig())
    >>> try:
    ...     torch.compile(model, backend=backend)(x)
    ... except ota.GeRuntimeUnavailable:
    ...     pass
    >>> print(ota.describe_graph(ota.recorded_graphs()[-1]))
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from . import _fetch, _stand_in
from ._describe import describe_graph
from ._fetch import TorchairNotFetched, fetch, is_fetched, torch_npu_version, torchair_dir
from ._ir import IR_TABLE, ir_problems
from ._loader import eager_fallback, is_offline, load_torchair
from ._stand_in import GeIrError, GeRuntimeUnavailable

__all__ = [
    "GeIrError", "GeRuntimeUnavailable", "IR_TABLE", "TorchairNotFetched", "add_arguments", "clear_recorded",
    "describe_graph", "eager_fallback", "fetch", "ir_problems", "is_fetched", "is_offline", "load_torchair",
    "recorded_graphs", "run", "torch_npu_version", "torchair_dir",
]


def recorded_graphs(boundary: Optional[str] = None) -> list[Any]:
    """GE GraphDefs (torchair's ``ge_ir_pb2``) handed to GE so far, oldest first.

    ``boundary`` selects ``"load"`` (graphs about to be compiled) or ``"export"`` (``dynamo_export``).
    Empty with the real torchair: there the graphs go to GE itself.
    """
    return [graph for where, graph in _stand_in.records() if boundary in (None, where)]


def clear_recorded() -> None:
    _stand_in.clear()


# --- `nsa-graph fetch-torchair` ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", default=None,
                        help=f"torch_npu version (default: the installed torch's, {torch_npu_version()})")
    parser.add_argument("--wheel", type=Path, default=None,
                        help="extract from this local torch_npu wheel instead of downloading it")
    parser.add_argument("--force", action="store_true", help="fetch again even if the cache has it")
    parser.add_argument("--check", action="store_true",
                        help="then load it and print the IR prototypes the stand-in serves")


def run(args: argparse.Namespace) -> int:
    path = fetch(version=args.version, wheel=args.wheel, force=args.force)
    print(f"torchair (torch_npu {args.version or torch_npu_version()}) ready at {path}")
    print(f"cache: {_fetch.cache_dir()} (set NSA_GRAPH_CACHE to move it)")
    if args.check:
        torchair = load_torchair()
        print(f"loaded {torchair.__file__} ({'offline' if is_offline() else 'real, torch_npu works'})")
        for op_type in IR_TABLE:
            print(f"  {op_type}: {_stand_in.get_registered_ir_def(op_type)}")
    return 0
