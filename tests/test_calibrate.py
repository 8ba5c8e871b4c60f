"""Tests of harness.score.calibrate against independent references (numpy on the full sample, scipy
ranks, hand-derived numbers)."""

import numpy as np
import pytest
from scipy.stats import rankdata

from harness.data.table import (
    ActivationTable,
    ActivationTableBuilder,
    _inverted_cdf_index,
    build_activation_table,
    true_quantile,
)
from harness.score.calibrate import apply_quantile_normalisation, calibrate, ecdf_midrank, fit_normaliser
from harness.errors import HarnessError


def random_topk(rng, n, k, L, p_zero=0.2, n_values=None):
    """TopK-shaped output: distinct indices per row, some values exactly 0."""
    indices = np.stack([rng.choice(L, size=k, replace=False) for _ in range(n)]).astype(np.int64)
    if n_values is None:
        values = rng.exponential(size=(n, k)).astype(np.float32)
    else:  # few distinct values: ties inside a latent's non-zero values
        values = rng.integers(1, n_values + 1, size=(n, k)).astype(np.float32) / 4
    values[rng.random((n, k)) < p_zero] = 0.0
    return values, indices


def dense(values, indices, L):
    z = np.zeros((values.shape[0], L), dtype=np.float32)
    np.put_along_axis(z, indices, values, axis=1)
    return z


def reference_table(values, indices, L, Q, method):
    """The obvious per-latent loop over every (token, slot) entry."""
    n, k = values.shape
    per_latent = [[] for _ in range(L)]
    for r in range(n):
        for c in range(k):
            if values[r, c] != 0:
                per_latent[indices[r, c]].append(values[r, c])
    probs = np.linspace(0, 1, Q)
    q = np.zeros((L, Q), dtype=np.float32)
    for j, v in enumerate(per_latent):
        if v:
            q[j] = np.quantile(np.array(v, dtype=np.float32), probs, method=method)
    counts = np.array([len(v) for v in per_latent])
    return counts / n, q, counts


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 37, 100, 999, 1000, 1001, 12345])
def test_inverted_cdf_index_matches_numpy(n):
    p = np.concatenate([np.linspace(0, 1, 1001), np.linspace(0, 1, 11), [0.95, 0.3, 1 / 3]])
    got = _inverted_cdf_index(n, p)
    want = np.quantile(np.arange(n, dtype=np.float64), p, method="inverted_cdf")
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("Q", [2, 11, 1001])
@pytest.mark.parametrize("n_values", [None, 5])
def test_build_matches_per_latent_loop(Q, n_values):
    rng = np.random.default_rng(Q)
    values, indices = random_topk(rng, n=300, k=4, L=13, n_values=n_values)
    L = 14  # latent 13 never fires: its row must stay zero
    t = build_activation_table(values, indices, L, n_quantiles=Q)
    rate, q, counts = reference_table(values, indices, L, Q, "inverted_cdf")
    assert t.n_tokens == 300 and t.method == "inverted_cdf"
    assert t.nz_quantiles.dtype == np.float32 and t.nz_quantiles.shape == (L, Q)
    np.testing.assert_array_equal(t.nz_count, counts)
    np.testing.assert_array_equal(t.fire_rate, rate)
    np.testing.assert_array_equal(t.nz_quantiles, q)
    assert counts[13] == 0 and np.all(t.nz_quantiles[13] == 0)
    # zeros among the k values were really dropped: no stored quantile is 0 for a firing latent
    assert np.all(t.nz_quantiles[counts > 0] > 0)


def test_build_other_method_matches_loop():
    rng = np.random.default_rng(1)
    values, indices = random_topk(rng, n=200, k=3, L=6)
    t = build_activation_table(values, indices, 6, n_quantiles=21, method="linear")
    _, q, _ = reference_table(values, indices, 6, 21, "linear")
    np.testing.assert_allclose(t.nz_quantiles, q, rtol=1e-6)
    assert t.method == "linear"


