"""benchmarks/bootstrap_draws.py on a synthetic side file: the movement it reports is the range of an
endpoint over seeds divided by the reference half-width, recomputed here by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from harness.score.metrics import bootstrap_indices, mean_ci

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bootstrap_draws.py"


def test_bootstrap_draws_movement(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("bootstrap_draws", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "DRAWS", (200, 4000))
    monkeypatch.setattr(mod, "SEEDS", range(4))
    monkeypatch.setattr(mod, "REFERENCE", 8000)
    rng = np.random.default_rng(0)
    n = 120
    clean = rng.gamma(2.0, 1.0, n)
    side = {"ce_clean": clean, "ce_coder": clean + rng.normal(0.01, 0.05, n),
            "ce_zero_output": clean + rng.standard_t(2, n) * 0.1,
            "ce_latent_zero__all": clean + rng.normal(0.02, 0.05, n),
            "ce_simulated__quantile__all": clean + rng.normal(0.03, 0.05, n)}
    np.savez(tmp_path / "x.per_context.npz", **side)
    mod.main([str(tmp_path / "x.per_context.npz")])
    out = capsys.readouterr().out
    x = side["ce_simulated__quantile__all"] - clean
    ref = mean_ci(x, bootstrap_indices(n, 8000, 12345))
    ends = np.array([[getattr(mean_ci(x, bootstrap_indices(n, 200, s)), e) for e in ("lo", "hi")] for s in range(4)])
    want = (ends.max(0) - ends.min(0)).max() / ((ref.hi - ref.lo) / 2)
    line = next(l for l in out.splitlines() if "ΔCE simulated" in l and " mean " in l)
    assert float(line.split()[-2]) == float(f"{want:.3f}")
    # more draws move the endpoints less
    worst = next(l for l in out.splitlines() if l.startswith("worst movement / half-width, means"))
    a, b = [float(t.split(": ")[1]) for t in worst.split(": ", 1)[1].split(", ")]
    assert b < a
