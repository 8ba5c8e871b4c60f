"""`harness eval`: prepare → simulate → calibrate → patch → metrics → result file, plots, leaderboard.

Kept apart as inspect_ai does: the task (what is measured) is `tasks.py`/`prepare.py`, the solver (the
simulator) is `simulate/`, the scorers are `calibrate.py` + `patch.py` + `metrics.py`; this module only
wires them together and records provenance.
"""

from __future__ import annotations

import hashlib
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from harness import __version__
from harness.score.calibrate import calibrate
from harness.model.coder import SparseCoder, topk_dense
from harness.errors import HarnessError
from harness.score.metrics import (CI_LEVEL, bin_by_score, bootstrap_indices, detection_scores, detection_thresholds, mean_ci,
                      median_ci, paired_difference, recovery, recovery_denominator, select_latents,
                      sensitivity_specificity)
from harness.data.prepare import BATCH, Prepared, coder_num_latents, load_coder, prepare, progress, save_npz
from harness.task.submission import coverage, load_submission
from harness.task.spec import TaskSpec, cache_root

CALIBRATIONS = ("quantile", "none", "prompt-fit")
RULES = ("top-scoring", "random")


@dataclass
class EvalConfig:
    task: str
    submission: Path
    backend: str = "auto"
    device: str = "auto"
    results_dir: Path = Path("results")
    leaderboard_dir: Path | None = Path("leaderboard")
    overrides: list[str] = field(default_factory=list)
    command: str = ""
    endpoints: list[str] = field(default_factory=list)   # http backend: OpenAI-compatible servers
    served_model: str = ""                               # http backend: the model name the servers serve


def context_id(text: str, last: str) -> str:
    # The prompt depends on the text alone, so identical text shares predictions across tasks and runs.
    return hashlib.sha256(f"{text}\x00{last}".encode()).hexdigest()[:24]


def sim_contexts(tokenizer, rows: list[np.ndarray]):
    from harness.simulate.base import SimContext

    out = []
    for ids in rows:
        text = tokenizer.decode(ids[:-1].tolist())
        last = tokenizer.decode([int(ids[-1])])
        out.append(SimContext(context_id(text, last), text, last))
    return out


def _resolve_device(name: str) -> torch.device:
    from harness.io import resolve_device

    return resolve_device(name)


def load_simulator(spec: TaskSpec, backend: str, device, subject_model=None, subject_tok=None,
                   endpoints=(), served_model: str = ""):
    from harness.model.load import load_model, resolve_source_folder
    from harness.simulate import make_simulator

    ref = spec.simulator_ref()
    sim_kw = dict(prompt_version=spec.simulator.prompt_version, max_chars=spec.simulator.max_explanation_chars,
                  model_key=ref.key())
    if backend in ("vllm", "http"):
        # These engines hold the weights themselves (vLLM) or remotely (servers): only the tokenizer is local,
        # so prompts are built as token ids here and no server-side chat template is ever applied.
        from transformers import AutoTokenizer

        folder = resolve_source_folder(ref, spec.folder, cache_root())
        tok = (AutoTokenizer.from_pretrained(str(folder)) if folder is not None
               else AutoTokenizer.from_pretrained(ref.id, revision=ref.revision or None))
        if backend == "vllm":
            return make_simulator("vllm", str(folder) if folder is not None else ref.id, tok, **sim_kw), ref
        return make_simulator("http", served_model or ref.id or str(folder), tok, endpoints=list(endpoints),
                              **sim_kw), ref
    if subject_model is not None and ref == spec.subject_ref():
        model, tok = subject_model, subject_tok
    else:
        model, tok = load_model(ref, spec.folder, cache_root(), device=device)
    sim = make_simulator(backend, model, tok, batch_size=spec.simulator.batch_size, **sim_kw)
    return sim, ref


