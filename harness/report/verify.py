"""`harness verify-result`: recompute every number of a result from its side file alone.

The recomputation deliberately does not call `harness.score.metrics`, `harness.score.calibrate` or `harness.pipeline`:
AUROC, recall and balanced accuracy come from scikit-learn, quantiles from `np.quantile` on the
materialised activation sample, the recovery interval from the textbook form of Fieller's theorem (the
harness solves the quadratic directly), the ECDF from explicit comparisons, the bootstrap from a fresh
numpy generator. A difference beyond float tolerance is a failure.

Exit status (docs/protocol.md §7): 0 every number verified; 1 some number differs; 3 nothing differs
but some numbers could not be recomputed because the side file predates the fields they need (one line
says which); 2 the files cannot be read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.result import DamagedSideFile, read_side_file

LEVEL = 0.95


@dataclass
class Report:
    path: str
    checked: int = 0
    mismatches: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)   # what could not be recomputed → the missing field
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> int:
        return 1 if self.mismatches else (3 if self.missing else 0)

    def lines(self) -> list[str]:
        out = [f"{self.path}: {self.checked} numbers recomputed, {len(self.mismatches)} differ"]
        out += [f"  note: {n}" for n in self.notes]
        out += [f"  MISMATCH {m}" for m in self.mismatches[:50]]
        if len(self.mismatches) > 50:
            out.append(f"  … and {len(self.mismatches) - 50} more")
        if self.missing:
            out.append("  cannot recompute (side file predates these fields; rerun `harness eval`): "
                       + "; ".join(f"{k} (needs {v})" for k, v in self.missing.items()))
        out.append("  verdict: " + ("FAIL: the result does not match its side file" if self.status == 1 else
                                    "INCOMPLETE: every number checked matches, some could not be checked"
                                    if self.status == 3 else "OK: every number matches"))
        return out


def _close(got, want, rel: float, abs_: float) -> bool:
    if want is None:  # JSON null: NaN or ±inf in the result
        return got is None or not math.isfinite(got)
    if got is None or not math.isfinite(got):
        return False
    return abs(got - want) <= abs_ + rel * abs(want)


class _Checker:
    def __init__(self, report: Report):
        self.r = report

    def num(self, name: str, got: float | np.floating | None, want, rel=1e-9, abs_=1e-12):
        self.r.checked += 1
        g = None if got is None or (isinstance(got, float) and math.isnan(got)) else float(got)
        if not _close(g, want, rel, abs_):
            self.r.mismatches.append(f"{name}: result says {want!r}, side file gives {g!r}")

    def est(self, name: str, got: tuple, want: dict | None, rel=1e-9, abs_=1e-12):
        if want is None:
            self.r.mismatches.append(f"{name}: missing in the result")
            return
        for key, g in zip(("value", "lo", "hi"), got, strict=True):
            self.num(f"{name}.{key}", g, want.get(key), rel, abs_)


# ---------------------------------------------------------------- independent statistics
def _boot(n: int, draws: int, seed: int) -> np.ndarray:
    return np.random.Generator(np.random.PCG64(seed)).integers(0, n, size=(draws, n), dtype=np.int64)


def _mean_est(x: np.ndarray, boot: np.ndarray) -> tuple:
    stats = np.concatenate([x[b].mean(axis=1) for b in np.array_split(boot, max(1, len(boot) // 256))])
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(x.mean()), float(lo), float(hi)


@functools.cache
def _order_stat(n: int) -> int:
    """Order-statistic interval: the widest-coverage pair (l, n+1-l) still leaving ≤ 2.5% in each tail
    (0: none does). One vectorised binomial CDF per sample size: every median of a result shares n."""
    from scipy.stats import binom

    ks = np.arange(1, n // 2 + 1)
    ok = ks[binom.cdf(ks - 1, n, 0.5) <= (1 - LEVEL) / 2]
    return int(ok.max()) if ok.size else 0


def _median_est(x: np.ndarray) -> tuple:
    n = len(x)
    l = _order_stat(n)
    if not l:
        return float(np.median(x)), None, None
    srt = np.sort(x)
    return float(np.median(x)), float(srt[l - 1]), float(srt[n - l])


def _median_boot_est(x: np.ndarray, boot: np.ndarray) -> tuple:
    lo, hi = np.percentile(np.median(x[boot], axis=1), [2.5, 97.5])
    return float(np.median(x)), float(lo), float(hi)


def _fieller(z: np.ndarray, s: np.ndarray, c: np.ndarray) -> tuple:
    from scipy.stats import t as student_t

    n = len(z)
    a, b = float((z - s).mean()), float((z - c).mean())
    if b == 0.0:
        # Deleting these latents changed nothing (a subset that never fires on the test contexts): undefined.
        return math.nan, None, None
    r = a / b
    C = np.cov(z - s, z - c) / n
    vaa, vab, vbb = C[0, 0], C[0, 1], C[1, 1]
    t = student_t.ppf(0.5 + LEVEL / 2, n - 1)
    g = t * t * vbb / (b * b)
    if g >= 1:
        return float(r), None, None
    centre = r - g * vab / vbb
    half = (t / abs(b)) * math.sqrt(max(vaa - 2 * r * vab + r * r * vbb - g * (vaa - vab * vab / vbb), 0.0))
    return float(r), float((centre - half) / (1 - g)), float((centre + half) / (1 - g))


def _legacy_recovery(z, s, c, boot) -> tuple:
    """Results written before `methods` existed: percentile bootstrap of the ratio, undefined when a
    resample's denominator reaches 0 or flips sign."""
    tol = 1e-12 * max(1.0, float(np.abs(z).max()), float(np.abs(c).max()))
    den = z.mean() - c.mean()
    if abs(den) <= tol:
        return None, None, None
    num_b, den_b = (z - s)[boot].mean(1), (z - c)[boot].mean(1)
    value = float((z.mean() - s.mean()) / den)
    if np.any(np.abs(den_b) <= tol) or np.any(np.sign(den_b) != np.sign(den)):
        return value, None, None
    lo, hi = np.percentile(num_b / den_b, [2.5, 97.5])
    return value, float(lo), float(hi)


