"""Compile-time cost of the fusion pass (passes.fuse_nsa_compress).

    .venv/bin/python benchmarks/pass_cost.py                       # both parts, about three minutes
    .venv/bin/python benchmarks/pass_cost.py --part b --sites 10 100 300 --profile

(a) Share of the first-call compile spent inside the pass, with ``backend="nsa_graph"``, for
    - the headline case of benchmarks/suite.py: ``(x.unfold(0, 32, 16) * w.t()[:, None, :]).sum(-1)``,
      x [32768, 8, 128], forward (no_grad) and training (forward + backward compile);
    - the compressed-attention block of examples/nsa_attention_block.py (two sites, training).
    "compile" is the first call's wall time minus a steady-state call, each compile with fresh (empty)
    Inductor caches; the pass time is measured by wrapping the pass where the backend calls it. An
    unrelated warm-up compile first pays the one-off start-up of the process's first compile.
(b) The pass alone on one Dynamo graph holding S compression sites, each over its own slice of one input
    (``--separate``: over its own input tensor). The graph is captured once per S; each timing runs the
    pass on a fresh copy of it. Linear growth shows as a flat time per site.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no background workers competing for 2 cores

import torch
import torch.fx as fx
from torch._inductor.utils import fresh_cache

import nsa_graph
import nsa_graph.backends as backends
from nsa_graph.passes import fuse_nsa_compress

ROOT = Path(__file__).resolve().parent.parent

# --- (a) share of the compile ---------------------------------------------------------------------------

_pass_seconds: list[float] = []


def _timed_pass(*args: Any, **kwargs: Any):
    t0 = time.perf_counter()
    try:
        return _original_pass(*args, **kwargs)
    finally:
        _pass_seconds.append(time.perf_counter() - t0)


_original_pass = backends.fuse_nsa_compress
backends.fuse_nsa_compress = _timed_pass  # the backend looks the pass up in its module at each compile


def headline(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x.unfold(0, 32, 16) * w.t()[:, None, :]).sum(-1)


def _run_once(fn: Callable[[], torch.Tensor], train: bool, leaves: list[torch.Tensor]) -> None:
    if train:
        out = fn()
        torch.autograd.grad(out.float().sum(), leaves)
    else:
        with torch.no_grad():
            fn()


def _compile_share(name: str, model: Callable, args: tuple, train: bool, repeats: int) -> tuple[float, float]:
    """Median (compile seconds, pass seconds) over ``repeats`` fresh compiles."""
    leaves = [a for a in list(args) + list(getattr(model, "parameters", lambda: [])()) if a.requires_grad]
    compiles, passes = [], []
    for _ in range(repeats):
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="nsa_graph")
        _pass_seconds.clear()
        with fresh_cache():  # empty on-disk and in-memory caches: generated C++ is compiled again too
            t0 = time.perf_counter()
            _run_once(lambda: compiled(*args), train, leaves)
            first = time.perf_counter() - t0
        passes.append(sum(_pass_seconds))
        steady = []
        for _ in range(2):  # the first call also runs the compiled code once: take that off
            t0 = time.perf_counter()
            _run_once(lambda: compiled(*args), train, leaves)
            steady.append(time.perf_counter() - t0)
        compiles.append(first - min(steady))
    compile_s, pass_s = statistics.median(compiles), statistics.median(passes)
    print(f"  {name:36} compile {compile_s:7.3f} s   pass {pass_s * 1e3:7.2f} ms   "
          f"share {100 * pass_s / compile_s:5.2f} %")
    return compile_s, pass_s


def part_a(repeats: int) -> None:
    print("(a) share of the first-call compile spent in the fusion pass, backend='nsa_graph' "
          f"(median of {repeats} compiles)")
    warm = torch.compile(lambda t: (t * 2).sum(), backend="inductor")
    warm(torch.randn(8))

    torch.manual_seed(0)
    x, w = torch.randn(32768, 8, 128), torch.randn(32, 8)
    _compile_share("headline unfold*w.sum, forward", headline, (x, w), False, repeats)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    _compile_share("headline unfold*w.sum, training", headline, (xg, wg), True, repeats)

    sys.path.insert(0, str(ROOT / "examples"))
    from nsa_attention_block import make

    model, (q, k, v) = make()
    _compile_share("attention block (2 sites), training", model, (q, k.requires_grad_(), v), True, repeats)


# --- (b) the pass alone on graphs with many sites -----------------------------------------------------


def _many_sites(sites: int, rows: int) -> Callable:
    """``sites`` independent compressions, each over its own slice of one ``x`` with its own weight ``w[i]``
    (one weight shared by consecutive slices would let the pass merge them into a single varlen op)."""

    def fn(w: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple((x[i * rows : (i + 1) * rows].unfold(0, 32, 16) * w[i].t()[:, None, :]).sum(-1)
                     for i in range(sites))

    return fn


def _separate_inputs(w: torch.Tensor, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same compressions over separate input tensors (no two sites share a base tensor)."""
    return tuple((x.unfold(0, 32, 16) * w[i].t()[:, None, :]).sum(-1) for i, x in enumerate(xs))