def simulate_all(prep: Prepared, tokenizer, sim, explanations: list[str], latents: np.ndarray, console=None):
    """Every prediction the metrics need, through the persistent store: calibration, test, detection."""
    from harness.simulate.prompt import prompt_score
    from harness.simulate.store import CachedSimulator, PredictionStore

    T = prep.spec.contexts.T
    cal = sim_contexts(tokenizer, list(prep.splits["calibration"][:, :T]))
    tst = sim_contexts(tokenizer, list(prep.splits["test"][:, :T]))
    row_of = {int(j): r for r, j in enumerate(prep.rewritten)}
    rows = np.asarray([row_of[int(j)] for j in latents])
    pos, neg = prep.det_pos[rows], prep.det_neg[rows]
    det_rows = np.unique(np.concatenate([pos[pos >= 0], neg[neg >= 0]]))
    det_index = {int(r): i for i, r in enumerate(det_rows)}
    det = sim_contexts(tokenizer, [prep.splits["detection"][b, : e + 1] for b, e in prep.det_contexts[det_rows]])
    contexts = cal + tst + det
    m = len(latents)
    pairs = [(c, e) for c in range(len(cal) + len(tst)) for e in range(m)]
    det_pairs = []
    for e in range(m):
        for r in list(pos[e][pos[e] >= 0]) + list(neg[e][neg[e] >= 0]):
            det_pairs.append((len(cal) + len(tst) + det_index[int(r)], e))
    store = PredictionStore(cache_root() / "predictions.sqlite")
    cached = CachedSimulator(sim, store)
    with progress() as prog:
        t = prog.add_task(f"simulating ({sim.name})", total=len(pairs) + len(det_pairs))
        probs, mass = cached.predict(contexts, explanations, pairs + det_pairs,
                                     progress=lambda n: prog.advance(t, n))
    ev = prompt_score(sim.prompt_version, probs)
    n_cal, n_tst = len(cal), len(tst)
    pred_cal = ev[: n_cal * m].reshape(n_cal, m)
    pred_tst = ev[n_cal * m: (n_cal + n_tst) * m].reshape(n_tst, m)
    det_ev = ev[(n_cal + n_tst) * m:]
    pos_pred, neg_pred, i = [], [], 0
    for e in range(m):
        p, q = int((pos[e] >= 0).sum()), int((neg[e] >= 0).sum())
        pos_pred.append(det_ev[i:i + p]); i += p
        neg_pred.append(det_ev[i:i + q]); i += q
    stats = {"n_predictions": len(pairs) + len(det_pairs), "n_computed": cached.n_computed,
             "n_cached": cached.n_cached, "answer_mass_mean": float(np.mean(mass)) if len(mass) else float("nan")}
    return pred_cal, pred_tst, pos_pred, neg_pred, stats


def detection_table(pos_pred, neg_pred, threshold):
    """AUROC and balanced accuracy per latent; `threshold` is a scalar or one value per latent."""
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(pos_pred),))
    auroc = np.full(len(pos_pred), np.nan)
    bacc = np.full(len(pos_pred), np.nan)
    for e, (p, q) in enumerate(zip(pos_pred, neg_pred)):
        if len(p) and len(q):
            a, b = detection_scores(p[None, :], q[None, :], threshold=thr[e])
            auroc[e], bacc[e] = a[0], b[0]
    return auroc, bacc


def padded(rows: list[np.ndarray]) -> np.ndarray:
    """Ragged per-latent detection predictions as one [m, max_len] float32 array, NaN-padded."""
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), np.nan, np.float32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def detection_threshold_values(spec: TaskSpec, pred_cal: np.ndarray, fire_rate: np.ndarray) -> np.ndarray:
    if spec.scoring.detection_rule == "fixed":
        return np.full(pred_cal.shape[1], float(spec.scoring.detection_threshold))
    return detection_thresholds(pred_cal, fire_rate)


def method_notes(spec: TaskSpec, table) -> dict:
    """How every number was computed, so a result explains itself (docs/protocol.md §6)."""
    sc = spec.scoring
    rule = ("fire-rate: per latent, the ceil(r*n_cal)-th largest calibration prediction, r = the latent's "
            "firing rate on the activation sample; predicted firing iff prediction >= threshold"
            if sc.detection_rule == "fire-rate" else f"fixed: predicted firing iff prediction >= {sc.detection_threshold:g}")
    return {
        "intervals": {"level": CI_LEVEL,
                      "bootstrap": {"method": "percentile", "draws": sc.bootstrap, "seed": sc.seed,
                                    "generator": "numpy PCG64(seed).integers(0, n, (draws, n))",
                                    "resampled": "test contexts, the same resamples for every condition (paired)"},
                      "recovery": "fieller (inverted one-sample t-test on n-1 df; unbounded when the denominator "
                                  "is not significantly different from 0)"},
        "quantile_estimator": {"numpy_method": table.method, "exact": bool(table.exact),
                               "table": ("every non-zero activation of each latent" if table.exact
                                         else f"{table.n_quantiles}-point grid of non-zero quantiles")},
        "ecdf": "mid-rank empirical CDF of the calibration predictions, clipped to their range",
        "detection_threshold": {"rule": sc.detection_rule, "description": rule},
    }


