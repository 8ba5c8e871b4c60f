"""Quantile normalisation of simulator predictions onto true latent activations (docs/protocol.md §4).

The simulator answers on a 0–9 digit scale; the coder's latents live on their own scale and are
zero almost everywhere. `q_j = F_true,j⁻¹ ∘ F_pred,j` maps one onto the other per latent, where

* `F_pred,j` is the mid-rank empirical CDF of the simulator's expected values on the calibration
  split (never the test split, except in the labelled `prompt-fit` diagnostic), and
* `F_true,j⁻¹` is the empirical quantile function of latent j's post-TopK activations over the
  `activation_sample` split.

The true distribution and its quantile function are `harness.data.table`.
"""

from __future__ import annotations

import numpy as np

from harness.data.table import ActivationTable, true_quantile
from harness.errors import HarnessError

__all__ = [
    "CALIBRATION_MODES",
    "fit_normaliser",
    "ecdf_midrank",
    "weighted_ecdf_midrank",
    "quantile_levels",
    "apply_quantile_normalisation",
    "calibrate",
]

CALIBRATION_MODES = ("quantile", "none", "prompt-fit")


def fit_normaliser(pred_calib: np.ndarray) -> np.ndarray:
    """The fitted F_pred is just the sorted calibration sample (along axis 0 for [n_cal, m])."""
    return np.sort(_checked_calibration(pred_calib), axis=0)


def _checked_calibration(pred_calib: np.ndarray) -> np.ndarray:
    x = np.asarray(pred_calib, dtype=np.float64)
    if x.ndim not in (1, 2) or x.shape[0] == 0:
        raise HarnessError(f"calibration predictions must be a non-empty [n_cal] or [n_cal, m] "
                           f"array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise HarnessError("calibration predictions contain NaN or inf; rerun the simulator on "
                           "the calibration split")
    return x


