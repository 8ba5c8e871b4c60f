"""Cascade simulation validated against an exhaustive run on a seeded subset of a task (issue 13).

Two steps, both resumable:

    # 0. Baseline explanations for the task's rewritten latents, and a seeded subset of them
    harness explain --task smollm2-135m-l8-offline --method top-tokens -o /tmp/top-tokens.json --override ...
    python benchmarks/cascade_validation.py subset --source /tmp/top-tokens.json --n 128 --seed 0
    # 1. Fill the prediction store with every exhaustive prediction, a bounded slice per call (run it under
    #    a lock and repeat until it reports nothing left; each finished chunk is permanent in the store).
    python benchmarks/cascade_validation.py simulate --minutes 9 [--task ... --explanations ... --override ...]
    # 2. Score the exhaustive run and cascades at several M from the store alone (no simulator is loaded:
    #    a pair missing from the store is an error), compare each metric with the exhaustive 95% CI, measure
    #    the first-stage rankers, write the table, plot and summary.
    python benchmarks/cascade_validation.py report --out benchmarks/cascade

The subset is set with the same `--override`s as `harness eval` (defaults below: the one measured in
benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

TASK = "smollm2-135m-l8-offline"
OVERRIDES = ['latents.rewritten={count=160, rule="random-alive", seed=0, min_fire_rate=0.02}',
             "contexts.calibration=40", "contexts.test=60", "contexts.detection_positive=4",
             "contexts.detection_negative=4", "contexts.detection_pool=600"]
# The subset scored is the submission's: all 160 rewritten latents (`subset --n 160 --seed 0`; the first
# run scored 32 of them, benchmarks/RESULTS.md, Cascade, says why and what changed).
EXPLANATIONS = ROOT / "benchmarks" / "cascade" / "top-tokens-160.json"
TOPS = (1, 2, 4, 8, 16)
# Every exhaustive prediction of the subset, exported from the store (`export`; `import` restores them).
PREDICTIONS = ROOT / "benchmarks" / "cascade" / "predictions.npz"
SAMPLE = 0.02


def _setup(args):
    from harness.data.prepare import prepare
    from harness.task.inputs import TaskInputs
    from harness.task.spec import load_task
    from harness.task.submission import coverage, load_submission

    spec = load_task(args.task, args.override)
    inputs = TaskInputs(spec, "cpu")
    sub = load_submission(Path(args.explanations), task_id=spec.id, num_latents=inputs.num_latents(),
                          max_chars=spec.simulator.max_explanation_chars)
    prep = prepare(spec, inputs=inputs)
    latents = np.asarray(coverage(sub, prep.rewritten)[0], np.int64)
    return spec, sub, prep, latents, inputs


def cmd_subset(args) -> int:
    """A seeded subset of a submission's latents (a smaller subset costs no new preparation: the task's
    hash, and so its prepared cache, stay the same; `harness eval` scores the latents a submission covers)."""
    sub = json.loads(Path(args.source).read_text())
    keys = sorted(sub["explanations"], key=int)
    pick = sorted(np.random.default_rng(args.seed).choice(len(keys), args.n, replace=False))
    sub["explanations"] = {keys[i]: sub["explanations"][keys[i]] for i in pick}
    sub["description"] += f"; {args.n} of its {len(keys)} latents drawn with numpy default_rng({args.seed})"
    Path(args.explanations).parent.mkdir(parents=True, exist_ok=True)
    Path(args.explanations).write_text(json.dumps(sub, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.explanations}: {args.n} of {len(keys)} latents")
    return 0


def _workload(args):
    """The subset's exhaustive workload: (spec, contexts, explanations, groups of (context, explanation) pairs,
    n scored contexts, n detection pairs), detection contexts built as simulate_all builds them, so the final
    run finds every pair in the store."""
    from harness.simulate.run import sim_contexts

    spec, sub, prep, latents, inputs = _setup(args)
    tok = inputs.subject()[1]
    T = spec.contexts.T
    ctx = (sim_contexts(tok, list(prep.splits["calibration"][:, :T]))
           + sim_contexts(tok, list(prep.splits["test"][:, :T])))
    row_of = {int(j): r for r, j in enumerate(prep.rewritten)}
    rows = np.asarray([row_of[int(j)] for j in latents])
    pos, neg = prep.det_pos[rows], prep.det_neg[rows]
    det_pairs = []
    det_ctx = []
    for e in range(len(latents)):
        for r in list(pos[e][pos[e] >= 0]) + list(neg[e][neg[e] >= 0]):
            b, p = prep.det_contexts[int(r)]
            det_ctx.append(sim_contexts(tok, [prep.splits["detection"][b, : p + 1]])[0])
            det_pairs.append((len(ctx) + len(det_ctx) - 1, e))
    explanations = [sub.explanations[int(j)] for j in latents]
    m = len(latents)
    # Detection pairs are one per context: slices of 32 keep each step short, so --minutes is honoured.
    groups = ([[(c, e) for e in range(m)] for c in range(len(ctx))]
              + [det_pairs[i:i + 32] for i in range(0, len(det_pairs), 32)])
    return spec, ctx + det_ctx, explanations, groups, len(ctx), len(det_pairs)


def _keys(contexts, explanations, pairs):
    from harness.simulate.base import explanation_sha

    shas = [explanation_sha(x) for x in explanations]
    return [(shas[e], contexts[c].context_id) for c, e in pairs]


def cmd_simulate(args) -> int:
    """Exhaustive predictions for the subset, context by context, stopping after `--minutes`."""
    import torch

    from harness.io import cache_root
    from harness.simulate.run import load_simulator
    from harness.simulate.store import CachedSimulator, PredictionStore

    torch.set_num_threads(args.threads)
    spec, contexts, explanations, groups, n_ctx, n_det = _workload(args)
    store = PredictionStore(cache_root() / "predictions.sqlite")
    t0 = time.time()
    cached = None
    done = 0
    model_key, pv = spec.simulator_ref().key(), spec.simulator.prompt_version
    for gi, pairs in enumerate(groups):
        keys = _keys(contexts, explanations, pairs)
        found = store.get_many(model_key, pv, keys)
        if len(found) == len(set(keys)):
            done += 1
            continue
        if time.time() - t0 > args.minutes * 60:
            print(f"stopping after {args.minutes} min: {done}/{len(groups)} context groups complete; run again")
            return 3
        if cached is None:
            sim, _ = load_simulator(spec, "prefix", torch.device("cpu"))
            cached = CachedSimulator(sim, store)
            print(f"simulator loaded in {time.time() - t0:.0f}s", flush=True)
        t1 = time.time()
        cached.predict(contexts, explanations, pairs)
        done += 1
        n_new = len(set(keys)) - len(found)
        print(f"group {gi + 1}/{len(groups)}: {n_new} predictions in {time.time() - t1:.1f}s "
              f"({n_new / max(time.time() - t1, 1e-9):.1f}/s)", flush=True)
    print(f"all {len(groups)} groups are in the store ({len(explanations)} latents x {n_ctx} contexts + "
          f"{n_det} detection pairs)")
    return 0


def cmd_export(args) -> int:
    """The subset's exhaustive predictions from the store into one committed file (`import` puts them back, so
    `report` runs on a fresh clone without the simulator)."""
    from harness.io import cache_root, save_npz
    from harness.simulate.store import PredictionStore

    spec, contexts, explanations, groups, _, _ = _workload(args)
    keys = list(dict.fromkeys(k for pairs in groups for k in _keys(contexts, explanations, pairs)))
    model_key, pv = spec.simulator_ref().key(), spec.simulator.prompt_version
    found = PredictionStore(cache_root() / "predictions.sqlite").get_many(model_key, pv, keys)
    if len(found) != len(keys):
        print(f"{len(keys) - len(found)} of {len(keys)} predictions are not in the store: run `simulate` first")
        return 2
    save_npz(Path(args.predictions), explanation_sha256=np.asarray([k[0] for k in keys]),
             context_id=np.asarray([k[1] for k in keys]), probs=np.stack([found[k][0] for k in keys]),
             answer_mass=np.asarray([found[k][1] for k in keys], np.float32),
             model_key=np.asarray(model_key), prompt_version=np.asarray(pv), task_hash=np.asarray(spec.hash))
    print(f"wrote {args.predictions}: {len(keys):,} predictions")
    return 0


def cmd_import(args) -> int:
    from harness.io import cache_root
    from harness.simulate.store import PredictionStore

    with np.load(args.predictions) as z:
        shas, ctx_ids, probs, mass = z["explanation_sha256"], z["context_id"], z["probs"], z["answer_mass"]
        model_key, pv = str(z["model_key"]), str(z["prompt_version"])
    PredictionStore(cache_root() / "predictions.sqlite").put_many(
        model_key, pv, zip(shas.tolist(), ctx_ids.tolist(), probs, mass.tolist(), strict=True))
    print(f"imported {len(shas):,} predictions into {cache_root() / 'predictions.sqlite'} ({model_key}, {pv})")
    return 0


class StoreOnlySimulator:
    """Answers from the prediction store only: scoring runs never load the LLM, and a missing pair is an error."""

    name = "store-only"

    def __init__(self, model_key: str, prompt_version: str):
        self.model_key = model_key
        self.prompt_version = prompt_version
        self.n_missing = 0

    def predict(self, contexts, explanations, pairs, progress=None):
        from harness.errors import HarnessError

        raise HarnessError(f"{len(pairs)} predictions are not in the store: run the `simulate` step first")


def run_eval(args, cascade, results_dir: Path):
    import harness.pipeline as ev
    from harness.pipeline import EvalConfig, evaluate
    from harness.score.conditions import ALL

    def store_only(spec, *a, **k):
        ref = spec.simulator_ref()
        return StoreOnlySimulator(ref.key(), spec.simulator.prompt_version), ref

    ev.load_simulator = store_only
    # The full-set conditions only: every compared number comes from them, and the partial-rewriting subsets
    # (72 of the 76 conditions) would cost ~20x the patching time on a shared 2-core machine. Result files
    # written here therefore lack the partial-rewriting curve.
    ev.choose_subsets = lambda latents, fractions, scores, seed: {ALL: latents}
    cfg = EvalConfig(task=args.task, submission=Path(args.explanations), backend="store-only", device="cpu",
                     results_dir=results_dir, overrides=list(args.override),
                     command="benchmarks/cascade_validation.py report", cascade=cascade)
    result, path = evaluate(cfg)
    return result, path


def per_latent_ci(values, draws: int, seed: int):
    from harness.score.metrics import bootstrap_indices, mean_ci

    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return None
    return _plain(mean_ci(v, bootstrap_indices(len(v), draws, seed)))


def ranking_auroc(side: Path) -> np.ndarray:
    """Per latent: AUROC of its test-context predictions against whether it truly fires there (NaN where the
    latent fires on none or all test contexts). Unlike detection AUROC this sees the cascade's filled pairs."""
    from harness.score.metrics import detection_scores

    z = np.load(side)
    pred, true = z["pred_test"], z["true_test"] > 0
    out = np.full(pred.shape[1], np.nan)
    for e in range(pred.shape[1]):
        p, q = pred[true[:, e], e], pred[~true[:, e], e]
        if len(p) and len(q):
            out[e] = detection_scores(p[None, :], q[None, :], threshold=0.0)[0][0]
    return out


