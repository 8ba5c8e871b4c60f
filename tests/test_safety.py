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
from tests.conftest import evaluate_tiny_submissions

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
        # One rewritten latent left out of each submission.
        evaluate_tiny_submissions(root, {"a": "the tokens the and a", "b": "digits and numbers"}, leave_out=1)
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
    from harness.result import Result

    cli._print_summary(Result.from_dict(d))
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


# ---------------------------------------------------------------- 2. readers of a results folder

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _drop_array(path: Path, key: str) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != key}
    np.savez_compressed(path, **arrays)


@pytest.mark.parametrize("damage", ["truncated", "missing key"])
def test_readers_skip_a_damaged_side_file(built, capsys, damage):
    res_dir = _copy_results(built, f"damaged-{damage.replace(' ', '-')}")
    side = next((res_dir / TASK_ID).glob("a-*.per_context.npz"))
    _truncate(side) if damage == "truncated" else _drop_array(side, "ce_latent_zero__all")
    capsys.readouterr()

    assert main(["leaderboard", "--task", "task", "--results", str(res_dir), "--format", "json"]) == 0
    cap = capsys.readouterr()
    assert [r["method"] for r in json.loads(cap.out)] == ["b"]
    (line,) = cap.err.strip().splitlines()
    assert side.name in line and "side file is damaged" in line
    if damage == "missing key":
        assert "'ce_latent_zero__all'" in line

    assert main(["site", "--task", "task", "--results", str(res_dir), "-o", str(built / f"site-{side.stem}")]) == 0
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("rejected")]
    assert len(err) == 1 and side.name in err[0]
    assert not (built / f"site-{side.stem}" / TASK_ID / side.name.split(".")[0]).exists()

    # eval into that folder: writes its result, then its leaderboard step skips the damaged one, saying so.
    assert main(["eval", "--task", "task", "--submission", "b.json", "--results", str(res_dir),
                 "--backend", "prefix"]) == 0
    cap = capsys.readouterr()
    skipped = [x for x in cap.err.splitlines() if x.startswith("skipped")]
    assert len(skipped) == 1 and side.name in skipped[0]
    assert "| 1      | b " in cap.out and "| a " not in cap.out


def test_readers_skip_a_damaged_result_file(built, capsys):
    """A result file cut short (a full disk, a killed copy): every reader names it in one line and goes on."""
    res_dir = _copy_results(built, "damaged-result")
    p = _result(built, "a", "damaged-result")
    _truncate(p)
    capsys.readouterr()

    assert main(["leaderboard", "--task", "task", "--results", str(res_dir), "--format", "json"]) == 0
    cap = capsys.readouterr()
    assert [r["method"] for r in json.loads(cap.out)] == ["b"]
    (line,) = cap.err.strip().splitlines()
    assert p.name in line and "invalid JSON" in line

    assert main(["site", "--task", "task", "--results", str(res_dir), "-o", str(built / "site-damaged-result")]) == 0
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("rejected")]
    assert len(err) == 1 and p.name in err[0]

    assert main(["eval", "--task", "task", "--submission", "b.json", "--results", str(res_dir),
                 "--backend", "prefix"]) == 0
    cap = capsys.readouterr()
    skipped = [x for x in cap.err.splitlines() if x.startswith("skipped")]
    assert len(skipped) == 1 and p.name in skipped[0] and "re-run `harness eval`" in skipped[0]
    assert "| 1      | b " in cap.out and "| a " not in cap.out


# ---------------------------------------------------------------- 3. verify-result

def _edited(src: Path, dest: Path, edit) -> Path:
    d = json.loads(src.read_text())
    edit(d)
    dest.write_text(json.dumps(d))
    return dest


# Fields a hand edit would target first (issue 22 found these unchecked); the slow test below changes every one.
FAST_FIELDS = [
    ("submission", "coverage"), ("submission", "n_explanations"), ("provenance", "n_predictions"),
    ("provenance", "n_computed"), ("provenance", "wall_seconds"), ("provenance", "answer_mass_mean"),
    ("methods", "intervals", "level"), ("per_latent", "score", 0), ("sens_spec_by_detection_bin", 0, "n"),
    ("conditions", 0, "n_latents"), ("submission", "method"), ("simulator", "model_key"), ("task", "hash"),
]


def _set(d, path, value=None):
    o = d
    for k in path[:-1]:
        o = o[k]
    v = o[path[-1]]
    if value is None:
        value = v + "x" if isinstance(v, str) else (v + 1 if isinstance(v, int) else v * 1.5 + 0.1)
    o[path[-1]] = value


def test_verify_fails_on_edited_identity_and_count_fields(built):
    from harness.report.verify import verify_result

    src = _result(built, "a")
    assert verify_result(src).status == 0
    for path in FAST_FIELDS:
        rep = verify_result(_edited(src, src.with_name("edited.json"), lambda d, p=path: _set(d, p)))
        assert rep.status == 1, path
        assert rep.lines()[-1].strip().startswith("verdict: FAIL"), path
    src.with_name("edited.json").unlink()