def test_builder_incremental_equals_one_shot(tmp_path):
    rng = np.random.default_rng(2)
    values, indices = random_topk(rng, n=250, k=5, L=9)
    whole = build_activation_table(values, indices, 9, n_quantiles=51)
    b = ActivationTableBuilder(9, n_quantiles=51)
    for lo, hi in [(0, 1), (1, 100), (100, 250)]:
        b.add(values[lo:hi], indices[lo:hi])
    part = b.finish()
    assert part.n_tokens == whole.n_tokens
    np.testing.assert_array_equal(part.nz_quantiles, whole.nz_quantiles)
    np.testing.assert_array_equal(part.nz_count, whole.nz_count)

    path = tmp_path / "sub" / "activation_table.npz"
    whole.save(path)
    back = ActivationTable.load(path)
    assert back.n_tokens == 250 and back.method == "inverted_cdf"
    np.testing.assert_array_equal(back.nz_quantiles, whole.nz_quantiles)
    np.testing.assert_array_equal(back.fire_rate, whole.fire_rate)
    np.testing.assert_array_equal(back.nz_count, whole.nz_count)


def test_build_and_load_errors(tmp_path):
    v = np.array([[1.0, 2.0]], dtype=np.float32)
    with pytest.raises(HarnessError, match="repeat"):
        build_activation_table(v, np.array([[3, 3]]), 5)
    # a repeated index is fine when it only pads zero values
    t = build_activation_table(np.array([[1.0, 0.0, 0.0]], np.float32), np.array([[3, 0, 0]]), 5)
    assert t.nz_count.tolist() == [0, 0, 0, 1, 0]
    with pytest.raises(HarnessError, match="outside"):
        build_activation_table(v, np.array([[0, 5]]), 5)
    with pytest.raises(HarnessError, match="negative"):
        build_activation_table(-v, np.array([[0, 1]]), 5)
    with pytest.raises(HarnessError, match="method"):
        build_activation_table(v, np.array([[0, 1]]), 5, method="type7")
    with pytest.raises(HarnessError, match="empty"):
        ActivationTableBuilder(5).finish()
    with pytest.raises(HarnessError, match="not found"):
        ActivationTable.load(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(HarnessError, match="unreadable"):
        ActivationTable.load(tmp_path / "bad.npz")


def column_table(col, Q=1001, method="inverted_cdf"):
    """Table whose latent 0 takes exactly the per-token values `col` (k = 1)."""
    col = np.asarray(col, dtype=np.float32)
    return build_activation_table(col[:, None], np.zeros((col.shape[0], 1), np.int64), 2,
                                  n_quantiles=Q, method=method)


def test_true_quantile_hand_example():
    # six zeros then 1, 2, 3, 4: F(0) = 0.6, each non-zero value adds 0.1
    t = column_table([0, 3, 0, 1, 0, 0, 4, 0, 2, 0])
    u = np.array([0.0, 0.3, 0.6, 0.61, 0.7, 0.71, 0.8, 0.95, 1.0])
    got = true_quantile(t, 0, u)
    np.testing.assert_array_equal(got, [0, 0, 0, 1, 1, 2, 2, 4, 4])
    assert np.all(true_quantile(t, 1, u) == 0)  # never-firing latent


@pytest.mark.parametrize("Q", [1001, 11])
def test_true_quantile_vs_full_sample(Q):
    rng = np.random.default_rng(3)
    N, c = 2000, 37
    col = np.zeros(N, dtype=np.float32)
    where = rng.choice(N, size=c, replace=False)
    col[where] = rng.exponential(size=c).astype(np.float32)
    col[where[:5]] = col[where[5]]  # ties among the non-zero values
    exact = column_table(col, Q=Q)
    # The grid-only fallback (tables without every value), as format-1 caches were.
    t = ActivationTable(exact.fire_rate, exact.nz_quantiles, exact.nz_count, exact.n_tokens, exact.method)
    u = np.concatenate([np.linspace(0, 1, 4001), rng.random(2000), [1 - c / N, 1 - c / N + 1e-9]])
    np.testing.assert_array_equal(true_quantile(exact, 0, u), np.quantile(col, u, method="inverted_cdf"))
    got = true_quantile(t, 0, u)
    want = np.quantile(col, u, method="inverted_cdf")
    zero_zone = u <= 1 - c / N
    assert np.all(got[zero_zone] == 0.0)
    assert np.isin(got, np.concatenate([[0.0], col[where]])).all()  # observed values only
    if Q - 1 >= c:  # every rank is on the grid: exact everywhere
        np.testing.assert_array_equal(got, want)
    else:  # coarse grid: never below the truth, exact where numpy picks a grid rank
        assert np.all(got >= want)
        nz_sorted = np.sort(col[where])
        grid_ranks = _inverted_cdf_index(c, np.linspace(0, 1, Q))
        u_on_grid = (N - c + grid_ranks + 0.5) / N  # numpy picks position N-c+rank for these
        np.testing.assert_array_equal(true_quantile(t, 0, u_on_grid), nz_sorted[grid_ranks])
        np.testing.assert_array_equal(np.quantile(col, u_on_grid, method="inverted_cdf"),
                                      nz_sorted[grid_ranks])
        assert np.any(got != want)  # the coarse grid does lose something: the test can tell


def test_true_quantile_linear_keeps_zero_mass():
    exact = column_table([0, 0, 0, 0, 0, 0, 1, 2, 3, 4], Q=4, method="linear")
    u = np.array([0.5, 0.6, 0.65, 0.8, 1.0])
    # The exact table is numpy's linear estimator on the full sample: it interpolates 0 → 1 too.
    np.testing.assert_allclose(true_quantile(exact, 0, u),
                               np.quantile([0, 0, 0, 0, 0, 0, 1, 2, 3, 4], u, method="linear"))
    t = ActivationTable(exact.fire_rate, exact.nz_quantiles, exact.nz_count, exact.n_tokens, exact.method)
    got = true_quantile(t, 0, u)
    # non-zero quantiles at 0, 1/3, 2/3, 1 are 1, 2, 3, 4; v = (u - 0.6) / 0.4
    np.testing.assert_allclose(got, [0, 0, 1.375, 2.5, 4.0])
    with pytest.raises(HarnessError):
        true_quantile(t, 0, np.array([1.5]))


def test_ecdf_midrank_hand_and_clipping():
    s = fit_normaliser(np.array([2.0, 0.0, 1.0, 0.0]))
    x = np.array([0.0, 1.0, 1.5, 2.0, -5.0, 9.0])
    np.testing.assert_allclose(ecdf_midrank(s, x), [0.25, 0.625, 0.75, 0.875, 0.25, 0.875])


def test_ecdf_midrank_vs_rankdata():
    rng = np.random.default_rng(4)
    calib = rng.integers(0, 6, size=(300, 3)).astype(np.float64) / 2  # heavy ties
    fitted = fit_normaliser(calib)
    u = ecdf_midrank(fitted, calib)
    want = (rankdata(calib, method="average", axis=0) - 0.5) / calib.shape[0]
    np.testing.assert_allclose(u, want, rtol=0, atol=1e-15)
    for col in range(3):  # the 2-D path is the 1-D path per column
        np.testing.assert_array_equal(u[:, col], ecdf_midrank(fitted[:, col], calib[:, col]))


def full_columns(values, indices, L, latents):
    return dense(values, indices, L)[:, latents]


def test_normalising_calibration_onto_itself_reproduces_target_quantiles():
    rng = np.random.default_rng(5)
    L, n_tok = 8, 3000
    values, indices = random_topk(rng, n=n_tok, k=2, L=L)
    table = build_activation_table(values, indices, L)
    latents = np.array([1, 4, 6])
    assert np.all(table.nz_count[latents] <= 1000)  # grid holds every rank: exact comparison
    n_cal = 400
    pred = rng.random((n_cal, 3)) * 9  # distinct predictions: mid-ranks are (i - 0.5) / n
    out = apply_quantile_normalisation(pred, pred, table, latents)
    full = full_columns(values, indices, L, latents)
    levels = (np.arange(1, n_cal + 1) - 0.5) / n_cal
    for col in range(3):
        want = np.quantile(full[:, col], levels, method="inverted_cdf")
        np.testing.assert_array_equal(np.sort(out[:, col]), want)
        # and the map is monotone: the i-th smallest prediction gets the i-th target quantile
        np.testing.assert_array_equal(out[np.argsort(pred[:, col]), col], want)
        zero_share = np.mean(out[:, col] == 0)
        assert abs(zero_share - (1 - table.fire_rate[latents[col]])) <= 1 / n_cal
    # the per-latent form agrees with the vectorised one
    np.testing.assert_array_equal(
        true_quantile(table, 4, ecdf_midrank(fit_normaliser(pred[:, 1]), pred[:, 1])), out[:, 1])


def test_calibrate_modes():
    rng = np.random.default_rng(6)
    values, indices = random_topk(rng, n=500, k=2, L=4)
    table = build_activation_table(values, indices, 4)
    latents = np.array([0, 3])
    calib = rng.random((200, 2)) * 3
    test = rng.random((50, 2)) * 9  # shifted upward: many test points above the calibration max
    np.testing.assert_array_equal(calibrate("none", calib, test, table, latents), test)
    q = calibrate("quantile", calib, test, table, latents)
    np.testing.assert_array_equal(q, apply_quantile_normalisation(calib, test, table, latents))
    pf = calibrate("prompt-fit", None, test, table, latents)
    np.testing.assert_array_equal(pf, apply_quantile_normalisation(test, test, table, latents))
    assert not np.array_equal(q, pf)
    # test points above every calibration prediction behave like the calibration maximum
    above = test[:, 0] > calib[:, 0].max()
    assert above.any()
    at_max = apply_quantile_normalisation(calib, np.full((1, 2), calib.max(axis=0)), table, latents)
    assert np.all(q[above, 0] == at_max[0, 0])
    with pytest.raises(HarnessError, match="mode"):
        calibrate("isotonic", calib, test, table, latents)
    with pytest.raises(HarnessError):
        calibrate("quantile", calib[:, :1], test, table, latents)
    with pytest.raises(HarnessError):
        calibrate("quantile", calib, test, table, np.array([0, 4]))


@pytest.mark.parametrize("method", ["inverted_cdf", "averaged_inverted_cdf", "closest_observation",
                                    "interpolated_inverted_cdf", "hazen", "weibull", "linear",
                                    "median_unbiased", "normal_unbiased", "lower", "higher", "midpoint",
                                    "nearest"])
def test_true_quantile_exact_at_1e5_heavy_tail(method):
    """10^5 non-zero values (Pareto tail) among 4·10^5 tokens: the map is np.quantile on the full sample,
    also in the top 0.1% where a 1001-point grid would return the latent's maximum."""
    rng = np.random.default_rng(11)
    N, c = 400_000, 100_000
    col = np.zeros(N, dtype=np.float32)
    col[rng.choice(N, size=c, replace=False)] = (rng.pareto(1.5, size=c) + 1).astype(np.float32)
    values = col[:, None]
    t = build_activation_table(values, np.zeros((N, 1), np.int64), 1, method=method)
    assert t.exact and t.nz_count[0] == c
    # the levels the normaliser asks for (mid-ranks of 10^4 calibration predictions), the upper tail, random ones
    u = np.concatenate([(np.arange(1, 20_000) / 20_000), 1 - np.logspace(-6, -3, 50), rng.random(1000), [0, 1]])
    got = true_quantile(t, 0, u)
    want = np.quantile(col, u, method=method)
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=0)
    top = u > 1 - 1e-3
    assert np.unique(got[top]).size > 10          # the top 0.1% is resolved, not one maximum
    assert true_quantile(t, 0, np.array([1 - 5e-4]))[0] < col.max()


