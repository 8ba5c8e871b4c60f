"""Property-based fuzzing of what the readers of stored results meet: a result file edited anywhere, a side file
damaged anywhere, and a Delphi folder of any names and bytes.

The property (as in test_fuzz.py): `leaderboard`, `site`, `failures` and `import-delphi` exit 0 (a reader of a
results folder skips a damaged result, saying which) or exit 2 with one `error:` line; never a traceback.
`verify-result` may also give its verdict (exit 1: a number differs; 3: some could not be checked). The
results are a real tiny evaluation, made once per module; every example damages a copy.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import evaluate_tiny_submissions
from tests.test_fuzz import any_text, assert_clean, json_values, run

TASK_ID = "tiny-llama-transcoder"
FEW = settings(max_examples=25, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-readers")
    mp = pytest.MonkeyPatch()
    mp.setenv("HARNESS_CACHE", str(root / "cache"))
    mp.setenv("HARNESS_TASKS_DIR", str(root))   # import-delphi names the task by id
    mp.chdir(root)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            evaluate_tiny_submissions(root, {"a": "the tokens the and a", "b": "digits and numbers"})
        yield root
    finally:
        mp.undo()


@pytest.fixture(autouse=True)
def _here(evaluated, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(evaluated / "cache"))
    monkeypatch.setenv("HARNESS_TASKS_DIR", str(evaluated))
    monkeypatch.chdir(evaluated)


def _fresh_copy(root: Path) -> Path:
    out = root / "damaged"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(root / "results", out)
    return out


def _paths(node, prefix=()):
    """Every path into a JSON tree (dict keys and list indices), the root excluded."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return
    for k, v in items:
        yield (*prefix, k)
        yield from _paths(v, (*prefix, k))


def _readers(root: Path, res_dir: Path, result: Path) -> None:
    latent = 0
    for argv in (["leaderboard", "--task", "task", "--results", str(res_dir), "--format", "md"],
                 ["site", "--task", "task", "--results", str(res_dir), "-o", str(root / "site-fuzz")],
                 ["failures", "--result", str(result), "--latent", str(latent), "--task", "task", "-n", "2"]):
        assert_clean(*run(argv), argv)
    argv = ["verify-result", str(result)]
    rc, err = run(argv)
    assert_clean(0 if rc in (1, 3) else rc, err, argv)


@FEW
@given(pick=st.integers(0, 10**6), value=st.one_of(json_values, st.just("DELETE")))
def test_fuzz_result_json(evaluated, pick, value):
    """One value anywhere in a result file replaced by any JSON value, or its key deleted."""
    res_dir = _fresh_copy(evaluated)
    (path,) = (res_dir / TASK_ID).glob("a-*.json")
    data = json.loads(path.read_text())
    paths = list(_paths(data))
    where = paths[pick % len(paths)]
    parent = data
    for k in where[:-1]:
        parent = parent[k]
    if value == "DELETE":
        del parent[where[-1]]
    else:
        parent[where[-1]] = value
    path.write_text(json.dumps(data))
    _readers(evaluated, res_dir, path)


@FEW
@given(cut=st.integers(0, 10**6), junk=st.binary(max_size=64), flip=st.integers(0, 10**6))
def test_fuzz_side_file(evaluated, cut, junk, flip):
    """A result's side file cut short, overwritten in one byte, or with bytes appended."""
    res_dir = _fresh_copy(evaluated)
    (side,) = (res_dir / TASK_ID).glob("a-*.per_context.npz")
    raw = bytearray(side.read_bytes())
    raw[flip % len(raw)] ^= 0xFF
    side.write_bytes(bytes(raw[: cut % (len(raw) + 1)]) + junk)
    (path,) = (res_dir / TASK_ID).glob("a-*.json")
    _readers(evaluated, res_dir, path)


names = st.one_of(st.integers(0, 70).map(lambda j: f"layers.0.mlp_latent{j}.txt"),
                  st.integers(0, 70).map(lambda j: f"model.layers.0_feature{j}.txt"),
                  st.sampled_from(["latent.txt", "x_latent.txt", "layers.1.mlp_latent3.txt", "notes.md",
                                   "layers.0.mlp_latent999999999999999999999.txt"]),
                  any_text.filter(lambda s: s and "/" not in s and "\x00" not in s and s not in (".", "..")))
contents = st.one_of(any_text.map(json.dumps), any_text, json_values.map(json.dumps),
                     st.binary(max_size=80).map(lambda b: b.decode("latin-1")))


@FEW
@given(files=st.dictionaries(names, contents, min_size=1, max_size=5),
       hookpoint=st.one_of(st.none(), st.sampled_from(["layers.0.mlp", "layers.1.mlp", ""])),
       nested=st.booleans())
def test_fuzz_import_delphi(evaluated, files, hookpoint, nested):
    folder = evaluated / "delphi"
    shutil.rmtree(folder, ignore_errors=True)
    inner = folder / "explanations" if nested else folder
    inner.mkdir(parents=True)
    for name, text in files.items():
        try:
            (inner / name).write_bytes(text.encode("utf-8", "surrogateescape"))
        except (OSError, UnicodeEncodeError):   # a name the file system refuses: not the importer's input
            continue
    argv = ["import-delphi", "--delphi", str(folder), "--task", TASK_ID, "-o", str(evaluated / "imported.json")]
    if hookpoint is not None:
        argv += ["--hookpoint", hookpoint]
    assert_clean(*run(argv), argv)
