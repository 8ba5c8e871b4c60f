"""Every number of a tiny-task result, compared bit for bit with a committed reference.

The reference (`tests/data/tiny_reference_result.json`) was written before the package was restructured
into stage modules: a refactor that changes any number, any condition or any side-file array fails here.
Only what legitimately varies between runs is left out (dates, timings, versions, paths, how many predictions
came from the store). Regenerate deliberately, after a change that is meant to alter results, with
`HARNESS_WRITE_REFERENCE=1 python -m pytest tests/test_reference_result.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main

REFERENCE = Path(__file__).parent / "data" / "tiny_reference_result.json"
VOLATILE_PROVENANCE = ("date", "wall_seconds", "command", "python", "torch", "transformers", "platform",
                       "harness_version", "n_computed", "n_cached", "prediction_source")


def _arrays_digest(path: Path) -> dict[str, str]:
    """sha256 of each side-file array's dtype, shape and bytes: the zip container itself carries timestamps."""
    out = {}
    with np.load(path) as z:
        for key in sorted(z.files):
            a = np.ascontiguousarray(z[key])
            h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
            out[key] = h.hexdigest()
    return out


def _comparable(result: dict, folder: Path) -> dict:
    r = json.loads(json.dumps(result))
    for key in VOLATILE_PROVENANCE:
        r["provenance"].pop(key, None)
    r["submission"].pop("path", None)
    side = r["side_files"]["per_context"]
    side.pop("sha256")
    side["arrays"] = _arrays_digest(folder / side["path"])
    return r


def test_tiny_result_matches_committed_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    task = tmp_path / "task"
    assert main(["make-tiny-task", "-o", str(task)]) == 0
    sub = tmp_path / "top.json"
    assert main(["explain", "--task", str(task), "--method", "top-tokens", "-o", str(sub)]) == 0
    res = tmp_path / "results"
    assert main(["eval", "--task", str(task), "--submission", str(sub), "--results", str(res),
                 "--backend", "prefix"]) == 0
    path = next((res / "tiny-llama-transcoder").glob("*.json"))
    got = _comparable(json.loads(path.read_text()), path.parent)
    if os.environ.get("HARNESS_WRITE_REFERENCE"):
        REFERENCE.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"wrote {REFERENCE}")
    want = json.loads(REFERENCE.read_text())
    # Compare section by section so a failure names what moved.
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], f"result section {key!r} differs from the committed reference"


def test_committed_schema_is_generated_from_the_types():
    from harness.report.result import SCHEMA_FILE, schema_text

    assert SCHEMA_FILE.read_text() == schema_text(), "regenerate: python -m harness.report.result --schema"


def test_reference_result_validates_against_the_schema():
    jsonschema = pytest.importorskip("jsonschema")
    from harness.report.result import json_schema

    doc = json.loads(REFERENCE.read_text())
    doc["side_files"]["per_context"]["sha256"] = "0" * 64     # the reference keeps array digests instead
    doc["side_files"]["per_context"].pop("arrays")
    doc["submission"]["path"] = "x.json"
    jsonschema.validate(doc, json_schema())
    doc["headline"]["recovery"] = "high"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, json_schema())