def test_exact_table_survives_save_load(tmp_path):
    rng = np.random.default_rng(5)
    values, indices = random_topk(rng, n=400, k=3, L=7)
    t = build_activation_table(values, indices, 7, n_quantiles=5)
    t.save(tmp_path / "t.npz")
    back = ActivationTable.load(tmp_path / "t.npz")
    assert back.exact
    for j in range(7):
        full = dense(values, indices, 7)[:, j]
        u = np.linspace(0, 1, 333)
        np.testing.assert_array_equal(true_quantile(back, j, u), np.quantile(full, u, method="inverted_cdf"))


@pytest.mark.parametrize("method", ["inverted_cdf", "linear", "hazen", "nearest", "averaged_inverted_cdf"])
def test_needed_ranks_suffice_for_np_quantile(method):
    """The side file's excerpt of the activation sample: np.quantile on a stand-in that keeps only the
    needed order statistics (others filled monotonically) answers exactly as on the full sample."""
    from harness.data.table import needed_nonzero_ranks

    rng = np.random.default_rng(12)
    N, c = 200_000, 3_000
    nz = np.sort((rng.pareto(1.2, size=c) + 1).astype(np.float32))
    full = np.concatenate([np.zeros(N - c, np.float32), nz])
    u = (np.arange(1, 1000) / 1000)                       # mid-rank levels of 500 calibration predictions
    ranks = needed_nonzero_ranks(c, N, u, method)
    assert 0 < len(ranks) < c / 10                        # a small excerpt of the latent's values
    stand = np.zeros(c, np.float32)
    stand[ranks] = nz[ranks]
    rebuilt = np.concatenate([np.zeros(N - c, np.float32), np.maximum.accumulate(stand)])
    np.testing.assert_array_equal(np.quantile(rebuilt, u, method=method), np.quantile(full, u, method=method))


