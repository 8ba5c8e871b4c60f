import copy
import csv
import dataclasses
import io
import json
import math
import os

import numpy as np
import pytest
from rich.console import Console

from harness.errors import HarnessError
from harness.report.leaderboard import collect_results, print_leaderboard, render, write_leaderboard
from harness.report.plots import plot_activation_distributions, plot_partial_rewriting, plot_sens_spec_by_bin
from harness.result import (
    SCHEMA,
    BootstrapMethod,
    DetectionThresholdMethod,
    Interval,
    IntervalMethods,
    Methods,
    QuantileEstimator,
    Result,
    SideFile,
    SideFiles,
    load_result,
)

NAN = float("nan")
HASH = "a" * 64
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def E(v, lo, hi):
    return {"value": v, "lo": lo, "hi": hi}


def _conditions():
    out = []
    for sel in ("top-scoring", "random"):
        for i, f in enumerate((0.5, 1.0)):
            out.append({"name": "simulated", "calibration": "quantile", "selection": sel, "fraction": f,
                        "n_latents": 4 * (i + 1), "ce_mean": 3.1, "delta_ce_mean": E(0.2, 0.1, 0.3),
                        "delta_ce_median": E(0.05 * (i + 1), 0.02, 0.2), "recovery": E(0.4 - 0.1 * i, 0.3, 0.5),
                        "diff_vs_latent_zero": E(-0.1, -0.2, NAN)})  # fmt: skip
            out.append({"name": "simulated", "calibration": "none", "selection": sel, "fraction": f,
                        "n_latents": 4 * (i + 1), "ce_mean": 3.5, "delta_ce_mean": E(0.6, 0.5, 0.7),
                        "delta_ce_median": E(0.5, 0.4, 0.6), "recovery": E(-0.2, -0.3, -0.1),
                        "diff_vs_latent_zero": E(0.1, 0.0, 0.2)})  # fmt: skip
            out.append({"name": "latent_zero", "calibration": None, "selection": sel, "fraction": f,
                        "n_latents": 4 * (i + 1), "ce_mean": 3.3, "delta_ce_mean": E(0.4, 0.3, 0.5),
                        "delta_ce_median": E(0.1 * (i + 1), 0.05, 0.3), "recovery": None,
                        "diff_vs_latent_zero": None})  # fmt: skip
    return out


def make_result(method="top-tokens", sha="s" * 64, recovery=0.12, date="2025-01-01T00:00:00+00:00",
                task_hash=HASH, task_id="tiny-task", model_key="hub:org/sim@" + "f" * 40) -> Result:  # fmt: skip
    return Result.from_dict(dict(
        task={"id": task_id, "hash": task_hash},
        submission={"method": method, "description": "d", "sha256": sha, "path": "submissions/x.json",
                    "n_explanations": 10, "coverage": 0.8},  # fmt: skip
        simulator={"model_key": model_key, "prompt_version": "v1", "backend": "transformers-prefix"},
        provenance={"harness_version": "0.1.0", "date": date, "seed": 0, "command": "harness eval"},
        headline={"calibration": "quantile", "recovery": E(recovery, 0.05, 0.20),
                  "delta_ce_median": E(0.031, 0.021, 0.041), "delta_ce_mean": E(0.2, 0.1, 0.3),
                  "latent_zero_delta_ce_median": E(0.052, 0.042, 0.062),
                  "sim_minus_zero_mean": E(-0.123, -0.2, -0.05),
                  "sensitivity": 0.61, "specificity": 0.97, "detection_auroc": 0.74},  # fmt: skip
        ce_means={"clean": 3.0, "coder": 3.05, "zero_output": 4.2, "latent_zero": 3.3, "simulated": 3.1},
        conditions=_conditions(),
        per_latent={"latent": [0, 1, 2], "auroc": [0.9, NAN, 0.5], "balanced_accuracy": [0.8, NAN, 0.5],
                    "sensitivity": [1.0, 0.0, NAN], "specificity": [0.9, 1.0, 1.0], "score": [0.9, NAN, 0.5]},  # fmt: skip
        sens_spec_by_detection_bin=[{"lo": 0.5, "hi": 0.6, "n": 3, "sensitivity": 0.3, "specificity": 0.9},
                                    {"lo": 0.6, "hi": 0.7, "n": 0, "sensitivity": NAN, "specificity": NAN}],  # fmt: skip
        side_files={"per_context": {"path": "x.npz", "sha256": "b" * 64}},
        figures=["fig.png"],
    ))


