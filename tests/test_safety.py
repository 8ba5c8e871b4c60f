"""Issue 22: a terminal no submission can drive, readers that survive a damaged side file, a verify-result
that checks every field, and a prediction store whose changed values are caught."""

from __future__ import annotations

import io
import json
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.io import unsafe_char

TASK_ID = "tiny-llama-transcoder"
# Clear the screen, set the window title (OSC 0), write the clipboard (OSC 52), recolour via the one-byte
# C1 CSI, return the cursor, NUL, a line separator and a right-to-left override.
HOSTILE = "x\x1b[2J\x1b]0;pwned\x07\x1b]52;c;aGk=\x07\r\x00\u2028\u202e\x9b31my\x85z"
_SGR = re.compile(r"\x1b\[[0-9;]*m")   # rich's own colours: the only escape sequences allowed out


def _raw_controls(text: str) -> list[str]:
    """Unsafe characters left once rich's own SGR colour codes are removed (what `cat -v` would flag)."""
    return [ch for ch in _SGR.sub("", text) if ch != "\n" and unsafe_char(ch)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two evaluated submissions on the tiny task, with the prediction store in the module's cache."""
    root = tmp_path_factory.mktemp("safety")
    mp = pytest.MonkeyPatch()
    mp.setenv("HARNESS_CACHE", str(root / "cache"))
    mp.chdir(root)
    try:
        assert main(["make-tiny-task", "-o", str(root / "task")]) == 0
        from harness.data.prepare import prepare
        from harness.task.spec import load_task

        latents = prepare(load_task(str(root / "task"))).rewritten
        for name, text in (("a", "the tokens the and a"), ("b", "digits and numbers")):
            (root / f"{name}.json").write_text(json.dumps({
                "task": TASK_ID, "method": name, "description": "d",
                "explanations": {str(j): text for j in latents[:-1]}}))   # one rewritten latent left out
            assert main(["eval", "--task", "task", "--submission", f"{name}.json", "--results", "results",
                         "--backend", "prefix"]) == 0
        yield root
    finally:
        mp.undo()


@pytest.fixture(autouse=True)
def _here(built, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(built / "cache"))
    monkeypatch.chdir(built)


def _result(root: Path, name: str, results: str = "results") -> Path:
    (p,) = (root / results / TASK_ID).glob(f"{name}-*.json")
    return p


def _copy_results(root: Path, dest: str) -> Path:
    out = root / dest
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(root / "results", out)
    return out


# ---------------------------------------------------------------- 1. the terminal

@pytest.mark.parametrize("bad", ["\x1b[2J", "\r", "\x00", "\n", "\u2028", "\u202e", "\x9b", "\t"])
def test_validate_refuses_control_characters_in_method(tmp_path, bad):
    from harness.task.submission import load_submission

    p = tmp_path / "s.json"
    p.write_text(json.dumps({"task": "t", "method": f"ok{bad}name", "description": "", "explanations": {"0": "x"}}))
    with pytest.raises(HarnessError) as e:
        load_submission(p, task_id="t", num_latents=4, max_chars=100)
    msg = str(e.value)
    assert "control character" in msg and "at position 2" in msg and ascii(bad[0]) in msg
    assert not _raw_controls(msg)


def test_description_length_cap(tmp_path):
    from harness.task.submission import MAX_DESCRIPTION_CHARS, load_submission

    p = tmp_path / "s.json"
    for n, ok in ((MAX_DESCRIPTION_CHARS, True), (MAX_DESCRIPTION_CHARS + 1, False)):
        p.write_text(json.dumps({"task": "t", "method": "m", "description": "d" * n, "explanations": {"0": "x"}}))
        if ok:
            assert load_submission(p, task_id="t", num_latents=4, max_chars=100).description == "d" * n
        else:
            with pytest.raises(HarnessError, match="10,001 characters"):
                load_submission(p, task_id="t", num_latents=4, max_chars=100)


def test_hostile_method_never_reaches_the_terminal_raw(built, monkeypatch, capsys):
    """A result file whose method holds escape sequences (edited by hand, or from an older harness):
    eval's summary, `failures`, and `leaderboard` in every format print no raw control character."""
    import harness.cli as cli
    from harness.terminal import console

    res_dir = _copy_results(built, "hostile-results")
    p = _result(built, "a", "hostile-results")
    d = json.loads(p.read_text())
    d["submission"]["method"] = HOSTILE
    p.write_text(json.dumps(d))

    # The check itself can fail: a plain rich Console lets the sequences through.
    from rich.console import Console
    from rich.text import Text

    plain = Console(file=io.StringIO(), force_terminal=True, width=200)
    plain.print(Text(HOSTILE))
    assert "\x1b" in _raw_controls(plain.file.getvalue())

    buf = io.StringIO()
    monkeypatch.setattr(cli, "console", console(file=buf, force_terminal=True, width=200))
    cli._print_summary(d)
    j = d["per_latent"]["latent"][0]
    assert main(["failures", "--result", str(p), "--latent", str(j), "--task", "task"]) == 0
    for fmt in ("rich", "md", "csv", "html"):
        assert main(["leaderboard", "--task", "task", "--results", str(res_dir), "--format", fmt]) == 0
    cap = capsys.readouterr()
    out = buf.getvalue() + cap.out + cap.err
    assert HOSTILE not in out and _raw_controls(out) == []
    header = next(line for line in _SGR.sub("", buf.getvalue()).splitlines() if "· latent" in line)
    assert header.startswith(f"{TASK_ID} · x\\x1b[2J\\x1b]0;pwned")   # shown escaped, on one line
    assert "\\u2028\\u202e\\x9b31my\\x85z · latent" in header
    assert main(["leaderboard", "--task", "task", "--results", str(res_dir), "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert _raw_controls(out) == []
    from harness.io import one_line

    assert one_line(HOSTILE) in {r["method"] for r in json.loads(out)}


def test_json_text_escapes_what_json_leaves_raw():
    from harness.terminal import json_text

    obj = {"m": "a\x7f\x9b\u2028\u202e\x1b z"}
    text = json_text(obj)
    assert _raw_controls(text) == [] and json.loads(text) == obj