def test_verify_gives_a_verdict_on_a_damaged_side_file(built, capsys):
    res_dir = _copy_results(built, "verify-damaged")
    p = _result(built, "a", "verify-damaged")
    side = next((res_dir / TASK_ID).glob("a-*.per_context.npz"))
    _truncate(side)
    assert main(["verify-result", str(p)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "sha256" in out[1] and "side file is damaged" in out[2] and out[-1].strip().startswith("verdict: FAIL")
    # An edit that breaks the structure (a subset fraction no side array has) is a verdict too.
    shutil.copy(built / "results" / TASK_ID / side.name, side)
    frac = next(i for i, c in enumerate(json.loads(p.read_text())["conditions"]) if c["selection"] != "all")
    _edited(p, p, lambda d: _set(d, ("conditions", frac, "fraction"), 0.123))
    assert main(["verify-result", str(p)]) == 1
    assert "verdict: FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("edit", [
    lambda d: [], lambda d: {**d, "side_files": "x"}, lambda d: {**d, "side_files": {"per_context": "x"}},
    lambda d: {**d, "side_files": {"per_context": {"path": 5, "sha256": "0"}}},
    lambda d: {**d, "side_files": {"per_context": {"path": None}}},
], ids=["a list", "side_files a string", "per_context a string", "path a number", "path null"])
def test_verify_gives_one_error_line_on_a_result_out_of_shape(built, capsys, edit):
    src = _result(built, "a")
    p = src.with_name("shape.json")
    p.write_text(json.dumps(edit(json.loads(src.read_text()))))
    try:
        assert main(["verify-result", str(p)]) == 2
    finally:
        p.unlink()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and str(p) in line and "re-run `harness eval`" in line


