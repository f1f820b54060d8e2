"""NSA compression, side by side: what users run today against nsa_graph, and the memory-bandwidth bound.

    .venv/bin/python benchmarks/suite.py                 # full suite -> benchmarks/RESULTS.md + results.png
    .venv/bin/python benchmarks/suite.py --quick         # headline case only, fewer repeats (prints only)

Variants, all measured in one run on this machine:
  eager-unfold    (x.unfold(0, l, d) * w.t()[:, None, :]).sum(-1)           (per sequence + cat when varlen)
  eager-einsum    torch.einsum("wndl,ln->wnd", x.unfold(0, l, d), w)
  eager-op        nsa_graph.nsa_compress(x, w, l, d, actual_seq_len=...)
  inductor        torch.compile(eager-unfold code, backend="inductor")
  nsa_graph       torch.compile(eager-unfold code, backend="nsa_graph")      (fused + decomposed)
  bound           bytes the op must move / copy bandwidth measured in the same run
Forward (no_grad) and training (forward + backward w.r.t. input and weight), fp32 and bf16; median and
spread (max - min) over repeats after compile warm-up; peak extra memory of one call (profiler memory
events) and bytes saved for backward (saved-tensor hooks).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

import nsa_graph

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Case:
    T: int
    N: int
    D: int
    block: int
    stride: int
    seq: Optional[tuple[int, ...]] = None

    @property
    def label(self) -> str:
        varlen = f" varlen({len(self.seq)} seqs)" if self.seq else ""
        return f"T={self.T} N={self.N} D={self.D} ({self.block},{self.stride}){varlen}"

    @property
    def windows(self) -> int:
        return nsa_graph.contract.output_rows(self.T, self.block, self.stride, list(self.seq) if self.seq else None)


HEADLINE = Case(32768, 8, 128, 32, 16)


def _varlen_lengths(total: int, count: int, seed: int = 0) -> tuple[int, ...]:
    gen = torch.Generator().manual_seed(seed)
    cuts = torch.sort(torch.randperm(total - 1, generator=gen)[: count - 1] + 1).values.tolist()
    return tuple(cuts + [total])


# One parameter at a time around the headline shape (the full cross product would take hours on 2 cores).
CASES = [
    Case(4096, 8, 128, 32, 16),
    HEADLINE,
    Case(131072, 8, 128, 32, 16),
    Case(32768, 4, 128, 32, 16),
    Case(32768, 8, 192, 32, 16),
    Case(32768, 8, 128, 64, 16),
    Case(32768, 8, 128, 32, 32),
    Case(32768, 8, 128, 32, 16, _varlen_lengths(32768, 64)),
]


# --- the spellings ----------------------------------------------------------------------------------


def user_unfold(x, w, l, d, seq):
    """The usual plain-PyTorch spelling (a loop over static sequence boundaries when varlen)."""
    if seq is None:
        return (x.unfold(0, l, d) * w.t()[:, None, :]).sum(-1)
    pieces, start = [], 0
    for end in seq:
        if end - start >= l:
            pieces.append((x[start:end].unfold(0, l, d) * w.t()[:, None, :]).sum(-1))
        start = end
    return torch.cat(pieces)


def user_einsum(x, w, l, d, seq):
    if seq is None:
        return torch.einsum("wndl,ln->wnd", x.unfold(0, l, d), w)
    pieces, start = [], 0
    for end in seq:
        if end - start >= l:
            pieces.append(torch.einsum("wndl,ln->wnd", x[start:end].unfold(0, l, d), w))
        start = end
    return torch.cat(pieces)


def eager_op(x, w, l, d, seq):
    return nsa_graph.nsa_compress(x, w, l, d, actual_seq_len=None if seq is None else list(seq))


def variants(case: Case) -> dict[str, Callable]:
    args = dict(l=case.block, d=case.stride, seq=case.seq)
    unfold = functools.partial(user_unfold, **args)
    return {
        "eager-unfold": unfold,
        "eager-einsum": functools.partial(user_einsum, **args),
        "eager-op": functools.partial(eager_op, **args),
        "inductor": torch.compile(unfold, backend="inductor", dynamic=False),
        "nsa_graph": torch.compile(functools.partial(user_unfold, **args), backend="nsa_graph", dynamic=False),
    }


# --- measurement ------------------------------------------------------------------------------------


def _step(fn, x, w, training: bool, grad_out):
    if not training:
        with torch.no_grad():
            return fn(x, w)
    out = fn(x, w)
    return torch.autograd.grad(out, (x, w), grad_out)


def time_ms(call: Callable[[], object], repeats: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples), max(samples) - min(samples)


def peak_extra_bytes(call: Callable[[], object]) -> int:
    """Peak of (allocated - freed) bytes during one call, from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = call()
        del result
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return peak


def saved_bytes(fn, x, w) -> int:
    """Bytes of storage that autograd keeps for backward beyond the input and weight themselves."""
    storages: dict[int, int] = {}
    base = {x.untyped_storage().data_ptr(), w.untyped_storage().data_ptr()}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in base:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x, w)
    del out
    return sum(storages.values())


