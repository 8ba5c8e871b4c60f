"""Every number of a tiny-task result, compared with a committed reference: exactly where the arithmetic is
exact, within a stated tolerance where it is floating point.

The reference (`tests/data/tiny_reference_result.json`, plus the side file's floating arrays in
`tests/data/tiny_reference_arrays.npz`) guards against a change that moves any number, condition or
side-file array. Exact: integers, strings, ids and hashes (the task hash, the simulator key, file names),
and every non-floating side-file array (latent ids, split windows and targets, subset indices, table ranks
and counts), stored as digests. Within tolerance: every floating number and array (see RTOL/ATOL).
Left out: what legitimately varies between runs (dates, timings, versions, paths, the environment, how many
predictions came from the store). Regenerate deliberately, after a change that is meant to alter results,
with `HARNESS_WRITE_REFERENCE=1 python -m pytest tests/test_reference_result.py`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.cli import main

REFERENCE = Path(__file__).parent / "data" / "tiny_reference_result.json"
REFERENCE_ARRAYS = Path(__file__).parent / "data" / "tiny_reference_arrays.npz"
VOLATILE_PROVENANCE = ("date", "wall_seconds", "command", "python", "torch", "transformers", "platform",
                       "harness_version", "n_computed", "n_cached", "prediction_source",
                       "lock_sha256", "packages_sha256", "packages", "cpu", "kernel", "threads")
# Tolerances (docs/protocol-choices.md, "Tolerances"). The same task and submission on another machine
# (other CPU kernels, transformers 5.25.0 instead of 5.24.0) moved 237 of 1,154 numbers by at most 1.6e-5
# relative: float32 logits summed in another order give log-probabilities, hence log-odds predictions and
# CE values, that differ in their last float32 digits (~1e-7 relative each), and means, bootstrap percentiles
# and Fieller ratios carry that on, amplified where a difference of two close CEs is divided. rtol 1e-3 is
# 60x the largest difference seen and still 100x below any difference a code change that matters makes
# (the smallest reported ΔCE digit is 1e-3 of a nat on CE ~6, i.e. ~1.7e-4 relative, and decisions move by
# whole contexts). atol 1e-4 covers numbers that are differences near 0 (a ΔCE of 2e-6 nats has no
# relative precision). A decision that flips (a threshold, a TopK choice, a rank) moves an integer, an index
# array or a count-derived ratio by a whole step and fails. The tiny simulator runs in float64 so that
# another CPU's kernels do not flip one: in float32 its predictions sit ulps apart and reordered between
# AVX2 and AVX-512 kernels (docs/protocol-choices.md, Model keys: 2,259 vs 39 of 4,896 predictions moved).
RTOL = 1e-3
ATOL = 1e-4


def _is_float_array(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating)


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _side_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in sorted(z.files)}


def _comparable(result: dict, arrays: dict[str, np.ndarray]) -> dict:
    """The result less its volatile fields; the side file as digests of its exact (non-floating) arrays
    (the zip container itself carries timestamps)."""
    r = json.loads(json.dumps(result))
    for key in VOLATILE_PROVENANCE:
        r["provenance"].pop(key, None)
    r["submission"].pop("path", None)
    side = r["side_files"]["per_context"]
    side.pop("sha256")
    side["arrays"] = {k: _digest(a) for k, a in arrays.items() if not _is_float_array(a) and k != "record"}
    if "record" in arrays:
        # The side file's copy of the result's identity sections: the same volatile fields come out, and the
        # rest is compared like the result itself (floats within the tolerance).
        rec = json.loads(str(arrays["record"]))
        for key in VOLATILE_PROVENANCE:
            rec["provenance"].pop(key, None)
        rec["submission"].pop("path", None)
        side["record"] = rec
    side["float_arrays"] = sorted(k for k, a in arrays.items() if _is_float_array(a))
    return r


def compare(got: Any, want: Any, where: str = "result") -> list[str]:
    """Every place where `got` differs from `want`: floats beyond RTOL/ATOL (null = NaN on both sides),
    anything else (ints, strings, booleans, keys, lengths) at all."""
    if isinstance(want, dict) and isinstance(got, dict):
        if sorted(got) != sorted(want):
            return [f"{where}: keys {sorted(set(got) ^ set(want))} on one side only"]
        return [m for k in want for m in compare(got[k], want[k], f"{where}.{k}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items, the reference has {len(want)}"]
        return [m for i, (g, w) in enumerate(zip(got, want, strict=True)) for m in compare(g, w, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        if not math.isclose(got, want, rel_tol=RTOL, abs_tol=ATOL):
            return [f"{where}: {got!r}, the reference has {want!r} (beyond rtol {RTOL:g}, atol {ATOL:g})"]
        return []
    if isinstance(want, str) and isinstance(got, str) and _DECIMAL.search(want):
        return _compare_text(got, want, where)
    if type(got) is not type(want) or got != want:
        return [f"{where}: {got!r}, the reference has {want!r} (compared exactly)"]
    return []


_DECIMAL = re.compile(r"[-+]?\d+\.\d+(?:e[-+]?\d+)?")


def _compare_text(got: str, want: str, where: str) -> list[str]:
    """A note with printed numbers ("= -0.05459 nats", "t = -1.71"): the words exactly, each decimal number
    within tolerance or one unit of its last printed digit (a last-digit difference can cross a rounding
    boundary)."""
    g_nums, w_nums = _DECIMAL.findall(got), _DECIMAL.findall(want)
    if _DECIMAL.sub("#", got) != _DECIMAL.sub("#", want) or len(g_nums) != len(w_nums):
        return [f"{where}: {got!r}, the reference has {want!r} (its words compared exactly)"]
    for g, w in zip(g_nums, w_nums, strict=True):
        mantissa = w.lower().split("e")[0]
        unit = 10.0 ** -len(mantissa.split(".")[1]) * 10.0 ** (int(w.lower().split("e")[1]) if "e" in w.lower() else 0)
        if abs(float(g) - float(w)) > max(RTOL * abs(float(w)), ATOL, unit * 1.0000001):
            return [f"{where}: {got!r}, the reference has {want!r} ({g} vs {w} beyond tolerance)"]
    return []


def compare_arrays(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> list[str]:
    out = []
    for key, w in want.items():
        g = got[key]
        if g.shape != w.shape:
            out.append(f"side file {key}: shape {g.shape}, the reference has {w.shape}")
        elif not np.allclose(g, w, rtol=RTOL, atol=ATOL, equal_nan=True):
            bad = ~np.isclose(g, w, rtol=RTOL, atol=ATOL, equal_nan=True)
            i = np.unravel_index(np.argmax(bad), g.shape)
            out.append(f"side file {key}: {int(bad.sum())} value(s) beyond tolerance, e.g. at {tuple(map(int, i))} "
                       f"{g[i]!r} vs {w[i]!r}")
    return out


def _run_tiny(tmp_path: Path, monkeypatch) -> tuple[dict, dict[str, np.ndarray]]:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    task = tmp_path / "task"
    assert main(["make-tiny-task", "-o", str(task)]) == 0
    sub = tmp_path / "top.json"
    assert main(["explain", "--task", str(task), "--method", "top-tokens", "-o", str(sub)]) == 0
    res = tmp_path / "results"
    assert main(["eval", "--task", str(task), "--submission", str(sub), "--results", str(res),
                 "--backend", "prefix"]) == 0
    path = next((res / "tiny-llama-transcoder").glob("*.json"))
    result = json.loads(path.read_text())
    return result, _side_arrays(path.parent / result["side_files"]["per_context"]["path"])


def test_tiny_result_matches_committed_reference(tmp_path, monkeypatch):
    result, arrays = _run_tiny(tmp_path, monkeypatch)
    got = _comparable(result, arrays)
    floats = {k: a for k, a in arrays.items() if _is_float_array(a)}
    if os.environ.get("HARNESS_WRITE_REFERENCE"):
        REFERENCE.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        np.savez_compressed(REFERENCE_ARRAYS, **floats)
        pytest.skip(f"wrote {REFERENCE} and {REFERENCE_ARRAYS}")
    want = json.loads(REFERENCE.read_text())
    problems = compare(got, want) + compare_arrays(floats, _side_arrays(REFERENCE_ARRAYS))
    assert problems == [], "differs from the committed reference:\n" + "\n".join(problems[:40])


def test_comparison_reports_what_moved_beyond_tolerance():
    want = json.loads(REFERENCE.read_text())
    ce = want["ce_means"]["clean"]
    # Within tolerance: the size of the cross-machine difference measured (1.6e-5 relative).
    near = json.loads(json.dumps(want))
    near["ce_means"]["clean"] = ce * (1 + 1.6e-5)
    assert compare(near, want) == []
    far = json.loads(json.dumps(want))
    far["ce_means"]["clean"] = ce * (1 + 2 * RTOL)
    assert compare(far, want) == [f"result.ce_means.clean: {ce * (1 + 2 * RTOL)!r}, the reference has {ce!r} "
                                  f"(beyond rtol {RTOL:g}, atol {ATOL:g})"]
    # Printed numbers in a note: a last-digit change passes, a larger one or another word does not.
    note = "denominator = -0.05459 nats (t = -1.71)"
    assert compare("denominator = -0.05460 nats (t = -1.71)", note) == []
    assert len(compare("denominator = -0.05500 nats (t = -1.71)", note)) == 1
    assert len(compare("numerator = -0.05459 nats (t = -1.71)", note)) == 1
    # Integers, ids and hashes are exact.
    off = json.loads(json.dumps(want))
    off["conditions"][0]["n_latents"] += 1
    off["simulator"]["model_key"] += "x"
    assert len(compare(off, want)) == 2
    # Arrays: one value beyond tolerance is named.
    arrays = _side_arrays(REFERENCE_ARRAYS)
    moved = {k: a.copy() for k, a in arrays.items()}
    moved["ce_clean"][3] += 1e-2
    assert compare_arrays(arrays, arrays) == []
    (msg,) = compare_arrays(moved, arrays)
    assert msg.startswith("side file ce_clean: 1 value(s) beyond tolerance, e.g. at (3,)")


def test_committed_schema_is_generated_from_the_types():
    from harness.result import SCHEMA_FILE, schema_text

    assert SCHEMA_FILE.read_text() == schema_text(), "regenerate: python -m harness.result --schema"


def test_reference_result_validates_against_the_schema():
    jsonschema = pytest.importorskip("jsonschema")
    from harness.result import json_schema

    doc = json.loads(REFERENCE.read_text())
    doc["side_files"]["per_context"]["sha256"] = "0" * 64     # the reference keeps array digests instead
    doc["side_files"]["per_context"].pop("arrays")
    doc["side_files"]["per_context"].pop("float_arrays")
    doc["submission"]["path"] = "x.json"
    jsonschema.validate(doc, json_schema())
    doc["headline"]["recovery"] = "high"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, json_schema())


# ---------------------------------------------------------------- the side file's description

def test_every_committed_side_file_matches_the_description():
    from harness.result import side_layout_errors

    root = Path(__file__).resolve().parent.parent / "results"
    files = sorted(root.glob("*/*.per_context.npz"))
    assert len(files) >= 6
    for f in files:
        with np.load(f) as z:
            assert side_layout_errors({k: z[k] for k in z.files}) == [], f


def test_side_description_catches_what_a_writer_could_get_wrong():
    from harness.result import SIDE, side_layout_errors

    ok = {SIDE.latents: np.arange(3), SIDE.true_test: np.zeros((5, 3), np.float32),
          SIDE.sim_values("quantile"): np.zeros((5, 3), np.float32), SIDE.ce("clean"): np.zeros(5)}
    assert side_layout_errors(ok) == []
    assert side_layout_errors({**ok, "extra": np.zeros(3)}) == ["extra: not in the side file's description "
                                                                 "(harness.result.SIDE)"]
    (kind,) = side_layout_errors({**ok, SIDE.latents: np.arange(3.0)})
    assert kind.startswith("latents: float64 with 1 axes")
    (length,) = side_layout_errors({**ok, SIDE.pred_test: np.zeros((5, 4), np.float32)})
    assert "latent axis 4 long" in length


def test_side_names_of_the_headline_pair_are_the_conditions_keys():
    from harness.result import SIDE
    from harness.score.conditions import ALL, simulated, zero

    assert SIDE.ce_simulated_all == SIDE.ce(simulated("quantile", ALL).key)
    assert SIDE.ce_latent_zero_all == SIDE.ce(zero(ALL).key)
    assert SIDE.of("ce_simulated__prompt-fit__random@0.3") is SIDE.ce
    assert SIDE.of("sim_values__quantile") is SIDE.sim_values and SIDE.of("nothing") is None


def test_a_result_with_a_rank_rule_outside_the_enumeration_is_one_line():
    from harness.errors import HarnessError
    from harness.result import Result

    root = Path(__file__).resolve().parent.parent / "results"
    d = json.loads(next(root.glob("smollm2-135m-l0-ce/top-tokens-*.json")).read_text())
    assert Result.from_dict(d).headline.rank_by == "sim_minus_zero"
    d["headline"]["rank_by"] = "loudest"
    with pytest.raises(HarnessError, match=r"headline.rank_by holds 'loudest' where the schema needs "
                                           r"sim_minus_zero or detection_auroc"):
        Result.from_dict(d)


def test_condition_rows_are_found_by_their_conditions_key():
    from harness.errors import HarnessError
    from harness.result import SIDE, condition_row, load_result, read_side_file
    from harness.score.conditions import ALL, Subset, simulated, zero

    path = next((Path(__file__).resolve().parent.parent / "results").glob("smollm2-135m-l0-ce/top-tokens-*.json"))
    res = load_result(path)
    side = read_side_file(path.parent / res.side_files.per_context.path)
    assert condition_row(res.conditions, zero(ALL).key).name == "latent_zero"
    head = condition_row(res.conditions, simulated("quantile", ALL).key)
    assert head.ce_mean == pytest.approx(float(side[SIDE.ce_simulated_all].mean()))
    assert simulated("none", Subset("random", 0.3)).key == "simulated__none__random@0.3"
    # Every row but the fraction-1 copies of the full rewrite has its CE array under its key.
    for row in res.conditions:
        if row.selection == "all" or row.fraction < 1:
            assert SIDE.ce(row.key) in side, row.key
    with pytest.raises(HarnessError, match="has no condition simulated__median__all"):
        condition_row(res.conditions, "simulated__median__all")