def _true_quantile(ranks: np.ndarray, values: np.ndarray, nz_count: int, n_tokens: int, u: np.ndarray,
                   method: str) -> np.ndarray:
    """np.quantile on the activation sample rebuilt from the shipped order statistics: zeros, then the
    non-zero values at their ranks, every other position filled with the nearest known value below
    (a monotone stand-in numpy never reads if the shipped ranks are the ones the map needed)."""
    nz = np.zeros(nz_count, np.float32)
    nz[ranks] = values
    full = np.zeros(n_tokens, np.float32)
    full[n_tokens - nz_count:] = np.maximum.accumulate(nz) if nz_count else nz
    # numpy's stubs accept only a Literal method name; this one comes from the side file (numpy rejects bad ones).
    return np.quantile(full, u, method=method)  # pyright: ignore[reportCallIssue, reportArgumentType]


def _midrank_ecdf(calib: np.ndarray, x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Mid-rank ECDF by direct comparison; `w`: a cascade's calibration weights (each value counts w times,
    values of weight 0 do not count and do not set the clipping range)."""
    if w is None:
        w = np.ones(len(calib))
    calib, w = calib[w > 0], w[w > 0]
    xc = np.clip(x, calib.min(), calib.max())
    below = ((calib[None, :] < xc[:, None]) * w[None, :]).sum(1)
    equal = ((calib[None, :] == xc[:, None]) * w[None, :]).sum(1)
    return (below + 0.5 * equal) / w.sum()


# ---------------------------------------------------------------- the verification
def _subset_name(c: dict) -> str:
    return "all" if c["selection"] == "all" or c["fraction"] >= 1.0 else f"{c['selection']}@{c['fraction']:g}"


def verify_result(path: str | Path) -> Report:
    path = Path(path)
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise HarnessError(f"{path}: cannot read the result ({e})") from None
    # Read as plain JSON (not through harness.result, whose code is under test), so its shape is
    # checked here: a damaged result is one error line, like a damaged side file is a verdict.
    side_files = res.get("side_files") if isinstance(res, dict) else None
    side_info = side_files.get("per_context") if isinstance(side_files, dict) else None
    if not isinstance(side_info, dict) or not isinstance(side_info.get("path"), str) or not side_info["path"]:
        raise HarnessError(f"{path}: the result names no per-context side file (side_files.per_context.path); "
                           "nothing can be recomputed — it is damaged or not a result: re-run `harness eval`")
    side_path = path.parent / side_info["path"]
    if not side_path.is_file():
        raise HarnessError(f"{path}: side file {side_path} not found next to the result")
    rep = Report(str(path))
    chk = _Checker(rep)
    try:
        digest = hashlib.sha256(side_path.read_bytes()).hexdigest()
    except OSError as e:
        raise HarnessError(f"{path}: cannot read its side file {side_path} ({e.strerror}) — check its permissions") \
            from None
    rep.checked += 1
    if digest != side_info.get("sha256"):
        rep.mismatches.append(f"side file sha256 {digest[:16]}… differs from the result's "
                              f"{str(side_info.get('sha256'))[:16]}…")
    try:
        side = read_side_file(side_path)
    except DamagedSideFile as e:
        rep.mismatches.append(str(e))
        return rep
    try:
        _verify(res, side, chk, rep)
    except Exception as e:  # noqa: BLE001 — an edited or foreign file: a verdict, never a traceback
        from harness.io import one_line

        rep.mismatches.append("the result and its side file do not fit together "
                              f"({type(e).__name__}: {one_line(str(e))[:200]}) — one of them was edited or "
                              "belongs to another run")
    return rep


def _verify(res: dict, side: dict[str, np.ndarray], chk: _Checker, rep: Report) -> None:
    methods = res.get("methods") or {}
    boot_cfg = (methods.get("intervals") or {}).get("bootstrap") or {}
    legacy = not methods
    seed = int(boot_cfg.get("seed", res["provenance"].get("seed", 0)))
    draws = int(boot_cfg.get("draws", 1000))
    if legacy:
        rep.notes.append("no `methods` section (written before it existed): intervals checked as that harness "
                         "computed them, percentile bootstrap with 1000 draws for means, medians and recovery")
    clean = side["ce_clean"]
    n = len(clean)
    boot = _boot(n, draws, seed)
    median = (lambda x: _median_boot_est(x, boot)) if legacy else _median_est

    def ce(key: str) -> np.ndarray:
        return side[f"ce_{key.replace('|', '__')}"]

    # CE means and conditions
    ce_m = res["ce_means"]
    chk.num("ce_means.clean", clean.mean(), ce_m["clean"])
    chk.num("ce_means.coder", side["ce_coder"].mean(), ce_m["coder"])
    if ce_m.get("zero_output") is not None:
        chk.num("ce_means.zero_output", side["ce_zero_output"].mean(), ce_m["zero_output"])
    chk.num("ce_means.latent_zero", ce("latent_zero|all").mean(), ce_m["latent_zero"])
    chk.num("ce_means.simulated", ce("simulated|quantile|all").mean(), ce_m["simulated"])
    for c in res["conditions"]:
        sub = _subset_name(c)
        zero = ce(f"latent_zero|{sub}")
        x = zero if c["name"] == "latent_zero" else ce(f"simulated|{c['calibration']}|{sub}")
        tag = f"conditions[{c['name']}|{c['calibration']}|{c['selection']}@{c['fraction']:g}]"
        chk.num(f"{tag}.ce_mean", x.mean(), c["ce_mean"])
        chk.est(f"{tag}.delta_ce_mean", _mean_est(x - clean, boot), c["delta_ce_mean"])
        chk.est(f"{tag}.delta_ce_median", median(x - clean), c["delta_ce_median"])
        if c["name"] == "simulated":
            chk.est(f"{tag}.diff_vs_latent_zero", _mean_est(x - zero, boot), c["diff_vs_latent_zero"])
            rec = _legacy_recovery(zero, x, side["ce_coder"], boot) if legacy else _fieller(zero, x, side["ce_coder"])
            chk.est(f"{tag}.recovery", rec, c["recovery"], rel=1e-7, abs_=1e-10)

    h = res["headline"]
    zero_all, sim_all = ce("latent_zero|all"), ce("simulated|quantile|all")
    chk.est("headline.delta_ce_median", median(sim_all - clean), h["delta_ce_median"])
    chk.est("headline.delta_ce_mean", _mean_est(sim_all - clean, boot), h["delta_ce_mean"])
    chk.est("headline.latent_zero_delta_ce_median", median(zero_all - clean), h["latent_zero_delta_ce_median"])
    chk.est("headline.sim_minus_zero_mean", _mean_est(sim_all - zero_all, boot), h["sim_minus_zero_mean"])
    chk.est("headline.coder_delta_ce_median", median(side["ce_coder"] - clean), h["coder_delta_ce_median"])
    if h.get("zero_output_delta_ce_median") is not None:
        chk.est("headline.zero_output_delta_ce_median", median(side["ce_zero_output"] - clean),
                h["zero_output_delta_ce_median"])
    if "recovery_denominator" in h:
        chk.est("headline.recovery_denominator", _mean_est(zero_all - side["ce_coder"], boot),
                h["recovery_denominator"])
    rec = (_legacy_recovery(zero_all, sim_all, side["ce_coder"], boot) if legacy
           else _fieller(zero_all, sim_all, side["ce_coder"]))
    chk.est("headline.recovery", rec, h["recovery"], rel=1e-7, abs_=1e-10)

    latents = side["latents"]
    pl = res["per_latent"]
    rep.checked += 1
    if [int(j) for j in latents] != [int(j) for j in pl["latent"]]:
        rep.mismatches.append("per_latent.latent differs from the side file's latents")
    _verify_masks(side, res, chk, rep)
    auroc = _verify_detection(side, res, chk, rep)
    _verify_calibration(side, chk, rep)
    _verify_subsets(side, res, auroc, chk, rep)
    _verify_identity(side, res, chk, rep)
    _verify_layout(side, res, auroc, chk, rep)


def _verify_masks(side, res, chk: _Checker, rep: Report) -> None:
    from sklearn.metrics import recall_score

    pl, h = res["per_latent"], res["headline"]
    if "active_true" not in side or "active_sim__quantile" not in side:
        rep.missing["sensitivity/specificity"] = "active_true, active_sim__quantile"
        return
    t, s = side["active_true"].astype(bool), side["active_sim__quantile"].astype(bool)
    rep.checked += 1
    if not np.array_equal(t, side["true_test"] > 0):
        rep.mismatches.append("active_true differs from true_test > 0")
    sens, spec = [], []
    for j in range(t.shape[1]):
        # sklearn is unannotated: pyright infers zero_division's type (str) from its default, "warn".
        sens.append(recall_score(t[:, j], s[:, j], pos_label=True,
                                 zero_division=np.nan)  # pyright: ignore[reportArgumentType]
                    if t[:, j].any() else np.nan)
        spec.append(recall_score(t[:, j], s[:, j], pos_label=False,
                                 zero_division=np.nan)  # pyright: ignore[reportArgumentType]
                    if (~t[:, j]).any() else np.nan)
        chk.num(f"per_latent.sensitivity[{j}]", sens[-1], pl["sensitivity"][j])
        chk.num(f"per_latent.specificity[{j}]", spec[-1], pl["specificity"][j])
    chk.num("headline.sensitivity", np.nanmean(sens) if np.isfinite(sens).any() else None, h["sensitivity"])
    chk.num("headline.specificity", np.nanmean(spec) if np.isfinite(spec).any() else None, h["specificity"])
    auroc = np.array([np.nan if a is None else a for a in pl["auroc"]], float)
    edges = [b["lo"] for b in res["sens_spec_by_detection_bin"]] + [res["sens_spec_by_detection_bin"][-1]["hi"]]
    for i, b in enumerate(res["sens_spec_by_detection_bin"]):
        last = i == len(edges) - 2
        inb = (auroc >= edges[i]) & ((auroc <= edges[i + 1]) if last else (auroc < edges[i + 1]))
        for name, vals in (("sensitivity", np.array(sens)), ("specificity", np.array(spec))):
            v = vals[inb & np.isfinite(vals)]
            chk.num(f"sens_spec_by_detection_bin[{i}].{name}", v.mean() if len(v) else None, b[name])


def _verify_detection(side, res, chk: _Checker, rep: Report) -> np.ndarray | None:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    pl, h = res["per_latent"], res["headline"]
    if "det_pred_pos" not in side or "detection_threshold" not in side:
        rep.missing["detection AUROC and balanced accuracy"] = "det_pred_pos, det_pred_neg, detection_threshold"
        return None
    pos, neg, thr = side["det_pred_pos"], side["det_pred_neg"], side["detection_threshold"]
    rule = ((res.get("methods") or {}).get("detection_threshold") or {}).get("rule", "fire-rate")
    if rule == "fire-rate":
        cal, rate = side["pred_calibration"].astype(np.float64), side["fire_rate"]
        weights = side.get("calibration_weights")
        ncal = cal.shape[0]
        for j in range(cal.shape[1]):
            if weights is not None:
                # Weighted: the largest value with at least a share `rate` of the weight at or above it.
                wj = weights[:, j]
                share = np.array([wj[cal[:, j] >= v].sum() for v in cal[:, j]]) / wj.sum()
                ok = (wj > 0) & (share >= rate[j] - 1e-9 / wj.sum())
                want = cal[ok, j].max() if rate[j] > 0 and ok.any() else math.inf
            else:
                k = int(math.ceil(round(rate[j] * ncal, 9)))
                want = -np.sort(-cal[:, j])[k - 1] if k > 0 else math.inf
            chk.num(f"detection_threshold[{j}]", want if math.isfinite(want) else None,
                    float(thr[j]) if math.isfinite(thr[j]) else None)
    for key, arr in (("detection_threshold", thr), ("fire_rate", side.get("fire_rate"))):
        if key in pl and arr is not None:
            for j, v in enumerate(arr):
                chk.num(f"per_latent.{key}[{j}]", float(v) if math.isfinite(v) else None, pl[key][j])
    aurocs, baccs = [], []
    for j in range(pos.shape[0]):
        p, q = pos[j][~np.isnan(pos[j])].astype(np.float64), neg[j][~np.isnan(neg[j])].astype(np.float64)
        if len(p) and len(q):
            y = np.r_[np.ones(len(p)), np.zeros(len(q))]
            sc = np.r_[p, q]
            aurocs.append(roc_auc_score(y, sc))
            baccs.append(balanced_accuracy_score(y, sc >= thr[j]))
        else:
            aurocs.append(np.nan)
            baccs.append(np.nan)
        chk.num(f"per_latent.auroc[{j}]", aurocs[-1], pl["auroc"][j])
        chk.num(f"per_latent.balanced_accuracy[{j}]", baccs[-1], pl["balanced_accuracy"][j])
    chk.num("headline.detection_auroc", np.nanmean(aurocs) if np.isfinite(aurocs).any() else None,
            h["detection_auroc"])
    if h.get("detection_auroc_ci"):
        a = np.asarray(aurocs)[np.isfinite(aurocs)]
        boot_cfg = ((res.get("methods") or {}).get("intervals") or {}).get("bootstrap") or {}
        chk.est("headline.detection_auroc_ci", _mean_est(a, _boot(len(a), int(boot_cfg.get("draws", 1000)),
                                                                    int(boot_cfg.get("seed", 0)))),
                h["detection_auroc_ci"])
    if "detection_balanced_accuracy" in h:
        chk.num("headline.detection_balanced_accuracy", np.nanmean(baccs) if np.isfinite(baccs).any() else None,
                h["detection_balanced_accuracy"])
    return np.array(aurocs)


def _verify_calibration(side, chk: _Checker, rep: Report) -> None:
    if "table_nz_ranks" not in side or "sim_values__quantile" not in side:
        rep.missing["quantile-normalised values"] = "table_nz_ranks, table_nz_values, sim_values__quantile"
        return
    cal, tst = side["pred_calibration"].astype(np.float64), side["pred_test"].astype(np.float64)
    N, method = int(side["table_n_tokens"]), str(side["table_method"])
    counts = side["table_nz_count"]
    starts = np.concatenate([[0], np.cumsum(side["table_nz_stored"])])
    bad = 0
    weights = side.get("calibration_weights")
    for mode, fit in (("quantile", cal), ("prompt-fit", tst)):
        got_all = side[f"sim_values__{mode}"]
        for j in range(tst.shape[1]):
            u = _midrank_ecdf(fit[:, j], tst[:, j], weights[:, j] if mode == "quantile" and weights is not None
                              else None)
            sl = slice(starts[j], starts[j + 1])
            want = _true_quantile(side["table_nz_ranks"][sl], side["table_nz_values"][sl], int(counts[j]), N, u,
                                  method)
            rep.checked += len(want)
            bad += int((np.abs(got_all[:, j] - want) > 1e-6 * np.maximum(1.0, np.abs(want))).sum())
    rep.checked += tst.size
    bad += int((side["sim_values__none"] != side["pred_test"]).sum())
    if bad:
        rep.mismatches.append(f"{bad} calibrated (quantile / prompt-fit / none) values differ from np.quantile "
                              "on the activation sample")
    # TopK can only turn a calibrated value off, never on.
    rep.checked += 1
    if np.any(side["active_sim__quantile"] & ~(side["sim_values__quantile"] > 0)):
        rep.mismatches.append("active_sim__quantile marks a latent active whose calibrated value is 0")


def _verify_subsets(side, res, auroc, chk: _Checker, rep: Report) -> None:
    latents = side["latents"].astype(np.int64)
    names = [k for k in side if k.startswith("subset__")]
    if not names:
        rep.missing["partial-rewriting subsets"] = "subset__<rule>@<fraction>"
        return
    scores = side["selection_scores"]
    if res["provenance"].get("selection_scores") == "detection-auroc" and auroc is not None:
        rep.checked += 1
        if not np.allclose(np.nan_to_num(auroc, nan=-np.inf), scores, rtol=1e-12, atol=0, equal_nan=True):
            rep.mismatches.append("selection scores differ from the detection AUROCs")
    seed = int(res["provenance"].get("seed", 0))
    m = len(latents)
    for key in names:
        rule, frac = key.removeprefix("subset__").split("@")
        count = min(m, max(1, int(math.floor(float(frac) * m + 0.5))))
        if rule == "top-scoring":
            order = sorted(range(m), key=lambda i: (-scores[i] if not math.isnan(scores[i]) else math.inf, latents[i]))
            want = np.sort(latents[order[:count]])
        else:
            want = np.sort(np.sort(latents)[np.random.Generator(np.random.PCG64(seed)).permutation(m)[:count]])
        rep.checked += 1
        if not np.array_equal(np.sort(side[key]), want):
            rep.mismatches.append(f"{key}: latents {side[key].tolist()} differ from the rule's {want.tolist()}")
        for c in res["conditions"]:
            if c["selection"] == rule and f"{c['fraction']:g}" == frac:
                chk.num(f"conditions[{rule}@{frac}].n_latents", len(side[key]), c["n_latents"])


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True, ensure_ascii=False) == json.dumps(b, sort_keys=True, ensure_ascii=False)


def _verify_identity(side, res, chk: _Checker, rep: Report) -> None:
    """Identity, counts and provenance: against the copy the side file holds (its sha256 is in the result),
    coverage also recomputed from the side file's latents and, when the file is here, the submission."""
    if "record" not in side or "rewritten" not in side:
        rep.missing["task, submission, simulator, provenance and warnings fields"] = "record, rewritten"
        return
    record = json.loads(str(side["record"]))
    for section in ("task", "submission", "simulator", "provenance"):
        got, want = record.get(section) or {}, res.get(section) or {}
        for key in sorted(set(got) | set(want)):
            rep.checked += 1
            if key not in got or key not in want or not _same(got[key], want[key]):
                rep.mismatches.append(f"{section}.{key}: result says {json.dumps(want.get(key))[:80]}, side file "
                                      f"records {json.dumps(got.get(key))[:80]}")
    rep.checked += 1
    if not _same(record.get("warnings", []), res.get("warnings", [])):
        rep.mismatches.append("warnings differ from those the side file records")
    sub, prov = res["submission"], res["provenance"]
    latents, rewritten = side["latents"].astype(np.int64), side["rewritten"].astype(np.int64)
    rep.checked += 1
    if not np.isin(latents, rewritten).all():
        rep.mismatches.append("the side file's scored latents are not all among its rewritten latents")
    chk.num("submission.coverage", len(latents) / len(rewritten) if len(rewritten) else 0.0, sub["coverage"])
    _verify_submission_file(sub, rewritten, latents, chk, rep)
    rep.checked += 1
    if prov["n_computed"] + prov["n_cached"] > prov["n_predictions"] or min(prov["n_computed"], prov["n_cached"]) < 0:
        # Pairs sharing a key (one explanation on several latents) are computed once: ≤, not =.
        rep.mismatches.append(f"provenance: {prov['n_computed']} computed + {prov['n_cached']} cached predictions "
                              f"exceed the {prov['n_predictions']} made")
    if not res.get("cascade"):
        det = int(np.isfinite(side["det_pred_pos"]).sum() + np.isfinite(side["det_pred_neg"]).sum())
        chk.num("provenance.n_predictions (calibration + test + detection pairs)",
                side["pred_calibration"].size + side["pred_test"].size + det, prov["n_predictions"], rel=0, abs_=0)