@torch.inference_mode()
def run_conditions(prep: Prepared, model, coder: SparseCoder, latents: np.ndarray, sims: dict[str, np.ndarray],
                   subsets: dict[str, np.ndarray], device):
    """CE over test contexts for latent_zero(S) and simulated(S, calibration) for every subset S.

    Returns ce[name] arrays and, for the full set, the true/simulated active masks for sensitivity and
    specificity. One prefix pass per batch; each condition recomputes only the last position.
    """
    from harness.model.patch import Patcher

    spec = prep.spec
    windows = prep.splits["test"]
    n, k = len(windows), prep.k
    col = {int(j): c for c, j in enumerate(latents)}
    sub_cols = {name: np.asarray([col[int(j)] for j in s]) for name, s in subsets.items()}
    names = [f"latent_zero|{s}" for s in subsets] + [f"simulated|{c}|{s}" for c in sims for s in subsets]
    ce = {name: np.zeros(n) for name in names}
    active_true = np.zeros((n, len(latents)), bool)
    active_sim = {c: np.zeros((n, len(latents)), bool) for c in sims}
    lat_t = torch.as_tensor(latents, device=device)
    patcher = Patcher(model, spec.coder.hookpoint, spec.coder.kind)
    with progress() as prog:
        t = prog.add_task(f"patching {len(names)} conditions", total=n)
        for s in range(0, n, BATCH):
            ids = torch.from_numpy(windows[s:s + BATCH]).to(device)
            b = ids.shape[0]
            with patcher.prefix(ids[:, :-1]) as h:
                last = h.capture(ids[:, -1])
                z_true = coder.dense(*coder.encode(last.x))
                active_true[s:s + b] = (z_true[:, lat_t] > 0).cpu().numpy()
                keys, reps = [], []
                for name, S in subsets.items():
                    idx = torch.as_tensor(S, device=device)
                    z = z_true.clone()
                    z[:, idx] = 0
                    keys.append(f"latent_zero|{name}")
                    reps.append(coder.decode_dense(z, last.x))
                    cols = torch.as_tensor(sub_cols[name], device=device)
                    for cname, pred in sims.items():
                        zs = z_true.clone()
                        zs[:, idx] = torch.as_tensor(pred[s:s + b], device=device, dtype=zs.dtype)[:, cols]
                        zs = topk_dense(zs, k)
                        if name == "all":
                            active_sim[cname][s:s + b] = (zs[:, lat_t] > 0).cpu().numpy()
                        keys.append(f"simulated|{cname}|{name}")
                        reps.append(coder.decode_dense(zs, last.x))
                # Several conditions per forward pass: bigger matrix products run faster on a CPU.
                out = h.ce_batch(reps, ids[:, -1]).double().cpu().numpy()
                for key, row in zip(keys, out):
                    ce[key][s:s + b] = row
            prog.advance(t, b)
    return ce, active_true, active_sim


