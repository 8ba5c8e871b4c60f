"""Can a task's simulator read an explanation at all? The easiest case, measured.

Explanations that name the marked token outright ('the tokens "river", "however", ",", "Paris", "function"')
against contexts that end in that token or not: any simulator worth using separates them almost perfectly
(AUROC near 1). Contexts are the task's calibration + test windows; the most frequent final tokens that occur
at least `--min-count` times become the named tokens, `--per-word` contexts each, plus `--others` contexts
ending elsewhere, every context scored against every explanation (one prefix per context). Prints AUROC per
named token, their mean, and the digits' share of the next-token probability.

    python benchmarks/simulator_sanity.py --task smollm2-135m-l8-offline-mini

About a minute on 2 CPU cores for SmolLM2-135M.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FILLERS = ["river", "however", "Paris", "function", "seven", "blue", "while", "data"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="smollm2-135m-l8-offline-mini")
    ap.add_argument("--words", type=int, default=8, help="at most this many named tokens")
    ap.add_argument("--min-count", type=int, default=8)
    ap.add_argument("--per-word", type=int, default=8)
    ap.add_argument("--others", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="prefix")
    ap.add_argument("--override", action="append", default=[])
    args = ap.parse_args(argv)

    import torch
    from sklearn.metrics import roc_auc_score

    from harness.evaluate import load_simulator, sim_contexts
    from harness.prepare import prepare
    from harness.simulate.base import expected_value
    from harness.tasks import load_task

    spec = load_task(args.task, args.override)
    prep = prepare(spec)
    sim, ref = load_simulator(spec, args.backend, torch.device("cpu"))
    tok = sim.tokenizer
    T = spec.contexts.T
    rows = np.concatenate([prep.splits["calibration"], prep.splits["test"]])[:, :T]
    last = [tok.decode([int(t)]) for t in rows[:, -1]]
    words = [w for w, c in Counter(last).most_common(40) if c >= args.min_count and w.strip()][: args.words]
    rng = np.random.default_rng(args.seed)
    sel = []
    for w in words:
        sel += list(rng.choice([i for i, x in enumerate(last) if x == w], args.per_word, replace=False))
    sel += list(rng.choice([i for i, x in enumerate(last) if x not in words], args.others, replace=False))
    sel = np.asarray(sel)
    contexts = sim_contexts(tok, list(rows[sel]))
    explanations = []
    for w in words:
        fill = [f for f in FILLERS if f != w.strip()][:4]
        listed = fill[:2] + [w.strip()] + fill[2:]
        explanations.append("the tokens " + ", ".join(f'"{t}"' for t in listed))
    pairs = [(c, e) for c in range(len(sel)) for e in range(len(explanations))]
    t0 = time.time()
    probs, mass = sim.predict(contexts, explanations, pairs)
    ev = expected_value(probs).reshape(len(sel), len(explanations))
    aurocs = [roc_auc_score([last[i] == w for i in sel], ev[:, e]) for e, w in enumerate(words)]
    print(f"simulator {ref.describe()} ({spec.simulator.model.get('dtype', 'float32')}), prompt {spec.simulator.prompt_version}, "
          f"{len(pairs)} predictions in {time.time() - t0:.0f} s")
    for w, a in zip(words, aurocs):
        print(f"  named token {w!r:>10}: AUROC {a:.3f}")
    print(f"mean AUROC {np.mean(aurocs):.3f} over {len(words)} named tokens; digit mass {mass.mean():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
