"""The gaming suite's CE rule (harness/baselines/gaming.py::ce_comparison): a submission is above on
simulated − latent zero only when it beats both the shuffled control and deleting the latents."""

from __future__ import annotations

import numpy as np
import pytest

from harness.baselines.gaming import ce_comparison
from harness.score.metrics import bootstrap_indices

LEVEL = 0.95


def _boot(n: int) -> np.ndarray:
    return bootstrap_indices(n, 1000, 0)


def test_predicting_nothing_does_not_beat_a_control_worse_than_deletion():
    # The CE task's situation: the control costs +1 nat per context against deletion, the submission 0.
    d_c, d_e = np.ones(50), np.zeros(50)
    c = ce_comparison(d_e, d_c, _boot(50), LEVEL)
    assert (c.reference, c.value, c.lo, c.hi) == ("deletion", 0.0, 0.0, 0.0)
    assert not c.above_control


def test_beating_both_references_is_above():
    d_c, d_e = np.ones(50), np.full(50, -0.5)
    c = ce_comparison(d_e, d_c, _boot(50), LEVEL)
    # vs control -1.5, vs deletion -0.5: the binding one is deletion, and it lies below 0.
    assert c.reference == "deletion" and c.value == pytest.approx(-0.5) and c.hi == pytest.approx(-0.5)
    assert c.above_control


def test_a_control_that_recovers_is_the_bar():
    d_c, d_e = np.full(50, -1.0), np.full(50, -0.5)
    c = ce_comparison(d_e, d_c, _boot(50), LEVEL)
    assert c.reference == "control" and c.value == pytest.approx(0.5) and not c.above_control


def test_interval_is_the_percentile_bootstrap_of_the_paired_mean():
    rng = np.random.default_rng(3)
    d_e, d_c = rng.normal(0.1, 1, 200), rng.normal(0.3, 1, 200)
    boot = _boot(200)
    c = ce_comparison(d_e, d_c, boot, LEVEL)
    ref = {"control": d_e - d_c, "deletion": d_e}
    # Independent: both intervals in one numpy expression each, the binding one has the larger upper end.
    cis = {k: (x.mean(), *np.percentile(x[boot].mean(1), [2.5, 97.5])) for k, x in ref.items()}
    want = max(cis, key=lambda k: cis[k][2])
    assert c.reference == want
    np.testing.assert_allclose((c.value, c.lo, c.hi), cis[want], rtol=1e-12)
