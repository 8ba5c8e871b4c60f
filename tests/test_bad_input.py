"""Issue 12's reproductions: each hostile or broken input ends in one `error:` line and exit 2 (or, for a
damaged cache, a warning and a recompute), never a traceback; output files follow the umask."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main

TASK_ID = "tiny-llama-transcoder"
REPO = Path(__file__).resolve().parent.parent


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


def sub(path: Path, **fields) -> Path:
    d = {"task": TASK_ID, "method": "m", "description": "", "explanations": {"0": "x", "1": "y"}, **fields}
    path.write_text(json.dumps(d))
    return path


def validate(tiny, path) -> int:
    return main(["validate", "--submission", str(path), "--task", str(tiny / "task")])


# ---------------------------------------------------------------- submissions

def test_deeply_nested_json(tiny, tmp_path, capsys):
    p = tmp_path / "deep.json"
    p.write_text('{"task": "%s", "scores": %s1%s}' % (TASK_ID, "[" * 100_000, "]" * 100_000))
    assert validate(tiny, p) == 2
    line = one_error_line(capsys)
    assert "deep.json" in line and "nested more than 8 levels" in line and "line 1, column" in line


@pytest.mark.parametrize("field, entry", [("description", '"description"'), ("explanations", 'explanations["0"]'),
                                          ("key", 'the key explanations["\\ud800"]')])
def test_lone_surrogate(tiny, tmp_path, capsys, field, entry):
    p = tmp_path / "surrogate.json"
    if field == "description":
        text = sub(p, description="@").read_text().replace('"@"', '"\\ud800"')
    elif field == "explanations":
        text = sub(p, explanations={"0": "@"}).read_text().replace('"@"', '"\\ud800"')
    else:
        text = sub(p, explanations={"@": "x"}).read_text().replace('"@"', '"\\ud800"')
    p.write_text(text)
    assert validate(tiny, p) == 2
    line = one_error_line(capsys)
    assert "surrogate.json" in line and entry in line and "lone surrogate" in line


def test_five_thousand_digit_key(tiny, tmp_path, capsys):
    p = sub(tmp_path / "long.json", explanations={"9" * 5000: "x"})
    assert validate(tiny, p) == 2
    line = one_error_line(capsys)
    assert "long.json" in line and 'explanations["9999' in line and "out of range" in line
    assert len(line) < 400  # the key is quoted cut short, not 5,000 digits wide


def test_oversized_file_refused_before_reading(tiny, tmp_path, capsys):
    p = tmp_path / "big.json"
    p.write_text(" " * (3 << 20))
    assert validate(tiny, p) == 2
    line = one_error_line(capsys)
    assert "big.json" in line and "more than any submission for this task can need" in line


def test_method_length_capped(tiny, tmp_path, capsys):
    p = sub(tmp_path / "m.json", method="x" * 101)
    assert validate(tiny, p) == 2
    assert '"method" is 101 characters' in one_error_line(capsys)


# ---------------------------------------------------------------- rich markup in user text

def test_markup_in_method_is_text(tiny, tmp_path, capsys):
    assert validate(tiny, sub(tmp_path / "ok.json", method="[/b] :smile:")) == 0
    out = capsys.readouterr().out
    assert "'[/b] :smile:'" in out.replace("\n", " ")


@pytest.mark.parametrize("where", ["task", "key", "path"])
def test_markup_in_error_messages_is_text(tiny, tmp_path, capsys, where):
    if where == "task":
        p, want = sub(tmp_path / "t.json", task="[/b]"), '"task" is "[/b]"'
    elif where == "key":
        p, want = sub(tmp_path / "k.json", explanations={"[/b]": "x"}), 'explanations["[/b]"]'
    else:
        p = tmp_path / "[/b]" / "missing.json"
        p.parent.mkdir(parents=True)
        want = "[/b]/missing.json"
    assert validate(tiny, p) == 2
    assert want in one_error_line(capsys)


def test_task_file_sections_survive_in_messages(tiny, capsys):
    assert main(["validate", "--submission", "x.json", "--task", str(tiny / "task"), "--override", "contexts.T=0"]) == 2
    assert "task.toml [contexts]: `T` must be a positive integer" in one_error_line(capsys)


def test_odd_method_stored_then_eval_and_leaderboard(tiny, capsys, monkeypatch):
    """A result whose method is markup, mathtext, emoji code and a table pipe: every later command renders it."""
    from harness.data.prepare import prepare
    from harness.task.spec import load_task

    rewritten = prepare(load_task(str(tiny / "task"))).rewritten
    method = "[/b] x $^$ :smile: a|b"
    p = sub(tiny / "odd.json", method=method, explanations={str(j): "the" for j in rewritten})
    res, lb = tiny / "res", tiny / "lb"
    args = ["eval", "--task", str(tiny / "task"), "--submission", str(p), "--results", str(res),
            "--leaderboard", str(lb), "--backend", "prefix"]
    old = os.umask(0o022)
    try:
        assert main(args) == 0
        first = json.loads(next((res / TASK_ID).glob("*.json")).read_text())
        # Run again: the stored result is read back, and the leaderboard rebuilt around it.
        assert main(args) == 0
        second = json.loads(next((res / TASK_ID).glob("*.json")).read_text())
    finally:
        os.umask(old)
    # This module's cache starts empty: the first run made every prediction, the rerun read them all back.
    assert first["provenance"]["prediction_source"] == "computed"
    assert second["provenance"]["prediction_source"] == "store"
    capsys.readouterr()
    monkeypatch.setenv("HARNESS_TASKS_DIR", str(tiny))  # `leaderboard` takes a registered task id
    assert main(["leaderboard", "--task", TASK_ID, "--results", str(res), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "\\[/b\\] x $^$ :smile: a\\|b" in out  # markdown: the pipe is not a column, the brackets not a link
    assert main(["leaderboard", "--task", TASK_ID, "--results", str(res), "--format", "rich"]) == 0
    out = capsys.readouterr().out
    assert "[/b]" in out and "$^$" in out and "\N{SMILING FACE WITH OPEN MOUTH AND SMILING EYES}" not in out

    # Hand-edited results in the folder: one nested 100,000 deep, one whose method is a lone surrogate.
    # The first is rejected with its reason, the second shown with the surrogate escaped; nothing crashes.
    (res / TASK_ID / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (res / TASK_ID / "surrogate.json").write_text(
        json.dumps({**second, "submission": {**second["submission"], "method": "@", "sha256": "0" * 64}})
        .replace('"method": "@"', '"method": "\\ud800"'))
    for fmt in ("auto", "rich", "md", "csv", "html", "json"):
        assert main(["leaderboard", "--task", TASK_ID, "--results", str(res), "--format", fmt]) == 0
        out, err = capsys.readouterr()
        assert "deep.json" in err and "nested too deep" in err.replace("\n", " ")   # stderr: stdout stays the table
        assert "\\ud800" in out

    # Every file eval wrote is readable by others under umask 022, like any tool's output.
    written = list((res / TASK_ID).iterdir()) + list(lb.iterdir())
    assert {p.suffix for p in written} == {".json", ".npz", ".png", ".md"}
    for f in written:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_explain_and_leaderboard_files_follow_umask(tiny, tmp_path, monkeypatch):
    # `leaderboard --leaderboard DIR` looks the task up by id: register the tiny task under its id.
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / TASK_ID).symlink_to(tiny / "task")
    (tmp_path / "results").mkdir()
    monkeypatch.setenv("HARNESS_TASKS_DIR", str(tmp_path / "tasks"))
    old = os.umask(0o022)
    try:
        assert main(["explain", "--task", str(tiny / "task"), "--method", "empty", "-o", str(tmp_path / "e.json")]) == 0
        assert main(["leaderboard", "--task", TASK_ID, "--results", str(tmp_path / "results"),
                     "--leaderboard", str(tmp_path / "lb")]) == 0
        os.umask(0o077)
        assert main(["explain", "--task", str(tiny / "task"), "--method", "empty", "-o", str(tmp_path / "p.json")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "e.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "lb" / f"{TASK_ID}.md").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "p.json").stat().st_mode) == 0o600


# ---------------------------------------------------------------- broken task folders, caches, environments

@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_coder_cfg_broken(tiny, tmp_path, capsys, damage):
    broken = tmp_path / "task"
    shutil.copytree(tiny / "task", broken)
    cfg = next(broken.glob("coder/*/cfg.json"))
    if damage == "missing":
        cfg.unlink()
    else:
        cfg.write_text(cfg.read_text()[:20])
    assert validate(tiny, sub(tmp_path / "s.json")) == 0  # the intact task still validates
    capsys.readouterr()
    assert main(["validate", "--submission", str(tmp_path / "s.json"), "--task", str(broken)]) == 2
    line = one_error_line(capsys)
    assert "cfg.json" in line and ("is missing" if damage == "missing" else "is not valid JSON") in line


@pytest.mark.parametrize("device", ["foo", "cuda:0" if not torch.cuda.is_available() else "cuda:99"])
def test_bad_device(tiny, tmp_path, capsys, device):
    for cmd in (["prepare"], ["explain", "--method", "empty", "-o", str(tmp_path / "x.json")],
                ["eval", "--submission", str(sub(tmp_path / "s.json")), "--results", str(tmp_path / "r")]):
        assert main([*cmd, "--task", str(tiny / "task"), "--device", device]) == 2
        assert f"--device '{device}'" in one_error_line(capsys)


def test_cache_is_a_file(tiny, tmp_path, monkeypatch, capsys):
    f = tmp_path / "cachefile"
    f.write_text("")
    monkeypatch.setenv("HARNESS_CACHE", str(f))
    assert main(["prepare", "--task", str(tiny / "task")]) == 2
    assert f"HARNESS_CACHE={f} is a file, not a folder" in one_error_line(capsys)


def test_bad_env_numbers(tiny, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_THREADS", "two")
    assert main(["tasks"]) == 2
    assert "HARNESS_THREADS='two' is not a positive integer" in one_error_line(capsys)


def test_usage_mistake_is_one_line(capsys):
    assert main(["eval", "--task"]) == 2
    assert "harness eval: argument --task: expected one argument" in one_error_line(capsys)


@pytest.mark.parametrize("step", ["splits.npz", "activation_table.npz", "latents_test.npz"])
def test_truncated_cache_step_is_recomputed(tiny, tmp_path, monkeypatch, capsys, step):
    from harness.io import load_npz

    cache = tmp_path / "cache"
    shutil.copytree(tiny / "cache", cache)
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    f = next(cache.glob(f"tasks/*/{step}"))
    good = f.read_bytes()
    f.write_bytes(good[: len(good) // 2])
    assert main(["prepare", "--task", str(tiny / "task")]) == 0
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and step in warnings[0] and "recomputing" in warnings[0]
    # Recomputed to the same content, and the next run is silent.
    if step != "activation_table.npz":
        want = load_npz(next((tiny / "cache").glob(f"tasks/*/{step}")))
        got = load_npz(f)
        assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
    assert main(["prepare", "--task", str(tiny / "task")]) == 0
    assert "warning:" not in capsys.readouterr().err


# ---------------------------------------------------------------- output locations, checked before any work

@pytest.mark.parametrize("which", ["results", "leaderboard"])
def test_output_folder_is_a_file(tiny, tmp_path, capsys, which):
    (tmp_path / "taken").write_text("")
    out = {"results": tmp_path / "r", "leaderboard": tmp_path / "l", which: tmp_path / "taken"}
    args = ["eval", "--task", str(tiny / "task"), "--submission", str(sub(tmp_path / "s.json")),
            "--results", str(out["results"]), "--leaderboard", str(out["leaderboard"])]
    assert main(args) == 2
    line = one_error_line(capsys)
    assert "taken" in line and which in line


def _unprivileged() -> list[str] | None:
    """A command prefix under which file modes bind: root ignores them unless CAP_DAC_OVERRIDE is dropped."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set", "-dac_override"] if setpriv else None


