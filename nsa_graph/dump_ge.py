"""``nsa-graph dump-ge``: compile a model with torchair (max-autotune) and print the GE graphs it builds.

Runs the real torchair on the offline copy (no CANN needed): by default a training step, so the output
shows the forward graph (``NsaCompress``) and the backward graph (``NsaCompressGrad``)::

    $ nsa-graph dump-ge                                  # the built-in tiny NSA compressor
    $ nsa-graph dump-ge --inference --dynamic
    $ nsa-graph dump-ge examples/dump_ge_model.py:build --txt-dump /tmp/ge
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from .user_model import load_model


class TinyCompressor(torch.nn.Module):
    """NSA KV compression with learned per-head weights, then a squash and a scale (elementwise)."""

    def __init__(self, heads: int = 4, block: int = 32, stride: int = 16, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.block, self.stride = block, stride
        self.weight = torch.nn.Parameter(torch.randn(block, heads, dtype=dtype) / block)

    def forward(self, kv: torch.Tensor) -> torch.Tensor:
        import nsa_graph

        compressed = nsa_graph.nsa_compress(kv, self.weight, self.block, self.stride)
        return torch.tanh(compressed) * 0.5


def default_model(tokens: int = 96, heads: int = 4, head_dim: int = 128) -> tuple[torch.nn.Module, tuple]:
    """bf16, l=32, d=16, N=4, D=128: ``[96, 4, 128] -> [5, 4, 128]``."""
    torch.manual_seed(0)
    model = TinyCompressor(heads=heads)
    kv = torch.randn(tokens, heads, head_dim, dtype=torch.bfloat16)
    return model, (kv,)


def _config(torchair: Any, txt_dump: Path | None) -> Any:
    config = torchair.CompilerConfig()  # max-autotune: every FX node becomes a GE node
    if txt_dump is not None:
        txt_dump.mkdir(parents=True, exist_ok=True)
        config.debug.graph_dump.type = "txt"
        config.debug.graph_dump.path = str(txt_dump)
    return config


def compile_and_record(model: Any, inputs: tuple, *, training: bool, dynamic: bool,
                       txt_dump: Path | None = None) -> list:
    """Compile ``model`` with torchair's backend, run it (and its backward if ``training``), return the GE
    graphs recorded at the load boundary, forward first."""
    from nsa_graph import offline_torchair as ota

    torchair = ota.load_torchair(fetch=True)
    if not ota.is_offline():
        raise RuntimeError("dump-ge records graphs with the offline torchair, but torch_npu works here and the "
                           "real torchair is loaded; use --txt-dump with torchair's own graph_dump instead")
    backend = torchair.get_npu_backend(compiler_config=_config(torchair, txt_dump))
    torch._dynamo.reset()  # fresh compiles: graphs cached from earlier calls are never loaded again
    ota.clear_recorded()
    compiled = torch.compile(model, backend=backend, dynamic=dynamic or None)
    if training:
        inputs = tuple(x.detach().requires_grad_() if isinstance(x, torch.Tensor) and x.is_floating_point()
                       else x for x in inputs)
        with ota.eager_fallback():
            out = compiled(*inputs)
            outs = out if isinstance(out, (tuple, list)) else (out,)
            sum(o.float().sum() for o in outs if isinstance(o, torch.Tensor) and o.requires_grad).backward()
    else:
        with torch.no_grad():
            try:
                compiled(*inputs)
            except ota.GeRuntimeUnavailable:
                pass  # the graph was recorded at load; compiling it would need CANN
    return ota.recorded_graphs()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None,
                        help="path.py:callable returning (model, example_inputs); default: a tiny bf16 NSA "
                             "compressor (l=32, d=16, N=4, D=128)")
    parser.add_argument("--inference", action="store_true", help="forward only (no_grad); default: a training step")
    parser.add_argument("--dynamic", action="store_true", help="compile with dynamic shapes (dims print as -1)")
    parser.add_argument("--txt-dump", type=Path, default=None, metavar="DIR",
                        help="also write torchair's own txt graph dumps (config.debug.graph_dump) to DIR")
    parser.add_argument("--internal-attrs", action="store_true",
                        help="show torchair/GE bookkeeping attributes (_inference_rule, ...)")


def run(args: argparse.Namespace) -> int:
    from nsa_graph import offline_torchair as ota

    model, inputs = load_model(args.model) if args.model else default_model()
    training = not args.inference
    graphs = compile_and_record(model, inputs, training=training, dynamic=args.dynamic, txt_dump=args.txt_dump)
    if not graphs:
        print("no GE graph was built (nothing to compile?)", file=sys.stderr)
        return 1
    names = ["forward", "backward"] if training and len(graphs) == 2 else [f"graph {i}" for i in range(len(graphs))]
    for label, graph in zip(names, graphs):
        print(f"== {label} ==")
        print(ota.describe_graph(graph, internal_attrs=args.internal_attrs))
        print()
    if args.txt_dump is not None:
        for path in sorted(args.txt_dump.glob("*.txt")):
            print(f"torchair dump: {path}")
    return 0
