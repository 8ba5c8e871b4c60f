"""The environment a result records (harness/environment.py) and the leaderboard's mark for rows
computed in another environment than the task's reference row."""

from __future__ import annotations

import csv
import hashlib
import io
import json

from harness.environment import (
    compared,
    cpu_info,
    differences,
    installed_packages,
    kernel_path,
    package_changes,
    packages_digest,
    reference_index,
)
from harness.report.leaderboard import ENV_MARK, collect_results, render, write_leaderboard
from harness.result import Provenance, Result
from tests.test_leaderboard import HASH, make_result

CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16 avx512_vnni
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
"""


def test_cpu_info_and_kernel_path():
    import torch

    assert cpu_info(CPUINFO) == ("Intel(R) Xeon(R) Platinum 8480+", ["avx512_bf16", "amx_bf16", "amx_tile",
                                                                     "avx512_vnni"])
    assert cpu_info("model name : X\nflags : sse2 avx2\n") == ("X", [])
    cap = torch.backends.cpu.get_cpu_capability()
    assert kernel_path("cpu", CPUINFO) == f"cpu:{cap}+avx512_bf16+amx_bf16+amx_tile+avx512_vnni"
    assert kernel_path("cpu", "flags : sse2\n") == f"cpu:{cap}"


def test_packages_digest_is_a_path_free_freeze():
    got = packages_digest(installed_packages([("Torch", "2.13.0+cpu"), ("typing_extensions", "4.16.0"), ("harness", "0.1.0")]))
    want = hashlib.sha256(b"torch==2.13.0+cpu\ntyping-extensions==4.16.0").hexdigest()
    assert got == want
    assert packages_digest(installed_packages([("harness", "9"), ("torch", "2.13.0+cpu"), ("typing-extensions", "4.16.0")])) == want
    assert packages_digest(installed_packages([("torch", "2.13.0"), ("typing-extensions", "4.16.0")])) != want


def test_differences_compare_only_what_both_record():
    old = compared(Provenance(torch="2.13.0+cpu", transformers="5.24.0", kernel="", threads=0))
    new = compared(Provenance(torch="2.13.0+cpu", transformers="5.25.0", kernel="cpu:AVX2", threads=2))
    assert old == {"torch": "2.13.0+cpu", "transformers": "5.24.0"}
    assert differences(new, old) == ["transformers"]
    assert differences(new, {**new, "threads": "16", "packages_sha256": "x"}) == ["threads"]


def test_reference_row_rule():
    a, b = {"kernel": "cpu:AVX2"}, {"kernel": "cpu:AVX512"}
    # top-tokens wins, the oldest of several
    assert reference_index(["llm", "top-tokens", "top-tokens"], [a, b, a], ["1", "3", "2"]) == 2
    # no top-tokens: the environment most rows share, its oldest row
    assert reference_index(["x", "y", "z"], [a, b, b], ["1", "3", "2"]) == 2
    assert reference_index([], [], []) is None


def _with_env(method: str, sha: str, date: str, **env) -> Result:
    r = make_result(method, sha=sha * 64, date=date)
    for k, v in {"torch": "2.13.0+cpu", "transformers": "5.25.0", "kernel": "cpu:AVX2", "threads": 2, **env}.items():
        setattr(r.provenance, k, v)
    return r


def test_leaderboard_marks_rows_from_another_environment(tmp_path):
    d = tmp_path / "results"
    _with_env("top-tokens", "1", "2026-01-01").to_json(d / "a.json")
    _with_env("llm", "2", "2026-01-02", transformers="5.24.0").to_json(d / "b.json")
    _with_env("empty", "3", "2026-01-03").to_json(d / "c.json")
    old = make_result("legacy", sha="4" * 64)               # written before the environment fields
    old.provenance.torch = "2.13.0+cpu"
    old.to_json(d / "d.json")
    rows, _ = collect_results(d, "tiny-task", task_hashes={"tiny-task": HASH})
    marks = {r.method: r.env_differs for r in rows}
    assert marks == {"top-tokens": [], "llm": ["transformers"], "empty": [], "legacy": []}

    md = render(rows, "md")
    assert f"| llm {ENV_MARK} " in md and f"top-tokens {ENV_MARK}" not in md
    assert f"llm {ENV_MARK}" in render(rows, "html")
    parsed = {r["method"]: r for r in csv.DictReader(io.StringIO(render(rows, "csv")))}
    assert parsed["llm"]["environment_differs"] == "transformers" and parsed["empty"]["environment_differs"] == ""
    js = {r["method"]: r for r in json.loads(render(rows, "json"))}
    assert js["llm"]["environment_differs"] == ["transformers"] and js["llm"]["environment"]["transformers"] == "5.24.0"
    page = write_leaderboard("tiny-task", rows, tmp_path / "lb").read_text()
    assert f"{ENV_MARK} computed in another environment" in page and "Here: llm: transformers." in page
    _with_env("llm", "2", "2026-01-02", transformers="5.24.0", threads=4).to_json(d / "b.json")
    rows, _ = collect_results(d, "tiny-task", task_hashes={"tiny-task": HASH})
    assert "Here: llm: transformers, thread count." in write_leaderboard("tiny-task", rows, tmp_path / "lb").read_text()

    # Same environment everywhere: no mark, no legend.
    (d / "b.json").unlink()
    rows, _ = collect_results(d, "tiny-task", task_hashes={"tiny-task": HASH})
    assert not any(r.env_differs for r in rows)
    assert "another environment" not in write_leaderboard("tiny-task", rows, tmp_path / "lb2").read_text()


def test_package_changes_name_what_differs():
    ref = ["numpy==2.3.1", "torch==2.13.0+cpu", "tqdm==4.67.1"]
    row = ["numpy==2.3.2", "rich==14.0.0", "torch==2.13.0+cpu"]
    assert package_changes(row, ref) == ["numpy 2.3.1 → 2.3.2", "+rich 14.0.0", "-tqdm 4.67.1"]
    assert package_changes(ref, ref) == []
    lines = installed_packages([("Torch", "2.13.0+cpu"), ("typing_extensions", "4.16.0"), ("harness", "0.1.0")])
    assert lines == ["torch==2.13.0+cpu", "typing-extensions==4.16.0"]
    assert packages_digest(lines) == hashlib.sha256("\n".join(lines).encode()).hexdigest()


def test_leaderboard_names_the_packages_that_differ(tmp_path):
    d = tmp_path / "results"
    base = ["numpy==2.3.1", "torch==2.13.0+cpu"]
    changed = ["numpy==2.3.2", "torch==2.13.0+cpu"]
    for method, sha, date, pk in (("top-tokens", "1", "2026-01-01", base), ("llm", "2", "2026-01-02", changed),
                                  ("empty", "3", "2026-01-03", [])):
        r = _with_env(method, sha, date, packages_sha256=packages_digest(pk or changed), packages=pk)
        r.to_json(d / f"{method}.json")
    rows, _ = collect_results(d, "tiny-task", task_hashes={"tiny-task": HASH})
    by = {r.method: r for r in rows}
    assert by["llm"].package_changes == ["numpy 2.3.1 → 2.3.2"]
    assert by["empty"].env_differs == ["packages_sha256"] and by["empty"].package_changes is None   # no list
    page = write_leaderboard("tiny-task", rows, tmp_path / "lb").read_text()
    assert "llm: installed packages (numpy 2.3.1 → 2.3.2)" in page and "empty: installed packages;" in page
    js = {r["method"]: r for r in json.loads(render(rows, "json"))}
    assert js["llm"]["package_changes"] == ["numpy 2.3.1 → 2.3.2"]
