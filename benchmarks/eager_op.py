"""Eager speed of nsa_compress's CPU kernels against the unfold spelling users write today.

    python benchmarks/eager_op.py [--T 32768 --N 8 --D 128 --block 32 --stride 16 --repeats 10]

Forward and forward+backward, fp32 and bf16, side by side in one run; prints medians and ratios.
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


def _time(fn, repeats: int, warmup: int = 2) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3, (max(samples) - min(samples)) * 1e3


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
    args = p.parse_args(argv)
    l, d = args.block, args.stride
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; T={args.T} N={args.N} D={args.D} "
          f"block={l} stride={d}; median (spread) ms over {args.repeats} runs")
    print(f"{'dtype':6} {'mode':9} {'unfold*w.sum':>16} {'nsa_compress':>16} {'speed-up':>9}")
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(args.T, args.N, args.D, dtype=dtype)
        w = torch.randn(l, args.N, dtype=dtype)
        for mode, make in (("forward", _forward), ("fw+bw", _training)):
            base, base_spread = _time(make(unfold_spelling, x, w, l, d), args.repeats)
            ours, ours_spread = _time(make(op_spelling, x, w, l, d), args.repeats)
            print(f"{str(dtype).replace('torch.', ''):6} {mode:9} {base:9.2f} ({base_spread:4.1f}) "
                  f"{ours:9.2f} ({ours_spread:4.1f}) {base / ours:8.2f}x")


if __name__ == "__main__":
    main()
