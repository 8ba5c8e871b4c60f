"""Tests of harness.score.metrics against hand-derived numbers, plain Python loops over the same
resamples, and scikit-learn."""

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from harness.errors import HarnessError
from harness.result import Interval, to_jsonable
from harness.score.metrics import (
    bin_by_score,
    bootstrap_indices,
    detection_scores,
    detection_thresholds,
    macro,
    mean_ci,
    median_ci,
    paired_difference,
    recovery,
    select_latents,
    sensitivity_specificity,
)


def loop_ci(stat, boot):
    """2.5 / 97.5 percentiles of `stat` over the resamples, computed one resample at a time."""
    vals = sorted(stat(b) for b in boot)
    return tuple(np.percentile(vals, [2.5, 97.5]))


def test_bootstrap_indices_are_seeded_and_in_range():
    a = bootstrap_indices(50, 200, seed=7)
    assert a.shape == (200, 50) and a.min() >= 0 and a.max() < 50
    np.testing.assert_array_equal(a, bootstrap_indices(50, 200, seed=7))
    assert not np.array_equal(a, bootstrap_indices(50, 200, seed=8))
    # with replacement: some resample repeats a context
    assert any(len(set(row)) < 50 for row in a)
    with pytest.raises(HarnessError):
        bootstrap_indices(0, 10, seed=0)


def test_mean_and_median_ci_match_loop():
    rng = np.random.default_rng(0)
    x = rng.standard_cauchy(101)
    boot = bootstrap_indices(101, 300, seed=1)
    m = mean_ci(x, boot)
    assert m.value == pytest.approx(sum(x) / len(x))
    lo, hi = loop_ci(lambda b: sum(x[i] for i in b) / len(b), boot)
    assert (m.lo, m.hi) == pytest.approx((lo, hi))
    md = median_ci(x, boot)
    assert md.value == sorted(x)[50]
    # n = 101: P(Bin(101, ½) ≤ 40) = 0.0240 ≤ 0.025 < P(≤ 41) = 0.0352, so l = 41: [x_(41), x_(61)]
    from math import comb
    cdf = lambda k: sum(comb(101, i) for i in range(k + 1)) / 2 ** 101
    assert cdf(40) <= 0.025 < cdf(41)
    assert (md.lo, md.hi) == (sorted(x)[40], sorted(x)[60])
    assert md.lo < md.value < md.hi
    assert math.isnan(median_ci(x[:5]).lo)           # no 95% order-statistic interval from 5 values
    with pytest.raises(HarnessError):
        mean_ci(x[:-1], boot)


def test_recovery_hand_example():
    boot = bootstrap_indices(2, 50, seed=0)
    r = recovery(np.array([3.0, 3.0]), np.array([2.0, 2.0]), np.array([1.0, 1.0]), boot)
    # no per-context variation: Fieller's quadratic is (4ρ² − 4ρ + 1) ≤ 0, the single point ρ = ½
    assert (r.value, r.lo, r.hi) == (0.5, 0.5, 0.5)
    # simulated worse than deleting: negative
    r = recovery(np.array([3.0, 3.0]), np.array([4.0, 5.0]), np.array([1.0, 1.0]), boot)
    assert r.value == pytest.approx(-0.75)


def test_recovery_fieller_is_the_inverted_t_test():
    """Fieller's interval = the ρ whose per-context (z − s) − ρ(z − c) passes scipy's one-sample t-test."""
    from scipy.stats import ttest_1samp

    rng = np.random.default_rng(2)
    n = 80
    coder = rng.gamma(2.0, 1.0, n)
    zero = coder + rng.gamma(3.0, 0.5, n)
    sim = coder + rng.gamma(1.5, 0.5, n)
    r = recovery(zero, sim, coder)
    assert r.value == pytest.approx((zero.mean() - sim.mean()) / (zero.mean() - coder.mean()))
    assert r.lo < r.value < r.hi and r.note == ""
    for rho in np.linspace(r.lo - 0.2, r.hi + 0.2, 201):
        p = ttest_1samp((zero - sim) - rho * (zero - coder), 0.0).pvalue
        inside = r.lo <= rho <= r.hi
        if abs(p - 0.05) > 1e-6:
            assert inside == (p > 0.05), (rho, p)
    # at the endpoints the test sits exactly at p = 0.05
    for end in (r.lo, r.hi):
        assert ttest_1samp((zero - sim) - end * (zero - coder), 0.0).pvalue == pytest.approx(0.05, abs=1e-9)


