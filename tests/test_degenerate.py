"""Degenerate-prediction warnings (docs/protocol.md §8), on hand-built prediction matrices."""

import numpy as np

from harness.score.degenerate import degenerate_predictions


def kinds(ws):
    return {w.kind: w.latents for w in ws}


def test_informative_predictions_raise_nothing():
    rng = np.random.default_rng(0)
    assert degenerate_predictions(rng.uniform(0, 9, (50, 4)), np.array([3, 5, 7, 9]), "v1") == []


def test_constant_at_maximum_and_copied():
    rng = np.random.default_rng(1)
    pred = rng.uniform(0, 4, (40, 5))
    pred[:, 1] = 2.5                                   # constant: nothing to rank
    pred[:, 2] = rng.uniform(8.7, 9.0, 40)             # "answer 9": at the top of the digit scale, not constant
    pred[:, 4] = pred[:, 3]                            # one explanation copied to two latents
    got = kinds(degenerate_predictions(pred, np.array([10, 11, 12, 13, 14]), "v1"))
    assert got == {"constant": [11], "at-maximum": [12], "identical-across-latents": [13, 14]}


def test_unbounded_scale_uses_the_latents_own_maximum():
    rng = np.random.default_rng(2)
    pred = rng.normal(0, 3, (30, 3))                   # log-odds: no fixed top
    pred[:28, 0] = 12.0                                # 28/30 tied at the latent's maximum
    pred[28:, 0] = [-1.0, 0.5]
    got = kinds(degenerate_predictions(pred, np.array([0, 1, 2]), "binary-v1"))
    assert got == {"at-maximum": [0]}
    # the digit rule would not fire on a log-odds scale: 12 ≥ 8.5 for every latent would be wrong there
    assert "at-maximum" not in kinds(degenerate_predictions(rng.normal(0, 3, (30, 3)), np.array([0, 1, 2]), "b"))
