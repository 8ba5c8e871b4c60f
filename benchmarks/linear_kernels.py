"""The simulator's linear layers on this CPU, kernel by kernel: is there a faster way to run the same GEMMs?

The shared-prefix engine spends 82-96% of its time in the decoder's weight GEMMs (benchmarks/RESULTS.md, the
`--profile` lines). This script times one GEMM of each of the simulator's weight shapes at the row counts the
engine feeds them, three ways, in the same process and threads:

- `F.linear`: what the engine runs (the weight as stored, [out, in], read transposed; MKL on the CPU);
- `mm, W^T stored`: the same product with the weight stored pre-transposed ([in, out], contiguous);
- `oneDNN packed`: the weight reordered once into oneDNN's blocked layout (`torch.ops.mkldnn`), as
  inductor's CPU freezing does; "-" where oneDNN cannot pack that dtype on this CPU (bf16 needs
  avx512-bf16 or avx-ne-convert).
- `inductor`: the layer through `torch.compile` with weight freezing for this one shape, which lets inductor
  choose its own kernel (MKL's packed sgemm in float32; oneDNN's, or with `--inductor max-autotune` its own
  C++ micro-kernels that use AMX, in bfloat16; `benchmarks/simbench/inductor.py`). "-" where it cannot
  compile (no C++ compiler; the reason on stderr); compile time is not counted. `--inductor off` skips it.

It prints GFLOP/s and each kernel's speed relative to `F.linear`, and a 2048-cube matmul as the machine's
reference peak; the CPU model heads the output. Shapes default to Qwen2.5-Coder-1.5B's (hidden 1536, MLP 8960,
key/value 256); the engine's suffix batches put 64 rows x ~16 tokens = ~1,000 rows through each layer, a
lone context's prefix ~50-150.

    python benchmarks/linear_kernels.py [--dtype float32 bfloat16] [--rows 16 64 256 1024] [--threads 2]
                                        [--inductor default|max-autotune|off]
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


def agrees(out, reference) -> bool:
    """`out` is the float32 `reference` product up to `out`'s rounding: no entry further from it than 4
    epsilons of `out`'s dtype (at least 1e-3, float32's summation-order noise over thousands of terms)
    times the reference's largest entry. Against float32 because two correct bf16 kernels round apart by
    an ulp of their outputs (~0.8%), which a comparison with F.linear's bf16 output would call wrong."""
    import torch

    tol = max(1e-3, 4 * torch.finfo(out.dtype).eps)
    return bool((out.float() - reference).abs().max() <= tol * reference.abs().max())


def checked_rate(fn, reference, flop: int, budget_s: float) -> float:
    """GFLOP/s of `fn`, inf if it computes something other than the float32 `reference` (a fast wrong
    kernel is no lead), nan if it cannot run here."""
    try:
        ok = agrees(fn(), reference)
    except (RuntimeError, AttributeError, NotImplementedError):
        return float("nan")
    return flop / per_call(fn, budget_s) / 1e9 if ok else float("inf")


def cell(rate: float, base: float) -> str:
    """A kernel's table cell: its rate and its ratio to `base`, or why there is none."""
    if rate != rate:
        return "-"
    if rate == float("inf"):
        return "wrong result"
    return f"{rate:.0f} ({rate / base:.2f}x)"


def main(argv=None) -> int:
    import torch
    import torch.nn.functional as F
    from simbench.inductor import MODES as INDUCTOR_MODES  # benchmarks/simbench, beside this script
    from simbench.inductor import compile_linear

    from harness.environment import cpu_description

    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    ap.add_argument("--rows", nargs="+", type=int, default=[16, 64, 256, 1024])
    ap.add_argument("--shapes", nargs="+", default=[f"{i}x{o}" for i, o in QWEN_1_5B],
                    help="weight shapes as IN x OUT features, e.g. 1536x8960")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    ap.add_argument("--inductor", default="default", choices=[*INDUCTOR_MODES, "off"],
                    help="torch.compile mode for the inductor column (off: skip it)")
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
        print("| in x out | rows | F.linear GFLOP/s | mm, W^T stored | oneDNN packed | inductor |")
        print("|---|---:|---:|---:|---:|---:|")
        for n_in, n_out in shapes:
            w = torch.randn(n_out, n_in, dtype=dtype) / n_in ** 0.5
            wt = w.t().contiguous()
            for rows in args.rows:
                x = torch.randn(rows, n_in, dtype=dtype)
                flop = 2 * rows * n_in * n_out
                compiled = None
                if args.inductor != "off":
                    torch._dynamo.reset()   # one layer at a time: the previous ones' graphs can go
                    layer = torch.nn.Linear(n_in, n_out, bias=False, dtype=dtype)
                    layer.weight.data = w
                    compiled = compile_linear(layer, args.inductor, rows)
                with torch.inference_mode():
                    reference = F.linear(x.float(), w.float())
                    lin = flop / per_call(lambda x=x, w=w: F.linear(x, w), args.seconds) / 1e9
                    mm = flop / per_call(lambda x=x, wt=wt: torch.mm(x, wt), args.seconds) / 1e9
                    try:
                        packed_w = torch.ops.mkldnn._reorder_linear_weight(w, rows)
                    except (RuntimeError, AttributeError):
                        packed_w = None
                    packed = float("nan") if packed_w is None else checked_rate(
                        lambda x=x, p=packed_w: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], ""),
                        reference, flop, args.seconds)
                    ind = float("nan") if compiled is None else checked_rate(
                        lambda x=x, c=compiled: c(x), reference, flop, args.seconds)
                print(f"| {n_in} x {n_out} | {rows} | {lin:.0f} | {cell(mm, lin)} | {cell(packed, lin)} "
                      f"| {cell(ind, lin)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
