"""Eager speed of nsa_compress's CPU kernels against the unfold spelling users write today.

    python benchmarks/eager_op.py [--T 32768 --N 8 --D 128 --block 32 --stride 16 --repeats 10 --alternate]

Forward and forward+backward, fp32 and bf16, side by side in one run (``--alternate``: call by call);
prints medians, minima and their ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import nsa_graph


def unfold_spelling(x, w, l, d):
    return (x.unfold(0, l, d) * w.t()[:, None, :]).sum(-1)


def op_spelling(x, w, l, d):
    return nsa_graph.nsa_compress(x, w, l, d)


def _time_pair(base, ours, repeats: int, alternate: bool, warmup: int = 2) -> tuple[list[float], list[float]]:
    """Per-call ms of both spellings: all of one then all of the other, or alternating call by call (load
    from other processes then hits both alike, but each call also starts with the caches and heap the
    other one left behind)."""
    samples: tuple[list[float], list[float]] = ([], [])

    def once(fn, out: list[float]) -> None:
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)

    if alternate:
        for _ in range(warmup):
            base()
            ours()
        for _ in range(repeats):
            once(base, samples[0])
            once(ours, samples[1])
    else:
        for fn, out in ((base, samples[0]), (ours, samples[1])):
            for _ in range(warmup):
                fn()
            for _ in range(repeats):
                once(fn, out)
    return samples


def _forward(spelling, x, w, l, d):
    def run():
        with torch.no_grad():
            spelling(x, w, l, d)
    return run


def _training(spelling, x, w, l, d):
    xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()

    def run():
        out = spelling(xg, wg, l, d)
        torch.autograd.grad(out, (xg, wg), torch.ones_like(out))
    return run


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=32768)
    p.add_argument("--N", type=int, default=8)
    p.add_argument("--D", type=int, default=128)
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--alternate", action="store_true", help="alternate the two spellings call by call")
    args = p.parse_args(argv)
    l, d = args.block, args.stride
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; T={args.T} N={args.N} D={args.D} "
          f"block={l} stride={d}; ms over {args.repeats} {'alternating ' if args.alternate else ''}runs; "
          f"speed-up = ratio of medians "
          f"(ratio of minima)")
    print(f"{'dtype':8} {'mode':8} {'unfold*w.sum med/min':>21} {'nsa_compress med/min':>21} {'speed-up':>16}")
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(args.T, args.N, args.D, dtype=dtype)
        w = torch.randn(l, args.N, dtype=dtype)
        for mode, make in (("forward", _forward), ("fw+bw", _training)):
            base, ours = _time_pair(make(unfold_spelling, x, w, l, d), make(op_spelling, x, w, l, d), args.repeats,
                                    args.alternate)
            bm, om = statistics.median(base), statistics.median(ours)
            print(f"{str(dtype).replace('torch.', ''):8} {mode:8} {bm:10.2f} {min(base):10.2f} "
                  f"{om:10.2f} {min(ours):10.2f} {bm / om:7.2f}x ({min(base) / min(ours):5.2f}x)")

if __name__ == "__main__":
    main()
