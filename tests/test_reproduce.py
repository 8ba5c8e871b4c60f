"""`harness reproduce`: the sample, the comparison, and the verb end to end on the tiny task."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.report.reproduce import (
    TOLERANCES,
    allocate,
    auroc_moves,
    sample_indices,
    split_deltas,
)

# ---------------------------------------------------------------- pure parts

def test_allocate_is_proportional_by_largest_remainder():
    # The mini task: 30 x 16 calibration, 50 x 16 test, 16 x 20 detection pairs. 64 x (480, 800, 320) / 1600
    # = 19.2, 32, 12.8: floors 19, 32, 12 and the one left over goes to the largest remainder (0.8).
    assert allocate((480, 800, 320), 64) == [19, 32, 13]
    assert allocate((480, 800, 320), 32) == [10, 16, 6]        # 9.6, 16, 6.4
    assert allocate((3, 4, 5), 100) == [3, 4, 5]               # more asked than there are: all of them
    # 1.4993, 1.4993, 0.0015 -> 2, 1, 0; the empty-handed stratum takes one from the largest.
    assert allocate((1000, 1000, 1), 3) == [1, 1, 1]
    assert allocate((10, 0, 5), 3) == [2, 0, 1]                # an empty stratum gets nothing


def test_sample_is_seeded_without_replacement_and_in_range():
    a = sample_indices((480, 800, 320), 64, seed=0)
    assert [len(x) for x in a] == [19, 32, 13]
    for x, size in zip(a, (480, 800, 320), strict=True):
        assert len(set(x.tolist())) == len(x) and x.min() >= 0 and x.max() < size
    assert all(np.array_equal(x, y) for x, y in zip(a, sample_indices((480, 800, 320), 64, seed=0), strict=True))
    assert not np.array_equal(a[1], sample_indices((480, 800, 320), 64, seed=1)[1])


def test_split_deltas_by_hand():
    tol = TOLERANCES["bfloat16"]
    stored = (np.array([0.0, 1.0]), np.array([2.0]), np.array([-1.0, 5.0, 0.5]))
    fresh = (np.array([0.1, 1.0]), np.array([2.5]), np.array([-1.0, 5.0, 0.2]))
    d = {s.split: s for s in split_deltas(stored, fresh, tol)}
    assert d["calibration"].max_abs == pytest.approx(0.1) and d["calibration"].mean_abs == pytest.approx(0.05)
    assert d["test"].n_beyond == 1                       # 0.5 > 0.25
    assert d["detection"].max_abs == pytest.approx(0.3) and d["detection"].n_beyond == 1
    assert d["all"].n == 6 and d["all"].n_beyond == 2
    assert d["all"].mean_abs == pytest.approx((0.1 + 0.5 + 0.3) / 6)


def test_auroc_moves_and_their_allowed_range_by_hand():
    pos, neg = np.array([[1.0, 2.0]]), np.array([[0.0, 3.0]])
    # Stored AUROC: of the 4 (positive, negative) pairs, 1>0 and 2>0 are ordered: 0.5. Negative slot 1 is
    # sampled; with tolerance 1.5 it can reach 1.5 (2 > 1.5 too: 0.75) or 4.5 (still 0.5).
    sampled_neg = np.array([[False, True]])
    no_pos = np.zeros_like(pos, bool)
    inside = auroc_moves(np.array([7]), pos, neg, pos, np.array([[0.0, 1.5]]), no_pos, sampled_neg, 1.5)[0]
    assert (inside.latent, inside.stored, inside.reproduced, inside.lo, inside.hi) == (7, 0.5, 0.75, 0.5, 0.75)
    assert inside.moved and inside.within
    # Re-simulated at 0.5 (moved by 2.5 > 1.5): both positives now beat both negatives, AUROC 1.0, out of range.
    outside = auroc_moves(np.array([7]), pos, neg, pos, np.array([[0.0, 0.5]]), no_pos, sampled_neg, 1.5)[0]
    assert outside.reproduced == 1.0 and outside.moved and not outside.within


# ---------------------------------------------------------------- end to end on the tiny task

@pytest.fixture(scope="module")
def scored(tiny):
    """A fresh tiny result (a float32 simulator), scored once for the module."""
    from harness.data.prepare import prepare
    from harness.task.spec import load_task

    with pytest.MonkeyPatch.context() as mp:
        # The autouse cache fixture is function-scoped: set up after this one.
        mp.setenv("HARNESS_CACHE", str(tiny / "cache"))
        latents = prepare(load_task(str(tiny / "task"))).rewritten
        sub = tiny / "sub.json"
        sub.write_text(json.dumps({"task": "tiny-llama-transcoder", "method": "repro", "description": "test",
                                   "explanations": {str(int(j)): f"the token {int(j)}" for j in latents}}))
        assert main(["eval", "--task", str(tiny / "task"), "--submission", str(sub), "--results",
                     str(tiny / "results")]) == 0
    return next((tiny / "results" / "tiny-llama-transcoder").glob("*.json"))


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_fresh_result_reproduces(tiny, scored, capsys):
    capsys.readouterr()
    rc = main(["reproduce", "--result", str(scored), "--task", str(tiny / "task"), "--format", "json"])
    rep = _json(capsys)
    assert rc == 0 and rep["ok"]
    splits = {s["split"]: s for s in rep["splits"]}
    assert splits["all"]["n"] == 64 and all(splits[s]["n"] >= 1 for s in ("calibration", "test", "detection"))
    # float32 in another batch composition: an ulp or two, nowhere near the 1e-3 tolerance.
    assert splits["all"]["max_abs"] < 1e-5
    assert not any(m["moved"] for m in rep["latents"])
    assert abs(rep["headline_move"]) < 1e-9


def test_prediction_store_is_bypassed(tiny, scored, capsys):
    # Every stored prediction rewritten to all mass on "9": read back, each sampled pair would move by several
    # digits. Recomputed, nothing moves and nothing is written.
    db = tiny / "cache" / "predictions.sqlite"
    con = sqlite3.connect(db)
    n_rows = con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
    nine = np.eye(10, dtype=np.float32)[9].tobytes()
    con.execute("UPDATE predictions SET probs = ?", (nine,))
    con.commit()
    capsys.readouterr()
    rc = main(["reproduce", "--result", str(scored), "--task", str(tiny / "task"), "--format", "json"])
    assert rc == 0 and _json(capsys)["splits"][-1]["max_abs"] < 1e-5
    assert con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == n_rows
    con.close()


def _tampered_copy(scored: Path, dest: Path, **shift: float) -> Path:
    dest.mkdir()
    res = json.loads(scored.read_text())
    side = scored.parent / res["side_files"]["per_context"]["path"]
    shutil.copy(scored, dest / scored.name)
    with np.load(side) as z:
        arrays = {k: z[k] for k in z.files}
    for key, by in shift.items():
        arrays[key] = arrays[key] + np.float32(by)
    np.savez(dest / side.name, **arrays)
    return dest / scored.name


def test_altered_predictions_fail_and_are_counted(tiny, scored, tmp_path, capsys):
    # Every stored test prediction moved by 1 digit (tolerance 1e-3): exactly the sampled test pairs are beyond.
    bad = _tampered_copy(scored, tmp_path / "bad", pred_test=1.0)
    capsys.readouterr()
    rc = main(["reproduce", "--result", str(bad), "--task", str(tiny / "task"), "--format", "json"])
    rep = _json(capsys)
    splits = {s["split"]: s for s in rep["splits"]}
    assert rc == 1 and not rep["ok"]
    assert splits["test"]["n_beyond"] == splits["test"]["n"] >= 1
    assert splits["calibration"]["n_beyond"] == splits["detection"]["n_beyond"] == 0
    assert splits["test"]["max_abs"] == pytest.approx(1.0, abs=1e-5)
    assert any("sha256 differs" in n for n in rep["notes"])
    # The table says it too, with the count.
    rc = main(["reproduce", "--result", str(bad), "--task", str(tiny / "task")])
    out = capsys.readouterr().out
    assert rc == 1
    assert f"NOT reproduced: {splits['test']['n']} of 64 predictions moved by more than 0.001" in " ".join(out.split())


def test_altered_detection_predictions_move_aurocs(tiny, scored, tmp_path, capsys):
    # Negatives raised by 100 digits: the stored AUROCs collapse; re-simulated negatives fall back below the
    # positives, so every latent with a sampled negative moves, out of the range the tolerance allows.
    bad = _tampered_copy(scored, tmp_path / "det", det_pred_neg=100.0)
    capsys.readouterr()
    rc = main(["reproduce", "--result", str(bad), "--task", str(tiny / "task"), "--format", "json",
               "--sample", "400"])
    rep = _json(capsys)
    sampled_negatives = [d for d in rep["deltas"] if d["split"] == "detection" and d["stored"] > 50]
    assert rc == 1 and sampled_negatives
    moved = [m for m in rep["latents"] if m["moved"]]
    assert moved and all(not m["within"] and m["reproduced"] > m["stored"] for m in moved)


def test_bad_input_is_one_line(tiny, scored, tmp_path, capsys):
    def one_line(argv) -> str:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        return err

    assert "result file not found" in one_line(["reproduce", "--result", str(tmp_path / "nope.json")])
    assert "not a harness result" in one_line(["reproduce", "--result", str(tiny / "sub.json")])
    # The tiny task is not registered: the error says how to name it.
    assert "--task" in one_line(["reproduce", "--result", str(scored)])
    assert "--sample must be at least 1" in one_line(["reproduce", "--result", str(scored), "--task",
                                                      str(tiny / "task"), "--sample", "0"])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"task": "tiny-llama-transcoder", "method": "x", "description": "",
                                 "explanations": {"0": "something else"}}))
    assert "sha256" in one_line(["reproduce", "--result", str(scored), "--task", str(tiny / "task"),
                                 "--submission", str(other)])
