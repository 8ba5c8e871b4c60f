import json

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.task.submission import (
    Submission,
    canonical_json,
    coverage,
    import_delphi,
    load_submission,
    save_submission,
    submission_sha256,
)

TASK = "tiny-task"
L = 32
MAX = 50


def _write(tmp_path, content, name="sub.json"):
    p = tmp_path / name
    p.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return p


def _good(**over):
    d = {
        "task": TASK,
        "method": "top-tokens",
        "description": "test",
        "explanations": {"0": "the letter a", "17": "numbers", "3": ""},
        "scores": {"0": 0.5, "17": 1},
    }
    d.update(over)
    return d


def _load(p):
    return load_submission(p, task_id=TASK, num_latents=L, max_chars=MAX)


def _err(tmp_path, content, *fragments):
    p = _write(tmp_path, content)
    with pytest.raises(HarnessError) as ei:
        _load(p)
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(p) in msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


def test_load_good(tmp_path):
    sub = _load(_write(tmp_path, _good()))
    assert isinstance(sub, Submission)
    assert sub.explanations == {0: "the letter a", 17: "numbers", 3: ""}
    assert sub.scores == {0: 0.5, 17: 1.0}
    assert sub.task == TASK and sub.method == "top-tokens" and sub.description == "test"
    assert len(sub.sha256) == 64
    assert sub.path == str(tmp_path / "sub.json")


def test_scores_optional_and_null(tmp_path):
    d = _good()
    del d["scores"]
    a = _load(_write(tmp_path, d, "a.json"))
    b = _load(_write(tmp_path, _good(scores=None), "b.json"))
    assert a.scores is None and b.scores is None
    assert a.sha256 == b.sha256


def test_sha_stable_under_reordering_and_whitespace(tmp_path):
    d = _good()
    text_a = json.dumps(d)
    reordered = {k: d[k] for k in reversed(list(d))}
    reordered["explanations"] = dict(reversed(list(d["explanations"].items())))
    text_b = json.dumps(reordered, indent=4)
    a = _load(_write(tmp_path, text_a, "a.json"))
    b = _load(_write(tmp_path, text_b, "b.json"))
    assert a.sha256 == b.sha256 == submission_sha256(d)
    c = _load(_write(tmp_path, _good(explanations={"0": "the letter b", "17": "numbers", "3": ""}), "c.json"))
    assert c.sha256 != a.sha256


