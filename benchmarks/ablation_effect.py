"""How much deleting a set of latents moves last-position CE on a task: the denominator of recovery.

Recovery = (CE(latent_zero) - CE(simulated)) / (CE(latent_zero) - CE(coder)) is only bounded when deleting the
rewritten latents moves CE by more than its noise. This measures that denominator, with a bootstrap CI over
contexts, for several latent sets (random live latents, the most frequent ones, all of them) and numbers of
contexts, plus zeroing the hooked module's whole output, before a validation run is sized around it.

    python benchmarks/ablation_effect.py --task smollm2-135m-l8-offline --windows 540
    python benchmarks/ablation_effect.py --task smollm2-135m-l0-ce --windows 1650 --sizes 64 128 \
        -o benchmarks/ce_task/denominator.json

The last column, n for ±0.1, is the number of test contexts a recovery CI of half-width 0.1 needs by the delta
method, n = (1.96/0.1)² (SD_a² − 2Rρ SD_a SD_d + R² SD_d²) / D², at R = 0.5, SD_a = SD_d, for ρ = 0 and 0.5
(the CE-power study's baseline assumptions).

Contexts: the task's test windows, then activation-sample windows (T + 1 tokens each) up to `--windows`. No
simulator is loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="smollm2-135m-l8-offline")
    ap.add_argument("--override", action="append", default=None,
                    help="task overrides (default: for smollm2-135m-l8-offline the cascade validation's, "
                         "benchmarks/cascade_validation.py; none for other tasks)")
    ap.add_argument("-o", "--output", type=Path, default=None, help="also write the table as JSON here")
    ap.add_argument("--windows", type=int, default=540)
    ap.add_argument("--sizes", type=int, nargs="+", default=[160, 512])
    ap.add_argument("--draws", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    from cascade_validation import OVERRIDES  # benchmarks/, this script's folder, is first on sys.path

    from harness.data.prepare import prepare
    from harness.model.patch import Patcher
    from harness.task.inputs import TaskInputs
    from harness.task.spec import load_task

    torch.set_num_threads(args.threads)
    default = OVERRIDES if args.task == "smollm2-135m-l8-offline" else []
    spec = load_task(args.task, default if args.override is None else args.override)
    inputs = TaskInputs(spec, "cpu")
    prep = prepare(spec, inputs=inputs)
    coder = inputs.coder()
    model, _ = inputs.subject()
    fr = prep.table.fire_rate
    alive = np.flatnonzero(fr > 0)
    rng = np.random.default_rng(args.seed)
    sets: dict[str, np.ndarray] = {}
    for n in args.sizes:
        sets[f"{n} random live"] = np.sort(rng.choice(alive, n, replace=False))
        sets[f"{n} most frequent"] = np.sort(np.argsort(-fr, kind="stable")[:n])
    sets[f"all {coder.num_latents}"] = np.arange(coder.num_latents)
    windows = np.concatenate([prep.splits["test"], prep.splits["activation"]])[: args.windows]
    patcher = Patcher(model, spec.coder.hookpoint, spec.coder.kind)
    names = ["coder", "clean", "zero output"] + list(sets)
    ce: dict[str, list[np.ndarray]] = {k: [] for k in names}
    with torch.inference_mode():
        for s in range(0, len(windows), 60):
            ids = torch.from_numpy(windows[s:s + 60]).long()
            with patcher.prefix(ids[:, :-1]) as h:
                last = h.capture(ids[:, -1])
                z = coder.dense(*coder.encode(last.x))
                reps = [coder.decode_dense(z, last.x), last.y, torch.zeros_like(last.y)]
                for S in sets.values():
                    zz = z.clone()
                    zz[:, torch.as_tensor(S)] = 0
                    reps.append(coder.decode_dense(zz, last.x))
                out = h.ce_batch(reps, ids[:, -1]).double().numpy()
            for key, row in zip(names, out, strict=True):
                ce[key].append(row)
    arr = {k: np.concatenate(v) for k, v in ce.items()}
    ns = [n for n in (60, 120, 240, len(windows)) if n <= len(windows)]
    print(f"{spec.id} ({spec.coder.hookpoint}): CE(deleted) - CE(coder) at the last position, nats, mean "
          f"[95% bootstrap CI over contexts, {args.draws} draws, seed {args.seed}]; 'clean' is the model's own MLP "
          f"output, 'zero output' the MLP output set to 0 at that position\n")
    print("| deleted | share of firings | " + " | ".join(f"n = {n}" for n in ns) + " | SD | n for ±0.1 (ρ = 0 / 0.5) |")
    print("|---|---:|" + "---:|" * len(ns) + "---:|---:|")
    rows = []
    for k in ["clean", "zero output"] + list(sets):
        d = arr[k] - arr["coder"]
        share = f"{fr[sets[k]].sum() / fr.sum():.2f}" if k in sets else "-"
        cells, cis = [], {}
        for n in ns:
            b = np.random.default_rng(args.seed).integers(0, n, (args.draws, n))
            m = d[:n][b].mean(1)
            cis[n] = mean, lo, hi = float(d[:n].mean()), float(np.quantile(m, .025)), float(np.quantile(m, .975))
            cells.append(f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]")
        sd, mean = float(d.std(ddof=1)), float(d.mean())
        need = {rho: contexts_for_recovery(mean, sd, rho) for rho in (0.0, 0.5)}
        print(f"| {k} | {share} | " + " | ".join(cells) + f" | {sd:.3f} | {need[0.0]:,.0f} / {need[0.5]:,.0f} |")
        rows.append({"deleted": k, "share_of_firings": None if share == "-" else float(share), "sd": sd,
                     "mean_ci95_by_n": {str(n): v for n, v in cis.items()},
                     "contexts_for_recovery_pm_0.1": {"rho_0": need[0.0], "rho_0.5": need[0.5]}})
    if args.output is not None:
        import json

        from harness.io import sha256_file

        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({
            "task": spec.id, "task_hash": spec.hash, "hookpoint": spec.coder.hookpoint, "windows": int(len(windows)),
            "windows_from": "the task's test split, then its activation-sample split", "draws": args.draws,
            "seed": args.seed, "coder_sha256": sha256_file(inputs.coder_folder() / "sae.safetensors"),
            "quantity": "CE(deleted) - CE(coder) at the last position, nats", "rows": rows}, indent=1) + "\n")
    return 0


def contexts_for_recovery(D: float, sd: float, rho: float, R: float = 0.5, half: float = 0.1) -> float:
    """Delta-method n for a recovery CI of half-width `half`, with SD_a = SD_d = sd (the study's baseline)."""
    if D <= 0:
        return float("inf")
    return (1.96 / half) ** 2 * (sd ** 2 - 2 * R * rho * sd * sd + R ** 2 * sd ** 2) / D ** 2


if __name__ == "__main__":
    sys.exit(main())