@pytest.mark.skipif(_unprivileged() is None, reason="running as root without setpriv: modes cannot bind")
@pytest.mark.parametrize("which", ["results", "leaderboard"])
def test_read_only_output_folder_fails_before_any_work(tiny, tmp_path, which):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / TASK_ID).mkdir()
    ro.chmod(0o555)
    (ro / TASK_ID).chmod(0o555)
    fresh_cache = tmp_path / "cache"
    out = {"results": tmp_path / "r", "leaderboard": tmp_path / "l", which: ro}
    cmd = [*_unprivileged(), sys.executable, "-m", "harness.cli", "eval", "--task", str(tiny / "task"),
           "--submission", str(sub(tmp_path / "s.json")), "--results", str(out["results"]),
           "--leaderboard", str(out["leaderboard"])]
    env = {**os.environ, "HARNESS_CACHE": str(fresh_cache), "HARNESS_THREADS": "1"}
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    finally:
        ro.chmod(0o755)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "cannot write to the" in lines[0] and "Permission denied" in lines[0]
    assert not fresh_cache.exists()  # nothing was prepared, let alone simulated


def test_delphi_file_with_lone_surrogate(tmp_path, capsys):
    folder = tmp_path / "explanations"
    folder.mkdir()
    (folder / "layers.1.mlp_latent3.txt").write_text('"fires on \\ud800"')
    assert main(["import-delphi", "--delphi", str(folder), "--task", TASK_ID, "-o", str(tmp_path / "s.json")]) == 2
    line = one_error_line(capsys)
    assert "layers.1.mlp_latent3.txt" in line and "lone surrogate" in line
    assert not (tmp_path / "s.json").exists()