def evaluate(cfg: EvalConfig, console=None) -> tuple[dict, Path]:
    from harness.report.result import Result

    t0 = time.time()
    from harness.task.spec import load_task

    spec = load_task(cfg.task, cfg.overrides)
    from harness.hub import require_hub_inputs

    require_hub_inputs(spec, simulator=True)
    device = _resolve_device(cfg.device)
    from harness.io import writable_dir

    # Before any work: a read-only or misnamed output folder must not cost a whole evaluation.
    writable_dir(Path(cfg.results_dir) / spec.id, "results")
    sub = load_submission(cfg.submission, task_id=spec.id, num_latents=coder_num_latents(spec),
                          max_chars=spec.simulator.max_explanation_chars)
    prep = prepare(spec, device)
    latents, cov = coverage(sub, prep.rewritten)
    if len(latents) == 0:
        raise HarnessError(f"{cfg.submission}: explains none of the task's {len(prep.rewritten)} rewritten latents")
    latents = np.asarray(latents, dtype=np.int64)
    model, tok = prep.model, prep.tokenizer
    if model is None:
        from harness.data.prepare import load_subject
        model, tok = load_subject(spec, device)
    coder = load_coder(spec).to(device)
    sim, sim_ref = load_simulator(spec, cfg.backend, device, model, tok, cfg.endpoints, cfg.served_model)
    explanations = [sub.explanations[int(j)] for j in latents]
    pred_cal, pred_tst, pos_pred, neg_pred, sim_stats = simulate_all(prep, tok, sim, explanations, latents)
    # Stored predictions were made in other batches: equal within the tolerance of docs/protocol-choices.md
    # (Simulation), not necessarily bit for bit; the result says whether it depends on the store's history.
    sim_stats["prediction_source"] = ("computed" if not sim_stats["n_cached"] else
                                      "store" if not sim_stats["n_computed"] else "mixed")

    sc = spec.scoring
    fire_rate = prep.table.fire_rate[latents]
    det_thr = detection_threshold_values(spec, pred_cal, fire_rate)
    auroc, bacc = detection_table(pos_pred, neg_pred, det_thr)
    from harness.score.degenerate import degenerate_predictions

    warnings = [w.to_dict() for w in degenerate_predictions(np.vstack([pred_cal, pred_tst]), latents,
                                                            spec.simulator.prompt_version)]
    if sub.scores and all(int(j) in sub.scores for j in latents):
        sel_scores, score_source = np.asarray([sub.scores[int(j)] for j in latents]), "submission"
    else:
        sel_scores, score_source = np.nan_to_num(auroc, nan=-np.inf), "detection-auroc"

    sims = {mode: calibrate(mode, pred_cal, pred_tst, prep.table, latents) for mode in CALIBRATIONS}
    subsets = {"all": latents}
    for rule in RULES:
        for f in sc.fractions:
            if f < 1.0:
                subsets[f"{rule}@{f:g}"] = np.sort(select_latents(rule, latents, f, sel_scores, sc.seed))
    ce, active_true, active_sim = run_conditions(prep, model, coder, latents, sims, subsets, device)

    base = prep.ce_base
    boot = bootstrap_indices(len(base["clean"]), sc.bootstrap, sc.seed)
    clean = base["clean"]

    def est(x):
        return x.to_dict() if hasattr(x, "to_dict") else x

    conditions = []
    for name, S in subsets.items():
        rule, frac = ("all", 1.0) if name == "all" else (name.split("@")[0], float(name.split("@")[1]))
        zero = ce[f"latent_zero|{name}"]
        conditions.append({"name": "latent_zero", "calibration": None, "selection": rule, "fraction": frac,
                           "n_latents": int(len(S)), "ce_mean": float(zero.mean()),
                           "delta_ce_mean": est(mean_ci(zero - clean, boot)),
                           "delta_ce_median": est(median_ci(zero - clean, boot)),
                           "recovery": None, "diff_vs_latent_zero": None})
        for mode in CALIBRATIONS:
            simc = ce[f"simulated|{mode}|{name}"]
            diff = paired_difference(simc, zero, boot)
            conditions.append({"name": "simulated", "calibration": mode, "selection": rule, "fraction": frac,
                               "n_latents": int(len(S)), "ce_mean": float(simc.mean()),
                               "delta_ce_mean": est(mean_ci(simc - clean, boot)),
                               "delta_ce_median": est(median_ci(simc - clean, boot)),
                               "recovery": est(recovery(zero, simc, base["coder"], boot)),
                               "diff_vs_latent_zero": est(diff["mean"])})
    # The fraction-1.0 points of both curves are the full set.
    for c in [c for c in conditions if c["selection"] == "all"]:
        for rule in RULES:
            conditions.append({**c, "selection": rule})

    sens, spec_ = sensitivity_specificity(active_true, active_sim["quantile"])
    head = next(c for c in conditions if c["name"] == "simulated" and c["calibration"] == "quantile"
                and c["selection"] == "all")
    head_zero = next(c for c in conditions if c["name"] == "latent_zero" and c["selection"] == "all")
    headline = {
        "calibration": "quantile",
        "recovery": head["recovery"],
        "delta_ce_median": head["delta_ce_median"],
        "delta_ce_mean": head["delta_ce_mean"],
        "latent_zero_delta_ce_median": head_zero["delta_ce_median"],
        "sim_minus_zero_mean": head["diff_vs_latent_zero"],
        "sensitivity": float(np.nanmean(sens)) if np.isfinite(sens).any() else float("nan"),
        "specificity": float(np.nanmean(spec_)) if np.isfinite(spec_).any() else float("nan"),
        "detection_auroc": float(np.nanmean(auroc)) if np.isfinite(auroc).any() else float("nan"),
        # Over latents (each latent's AUROC is one observation): what orders methods where CE cannot.
        "detection_auroc_ci": (est(mean_ci(auroc[np.isfinite(auroc)],
                                           bootstrap_indices(int(np.isfinite(auroc).sum()), sc.bootstrap, sc.seed)))
                               if np.isfinite(auroc).sum() >= 2 else None),
        "rank_by": sc.rank_by,
        "detection_balanced_accuracy": float(np.nanmean(bacc)) if np.isfinite(bacc).any() else float("nan"),
        "recovery_denominator": est(recovery_denominator(ce["latent_zero|all"], base["coder"], boot)),
        "coder_delta_ce_median": est(median_ci(base["coder"] - clean, boot)),
        "zero_output_delta_ce_median": (est(median_ci(base["zero_output"] - clean, boot))
                                        if np.isfinite(base["zero_output"]).all() else None),
    }
    bins = []
    for sb, pb in zip(bin_by_score(auroc, sens), bin_by_score(auroc, spec_)):
        bins.append({"lo": sb["lo"], "hi": sb["hi"], "n": sb["n"], "sensitivity": sb["mean"], "specificity": pb["mean"]})

    sim_key = sim_ref.key()
    tag = f"{_slug(sub.method)}-{sub.sha256[:10]}-{hashlib.sha256(sim_key.encode()).hexdigest()[:6]}"
    out_dir = Path(cfg.results_dir) / spec.id
    out_dir.mkdir(parents=True, exist_ok=True)
    side = out_dir / f"{tag}.per_context.npz"
    nz_stored, nz_ranks, nz_values = table_excerpt(prep.table, latents, pred_cal, pred_tst)
    # Everything `harness verify-result` needs to recompute the result's numbers (docs/protocol.md §7).
    save_npz(side, test_targets=prep.splits["test"][:, -1], **{f"ce_{k}": v for k, v in base.items()},
             **{f"ce_{k.replace('|', '__')}": v for k, v in ce.items()}, latents=latents,
             pred_calibration=pred_cal.astype(np.float32), pred_test=pred_tst.astype(np.float32),
             true_test=true_values(prep.test_latents, latents),
             det_pred_pos=padded(pos_pred), det_pred_neg=padded(neg_pred), detection_threshold=det_thr,
             fire_rate=fire_rate, active_true=active_true,
             **{f"active_sim__{mode}": a for mode, a in active_sim.items()},
             **{f"sim_values__{mode}": v.astype(np.float32) for mode, v in sims.items()},
             table_n_tokens=np.int64(prep.table.n_tokens), table_method=np.str_(prep.table.method),
             table_nz_count=prep.table.nz_count[latents], table_nz_stored=nz_stored, table_nz_ranks=nz_ranks,
             table_nz_values=nz_values,
             selection_scores=sel_scores.astype(np.float64),
             **{f"subset__{name}": S for name, S in subsets.items() if name != "all"},
             test_windows=prep.splits["test"].astype(np.int32))
    from harness.testing.tiny import sha256_file

    result = {
        "schema": "harness-result/1",
        "task": {"id": spec.id, "hash": spec.hash},
        "submission": {"method": sub.method, "description": sub.description, "sha256": sub.sha256,
                       "path": str(cfg.submission), "n_explanations": len(sub.explanations), "coverage": cov},
        "simulator": {"model_key": sim_key, "prompt_version": spec.simulator.prompt_version, "backend": sim.name},
        "provenance": {"harness_version": __version__, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "seed": sc.seed, "command": cfg.command, "python": sys.version.split()[0],
                       "torch": torch.__version__, "transformers": _version("transformers"),
                       "platform": platform.platform(), "device": str(device), "overrides": list(spec.overrides),
                       "selection_scores": score_source, "wall_seconds": round(time.time() - t0, 1), **sim_stats},
        "ce_means": {"clean": float(clean.mean()), "coder": float(base["coder"].mean()),
                     "zero_output": float(np.mean(base["zero_output"])) if np.isfinite(base["zero_output"]).all() else None,
                     "latent_zero": head_zero["ce_mean"], "simulated": head["ce_mean"]},
        "headline": headline,
        "conditions": conditions,
        "per_latent": {"latent": latents.tolist(), "auroc": auroc.tolist(), "balanced_accuracy": bacc.tolist(),
                       "sensitivity": sens.tolist(), "specificity": spec_.tolist(),
                       "score": [float(x) for x in sel_scores], "detection_threshold": det_thr.tolist(),
                       "fire_rate": fire_rate.tolist()},
        "sens_spec_by_detection_bin": bins,
        "side_files": {"per_context": {"path": side.name, "sha256": sha256_file(side)}},
        "figures": [],
        "methods": method_notes(spec, prep.table),
        "warnings": warnings,
    }
    figures = _figures(result, out_dir, tag, prep, latents, pred_tst, sims, active_true)
    result["figures"] = figures
    path = out_dir / f"{tag}.json"
    Result.from_dict(result).to_json(path)
    return result, path


