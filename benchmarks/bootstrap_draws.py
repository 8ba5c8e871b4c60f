"""How many bootstrap draws make a 95% CI endpoint stable across seeds?

For every bootstrap interval a result reports from per-context CE arrays (mean ΔCE of each headline
condition, the paired mean difference simulated − latent zero, the recovery denominator), and for each
number of draws B, the CI is recomputed with 10 scoring seeds. Medians are shown too, with a percentile
bootstrap, to show why the harness gives them a seed-free order-statistic interval instead: their
bootstrap endpoints jump between neighbouring order statistics and settle far more slowly. "Movement" is the range of
an endpoint over the 10 seeds (max − min), divided by the CI's half-width at B = 50 000 (a stand-in for
the exact bootstrap CI). The default `bootstrap` must keep the worst movement under 0.1.

Run: `python benchmarks/bootstrap_draws.py [SIDE.npz ...]` (default: the committed mini-task side files).
The table in docs/protocol.md (Intervals) is this script's output.
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import numpy as np

from harness.result import Interval
from harness.score.metrics import bootstrap_indices, mean_ci


def median_bootstrap(x, boot):
    """The percentile bootstrap the harness no longer uses for medians (for comparison only)."""
    stats = np.median(x[boot], axis=1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return Interval(float(np.median(x)), float(lo), float(hi))

DRAWS = (1000, 2000, 5000, 10000, 20000)
SEEDS = range(10)
REFERENCE = 50_000


def quantities(side: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    clean = side["ce_clean"]
    q = {}
    for cond, key in (("simulated", "ce_simulated__quantile__all"), ("latent_zero", "ce_latent_zero__all"),
                      ("coder", "ce_coder"), ("zero_output", "ce_zero_output")):
        if key in side and np.isfinite(side[key]).all():
            q[f"ΔCE {cond}"] = side[key] - clean
    q["sim − zero"] = side["ce_simulated__quantile__all"] - side["ce_latent_zero__all"]
    q["recovery denominator"] = side["ce_latent_zero__all"] - side["ce_coder"]
    return q


def movement(x: np.ndarray, stat, n_boot: int, half_width: float) -> float:
    ends = np.array([[getattr(stat(x, bootstrap_indices(len(x), n_boot, s)), e) for e in ("lo", "hi")]
                     for s in SEEDS])
    return float((ends.max(0) - ends.min(0)).max() / half_width) if half_width > 0 else 0.0


def main(paths: list[str]) -> None:
    paths = paths or sorted(glob.glob("results/smollm2-135m-l8-offline-mini/*.per_context.npz"))
    worst = {b: 0.0 for b in DRAWS}
    worst_median = {b: 0.0 for b in DRAWS}
    print(f"{'file':40s} {'quantity':22s} {'stat':6s} " + " ".join(f"B={b:<6d}" for b in DRAWS))
    for p in paths:
        with np.load(p) as z:
            side = {k: z[k] for k in z.files}
        for name, x in quantities(side).items():
            for sname, stat in (("mean", mean_ci), ("median", median_bootstrap)):
                if name in ("sim − zero", "recovery denominator") and sname == "median":
                    continue
                ref = stat(x, bootstrap_indices(len(x), REFERENCE, 12345))
                hw = (ref.hi - ref.lo) / 2
                row = [movement(x, stat, b, hw) for b in DRAWS]
                w = worst if sname == "mean" else worst_median
                for b, m in zip(DRAWS, row, strict=True):
                    w[b] = max(w[b], m)
                print(f"{Path(p).name[:40]:40s} {name:22s} {sname:6s} " + " ".join(f"{m:8.3f}" for m in row))
    print("worst movement / half-width, means (bootstrap in the harness): "
          + ", ".join(f"B={b}: {worst[b]:.3f}" for b in DRAWS))
    print("worst movement / half-width, medians by bootstrap (the harness uses order statistics): "
          + ", ".join(f"B={b}: {worst_median[b]:.3f}" for b in DRAWS))
    ok = [b for b in DRAWS if worst[b] < 0.1]
    print(f"smallest B with every mean's endpoint moving < 0.1 half-width over {len(SEEDS)} seeds: "
          f"{ok[0] if ok else f'> {DRAWS[-1]}'}")


if __name__ == "__main__":
    main(sys.argv[1:])