def test_recovery_unbounded_when_denominator_not_significant():
    rng = np.random.default_rng(7)
    n = 250
    coder = rng.gamma(2.0, 1.0, n)
    zero = coder + rng.normal(0.001, 0.05, n)      # deleting S barely moves CE
    sim = zero + rng.normal(0.0, 0.05, n)
    r = recovery(zero, sim, coder)
    assert math.isfinite(r.value) and r.lo == -math.inf and r.hi == math.inf
    assert "unbounded" in r.note
    assert to_jsonable(r)["lo"] is None and to_jsonable(r)["hi"] is None


def test_paired_difference():
    a = np.array([5.0, 1.0, 2.0, 10.0])
    b = np.array([1.0, 1.0, 1.0, 1.0])
    boot = bootstrap_indices(4, 200, seed=4)
    d = paired_difference(a, b, boot)
    assert d["mean"].value == 3.5 and d["median"].value == 2.5
    lo, hi = loop_ci(lambda r: float(np.mean([a[i] - b[i] for i in r])), boot)
    assert (d["mean"].lo, d["mean"].hi) == pytest.approx((lo, hi))
    # pairing matters: a constant shift has a zero-width CI even though a and b vary a lot
    rng = np.random.default_rng(5)
    base = rng.normal(0, 10, 4)
    e = paired_difference(base + 1.0, base, boot)["mean"]
    assert e.lo == pytest.approx(1.0) and e.hi == pytest.approx(1.0)
    with pytest.raises(HarnessError):
        paired_difference(a, b[:3], boot)


def test_interval_as_json():
    # One interval type from the scorers to the file: an empty note is left out, a non-finite bound is null.
    assert Interval(1.0, 0.5, 2.0).to_dict() == {"value": 1.0, "lo": 0.5, "hi": 2.0}
    assert to_jsonable(Interval(1.0, math.nan, math.inf, "why")) == {"value": 1.0, "lo": None, "hi": None,
                                                                     "note": "why"}


def test_sensitivity_specificity_hand_example():
    true = np.array([[1, 0], [1, 1], [0, 1]], dtype=bool)
    sim = np.array([[1, 1], [0, 1], [0, 0]], dtype=bool)
    sens, spec = sensitivity_specificity(true, sim)
    np.testing.assert_array_equal(sens, [0.5, 0.5])
    np.testing.assert_array_equal(spec, [1.0, 0.0])
    # float latent values: active iff non-zero; a latent always active has no specificity
    sens, spec = sensitivity_specificity(np.array([[0.3, 0.0], [1.2, 0.0]]),
                                         np.array([[0.0, 0.0], [2.0, 0.1]]))
    np.testing.assert_array_equal(sens[:1], [0.5])
    assert math.isnan(sens[1]) and math.isnan(spec[0]) and spec[1] == 0.5
    assert macro(np.array([0.5, np.nan, 1.0])) == 0.75
    assert math.isnan(macro(np.array([np.nan])))
    with pytest.raises(HarnessError):
        sensitivity_specificity(true, sim[:2])


def test_detection_scores_hand_example():
    auroc, bal = detection_scores(np.array([[1.0, 2.0]]), np.array([[0.0, 2.0]]))
    # pairs: 1>0, 1<2, 2>0, 2=2 → (1 + 0 + 1 + 0.5) / 4
    assert auroc[0] == 0.625
    # threshold 1.0: both positives predicted active, one negative (2.0) too → (1 + 0.5) / 2
    assert bal[0] == 0.75


