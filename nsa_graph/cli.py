"""``nsa-graph`` command line: one subcommand per module, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional

# subcommand -> (module, one-line help). Each module defines add_arguments(parser) and run(args) -> int.
SUBCOMMANDS = {
    "dump-ge": ("nsa_graph.dump_ge", "compile a model with torchair (offline) and print its GE graphs"),
    "explain": ("nsa_graph.fusion_report", "report every compression candidate in a model: fused or why not"),
    "fetch-torchair": ("nsa_graph.offline_torchair", "download torchair from the torch_npu wheel matching torch"),
}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="nsa-graph", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # only the chosen subcommand's module is imported (each may pull in torch.compile machinery)
        if argv and argv[0] == name:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    args = parser.parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
