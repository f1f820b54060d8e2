"""What the fusion pass does to a model: every compression candidate, fused or not, why, and where.

Python::

    report = nsa_graph.explain(model, k, w)
    print(report)                      # one line per candidate with the user's source line
    assert len(report.fused) == 2

Command line (``nsa-graph explain``)::

    nsa-graph explain model.py:make              # make() returns (fn_or_module, example_inputs)
    nsa-graph explain model.py:Block --inputs example_inputs   # Block() or Block, example_inputs()
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Optional

import torch

from .backends import backend
from .passes import FusionReport, collecting
from .user_model import load_model


def explain(
    fn_or_module: Callable[..., Any],
    *example_inputs: Any,
    target: str = "generic",
    dynamic: Optional[bool] = None,
    **example_kwargs: Any,
) -> FusionReport:
    """Compile ``fn_or_module`` once (Dynamo + the pass, no code generation), run it, return the report.

    Resets Dynamo's caches before and after (like ``torch._dynamo.explain``), so every frame is traced
    afresh and nothing compiled here is reused later.
    """
    torch._dynamo.reset()
    try:
        with collecting() as report:
            compiled = torch.compile(fn_or_module, backend=backend(inner="eager", target=target), dynamic=dynamic)
            compiled(*example_inputs, **example_kwargs)
    finally:
        torch._dynamo.reset()
    return report


# --- nsa-graph explain -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target_spec", metavar="path.py:callable",
                        help="a file and a name in it: a zero-argument callable returning "
                             "(fn_or_module, example_inputs), or the model itself with --inputs")
    parser.add_argument("--inputs", metavar="NAME",
                        help="a zero-argument callable in the same file returning the example inputs")
    parser.add_argument("--target", choices=("generic", "npu"), default="generic",
                        help="fuse everything provable (generic) or only the NPU kernel's domain (npu)")
    parser.add_argument("--dynamic", action="store_true", help="compile with dynamic=True")


def run(args: argparse.Namespace) -> int:
    model, inputs = load_model(args.target_spec, args.inputs)
    report = explain(model, *inputs, target=args.target, dynamic=True if args.dynamic else None)
    print(report)
    return 0