def test_detection_scores_vs_sklearn():
    rng = np.random.default_rng(6)
    m, P, N = 6, 40, 55
    pos = np.round(rng.normal(1.5, 1.0, (m, P)).clip(0, 9), 1)  # rounded: many ties
    neg = np.round(rng.normal(0.8, 1.0, (m, N)).clip(0, 9), 1)
    pos[2, 30:] = np.nan  # latent 2 has only 30 positives, latent 4 only 50 negatives
    neg[4, 50:] = np.nan
    auroc, bal = detection_scores(pos, neg, threshold=1.0)
    for j in range(m):
        p, q = pos[j][~np.isnan(pos[j])], neg[j][~np.isnan(neg[j])]
        y = np.r_[np.ones(len(p)), np.zeros(len(q))]
        s = np.r_[p, q]
        assert auroc[j] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert bal[j] == pytest.approx(balanced_accuracy_score(y, s >= 1.0), abs=1e-12)
    _, bal2 = detection_scores(pos, neg, threshold=2.0)
    assert not np.allclose(bal, bal2)
    auroc, bal = detection_scores(np.full((1, 3), np.nan), np.zeros((1, 3)))
    assert math.isnan(auroc[0]) and math.isnan(bal[0])


def test_bin_by_score():
    scores = np.array([0.3, 0.55, 0.58, 0.95, 1.0, np.nan, 0.65])
    values = np.array([0.1, 0.2, 0.4, 0.9, 0.7, 0.5, np.nan])
    bins = bin_by_score(scores, values)
    assert [(b["lo"], b["hi"]) for b in bins] == [(0.0, 0.5), (0.5, 0.6), (0.6, 0.7), (0.7, 0.8),
                                                  (0.8, 0.9), (0.9, 1.0)]
    assert [b["n"] for b in bins] == [1, 2, 0, 0, 0, 2]
    assert bins[1]["mean"] == pytest.approx(0.3) and bins[5]["mean"] == pytest.approx(0.8)
    assert bins[2]["mean"] is None
    with pytest.raises(HarnessError):
        bin_by_score(scores, values, edges=[0.5, 0.5, 1.0])


def test_select_top_scoring_order():
    latents = np.array([40, 10, 30, 20, 50])
    scores = np.array([0.7, 0.9, 0.7, np.nan, 0.8])
    assert select_latents("top-scoring", latents, 1.0, scores).tolist() == [10, 50, 30, 40, 20]
    assert select_latents("top-scoring", latents, 0.4, scores).tolist() == [10, 50]
    with pytest.raises(HarnessError):
        select_latents("top-scoring", latents, 0.5, None)


def test_select_counts_and_rules():
    lat = np.arange(100, 110)
    assert len(select_latents("random", lat, 0.25, seed=0)) == 3  # 2.5 rounds up
    assert len(select_latents("random", lat, 0.01, seed=0)) == 1  # at least one
    assert len(select_latents("random", lat, 0.0, seed=0)) == 0
    assert select_latents("all", lat[::-1], 0.3).tolist() == lat.tolist()
    with pytest.raises(HarnessError):
        select_latents("best", lat, 0.5)
    with pytest.raises(HarnessError):
        select_latents("random", lat, 1.5)
    with pytest.raises(HarnessError):
        select_latents("random", np.array([1, 1, 2]), 0.5)


def test_random_selection_is_nested_and_seeded():
    rng = np.random.default_rng(7)
    lat = rng.choice(10_000, size=200, replace=False)
    subsets = [select_latents("random", lat, f, seed=11) for f in [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]]
    for small, big in zip(subsets, subsets[1:]):
        assert set(small) < set(big)
        np.testing.assert_array_equal(big[: len(small)], small)
    assert [len(s) for s in subsets] == [20, 40, 60, 80, 100, 120, 140, 160, 180, 200]
    # the subset depends on the set of latents and the seed, not on the order given
    np.testing.assert_array_equal(select_latents("random", lat[::-1], 0.3, seed=11), subsets[2])
    assert set(select_latents("random", lat, 0.3, seed=12)) != set(subsets[2])
    # and it is not just the first latents in sorted order
    assert set(subsets[0]) != set(np.sort(lat)[:20])




def test_ranking_auroc_matches_sklearn_and_handles_one_class():
    from sklearn.metrics import roc_auc_score

    from harness.score.metrics import ranking_auroc

    rng = np.random.default_rng(3)
    active = rng.random((60, 4)) < 0.25
    pred = rng.integers(0, 4, size=(60, 4)).astype(float) + active * rng.random((60, 4))  # ties included
    active[:, 3] = False                                   # a latent that never fires here
    got = ranking_auroc(pred, active)
    for j in range(3):
        assert got[j] == pytest.approx(roc_auc_score(active[:, j], pred[:, j]), abs=1e-12)
    assert np.isnan(got[3])
    with pytest.raises(HarnessError, match="same"):
        ranking_auroc(pred[:, :2], active)