def _same(a, b):
    """Deep equality where NaN == NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


# --- results --------------------------------------------------------------------------------------


def test_result_roundtrip_nan(tmp_path):
    r = make_result()
    r.ce_means.zero_output = None  # an SAE task has no zero-output condition
    r.per_latent.auroc = np.array([0.9, np.nan, 0.5], dtype=np.float32)  # type: ignore[assignment]  # numpy in, lists out
    r.headline.sensitivity = np.float64(np.nan)
    p = r.to_json(tmp_path / "r.json")
    raw = json.loads(p.read_text())
    assert raw["schema"] == SCHEMA and list(raw)[0] == "schema"
    assert raw["per_latent"]["auroc"][1] is None and raw["headline"]["sensitivity"] is None
    assert "NaN" not in p.read_text()
    back = load_result(p)
    assert math.isnan(back.per_latent.auroc[1]) and math.isnan(back.headline.sensitivity)
    assert math.isnan(back.sens_spec_by_detection_bin[1].sensitivity)
    assert math.isnan(back.conditions[0].diff_vs_latent_zero.hi)  # type: ignore[union-attr]
    assert back.conditions[2].recovery is None and back.ce_means.zero_output is None
    expected = r.to_dict()
    expected["per_latent"]["auroc"] = [pytest.approx(0.9), NAN, 0.5]
    expected["headline"]["sensitivity"] = NAN
    assert _same(back.to_dict(), expected)


def test_result_schema_validated(tmp_path):
    p = tmp_path / "r.json"
    d = make_result().to_dict()
    d["schema"] = "harness-result/0"
    p.write_text(json.dumps(d))
    with pytest.raises(HarnessError) as ei:
        load_result(p)
    assert str(p) in str(ei.value) and "harness-result/0" in str(ei.value)
    p.write_text("{not json")
    with pytest.raises(HarnessError, match="invalid JSON at line 1"):
        load_result(p)
    del d["schema"]
    p.write_text(json.dumps(d))
    with pytest.raises(HarnessError, match="schema"):
        load_result(p)
    d["schema"] = SCHEMA
    del d["conditions"]
    p.write_text(json.dumps(d))
    with pytest.raises(HarnessError, match='"conditions"'):
        load_result(p)


def test_atomic_write_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "r.json"
    make_result(recovery=0.5).to_json(p)
    before = p.read_bytes()

    bad = make_result(recovery=0.9)
    bad.headline.sensitivity = object()  # unserialisable: fails before anything is written
    with pytest.raises(TypeError):
        bad.to_json(p)
    assert p.read_bytes() == before

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)  # fails after the temp file is written
    with pytest.raises(OSError, match="disk full"):
        make_result(recovery=0.9).to_json(p)
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r.json"]  # no temp file left behind
    monkeypatch.undo()
    assert load_result(p).headline.recovery.value == 0.5


# --- leaderboard ----------------------------------------------------------------------------------


@pytest.fixture
def results_dir(tmp_path):
    d = tmp_path / "results"
    make_result("old-run", sha="1" * 64, recovery=0.9, date="2025-01-01T00:00:00+00:00").to_json(d / "t" / "a.json")
    # same submission × simulator, newer: replaces the one above
    make_result("new-run", sha="1" * 64, recovery=0.12, date="2025-03-01T12:00:00+00:00").to_json(d / "t" / "b.json")
    make_result("best", sha="2" * 64, recovery=0.45, date="2025-02-01T00:00:00").to_json(d / "t" / "sub" / "c.json")
    make_result("stale", sha="3" * 64, recovery=0.99, task_hash="0" * 64).to_json(d / "t" / "stale.json")
    make_result("other", sha="4" * 64, task_id="other-task").to_json(d / "o.json")
    (d / "junk.json").write_text('{"schema": "something-else/3"}')
    # same submission, other simulator: its own row
    make_result("best", sha="2" * 64, recovery=0.30, model_key="local:sim2").to_json(d / "t" / "d.json")
    return d


def test_collect_rejects_and_dedups(results_dir):
    rows, rejected = collect_results(results_dir, "tiny-task", task_hashes={"tiny-task": HASH, "other-task": "9" * 64})
    assert [r.method for r in rows] == ["best", "best", "new-run"]  # recovery descending
    assert [r.recovery.value for r in rows] == [0.45, 0.30, 0.12]
    reasons = {os.path.basename(r.path): r.reason for r in rejected}
    assert set(reasons) == {"stale.json", "junk.json"}
    assert "task hash" in reasons["stale.json"] and "re-run" in reasons["stale.json"]
    assert "something-else/3" in reasons["junk.json"]

    rows_all, rejected_all = collect_results(results_dir, task_hashes={"tiny-task": HASH, "other-task": "9" * 64})
    assert {os.path.basename(r.path) for r in rejected_all} == {"stale.json", "junk.json", "o.json"}
    rows_all, rejected_all = collect_results(results_dir, task_hashes={"tiny-task": HASH})
    assert "not a known task" in {os.path.basename(r.path): r.reason for r in rejected_all}["o.json"]


def test_same_method_name_from_different_submissions_is_told_apart(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    make_result("twin", sha="1" * 64, recovery=0.3).to_json(d / "a.json")
    make_result("twin", sha="2" * 64, recovery=0.2).to_json(d / "b.json")
    make_result("twin", sha="3" * 64, recovery=0.1, model_key="local:other-sim").to_json(d / "c.json")
    make_result("solo", sha="4" * 64, recovery=0.0).to_json(d / "e.json")
    rows, _ = collect_results(d, "tiny-task", task_hashes={"tiny-task": HASH})
    # Same simulator, different submissions: each name carries its submission's sha256 prefix. The row on
    # another simulator is already told apart by its simulator column, and a unique name stays as it is.
    assert sorted(r.method for r in rows) == ["solo", "twin", "twin (11111111)", "twin (22222222)"]


def test_collect_missing_dir(tmp_path):
    with pytest.raises(HarnessError, match="not found"):
        collect_results(tmp_path / "nope", task_hashes={})


def test_render_md_csv_html(results_dir):
    rows, _ = collect_results(results_dir, "tiny-task", task_hashes={"tiny-task": HASH})
    md = render(rows, "md")
    assert "0.12 [0.05, 0.20]" in md and "0.45 [0.05, 0.20]" in md
    assert "0.031 [0.021, 0.041]" in md and "0.052 [0.042, 0.062]" in md and "-0.1230 [-0.2000, -0.0500]" in md
    assert "0.61" in md and "0.97" in md and "0.74" in md and "80%" in md
    assert "hub:org/sim@fffffff (v1)" in md and "2025-03-01" in md
    assert md.splitlines()[1].startswith("|--")  # github table
    assert md.index("| best") < md.index("| new-run")

    html = render(rows, "html")
    assert "<table>" in html and "0.12 [0.05, 0.20]" in html and "new-run" in html

    parsed = list(csv.DictReader(io.StringIO(render(rows, "csv"))))
    assert [r["method"] for r in parsed] == ["best", "best", "new-run"]
    assert float(parsed[2]["recovery"]) == 0.12 and float(parsed[2]["recovery_lo"]) == 0.05
    assert float(parsed[0]["sim_minus_zero_mean"]) == -0.123
    assert parsed[2]["simulator_model_key"] == "hub:org/sim@" + "f" * 40 and parsed[2]["task_hash"] == HASH

    with pytest.raises(HarnessError, match="not one of"):
        render(rows, "xlsx")


def test_render_nan_is_na(tmp_path):
    r = make_result(recovery=NAN)
    r.headline.sensitivity = NAN
    r.to_json(tmp_path / "r.json")
    make_result("good", sha="9" * 64, recovery=-0.5).to_json(tmp_path / "s.json")
    rows, _ = collect_results(tmp_path, task_hashes={"tiny-task": HASH})
    assert [r.method for r in rows] == ["good", "top-tokens"]  # NaN recovery sorts last
    md = render(rows, "md")
    assert "n/a" in md and "nan" not in md.lower().replace("n/a", "")
    assert ",," in render(rows, "csv")  # NaN is an empty CSV cell


def test_write_leaderboard_and_rich(results_dir, tmp_path):
    rows, _ = collect_results(results_dir, task_hashes={"tiny-task": HASH, "other-task": HASH})
    assert "other" in {r.method for r in rows}
    p = write_leaderboard("tiny-task", rows, out_dir=tmp_path / "lb")
    assert p == tmp_path / "lb" / "tiny-task.md"
    text = p.read_text()
    lines = text.splitlines()
    assert lines[0] == "# Leaderboard: tiny-task"
    assert HASH in text and "recovery =" in text
    assert "0.12 [0.05, 0.20]" in text and "other" not in [c.strip() for c in text.split("|")]

    empty = write_leaderboard("new-task", [], out_dir=tmp_path / "lb", task_hash="h" * 64)
    assert "h" * 64 in empty.read_text() and "No results" in empty.read_text()

    console = Console(record=True, width=250, file=io.StringIO())
    print_leaderboard(rows, console)
    out = console.export_text()
    assert "0.12 [0.05, 0.20]" in out and "best" in out and "task" in out  # two tasks → task column


# --- plots ----------------------------------------------------------------------------------------


def _is_png(p):
    data = p.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_MAGIC


def test_plots_write_png(tmp_path):
    res = make_result()
    assert _is_png(plot_partial_rewriting(res, tmp_path / "figs" / "curve.png"))

    # a result with median references for the baselines, and one with nothing to draw, both work
    res2 = copy.deepcopy(res)
    res2.headline.coder_delta_ce_median = Interval(0.01, 0.0, 0.02)
    res2.ce_means.zero_output = None
    assert _is_png(plot_partial_rewriting(res2, tmp_path / "curve2.png"))
    assert _is_png(plot_partial_rewriting(dataclasses.replace(res, conditions=[]), tmp_path / "curve3.png"))

    rng = np.random.default_rng(0)
    true_nz = rng.exponential(2.0, 500)
    raw = rng.uniform(0, 9, 800)
    cal = np.concatenate([np.zeros(700), rng.exponential(2.0, 100), [np.nan]])
    assert _is_png(plot_activation_distributions(true_nz, raw, cal, tmp_path / "dist.png"))
    assert _is_png(plot_activation_distributions(np.array([]), np.zeros(3), np.zeros(3), tmp_path / "dist2.png"))

    assert _is_png(plot_sens_spec_by_bin(res.sens_spec_by_detection_bin, tmp_path / "bins.png"))
    assert _is_png(plot_sens_spec_by_bin([], tmp_path / "bins2.png"))


# --- ranking and ties ------------------------------------------------------------------------------


def _methods(draws: int, seed: int) -> Methods:
    """The `methods` section a result names its bootstrap with; the paired ranking redraws with these."""
    return Methods(IntervalMethods(0.95, BootstrapMethod("percentile", draws, seed, "", ""), ""),
                   QuantileEstimator("inverted_cdf", True, ""), "", DetectionThresholdMethod("fire-rate", ""))


def _with_side(d, method, sha, sim_minus_zero, seed=0):
    """A result whose side file holds per-context CE arrays with the given simulated − latent zero."""
    n = len(sim_minus_zero)
    rng = np.random.default_rng(seed)
    zero = 3.0 + rng.gamma(2.0, 0.5, n)
    res = make_result(method, sha=sha)
    res.headline.sim_minus_zero_mean = Interval(float(np.mean(sim_minus_zero)), NAN, NAN)
    side = d / f"{method}.per_context.npz"
    d.mkdir(parents=True, exist_ok=True)
    np.savez(side, ce_latent_zero__all=zero, ce_simulated__quantile__all=zero + sim_minus_zero)
    res.side_files = SideFiles(SideFile(path=side.name, sha256="0" * 64))
    res.methods = _methods(draws=2000, seed=0)
    res.to_json(d / f"{method}.json")


def test_rank_by_paired_metric_and_mark_ties(tmp_path):
    from harness.score.metrics import bootstrap_indices

    rng = np.random.default_rng(0)
    n = 300
    base = rng.normal(0.0, 0.05, n)
    d = tmp_path / "t"
    _with_side(d, "good", "1" * 64, base - 0.05)           # clearly better than the rest
    _with_side(d, "near", "2" * 64, base + rng.normal(0.0, 0.05, n))
    _with_side(d, "near-too", "3" * 64, base + rng.normal(0.002, 0.05, n))
    rows, _ = collect_results(tmp_path, "tiny-task", task_hashes={"tiny-task": HASH})
    assert rows[0].method == "good" and {r.method for r in rows[1:]} == {"near", "near-too"}
    means = [r.sim_minus_zero_mean.value for r in rows]
    assert means == sorted(means)                          # lower (better) first
    assert rows[0].rank == "1" and rows[1].rank == "2"     # good vs the next: significant
    assert rows[2].rank == "=2"                           # the last two are not ordered by the data
    # the tie test is the paired bootstrap CI of the per-context difference, recomputed here by hand
    with np.load(d / f"{rows[2].method}.per_context.npz") as a, np.load(d / f"{rows[1].method}.per_context.npz") as b:
        diff = (a["ce_simulated__quantile__all"] - a["ce_latent_zero__all"]) - (
            b["ce_simulated__quantile__all"] - b["ce_latent_zero__all"])
    stats = diff[bootstrap_indices(n, 2000, 0)].mean(1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    assert rows[2].vs_above.lo == pytest.approx(lo) and rows[2].vs_above.hi == pytest.approx(hi)
    assert lo < 0 < hi
    md = render(rows, "md")
    assert "| =2 " in md
    console = Console(record=True, width=80, file=io.StringIO(), force_terminal=True)
    print_leaderboard(rows, console)
    out = console.export_text()
    assert "near-too" in out and "not significantly different" in out   # ids whole at 80 columns


def test_rank_by_detection_auroc_paired_over_latents(tmp_path):
    """A task with scoring.rank_by = "detection_auroc": higher mean AUROC first, ties by the paired per-latent
    bootstrap over the latents both rows scored (recomputed here with numpy)."""
    d = tmp_path / "t"
    d.mkdir()
    rng = np.random.default_rng(1)
    latents = list(range(20))
    real = np.clip(0.75 + rng.normal(0, 0.08, 20), 0, 1)
    noisy = np.clip(0.5 + rng.normal(0, 0.08, 20), 0, 1)
    close = np.clip(noisy + rng.normal(0.005, 0.03, 20), 0, 1)
    for method, sha, auc in (("shuffled", "1" * 64, noisy), ("real", "2" * 64, real), ("empty", "3" * 64, close)):
        res = make_result(method, sha=sha)
        res.headline.detection_auroc = float(auc.mean())
        res.headline.detection_auroc_ci = Interval(float(auc.mean()), float(auc.mean()) - 0.05, float(auc.mean()) + 0.05)
        res.headline.rank_by = "detection_auroc"
        res.per_latent = dataclasses.replace(res.per_latent, latent=list(latents), auroc=auc.tolist())
        res.methods = _methods(draws=4000, seed=3)
        res.to_json(d / f"{method}.json")
    rows, _ = collect_results(tmp_path, "tiny-task", task_hashes={"tiny-task": HASH})
    assert [r.method for r in rows][0] == "real"
    assert [r.detection_auroc for r in rows] == sorted((r.detection_auroc for r in rows), reverse=True)
    assert rows[1].rank == "2"
    idx = np.random.Generator(np.random.PCG64(3)).integers(0, 20, size=(4000, 20))
    for above, row in zip(rows, rows[1:]):
        diff = np.asarray([above.per_latent_auroc[j] - row.per_latent_auroc[j] for j in latents])
        lo, hi = np.percentile(diff[idx].mean(1), [2.5, 97.5])
        assert row.vs_above.lo == pytest.approx(lo) and row.vs_above.hi == pytest.approx(hi)
        assert row.rank.startswith("=") == (lo <= 0 <= hi)
    assert "ranks by detection AUROC" in write_leaderboard("tiny-task", rows, tmp_path / "lb").read_text()
    m = float(real.mean())
    assert f"| {m:.2f} [{m - 0.05:.2f}, {m + 0.05:.2f}] |" in render(rows, "md")   # the AUROC cell shows its CI
