"""Scores of a run (docs/protocol.md §6): ΔCE, recovery, paired differences, sensitivity/specificity,
detection AUROC, latent selection for the partial-rewriting curve. Pure numpy.

Every bootstrap statistic takes the resample indices as an argument instead of a seed, so that
all conditions of one run are scored on the *same* resamples of test contexts: differences and
ratios between conditions then get paired CIs, and the per-context correlation between
conditions (large: they share the context's difficulty) is not thrown away.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

from harness.errors import HarnessError
from harness.result import Interval

__all__ = [
    "bootstrap_indices",
    "mean_ci",
    "median_ci",
    "paired_difference",
    "recovery",
    "recovery_denominator",
    "detection_thresholds",
    "sensitivity_specificity",
    "macro",
    "detection_scores",
    "DEFAULT_AUROC_EDGES",
    "bin_by_score",
    "SELECTION_RULES",
    "select_latents",
]

CI_LEVEL = 0.95


# Rows of resamples handled at once: bounds the [rows, n] float64 temporaries at paper scale (n = 10^4).
_CHUNK = 512


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] indices of test contexts drawn with replacement (PCG64 seeded with `seed`).

    The draws are `PCG64(seed).integers(0, n, (n_boot, n), dtype=int64)`, generated in row chunks
    (numpy yields the same stream either way) and stored as int32 when n allows: 10^4 draws over
    10^4 contexts take 400 MB instead of 800 MB. docs/protocol.md §6 asks for at least 1000 draws;
    that is the task's policy, so tests can use fewer here.
    """
    if n < 1 or n_boot < 1:
        raise HarnessError(f"bootstrap needs n >= 1 contexts and n_boot >= 1 draws, got n={n}, "
                           f"n_boot={n_boot}")
    rng = np.random.Generator(np.random.PCG64(seed))
    out = np.empty((n_boot, n), dtype=np.int32 if n < 2**31 else np.int64)
    for lo in range(0, n_boot, _CHUNK):
        out[lo:lo + _CHUNK] = rng.integers(0, n, size=(min(_CHUNK, n_boot - lo), n), dtype=np.int64)
    return out


def _resampled(x: np.ndarray, boot_idx: np.ndarray, stat) -> np.ndarray:
    return np.concatenate([stat(x[boot_idx[lo:lo + _CHUNK]]) for lo in range(0, boot_idx.shape[0], _CHUNK)])