def test_paired_ranking_auroc_difference_and_perfect_ranker():
    from harness.score.metrics import bootstrap_indices, paired_ranking_auroc

    rng = np.random.default_rng(4)
    active = rng.random((80, 3)) < 0.3
    perfect = active.astype(float) + 0.01 * rng.random((80, 3))
    noise = rng.random((80, 3))
    out = paired_ranking_auroc(perfect, noise, active, bootstrap_indices(80, 300, 0))
    assert out["a"].value == pytest.approx(1.0) and out["a"].lo == pytest.approx(1.0)
    assert out["difference"].value == pytest.approx(out["a"].value - out["b"].value)
    assert out["difference"].lo > 0                        # a perfect ranker beats noise on 80 contexts
    same = paired_ranking_auroc(noise, noise, active, bootstrap_indices(80, 300, 0))["difference"]
    assert same.value == 0 and same.lo == 0 and same.hi == 0


def test_detection_thresholds_match_firing_rate_on_any_scale():
    rng = np.random.default_rng(8)
    n = 200
    digits = rng.uniform(1.5, 3.0, (n, 3))           # an expected-digit simulator that never goes below 1.5
    logodds = rng.normal(-4.0, 3.0, (n, 3))           # a binary simulator's log P(yes) - log P(no)
    rate = np.array([0.05, 0.013, 0.0])
    for pred in (digits, logodds):
        t = detection_thresholds(pred, rate)
        # ⌈0.05·200⌉ = 10 and ⌈0.013·200⌉ = 3 calibration contexts called firing; a dead latent never fires
        assert (pred[:, 0] >= t[0]).sum() == 10 and (pred[:, 1] >= t[1]).sum() == 3
        assert t[0] == np.sort(pred[:, 0])[-10] and t[2] == math.inf
        # the same thresholds are invariant to any increasing rescaling of the simulator's answers
        np.testing.assert_array_equal(detection_thresholds(np.exp(pred), rate)[:2], np.exp(t[:2]))
    pos, neg = rng.normal(2.0, 1.0, (3, 20)), rng.normal(0.0, 1.0, (3, 30))
    t = np.array([1.0, 0.5, 3.0])
    _, bal = detection_scores(pos, neg, threshold=t)
    for j in range(3):
        y = np.r_[np.ones(20), np.zeros(30)]
        assert bal[j] == pytest.approx(balanced_accuracy_score(y, np.r_[pos[j], neg[j]] >= t[j]))


def test_bootstrap_indices_chunked_equal_one_draw():
    n, B = 37, 1300                                   # more rows than one chunk
    want = np.random.Generator(np.random.PCG64(9)).integers(0, n, size=(B, n), dtype=np.int64)
    np.testing.assert_array_equal(bootstrap_indices(n, B, 9), want)


def test_median_order_statistic_coverage():
    """Coverage of the 95% median interval on skewed data, by simulation: at least 95%, not far above."""
    rng = np.random.default_rng(10)
    hits = 0
    for _ in range(2000):
        x = rng.lognormal(0.0, 1.5, 60)
        e = median_ci(x)
        hits += e.lo <= 1.0 <= e.hi                   # the lognormal(0, σ) median is 1
    assert 0.945 <= hits / 2000 <= 0.985


def test_derangement_moves_every_item_and_is_seeded():
    from harness.baselines.explain import derangement

    for n in (2, 3, 7, 50):
        perm = derangement(np.random.default_rng(n), n)
        assert sorted(perm) == list(range(n)) and not np.any(perm == np.arange(n))
    np.testing.assert_array_equal(derangement(np.random.default_rng(1), 9), derangement(np.random.default_rng(1), 9))
    assert list(derangement(np.random.default_rng(0), 1)) == [0]


def test_detectable_effect_by_hand():
    from harness.report.findings import detectable

    # 80% power at two-sided 5%: (1.959964 + 0.841621) / 1.959964 = 1.4294 CI half-widths.
    assert detectable(-0.1, 0.1) == "±0.143 nats"
    assert detectable(0.2, 0.6, " AUROC") == "±0.286 AUROC"
    assert detectable(0.0, 0.0) == "- (no variation)"
    assert detectable(-float("inf"), 1.0) == "-"
