"""`import-neuronpedia`: the three export shapes (tests/fixtures/neuronpedia/ follows the field names and types
of Neuronpedia's exporters; docs/bring-your-own.md), the choice rules, and one-line refusals."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.task.neuronpedia import import_neuronpedia

FIX = Path(__file__).parent / "fixtures" / "neuronpedia"


def _imp(paths, **kw):
    return import_neuronpedia([str(p) for p in paths], task_id="t", **kw)


def test_dataset_batch_and_array_export_read_alike():
    a, b = _imp([FIX / "batch-0.jsonl"]), _imp([FIX / "export.json"])
    assert a.source == b.source == "gpt2-small/6-res-jb"
    # No createdAt in these shapes: `newest` falls back to reading order, the first row of each latent.
    want = {"2": "closing parentheses and brackets", "10": "references to time periods and durations",
            "1024": "programming-related terms and code syntax",
            "14057": 'occurrences of the word "not" in negations'}
    assert a.submission["explanations"] == b.submission["explanations"]
    assert {k: v[:len(want[k])] for k, v in a.submission["explanations"].items()} == want
    assert list(a.submission["explanations"]) == ["2", "10", "1024", "14057"]   # numeric order
    assert (a.n_rows, a.n_several) == (7, 2)


def test_explainer_filter_and_its_refusal():
    got = _imp([FIX / "batch-0.jsonl"], explainer="gpt-4o-mini")
    assert got.submission["explanations"]["10"] == "time durations and periods"
    assert got.submission["explanations"]["14057"] == "negation terms in statements"
    with pytest.raises(HarnessError, match=r"no explanation by --explainer 'claude'; explainers found: gpt-4o-mini \(4\)"):
        _imp([FIX / "batch-0.jsonl"], explainer="claude")


def test_newest_uses_created_at_and_ties_keep_reading_order(tmp_path):
    rows = [json.loads(line) for line in (FIX / "llamascope-batch-0.jsonl").read_text().splitlines()]
    assert isinstance(rows[0]["index"], int)                      # this exporter writes integers
    assert _imp([FIX / "llamascope-batch-0.jsonl"]).submission["explanations"]["0"] == "Python import statements"
    rows[1]["createdAt"] = "2026-04-08T00:00:00"                  # a later one wins
    rows.append({**rows[0], "index": "1", "description": "newer, with a zone", "createdAt": "2026-04-09T00:00:00Z"})
    p = tmp_path / "batch-0.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ex = _imp([p]).submission["explanations"]
    assert ex == {"0": "module imports in code", "1": "newer, with a zone"}
    assert _imp([p], choose="first").submission["explanations"]["0"] == "Python import statements"


def test_folder_of_gzipped_batches_is_read_in_batch_number_order(tmp_path):
    rows = [json.loads(line) for line in (FIX / "batch-0.jsonl").read_text().splitlines()]
    folder = tmp_path / "explanations"
    folder.mkdir()
    # batch-10 holds the first row of latent 2: reading order must put batch-2 before it
    for n, chunk in ((2, rows[6:]), (10, [{**rows[6], "description": "later batch"}]), (0, rows[:6])):
        with gzip.open(folder / f"batch-{n}.jsonl.gz", "wt") as f:
            f.write("\n".join(json.dumps(r) for r in chunk) + "\n")
    (folder / "config.json").write_text("{}")                      # other files in the folder are not batches
    got = _imp([folder], choose="first")
    assert got.submission["explanations"]["2"].startswith("closing parentheses")
    assert got.n_rows == 8


def test_per_feature_api_objects_and_the_score_rule(tmp_path):
    feature = {"modelId": "gpt2-small", "layer": "6-res-jb", "index": "7", "explanations": [
        {"id": "a", "description": "first", "explanationModelName": "m", "typeName": "t",
         "scores": [{"value": 0.2, "explanationScoreTypeName": "recall_alt"}]},
        {"id": "b", "description": "second", "explanationModelName": "m", "typeName": "t",
         "scores": [{"value": 0.9, "explanationScoreTypeName": "eleuther_fuzz"},
                    {"value": 0.5, "explanationScoreTypeName": "recall_alt"}]},
        {"id": "c", "description": "unscored", "explanationModelName": "m", "typeName": "t", "scores": []}]}
    p = tmp_path / "feature.json"
    p.write_text(json.dumps([feature, {**feature, "index": "8", "explanations": feature["explanations"][:1]}]))
    got = _imp([p], choose="score", score_type="recall_alt")
    assert got.submission["explanations"] == {"7": "second", "8": "first"}
    assert got.submission["scores"] == {"7": 0.5, "8": 0.2}       # every chosen one has a score: they are kept
    assert _imp([p], choose="score", score_type="eleuther_fuzz").submission["explanations"]["7"] == "second"
    assert "scores" not in _imp([p], choose="score", score_type="eleuther_fuzz").submission   # latent 8 has none
    with pytest.raises(HarnessError, match="--choose score needs --score-type"):
        _imp([p], choose="score")


@pytest.mark.parametrize("mutate, want", [
    (lambda r: {**r, "index": "-3"}, "`index` '-3' is not a latent index"),
    (lambda r: {**r, "index": "12345678901234"}, "is not a latent index"),
    (lambda r: {k: v for k, v in r.items() if k != "modelId"}, "`modelId` must be a string, got null"),
    (lambda r: {**r, "createdAt": "yesterday"}, "`createdAt` 'yesterday' is not an ISO date-time"),
    (lambda r: {**r, "description": "x" * 500}, "the description is 500 characters; the task caps explanations at 400"),
    (lambda r: {**r, "explanationModelName": 3}, "`explanationModelName` must be a string or null"),
])
def test_bad_rows_fail_in_one_line_naming_file_and_line(tmp_path, mutate, want):
    rows = [json.loads(line) for line in (FIX / "batch-0.jsonl").read_text().splitlines()]
    rows[3] = mutate(rows[3])
    p = tmp_path / "batch-0.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(HarnessError) as e:
        _imp([p], max_chars=400)
    assert want in str(e.value) and f"{p}:4" in str(e.value) and "\n" not in str(e.value)


def test_files_and_sources_that_are_refused(tmp_path):
    p = tmp_path / "batch-0.jsonl"
    p.write_text('{"modelId": "m", "layer": "l", "index": "1", "description": "ok"}\n{not json\n')
    with pytest.raises(HarnessError, match=rf"{p}:2: invalid JSON"):
        _imp([p])
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(FIX / "batch-0.jsonl", mixed / "batch-0.jsonl")
    shutil.copy(FIX / "autointerp-batch-0.jsonl", mixed / "batch-1.jsonl")
    with pytest.raises(HarnessError, match=r"several SAEs \(gemma-2-2b/20-gemmascope-res-16k, gpt2-small/6-res-jb\)"):
        _imp([mixed])
    assert _imp([mixed], source="gemma-2-2b/20-gemmascope-res-16k").submission["explanations"].keys() == {
        "3", "1200", "10956"}
    with pytest.raises(HarnessError, match=r"batch-0.jsonl:3: index 1024 is out of range; the task has 1000 latents"):
        _imp([FIX / "batch-0.jsonl"], num_latents=1000)
    big = tmp_path / "batch-9.jsonl"
    big.write_bytes(b'{"description": "' + b"x" * (1 << 20) + b'"}\n')
    with pytest.raises(HarnessError, match="a line over 1,048,576 bytes"):
        _imp([big])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HarnessError, match="no batch-<N>.jsonl"):
        _imp([empty])


def test_cli_writes_a_submission_validate_accepts(tiny, tmp_path, capsys):
    from harness.data.prepare import prepare
    from harness.task.spec import load_task

    spec = load_task(str(tiny / "task"))
    latents = [int(j) for j in prepare(spec).rewritten]
    rows = [{"modelId": "tiny", "layer": "1-res", "index": str(j), "description": f"latent {j}, old",
             "createdAt": "2026-01-01T00:00:00"} for j in latents]
    rows += [{**r, "description": r["description"].replace("old", "new"), "createdAt": "2026-02-01T00:00:00"}
             for r in rows]
    p = tmp_path / "batch-0.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "sub.json"
    assert main(["import-neuronpedia", "--neuronpedia", str(p), "--task", str(tiny / "task"), "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"{len(latents)} explanations of tiny/1-res from {2 * len(latents)} read" in said
    sub = json.loads(out.read_text())
    assert sub["method"] == "neuronpedia" and all(v.endswith("new") for v in sub["explanations"].values())
    assert main(["validate", "--task", str(tiny / "task"), "--submission", str(out)]) == 0
