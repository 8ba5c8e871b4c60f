"""The Python API (`harness.evaluate`, `load_result`, `leaderboard`, `Submission.build`) on the tiny task: a
submission given as a file, a dict or a built `Submission` gives the same result as `harness eval` on the file."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import harness
from harness.errors import HarnessError

TASK_ID = "tiny-llama-transcoder"


def _explanations(tiny) -> dict[int, str]:
    from harness.data.prepare import prepare
    from harness.task.spec import load_task

    latents = prepare(load_task(str(tiny / "task"))).rewritten
    return {int(j): f"the token number {int(j) % 7}" for j in latents}


def _numbers(r: harness.Result) -> dict:
    d = r.to_dict()
    return {k: d[k] for k in ("headline", "conditions", "per_latent", "ce_means")}


def test_dict_submission_and_built_submission_equal_the_file(tiny, monkeypatch):
    monkeypatch.chdir(tiny)
    expl = _explanations(tiny)
    as_dict = {"task": TASK_ID, "method": "api", "description": "d", "explanations": expl}
    path = tiny / "api.json"
    path.write_text(json.dumps({**as_dict, "explanations": {str(k): v for k, v in expl.items()}}))

    from harness.cli import main

    assert main(["eval", "--task", "task", "--submission", "api.json", "--results", "cli-results",
                 "--backend", "prefix"]) == 0
    (cli_file,) = (tiny / "cli-results" / TASK_ID).glob("api-*.json")
    from_cli = harness.load_result(cli_file)

    returned, dict_file = harness.evaluate_to_file("task", as_dict, results_dir="api-results", backend="prefix")
    from_dict = harness.load_result(dict_file)
    assert returned.headline.detection_auroc == from_dict.headline.detection_auroc
    built = harness.Submission.build(TASK_ID, "api", expl, description="d")
    harness.evaluate(harness.load_task("task"), built, results_dir="api-results2", backend="prefix")
    (built_file,) = (tiny / "api-results2" / TASK_ID).glob("api-*.json")
    from_built = harness.load_result(built_file)

    # The same content hashes alike whichever way it came, and scores to the same numbers.
    assert from_dict.submission.sha256 == from_built.submission.sha256 == from_cli.submission.sha256
    assert built.sha256 == from_cli.submission.sha256
    assert _numbers(from_dict) == _numbers(from_cli) == _numbers(from_built)
    # A submission made in code has no file to record; the file one records its path.
    assert from_dict.submission.path == "" and from_cli.submission.path == "api.json"
    assert from_dict.provenance.command == "harness.evaluate (Python API)"

    board = harness.leaderboard("task", "api-results")
    assert board.task_id == TASK_ID and [r.method for r in board.rows] == ["api"]
    assert board.rows[0].submission_sha256 == built.sha256
    assert "api" in board.render("md") and board.to_json()[0]["method"] == "api"


def test_bad_in_memory_submissions_fail_in_one_line_naming_the_entry(tiny, monkeypatch):
    monkeypatch.chdir(tiny)
    expl = _explanations(tiny)
    base = {"task": TASK_ID, "method": "api", "description": "d", "explanations": expl}
    cases = [
        ({**base, "explanations": {**expl, 10_000: "x"}}, 'explanations["10000"] is out of range'),
        ({**base, "scores": {next(iter(expl)): float("nan")}}, "not JSON data"),
        ({**base, "explanations": {next(iter(expl)): {"a"}}}, "not JSON data"),
        ({**base, "task": "other"}, '"task" is "other"'),
        ({k: v for k, v in base.items() if k != "method"}, "missing key(s) 'method'"),
        ({**base, "method": "a\x1b[2Jb"}, "control character"),
    ]
    for sub, want in cases:
        with pytest.raises(HarnessError) as e:
            harness.evaluate("task", sub, results_dir="bad-results", backend="prefix")
        msg = str(e.value)
        assert want in msg and "\n" not in msg and msg.startswith("submission (in memory)"), msg
    assert not (tiny / "bad-results" / TASK_ID).exists() or not list((tiny / "bad-results" / TASK_ID).glob("*.json"))


def test_import_harness_stays_light_and_exports_what_it_lists():
    code = ("import sys, harness; assert 'torch' not in sys.modules, 'import harness loaded torch'; "
            "missing = [n for n in harness.__all__ if getattr(harness, n, None) is None]; "
            "assert not missing, missing; assert sorted(harness.__all__) == sorted(harness._EXPORTS)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_submission_build_hash_matches_the_saved_file(tmp_path):
    from harness.task.submission import load_submission

    sub = harness.Submission.build("t", "m", {3: "b", 1: "a"}, scores={1: 1, 3: 0.5})
    p = harness.save_submission(sub, tmp_path / "s.json")
    again = load_submission(p, task_id="t", num_latents=4, max_chars=10)
    assert again.sha256 == sub.sha256 and again.explanations == {1: "a", 3: "b"}
    assert again.scores == {1: 1.0, 3: 0.5}
    assert np.isclose(sum(again.scores.values()), 1.5)
