"""`harness eval` end to end on a tiny task built by `harness make-tiny-task`, and the CLI's bad-input errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main


def _submission(path: Path, task_id: str, latents, text="the tokens \"the\", \"a\"", method="test-method"):
    path.write_text(json.dumps({"task": task_id, "method": method, "description": "test",
                                "explanations": {str(j): text for j in latents}}))
    return path


def _rewritten(tiny):
    from harness.data.prepare import prepare
    from harness.task.spec import load_task

    return prepare(load_task(str(tiny / "task"))).rewritten


def test_eval_writes_result_and_leaderboard(tiny, capsys):
    latents = _rewritten(tiny)
    sub = _submission(tiny / "sub.json", "tiny-llama-transcoder", latents)
    res_dir, lb_dir = tiny / "results", tiny / "lb"
    rc = main(["eval", "--task", str(tiny / "task"), "--submission", str(sub), "--results", str(res_dir),
               "--leaderboard", str(lb_dir), "--backend", "prefix"])
    assert rc == 0
    files = sorted((res_dir / "tiny-llama-transcoder").glob("*.json"))
    assert len(files) == 1
    r = json.loads(files[0].read_text())
    assert r["submission"]["coverage"] == 1.0
    assert r["task"]["hash"] and r["provenance"]["harness_version"]

    # Recompute the headline recovery from the per-context side file with plain numpy.
    side = np.load(files[0].parent / r["side_files"]["per_context"]["path"])
    zero, sim, coder = side["ce_latent_zero__all"], side["ce_simulated__quantile__all"], side["ce_coder"]
    want = (zero.mean() - sim.mean()) / (zero.mean() - coder.mean())
    assert r["headline"]["recovery"]["value"] == pytest.approx(want, rel=1e-9)
    assert r["ce_means"]["clean"] == pytest.approx(side["ce_clean"].mean())
    for fig in r["figures"]:
        assert (files[0].parent / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (lb_dir / "tiny-llama-transcoder.md").read_text()
    assert "test-method" in md
    # Piped, eval's summary and leaderboard are Markdown tables: the method and task ids whole, nothing cut.
    out = capsys.readouterr().out
    assert "| test-method " in out and "tiny-llama-transcoder" in out and "…" not in out

    # A second run recomputes no prediction: everything comes from the prediction store. Without
    # --leaderboard no page is written.
    (lb_dir / "tiny-llama-transcoder.md").unlink()
    rc = main(["eval", "--task", str(tiny / "task"), "--submission", str(sub), "--results", str(res_dir),
               "--backend", "prefix"])
    assert rc == 0
    assert not (lb_dir / "tiny-llama-transcoder.md").exists()
    r2 = json.loads(sorted((res_dir / "tiny-llama-transcoder").glob("*.json"))[0].read_text())
    assert r2["provenance"]["n_computed"] == 0
    assert r2["provenance"]["n_cached"] == r2["provenance"]["n_predictions"]
    assert r2["headline"]["recovery"]["value"] == pytest.approx(r["headline"]["recovery"]["value"], rel=1e-12)


def test_partial_submission_reports_coverage(tiny):
    latents = _rewritten(tiny)
    sub = _submission(tiny / "half.json", "tiny-llama-transcoder", latents[: len(latents) // 2])
    rc = main(["eval", "--task", str(tiny / "task"), "--submission", str(sub), "--results", str(tiny / "r2")])
    assert rc == 0
    r = json.loads(next((tiny / "r2" / "tiny-llama-transcoder").glob("*.json")).read_text())
    assert r["submission"]["coverage"] == pytest.approx((len(latents) // 2) / len(latents))
    assert len(r["per_latent"]["latent"]) == len(latents) // 2


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error:")
    return err[0]


def test_unknown_task(capsys, tiny):
    assert main(["eval", "--task", "no-such-task", "--submission", str(tiny / "x.json")]) == 2
    assert "unknown task 'no-such-task'" in _one_error_line(capsys)


def test_malformed_submission(capsys, tiny):
    bad = tiny / "bad.json"
    bad.write_text('{"task": "tiny-llama-transcoder", "method": "m", ')
    assert main(["eval", "--task", str(tiny / "task"), "--submission", str(bad)]) == 2
    assert "bad.json" in _one_error_line(capsys)


def test_missing_coder_file(capsys, tiny, tmp_path):
    broken = tmp_path / "task"
    shutil.copytree(tiny / "task", broken)
    next(broken.glob("coder/*/sae.safetensors")).unlink()
    assert main(["prepare", "--task", str(broken)]) == 2
    assert "sae.safetensors" in _one_error_line(capsys)


def test_wrong_hookpoint(capsys, tiny, tmp_path):
    assert main(["prepare", "--task", str(tiny / "task"), "--override", 'coder.hookpoint="layers.9.mlp"']) == 2
    assert "layers.9.mlp" in _one_error_line(capsys)


def test_baselines_and_findings(tiny, capsys):
    """explain → eval for a real method and its shuffled control, then the findings table from their results."""
    task = str(tiny / "task")
    out = tiny / "subs"
    out.mkdir(exist_ok=True)
    assert main(["explain", "--task", task, "--method", "top-tokens", "-o", str(out / "top.json")]) == 0
    assert main(["explain", "--task", task, "--method", "shuffled", "--submission", str(out / "top.json"),
                 "-o", str(out / "shuf.json")]) == 0
    assert main(["explain", "--task", task, "--method", "empty", "-o", str(out / "empty.json")]) == 0
    assert main(["explain", "--task", task, "--method", "llm", "-o", str(out / "llm.json")]) == 0
    top = json.loads((out / "top.json").read_text())["explanations"]
    shuf = json.loads((out / "shuf.json").read_text())["explanations"]
    assert sorted(top.values()) == sorted(shuf.values())          # same texts...
    # A derangement: every latent gets another latent's text (equal only where two latents share a text).
    from collections import Counter

    shared = {t for t, n in Counter(top.values()).items() if n > 1}
    assert all(top[k] != shuf[k] for k in top if top[k] not in shared)
    assert any(top[k] != shuf[k] for k in top)                      # ...on other latents
    assert all(v == "" for v in json.loads((out / "empty.json").read_text())["explanations"].values())
    llm = json.loads((out / "llm.json").read_text())["explanations"]
    assert set(llm) == set(top) and all(len(v) <= 400 for v in llm.values())

    res = tiny / "res-findings"
    for name in ("top", "shuf"):
        assert main(["eval", "--task", task, "--submission", str(out / f"{name}.json"), "--results", str(res)]) == 0
    r = json.loads(next(p for p in (res / "tiny-llama-transcoder").glob("shuffled*.json")).read_text())
    # Shuffling reuses the real method's explanation texts: the prediction store serves most of them.
    assert r["provenance"]["n_cached"] > 0
    capsys.readouterr()
    assert main(["findings", "--task", "tiny-llama-transcoder", "--results", str(res)]) == 0
    table = capsys.readouterr().out
    assert table.count("\n| ") >= 7 and "Quantile normalisation helps" in table
    assert "ranks test contexts better than its shuffled control" in table
    # The detection row: mean of per-latent AUROC differences, recomputed from the two result files.
    rt = json.loads(next(p for p in (res / "tiny-llama-transcoder").glob("top*.json")).read_text())["per_latent"]
    a_real, a_ctrl = dict(zip(rt["latent"], rt["auroc"])), dict(zip(r["per_latent"]["latent"], r["per_latent"]["auroc"]))
    both = [j for j in a_real if j in a_ctrl and np.isfinite(a_real[j]) and np.isfinite(a_ctrl[j])]
    diff = np.mean([a_real[j] - a_ctrl[j] for j in both])
    row = next(ln for ln in table.splitlines() if "detects its latents better" in ln)
    assert f"| {diff:+.3f} [" in row and f"{len(both)} latents" in row
    # Its detectable effect: (z_.975 + z_.8) / z_.975 = 1.43 CI half-widths (rounded CI ends: within 0.002).
    import re

    m = re.search(r"\[([+-]\d\.\d+), ([+-]\d\.\d+)\].*?\| ±([\d.e-]+) AUROC \|", row)
    assert m and abs(float(m[3]) - 1.4286 * (float(m[2]) - float(m[1])) / 2) < 2e-3, row
    # The side file holds each scored latent's true activation on each test context, from the prepare cache.
    side = next((res / "tiny-llama-transcoder").glob("shuffled*.per_context.npz"))
    with np.load(side) as z:
        true, lat = z["true_test"], z["latents"]
    from harness.data.prepare import prepare
    from harness.task.spec import load_task

    vals, inds = prepare(load_task(task)).test_latents
    for c, j in enumerate(lat):
        np.testing.assert_array_equal(true[:, c], np.where(inds == j, vals, 0).sum(1).astype(np.float32))


def test_top_examples_cache_follows_top_n(tiny, monkeypatch):
    """A cached top-examples file made with another TOP_N (an older harness) is rebuilt, not reused."""
    from harness.baselines import explain
    from harness.data.prepare import prepare
    from harness.task.inputs import TaskInputs
    from harness.task.spec import load_task

    spec = load_task(str(tiny / "task"))
    prep = prepare(spec)
    inputs = TaskInputs(spec, "cpu")
    model, _ = inputs.subject()
    monkeypatch.setattr(explain, "TOP_N", 3)
    small = explain.top_examples(prep, model, inputs.coder(), "cpu")
    assert small["block"].shape == (len(prep.rewritten), 3)
    monkeypatch.setattr(explain, "TOP_N", 5)
    big = explain.top_examples(prep, model, inputs.coder(), "cpu")
    assert big["block"].shape == (len(prep.rewritten), 5)
    # the first three are the same examples, by activation, descending
    np.testing.assert_array_equal(big["block"][:, :3], small["block"])
    assert np.all(np.diff(big["value"], axis=1)[big["block"][:, 1:] >= 0] <= 0)


def test_prepare_keeps_the_top_examples_of_its_own_encoding_pass(tiny, tmp_path, monkeypatch):
    """A fresh prepare writes the baselines' top examples from the pass that builds the activation table;
    they equal what explain computes by encoding the sample again, and explain then reads them."""
    from harness.baselines import explain
    from harness.data.prepare import prepare
    from harness.task.inputs import TaskInputs
    from harness.task.spec import load_task

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))   # a fresh cache: prepare encodes
    spec = load_task(str(tiny / "task"))
    prep = prepare(spec)
    kept = dict(np.load(prep.cache_dir / "top_examples.npz"))
    inputs = TaskInputs(spec, "cpu")
    model, _ = inputs.subject()
    calls = []
    original = explain.encode_positions
    monkeypatch.setattr(explain, "encode_positions", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert set(explain.top_examples(prep, model, inputs.coder(), "cpu")) >= {"block", "pos", "value"}
    assert not calls                                           # read from prepare's file, not re-encoded
    (prep.cache_dir / "top_examples.npz").unlink()
    again = explain.top_examples(prep, model, inputs.coder(), "cpu")
    assert calls                                               # no file: explain encodes the sample itself
    for key in ("block", "pos", "value", "rewritten"):
        np.testing.assert_array_equal(again[key], kept[key])


def test_verify_result_recomputes_tiny_results(tiny, capsys):
    """Every number of fresh tiny-task results is recomputed from the side file; a tampered number fails."""
    task = str(tiny / "task")
    out = tiny / "verify"
    out.mkdir(exist_ok=True)
    assert main(["explain", "--task", task, "--method", "top-tokens", "-o", str(out / "top.json")]) == 0
    res = out / "results"
    assert main(["eval", "--task", task, "--submission", str(out / "top.json"), "--results", str(res)]) == 0
    path = next((res / "tiny-llama-transcoder").glob("*.json"))
    capsys.readouterr()
    assert main(["verify-result", str(path)]) == 0
    text = capsys.readouterr().out
    assert ", 0 differ" in text and "cannot recompute" not in text
    n_checked = int(text.split(": ")[1].split()[0])
    assert n_checked > 500

    r = json.loads(path.read_text())
    assert r["methods"]["intervals"]["bootstrap"]["method"] == "percentile"
    assert r["methods"]["quantile_estimator"] == {"numpy_method": "inverted_cdf", "exact": True,
                                                  "table": "every non-zero activation of each latent"}
    # the detection threshold rule calls firing the share of calibration contexts the latent truly fires on
    with np.load(path.parent / r["side_files"]["per_context"]["path"]) as z:
        cal, thr, rate = z["pred_calibration"], z["detection_threshold"], z["fire_rate"]
        assert np.all((cal >= thr).sum(0) >= np.ceil(rate * len(cal) - 1e-9))
    tampered = dict(r)
    tampered["headline"] = {**r["headline"], "detection_auroc": r["headline"]["detection_auroc"] + 1e-6}
    bad = path.parent / "tampered.json"
    bad.write_text(json.dumps(tampered))
    assert main(["verify-result", str(bad)]) == 1
    assert "MISMATCH headline.detection_auroc" in capsys.readouterr().out


def test_gaming_suite_on_tiny_task(tiny, tmp_path, capsys):
    """The adversarial suite runs end to end; none beats the shuffled control; degenerate ones are flagged."""
    task = str(tiny / "task")
    rc = main(["gaming", "--task", task, "--submissions", str(tmp_path / "subs"), "--results",
               str(tmp_path / "res"), "-o", str(tmp_path / "gaming.md")])
    out = capsys.readouterr().out
    assert rc == 0, out
    report = (tmp_path / "gaming.md").read_text()
    for name in ("copied", "instruct-digit", "instruct-yes", "markers", "frequent-tokens", "empty"):
        assert f"| gaming-{name} |" in report
        sub = json.loads((tmp_path / "subs" / f"{name}.json").read_text())
        assert len(set(sub["explanations"].values())) == 1          # one text for every latent
    rows = [line for line in report.splitlines() if line.startswith("| gaming-")]
    assert len(rows) == 6 and all("| no |" in line for line in rows)
    assert "identical-across-latents" in next(line for line in rows if line.startswith("| gaming-copied |"))
    # a copied explanation gives every latent the same predictions: eval says so
    copied = next(p for p in (tmp_path / "res" / "tiny-llama-transcoder").glob("gaming-copied-*.json")
                  if not p.name.endswith(".per_context.npz"))
    kinds = {w["kind"] for w in json.loads(copied.read_text())["warnings"]}
    assert "identical-across-latents" in kinds
    for p in (tmp_path / "res" / "tiny-llama-transcoder").glob("*.json"):
        assert main(["verify-result", str(p)]) == 0


def test_gaming_suite_resumes_from_its_results(tiny, tmp_path, capsys, monkeypatch):
    """A second run reuses every result the first left (same task, submission, simulator; verify-result
    passes) and writes the same report; a result that no longer verifies is evaluated again; --fresh
    evaluates everything."""
    import harness.pipeline as pipeline

    args = ["gaming", "--task", str(tiny / "task"), "--submissions", str(tmp_path / "subs"), "--results",
            str(tmp_path / "res"), "-o", str(tmp_path / "gaming.md")]
    assert main(args) == 0
    first = (tmp_path / "gaming.md").read_text()
    evaluated = []
    real = pipeline.evaluate

    def spy(cfg):
        evaluated.append(Path(cfg.submission).name)
        return real(cfg)

    monkeypatch.setattr(pipeline, "evaluate", spy)
    capsys.readouterr()
    assert main(args) == 0
    assert evaluated == []
    assert capsys.readouterr().err.count("reusing") == 8      # top-tokens, the control and six adversaries
    assert (tmp_path / "gaming.md").read_text() == first
    # A stored number altered: verify-result fails, so that submission alone is evaluated again.
    res = tmp_path / "res" / "tiny-llama-transcoder"
    path = next(p for p in res.glob("gaming-empty-*.json"))
    d = json.loads(path.read_text())
    d["headline"]["detection_auroc"] += 0.01
    path.write_text(json.dumps(d))
    assert main(args) == 0
    assert evaluated == ["empty.json"]
    assert main(["verify-result", str(path)]) == 0             # rewritten by the new evaluation
    assert main(args + ["--fresh"]) == 0
    assert len(evaluated) == 1 + 8
