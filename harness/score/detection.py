"""docs/protocol.md §6: how well each latent's simulated values separate the contexts where it fires from
those where it does not (AUROC, and balanced accuracy at a threshold)."""

from __future__ import annotations

import numpy as np

from harness.score.metrics import detection_scores, detection_thresholds
from harness.task.spec import TaskSpec


def detection_table(pos_pred: list[np.ndarray], neg_pred: list[np.ndarray],
                    threshold: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and balanced accuracy per latent; `threshold` is a scalar or one value per latent."""
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(pos_pred),))
    auroc = np.full(len(pos_pred), np.nan)
    bacc = np.full(len(pos_pred), np.nan)
    for e, (p, q) in enumerate(zip(pos_pred, neg_pred, strict=True)):
        if len(p) and len(q):
            a, b = detection_scores(p[None, :], q[None, :], threshold=thr[e])
            auroc[e], bacc[e] = a[0], b[0]
    return auroc, bacc


def threshold_values(spec: TaskSpec, pred_cal: np.ndarray, fire_rate: np.ndarray,
                     weights: np.ndarray | None = None) -> np.ndarray:
    """Per latent, the prediction at or above which it counts as predicted to fire (`weights`: a cascade's
    calibration weights)."""
    if spec.scoring.detection_rule == "fixed":
        return np.full(pred_cal.shape[1], float(spec.scoring.detection_threshold))
    return detection_thresholds(pred_cal, fire_rate, weights)


def padded(rows: list[np.ndarray]) -> np.ndarray:
    """Ragged per-latent detection predictions as one [m, max_len] float32 array, NaN-padded."""
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), np.nan, np.float32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out