def test_weighted_ecdf_equals_the_repeated_sample():
    """Integer weights: the weighted mid-rank ECDF is the plain one on the sample with each value repeated
    (weight 0 drops a value, also from the clipping range)."""
    from harness.score.calibrate import quantile_levels, weighted_ecdf_midrank

    rng = np.random.default_rng(3)
    calib = rng.integers(0, 6, size=(30, 3)).astype(float)     # many ties
    w = rng.integers(0, 4, size=(30, 3)).astype(float)
    w[0] = 1.0
    x = np.vstack([calib, [[-1.0, 2.5, 9.0]]])
    u = quantile_levels(calib, x, w)
    for col in range(3):
        rep = np.repeat(calib[:, col], w[:, col].astype(int))
        np.testing.assert_allclose(u[:, col], ecdf_midrank(fit_normaliser(rep), x[:, col]), rtol=0, atol=1e-12)
        np.testing.assert_array_equal(weighted_ecdf_midrank(calib[:, col], np.ones(30), x[:, col]),
                                      ecdf_midrank(fit_normaliser(calib[:, col]), x[:, col]))
    with pytest.raises(HarnessError):
        weighted_ecdf_midrank(calib[:, 0], np.zeros(30), x[:, 0])
    with pytest.raises(HarnessError):
        quantile_levels(calib, x, w[:5])