def metrics_of(result, side: Path, draws: int, seed: int) -> dict:
    h, pl = result.headline, result.per_latent
    return {
        "recovery": _plain(h.recovery),
        "delta_ce_median": _plain(h.delta_ce_median),
        "delta_ce_mean": _plain(h.delta_ce_mean),
        "sensitivity": per_latent_ci(pl.sensitivity, draws, seed),
        "specificity": per_latent_ci(pl.specificity, draws, seed),
        "ranking_auroc": per_latent_ci(ranking_auroc(side), draws, seed),
        "detection_auroc": per_latent_ci(pl.auroc, draws, seed),
    }


METRICS = ("recovery", "delta_ce_median", "delta_ce_mean", "sensitivity", "specificity", "ranking_auroc",
           "detection_auroc")


def _plain(x):
    """An Interval as a plain {value, lo, hi} dict (NaN bounds as None)."""
    d = x.to_dict()
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


def _plain_error(e) -> dict:
    """A cascade error estimate as plain JSON (its intervals' NaN bounds as None)."""
    return e.to_dict() | {"matter_rate": _plain(e.matter_rate), "missed": _plain(e.missed)}


def ranker_recall(args, prep, latents, sub, inputs, exhaustive_side: Path, tops) -> dict:
    """Per ranker and M: the share of pairs that matter in the exhaustive run (calibrated value > 0) that
    land in the top M of their context. Uses the exhaustive predictions only to *measure* the rankers."""
    from harness.io import cache_root
    from harness.score.calibrate import calibrate
    from harness.simulate.cascade import first_stage_scores
    from harness.simulate.run import sim_contexts
    from harness.task.cascade import RANKERS

    tok = inputs.subject()[1]
    T = prep.spec.contexts.T
    ctx = [c for split in ("calibration", "test") for c in sim_contexts(tok, list(prep.splits[split][:, :T]))]
    z = np.load(exhaustive_side)
    pc, pt = z["pred_calibration"], z["pred_test"]
    matters = np.vstack([calibrate("quantile", pc, pc, prep.table, latents) > 0,
                         calibrate("quantile", pc, pt, prep.table, latents) > 0])
    explanations = [sub.explanations[int(j)] for j in latents]
    out = {}
    for r in RANKERS:
        s = first_stage_scores(r, explanations, [c.last_token for c in ctx], [c.text for c in ctx],
                               prep.table.fire_rate[latents], cache_root())
        order = np.argsort(-s, axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(s.shape[1])[None, :].repeat(len(s), 0), axis=1)
        out[r] = {int(M): float((matters & (rank < M)).sum() / max(matters.sum(), 1)) for M in tops}
    out["n_matter"] = int(matters.sum())
    out["n_pairs"] = int(matters.size)
    return out


