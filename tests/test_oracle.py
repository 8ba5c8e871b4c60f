"""The noisy-oracle reference (harness/score/oracle.py, harness/oracle.py, `harness oracle`)."""

import json
import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from harness.errors import HarnessError
from harness.score.metrics import detection_scores, sensitivity_specificity
from harness.score.oracle import (
    bootstrap_sens_spec,
    check_levels,
    expected_auroc,
    noise_scales,
    noisy,
    solve_sigma,
)


def hanley_mcneil_se(a: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an empirical AUROC (Hanley & McNeil 1982)."""
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return math.sqrt((a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg))


@pytest.mark.parametrize("a", [0.6, 0.7, 0.8, 0.9, 0.95])
def test_binary_sigma_is_the_binormal_closed_form(a):
    # a = Φ(d'/√2) with d' = 1/σ for signals 0 and 1.
    assert solve_sigma(np.ones(7), a) == pytest.approx(1 / (math.sqrt(2) * norm.ppf(a)), rel=1e-12)


@pytest.mark.parametrize("a", [0.6, 0.8, 0.95])
def test_graded_sigma_solves_the_expected_auroc(a):
    x = np.random.default_rng(1).lognormal(0.0, 1.0, 40)
    sigma = solve_sigma(x, a)
    assert expected_auroc(x, sigma) == pytest.approx(a, abs=1e-8)
    # Mean of Φ(x_i/(σ√2)) written out independently.
    assert np.mean(norm.cdf(x / (sigma * math.sqrt(2)))) == pytest.approx(a, abs=1e-8)


def test_no_noise_at_auroc_one():
    assert solve_sigma(np.array([0.3, 2.0]), 1.0) == 0.0


@pytest.mark.parametrize("form", ["graded", "binary"])
@pytest.mark.parametrize("a", [0.6, 0.8, 0.95])
def test_realised_auroc_is_within_sampling_error_of_the_target(form, a):
    rng = np.random.default_rng(7)
    P = N = 3000
    pos = rng.lognormal(0.0, 0.8, P)              # detection positives' true activations
    sigma = noise_scales(form, [pos], [np.zeros(0)], a)
    p = noisy(form, pos[:, None], sigma, rng.standard_normal((P, 1)))[:, 0]
    q = noisy(form, np.zeros((N, 1)), sigma, rng.standard_normal((N, 1)))[:, 0]
    ref = roc_auc_score(np.r_[np.ones(P), np.zeros(N)], np.r_[p, q])
    ours, _ = detection_scores(p[None], q[None])
    assert ours[0] == pytest.approx(ref, abs=1e-12)
    # The solve makes the expectation exactly a; only the noise draws move the realised value.
    assert abs(ref - a) <= 4 * hanley_mcneil_se(a, P, N)


@pytest.mark.parametrize("form", ["graded", "binary"])
def test_realised_auroc_rises_with_the_target_under_common_noise(form):
    # With the same draws at every level, a pair (positive i, negative k) is ordered correctly iff
    # s_i + σ(ε_i − ε_k) > 0: true for every σ when ε_i ≥ ε_k, else exactly when σ < s_i/(ε_k − ε_i). Each
    # pair can only turn wrong as σ grows, and σ falls as a rises, so the realised AUROC cannot fall.
    rng = np.random.default_rng(3)
    pos = rng.lognormal(0.0, 1.0, 30)
    ep, en = rng.standard_normal((30, 1)), rng.standard_normal((25, 1))
    got = []
    for a in (0.6, 0.7, 0.8, 0.9, 0.95, 1.0):
        sigma = noise_scales(form, [pos], [np.zeros(0)], a)
        p = noisy(form, pos[:, None], sigma, ep)[:, 0]
        q = noisy(form, np.zeros((25, 1)), sigma, en)[:, 0]
        got.append(roc_auc_score(np.r_[np.ones(30), np.zeros(25)], np.r_[p, q]))
    assert all(b >= a for a, b in zip(got, got[1:], strict=False))
    assert got[-1] == 1.0


def test_bootstrap_sens_spec_matches_a_resample_loop():
    rng = np.random.default_rng(0)
    t = rng.random((40, 5)) < 0.2
    s = rng.random((40, 5)) < 0.3
    boot = rng.integers(0, 40, (9, 40))
    se, sp = bootstrap_sens_spec(t, s, boot, chunk=4)
    for b, rows in enumerate(boot):
        a, c = sensitivity_specificity(t[rows], s[rows])
        assert se[b] == pytest.approx(np.nanmean(a), abs=1e-12)
        assert sp[b] == pytest.approx(np.nanmean(c), abs=1e-12)


@pytest.mark.parametrize("bad", [[], [0.5], [1.2], [float("nan")]])
def test_bad_levels(bad):
    with pytest.raises(HarnessError, match="--levels"):
        check_levels(bad)


def test_cli_bad_levels_one_line(tiny, capsys):
    from harness.cli import main

    for arg in ("0.4,0.9", "x"):
        assert main(["oracle", "--task", str(tiny / "task"), "--levels", arg]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "--levels" in err and "\n" not in err


@pytest.fixture(scope="module")
def oracle_run(tiny, tmp_path_factory):
    import os

    from harness.cli import main

    out = tmp_path_factory.mktemp("oracle")
    old = os.environ.get("HARNESS_CACHE")
    os.environ["HARNESS_CACHE"] = str(tiny / "cache")
    try:
        assert main(["oracle", "--task", str(tiny / "task"), "--levels", "0.8,1", "-o", str(out)]) == 0
    finally:
        if old is None:
            os.environ.pop("HARNESS_CACHE")
        else:
            os.environ["HARNESS_CACHE"] = old
    return out


def test_oracle_report_on_the_tiny_task(oracle_run):
    from harness.result import load_oracle

    rep = load_oracle(oracle_run / "oracle.json")
    assert (oracle_run / rep.figure).is_file()
    rows = {(r.form, r.target_auroc): r for r in rep.rows}
    assert set(rows) == {("graded", 0.8), ("graded", 1.0), ("binary", 0.8), ("binary", 1.0)}
    for form in ("graded", "binary"):
        # σ = 0: every positive (activation > 0) above every negative (exactly 0).
        assert rows[form, 1.0].realised_auroc.value == 1.0
        # A test zero predicted as 0 sits at calibration level (1 − f)/2 ≤ 1 − r for any latent firing on at most
        # half the tokens, so it maps to 0, and TopK never makes a zero non-zero: no false positive at all.
        assert rows[form, 1.0].specificity.value == 1.0
        # Each latent's expected AUROC is 0.8 exactly; 24 latents of 6 + 6 examples leave sampling error only.
        se = hanley_mcneil_se(0.8, 6, 6) / math.sqrt(rep.n_latents)
        assert abs(rows[form, 0.8].realised_auroc.value - 0.8) <= 4 * se
    # The raw true activations patched through the eval's own path: TopK of the true code is the code, so the
    # CE is the coder's up to float rounding (< 1e-5 nats per context) and |R − 1| ≤ 1e-5 / |denominator|.
    none = next(d for d in rep.diagnostics if d.calibration == "none")
    assert abs(none.recovery.value - 1.0) <= 1e-5 / abs(rep.recovery_denominator.value)


def test_oracle_file_is_a_reference_not_a_result(oracle_run, tiny, tmp_path):
    import shutil

    from harness.report.leaderboard import collect_results
    from harness.report.site import build_site
    from harness.task.spec import load_task

    spec = load_task(str(tiny / "task"))
    res = tmp_path / "results" / spec.id
    res.mkdir(parents=True)
    shutil.copy(oracle_run / "oracle.json", res / "oracle.json")
    rows, rejected = collect_results(tmp_path / "results", spec.id, task_hashes={spec.id: spec.hash})
    assert rows == [] and rejected == []       # neither ranked nor reported as a broken result
    index = build_site(tmp_path / "site", tmp_path / "results", str(tiny / "task"))
    page = (index.parent / spec.id / "index.html").read_text()
    assert "Reference: noisy oracle (not ranked)" in page and "oracle · graded" in page
    # A damaged file: the page says so in one line instead of failing the site.
    (res / "oracle.json").write_text(json.dumps({"schema": "something-else"}))
    index = build_site(tmp_path / "site", tmp_path / "results", str(tiny / "task"))
    assert "not an oracle report" in (index.parent / spec.id / "index.html").read_text()
