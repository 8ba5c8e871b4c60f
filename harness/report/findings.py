"""`harness findings`: do the paper's qualitative findings hold on a task? Numbers from result files only.

Every verdict is a paired bootstrap CI over the task's test contexts (same resamples for both sides), read
from the per-context side files that `harness eval` writes, so the document can be regenerated and checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from harness.errors import HarnessError
from harness.report.format import interval
from harness.result import ORACLE_FILE, SIDE, Interval, Result, load_result, read_side_file
from harness.score.metrics import bootstrap_indices, mean_ci, paired_difference, paired_ranking_auroc


@dataclass
class Finding:
    claim: str
    evidence: str
    holds: bool | None  # None: not decidable from the data (CI covers 0)
    detectable: str = "-"   # the smallest true effect this task would show with 80% power (`detectable`)


# A true effect of (z_0.975 + z_0.8) standard errors is declared (CI excludes 0) four times in five: with the
# bootstrap CI's half-width standing for 1.96 SE, that is 2.80 / 1.96 = 1.43 half-widths.
_POWER_80 = (1.959964 + 0.841621) / 1.959964


def detectable(lo: float, hi: float, unit: str = " nats") -> str:
    """The smallest effect a paired CI of this width detects with 80% power, e.g. `±0.082 nats`."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "-"
    if hi <= lo:   # no variation across resamples: nothing about an effect's size can be read off
        return "- (no variation)"
    return f"±{_POWER_80 * (hi - lo) / 2:.3g}{unit}"


def _side(result_path: Path, result: Result) -> dict[str, np.ndarray]:
    return read_side_file(result_path.parent / result.side_files.per_context.path)


def _diff(a, b, boot) -> tuple[float, float, float]:
    d = paired_difference(a, b, boot)["mean"]
    return d.value, d.lo, d.hi


def _verdict(lo: float, hi: float, want_negative: bool) -> bool | None:
    if want_negative:
        return True if hi < 0 else (False if lo > 0 else None)
    return True if lo > 0 else (False if hi < 0 else None)


def _rank_verdict(rs, ps, rp, pp) -> bool | None:
    """Holds when both correlations are significantly positive, reversed when both significantly negative."""
    if rs > 0 and ps < 0.05 and rp > 0 and pp < 0.05:
        return True
    if rs < 0 and ps < 0.05 and rp < 0 and pp < 0.05:
        return False
    return None


def _fmt(v, lo, hi) -> str:
    return interval(Interval(v, lo, hi), 4, sign=True, unit="nats")