def _vector(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.shape[0] == 0:
        raise HarnessError(f"{name} must be a non-empty 1-D array of per-context values, got "
                           f"shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise HarnessError(f"{name} contains NaN or inf")
    return x


def _check_boot(boot_idx: np.ndarray, n: int) -> np.ndarray:
    boot_idx = np.asarray(boot_idx)
    if boot_idx.ndim != 2 or not np.issubdtype(boot_idx.dtype, np.integer):
        raise HarnessError(f"bootstrap indices must be an integer [n_boot, n] array, got shape "
                           f"{boot_idx.shape} dtype {boot_idx.dtype}")
    if boot_idx.shape[1] != n or boot_idx.min() < 0 or boot_idx.max() >= n:
        raise HarnessError(f"bootstrap indices were drawn for {boot_idx.shape[1]} contexts "
                           f"(max index {boot_idx.max()}), the data has {n}")
    return boot_idx


def _percentile_ci(stats: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(stats, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(lo), float(hi)


def mean_ci(x: np.ndarray, boot_idx: np.ndarray, level: float = CI_LEVEL) -> Interval:
    x = _vector(x, "values")
    boot_idx = _check_boot(boot_idx, x.shape[0])
    return Interval(float(x.mean()), *_percentile_ci(_resampled(x, boot_idx, lambda b: b.mean(axis=1)), level))


def median_order_statistics(n: int, level: float = CI_LEVEL) -> tuple[int, int] | None:
    """1-based ranks (l, n + 1 − l) of the distribution-free CI for a median: the largest l with
    P(Binomial(n, ½) ≤ l − 1) ≤ (1 − level)/2. None when n is too small for any such l (n < 6 at 95%)."""
    from scipy.stats import binom

    alpha = (1.0 - level) / 2.0
    l = int(binom.ppf(alpha, n, 0.5))        # smallest k with P(B ≤ k) ≥ alpha, so P(B ≤ k − 1) < alpha
    if l >= 1 and binom.cdf(l, n, 0.5) <= alpha:
        l += 1
    return (l, n + 1 - l) if l >= 1 else None


def median_ci(x: np.ndarray, boot_idx: np.ndarray | None = None, level: float = CI_LEVEL) -> Interval:
    """Median with its distribution-free order-statistic interval [x_(l), x_(n+1−l)].

    Not a bootstrap: the bootstrap distribution of a median is lumpy (every resample's median is
    one or two order statistics), so its percentile endpoints jump between neighbouring order
    statistics from seed to seed — on the mini task by half a CI width at 1000 draws and still
    0.15 at 20 000 (benchmarks/bootstrap_draws.py). The binomial interval needs no seed and covers
    the median with probability ≥ `level` for any continuous distribution. `boot_idx` is accepted
    for symmetry with the other statistics and not used.
    """
    x = _vector(x, "values")
    ranks = median_order_statistics(x.shape[0], level)
    med = float(np.median(x))
    if ranks is None:
        return Interval(med, math.nan, math.nan, note=f"CI undefined: {x.shape[0]} values are too few for "
                                                      f"a {level:.0%} median interval")
    srt = np.sort(x)
    return Interval(med, float(srt[ranks[0] - 1]), float(srt[ranks[1] - 1]))


def paired_difference(a: np.ndarray, b: np.ndarray, boot_idx: np.ndarray) -> dict[str, Interval]:
    """Mean (paired bootstrap CI from the shared resamples) and median (order-statistic CI) of a − b."""
    a = _vector(a, "first condition")
    b = _vector(b, "second condition")
    if a.shape != b.shape:
        raise HarnessError(f"paired conditions must cover the same contexts, got {a.shape[0]} "
                           f"and {b.shape[0]}")
    d = a - b
    return {"mean": mean_ci(d, boot_idx), "median": median_ci(d, boot_idx)}


def recovery(ce_zero: np.ndarray, ce_sim: np.ndarray, ce_coder: np.ndarray,
             boot_idx: np.ndarray | None = None, level: float = CI_LEVEL) -> Interval:
    """R = (CE̅(latent_zero) − CE̅(simulated)) / (CE̅(latent_zero) − CE̅(coder)) with Fieller's interval.

    R is a ratio of two paired means, a = mean(z − s) and b = mean(z − c). When deleting the latents
    barely moves CE, b's own CI contains 0 and R is unbounded: a percentile bootstrap of a/b then only
    reports how often a resample's denominator happens to land near 0. Fieller's interval is the set
    of ρ for which the per-context values (z − s) − ρ(z − c) have a mean not significantly different
    from 0 (a one-sample t-test at `level`), so it is exact under normality of the means, needs no
    seed, and says "unbounded" exactly when b is not significantly different from 0:

        (b² − t²·v_bb) ρ² − 2 (a·b − t²·v_ab) ρ + (a² − t²·v_aa) ≤ 0

    with v the (co)variances of the two means (ddof = 1) and t the Student quantile on n − 1 df.
    If the leading coefficient is > 0 the interval is [lo, hi]; otherwise it is the whole line or the
    complement of an interval, and lo = −inf, hi = +inf with a note saying so (JSON writes null).
    `boot_idx` is accepted for symmetry with the other statistics and not used.
    """
    from scipy.stats import t as student_t

    z = _vector(ce_zero, "CE(latent_zero)")
    s = _vector(ce_sim, "CE(simulated)")
    c = _vector(ce_coder, "CE(coder)")
    if not (z.shape == s.shape == c.shape):
        raise HarnessError(f"recovery needs the three conditions on the same contexts, got "
                           f"{z.shape[0]}, {s.shape[0]}, {c.shape[0]}")
    n = z.shape[0]
    # "~0" relative to the size of the CEs: differences below float64 noise on summing n CEs.
    tol = 1e-12 * max(1.0, float(np.abs(z).max()), float(np.abs(c).max()))
    da, db = z - s, z - c
    a, b = float(da.mean()), float(db.mean())
    if abs(b) <= tol:
        return Interval(math.nan, math.nan, math.nan,
                        note="undefined: CE(latent_zero) and CE(coder) have the same mean, so "
                             "deleting the latents loses nothing to recover")
    value = a / b
    if n < 2:
        return Interval(value, math.nan, math.nan, note="CI undefined: one test context")
    cov = np.cov(np.stack([da, db]), ddof=1) / n
    v_aa, v_ab, v_bb = float(cov[0, 0]), float(cov[0, 1]), float(cov[1, 1])
    t2 = float(student_t.ppf(0.5 + level / 2.0, n - 1)) ** 2
    A = b * b - t2 * v_bb
    B = a * b - t2 * v_ab
    C = a * a - t2 * v_aa
    disc = B * B - A * C
    if A <= 0:
        return Interval(value, -math.inf, math.inf,
                        note=f"CI unbounded (Fieller): the denominator CE(latent_zero) - CE(coder) = "
                             f"{b:+.4g} nats is not significantly different from 0 "
                             f"(t = {b / math.sqrt(v_bb) if v_bb > 0 else math.inf:.2f})")
    root = math.sqrt(max(disc, 0.0))
    return Interval(value, (B - root) / A, (B + root) / A)


def recovery_denominator(ce_zero: np.ndarray, ce_coder: np.ndarray, boot_idx: np.ndarray) -> Interval:
    """CE̅(latent_zero) − CE̅(coder), the nats there are to recover, with its percentile CI."""
    return paired_difference(ce_zero, ce_coder, boot_idx)["mean"]


def detection_thresholds(pred_calib: np.ndarray, fire_rate: np.ndarray,
                         weights: np.ndarray | None = None) -> np.ndarray:
    """Per latent j: the ⌈r_j·n⌉-th largest calibration prediction, r_j = the latent's true firing rate.

    "Predicted firing" (p ≥ t_j) then marks the same share of calibration contexts as the latent
    really fires on, whatever scale the simulator answers on (expected digits, log-odds, raw scores):
    the threshold is fit on the calibration split and the activation sample, never on the detection
    labels. It is the prediction-scale twin of the quantile map, which sends exactly the calibration
    predictions above the (1 − r_j) quantile to non-zero activations. r_j = 0 gives +inf (never firing).

    With `weights` [n, m] (a cascade's calibration weights) value i counts weights[i, j] times: the threshold
    is the largest value whose weighted share at or above it is at least r_j (with integer weights, the
    unweighted rule on the sample with each value repeated).
    """
    x = np.asarray(pred_calib, dtype=np.float64)
    r = np.asarray(fire_rate, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or r.shape != (x.shape[1],):
        raise HarnessError(f"detection thresholds need calibration predictions [n, m] and m firing rates, got "
                           f"{x.shape} and {r.shape}")
    if weights is not None:
        return _weighted_thresholds(x, r, np.asarray(weights, dtype=np.float64))
    n = x.shape[0]
    k = np.ceil(np.clip(r, 0.0, 1.0) * n - 1e-9).astype(np.int64)  # 1e-9: r·n integral up to float error
    srt = np.sort(x, axis=0)
    out = np.full(x.shape[1], math.inf)
    fires = k > 0
    out[fires] = srt[n - k[fires], np.flatnonzero(fires)]
    return out


def _weighted_thresholds(x: np.ndarray, r: np.ndarray, w: np.ndarray) -> np.ndarray:
    if w.shape != x.shape or np.any(~np.isfinite(w)) or np.any(w < 0):
        raise HarnessError(f"calibration weights must be finite, non-negative and shaped like the predictions "
                           f"{x.shape}, got {w.shape}")
    out = np.full(x.shape[1], math.inf)
    for j in range(x.shape[1]):
        keep = w[:, j] > 0
        if not keep.any() or r[j] <= 0:
            continue
        order = np.argsort(-x[keep, j], kind="stable")
        top = np.cumsum(w[keep, j][order])
        # -1e-9: r·W reached up to float error counts as reached, as in the unweighted rule.
        i = int(np.searchsorted(top, min(r[j], 1.0) * top[-1] - 1e-9, side="left"))
        out[j] = x[keep, j][order][min(i, len(top) - 1)]
    return out


def sensitivity_specificity(true_active: np.ndarray, sim_active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per latent: sensitivity TP/(TP+FN) and specificity TN/(TN+FP) over n test contexts.

    Arrays that are not boolean are read as "active iff non-zero", which is the protocol's
    definition for latent values. NaN where a latent has no positives (sensitivity) or no
    negatives (specificity) in the test split.
    """
    t = np.asarray(true_active)
    s = np.asarray(sim_active)
    if t.ndim != 2 or t.shape != s.shape:
        raise HarnessError(f"active masks must both be [n_contexts, m_latents], got {t.shape} "
                           f"and {s.shape}")
    t = t.astype(bool)
    s = s.astype(bool)
    tp = np.sum(t & s, axis=0)
    pos = np.sum(t, axis=0)
    tn = np.sum(~t & ~s, axis=0)
    neg = t.shape[0] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(pos > 0, tp / np.maximum(pos, 1), np.nan)
        spec = np.where(neg > 0, tn / np.maximum(neg, 1), np.nan)
    return sens.astype(np.float64), spec.astype(np.float64)


def macro(x: np.ndarray) -> float:
    """Mean over latents where the per-latent value is defined (NaN if none is)."""
    x = np.asarray(x, dtype=np.float64)
    if not np.any(np.isfinite(x)):
        return math.nan
    return float(np.nanmean(x))


def detection_scores(pred_pos: np.ndarray, pred_neg: np.ndarray,
                     threshold: float | np.ndarray = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per latent: AUROC and balanced accuracy of predictions separating positives from negatives.

    AUROC is the Mann–Whitney statistic from mid-ranks, so a tie between a positive and a
    negative counts ½. Balanced accuracy calls a prediction active iff it is ≥ `threshold`, a
    scalar or one value per latent (`evaluate` passes `detection_thresholds`, fit on the
    calibration split), never a threshold tuned on these labels, which would inflate it on
    100 + 100 contexts.

    pred_pos is [m, P], pred_neg [m, N]; NaN entries are missing (padding for latents with fewer
    detection contexts). A latent without positives or negatives gets NaN.
    """
    pos = np.asarray(pred_pos, dtype=np.float64)
    neg = np.asarray(pred_neg, dtype=np.float64)
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[0] != neg.shape[0]:
        raise HarnessError(f"detection predictions must be [m, P] and [m, N] for the same m "
                           f"latents, got {pos.shape} and {neg.shape}")
    if np.any(np.isinf(pos)) or np.any(np.isinf(neg)):
        raise HarnessError("detection predictions contain inf")
    m, P = pos.shape
    threshold = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (m,))[:, None]
    n_pos = np.sum(~np.isnan(pos), axis=1)
    n_neg = np.sum(~np.isnan(neg), axis=1)
    both = np.concatenate([pos, neg], axis=1)
    if both.shape[1] == 0:
        return np.full(m, np.nan), np.full(m, np.nan)
    ranks = rankdata(both, method="average", axis=1, nan_policy="omit")
    u_stat = np.nansum(ranks[:, :P], axis=1) - n_pos * (n_pos + 1) / 2.0
    defined = (n_pos > 0) & (n_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = np.where(defined, u_stat / (n_pos * n_neg), np.nan)
        tpr = np.sum(pos >= threshold, axis=1) / n_pos      # NaN compares False: not counted
        tnr = np.sum(neg < threshold, axis=1) / n_neg
        bal = np.where(defined, (tpr + tnr) / 2.0, np.nan)
    return auroc.astype(np.float64), bal.astype(np.float64)


def ranking_auroc(pred: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Per column j: AUROC of pred[:, j] separating rows where latent j is truly active from the rest.

    The test-split counterpart of `detection_scores`: how well the simulator *ranks* natural contexts for a
    latent, before any calibration (quantile normalisation preserves this ranking). Mann–Whitney from
    mid-ranks; a column without positives or negatives gets NaN. pred and active are [n, m].
    """
    pred = np.asarray(pred, dtype=np.float64)
    active = np.asarray(active, dtype=bool)
    if pred.shape != active.shape or pred.ndim != 2:
        raise HarnessError(f"ranking_auroc needs pred and active of the same [n, m] shape, got {pred.shape} and {active.shape}")
    ranks = rankdata(pred, method="average", axis=0)
    n_pos = active.sum(0)
    n_neg = len(pred) - n_pos
    u_stat = (ranks * active).sum(0) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u_stat / (n_pos * n_neg), np.nan)


def paired_ranking_auroc(pred_a: np.ndarray, pred_b: np.ndarray, active: np.ndarray,
                         boot_idx: np.ndarray, level: float = CI_LEVEL) -> dict[str, Interval]:
    """Mean over latents of `ranking_auroc` for two prediction sets on the same cells, and a minus b, with
    percentile CIs from resampling the rows (contexts) together. In a resample a latent counts only where it
    has both positives and negatives; the mean is over those latents, the same for a and b."""
    pred_a, pred_b = np.asarray(pred_a, float), np.asarray(pred_b, float)
    active = np.asarray(active, bool)
    boot_idx = _check_boot(boot_idx, len(active))

    def stat(rows):
        a, b = ranking_auroc(pred_a[rows], active[rows]), ranking_auroc(pred_b[rows], active[rows])
        ok = np.isfinite(a) & np.isfinite(b)
        return (np.mean(a[ok]), np.mean(b[ok])) if ok.any() else (np.nan, np.nan)

    full = np.arange(len(active))
    va, vb = stat(full)
    bs = np.array([stat(r) for r in boot_idx])
    out = {}
    for name, v, col in (("a", va, bs[:, 0]), ("b", vb, bs[:, 1]), ("difference", va - vb, bs[:, 0] - bs[:, 1])):
        lo, hi = _percentile_ci(col[np.isfinite(col)], level) if np.isfinite(col).any() else (math.nan, math.nan)
        out[name] = Interval(float(v), lo, hi)
    return out


# Figure 4 of the paper bins latents by detection AUROC in tenths above chance; everything at or
# below chance goes into one bin.
DEFAULT_AUROC_EDGES = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def bin_by_score(scores: np.ndarray, values: np.ndarray,
                 edges: np.ndarray | tuple = DEFAULT_AUROC_EDGES) -> list[dict]:
    """Mean of `values` (e.g. sensitivity) over latents binned by `scores` (e.g. AUROC).

    Bins are [lo, hi) except the last, [lo, hi]. Latents with a NaN score or a score outside the
    edges are left out. `n` counts the latents in the bin whose value is defined (those that the
    mean is over), so an empty or all-NaN bin has n = 0 and mean None.
    """
    scores = np.asarray(scores, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if scores.ndim != 1 or scores.shape != values.shape:
        raise HarnessError(f"scores and values must be 1-D per-latent arrays of one length, got "
                           f"{scores.shape} and {values.shape}")
    if edges.ndim != 1 or edges.shape[0] < 2 or np.any(np.diff(edges) <= 0):
        raise HarnessError(f"bin edges must be at least two strictly increasing numbers, got "
                           f"{edges.tolist()}")
    out = []
    for b in range(edges.shape[0] - 1):
        lo, hi = float(edges[b]), float(edges[b + 1])
        last = b == edges.shape[0] - 2
        in_bin = (scores >= lo) & ((scores <= hi) if last else (scores < hi))
        v = values[in_bin & np.isfinite(values)]
        out.append({"lo": lo, "hi": hi, "n": int(v.shape[0]),
                    "mean": float(v.mean()) if v.shape[0] else None})
    return out


SELECTION_RULES = ("top-scoring", "random", "all")


def select_latents(rule: str, latents: np.ndarray, fraction: float,
                   scores: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """The latent subset S_f of the partial-rewriting curve, in selection order.

    count = round(fraction · len(latents)) with halves rounded up, at least 1 when fraction > 0.
    Each rule returns a prefix of one fixed order, so subsets are nested across fractions
    (S_0.1 ⊂ S_0.2 ⊂ …) and the curve's steps add latents rather than reshuffle them:

    * `top-scoring`: highest score first, ties broken by lower latent index; NaN scores last.
    * `random`: a PCG64(seed) permutation of the latents in increasing index order, so the
      subset depends on the set of latents and the seed, not on the order they were passed in.
    * `all`: every latent (increasing index), whatever the fraction.
    """
    latents = np.asarray(latents)
    if latents.ndim != 1 or not np.issubdtype(latents.dtype, np.integer):
        raise HarnessError(f"latents must be a 1-D integer array, got shape {latents.shape} "
                           f"dtype {latents.dtype}")
    if np.unique(latents).shape[0] != latents.shape[0]:
        raise HarnessError("latents to select from contain duplicates")
    if rule not in SELECTION_RULES:
        raise HarnessError(f"unknown selection rule {rule!r}; use one of: "
                           f"{', '.join(SELECTION_RULES)}")
    if not (0.0 <= fraction <= 1.0):
        raise HarnessError(f"fraction must lie in [0, 1], got {fraction}")
    if rule == "all":
        return np.sort(latents)
    n = latents.shape[0]
    count = int(math.floor(fraction * n + 0.5))
    if fraction > 0 and n > 0:
        count = max(count, 1)
    count = min(count, n)
    if rule == "top-scoring":
        if scores is None:
            raise HarnessError("selection rule 'top-scoring' needs per-latent scores")
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != latents.shape:
            raise HarnessError(f"got {scores.shape[0] if scores.ndim else 0} scores for "
                               f"{n} latents")
        # lexsort's last key is primary; NaN sorts to the end of an ascending sort.
        order = np.lexsort((latents, -scores))
        return latents[order[:count]]
    base = np.sort(latents)
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(n)
    return base[perm[:count]]