def error_check(prep, latents, sub, inputs, exhaustive_side: Path, tops, samples, seeds: int) -> list[dict]:
    """The cascade's error estimate against the truth over `seeds` random samples per (M, sample rate), from
    the exhaustive predictions alone (no patching: the estimate reads only predictions and the selection).
    Truth: test pairs the cascade did not simulate whose exhaustive calibrated value is > 0."""
    from harness.simulate.cascade import (
        Selection,
        error_estimate,
        matter_counts,
        matter_probabilities,
        plan_for,
    )
    from harness.simulate.run import scored_contexts
    from harness.task.cascade import CascadeSettings

    with np.load(exhaustive_side) as z:
        pc, pt, matter = z["pred_calibration"], z["pred_test"], z["sim_values__quantile"] > 0
    c = len(pc)
    counts2 = matter_counts(prep.table, latents, c)
    scored = scored_contexts(prep, inputs.subject()[1])
    explanations = [sub.explanations[int(j)] for j in latents]
    rows = []
    for M in tops:
        for rate in samples:
            est, lo, hi, true = [], [], [], []
            for seed in range(seeds):
                sel = plan_for(CascadeSettings(top=int(M), sample=rate, seed=seed), prep, scored, explanations,
                               latents).selection
                probs = matter_probabilities(pc, pt, sel, counts2)
                e = error_estimate(probs[c:], Selection(sel.selected[c:], sel.sampled[c:])).missed
                est.append(e.value)
                lo.append(e.lo)
                hi.append(e.hi)
                true.append(int((matter & ~sel.simulated[c:]).sum()))
            est_a, true_a = np.asarray(est), np.asarray(true)
            rows.append({"top": int(M), "sample": rate, "seeds": seeds,
                         "seed0": {"value": est[0], "lo": lo[0], "hi": hi[0], "true": true[0]},
                         "mean_estimate": float(est_a.mean()), "mean_true": float(true_a.mean()),
                         "ratio": float(est_a.mean() / max(true_a.mean(), 1e-12)),
                         "coverage": float(np.mean((np.asarray(lo) <= true_a) & (true_a <= np.asarray(hi))))})
    return rows