def _figures(result, out_dir: Path, tag: str, prep: Prepared, latents, pred_tst, sims, active_true) -> list[str]:
    from harness.report.plots import plot_activation_distributions, plot_partial_rewriting, plot_sens_spec_by_bin

    col = {int(j): c for c, j in enumerate(latents)}
    vals, inds = prep.test_latents
    true = []
    for r in range(len(vals)):
        for v, i in zip(vals[r], inds[r]):
            if v > 0 and int(i) in col:
                true.append(v)
    paths = [out_dir / f"{tag}.curve.png", out_dir / f"{tag}.distributions.png", out_dir / f"{tag}.sens_spec.png"]
    plot_partial_rewriting(result, paths[0])
    # Non-zero calibrated values only: like-for-like with the true non-zero activations.
    calibrated = sims["quantile"].ravel()
    plot_activation_distributions(np.asarray(true), pred_tst.ravel(), calibrated[calibrated > 0], paths[1])
    plot_sens_spec_by_bin(result["sens_spec_by_detection_bin"], paths[2])
    return [p.name for p in paths]


def table_excerpt(table, latents: np.ndarray, pred_cal: np.ndarray, pred_tst: np.ndarray):
    """The activation-table values the quantile map read for this run (both fitted modes), per latent:
    (how many stored per latent, ranks among the latent's sorted non-zero values, values), concatenated
    in `latents` order."""
    from harness.score.calibrate import ecdf_midrank, fit_normaliser, needed_nonzero_ranks

    if not table.exact:
        return np.zeros(len(latents), np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    u = np.concatenate([ecdf_midrank(fit_normaliser(pred_cal), pred_tst),
                        ecdf_midrank(fit_normaliser(pred_tst), pred_tst)])
    ranks, values = [], []
    for col, j in enumerate(latents):
        r = needed_nonzero_ranks(int(table.nz_count[j]), table.n_tokens, u[:, col], table.method)
        ranks.append(r)
        values.append(table.nonzero_values(int(j))[r])
    return (np.array([len(r) for r in ranks], np.int64), np.concatenate(ranks),
            np.concatenate(values).astype(np.float32))


def true_values(test_latents, latents: np.ndarray) -> np.ndarray:
    """[n_test, m] true activation of each scored latent on each test context (0 where not in the TopK)."""
    vals, inds = test_latents
    out = np.zeros((len(vals), len(latents)), np.float32)
    col = {int(j): c for c, j in enumerate(latents)}
    for r, c in zip(*np.nonzero(vals > 0)):
        if int(inds[r, c]) in col:
            out[r, col[int(inds[r, c])]] = vals[r, c]
    return out


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in s)[:40] or "method"


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "?"