def _numeric_paths(x, p=()):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _numeric_paths(v, (*p, k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _numeric_paths(v, (*p, i))
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield p


@pytest.mark.slow
def test_verify_fails_on_a_change_to_any_numeric_field(built):
    """Every numeric field of a result, changed in turn (about 2 s each)."""
    from harness.report.verify import verify_result

    src = _result(built, "a")
    paths = list(_numeric_paths(json.loads(src.read_text())))
    assert len(paths) > 500
    missed = []
    for path in paths:
        if verify_result(_edited(src, src.with_name("edited.json"), lambda d, p=path: _set(d, p))).status != 1:
            missed.append(path)
    src.with_name("edited.json").unlink()
    assert missed == []


# ---------------------------------------------------------------- 4. the prediction store

def test_store_detects_changed_and_undigested_rows(tmp_path):
    from harness.simulate.store import PredictionStore

    store = PredictionStore(tmp_path / "p.sqlite")
    rows = [(f"e{k % 3}", f"c{k}", np.full(10, k / 100, np.float32), 0.5) for k in range(40)]
    store.put_many("m", "v1", rows)
    con = sqlite3.connect(tmp_path / "p.sqlite")
    con.execute("UPDATE predictions SET probs=? WHERE context_id='c7'", [np.full(10, 0.9, np.float32).tobytes()])
    con.execute("UPDATE predictions SET digit_mass=0.25 WHERE context_id='c8'")
    con.execute("UPDATE predictions SET digest=NULL WHERE context_id='c9'")
    con.commit()
    con.close()
    failed, unverified = [], []
    got = store.get_many("m", "v1", [(e, c) for e, c, _, _ in rows], failed, unverified)
    assert sorted(failed) == [("e1", "c7"), ("e2", "c8")] and unverified == [("e0", "c9")]
    assert len(got) == 37
    # Rewritten when recomputed (first-write-wins does not keep the bad row), then read back clean.
    store.put_many("m", "v1", [rows[7], rows[8], rows[9]], {("e1", "c7"), ("e2", "c8"), ("e0", "c9")})
    failed, unverified = [], []
    got = store.get_many("m", "v1", [(e, c) for e, c, _, _ in rows], failed, unverified)
    assert failed == unverified == [] and len(got) == 40
    np.testing.assert_array_equal(got[("e1", "c7")][0], np.full(10, 0.07, np.float32))


def test_store_that_sqlite_cannot_read_stops_with_one_line(tmp_path):
    from harness.simulate.store import PredictionStore

    path = tmp_path / "p.sqlite"
    store = PredictionStore(path)
    store.put_many("m", "v1", [(f"e{k}", f"c{k}", np.full(10, 0.5, np.float32), 0.5) for k in range(3000)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(HarnessError) as e:
        PredictionStore(path).get_many("m", "v1", [(f"e{k}", f"c{k}") for k in range(3000)])
    assert str(path) in str(e.value) and "move it away" in str(e.value) and "\n" not in str(e.value)


def test_eval_with_altered_store_values_says_so_and_equals_the_undamaged_result(built, capsys):
    from harness.io import cache_root

    path = cache_root() / "predictions.sqlite"
    con = sqlite3.connect(path)
    from harness.simulate.base import explanation_sha

    rows = con.execute("SELECT model_key, prompt_version, explanation_sha256, context_id, probs FROM predictions "
                       "WHERE explanation_sha256=? ORDER BY context_id LIMIT 200",
                       [explanation_sha("the tokens the and a")]).fetchall()   # submission a's explanation
    assert len(rows) == 200
    for mk, pv, e, c, blob in rows:
        probs = np.frombuffer(blob, np.float32)[::-1].copy()   # same size, other values: integrity_check is ok
        con.execute("UPDATE predictions SET probs=? WHERE model_key=? AND prompt_version=? AND "
                    "explanation_sha256=? AND context_id=?", [probs.tobytes(), mk, pv, e, c])
    con.commit()
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    capsys.readouterr()
    assert main(["eval", "--task", "task", "--submission", "a.json", "--results", "results-store",
                 "--backend", "prefix"]) == 0
    err = [x for x in capsys.readouterr().err.splitlines() if "integrity" in x]
    assert len(err) == 1 and str(path) in err[0] and "200 stored predictions fail" in err[0]
    good, again = (json.loads(_result(built, "a", r).read_text()) for r in ("results", "results-store"))
    for section in ("headline", "ce_means", "per_latent"):
        assert json.dumps(again[section], sort_keys=True) == json.dumps(good[section], sort_keys=True), section
    # The rows were rewritten: the next eval finds nothing to report.
    assert main(["eval", "--task", "task", "--submission", "a.json", "--results", "results-store",
                 "--backend", "prefix"]) == 0
    assert "integrity" not in capsys.readouterr().err


# ---------------------------------------------------------------- 5. what a result records of the machine

def test_result_records_no_absolute_path_of_the_evaluators_machine(built, tmp_path, monkeypatch, capsys):
    """Paths given absolute: under the working folder relative, under the home folder `~/...` (elsewhere as
    given: reproduce and verify-result read the submission from it). The `~/` form is still found by
    verify-result."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    shutil.copy(built / "a.json", home / "a.json")
    out = home / "elsewhere"
    argv = ["eval", "--task", str(built / "task"), "--submission", str(home / "a.json"), "--results", str(out),
            "--backend", "prefix"]
    monkeypatch.setattr("sys.argv", ["harness", *argv])   # the recorded command is the process's own
    assert main(argv) == 0
    capsys.readouterr()
    (p,) = (out / TASK_ID).glob("a-*.json")
    d = json.loads(p.read_text())
    assert d["submission"]["path"] == "~/a.json"
    assert d["provenance"]["command"].startswith("harness eval --task task --submission '~/a.json' --results '~/elsewhere'")
    with np.load(next((out / TASK_ID).glob("a-*.per_context.npz"))) as z:
        record = str(z["record"])
    for text in (p.read_text(), record):
        assert str(tmp_path) not in text and str(built) not in text

    from harness.report.verify import verify_result

    rep = verify_result(p)
    assert rep.status == 0 and not any("is not here" in n for n in rep.notes), rep.lines()


def test_portable_path(tmp_path, monkeypatch):
    from harness.report.write import portable_command, portable_path

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "work").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "home" / "work")
    assert portable_path(tmp_path / "home" / "work" / "sub" / "a.json") == "sub/a.json"
    assert portable_path(tmp_path / "home" / "s" / "a.json") == "~/s/a.json"
    assert portable_path("/srv/alice/subs/a.json") == "/srv/alice/subs/a.json"
    assert portable_path("rel/a.json") == "rel/a.json"
    assert portable_command(["eval", f"--results={tmp_path}/home/out", "/srv/a.json"]) == "eval '--results=~/out' /srv/a.json"


# ---------------------------------------------------------------- 6. size caps on import-delphi's inputs

def test_delphi_file_size_checked_before_reading(tmp_path, monkeypatch):
    from harness.task.submission import import_delphi

    folder = tmp_path / "explanations"
    folder.mkdir()
    (folder / "layers.0.mlp_latent0.txt").write_text('"fine"')
    big = folder / "layers.0.mlp_latent1.txt"
    with big.open("wb") as f:
        f.truncate(200 << 20)   # 200 MB, sparse: costs no disk, and must cost no memory
    read = Path.read_text

    def guarded(self, *a, **kw):
        assert self != big, "the oversized file was read"
        return read(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", guarded)
    with pytest.raises(HarnessError) as e:
        import_delphi(folder, task_id="t", method="m", description="", max_chars=100)
    msg = str(e.value)
    assert str(big) in msg and "209,715,200 bytes" in msg and "remove the file" in msg and "\n" not in msg


def test_delphi_description_and_method_checked(tmp_path):
    from harness.task.submission import MAX_DESCRIPTION_CHARS, import_delphi

    (tmp_path / "layers.0.mlp_latent0.txt").write_text('"fine"')
    with pytest.raises(HarnessError, match="10,001 characters"):
        import_delphi(tmp_path, task_id="t", method="m", description="d" * (MAX_DESCRIPTION_CHARS + 1))
    with pytest.raises(HarnessError, match="control character"):
        import_delphi(tmp_path, task_id="t", method="m\x1b[2J", description="")