def cmd_report(args) -> int:
    from harness.task.cascade import CascadeSettings

    out = Path(args.out)
    results_dir = out / "results"
    spec, sub, prep, latents, inputs = _setup(args)
    sc = spec.scoring
    exh, exh_path = run_eval(args, None, results_dir)
    exh_side = exh_path.with_name(exh_path.stem + ".per_context.npz")
    base = metrics_of(exh, exh_side, sc.bootstrap, sc.seed)
    n_exh = exh.provenance.n_predictions
    recall = ranker_recall(args, prep, latents, sub, inputs, exh_side, sorted(set(args.tops) | {16}))
    check = error_check(prep, latents, sub, inputs, exh_side, args.error_tops, args.error_samples, args.error_seeds)
    # The truth the error estimate guesses at: exhaustive test pairs that matter (calibrated value > 0).
    with np.load(exh_side) as z:
        matter_test = z["sim_values__quantile"] > 0
    rows = []
    for cal, M in [(cal, M) for cal in args.calibrations for M in args.tops]:
        cas = CascadeSettings(top=int(M), sample=args.sample, seed=args.seed, ranker=args.ranker, calibration=cal)
        res, path = run_eval(args, cas, results_dir)
        side = path.with_name(path.stem + ".per_context.npz")
        met = metrics_of(res, side, sc.bootstrap, sc.seed)
        inside = {}
        for k in METRICS:
            b, v = base[k], met[k]
            inside[k] = (None if b is None or v is None or b["lo"] is None or b["hi"] is None
                         or v["value"] is None else bool(b["lo"] <= v["value"] <= b["hi"]))
        c = res.cascade
        assert c is not None, "a cascade run's result has a cascade section"
        with np.load(side) as z:
            filled = z["pred_test"] == np.float32(c.fill_score)
        rows.append({"top": int(M), "calibration": cal, "n_llm_predictions": c.n_llm_predictions, "saving": c.saving,
                     "saving_pairs": c.n_pairs / max(c.n_simulated, 1), "n_detection": c.n_detection,
                     "n_simulated_pairs": c.n_simulated, "n_pairs": c.n_pairs,
                     "error": {k: _plain_error(v) for k, v in c.error.items()},
                     "test_missed_true": int((matter_test & filled).sum()),
                     "metrics": met, "inside_exhaustive_ci": inside})
    summary = {"task": spec.id, "task_hash": spec.hash, "overrides": list(args.override),
               "explanations": {"path": _rel(args.explanations), "sha256": sub.sha256, "method": sub.method},
               "n_latents": int(len(latents)), "n_calibration": int(len(prep.splits["calibration"])),
               "n_test": int(len(prep.splits["test"])), "exhaustive_predictions": n_exh,
               "exhaustive": base, "exhaustive_test_pairs_matter": int(matter_test.sum()), "ranker": args.ranker, "sample": args.sample, "seed": args.seed,
               "ranker_recall": recall, "cascades": rows, "error_check": check,
               "simulator": exh.simulator.to_dict(), "bootstrap": {"draws": sc.bootstrap, "seed": sc.seed}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False, default=_nan) + "\n")
    text = table_md(summary)
    (out / "table.md").write_text(text)
    print(text)
    plot(summary, out / "cascade.png")
    print(f"wrote {out / 'summary.json'} and {out / 'cascade.png'}")
    return 0


