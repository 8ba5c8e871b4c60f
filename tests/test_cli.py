"""The CLI's vocabulary and tables: every id whole at 80 columns (piped and on a terminal), `--format json`
with the right numbers, and every flag a message or a doc names existing."""

from __future__ import annotations

import argparse
import ast
import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

import harness.cli as cli
from harness.cli import build_parser, main
from harness.task.spec import list_tasks

REPO = Path(__file__).resolve().parents[1]
MINI = "smollm2-135m-l8-offline-mini"
RESULTS = REPO / "results"


def _terminal(monkeypatch, width: int) -> io.StringIO:
    """Point the CLI's console at a fake terminal of `width` columns; returns what it prints."""
    buf = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=buf, width=width, force_terminal=True, color_system=None,
                                                markup=False, emoji=False))
    return buf


def _methods(task: str) -> list[str]:
    # oracle.json (harness oracle) is a reference beside the results, not a method's result.
    return sorted({json.loads(p.read_text())["submission"]["method"] for p in (RESULTS / task).glob("*.json")
                   if p.name != "oracle.json"})


# ---------------------------------------------------------------- tables never cut identifiers


def test_tasks_piped_at_80_columns_prints_every_id_whole(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    ids = [s.id for s in list_tasks()]
    assert len(ids) >= 5
    cells = {c.strip() for line in out.splitlines() for c in line.split("|")}
    assert set(ids) <= cells and "…" not in out
    assert {s.hash[:12] for s in list_tasks()} <= cells


@pytest.mark.parametrize("width", [80, 60, 200])
def test_tasks_on_a_terminal_prints_every_id_whole(monkeypatch, width):
    buf = _terminal(monkeypatch, width)
    assert main(["tasks"]) == 0
    out = buf.getvalue()
    words = set(re.split(r"[\s│┃]+", out))
    assert {s.id for s in list_tasks()} <= words and "…" not in out
    assert max(map(len, out.splitlines())) <= width


def test_leaderboard_piped_at_80_columns_prints_every_method_whole(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["leaderboard", "--task", MINI, "--results", str(RESULTS)]) == 0
    out = capsys.readouterr().out
    cells = {c.strip() for line in out.splitlines() for c in line.split("|")}
    assert set(_methods(MINI)) <= cells and len(_methods(MINI)) >= 4
    assert MINI in out and "…" not in out


@pytest.mark.parametrize("width", [80, 200])
def test_leaderboard_on_a_terminal_prints_every_method_whole(monkeypatch, width):
    buf = _terminal(monkeypatch, width)
    assert main(["leaderboard", "--task", MINI, "--results", str(RESULTS)]) == 0
    out = buf.getvalue()
    assert set(_methods(MINI)) <= set(re.split(r"[\s│┃]+", out)) and "…" not in out
    assert max(map(len, out.splitlines())) <= width


def test_a_method_name_too_wide_for_the_terminal_gets_one_block_per_row():
    from harness.terminal import Column, print_table

    buf = io.StringIO()
    long = "a-method-name-" + "x" * 70
    print_table(Console(file=buf, width=60, force_terminal=True, color_system=None),
                (Column("method", key=True), Column("score", numeric=True)), [[long, "0.5"], ["short", "0.4"]])
    out = buf.getvalue()
    assert long in out.splitlines() and "short" in out.splitlines() and "…" not in out


def test_piped_markdown_escapes_identifiers_but_keeps_them_whole():
    from harness.terminal import Column, markdown

    md = markdown((Column("method", key=True), Column("note")), [["a|b", "x | y"]])
    assert "a\\|b" in md and "x \\| y" in md and len(md.splitlines()) == 3


# ---------------------------------------------------------------- --format json


def test_leaderboard_json_has_every_column_and_the_result_files_numbers(capsys):
    assert main(["leaderboard", "--task", MINI, "--results", str(RESULTS), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["method"] for r in rows) == _methods(MINI)
    assert [r["rank"] for r in rows] == sorted(r["rank"] for r in rows) and rows[0]["rank"] == 1
    assert rows[0]["tied_with_above"] is None and all(isinstance(r["tied_with_above"], bool) for r in rows[1:])
    for r in rows:
        res = json.loads((REPO / r["result"]).read_text() if not Path(r["result"]).is_absolute()
                         else Path(r["result"]).read_text())
        h = res["headline"]
        assert r["task"] == MINI and r["task_hash"] == res["task"]["hash"]
        for k, src in (("sim_minus_zero_mean", "sim_minus_zero_mean"), ("delta_ce_median_simulated", "delta_ce_median"),
                       ("delta_ce_median_latent_zero", "latent_zero_delta_ce_median"),
                       ("detection_auroc", "detection_auroc_ci")):
            assert set(r[k]) >= {"value", "lo", "hi"}
            assert r[k]["value"] == pytest.approx(h[src]["value"], abs=1e-12)
            assert (r[k]["lo"], r[k]["hi"]) == (h[src]["lo"], h[src]["hi"])
        assert r["recovery"]["value"] == pytest.approx(h["recovery"]["value"]) and "note" in r["recovery"]
        for k in ("sensitivity", "specificity"):
            assert r[k] == pytest.approx(h[k])
        assert r["balanced_accuracy"] == pytest.approx(h["detection_balanced_accuracy"])
        assert r["coverage"] == res["submission"]["coverage"]
        assert r["submission_sha256"] == res["submission"]["sha256"]
        assert isinstance(r["sensitivity"], float) and isinstance(r["rank"], int)


def test_leaderboard_json_agrees_with_the_markdown_table(capsys):
    assert main(["leaderboard", "--task", MINI, "--results", str(RESULTS), "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert main(["leaderboard", "--task", MINI, "--results", str(RESULTS), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    lines = [line for line in md.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    table = [dict(zip(head, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]
    assert [t["method"] for t in table] == [r["method"] for r in rows]
    for t, r in zip(table, rows, strict=True):
        a = r["detection_auroc"]
        assert t["detection AUROC"] == f"{a['value']:.2f} [{a['lo']:.2f}, {a['hi']:.2f}]"
        assert t["rank"].lstrip("=?") == str(r["rank"]) and t["rank"].startswith("=") == bool(r["tied_with_above"])
        assert t["sensitivity"] == f"{r['sensitivity']:.2f}" and t["coverage"] == f"{100 * r['coverage']:.0f}%"


def test_tasks_json_lists_every_task_with_numbers_as_numbers(capsys):
    assert main(["tasks", "--format", "json"]) == 0
    got = {t["id"]: t for t in json.loads(capsys.readouterr().out)}
    for s in list_tasks():
        t = got[s.id]
        assert t["hash"] == s.hash and t["T"] == s.contexts.T
        assert (t["calibration"], t["test"]) == (s.contexts.calibration, s.contexts.test)
        assert t["coder_kind"] == s.coder.kind and t["hookpoint"] == s.coder.hookpoint
        assert set(t) >= {"subject", "rewritten", "latent_rule", "simulator", "prompt_version", "folder"}
    assert got[MINI]["rewritten"] == 16 and got[MINI]["latent_rule"] == "lexical"


def test_leaderboard_stdout_is_only_the_document(tmp_path, capsys):
    """A file that cannot be ranked is named on stderr: stdout stays parseable."""
    res = tmp_path / "results" / MINI
    res.mkdir(parents=True)
    for p in (RESULTS / MINI).glob("*"):
        (res / p.name).symlink_to(p)
    (res / "broken.json").write_text("{")
    assert main(["leaderboard", "--task", MINI, "--results", str(tmp_path / "results"), "--format", "json"]) == 0
    cap = capsys.readouterr()
    assert len(json.loads(cap.out)) == len(_methods(MINI)) and "broken.json" in cap.err


# ---------------------------------------------------------------- help and messages name real flags


def _subparsers() -> dict:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(parser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


ALL_FLAGS = set().union(*(_options(p) for p in _subparsers().values()))

# Flags of other programs that harness messages tell users to run: pip, the Hugging Face CLI, vllm serve.
FOREIGN = {"--no-deps", "--revision", "--repo-type", "--include", "--port", "--max-logprobs",
           "--enable-prefix-caching", "--upgrade", "--dataset",
           # pip's and pip-compile's, in scripts/install.sh and scripts/lock.sh
           "--require-hashes", "--no-build-isolation", "--generate-hashes", "--upgrade-package", "--extra",
           "--strip-extras", "--allow-unsafe", "--no-emit-index-url", "--no-emit-find-links",
           # benchmarks/simulate.py's, which `harness estimate` tells users to run for a cascade-shaped workload
           "--per-context"}
FLAG = re.compile(r"(?<![\w(-])--[a-z][a-z0-9-]*(?![\w:-])")


def _strings(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_every_flag_a_message_names_exists():
    """Error messages and help in harness/ name only flags some verb has; a module with a command line of its
    own (`python -m harness.build...`) may name its own flags, but `harness VERB` commands are checked in all."""
    bad = []
    for path in sorted((REPO / "harness").rglob("*.py")):
        src = path.read_text()
        own_cli = path.name != "cli.py" and ("sys.argv" in src or "ArgumentParser(" in src)
        for line, text in _strings(path):
            bad += [f"{path.relative_to(REPO)}:{line}: {f}" for f in FLAG.findall(text)
                    if not own_cli and f not in ALL_FLAGS | FOREIGN]
            bad += [f"{path.relative_to(REPO)}:{line}: harness {verb} {f}" for verb, f in _verb_flags(text)]
    assert not bad, bad


def _verb_flags(text: str):
    """(verb, flag) for every flag a `harness VERB ...` command in `text` passes that VERB does not have."""
    verbs = _subparsers()
    for verb, args in _commands(text):
        if verb in verbs:
            for f in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", args):
                if f not in _options(verbs[verb]):
                    yield verb, f


def _commands(text: str):
    """(verb, the command's text) for every `harness VERB ...` in a doc or script, up to where it ends."""
    text = text.replace("\\\n", " ")
    pat = r"(?:\bharness(?:\.cli)?|\$H|\$\{HARNESS\})\s+([a-z][a-z-]+)([^\n`|;&#)]*)"
    for m in re.finditer(pat, text):
        yield m.group(1), m.group(2)


DOCS = ["README.md", "docs/*.md", "tasks/*/README.md", "scripts/*.sh", ".ci/run", "benchmarks/*.md"]


def test_every_flag_the_docs_pass_to_a_verb_exists():
    verbs = _subparsers()
    bad, seen = [], 0
    for pattern in DOCS:
        for path in sorted(REPO.glob(pattern)):
            text = path.read_text()
            seen += sum(verb in verbs for verb, _ in _commands(text))
            bad += [f"{path.relative_to(REPO)}: harness {verb} {f}" for verb, f in _verb_flags(text)]
    assert seen > 20 and not bad, bad


def test_every_flag_the_docs_mention_exists_somewhere():
    bad = []
    for pattern in DOCS:
        for path in sorted(REPO.glob(pattern)):
            if path.name == "scaling.md":
                continue   # vllm serve's own flags
            for f in set(FLAG.findall(path.read_text())):
                if f not in ALL_FLAGS | FOREIGN | _script_flags():
                    bad.append(f"{path.relative_to(REPO)}: {f}")
    assert not bad, bad


def _script_flags() -> set[str]:
    """Flags of the repo's own scripts (benchmarks/, harness/build/), which docs also show."""
    out = set()
    for path in [*REPO.glob("benchmarks/*.py"), *REPO.glob("harness/build/*.py"), *REPO.glob("scripts/*.py")]:
        out |= set(re.findall(r"add_argument\(\s*(?:\"-\w\",\s*)?\"(--[a-z][a-z0-9-]*)\"", path.read_text()))
    return out


def test_every_verb_has_help():
    for verb in _subparsers():
        with pytest.raises(SystemExit) as e:
            main([verb, "--help"])
        assert e.value.code == 0


def test_backend_help_is_true():
    from harness.simulate import BACKENDS

    from harness.simulate.choice import CANDIDATES

    assert set(cli.BACKENDS) == set(BACKENDS)
    text = " ".join(_subparsers()["eval"].format_help().split())
    # auto measures among the engines harness/simulate/choice.py times, and the help names exactly those
    assert "auto (the default): the engine measured fastest on this machine" in text
    assert f"among those installed ({CANDIDATES[0]}, and {CANDIDATES[1]} where it imports)" in text


def test_auto_backend_is_prefix(monkeypatch):
    """With nothing measured (make_simulator is below the choice in load_simulator), auto is the prefix engine."""
    import harness.simulate.prefix as prefix
    from harness.simulate import make_simulator

    class Stub:
        def __init__(self, *a, **kw):
            pass

    monkeypatch.setattr(prefix, "PrefixSimulator", Stub)
    assert isinstance(make_simulator("auto", None, None, "v1", 100, "k"), Stub)


def test_every_eval_config_field_has_its_eval_flag():
    """`harness eval` and the Python `EvalConfig` say the same things: a field added to one without the other
    fails here. `command` is the one field no user sets (eval records its own command line)."""
    import dataclasses

    from harness.pipeline import EvalConfig

    flag_of = {"task": "--task", "submission": "--submission", "backend": "--backend", "device": "--device",
               "results_dir": "--results", "overrides": "--override", "endpoints": "--endpoints",
               "served_model": "--served-model", "cascade": "--cascade", "command": None}
    fields = [f.name for f in dataclasses.fields(EvalConfig)]
    assert sorted(fields) == sorted(flag_of), "a new EvalConfig field needs its `harness eval` flag (or an entry here)"
    eval_flags = _options(_subparsers()["eval"])
    assert {f for f in flag_of.values() if f} <= eval_flags
    # ...and every eval flag reaches the config or says where else it goes (the leaderboard step, help).
    assert eval_flags - {f for f in flag_of.values() if f} == {"-h", "--help", "--leaderboard"}
