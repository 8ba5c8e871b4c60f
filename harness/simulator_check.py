"""`harness check-simulator`: can a task's simulator read explanations at all? Three tests, pass/fail each.

1. hand-written: the committed cases of `harness/simulate/check_cases.py` (lexical and semantic), each text scored against an
   explanation that fits its last token and one that does not. Pass: AUROC >= 0.85 and the fitting explanation
   scores higher on >= 80% of texts.
2. named-token: contexts from the task's detection pool (decoded with the *subject's* tokenizer, as `harness
   eval` does), explanations that name one token outright ('the token "of"'); per named token, AUROC of "the
   context ends in it". Pass: mean AUROC >= 0.80.
3. real-vs-shuffled: a real explanation set (default: the task's committed top-tokens baseline) against the same
   texts permuted across latents (a seeded derangement), on the task's detection split; per latent, the
   detection AUROC under each; pass: the paired difference's 95% bootstrap CI over latents lies above 0.

A simulator that ignores explanations scores the same on every explanation of a context: AUROC 0.5 on tests 1
and 2 and a difference of 0 on test 3. Every prediction goes through the prediction store, so a rerun is free.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import HarnessError

HANDWRITTEN_AUROC = 0.85
HANDWRITTEN_WINS = 0.80
NAMED_TOKEN_AUROC = 0.80


@dataclass
class CheckResult:
    name: str
    passed: bool
    summary: str                 # the figures, one line
    threshold: str               # what passing means
    detail: list[str]            # one line per case / token / latent


def _auroc(y, s) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, bool)
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def handwritten(sim, store_sim) -> CheckResult:
    from harness.simulate.base import SimContext
    from harness.simulate.check_cases import CASES
    from harness.simulate.prompt import prompt_score

    n = len(CASES)
    contexts = [SimContext(f"check-case:{i}:{c.text}\x00{c.last}", c.text, c.last) for i, c in enumerate(CASES)]
    explanations = [c.match for c in CASES] + [c.other for c in CASES]
    pairs = [(i, i) for i in range(n)] + [(i, n + i) for i in range(n)]
    probs, _ = store_sim.predict(contexts, explanations, pairs)
    s = prompt_score(sim.prompt_version, probs)
    auroc = _auroc(np.r_[np.ones(n), np.zeros(n)], s)
    wins = float(np.mean(s[:n] > s[n:]))
    detail = [f"{c.kind:8} {c.last!r:12} fits {s[i]:+7.2f}  other {s[n + i]:+7.2f}" for i, c in enumerate(CASES)]
    for kind in ("lexical", "semantic"):
        idx = [i for i, c in enumerate(CASES) if c.kind == kind]
        detail.append(f"{kind}: AUROC {_auroc(np.r_[np.ones(len(idx)), np.zeros(len(idx))], np.r_[s[idx], s[[n + i for i in idx]]]):.3f}")
    return CheckResult("hand-written pairs", auroc >= HANDWRITTEN_AUROC and wins >= HANDWRITTEN_WINS,
                       f"AUROC {auroc:.3f}, fitting explanation higher on {wins:.0%} of {n} texts",
                       f"AUROC >= {HANDWRITTEN_AUROC} and >= {HANDWRITTEN_WINS:.0%}", detail)


def named_token(prep, subject_tok, sim, store_sim, words: int = 6, per_word: int = 6, others: int = 24,
                seed: int = 0) -> CheckResult:
    from harness.simulate.prompt import prompt_score
    from harness.simulate.run import sim_contexts

    # Every scored position of the detection pool's blocks (never seen by an explanation method): enough
    # contexts that a few final tokens recur, whatever the task's calibration and test sizes.
    det, lo = prep.splits["detection"], prep.spec.min_position()
    ends = [(b, p) for b in range(len(det)) for p in range(lo, prep.spec.contexts.T)]
    # The subject's tokenizer made these ids; decoding them with the simulator's would give other text.
    last = [subject_tok.decode([int(det[b, p])]) for b, p in ends]
    common = [w for w, c in Counter(last).most_common(60) if c >= per_word and w.strip()]
    chosen = [w for w in common if w.strip().isalpha()][:words]
    chosen += [w for w in common if w not in chosen][: words - len(chosen)]
    if len(chosen) < 2:
        raise HarnessError(f"task {prep.spec.id}: fewer than 2 final tokens occur {per_word} times in its "
                           "detection pool; the named-token check needs a larger pool (contexts.detection_pool)")
    rng = np.random.default_rng(seed)
    sel: list[int] = []
    for w in chosen:
        sel += list(rng.choice([i for i, x in enumerate(last) if x == w], per_word, replace=False))
    rest = [i for i, x in enumerate(last) if x not in chosen]
    sel += list(rng.choice(rest, min(others, len(rest)), replace=False))
    contexts = sim_contexts(subject_tok, [det[ends[i][0], : ends[i][1] + 1] for i in sel])
    # The token alone: with four unrelated tokens listed beside it, Qwen2.5-Coder-1.5B's mean AUROC fell from
    # 0.95 to 0.59 on the mini task (docs/findings.md); the check asks for the easiest case.
    explanations = [f"the token {json.dumps(w.strip())}" for w in chosen]
    pairs = [(c, e) for c in range(len(sel)) for e in range(len(explanations))]
    probs, _ = store_sim.predict(contexts, explanations, pairs)
    s = prompt_score(sim.prompt_version, probs).reshape(len(sel), len(explanations))
    aurocs = [_auroc([last[i] == w for i in sel], s[:, e]) for e, w in enumerate(chosen)]
    mean = float(np.nanmean(aurocs))
    detail = [f"named token {w!r:>12}: AUROC {a:.3f}" for w, a in zip(chosen, aurocs, strict=True)]
    return CheckResult("named token", mean >= NAMED_TOKEN_AUROC,
                       f"mean AUROC {mean:.3f} over {len(chosen)} named tokens, {len(sel)} contexts",
                       f"mean AUROC >= {NAMED_TOKEN_AUROC}", detail)


def real_vs_shuffled(prep, subject_tok, sim, store_sim, explanations: dict[int, str], seed: int = 0,
                     max_latents: int = 16, n_boot: int = 10000) -> CheckResult:
    from harness.score.metrics import bootstrap_indices, mean_ci
    from harness.simulate.prompt import prompt_score
    from harness.simulate.run import sim_contexts

    rows_of = {int(j): r for r, j in enumerate(prep.rewritten)}
    latents = [j for j in (int(x) for x in prep.rewritten) if explanations.get(j)]
    rng = np.random.default_rng(seed)
    if len(latents) > max_latents:
        latents = sorted(int(x) for x in rng.choice(latents, max_latents, replace=False))
    if len(latents) < 4:
        raise HarnessError(f"real-vs-shuffled needs at least 4 explained rewritten latents, found {len(latents)}")
    while True:  # a derangement: no latent keeps its own explanation
        perm = rng.permutation(len(latents))
        if not np.any(perm == np.arange(len(latents))):
            break
    real = [explanations[j] for j in latents]
    shuffled = [real[p] for p in perm]
    texts = real + shuffled
    ctx_rows, pairs, labels = [], [], []
    det = prep.splits["detection"]
    for e, j in enumerate(latents):
        r = rows_of[j]
        for label, idx in ((1, prep.det_pos[r]), (0, prep.det_neg[r])):
            for i in idx[idx >= 0]:
                b, end = prep.det_contexts[int(i)]
                ctx_rows.append(det[b, : end + 1])
                c = len(ctx_rows) - 1
                pairs += [(c, e), (c, len(latents) + e)]
                labels.append((e, label))
    contexts = sim_contexts(subject_tok, ctx_rows)
    probs, _ = store_sim.predict(contexts, texts, pairs)
    s = prompt_score(sim.prompt_version, probs).reshape(-1, 2)
    a_real, a_shuf = np.full(len(latents), np.nan), np.full(len(latents), np.nan)
    lab = np.asarray(labels)
    for e in range(len(latents)):
        m = lab[:, 0] == e
        a_real[e], a_shuf[e] = _auroc(lab[m, 1], s[m, 0]), _auroc(lab[m, 1], s[m, 1])
    ok = np.isfinite(a_real) & np.isfinite(a_shuf)
    d = (a_real - a_shuf)[ok]
    e = mean_ci(d, bootstrap_indices(len(d), n_boot, seed))
    lo, hi = e.lo, e.hi
    detail = [f"latent {j:>6}: AUROC real {a:.3f}  shuffled {b:.3f}" for j, a, b in zip(latents, a_real, a_shuf, strict=True)]
    return CheckResult("real vs shuffled", bool(lo > 0),
                       f"detection AUROC real {np.nanmean(a_real):.3f}, shuffled {np.nanmean(a_shuf):.3f}, "
                       f"difference {d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] over {int(ok.sum())} latents",
                       "95% CI of the difference above 0", detail)


def default_explanations(spec) -> Path | None:
    p = Path("submissions") / spec.id / "top-tokens.json"
    return p if p.is_file() else None


def run_check(task: str, overrides=(), backend: str = "auto", device: str = "cpu", submission: str | None = None,
              only: tuple[str, ...] = ("hand-written", "named-token", "real-vs-shuffled"), seed: int = 0,
              console=None) -> list[CheckResult]:
    from harness.data.prepare import prepare
    from harness.io import cache_root
    from harness.simulate.run import load_simulator
    from harness.simulate.store import CachedSimulator, PredictionStore
    from harness.task.inputs import TaskInputs
    from harness.task.spec import load_task
    from harness.task.submission import load_submission

    spec = load_task(task, list(overrides))
    out: list[CheckResult] = []
    needs_task = any(k in only for k in ("named-token", "real-vs-shuffled"))
    inputs = TaskInputs(spec, device)
    prep = prepare(spec, inputs=inputs) if needs_task else None
    subject_tok = inputs.subject()[1] if prep is not None else None
    sim, _ = load_simulator(spec, backend, inputs.device)
    store_sim = CachedSimulator(sim, PredictionStore(cache_root() / "predictions.sqlite"))
    if "hand-written" in only:
        out.append(handwritten(sim, store_sim))
    if "named-token" in only:
        out.append(named_token(prep, subject_tok, sim, store_sim, seed=seed))
    if "real-vs-shuffled" in only:
        assert prep is not None  # needs_task is true here
        path = Path(submission) if submission else default_explanations(spec)
        if path is None:
            raise HarnessError(f"no explanations to test real-vs-shuffled on for {spec.id}: pass --submission FILE "
                               f"(e.g. one made by `harness explain --task {spec.id} --method top-tokens -o FILE`)")
        sub = load_submission(path, task_id=spec.id, num_latents=prep.num_latents,
                              max_chars=spec.simulator.max_explanation_chars)
        out.append(real_vs_shuffled(prep, subject_tok, sim, store_sim, sub.explanations, seed=seed))
    return out
