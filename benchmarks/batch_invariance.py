"""How much does a prediction depend on which other pairs share its batch? (issue 12, item 6)

Builds the tiny random task, then for each backend (plain, prefix) and dtype (float32, bfloat16) predicts
every (context, explanation) pair of a small grid twice: all pairs in one call (batched with varying
neighbours, lengths and padding), and each pair alone (batch of one). Prints the largest difference of the
expected value p̂ = Σ d·P(d) and of the digit probabilities, and the time of both ways.

    python benchmarks/batch_invariance.py [--contexts 12] [--explanations 6]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.cli import main
from harness.simulate import expected_value, make_simulator
from harness.simulate.run import sim_contexts


def run(n_ctx: int, n_expl: int) -> list[dict]:
    from harness.data.prepare import prepare
    from harness.io import cache_root
    from harness.model.load import load_model
    from harness.task.spec import load_task

    tmp = Path(tempfile.mkdtemp(prefix="batch-inv-"))
    os.environ["HARNESS_CACHE"] = str(tmp / "cache")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["make-tiny-task", "-o", str(tmp / "task")]) == 0
        spec = load_task(str(tmp / "task"))
        prep = prepare(spec)
    model, tok = load_model(spec.simulator_ref(), spec.folder, cache_root(), device="cpu")
    T = spec.contexts.T
    # Contexts of different lengths, so batches mix padding widths.
    rows = [prep.splits["test"][i, : T - (i % 5) * 3] for i in range(n_ctx)]
    contexts = sim_contexts(tok, rows)
    words = ["the", "numbers and digits", "a token after a comma in code", "", "names of people",
             "closing brackets ] and ) at the end of a line", "x"]
    explanations = [words[i % len(words)] for i in range(n_expl)]
    pairs = [(c, e) for c in range(n_ctx) for e in range(n_expl)]
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        # transformers' stubs type `to` for generation mixins only (as in harness/model/load.py).
        m = model.to(dtype)  # pyright: ignore[reportArgumentType]
        for backend in ("plain", "prefix"):
            sim = make_simulator(backend, m, tok, prompt_version=spec.simulator.prompt_version,
                                 max_chars=spec.simulator.max_explanation_chars, model_key="bench", batch_size=16)
            t0 = time.perf_counter()
            pb, _ = sim.predict(contexts, explanations, pairs)
            t_batched = time.perf_counter() - t0
            t0 = time.perf_counter()
            pa = np.concatenate([sim.predict(contexts, explanations, [p])[0] for p in pairs])
            t_alone = time.perf_counter() - t0
            # And batched again in reverse order: other neighbours, same pairs.
            pr, _ = sim.predict(contexts, explanations, pairs[::-1])
            pr = pr[::-1]
            ev = {k: expected_value(v).astype(np.float64) for k, v in (("b", pb), ("a", pa), ("r", pr))}
            out.append({
                "dtype": str(dtype).removeprefix("torch."), "backend": backend, "pairs": len(pairs),
                "max|ev batched-alone|": float(np.abs(ev["b"] - ev["a"]).max()),
                "max|ev batched-reversed|": float(np.abs(ev["b"] - ev["r"]).max()),
                "max|P batched-alone|": float(np.abs(pb - pa).max()),
                "bit-identical to alone": f"{int((pb == pa).all(axis=1).sum())}/{len(pairs)}",
                "ev spread (std)": float(ev["b"].std()),
                "seconds batched": round(t_batched, 2), "seconds alone": round(t_alone, 2),
            })
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    ap.add_argument("--contexts", type=int, default=12)
    ap.add_argument("--explanations", type=int, default=6)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("HARNESS_THREADS", "1")))
    rows = run(a.contexts, a.explanations)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