def test_weighted_detection_thresholds_equal_the_repeated_sample():
    from harness.score.metrics import detection_thresholds

    rng = np.random.default_rng(4)
    calib = np.round(rng.normal(size=(25, 4)), 1)
    w = rng.integers(0, 3, size=(25, 4)).astype(float)
    w[0] = 1.0
    rate = np.array([0.1, 0.37, 0.0, 1.0])
    got = detection_thresholds(calib, rate, w)
    for j in range(4):
        rep = np.repeat(calib[:, j], w[:, j].astype(int))
        assert got[j] == detection_thresholds(rep[:, None], rate[j:j + 1])[0]
    np.testing.assert_array_equal(detection_thresholds(calib, rate, np.ones_like(calib)),
                                  detection_thresholds(calib, rate))


def test_top_examples_floor_leaves_the_top_examples_unchanged():
    """Dropping entries below each latent's top-n floor (from the exact table of the same sample) before the
    sort gives the same examples, ties included, as sorting everything."""
    from harness.data.select import top_examples_floor, top_examples_table
    from harness.data.table import build_activation_table

    rng = np.random.default_rng(7)
    n, span, k, m = 40, 6, 3, 12
    inds = np.stack([np.stack([rng.choice(m, k, replace=False) for _ in range(span)]) for _ in range(n)])
    vals = np.round(rng.exponential(size=(n, span, k)), 1).astype(np.float32)   # rounded: many ties
    vals[rng.random(vals.shape) < 0.2] = 0.0
    table = build_activation_table(vals.reshape(-1, k), inds.reshape(-1, k).astype(np.int64), m, 11, "inverted_cdf")
    rewritten = np.array([0, 3, 5, 11])
    for top_n in (1, 3, 10, 500):
        full = top_examples_table(vals, inds.astype(np.uint16), rewritten, 4, top_n)
        fast = top_examples_table(vals, inds.astype(np.uint16), rewritten, 4, top_n,
                                  floor=top_examples_floor(table, rewritten, top_n))
        for key in ("block", "pos", "value"):
            np.testing.assert_array_equal(fast[key], full[key])
    # by hand for one latent: its largest value first, at its block and position (+ lo)
    b, s, c = np.unravel_index(np.argmax(np.where(inds == 3, vals, -1)), vals.shape)
    assert full["value"][1, 0] == vals[b, s, c] and (full["block"][1, 0], full["pos"][1, 0]) == (b, s + 4)