def analyse(results_dir: Path, task_id: str, real: str, control: str, n_boot: int = 2000, seed: int = 0) -> list[Finding]:
    files: dict[str, tuple[Path, Result]] = {}
    for p in sorted((Path(results_dir) / task_id).glob("*.json")):
        if p.name == ORACLE_FILE:   # the noisy-oracle reference, not a method's result
            continue
        r = load_result(p)
        files[r.submission.method] = (p, r)
    for m in (real, control):
        if m not in files:
            raise HarnessError(f"{results_dir}/{task_id}: no result for method {m!r} (have: {', '.join(files) or 'none'})")
    p, r = files[real]
    s = _side(p, r)
    n = len(s[SIDE.ce("clean")])
    boot = bootstrap_indices(n, n_boot, seed)
    out = []

    zero = s[SIDE.ce_latent_zero_all]
    raw, q = s[SIDE.ce("simulated__none__all")], s[SIDE.ce_simulated_all]
    v, lo, hi = _diff(raw, zero, boot)
    out.append(Finding("Uncalibrated predictions are worse than deleting the latents (simulated[none] − latent_zero > 0)",
                       _fmt(v, lo, hi), _verdict(lo, hi, want_negative=False), detectable(lo, hi)))
    v, lo, hi = _diff(q, raw, boot)
    out.append(Finding("Quantile normalisation helps (simulated[quantile] − simulated[none] < 0)",
                       _fmt(v, lo, hi), _verdict(lo, hi, want_negative=True), detectable(lo, hi)))
    v, lo, hi = _diff(q, zero, boot)
    out.append(Finding("Calibrated simulation beats deleting the latents (simulated[quantile] − latent_zero < 0)",
                       _fmt(v, lo, hi), _verdict(lo, hi, want_negative=True), detectable(lo, hi)))

    rows = []
    wins = []
    widths = []
    for key in sorted(k for k in s if k.startswith("ce_simulated__quantile__top-scoring@")):
        frac = key.split("@")[1]
        top, rnd = s[key], s[f"ce_simulated__quantile__random@{frac}"]
        # ΔCE relative to each subset's own latent_zero: the two subsets differ, so compare what each recovers.
        top_gain = top - s[f"ce_latent_zero__top-scoring@{frac}"]
        rnd_gain = rnd - s[f"ce_latent_zero__random@{frac}"]
        v, lo, hi = _diff(top_gain, rnd_gain, boot)
        rows.append(f"f={frac}: {_fmt(v, lo, hi)}")
        wins.append(_verdict(lo, hi, want_negative=True))
        widths.append((lo, hi))
    holds = True if wins and all(w is True for w in wins) else (False if any(w is False for w in wins) else None)
    out.append(Finding("Top-scoring selection beats random selection (per fraction: [sim − latent_zero] of top-scoring "
                       "minus that of random < 0)", "; ".join(rows), holds,
                       # the widest fraction's: what every fraction could show
                       detectable(*max(widths, key=lambda w: w[1] - w[0])) if widths else "-"))

    auroc = np.asarray(r.per_latent.auroc, float)
    sens = np.asarray(r.per_latent.sensitivity, float)
    spec = np.asarray(r.per_latent.specificity, float)
    ok = np.isfinite(auroc) & np.isfinite(sens) & np.isfinite(spec)
    rs, ps = spearmanr(auroc[ok], sens[ok]) if ok.sum() > 2 else (np.nan, np.nan)
    rp, pp = spearmanr(auroc[ok], spec[ok]) if ok.sum() > 2 else (np.nan, np.nan)
    out.append(Finding("Detection score predicts sensitivity and specificity (Spearman ρ > 0 across latents)",
                       f"ρ(AUROC, sensitivity) = {rs:+.2f} (p = {ps:.3g}); ρ(AUROC, specificity) = {rp:+.2f} (p = {pp:.3g}); "
                       f"{int(ok.sum())} latents", _rank_verdict(rs, ps, rp, pp) if ok.sum() > 2 else None))

    pc, rc = files[control]
    sc = _side(pc, rc)
    v, lo, hi = _diff(q, sc[SIDE.ce_simulated_all], boot)
    out.append(Finding(f"A real method ({real}) beats its shuffled control ({control}) (CE difference < 0)",
                       _fmt(v, lo, hi) + f"; recovery {r.headline.recovery.value:+.3f} vs "
                       f"{rc.headline.recovery.value:+.3f}", _verdict(lo, hi, want_negative=True),
                       detectable(lo, hi)))

    if SIDE.true_test not in s:
        raise HarnessError(f"{p}: its side file predates true activations in side files; rerun `harness eval` on it "
                           "(stored predictions are reused, only the patching reruns)")
    if not np.array_equal(s[SIDE.latents], sc[SIDE.latents]):
        raise HarnessError(f"{p} and {pc} score different latents; evaluate both on the same task")
    a = paired_ranking_auroc(s[SIDE.pred_test], sc[SIDE.pred_test], s[SIDE.true_test] > 0, boot)
    d = a["difference"]
    # How much the explanation moves a prediction at all: the two sets see the same (context, latent) cells
    # and differ only in which explanation each latent gets.
    x, y = s[SIDE.pred_test].astype(float).ravel(), sc[SIDE.pred_test].astype(float).ravel()
    r_same = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")
    pt = s[SIDE.pred_test].astype(float)
    ctx_share = float(pt.mean(1).var() / pt.var()) if pt.var() > 0 else float("nan")
    out.append(Finding(f"A real method ({real}) ranks test contexts better than its shuffled control ({control}) "
                       "(mean per-latent AUROC of raw predictions against true firing, real − control > 0)",
                       f"{d.value:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}] (AUROC {a['a'].value:.3f} vs {a['b'].value:.3f}); "
                       f"the two sets' predictions on the same cells correlate at r = {r_same:.2f}, and the context "
                       f"alone explains {100 * ctx_share:.0f}% of the real set's prediction variance",
                       _verdict(d.lo, d.hi, want_negative=False), detectable(d.lo, d.hi, " AUROC")))

    # Detection: each latent's AUROC on its own positives and negatives, paired by latent (bootstrap over latents).
    ar = dict(zip(r.per_latent.latent, np.asarray(r.per_latent.auroc, float), strict=True))
    ac = dict(zip(rc.per_latent.latent, np.asarray(rc.per_latent.auroc, float), strict=True))
    both = [j for j in ar if j in ac and np.isfinite(ar[j]) and np.isfinite(ac[j])]
    if len(both) >= 2:
        dd = np.asarray([ar[j] - ac[j] for j in both])
        e = mean_ci(dd, bootstrap_indices(len(dd), n_boot, seed))
        lo, hi = e.lo, e.hi
        out.append(Finding(f"A real method ({real}) detects its latents better than its shuffled control ({control}) "
                           "(mean per-latent detection AUROC, real − control > 0, bootstrap over latents)",
                           f"{dd.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] (AUROC {np.mean([ar[j] for j in both]):.3f} vs "
                           f"{np.mean([ac[j] for j in both]):.3f}; {len(both)} latents)",
                           _verdict(lo, hi, want_negative=False), detectable(lo, hi, " AUROC")))
    return out


def render(findings: list[Finding], task_id: str) -> str:
    word = {True: "holds", False: "does not hold (reversed)", None: "not shown (not significant)"}
    lines = [f"| finding | evidence (mean paired difference, 95% CI) | detectable (80% power) | verdict on {task_id} |",
             "|---|---|---|---|"]
    for f in findings:
        lines.append(f"| {f.claim} | {f.evidence} | {f.detectable} | **{word[f.holds]}** |")
    return "\n".join(lines)