def test_canonical_json_form():
    d = _good()
    s = canonical_json(d)
    assert s == json.dumps(json.loads(s), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert set(json.loads(s)) == {"task", "method", "description", "explanations", "scores"}
    # 1 and 1.0 are the same score
    assert canonical_json(_good(scores={"0": 1})) == canonical_json(_good(scores={"0": 1.0}))


def test_missing_file(tmp_path):
    p = tmp_path / "nope.json"
    with pytest.raises(HarnessError, match="not found") as ei:
        _load(p)
    assert str(p) in str(ei.value)


def test_bad_json_line_col(tmp_path):
    _err(tmp_path, '{\n  "task": "tiny-task",\n  "method": oops\n}', "invalid JSON", "line 3", "column")


def test_nan_literal_rejected(tmp_path):
    _err(tmp_path, '{"task": "tiny-task", "method": "m", "description": "", "explanations": {"0": "x"}, '
                   '"scores": {"0": NaN}}', "NaN")  # fmt: skip


def test_not_utf8(tmp_path):
    p = tmp_path / "sub.json"
    p.write_bytes(b'{"task": "\xff"}')
    with pytest.raises(HarnessError, match="UTF-8"):
        _load(p)


def test_top_level_not_object(tmp_path):
    _err(tmp_path, "[1, 2]", "top level", "array")


def test_missing_key(tmp_path):
    d = _good()
    del d["method"]
    _err(tmp_path, d, "'method'", "missing")


def test_unknown_key(tmp_path):
    _err(tmp_path, _good(explanation={}), "'explanation'", "unknown")


def test_duplicate_top_level_key(tmp_path):
    _err(tmp_path, '{"task": "tiny-task", "task": "tiny-task", "method": "m", "description": "", '
                   '"explanations": {"0": "x"}}', '"task"', "more than once")  # fmt: skip


def test_task_mismatch(tmp_path):
    _err(tmp_path, _good(task="other-task"), '"other-task"', TASK)


def test_method_empty(tmp_path):
    _err(tmp_path, _good(method="  "), '"method"')


def test_description_not_string(tmp_path):
    _err(tmp_path, _good(description=3), '"description"')


def test_explanations_not_object(tmp_path):
    _err(tmp_path, _good(explanations=["a"]), '"explanations"', "array")


def test_explanations_empty(tmp_path):
    _err(tmp_path, _good(explanations={}, scores=None), '"explanations" is empty')


@pytest.mark.parametrize("key", ["-1", "a", "1.5", "012", " 3", "+4", ""])
def test_bad_latent_key(tmp_path, key):
    _err(tmp_path, _good(explanations={key: "x"}, scores=None), f'explanations["{key}"]', "not a latent index")


def test_latent_out_of_range(tmp_path):
    _err(tmp_path, _good(explanations={str(L): "x"}, scores=None), f'explanations["{L}"]', "out of range", str(L - 1))


def test_duplicate_latent(tmp_path):
    text = ('{"task": "tiny-task", "method": "m", "description": "", '
            '"explanations": {"12": "a", "5": "b", "12": "c"}}')  # fmt: skip
    _err(tmp_path, text, 'explanations["12"]', "more than once")


def test_explanation_not_string(tmp_path):
    _err(tmp_path, _good(explanations={"4": 7}, scores=None), 'explanations["4"]', "number", "strings")
    _err(tmp_path, _good(explanations={"4": None}, scores=None), 'explanations["4"]', "null")


def test_explanation_too_long(tmp_path):
    msg = _err(tmp_path, _good(explanations={"12": "x" * (MAX + 1)}, scores=None), 'explanations["12"]',
               f"{MAX + 1} characters", f"caps explanations at {MAX}", "shorten")  # fmt: skip
    assert msg.count("\n") == 0
    # exactly at the cap is fine
    sub = _load(_write(tmp_path, _good(explanations={"12": "x" * MAX}, scores=None), "ok.json"))
    assert len(sub.explanations[12]) == MAX


def test_empty_and_blank_explanations_allowed(tmp_path):
    sub = _load(_write(tmp_path, _good(explanations={"1": "", "2": "   "}, scores=None)))
    assert sub.explanations == {1: "", 2: "   "}


@pytest.mark.parametrize("bad", ['"high"', "true", "null", "[1]", "1e999"])
def test_score_not_finite_number(tmp_path, bad):
    text = ('{"task": "tiny-task", "method": "m", "description": "", "explanations": {"0": "x"}, '
            f'"scores": {{"0": {bad}}}}}')  # fmt: skip
    _err(tmp_path, text, 'scores["0"]', "finite number")


def test_score_without_explanation(tmp_path):
    _err(tmp_path, _good(scores={"5": 0.1}), 'scores["5"]', "no explanation")


def test_score_bad_key(tmp_path):
    _err(tmp_path, _good(scores={"x": 0.1}), 'scores["x"]')


def test_duplicate_score(tmp_path):
    text = ('{"task": "tiny-task", "method": "m", "description": "", "explanations": {"0": "x"}, '
            '"scores": {"0": 1, "0": 2}}')  # fmt: skip
    _err(tmp_path, text, 'scores["0"]', "more than once")


def test_scores_not_object(tmp_path):
    _err(tmp_path, _good(scores=[1]), '"scores"')


def test_coverage(tmp_path):
    sub = _load(_write(tmp_path, _good()))
    covered, frac = coverage(sub, np.array([17, 1, 2, 3, 0]))
    assert covered.tolist() == [17, 3, 0]  # task order kept; "" counts as covered
    assert frac == pytest.approx(3 / 5)
    covered, frac = coverage(sub, np.array([], dtype=np.int64))
    assert covered.size == 0 and frac == 0.0


def test_save_roundtrip(tmp_path):
    d = _good(explanations={"10": "ten", "2": "two", "0": "zéro"}, scores={"2": 3})
    p = save_submission(d, tmp_path / "out" / "s.json")
    text = p.read_text(encoding="utf-8")
    assert "zéro" in text  # ensure_ascii=False
    assert text.index('"2"') < text.index('"10"')  # latents in numeric order
    assert list(json.loads(text)) == ["task", "method", "description", "explanations", "scores"]
    sub = _load(p)
    assert sub.sha256 == submission_sha256(d)
    # saving the loaded submission is a fixed point
    p2 = save_submission(sub, tmp_path / "s2.json")
    assert p2.read_text(encoding="utf-8") == text
    # no scores → key omitted
    d.pop("scores")
    assert "scores" not in json.loads(save_submission(d, tmp_path / "s3.json").read_text())


# --- Delphi ---------------------------------------------------------------------------------------


def _delphi(tmp_path, files):
    root = tmp_path / "run"
    (root / "explanations").mkdir(parents=True)
    for name, content in files.items():
        (root / "explanations" / name).write_text(content, encoding="utf-8")
    return root


def test_import_delphi_both_schemes(tmp_path):
    root = _delphi(tmp_path, {
        "layers.6.mlp_latent123.txt": json.dumps("Numbers in \"dates\""),
        "layers.6.mlp_latent7.txt": "  plain text explanation \n",
        ".layers.6.mlp_feature9.txt": json.dumps("  old-style  "),
        "layers.6.mlp_latent8.txt": '"unterminated quote is plain text',
    })  # fmt: skip
    d = import_delphi(root, task_id=TASK, method="delphi", description="imported")
    assert d["task"] == TASK and d["method"] == "delphi" and d["description"] == "imported"
    assert d["explanations"] == {
        "7": "plain text explanation",
        "8": '"unterminated quote is plain text',
        "9": "old-style",
        "123": 'Numbers in "dates"',
    }
    assert list(d["explanations"]) == ["7", "8", "9", "123"]
    # the explanations folder itself works too, and the dict saves to a valid submission
    d2 = import_delphi(root / "explanations", task_id=TASK, method="delphi", description="imported")
    assert d2 == d
    p = save_submission(d, tmp_path / "delphi.json")
    sub = load_submission(p, task_id=TASK, num_latents=200, max_chars=100)
    assert sub.explanations[123] == 'Numbers in "dates"'


def test_import_delphi_hookpoint_filter(tmp_path):
    root = _delphi(tmp_path, {
        "layers.6.mlp_latent1.txt": '"six"',
        "layers.7.mlp_latent1.txt": '"seven"',
        ".layers.7.mlp_feature2.txt": '"seven old"',
    })  # fmt: skip
    with pytest.raises(HarnessError, match="several hookpoints") as ei:
        import_delphi(root, task_id=TASK, method="m", description="")
    assert "layers.6.mlp" in str(ei.value) and "layers.7.mlp" in str(ei.value)
    d = import_delphi(root, task_id=TASK, method="m", description="", hookpoint="layers.7.mlp")
    assert d["explanations"] == {"1": "seven", "2": "seven old"}
    with pytest.raises(HarnessError, match="layers.9"):
        import_delphi(root, task_id=TASK, method="m", description="", hookpoint="layers.9")


def test_import_delphi_bad_name(tmp_path):
    root = _delphi(tmp_path, {"layers.6_latent1.txt": '"a"', "notes.txt": "hello"})
    with pytest.raises(HarnessError) as ei:
        import_delphi(root, task_id=TASK, method="m", description="")
    assert "notes.txt" in str(ei.value)


def test_import_delphi_duplicate(tmp_path):
    root = _delphi(tmp_path, {"layers.6_latent5.txt": '"a"', ".layers.6_feature005.txt": '"b"'})
    with pytest.raises(HarnessError) as ei:
        import_delphi(root, task_id=TASK, method="m", description="")
    msg = str(ei.value)
    assert "layers.6_latent5.txt" in msg and ".layers.6_feature005.txt" in msg and "latent 5" in msg


def test_import_delphi_missing_folder(tmp_path):
    with pytest.raises(HarnessError, match="not found"):
        import_delphi(tmp_path / "nope", task_id=TASK, method="m", description="")