def _rel(path) -> str:
    """A path inside the repository as written relative to it, so the summary reads the same in any clone."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def _nan(x):
    raise TypeError(f"cannot serialise {type(x).__name__}")


def _est(e) -> str:
    if e is None:
        return "n/a"
    return f"{e['value']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}]" if e["lo"] is not None else f"{e['value']:.3f} [unbounded]"


def table_md(s: dict) -> str:
    """The validation table (Markdown): every metric's exhaustive value with its 95% CI, each cascade's value
    marked inside (✓) or outside (✗) that CI, or ? where the exhaustive CI is unbounded or missing."""
    short = {"recovery": "recovery", "delta_ce_median": "ΔCE median", "delta_ce_mean": "ΔCE mean",
             "sensitivity": "sens.", "specificity": "spec.", "ranking_auroc": "ranking AUROC",
             "detection_auroc": "det. AUROC"}
    out = [f"{s['n_latents']} latents x ({s['n_calibration']} calibration + {s['n_test']} test) contexts + "
           f"detection; exhaustive: {s['exhaustive_predictions']:,} predictions. Ranker `{s['ranker']}`, "
           f"sample {s['sample']:g}, seed {s['seed']}.", "",
           "| M | calibration | LLM predictions | fewer (cal+test / all) | " + " | ".join(short[k] for k in METRICS)
           + " | test pairs missed: est. [95% CI] / true |",
           "|---|---|---|---|" + "---|" * len(METRICS) + "---|",
           "| exhaustive | - | " + f"{s['exhaustive_predictions']:,} | 1.0x / 1.0x | "
           + " | ".join(_est(s["exhaustive"][k]) for k in METRICS)
           + f" | 0 (of {s.get('exhaustive_test_pairs_matter', 'n/a')} that matter) |"]
    for r in s["cascades"]:
        cells = []
        for k in METRICS:
            v, ok = r["metrics"][k], r["inside_exhaustive_ci"][k]
            cells.append("n/a" if v is None else f"{v['value']:.3f} {'✓' if ok else '✗' if ok is False else '?'}")
        e = r["error"]["test"]["missed"]
        out.append(f"| {r['top']} | {r.get('calibration', 'fill')} | {r['n_llm_predictions']:,} | {r['saving_pairs']:.1f}x / {r['saving']:.1f}x | "
                   + " | ".join(cells) + f" | {e['value']:.1f} [{e['lo']:.1f}, {e['hi']:.1f}] / "
                   f"{r.get('test_missed_true', 'n/a')} |")
    if s.get("error_check"):
        n = s["error_check"][0]["seeds"]
        out += ["", f"Error estimate against the truth (test pairs not simulated that matter in the exhaustive run), "
                f"ranker `{s['ranker']}`, weighted calibration; seed 0, and over seeds 0-{n - 1} of the random sample:",
                "", "| M | sample | seed 0: estimate [95% CI] | seed 0: true | mean estimate | mean true | ratio | "
                "true inside the CI |", "|---|---|---|---|---|---|---|---|"]
        for r in s["error_check"]:
            e = r["seed0"]
            out.append(f"| {r['top']} | {r['sample']:g} | {e['value']:.0f} [{e['lo']:.0f}, {e['hi']:.0f}] | "
                       f"{e['true']} | {r['mean_estimate']:.0f} | {r['mean_true']:.0f} | {r['ratio']:.2f} | "
                       f"{r['coverage']:.0%} of {n} |")
    rec = s["ranker_recall"]
    tops = list(next(v for v in rec.values() if isinstance(v, dict)))
    out += ["", f"First-stage recall: share of the {rec['n_matter']} of {rec['n_pairs']:,} exhaustive calibration + "
            "test pairs that matter (calibrated value > 0) ranked in their context's top M:", "",
            "| ranker | " + " | ".join(f"M={M}" for M in tops) + " |", "|---|" + "---|" * len(tops)]
    for name, row in rec.items():
        if isinstance(row, dict):
            out.append(f"| {name} | " + " | ".join(f"{row[M]:.3f}" for M in tops) + " |")
    return "\n".join(out) + "\n"


def plot(s: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    cals = list(dict.fromkeys(r.get("calibration", "fill") for r in s["cascades"]))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ci, k in enumerate(METRICS):
        b = s["exhaustive"][k]
        if b is None or b["lo"] is None:
            continue
        half = max(b["hi"] - b["value"], b["value"] - b["lo"], 1e-12)
        for cal, style in zip(cals, ("-", ":"), strict=False):
            rs = [r for r in s["cascades"] if r.get("calibration", "fill") == cal]
            ys = [((r["metrics"][k]["value"] - b["value"]) / half) if r["metrics"][k] else np.nan for r in rs]
            ax[0].plot([r["saving_pairs"] for r in rs], ys, style, marker="o", color=colours[ci % len(colours)],
                       label=f"{k} ({cal})")
    ax[0].axhspan(-1, 1, color="0.9", zorder=0)
    ax[0].set_xlim(left=1)
    ax[0].set_xlabel("fewer LLM predictions on calibration + test pairs (x)")
    ax[0].set_ylabel("(cascade - exhaustive) / CI half-width")
    ax[0].set_title("agreement: inside the grey band = inside the exhaustive 95% CI")
    ax[0].legend(fontsize=7)
    for cal in cals:
        rs = [r for r in s["cascades"] if r.get("calibration", "fill") == cal]
        e = [r["error"]["test"]["missed"] for r in rs]
        ax[1].errorbar([r["saving_pairs"] for r in rs], [v["value"] for v in e],
                       yerr=[[v["value"] - v["lo"] for v in e], [v["hi"] - v["value"] for v in e]],
                       marker="o", capsize=3, label=cal)
        for r in rs:
            ax[1].annotate(f"M={r['top']}", (r["saving_pairs"], r["error"]["test"]["missed"]["value"]), fontsize=7)
    truth = [r for r in s["cascades"] if "test_missed_true" in r and r.get("calibration", "fill") == cals[0]]
    ax[1].plot([r["saving_pairs"] for r in truth], [r["test_missed_true"] for r in truth], "kx", ms=8,
               label="true: filled test pairs that matter in the exhaustive run")
    ax[1].axhline(s.get("exhaustive_test_pairs_matter", np.nan), color="0.5", ls="--",
                  label="test pairs that matter (exhaustive)")
    ax[1].legend(fontsize=7)
    ax[1].set_xlim(left=1)
    ax[1].set_xlabel("fewer LLM predictions on calibration + test pairs (x)")
    ax[1].set_ylabel("test pairs not simulated that would matter")
    ax[1].set_title("the cascade's own error estimate (95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("subset", "simulate", "export", "import", "report"):
        s = sub.add_parser(name)
        s.add_argument("--task", default=TASK)
        s.add_argument("--explanations", default=str(EXPLANATIONS))
        s.add_argument("--override", action="append", default=None)
    sub.choices["subset"].add_argument("--source", required=True, help="a full `harness explain` output")
    sub.choices["subset"].add_argument("--n", type=int, default=128)
    sub.choices["subset"].add_argument("--seed", type=int, default=0)
    sub.choices["simulate"].add_argument("--minutes", type=float, default=9.0)
    for name in ("export", "import"):
        sub.choices[name].add_argument("--predictions", default=str(PREDICTIONS))
    sub.choices["simulate"].add_argument("--threads", type=int, default=2)
    r = sub.choices["report"]
    r.add_argument("--out", default=str(ROOT / "benchmarks" / "cascade"))
    r.add_argument("--tops", type=int, nargs="+", default=list(TOPS))
    r.add_argument("--sample", type=float, default=SAMPLE)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--ranker", default="lexical")
    r.add_argument("--error-tops", type=int, nargs="+", default=[1, 2, 4, 8])
    r.add_argument("--error-samples", type=float, nargs="+", default=[0.02, 0.05])
    r.add_argument("--error-seeds", type=int, default=20)
    r.add_argument("--calibrations", nargs="+", default=["weighted", "fill"], choices=["weighted", "fill"])
    args = ap.parse_args(argv)
    if args.override is None:
        args.override = list(OVERRIDES)
    return {"subset": cmd_subset, "simulate": cmd_simulate, "export": cmd_export, "import": cmd_import,
            "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