def _capture(fn: Callable, *args: torch.Tensor) -> fx.GraphModule:
    graphs: list[fx.GraphModule] = []

    def capture(gm: fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=capture, fullgraph=True, dynamic=False)(*args)
    return graphs[0]


def _fresh_copy(gm: fx.GraphModule) -> fx.GraphModule:
    graph = fx.Graph()
    output = graph.graph_copy(gm.graph, {})  # node meta (example values) is copied along
    graph.output(output)
    return fx.GraphModule(gm, graph)


def part_b(site_counts: list[int], repeats: int, separate: bool, profile: bool = False) -> None:
    where = "separate inputs" if separate else "slices of one input"
    print(f"(b) the pass alone on one graph with S sites over {where} (median of {repeats} runs on fresh copies)")
    rows, baseline = 64, None
    for sites in site_counts:
        w = torch.randn(sites, 32, 2)
        t0 = time.perf_counter()
        if separate:
            gm = _capture(_separate_inputs, w, *(torch.randn(rows, 2, 4) for _ in range(sites)))
        else:
            gm = _capture(_many_sites(sites, rows), w, torch.randn(sites * rows, 2, 4))
        capture_s = time.perf_counter() - t0
        nodes = len(gm.graph.nodes)
        samples, fused = [], 0
        for _ in range(repeats):
            copy = _fresh_copy(gm)
            t0 = time.perf_counter()
            report = fuse_nsa_compress(copy, target="generic")
            samples.append(time.perf_counter() - t0)
            fused = len(report.fused)
        seconds = statistics.median(samples)
        per_site = seconds / sites * 1e3
        baseline = baseline or per_site
        print(f"  S={sites:5}  {nodes:6} nodes  fused {fused:5}  pass {seconds * 1e3:9.1f} ms  "
              f"{per_site:6.3f} ms/site ({per_site / baseline:4.2f}x the S={site_counts[0]} rate)  "
              f"[Dynamo capture {capture_s:5.1f} s]")
    if profile:  # where the time goes on the largest graph (cumulative, pass functions only)
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        copy = _fresh_copy(gm)
        profiler.runcall(fuse_nsa_compress, copy, target="generic")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(r"passes[/\\]", 12)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("a", "b", "both"), default="both")
    p.add_argument("--sites", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--separate", action="store_true", help="(b): each site over its own input tensor")
    p.add_argument("--profile", action="store_true", help="(b): cProfile the pass on the largest graph")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, nsa_graph {nsa_graph.__version__}")
    if args.part in ("a", "both"):
        part_a(args.repeats)
    if args.part in ("b", "both"):
        part_b(args.sites, args.repeats, args.separate, args.profile)


if __name__ == "__main__":
    main()