def _verify_submission_file(sub, rewritten, latents, chk: _Checker, rep: Report) -> None:
    """The submission itself, when its recorded path (relative to here) holds the file the hash names."""
    from harness.task.submission import submission_sha256

    p = Path(str(sub.get("path", ""))).expanduser()   # portable_path records a file under home as ~/...
    try:
        d = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
        ok = isinstance(d, dict) and submission_sha256(d) == sub["sha256"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        rep.notes.append(f"submission file {p} is not here (or is another version): coverage and explanation "
                         "count checked against the side file only")
        return
    assert isinstance(d, dict)
    explained = {int(k) for k in d["explanations"]}
    chk.num("submission.n_explanations (from the submission file)", len(explained), sub["n_explanations"],
            rel=0, abs_=0)
    chk.num("submission.coverage (from the submission file)",
            float(np.isin(rewritten, list(explained)).mean()) if len(rewritten) else 0.0, sub["coverage"])
    rep.checked += 1
    if sorted(j for j in rewritten.tolist() if j in explained) != sorted(latents.tolist()):
        rep.mismatches.append("the scored latents are not the rewritten latents the submission explains")


def _verify_layout(side, res, auroc, chk: _Checker, rep: Report) -> None:
    """Fields that set how the numbers were computed rather than being computed: level, bins, condition
    sizes, selection scores."""
    from harness.score.metrics import DEFAULT_AUROC_EDGES

    level = ((res.get("methods") or {}).get("intervals") or {}).get("level")
    if level is not None:
        chk.num("methods.intervals.level", LEVEL, level, rel=0, abs_=0)
    m = len(side["latents"])
    subsets = {k.removeprefix("subset__"): len(v) for k, v in side.items() if k.startswith("subset__")}
    for i, c in enumerate(res["conditions"]):
        tag = f"conditions[{i}]"
        if c["selection"] == "all" or c["fraction"] == 1.0:   # every latent: no subset array is stored
            if c["selection"] == "all":
                chk.num(f"{tag}.fraction", 1.0, c["fraction"], rel=0, abs_=0)
            chk.num(f"{tag}.n_latents", m, c["n_latents"], rel=0, abs_=0)
        else:
            name = f"{c['selection']}@{c['fraction']:g}"
            rep.checked += 1
            if name not in subsets:
                rep.mismatches.append(f"{tag}: no subset {name} in the side file (fraction edited?)")
            else:
                chk.num(f"{tag}.n_latents", subsets[name], c["n_latents"], rel=0, abs_=0)
    scores = side["selection_scores"].astype(np.float64)
    for j, (got, want) in enumerate(zip(scores, res["per_latent"]["score"], strict=True)):
        chk.num(f"per_latent.score[{j}]", got if math.isfinite(got) else None, want)
    bins = res["sens_spec_by_detection_bin"]
    edges = [float(e) for e in DEFAULT_AUROC_EDGES]
    rep.checked += 1
    if len(bins) != len(edges) - 1:
        rep.mismatches.append(f"sens_spec_by_detection_bin: {len(bins)} bins, the protocol has {len(edges) - 1}")
        return
    sens = np.array([np.nan if v is None else v for v in res["per_latent"]["sensitivity"]], float)
    a = np.array([np.nan if v is None else v for v in res["per_latent"]["auroc"]], float) if auroc is None else auroc
    for i, b in enumerate(bins):
        chk.num(f"sens_spec_by_detection_bin[{i}].lo", edges[i], b["lo"], rel=0, abs_=0)
        chk.num(f"sens_spec_by_detection_bin[{i}].hi", edges[i + 1], b["hi"], rel=0, abs_=0)
        last = i == len(bins) - 1
        inb = (a >= edges[i]) & ((a <= edges[i + 1]) if last else (a < edges[i + 1]))
        chk.num(f"sens_spec_by_detection_bin[{i}].n", int((inb & np.isfinite(sens)).sum()), b["n"], rel=0, abs_=0)