def ecdf_midrank(sorted_calib: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Mid-rank empirical CDF: u = (#{< x} + ½·#{= x}) / n, with x clipped to [min, max].

    Mid-ranks put a tied value at the middle of its CDF jump, which is what
    `scipy.stats.rankdata(method="average")` gives ((rank − ½) / n on the sample itself). Ties are
    the rule here: many contexts get the same "0" answer. Clipping means a test prediction below
    every calibration prediction is treated as the minimum (u = ½·#{= min}/n, not 0) and one above
    every calibration prediction as the maximum (u = 1 − ½·#{= max}/n, not 1), so out-of-range
    inputs never reach the extreme quantiles that the calibration data could not support.

    `sorted_calib` is [n_cal] with x of any shape, or [n_cal, m] with x [..., m] (one column per
    latent).
    """
    s = np.asarray(sorted_calib, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if s.ndim not in (1, 2) or s.shape[0] == 0:
        raise HarnessError(f"fitted normaliser must be a non-empty sorted [n_cal] or [n_cal, m] "
                           f"array, got shape {s.shape}")
    if not np.all(np.isfinite(x)):
        raise HarnessError("predictions to normalise contain NaN or inf")
    if s.ndim == 2:
        if x.ndim == 0 or x.shape[-1] != s.shape[1]:
            raise HarnessError(f"predictions have {x.shape[-1] if x.ndim else 0} latents, the "
                               f"normaliser {s.shape[1]}")
        out = np.empty(x.shape, dtype=np.float64)
        for col in range(s.shape[1]):
            out[..., col] = ecdf_midrank(s[:, col], x[..., col])
        return out
    n = s.shape[0]
    xc = np.clip(x, s[0], s[-1])
    below = np.searchsorted(s, xc, side="left")
    upto = np.searchsorted(s, xc, side="right")
    return (below + 0.5 * (upto - below)) / n


def _check_latents(latents: np.ndarray, m: int, table: ActivationTable | None) -> np.ndarray:
    latents = np.asarray(latents)
    if latents.ndim != 1 or latents.shape[0] != m or not np.issubdtype(latents.dtype, np.integer):
        raise HarnessError(f"latents must be {m} integer indices, one per prediction column; got "
                           f"shape {latents.shape} dtype {latents.dtype}")
    if table is not None and m and (latents.min() < 0 or latents.max() >= table.num_latents):
        raise HarnessError(f"latent indices fall outside the activation table "
                           f"(0..{table.num_latents - 1})")
    return latents


def _as_2d(pred: np.ndarray, name: str) -> np.ndarray:
    pred = np.asarray(pred, dtype=np.float64)
    if pred.ndim != 2:
        raise HarnessError(f"{name} must be [n_contexts, m_latents], got shape {pred.shape}")
    return pred


def weighted_ecdf_midrank(calib: np.ndarray, weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`ecdf_midrank` of one latent's calibration sample in which value i counts `weights[i]` times.

    u = (W{< x} + ½·W{= x}) / W, with x clipped to the range of the values of positive weight. Integer
    weights give exactly the mid-rank ECDF of the sample with each value repeated that many times. A cascade
    (harness/simulate/cascade.py) uses it to let each randomly sampled unselected calibration pair stand for
    the unselected pairs it was drawn from, so its F_pred estimates the exhaustive one.
    """
    v = np.asarray(calib, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if v.ndim != 1 or w.shape != v.shape:
        raise HarnessError(f"calibration weights must match the calibration sample, got {w.shape} for {v.shape}")
    if np.any(~np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
        raise HarnessError("calibration weights must be finite, non-negative and not all zero")
    if not np.all(np.isfinite(v)) or not np.all(np.isfinite(x)):
        raise HarnessError("predictions to normalise contain NaN or inf")
    keep = w > 0
    order = np.argsort(v[keep], kind="stable")
    s, cw = v[keep][order], np.concatenate([[0.0], np.cumsum(w[keep][order])])
    xc = np.clip(x, s[0], s[-1])
    below = cw[np.searchsorted(s, xc, side="left")]
    upto = cw[np.searchsorted(s, xc, side="right")]
    return (below + 0.5 * (upto - below)) / cw[-1]


def quantile_levels(pred_calib: np.ndarray, x: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """u = F_pred,j(x[:, j]) for every column j, F_pred fit on `pred_calib` [n_cal, m], each calibration value
    counted `weights[i, j]` times when weights are given (None: once each)."""
    if weights is None:
        return ecdf_midrank(fit_normaliser(pred_calib), x)
    pred_calib = _checked_calibration(pred_calib)   # fit_normaliser's checks, without its sort
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != pred_calib.shape:
        raise HarnessError(f"calibration weights have shape {w.shape}, the calibration predictions "
                           f"{pred_calib.shape}")
    x = np.asarray(x, dtype=np.float64)
    out = np.empty(x.shape, dtype=np.float64)
    for col in range(w.shape[1]):
        out[:, col] = weighted_ecdf_midrank(pred_calib[:, col], w[:, col], x[:, col])
    return out


def apply_quantile_normalisation(pred_calib: np.ndarray, pred_test: np.ndarray,
                                 table: ActivationTable, latents: np.ndarray,
                                 weights: np.ndarray | None = None) -> np.ndarray:
    """q_j(pred_test[:, i]) for latent j = latents[i], with F_pred fit on pred_calib[:, i] (its rows weighted by
    `weights[:, i]` when given)."""
    pred_calib = _as_2d(pred_calib, "calibration predictions")
    pred_test = _as_2d(pred_test, "test predictions")
    if pred_calib.shape[1] != pred_test.shape[1]:
        raise HarnessError(f"calibration predictions cover {pred_calib.shape[1]} latents, test "
                           f"predictions {pred_test.shape[1]}")
    latents = _check_latents(latents, pred_test.shape[1], table)
    u = quantile_levels(pred_calib, pred_test, weights)
    out = np.empty(pred_test.shape, dtype=np.float64)
    for col, j in enumerate(latents):
        out[:, col] = true_quantile(table, int(j), u[:, col])
    return out


def calibrate(mode: str, pred_calib: np.ndarray | None, pred_test: np.ndarray,
              table: ActivationTable | None, latents: np.ndarray,
              weights: np.ndarray | None = None) -> np.ndarray:
    """Latent values to patch in for each (test context, latent) under a calibration mode.

    * `quantile` (default): normaliser fit on the calibration split, docs/protocol.md §4; `weights`
      [n_cal, m] weigh its rows (a cascade's, harness/simulate/cascade.py `calibration_weights`).
    * `none`: the raw expected digit values, unchanged (the paper's uncalibrated condition).
    * `prompt-fit`: the normaliser fit on the test predictions themselves, as the paper did.
      It lets test data leak into the map, so it is only a labelled diagnostic.
    """
    pred_test = _as_2d(pred_test, "test predictions")
    if mode == "none":
        _check_latents(latents, pred_test.shape[1], None)
        return pred_test.copy()
    if mode not in CALIBRATION_MODES:
        raise HarnessError(f"unknown calibration mode {mode!r}; use one of: "
                           f"{', '.join(CALIBRATION_MODES)}")
    if table is None:
        raise HarnessError(f"calibration mode {mode!r} needs an activation table")
    if mode == "prompt-fit":
        return apply_quantile_normalisation(pred_test, pred_test, table, latents)
    if pred_calib is None:
        raise HarnessError("calibration mode 'quantile' needs calibration-split predictions")
    return apply_quantile_normalisation(pred_calib, pred_test, table, latents, weights)
