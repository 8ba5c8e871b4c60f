"""Which SmolLM2 MLP matters at a single position: mean ΔCE of zeroing each layer's MLP output there.

The offline task scores the next token after the last position of short held-out windows, with the coder
patched at that position only; a layer whose MLP output barely changes that prediction cannot give a task
statistical power however good the explanations. This measures, for every layer, CE(MLP output of the
last position set to 0) − CE(clean) over `--contexts` random held-out windows of T+1 tokens (seeded), the
measurement behind the choice of layer 8 (table in tasks/smollm2-135m-l8-offline/README.md).

    python -m harness.build.layer_sweep --corpus tasks/smollm2-135m-l8-offline/corpus.npz

A few minutes on 2 CPU cores (float32): each window's first T-1 positions run once, every layer's
condition reruns only the last position.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch


def windows(tokens: np.ndarray, start: int, n: int, T: int, seed: int) -> np.ndarray:
    """n distinct, aligned blocks of T+1 tokens from tokens[start:] (seeded)."""
    blocks = (len(tokens) - start) // (T + 1)
    pick = np.random.default_rng(seed).choice(blocks, n, replace=False)
    return np.stack([tokens[start + b * (T + 1): start + (b + 1) * (T + 1)] for b in pick]).astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True, help="corpus.npz with `tokens` and `eval_start`")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness")))
    ap.add_argument("--contexts", type=int, default=600)
    ap.add_argument("--T", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from harness.build.smollm2_task import load_subject
    from harness.io import progress
    from harness.model.patch import last_position_ce

    console = Console(stderr=True, highlight=False)
    model, _ = load_subject(args.cache, console)
    with np.load(args.corpus) as z:
        tokens, eval_start = z["tokens"], int(z["eval_start"])
    ids = windows(tokens, eval_start, args.contexts, args.T, args.seed)
    layers = len(model.model.layers)
    def zero(last):
        return torch.zeros_like(last.y)

    conditions = {"clean": None, **{str(layer): (f"layers.{layer}.mlp", zero) for layer in range(layers)}}
    with progress() as prog:
        t = prog.add_task(f"{len(ids)} windows x {len(conditions)} conditions", total=len(ids))
        ce = last_position_ce(model, ids, conditions, batch_size=100, progress=lambda n: prog.update(t, completed=n))
    clean = ce["clean"]
    table = Table(title=f"ΔCE of zeroing one MLP at the last position ({args.contexts} held-out windows, T={args.T})")
    for c in ("layer", "mean ΔCE", "s.e.", "median ΔCE"):
        table.add_column(c, justify="right")
    for layer in range(layers):
        d = ce[str(layer)] - clean
        table.add_row(str(layer), f"{d.mean():+.4f}", f"{d.std() / np.sqrt(len(d)):.4f}", f"{np.median(d):+.4f}")
    console.print(f"clean mean CE {clean.mean():.4f}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