def copy_bandwidth(nbytes: int = 1 << 28, repeats: int = 10) -> float:
    """Bytes per second of a large tensor copy (read + write)."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    median, _ = time_ms(lambda: dst.copy_(src), repeats, warmup=2)
    return 2 * nbytes / (median / 1e3)


def bound_ms(case: Case, dtype: torch.dtype, training: bool, bandwidth: float) -> float:
    size = torch.tensor([], dtype=dtype).element_size()
    tokens, rows = case.T * case.N * case.D, case.windows * case.N * case.D
    moved = (tokens + rows) * size  # forward: read the input once, write the output once
    if training:
        moved += (rows + 2 * tokens) * size  # backward: read grad and input, write grad_input
    return moved / bandwidth * 1e3


def measure(case: Case, dtype: torch.dtype, training: bool, repeats: int, bandwidth: float) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(case.T, case.N, case.D, generator=gen).to(dtype).requires_grad_(training)
    w = torch.randn(case.block, case.N, generator=gen).to(dtype).requires_grad_(training)
    grad_out = torch.randn(case.windows, case.N, case.D, generator=gen).to(dtype)
    reference = _step(variants(case)["eager-op"], x, w, training, grad_out)
    row = {}
    for name, fn in variants(case).items():
        call = functools.partial(_step, fn, x, w, training, grad_out)
        result = call()  # compiles, and checks that the variant computes the same thing
        for got, want in zip(result if training else (result,), reference if training else (reference,)):
            # bf16 user code accumulates in bf16: compare norms, not elements
            error = (got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)
            assert error < 2e-2, f"{name} differs from nsa_compress: relative error {error:.3g}"
        median, spread = time_ms(call, repeats, warmup=2)
        row[name] = dict(median=median, spread=spread, peak=peak_extra_bytes(call),
                         saved=saved_bytes(fn, x, w) if training else 0)
        del result
    row["bound"] = dict(median=bound_ms(case, dtype, training, bandwidth), spread=0.0, peak=0, saved=0)
    return row


# --- report -----------------------------------------------------------------------------------------

ORDER = ["eager-unfold", "eager-einsum", "eager-op", "inductor", "nsa_graph", "bound"]


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f}"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"Python {platform.python_version()}")


def markdown(results: list[tuple[Case, torch.dtype, bool, dict]], bandwidth: float) -> str:
    lines = [
        "# NSA compression benchmarks", "",
        f"Machine: {machine()}. Copy bandwidth measured in this run: {bandwidth / 1e9:.1f} GB/s.", "",
        "Regenerate: `.venv/bin/python benchmarks/suite.py` (writes this file and `results.png`).", "",
        "Times are medians in ms (spread = max - min in parentheses); `x` columns are speed-ups of nsa_graph's",
        "variants over the user's code (higher is better) and nsa_graph's distance from the bandwidth bound.",
        "Peak = extra memory of one call; saved = bytes autograd keeps beyond input and weight (MiB).", "",
        "| case | dtype | mode | " + " | ".join(ORDER) + " | op/unfold x | nsa_graph/inductor x | nsa_graph/bound | peak MiB unfold/op/inductor/nsa_graph | saved MiB unfold/einsum/inductor/nsa_graph |",
        "|---|---|---|" + "---|" * len(ORDER) + "---|---|---|---|---|",
    ]
    for case, dtype, training, row in results:
        cells = [f"{row[k]['median']:.2f} ({row[k]['spread']:.1f})" for k in ORDER]
        peaks = "/".join(_mb(row[k]["peak"]) for k in ("eager-unfold", "eager-op", "inductor", "nsa_graph"))
        saved = "/".join(_mb(row[k]["saved"]) for k in ("eager-unfold", "eager-einsum", "inductor", "nsa_graph")) if training else "-"
        lines.append(
            f"| {case.label} | {str(dtype).replace('torch.', '')} | {'fw+bw' if training else 'forward'} | "
            + " | ".join(cells)
            + f" | {row['eager-unfold']['median'] / row['eager-op']['median']:.2f}"
            + f" | {row['inductor']['median'] / row['nsa_graph']['median']:.2f}"
            + f" | {row['nsa_graph']['median'] / row['bound']['median']:.2f}"
            + f" | {peaks} | {saved} |"
        )
    return "\n".join(lines) + "\n"


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for ax, (dtype, training) in zip(axes.flat, [(torch.float32, False), (torch.float32, True),
                                                  (torch.bfloat16, False), (torch.bfloat16, True)]):
        rows = sorted((c.T, r) for c, dt, tr, r in results
                      if dt == dtype and tr == training and (c.N, c.D, c.block, c.stride, c.seq) ==
                      (HEADLINE.N, HEADLINE.D, HEADLINE.block, HEADLINE.stride, None))
        for name in ORDER:
            ax.plot([t for t, _ in rows], [r[name]["median"] for _, r in rows], marker="o", label=name,
                    linestyle="--" if name == "bound" else "-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{str(dtype).replace('torch.', '')} {'forward + backward' if training else 'forward'}")
        ax.set_xlabel("T (tokens)")
        ax.set_ylabel("ms (median)")
        ax.grid(True, which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"NSA compression, N={HEADLINE.N} D={HEADLINE.D} block={HEADLINE.block} stride={HEADLINE.stride}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="headline case only, 3 repeats, print only")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = p.parse_args(argv)
    # Inductor's background compile workers would compete with the timed runs for the two cores.
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    cases, repeats = ([HEADLINE], 3) if args.quick else (CASES, args.repeats)
    bandwidth = copy_bandwidth()
    results = []
    for case in cases:
        for dtype in (torch.float32, torch.bfloat16):
            for training in (False, True):
                torch._dynamo.reset()
                row = measure(case, dtype, training, repeats, bandwidth)
                results.append((case, dtype, training, row))
                print(f"{case.label:42} {str(dtype)[6:]:8} {'fw+bw' if training else 'forward':7} "
                      + "  ".join(f"{k}={row[k]['median']:.1f}" for k in ORDER), flush=True)
    text = markdown(results, bandwidth)
    print(text)
    if not args.quick:
        args.out.write_text(text)
        plot(results, args.out.with_name("results.png"))
        print(f"wrote {args.out} and {args.out.with_name('results.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
