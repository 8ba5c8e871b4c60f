"""The simulator's linear layers on this CPU, kernel by kernel: is there a faster way to run the same GEMMs?

The shared-prefix engine spends 82-96% of its time in the decoder's weight GEMMs (benchmarks/RESULTS.md, the
`--profile` lines). This script times one GEMM of each of the simulator's weight shapes at the row counts the
engine feeds them, three ways, in the same process and threads:

- `F.linear`: what the engine runs (the weight as stored, [out, in], read transposed; MKL on the CPU);
- `mm, W^T stored`: the same product with the weight stored pre-transposed ([in, out], contiguous);
- `oneDNN packed`: the weight reordered once into oneDNN's blocked layout (`torch.ops.mkldnn`), as
  inductor's CPU freezing does; "-" where oneDNN cannot pack that dtype on this CPU (bf16 needs
  avx512-bf16 or avx-ne-convert).

It prints GFLOP/s and each kernel's speed relative to `F.linear`, and a 2048-cube matmul as the machine's
reference peak; the CPU model heads the output. Shapes default to Qwen2.5-Coder-1.5B's (hidden 1536, MLP 8960,
key/value 256); the engine's suffix batches put 64 rows x ~16 tokens = ~1,000 rows through each layer, a
lone context's prefix ~50-150.

    python benchmarks/linear_kernels.py [--dtype float32 bfloat16] [--rows 16 64 256 1024] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time

QWEN_1_5B = ((1536, 1536), (1536, 256), (1536, 8960), (8960, 1536))   # (in, out): q/o, k/v, gate/up, down


def per_call(fn, budget_s: float) -> float:
    fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        spent = time.perf_counter() - start
        if spent >= budget_s:
            return spent / n


def main(argv=None) -> int:
    import torch
    import torch.nn.functional as F

    from harness.environment import cpu_description

    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    ap.add_argument("--rows", nargs="+", type=int, default=[16, 64, 256, 1024])
    ap.add_argument("--shapes", nargs="+", default=[f"{i}x{o}" for i, o in QWEN_1_5B],
                    help="weight shapes as IN x OUT features, e.g. 1536x8960")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    print(f"# {cpu_description()}; torch {torch.__version__}, {args.threads} threads; "
          f"{time.strftime('%Y-%m-%d')}")
    for name in args.dtype:
        dtype = getattr(torch, name)
        a = torch.randn(2048, 2048, dtype=dtype)
        cube = 2 * 2048 ** 3 / 1e9
        peak = cube / per_call(lambda a=a: a @ a, args.seconds)
        peak_linear = cube / per_call(lambda a=a: F.linear(a, a), args.seconds)
        print(f"\n## {name}: 2048-cube matmul {peak:.0f} GFLOP/s (`a @ b`), {peak_linear:.0f} (F.linear)\n")
        print("| in x out | rows | F.linear GFLOP/s | mm, W^T stored | oneDNN packed | packed / F.linear |")
        print("|---|---:|---:|---:|---:|---:|")
        for n_in, n_out in shapes:
            w = torch.randn(n_out, n_in, dtype=dtype) / n_in ** 0.5
            wt = w.t().contiguous()
            for rows in args.rows:
                x = torch.randn(rows, n_in, dtype=dtype)
                flop = 2 * rows * n_in * n_out
                with torch.inference_mode():
                    lin = flop / per_call(lambda x=x, w=w: F.linear(x, w), args.seconds) / 1e9
                    mm = flop / per_call(lambda x=x, wt=wt: torch.mm(x, wt), args.seconds) / 1e9
                    try:
                        packed_w = torch.ops.mkldnn._reorder_linear_weight(w, rows)

                        def run_packed(x=x, p=packed_w):
                            return torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
                        # a fast kernel that computes something else would be no lead: check it first
                        agrees = torch.allclose(run_packed().float(), F.linear(x, w).float(), rtol=1e-3, atol=1e-3)
                        packed = flop / per_call(run_packed, args.seconds) / 1e9 if agrees else float("inf")
                    except (RuntimeError, AttributeError):
                        packed = float("nan")
                cell = "-" if packed != packed else "wrong result" if packed == float("inf") else f"{packed:.0f}"
                ratio = "-" if packed != packed or packed == float("inf") else f"{packed / lin:.2f}x"
                print(f"| {n_in} x {n_out} | {rows} | {lin:.0f} | {mm:.0f} ({mm / lin:.2f}x) | {cell} | {ratio} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
